# socketcluster: operator + socket data plane.
GO ?= go
IMG ?= socketcluster/socketcluster:dev
K8S_VERSION ?= 1.37.2
CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/socketcluster
GOTESTSUM ?= $(GO) run gotest.tools/gotestsum@v1.13.0
CONTROLLER_GEN ?= $(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0
# The whole suite; data-plane packages always run with the race detector.
TEST_PKGS ?= ./...

.PHONY: all
all: build

##@ Development

.PHONY: run-server
run-server: ## Run a socketserver on the embedded store, on 127.0.0.1, without device or API auth (development only).
	$(GO) run ./cmd/socketserver --insecure-no-auth --insecure-no-api-auth --tcp-addr 127.0.0.1:7000 --ws-addr 127.0.0.1:8080 --grpc-addr 127.0.0.1:7001 --grpc-reflection --mqtt-addr 127.0.0.1:1883 --admin-addr 127.0.0.1:9090

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver and etcd for envtest from the Go module proxy (cached).
	@K8S_VERSION=$(K8S_VERSION) COMPONENTS="kube-apiserver kubectl" hack/build-k8s-binaries.sh >/dev/null

.PHONY: test
test: envtest-assets verify-generated verify-proto test-js ## Run every test (unit, race, Redis, envtest, JavaScript client, kiosk in Chromium) and print the summary.
	KUBEBUILDER_ASSETS=$$(K8S_VERSION=$(K8S_VERSION) COMPONENTS="kube-apiserver kubectl" hack/build-k8s-binaries.sh) \
	HELM=$$(hack/helm.sh) \
	$(GOTESTSUM) --format pkgname-and-test-fails -- -race -timeout 30m $(TEST_PKGS)

.PHONY: test-js
test-js: ## Build the JavaScript client (clients/js) and run its Node tests, against a socketserver built here.
	$(GO) build -o bin/ ./cmd/socketserver
	cd clients/js && npm ci --no-audit --no-fund && SOCKETSERVER_BIN=$(CURDIR)/bin/socketserver npm test

.PHONY: test-monitoring
test-monitoring: ## The alerts' promtool tests, the dashboard's queries, and a real Prometheus scraping real socketservers (needs prometheus: apt-get install prometheus).
	$(GO) test -race -count=1 ./test/monitoring/

.PHONY: fuzz
fuzz: ## Fuzz the frame decoders (TCP, WebSocket, MQTT, HTTP/2) and the batch body parser for FUZZTIME each (default 1m).
	@for f in FuzzReader FuzzWSReader FuzzMQTTReader FuzzH2Reader; do \
	  $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(or $(FUZZTIME),1m) ./socketserver/protocol/ || exit 1; \
	done
	$(GO) test -run '^$$' -fuzz '^FuzzParseBatch$$' -fuzztime $(or $(FUZZTIME),1m) ./socketserver/

.PHONY: fmt vet
fmt:
	$(GO) fmt ./...
vet:
	$(GO) vet ./...

##@ Build

.PHONY: build
build: ## Build the binaries into bin/.
	$(GO) build -o bin/ ./cmd/...

##@ Operator

KUBECTL ?= kubectl
# Generated from the markers in api/ and controllers/; the output is committed.
GEN_PATHS = paths="./api/...;./controllers/..."

.PHONY: manifests
manifests: ## Generate the CRD (config/crd/bases) and the manager ClusterRole (config/rbac/role.yaml), and copy both into the chart.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd $(GEN_PATHS) output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(MAKE) --no-print-directory chart-sync

.PHONY: generate
generate: ## Generate the DeepCopy methods of api/.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./api/..."

.PHONY: verify-generated
verify-generated: ## Fail when the committed generated files differ from what manifests+generate would write.
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd object:headerFile=hack/boilerplate.go.txt $(GEN_PATHS) \
	  output:crd:dir=$$tmp/crd output:rbac:dir=$$tmp/rbac output:object:dir=$$tmp/object && \
	diff -ru config/crd/bases $$tmp/crd && diff -u config/rbac/role.yaml $$tmp/rbac/role.yaml && \
	diff -u api/v1alpha1/zz_generated.deepcopy.go $$tmp/object/zz_generated.deepcopy.go || \
	{ echo "generated files are stale: run make manifests generate and commit the result" >&2; exit 1; }

.PHONY: proto
proto: ## Generate the Go code of proto/ (socketserver/scpv1); needs protoc (apt-get install protobuf-compiler).
	hack/protoc.sh

.PHONY: verify-proto
verify-proto: ## Fail when the committed Go code of proto/ differs from what make proto would write.
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && hack/protoc.sh $$tmp && \
	diff -ru socketserver/scpv1 $$tmp/socketserver/scpv1 || \
	{ echo "generated protobuf code is stale: run make proto and commit the result" >&2; exit 1; }

.PHONY: run
run: ## Run the operator against the current kubeconfig's cluster (install the CRD first).
	SOCKETSERVER_IMAGE=$${SOCKETSERVER_IMAGE:-$(IMG)} $(GO) run ./cmd/manager --metrics-bind-address=127.0.0.1:8082 --metrics-secure=false --health-probe-bind-address=:8083

.PHONY: install uninstall
install: ## Install the CRD into the current kubeconfig's cluster.
	$(KUBECTL) apply --server-side -k config/crd
uninstall: ## Remove the CRD, and with it every SocketCluster.
	$(KUBECTL) delete --ignore-not-found -k config/crd

.PHONY: deploy undeploy
deploy: ## Deploy the operator (config/default) with image IMG.
	$(KUBECTL) kustomize config/default | sed 's|socketcluster/socketcluster:latest|$(IMG)|g' | $(KUBECTL) apply --server-side -f -
undeploy: ## Remove the operator, its CRD and every SocketCluster.
	$(KUBECTL) delete --ignore-not-found -k config/default

.PHONY: docker-build
docker-build: ## Build the image IMG (operator + socketserver); needs a container engine (docker or podman).
	$(or $(CONTAINER_TOOL),docker) build -t $(IMG) .

##@ Load

BENCH_CONNECTIONS ?= 5000
BENCH_SERVERS ?= 2
BENCH_DURATION ?= 20s
BENCH_FLAGS ?= --storm --drain-timeout 10s --drain-jitter 1s
# Named socketbench workloads run after the storm run, one server each.
BENCH_SCENARIOS ?= uniform-deliver uniform-publish

.PHONY: bench
bench: ## Go benchmarks, a bounded load run against servers and a Redis it starts, then BENCH_SCENARIOS (needs redis-server).
	$(GO) test -run '^$$' -bench . -benchmem ./socketserver/...
	$(GO) build -o bin/ ./cmd/socketserver ./cmd/socketbench
	bin/socketbench --spawn-servers $(BENCH_SERVERS) --server-bin bin/socketserver \
	  --connections $(BENCH_CONNECTIONS) --duration $(BENCH_DURATION) --settle 30s $(BENCH_FLAGS)
	@for sc in $(BENCH_SCENARIOS); do \
	  bin/socketbench --spawn-servers 1 --server-bin bin/socketserver --scenario $$sc \
	    --duration $(BENCH_DURATION) --settle 30s || exit 1; \
	done

BENCH_MEMORY_STEPS ?= 1000 5000 10000 19000

.PHONY: bench-memory
bench-memory: ## Idle memory per connection at each of BENCH_MEMORY_STEPS connections, TCP, WebSocket, SSE, gRPC and MQTT (needs redis-server).
	$(GO) build -o bin/ ./cmd/socketserver ./cmd/socketbench
	@for t in tcp ws sse grpc mqtt; do for n in $(BENCH_MEMORY_STEPS); do \
	  printf '%-4s %6d  ' $$t $$n; \
	  bin/socketbench --spawn-servers 1 --server-bin bin/socketserver --transport $$t --connections $$n \
	    --deliver-rate 0 --publish-rate 0 --duration 1s --settle 5s 2>/dev/null | grep '^server ' | sed 's/^server [^ ]* *//' \
	    || { echo "socketbench failed"; exit 1; }; \
	done; done

##@ Helm chart

CHART ?= charts/socketcluster-operator

.PHONY: helm
helm: ## Build helm from the Go module proxy (cached) and print its path.
	@hack/helm.sh

.PHONY: helm-lint
helm-lint: ## Lint the chart with the default values and every ci/*-values.yaml.
	@HELM=$$(hack/helm.sh) && for v in "" $(CHART)/ci/*-values.yaml; do \
	  echo "helm lint $${v:-(default values)}"; $$HELM lint --strict $(CHART) $${v:+--values $$v} >/dev/null || exit 1; done

.PHONY: helm-template
helm-template: ## Render the chart (VALUES=file adds a values file).
	@HELM=$$(hack/helm.sh) && $$HELM template socketcluster $(CHART) --namespace socketcluster-system $(if $(VALUES),--values $(VALUES))

.PHONY: chart-sync
chart-sync: ## Copy the generated CRDs and manager RBAC rules, the alerts and the dashboard from config/ into the chart.
	rm -f $(CHART)/files/crds/*.yaml
	cp config/crd/bases/*.yaml $(CHART)/files/crds/
	cp config/rbac/role.yaml $(CHART)/files/rbac/role.yaml
	cp config/prometheus/rules.yaml $(CHART)/files/prometheus/rules.yaml
	cp config/grafana/socketcluster-dashboard.json $(CHART)/files/grafana/socketcluster-dashboard.json

##@ Local cluster (real Pods on this machine; needs root)

.PHONY: cluster-up
cluster-up: ## Start a single-node Kubernetes with real Pods (builds cached); prints export KUBECONFIG=...
	@hack/local-cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove its state (cached binaries and images stay).
	@hack/local-cluster/down.sh

.PHONY: images
images: ## Build the pause, socketcluster (tags e2e-a, e2e-b) and redis images; import them into the local cluster.
	@hack/local-cluster/images.sh

.PHONY: e2e
e2e: ## End-to-end tests on a local cluster (started and stopped by the tests unless KUBECONFIG is set).
	$(GO) test -tags e2e -count=1 -timeout 60m -v ./test/e2e $(if $(RUN),-run '$(RUN)')
