package helm

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

const (
	crdFile  = "sockets.socketcluster.io_socketclusters.yaml"
	appImage = "socketcluster/socketcluster:0.1.0" // the chart's appVersion
)

// checksByValues holds what each ci/*-values.yaml must render on top of the
// checks every rendering passes (see checkCommon).
var checksByValues = map[string]func(t *testing.T, objs []*unstructured.Unstructured){
	"default": func(t *testing.T, objs []*unstructured.Unstructured) {
		wantKinds(t, objs, "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount")
		crd := only(t, objs, "CustomResourceDefinition", "")
		if crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD lacks helm.sh/resource-policy: keep: %v", crd.GetAnnotations())
		}
		want := readYAMLFile(t, filepath.Join(configDir, "crd", "bases", crdFile))
		if !reflect.DeepEqual(crd.Object["spec"], want.Object["spec"]) {
			t.Errorf("rendered CRD spec differs from config/crd/bases/%s", crdFile)
		}
		if img := managerContainer(t, objs)["image"]; img != appImage {
			t.Errorf("image = %v, want %s", img, appImage)
		}
		if got := rulesOf(t, clusterRole(t, objs, "manager")); !reflect.DeepEqual(got, managerRules(t)) {
			t.Errorf("ClusterRole rules differ from config/rbac/role.yaml:\n%v", got)
		}
		checkSecureMetrics(t, objs)
		if slices.ContainsFunc(managerArgs(t, objs), func(a string) bool { return strings.HasPrefix(a, "--watch-namespace") }) {
			t.Error("--watch-namespace passed without watchNamespace")
		}
	},
	"watch-namespace-values.yaml": func(t *testing.T, objs []*unstructured.Unstructured) {
		// The metrics' TokenReviews and SubjectAccessReviews are cluster-wide whatever the namespace.
		wantKinds(t, objs, "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount")
		checkSecureMetrics(t, objs)
		if _, ok := named(objs, "ClusterRole")[fullname+"-manager"]; ok {
			t.Error("watchNamespace still renders the manager ClusterRole")
		}
		role := only(t, objs, "Role", "socketcluster-apps")
		if !reflect.DeepEqual(rulesOf(t, role), managerRules(t)) {
			t.Errorf("Role rules differ from config/rbac/role.yaml")
		}
		binding := only(t, objs, "RoleBinding", "socketcluster-apps")
		subjects, _, _ := unstructured.NestedSlice(binding.Object, "subjects")
		if len(subjects) != 1 || subjects[0].(map[string]any)["namespace"] != releaseNamespace {
			t.Errorf("RoleBinding subjects = %v, want the operator's ServiceAccount in %s", subjects, releaseNamespace)
		}
		if !slices.Contains(managerArgs(t, objs), "--watch-namespace=socketcluster-apps") {
			t.Errorf("args %v lack --watch-namespace=socketcluster-apps", managerArgs(t, objs))
		}
	},
	"servicemonitor-example-values.yaml": func(t *testing.T, objs []*unstructured.Unstructured) {
		sm := only(t, objs, "ServiceMonitor", releaseNamespace)
		if sm.GetLabels()["release"] != "kube-prometheus-stack" {
			t.Errorf("ServiceMonitor labels = %v, want the extra label", sm.GetLabels())
		}
		endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		ep := endpoints[0].(map[string]any)
		if ep["scheme"] != "https" || ep["bearerTokenFile"] != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
			t.Errorf("ServiceMonitor endpoint %v: want https with Prometheus's token", ep)
		}
		readers := named(objs, "ClusterRoleBinding")[fullname+"-metrics-reader"]
		if readers == nil {
			t.Fatal("metrics.readers renders no ClusterRoleBinding")
		}
		subjects, _, _ := unstructured.NestedSlice(readers.Object, "subjects")
		wantSubjects := []any{map[string]any{"kind": "ServiceAccount", "name": "kube-prometheus-stack-prometheus", "namespace": "monitoring"}}
		if ref, _, _ := unstructured.NestedString(readers.Object, "roleRef", "name"); ref != fullname+"-metrics-reader" || !reflect.DeepEqual(subjects, wantSubjects) {
			t.Errorf("metrics reader binding to %s for %v", ref, subjects)
		}
		svc := only(t, objs, "Service", releaseNamespace)
		if port, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports"); port[0].(map[string]any)["name"] != "metrics" {
			t.Errorf("metrics Service ports = %v", port)
		}
		sc := only(t, objs, "SocketCluster", releaseNamespace)
		ref, _, _ := unstructured.NestedStringMap(sc.Object, "spec", "auth", "deviceKeySecretRef")
		if !reflect.DeepEqual(ref, map[string]string{"name": "example-device-key", "key": "device-key"}) {
			t.Errorf("example deviceKeySecretRef = %v", ref)
		}
		// The operator generates the API token; the chart never opens the admin API.
		if auth, _, _ := unstructured.NestedMap(sc.Object, "spec", "auth"); len(auth) != 1 {
			t.Errorf("example auth = %v, want only the device key", auth)
		}
		if peers, _, _ := unstructured.NestedSlice(sc.Object, "spec", "admin", "allowedFrom"); len(peers) != 2 {
			t.Errorf("example admin.allowedFrom = %v", peers)
		}
		secrets := named(objs, "Secret")
		if key, _, _ := unstructured.NestedString(secrets["example-device-key"].Object, "data", "device-key"); len(key) < 48 {
			t.Errorf("example device key %q is too short", key)
		}
		if pw, _, _ := unstructured.NestedString(secrets["example-redis"].Object, "stringData", "password"); pw != "not-a-real-password" {
			t.Errorf("redis Secret password = %q", pw)
		}
		pod, _, _ := unstructured.NestedMap(only(t, objs, "Deployment", releaseNamespace).Object, "spec", "template", "spec")
		for _, field := range []string{"imagePullSecrets", "nodeSelector", "tolerations"} {
			if pod[field] == nil {
				t.Errorf("pod spec lacks %s", field)
			}
		}
	},
	"insecure-metrics-values.yaml": func(t *testing.T, objs []*unstructured.Unstructured) {
		args := managerArgs(t, objs)
		if !slices.Contains(args, "--metrics-secure=false") || !slices.Contains(args, "--metrics-bind-address=:8080") {
			t.Errorf("args %v: want plain HTTP metrics on :8080", args)
		}
		if roles := named(objs, "ClusterRole"); roles[fullname+"-metrics-auth"] != nil || roles[fullname+"-metrics-reader"] != nil {
			t.Error("metrics.secure=false still renders the metrics auth and reader roles")
		}
		sm := only(t, objs, "ServiceMonitor", releaseNamespace)
		endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
		if ep := endpoints[0].(map[string]any); ep["scheme"] != nil || ep["bearerTokenFile"] != nil {
			t.Errorf("ServiceMonitor endpoint %v: want plain HTTP", ep)
		}
	},
	"crds-off-values.yaml": func(t *testing.T, objs []*unstructured.Unstructured) {
		if crds := named(objs, "CustomResourceDefinition"); len(crds) != 0 {
			t.Errorf("crds.install=false still renders %d CRDs", len(crds))
		}
		c := managerContainer(t, objs)
		if c["image"] != "socketcluster/socketcluster:0.1.0-rc.1" || c["imagePullPolicy"] != "Always" {
			t.Errorf("image %v / pull policy %v not taken from values", c["image"], c["imagePullPolicy"])
		}
	},
}

