package helm

import (
	"cmp"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

var socketClusterGVK = schema.GroupVersionKind{Group: "sockets.socketcluster.io", Version: "v1alpha1", Kind: "SocketCluster"}

// startAPIServer starts a real kube-apiserver and etcd. envtest runs no
// controllers: nothing creates Pods or collects garbage.
func startAPIServer(t *testing.T) (*envtest.Environment, client.Client) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a kube-apiserver (envtest); skipped with -short")
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Fatal("KUBEBUILDER_ASSETS is unset: run `make test`, or `KUBEBUILDER_ASSETS=$(hack/build-k8s-binaries.sh) go test ./test/helm/` (or -short to skip the API server tests)")
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting kube-apiserver from %s: %v", assets, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping kube-apiserver: %v", err)
		}
	})
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return env, c
}

// TestChartOnAPIServer server-side applies every rendering of the chart to a
// real API server, checks what the operator's ServiceAccount may do, and
// that the installed CRD admits a minimal SocketCluster and refuses a bad one.
func TestChartOnAPIServer(t *testing.T) {
	_, c := startAPIServer(t)
	ctx := t.Context()

	// The default rendering goes first: it installs the CRD the others use.
	for i, values := range valueSets(t) {
		release := "sc" + string(rune('a'+i))
		t.Run("values="+valuesName(values), func(t *testing.T) {
			out, err := runHelm(t, append([]string{"template", release, chartDir, "--namespace", releaseNamespace, crdServed}, valuesArgs(values)...)...)
			if err != nil {
				t.Fatal(err)
			}
			objs := decodeAll(t, out)
			applyAll(ctx, t, c, objs)

			sa := serviceAccountOf(t, objs)
			v := valuesOf(t, values)
			watched := v.WatchNamespace
			// Rights on SocketClusters: everywhere, or with watchNamespace only there.
			wantAllowed(t, ctx, c, sa, cmp.Or(watched, "apps"), "sockets.socketcluster.io", "socketclusters", "watch", true)
			wantAllowed(t, ctx, c, sa, "other", "sockets.socketcluster.io", "socketclusters", "watch", watched == "")
			wantAllowed(t, ctx, c, sa, cmp.Or(watched, "apps"), "apps", "deployments", "watch", true)
			// The leader election Lease lives in the operator's own namespace.
			wantAllowed(t, ctx, c, sa, releaseNamespace, "coordination.k8s.io", "leases", "update", true)
			wantAllowed(t, ctx, c, sa, "", "apiextensions.k8s.io", "customresourcedefinitions", "delete", false)
			// The generated API token Secret and the admin port's NetworkPolicy.
			wantAllowed(t, ctx, c, sa, cmp.Or(watched, "apps"), "", "secrets", "create", true)
			wantAllowed(t, ctx, c, sa, cmp.Or(watched, "apps"), "networking.k8s.io", "networkpolicies", "delete", true)
			// Secure metrics: the operator reviews its callers' tokens and rights.
			secure := v.Metrics.Secure == nil || *v.Metrics.Secure
			wantAllowed(t, ctx, c, sa, "", "authentication.k8s.io", "tokenreviews", "create", secure)
			wantAllowed(t, ctx, c, sa, "", "authorization.k8s.io", "subjectaccessreviews", "create", secure)
		})
	}

	t.Run("SocketCluster admission", func(t *testing.T) {
		ensureNamespace(ctx, t, c, "apps")
		key := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "minimal-device-key", Namespace: "apps"},
			StringData: map[string]string{"device-key": "0123456789abcdef0123456789abcdef"},
		}
		if err := c.Create(ctx, key); err != nil {
			t.Fatal(err)
		}
		minimal := socketCluster("minimal", map[string]any{
			"redis": map[string]any{"addresses": []any{"redis.apps.svc:6379"}},
			"auth":  map[string]any{"deviceKeySecretRef": map[string]any{"name": "minimal-device-key", "key": "device-key"}},
		})
		if err := c.Create(ctx, minimal); err != nil {
			t.Fatalf("minimal SocketCluster refused: %v", err)
		}
		if replicas, _, _ := unstructured.NestedInt64(minimal.Object, "spec", "replicas"); replicas != 3 {
			t.Errorf("spec.replicas defaulted to %d, want 3 from the CRD schema", replicas)
		}
		if sse, found, _ := unstructured.NestedBool(minimal.Object, "spec", "listeners", "sse", "enabled"); !found || !sse {
			t.Errorf("spec.listeners.sse.enabled defaulted to %v (set: %v), want true from the CRD schema", sse, found)
		}

		for name, tc := range map[string]struct {
			spec map[string]any
			want string
		}{
			"no-device-key": {
				spec: map[string]any{"redis": map[string]any{"addresses": []any{"redis:6379"}}},
				want: "auth.deviceKeySecretRef is required",
			},
			"negative-replicas": {
				spec: map[string]any{"replicas": int64(-1), "redis": map[string]any{"addresses": []any{"redis:6379"}}, "auth": map[string]any{"insecureNoAuth": true}},
				want: "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
			},
		} {
			err := c.Create(ctx, socketCluster(name, tc.spec))
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SocketCluster %s: got %v, want Invalid with %q", name, err, tc.want)
			}
		}
	})
}

