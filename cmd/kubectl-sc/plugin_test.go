package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"
	"github.com/socketcluster/socketcluster/internal/servertest"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	scclient "github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestShedPlan(t *testing.T) {
	for _, tc := range []struct {
		conns, want map[string]int
	}{
		{map[string]int{}, nil},
		{map[string]int{"a": 6, "b": 1, "c": 2}, map[string]int{"a": 3}},
		{map[string]int{"a": 3, "b": 3, "c": 3}, map[string]int{}},
		// mean 3.33 rounds up to 4: nobody moves for one connection
		{map[string]int{"a": 4, "b": 3, "c": 3}, map[string]int{}},
		{map[string]int{"a": 100, "b": 100, "c": 0, "d": 0}, map[string]int{"a": 50, "b": 50}},
	} {
		if got := shedPlan(tc.conns); !reflect.DeepEqual(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("%v: plan %v, want %v", tc.conns, got, tc.want)
		}
	}
}

func TestUsage(t *testing.T) {
	never := func(*options) (*plugin, error) { t.Fatal("connected for a usage error"); return nil, nil }
	for _, args := range [][]string{{}, {"frobnicate"}, {"device"}, {"drain", "a", "b"}, {"--no-such-flag", "status"}} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb, never); code != 2 {
			t.Errorf("%q: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
}

// fixture is a namespace with a SocketCluster whose "pods" are envtest
// Pod objects pointing at real in-process socketservers on 127.0.0.1,
// sharing a real Redis, with real device clients.
type fixture struct {
	t       *testing.T
	cfg     *rest.Config
	k8s     client.Client
	ns      string
	servers map[string]*socketserver.Server
	names   []string
}

const apiToken = "plugin-test-token"

var env struct {
	once sync.Once
	cfg  *rest.Config
	err  error
	stop func() error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if env.stop != nil {
		_ = env.stop()
	}
	os.Exit(code)
}

func startEnv(t *testing.T) *rest.Config {
	if testing.Short() {
		t.Skip("needs kube-apiserver and etcd (envtest)")
	}
	env.once.Do(func() {
		assets := os.Getenv("KUBEBUILDER_ASSETS")
		if assets == "" {
			env.err = fmt.Errorf("KUBEBUILDER_ASSETS is not set: run `make test` (or go test -short to skip)")
			return
		}
		e := &envtest.Environment{BinaryAssetsDirectory: assets, ErrorIfCRDPathMissing: true,
			CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}}
		env.cfg, env.err = e.Start()
		env.stop = e.Stop
	})
	if env.err != nil {
		t.Fatal(env.err)
	}
	return env.cfg
}

func newFixture(t *testing.T, replicas int) *fixture {
	cfg := startEnv(t)
	p, err := newPlugin(cfg, &options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, cfg: cfg, k8s: p.k8s, servers: map[string]*socketserver.Server{}}
	ctx := context.Background()
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "plugin-"}}
	if err := f.k8s.Create(ctx, nsObj); err != nil {
		t.Fatal(err)
	}
	f.ns = nsObj.Name
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Name: "devices", Namespace: f.ns}}
	sc.Spec.Redis.Addresses = []string{"redis:6379"}
	sc.Spec.Auth.InsecureNoAuth = true
	if err := f.k8s.Create(ctx, sc); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: resources.APITokenRef(sc).Name, Namespace: f.ns},
		StringData: map[string]string{resources.APITokenKey: apiToken}}
	if err := f.k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	r := redistest.Start(t)
	for i := range replicas {
		name := fmt.Sprintf("devices-%d", i)
		srv := servertest.Start(t, socketserver.Config{TCPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ServerName: name,
			InsecureNoAuth: true, APIToken: apiToken, DrainRate: 1000, DrainJitter: 50 * time.Millisecond, DrainTimeout: 10 * time.Second},
			store.NewRedis(r.Client(), "t"), logr.Discard())
		f.servers[name] = srv
		f.names = append(f.names, name)
		f.pod(name, srv)
	}
	return f
}