func TestTemplate(t *testing.T) {
	for _, values := range valueSets(t) {
		t.Run("values="+valuesName(values), func(t *testing.T) {
			check, ok := checksByValues[valuesName(values)]
			if !ok {
				t.Fatalf("no checks for %s: add them to checksByValues", values)
			}
			objs := render(t, append(valuesArgs(values), crdServed)...)
			checkCommon(t, objs)
			check(t, objs)
		})
	}
}

// checkCommon holds what every rendering must satisfy.
func checkCommon(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"} {
			if o.GetLabels()[l] == "" {
				t.Errorf("%s %s lacks label %s", o.GetKind(), o.GetName(), l)
			}
		}
		if o.GetKind() == "Role" || o.GetKind() == "ClusterRole" {
			checkNoWildcards(t, o)
		}
	}
	c := managerContainer(t, objs)
	env, _, _ := unstructured.NestedSlice(c, "env")
	if !slices.ContainsFunc(env, func(e any) bool {
		m := e.(map[string]any)
		return m["name"] == "SOCKETSERVER_IMAGE" && m["value"] == c["image"]
	}) {
		t.Errorf("env %v lacks SOCKETSERVER_IMAGE=%v (the operator's own image)", env, c["image"])
	}
	if args := managerArgs(t, objs); !slices.Contains(args, "--leader-elect") || !slices.Contains(args, "--health-probe-bind-address=:8081") {
		t.Errorf("args %v lack leader election or the probe address", args)
	}
	// The operator knows where its pods run, for the SocketClusters' NetworkPolicies.
	if !slices.ContainsFunc(env, func(e any) bool {
		m := e.(map[string]any)
		path, _, _ := unstructured.NestedString(m, "valueFrom", "fieldRef", "fieldPath")
		return m["name"] == "OPERATOR_NAMESPACE" && path == "metadata.namespace"
	}) {
		t.Errorf("env %v lacks OPERATOR_NAMESPACE from metadata.namespace", env)
	}
	deploy := only(t, objs, "Deployment", releaseNamespace)
	podLabels, _, _ := unstructured.NestedStringMap(deploy.Object, "spec", "template", "metadata", "labels")
	selector, _, _ := unstructured.NestedStringMap(deploy.Object, "spec", "selector", "matchLabels")
	var flag string
	for _, a := range managerArgs(t, objs) {
		if v, ok := strings.CutPrefix(a, "--operator-pod-labels="); ok {
			flag = v
		}
	}
	if want := labels.SelectorFromSet(selector).String(); flag != want || !labels.SelectorFromSet(selector).Matches(labels.Set(podLabels)) {
		t.Errorf("--operator-pod-labels=%q, want the pods' selector labels %q", flag, want)
	}
	// The metrics Service reaches the port the manager serves on.
	ports, _, _ := unstructured.NestedSlice(only(t, objs, "Service", releaseNamespace).Object, "spec", "ports")
	port := ports[0].(map[string]any)["port"]
	if !slices.Contains(managerArgs(t, objs), fmt.Sprintf("--metrics-bind-address=:%v", port)) {
		t.Errorf("metrics Service port %v is not the manager's --metrics-bind-address (%v)", port, managerArgs(t, objs))
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got, _, _ := unstructured.NestedString(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path = %q, want %s", probe, got, path)
		}
	}
	sc, _, _ := unstructured.NestedMap(c, "securityContext")
	if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false ||
		!reflect.DeepEqual(sc["capabilities"], map[string]any{"drop": []any{"ALL"}}) {
		t.Errorf("container securityContext %v is not hardened", sc)
	}
	psc, _, _ := unstructured.NestedMap(only(t, objs, "Deployment", releaseNamespace).Object, "spec", "template", "spec", "securityContext")
	if psc["runAsNonRoot"] != true || !reflect.DeepEqual(psc["seccompProfile"], map[string]any{"type": "RuntimeDefault"}) {
		t.Errorf("pod securityContext %v: want runAsNonRoot and seccomp RuntimeDefault", psc)
	}
}

