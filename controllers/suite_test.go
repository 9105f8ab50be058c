package controllers_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

const defaultImage = "socketcluster/socketcluster:test"

// cluster is one real kube-apiserver + etcd with the operator running
// against it, shared by the tests of this package.
var cluster struct {
	once    sync.Once
	err     error
	env     *envtest.Environment
	cfg     *rest.Config
	client  client.Client
	stopMgr context.CancelFunc
	mgrDone chan struct{}
}

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster.env != nil {
		if cluster.stopMgr != nil {
			cluster.stopMgr()
			<-cluster.mgrDone
		}
		if err := cluster.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}
	os.Exit(code)
}

// k8s returns a client of the shared control plane, starting it on first use.
func k8s(t *testing.T) client.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("needs kube-apiserver and etcd (envtest)")
	}
	cluster.once.Do(func() { cluster.err = start() })
	if cluster.err != nil {
		t.Fatal(cluster.err)
	}
	return cluster.client
}

func start() error {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return fmt.Errorf("KUBEBUILDER_ASSETS is not set: run `make test`, or " +
			"`KUBEBUILDER_ASSETS=$(COMPONENTS=\"kube-apiserver kubectl\" hack/build-k8s-binaries.sh) go test ./controllers/...` " +
			"(or go test -short to skip the envtest suite)")
	}
	cluster.env = &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := cluster.env.Start()
	if err != nil {
		return fmt.Errorf("starting envtest from KUBEBUILDER_ASSETS=%s: %w", assets, err)
	}
	cluster.cfg = cfg
	if cluster.client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return err
	}
	if err := deployConfig(assets); err != nil {
		return err
	}

	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true)))
	// The operator runs with the ServiceAccount and RBAC of config/default,
	// so every test also proves that the generated role is enough.
	mgrCfg := rest.CopyConfig(cfg)
	mgrCfg.Impersonate = rest.ImpersonationConfig{UserName: operatorAccount}
	mgr, err := ctrl.NewManager(mgrCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return err
	}
	r := &controllers.SocketClusterReconciler{
		Client:       mgr.GetClient(),
		APIReader:    mgr.GetAPIReader(),
		Recorder:     mgr.GetEventRecorder(controllers.ControllerName),
		DefaultImage: defaultImage,
		Operator:     testOperator,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cluster.stopMgr, cluster.mgrDone = cancel, make(chan struct{})
	go func() {
		defer close(cluster.mgrDone)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	return nil
}

// testOperator is where the operator of config/default runs.
var testOperator = resources.Operator{
	Namespace: "socketcluster-system",
	PodLabels: map[string]string{"app.kubernetes.io/name": "socketcluster-operator"},
}

// operatorAccount is the ServiceAccount config/default runs the operator as.
const operatorAccount = "system:serviceaccount:socketcluster-system:socketcluster-controller-manager"

// deployConfig applies config/default the way `make deploy` does.
func deployConfig(assets string) error {
	kubectl := filepath.Join(assets, "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		return fmt.Errorf("no kubectl in KUBEBUILDER_ASSETS (build it with COMPONENTS=\"kube-apiserver kubectl\" hack/build-k8s-binaries.sh): %w", err)
	}
	admin, err := cluster.env.AddUser(envtest.User{Name: "deployer", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "kubeconfig")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	path := filepath.Join(dir, "config")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return err
	}
	manifests, err := exec.Command(kubectl, "kustomize", filepath.Join("..", "config", "default")).Output()
	if err != nil {
		return fmt.Errorf("kubectl kustomize config/default: %w", err)
	}
	apply := exec.Command(kubectl, "--kubeconfig", path, "apply", "--server-side", "--force-conflicts", "-f", "-")
	apply.Stdin = bytes.NewReader(manifests)
	if out, err := apply.CombinedOutput(); err != nil {
		return fmt.Errorf("applying config/default: %w\n%s", err, out)
	}
	return nil
}

// namespace creates a namespace for one test, so that tests do not see each
// other's objects.
func namespace(t *testing.T, c client.Client) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return name
}

func unstructuredObj(u map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: u}
}

// touch changes an annotation of a SocketCluster, which triggers a
// reconcile at once. A merge patch carries no resourceVersion, so it never
// conflicts with the controller's status writes.
func touch(t *testing.T, c client.Client, ns, name string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"test.socketcluster.io/touched":%q}}}`, time.Now().Format(time.RFC3339Nano))
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Patch(context.Background(), sc, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
}

// patchSpec merge-patches a SocketCluster's spec (JSON) and returns it as
// stored, with its new generation.
func patchSpec(t *testing.T, c client.Client, ns, name, spec string) *v1alpha1.SocketCluster {
	t.Helper()
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Patch(context.Background(), sc, client.RawPatch(types.MergePatchType, []byte(`{"spec":`+spec+`}`))); err != nil {
		t.Fatal(err)
	}
	return sc
}

// eventually retries check until it returns nil, and fails the test with
// its last error after a generous deadline.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, check)
}
