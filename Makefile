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
run-server: ## Run a socketserver on the embedded store, on 127.0.0.1, without auth.
	$(GO) run ./cmd/socketserver --insecure-no-auth --tcp-addr 127.0.0.1:7000 --ws-addr 127.0.0.1:8080 --admin-addr 127.0.0.1:9090

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver and etcd for envtest from the Go module proxy (cached).
	@K8S_VERSION=$(K8S_VERSION) COMPONENTS="kube-apiserver kubectl" hack/build-k8s-binaries.sh >/dev/null

.PHONY: test
test: envtest-assets ## Run every test (unit, race, Redis, envtest) and print the summary.
	KUBEBUILDER_ASSETS=$$(K8S_VERSION=$(K8S_VERSION) COMPONENTS="kube-apiserver kubectl" hack/build-k8s-binaries.sh) \
	$(GOTESTSUM) --format pkgname-and-test-fails -- -race -timeout 30m $(TEST_PKGS)

.PHONY: fmt vet
fmt:
	$(GO) fmt ./...
vet:
	$(GO) vet ./...

##@ Build

.PHONY: build
build: ## Build the binaries into bin/.
	$(GO) build -o bin/ ./cmd/...