// fullname is the chart's full name for the release "socketcluster".
const fullname = "socketcluster-socketcluster-operator"

func clusterRole(t *testing.T, objs []*unstructured.Unstructured, suffix string) *unstructured.Unstructured {
	t.Helper()
	role := named(objs, "ClusterRole")[fullname+"-"+suffix]
	if role == nil {
		t.Fatalf("no ClusterRole %s-%s", fullname, suffix)
	}
	return role
}

// checkSecureMetrics: metrics on :8443 over HTTPS, the operator may review
// tokens and access, and a reader role grants GET on /metrics.
func checkSecureMetrics(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	args := managerArgs(t, objs)
	if !slices.Contains(args, "--metrics-bind-address=:8443") || slices.Contains(args, "--metrics-secure=false") {
		t.Errorf("args %v: want secure metrics on :8443", args)
	}
	wantAuth := []any{
		map[string]any{"apiGroups": []any{"authentication.k8s.io"}, "resources": []any{"tokenreviews"}, "verbs": []any{"create"}},
		map[string]any{"apiGroups": []any{"authorization.k8s.io"}, "resources": []any{"subjectaccessreviews"}, "verbs": []any{"create"}},
	}
	if got := rulesOf(t, clusterRole(t, objs, "metrics-auth")); !reflect.DeepEqual(got, wantAuth) {
		t.Errorf("metrics-auth rules %v", got)
	}
	binding := named(objs, "ClusterRoleBinding")[fullname+"-metrics-auth"]
	if binding == nil {
		t.Fatal("no metrics-auth ClusterRoleBinding")
	}
	subjects, _, _ := unstructured.NestedSlice(binding.Object, "subjects")
	sa := only(t, objs, "ServiceAccount", releaseNamespace)
	if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != sa.GetName() {
		t.Errorf("metrics-auth binding subjects %v, want the operator's ServiceAccount", subjects)
	}
	wantReader := []any{map[string]any{"nonResourceURLs": []any{"/metrics"}, "verbs": []any{"get"}}}
	if got := rulesOf(t, clusterRole(t, objs, "metrics-reader")); !reflect.DeepEqual(got, wantReader) {
		t.Errorf("metrics-reader rules %v", got)
	}
}