// TestHelmInstallUpgradeUninstall runs the real install story against the
// API server: install (the CRD, the example's key), upgrade (the example
// SocketCluster, the same key), and an uninstall that keeps the CRD.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	env, c := startAPIServer(t)
	ctx := t.Context()
	user, err := env.AddUser(envtest.User{Name: "helm-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kcfg := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kcfg, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	values := []string{"--kubeconfig", kcfg, "--namespace", releaseNamespace,
		"--set", "example.enabled=true", "--set", "redisSecret.create=true", "--set", "redisSecret.password=pw"}
	helm := func(args ...string) string {
		t.Helper()
		out, err := runHelm(t, args...)
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", args[0], err, out)
		}
		return out
	}

	notes := helm("install", "socketcluster", chartDir, "--dry-run=server", "--kubeconfig", kcfg, "--namespace", releaseNamespace)
	for _, want := range []string{"create secret generic my-cluster-device-key", "kind: SocketCluster", "get sc -w", "allowedFrom:", "get secret my-cluster-api-token"} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES do not tell the next step %q:\n%s", want, notes)
		}
	}

	installNotes := helm(append([]string{"install", "socketcluster", chartDir, "--create-namespace"}, values...)...)
	if !strings.Contains(installNotes, "helm upgrade socketcluster") {
		t.Errorf("NOTES do not say that the example needs a helm upgrade:\n%s", installNotes)
	}
	deviceKey := &corev1.Secret{}
	keyName := client.ObjectKey{Namespace: releaseNamespace, Name: "example-device-key"}
	if err := c.Get(ctx, keyName, deviceKey); err != nil {
		t.Fatal(err)
	}

	helm(append([]string{"upgrade", "socketcluster", chartDir}, values...)...)
	example := socketCluster("example", nil)
	example.SetNamespace(releaseNamespace)
	if err := c.Get(ctx, client.ObjectKeyFromObject(example), example); err != nil {
		t.Fatalf("example SocketCluster after upgrade: %v", err)
	}
	upgraded := &corev1.Secret{}
	if err := c.Get(ctx, keyName, upgraded); err != nil {
		t.Fatal(err)
	}
	if string(upgraded.Data["device-key"]) != string(deviceKey.Data["device-key"]) {
		t.Error("helm upgrade changed the example device key, which would lock out every device")
	}

	helm("uninstall", "socketcluster", "--kubeconfig", kcfg, "--namespace", releaseNamespace)
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	if err := c.Get(ctx, client.ObjectKey{Name: "socketclusters.sockets.socketcluster.io"}, crd); err != nil {
		t.Errorf("CRD after uninstall: %v (crds.keep should keep it)", err)
	}
	deploy := &unstructured.Unstructured{}
	deploy.SetGroupVersionKind(schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"})
	err = c.Get(ctx, client.ObjectKey{Namespace: releaseNamespace, Name: "socketcluster-socketcluster-operator"}, deploy)
	if !apierrors.IsNotFound(err) {
		t.Errorf("operator Deployment after uninstall: %v, want NotFound", err)
	}
}

// applyAll server-side applies the objects like kubectl apply --server-side:
// CRDs first (waiting until they serve), then namespaces, then the rest.
func applyAll(ctx context.Context, t *testing.T, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	var rest []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "CustomResourceDefinition":
			apply(ctx, t, c, o)
			waitEstablished(ctx, t, c, o.GetName())
		case o.GetObjectKind().GroupVersionKind().Group == "monitoring.coreos.com":
			// This API server has no Prometheus Operator CRDs; the template test checks it.
		default:
			rest = append(rest, o)
		}
	}
	for _, o := range rest {
		if ns := o.GetNamespace(); ns != "" {
			ensureNamespace(ctx, t, c, ns)
		}
	}
	for _, o := range rest {
		apply(ctx, t, c, o)
	}
}

func apply(ctx context.Context, t *testing.T, c client.Client, o *unstructured.Unstructured) {
	t.Helper()
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.FieldOwner("chart-test"), client.ForceOwnership); err != nil {
		t.Fatalf("server-side apply of %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
	}
}

func waitEstablished(ctx context.Context, t *testing.T, c client.Client, name string) {
	t.Helper()
	crd := &unstructured.Unstructured{}
	crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			m := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD %s not established: %v", name, err)
	}
}

func ensureNamespace(ctx context.Context, t *testing.T, c client.Client, name string) {
	t.Helper()
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func serviceAccountOf(t *testing.T, objs []*unstructured.Unstructured) string {
	t.Helper()
	sa := only(t, objs, "ServiceAccount", releaseNamespace)
	return "system:serviceaccount:" + sa.GetNamespace() + ":" + sa.GetName()
}

// chartValues are the values the API server tests depend on.
type chartValues struct {
	WatchNamespace string `json:"watchNamespace"`
	Metrics        struct {
		Secure *bool `json:"secure"`
	} `json:"metrics"`
}

// valuesOf reads a values file (the chart's defaults for "").
func valuesOf(t *testing.T, values string) chartValues {
	t.Helper()
	var v chartValues
	if values == "" {
		return v
	}
	b, err := os.ReadFile(values)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// wantAllowed asks the API server's RBAC authorizer whether the user may do verb.
func wantAllowed(t *testing.T, ctx context.Context, c client.Client, user, namespace, group, resource, verb string, want bool) {
	t.Helper()
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   user,
		Groups: []string{"system:serviceaccounts", "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Group: group, Resource: resource, Verb: verb,
		},
	}}
	if err := c.Create(ctx, sar); err != nil {
		t.Fatal(err)
	}
	if sar.Status.Allowed != want {
		t.Errorf("%s may %s %s.%s in namespace %q: %v, want %v (%s)", user, verb, resource, group, namespace, sar.Status.Allowed, want, sar.Status.Reason)
	}
}

func socketCluster(name string, spec map[string]any) *unstructured.Unstructured {
	sc := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	sc.SetGroupVersionKind(socketClusterGVK)
	sc.SetNamespace("apps")
	sc.SetName(name)
	return sc
}