// pod creates the Pod object of a server, ready at 127.0.0.1, its admin
// port the server's.
func (f *fixture) pod(name string, srv *socketserver.Server) {
	var port int32
	fmt.Sscanf(srv.Addrs().Admin[strings.LastIndexByte(srv.Addrs().Admin, ':')+1:], "%d", &port)
	labels := map[string]string{"pod-template-hash": "5d8f7c"}
	for k, v := range resources.SelectorLabels(&v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Name: "devices"}}) {
		labels[k] = v
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: resources.ContainerName, Image: "socketserver",
			Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: port}}}}},
	}
	ctx := context.Background()
	if err := f.k8s.Create(ctx, pod); err != nil {
		f.t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := f.k8s.Status().Update(ctx, pod); err != nil {
		f.t.Fatal(err)
	}
}

// kubectlSC runs the plugin against the envtest cluster.
func (f *fixture) kubectlSC(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	connect := func(o *options) (*plugin, error) {
		if o.namespace == "" {
			o.namespace = f.ns
		}
		return newPlugin(f.cfg, o)
	}
	code := run(context.Background(), args, &out, &errb, connect)
	return code, out.String(), errb.String()
}

// balancer plays the load balancer: a device's first connection goes to
// the server it is pinned to, every later one to the ready server with the
// fewest connections. Like a load balancer it counts the connections it
// routed, not what the servers report: a server counts a connection only
// once it accepted it, so devices that reconnect at once would all see
// the same counts and pick the same server.
type balancer struct {
	f  *fixture
	mu sync.Mutex
	at map[string]string // device -> server its last connection went to
}