// checkNoWildcards fails on any "*" in a rule: the operator's rights are listed one by one.
func checkNoWildcards(t *testing.T, role *unstructured.Unstructured) {
	t.Helper()
	for _, r := range rulesOf(t, role) {
		for field, values := range r.(map[string]any) {
			list, _ := values.([]any)
			if slices.Contains(list, any("*")) {
				t.Errorf("%s %s grants %s: *", role.GetKind(), role.GetName(), field)
			}
		}
	}
}

func TestValuesSchemaRefusesMistakes(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"image.tagg=1.0", "additional properties 'tagg' not allowed"},
		{"watchNamespaces=apps", "additional properties 'watchNamespaces' not allowed"},
		{"metrics.serviceMonitor.enable=true", "additional properties 'enable' not allowed"},
		{"redisSecret.create=true", "at '/redisSecret/password': minLength: got 0, want 1"},
		{"image.pullPolicy=Sometimes", "value must be one of 'Always', 'IfNotPresent', 'Never'"},
		{"metrics.secure=maybe", "at '/metrics/secure': got string, want boolean"},
		{"metrics.readers[0].name=prometheus", "at '/metrics/readers/0': missing property 'namespace'"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			_, err := runHelm(t, "template", "socketcluster", chartDir, "--set", tc.set)
			if err == nil || !strings.Contains(err.Error(), "values don't meet the specifications of the schema") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("helm template --set %s: got error %v, want the schema's %q", tc.set, err, tc.want)
			}
		})
	}
}

func TestOptionalKnobs(t *testing.T) {
	crd := only(t, render(t, "--set", "crds.keep=false"), "CustomResourceDefinition", "")
	if _, ok := crd.GetAnnotations()["helm.sh/resource-policy"]; ok {
		t.Error("crds.keep=false still keeps the CRD")
	}
	// The install that creates the CRD cannot create the example; its key is made already.
	objs := render(t, "--set", "example.enabled=true")
	if len(named(objs, "SocketCluster")) != 0 || named(objs, "Secret")["example-device-key"] == nil {
		t.Error("example.enabled without the CRD served: want only the device-key Secret")
	}
	// Release names may be 53 characters; Service names (DNS-1035 labels)
	// and the Deployment's must still fit 63.
	out, err := runHelm(t, "template", strings.Repeat("r", 53), chartDir, "--namespace", releaseNamespace)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range decodeAll(t, out) {
		if (o.GetKind() == "Service" || o.GetKind() == "Deployment") && len(o.GetName()) > 63 {
			t.Errorf("%s name %q is longer than 63 characters", o.GetKind(), o.GetName())
		}
	}
}

// The alerts and the dashboard (off by default: see the default case of
// TestTemplate) are config/'s, the dashboard with the sidecar's label.
func TestMonitoringKnobs(t *testing.T) {
	objs := render(t, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps",
		"--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring", "--set", "metrics.podMonitor.enabled=true")
	rule := only(t, objs, "PrometheusRule", releaseNamespace)
	want := readYAMLFile(t, filepath.Join(configDir, "prometheus", "rules.yaml"))
	if !reflect.DeepEqual(rule.Object["spec"], want.Object["spec"]) {
		t.Error("the chart's PrometheusRule spec differs from config/prometheus/rules.yaml")
	}
	if rule.GetLabels()["release"] != "kps" {
		t.Errorf("prometheusRule.labels not applied: %v", rule.GetLabels())
	}
	cm := only(t, objs, "ConfigMap", "monitoring")
	dashboard, err := os.ReadFile(filepath.Join(configDir, "grafana", "socketcluster-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	data, _, _ := unstructured.NestedString(cm.Object, "data", "socketcluster-dashboard.json")
	if cm.GetLabels()["grafana_dashboard"] != "1" || strings.TrimSpace(data) != strings.TrimSpace(string(dashboard)) {
		t.Errorf("dashboard ConfigMap: labels %v, data equal to config/grafana: %v", cm.GetLabels(), strings.TrimSpace(data) == strings.TrimSpace(string(dashboard)))
	}
	pm := only(t, objs, "PodMonitor", releaseNamespace)
	if all, _, _ := unstructured.NestedBool(pm.Object, "spec", "namespaceSelector", "any"); !all {
		t.Error("the PodMonitor does not watch every namespace")
	}
}

func wantKinds(t *testing.T, objs []*unstructured.Unstructured, kinds ...string) {
	t.Helper()
	var got []string
	for _, o := range objs {
		if !slices.Contains(got, o.GetKind()) {
			got = append(got, o.GetKind())
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, kinds) {
		t.Errorf("rendered kinds %v, want %v", got, kinds)
	}
}

// only returns the single object of kind in namespace ("" for cluster-scoped).
func only(t *testing.T, objs []*unstructured.Unstructured, kind, namespace string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s in namespace %q, got %d", kind, namespace, len(found))
	}
	return found[0]
}

func named(objs []*unstructured.Unstructured, kind string) map[string]*unstructured.Unstructured {
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if o.GetKind() == kind {
			m[o.GetName()] = o
		}
	}
	return m
}

func managerContainer(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(only(t, objs, "Deployment", releaseNamespace).Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("want 1 container, got %d", len(cs))
	}
	return cs[0].(map[string]any)
}

func managerArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	args, _, _ := unstructured.NestedStringSlice(managerContainer(t, objs), "args")
	return args
}

func rulesOf(t *testing.T, role *unstructured.Unstructured) []any {
	t.Helper()
	rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
	if len(rules) == 0 {
		t.Fatalf("%s %s has no rules", role.GetKind(), role.GetName())
	}
	return rules
}

// managerRules are the rules controller-gen generated from the operator's markers.
func managerRules(t *testing.T) []any {
	t.Helper()
	return rulesOf(t, readYAMLFile(t, filepath.Join(configDir, "rbac", "role.yaml")))
}