func (b *balancer) connect(t *testing.T, device, pinned string) {
	c := scclient.New(scclient.Config{Addr: "lb", Device: device, Token: "x", BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Dial: func(ctx context.Context, network, _ string) (_ netConn, err error) {
			b.mu.Lock()
			name, redial := b.at[device]
			if !redial {
				name = pinned
			} else {
				delete(b.at, device)
				routed := map[string]int{}
				for _, n := range b.at {
					routed[n]++
				}
				best := -1
				for _, n := range b.f.names {
					if !b.f.servers[n].Draining() && (best < 0 || routed[n] < best) {
						best, name = routed[n], n
					}
				}
			}
			b.at[device] = name
			addr := b.f.servers[name].Addrs().TCP
			b.mu.Unlock()
			return dialer.DialContext(ctx, network, addr)
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func (f *fixture) eventually(what string, cond func() error) {
	f.t.Helper()
	poll.Until(f.t, 30*time.Second, what, cond)
}

func (f *fixture) connections() []int {
	var out []int
	for _, n := range f.names {
		out = append(out, f.servers[n].Connections())
	}
	return out
}

func TestPluginAgainstRealServers(t *testing.T) {
	f := newFixture(t, 3)
	b := &balancer{f: f, at: map[string]string{}}
	for i, pinned := range []string{"devices-0", "devices-0", "devices-0", "devices-0", "devices-0", "devices-0", "devices-1", "devices-2", "devices-2"} {
		b.connect(t, fmt.Sprintf("dev-%d", i), pinned)
	}
	f.eventually("9 devices connected", func() error {
		if c := f.connections(); !reflect.DeepEqual(c, []int{6, 1, 2}) {
			return fmt.Errorf("connections %v", c)
		}
		return nil
	})

	code, out, errOut := f.kubectlSC("status", "--direct")
	if code != 0 {
		t.Fatalf("status: %d %s", code, errOut)
	}
	for _, want := range []string{`SocketCluster \S+/devices: 3 desired`, `devices-0\s+true\s+5d8f7c\s+127\.0\.0\.1\s+6\s+false`,
		`devices-1\s+true\s+5d8f7c\s+127\.0\.0\.1\s+1\s+false`, `devices-2\s+true\s+5d8f7c\s+127\.0\.0\.1\s+2\s+false`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status lacks %s:\n%s", want, out)
		}
	}

	// device: asked through any pod, it names the pod holding the device.
	code, out, errOut = f.kubectlSC("--direct", "device", "dev-7")
	if code != 0 || !regexp.MustCompile(`connected\s+true`).MatchString(out) || !regexp.MustCompile(`pod\s+devices-2`).MatchString(out) ||
		!regexp.MustCompile(`session epoch\s+[1-9]`).MatchString(out) || !regexp.MustCompile(`pending\s+0`).MatchString(out) {
		t.Errorf("device: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := f.kubectlSC("--direct", "device", "nobody"); code != 1 || !strings.Contains(errOut, "not_found") {
		t.Errorf("unknown device: %d %s", code, errOut)
	}

	// rebalance: 9 over 3 pods, devices-0 sheds 3; the balancer sends them
	// to the others.
	code, out, _ = f.kubectlSC("--direct", "rebalance", "--dry-run")
	if code != 0 || strings.TrimSpace(out) != "pod devices-0: would shed 3 of 6 connections" {
		t.Errorf("rebalance --dry-run: %d %q", code, out)
	}
	if c := f.connections(); !reflect.DeepEqual(c, []int{6, 1, 2}) {
		t.Errorf("a dry run moved devices: %v", c)
	}
	code, out, errOut = f.kubectlSC("--direct", "rebalance")
	if code != 0 || strings.TrimSpace(out) != "pod devices-0: shedding 3 of 6 connections" {
		t.Fatalf("rebalance: %d %q %s", code, out, errOut)
	}
	f.eventually("balanced", func() error {
		if c := f.connections(); !reflect.DeepEqual(c, []int{3, 3, 3}) {
			return fmt.Errorf("connections %v", c)
		}
		return nil
	})
	if code, out, _ := f.kubectlSC("--direct", "rebalance"); code != 0 || !strings.HasPrefix(out, "balanced: 3 ready pods") {
		t.Errorf("second rebalance: %d %q", code, out)
	}

	code, out, _ = f.kubectlSC("--direct", "top", "--count", "2", "--interval", "10ms")
	if n := len(regexp.MustCompile(`(?m)^TOTAL\s+9`).FindAllString(out, -1)); code != 0 || n != 2 {
		t.Errorf("top: %d, %d totals of 9:\n%s", code, n, out)
	}

	// drain with --delete: the pod's devices move, then it is deleted.
	code, out, errOut = f.kubectlSC("--direct", "drain", "devices-2", "--delete")
	if code != 0 || !strings.Contains(out, "pod devices-2 drained: 0 connections remaining") || !strings.Contains(out, "pod devices-2 deleted") {
		t.Fatalf("drain: %d %q %s", code, out, errOut)
	}
	if err := f.k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: "devices-2"}, &corev1.Pod{}); !apierrors.IsNotFound(err) {
		t.Errorf("drained pod still there: %v", err)
	}
	f.eventually("devices on the other pods", func() error {
		if c := f.connections(); c[0]+c[1] != 9 {
			return fmt.Errorf("connections %v", c)
		}
		return nil
	})
	if code, _, errOut := f.kubectlSC("--direct", "drain", "elsewhere"); code != 1 || !strings.Contains(errOut, `"elsewhere" is not a pod of SocketCluster`) {
		t.Errorf("drain of a foreign pod: %d %s", code, errOut)
	}
}

// Without --direct the plugin opens a port-forward through the API server.
// envtest has no kubelet, so the forward fails at the API server (the pod
// has no node); the plugin says which pod and what to try instead. The
// tunnel itself is only exercised on a real cluster.
func TestPortForwardReachesTheAPIServer(t *testing.T) {
	f := newFixture(t, 1)
	code, _, errOut := f.kubectlSC("drain", "devices-0", "--timeout", "20s")
	if code != 1 || !strings.Contains(errOut, "port-forward to devices-0:") || !strings.Contains(errOut, "--direct") {
		t.Errorf("drain through a port-forward without a kubelet: %d %s", code, errOut)
	}
	if f.servers["devices-0"].Draining() {
		t.Error("the server drains although the forward failed")
	}
}

// Two SocketClusters in a namespace: the plugin asks which one.
func TestAmbiguousCluster(t *testing.T) {
	f := newFixture(t, 1)
	other := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: f.ns}}
	other.Spec.Redis.Addresses = []string{"redis:6379"}
	other.Spec.Auth.InsecureNoAuth = true
	other.Spec.Replicas = ptr.To[int32](1)
	if err := f.k8s.Create(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := f.kubectlSC("--direct", "status"); code != 1 || !strings.Contains(errOut, "has 2 SocketClusters (devices, other): name one with -c") {
		t.Errorf("ambiguous: %d %s", code, errOut)
	}
	if code, out, errOut := f.kubectlSC("--direct", "-c", "devices", "status"); code != 0 || !strings.Contains(out, "devices-0") {
		t.Errorf("-c devices: %d %s %s", code, out, errOut)
	}
}

type netConn = net.Conn

var dialer net.Dialer
