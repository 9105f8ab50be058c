//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// upgradeMix is the transport of each device of the rolling upgrade, in turn.
var upgradeMix = []string{"sse", "grpc", "mqtt", "tcp", "tcp"}

// sseOrTCP is the transport of device i of the rollout and autoscale tests.
func sseOrTCP(i int) string {
	if i%sseShare == 0 {
		return "sse"
	}
	return "tcp"
}

const (
	tcpPort  = 7000
	wsPort   = 8080 // WebSocket and SSE
	grpcPort = 7001
	mqttPort = 1883
	// sseShare: in the rollout and autoscale tests (TCP and SSE only), one
	// device in sseShare holds an SSE stream.
	sseShare  = 4
	redisPort = 6379
	scName    = "e2e"
)

// TestRollingUpgradeUnderLoad is the scenario the product exists for: the
// operator (installed by its chart) runs a 3-replica SocketCluster on Redis;
// E2E_DEVICES devices (default 2000; of every five one over SSE, one over
// gRPC, one over MQTT, the others over TCP) stay connected through pod IPs while
// backends send to them and they publish; then the image is patched, a pod
// is deleted and a container is killed hard. Every accepted message must
// reach its device once and in order, every acknowledged publish must be in
// the upstream stream once, every device must be back, the rollout must end
// on the new image, and drained pods must exit by themselves (code 0) within
// their grace period.
func TestRollingUpgradeUnderLoad(t *testing.T) {
	for _, f := range []string{"charts/socketcluster-operator/Chart.yaml", "cmd/manager/main.go"} {
		if _, err := os.Stat(filepath.Join(cluster.repo, f)); err != nil {
			t.Skipf("needs the operator chart and manager (%s is missing)", f)
		}
	}
	if !cluster.local {
		t.Skip("needs hack/local-cluster: it kills a container through that cluster's containerd")
	}
	nDevices := envInt(t, "E2E_DEVICES", 2000)
	ctx := context.Background()
	ns := namespace(t, "upgrade")
	tagA, tagB := imageTags(t)

	// 1. Redis, as a Pod of this test's namespace.
	redisIP := startRedis(t, ctx, ns)
	redisAddr := fmt.Sprintf("%s:%d", redisIP, redisPort)

	// 3. The operator, by its chart. No kube-proxy here, so it reaches the
	// API server at the address the cluster serves it on (see up.sh).
	installOperator(t, ns, tagA)

	// 4. A SocketCluster of 3 on that Redis. It names no API token: the
	// operator generates one.
	start := time.Now()
	applySocketCluster(t, ns, image(tagA), redisAddr)
	kubectl(t, "-n", ns, "wait", "--for=condition=Available", "socketcluster/"+scName, "--timeout=5m")
	t.Logf("SocketCluster available in %s", time.Since(start).Round(time.Millisecond))
	apiToken := generatedAPIToken(t, ctx, ns, scName)

	// 5. Devices and backends.
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	srv := &servers{}
	selector := map[string]string{resources.LabelName: resources.AppName, resources.LabelInstance: scName}
	go srv.refresh(loadCtx, ns, selector)
	devs := make([]*device, nDevices)
	var running sync.WaitGroup
	for i := range devs {
		devs[i] = newDevice(fmt.Sprintf("e2e-dev-%05d", i), srv, upgradeMix[i%len(upgradeMix)])
		running.Add(2)
		go func() { defer running.Done(); devs[i].client.Run(loadCtx) }()
		go func() { defer running.Done(); devs[i].publishLoop(loadCtx, 5*time.Second) }()
	}
	eventually(t, 5*time.Minute, "all devices connected", func() error { return allConnected(devs) })
	byTransport := map[string]int{}
	for i := range devs {
		byTransport[upgradeMix[i%len(upgradeMix)]]++
	}
	t.Logf("%d devices connected (%d over SSE, %d over gRPC, %d over MQTT, %d over TCP)", nDevices,
		byTransport["sse"], byTransport["grpc"], byTransport["mqtt"], byTransport["tcp"])

	sent, stopBackends := startBackends(loadCtx, devs, srv, apiToken, 8)
	time.Sleep(10 * time.Second) // traffic before the disruption
	connectionsReported(t, ns, nDevices)

	// 6. Roll to the second tag; meanwhile delete a pod and kill a container hard.
	exits := watchExits(t, loadCtx, ns, selector)
	start = time.Now()
	kubectl(t, "-n", ns, "patch", "socketcluster", scName, "--type=merge", "-p", `{"spec":{"image":"`+image(tagB)+`"}}`)
	kubectl(t, "-n", ns, "wait", "--for=condition=Progressing=True", "socketcluster/"+scName, "--timeout=2m")
	deletePod(t, ctx, ns, selector)
	eventually(t, 10*time.Minute, "rollout to "+tagB, func() error { return rolledOutTo(ctx, ns, scName, image(tagB)) })
	rollout := time.Since(start)
	killed := killContainer(t, ctx, ns, selector)
	eventually(t, 5*time.Minute, "killed pod ready again", func() error { return readyAgain(ctx, ns, killed) })
	kubectl(t, "-n", ns, "wait", "--for=condition=Available", "socketcluster/"+scName, "--timeout=5m")

	// 7. Settle, stop the backends, let every device catch up.
	time.Sleep(10 * time.Second)
	stopBackends()
	eventually(t, 5*time.Minute, "all devices connected again", func() error { return allConnected(devs) })
	eventually(t, 5*time.Minute, "all messages delivered", func() error { return allReceived(devs) })
	connectionsReported(t, ns, nDevices)
	kubectl(t, "-n", ns, "wait", "--for=condition=Progressing=False", "socketcluster/"+scName, "--timeout=2m")
	kubectl(t, "-n", ns, "wait", "--for=condition=Degraded=False", "socketcluster/"+scName, "--timeout=2m")
	stopLoad()
	running.Wait()

	// 8. Assertions and figures.
	var resumes []time.Duration
	var delivered, published int
	for _, d := range devs {
		if err := d.checkDelivery(); err != nil {
			t.Error(err)
		}
		resumes = append(resumes, d.resumes...)
		delivered += len(d.received)
		published += len(d.published)
	}
	checkUpstream(t, ctx, redisAddr, devs)
	drained := exits.drained()
	if len(drained) == 0 {
		t.Error("saw no replaced pod end, so nothing checked the grace period")
	}
	for pod, code := range drained {
		if code != 0 {
			t.Errorf("pod %s ended with exit code %d, want 0 (drained within its grace period)", pod, code)
		}
	}
	p50, p99, maxResume := percentiles(resumes)
	t.Logf("devices %d; backend messages accepted %d, delivered %d (each once); ambiguous sends %d, resent with the same key "+
		"(%d retries), answered duplicate %d, unknown outcomes %d; publishes acknowledged %d",
		nDevices, sent.accepted.Load(), delivered, sent.ambiguous.Load(), sent.retries.Load(), sent.duplicates.Load(),
		sent.unknown.Load(), published)
	t.Logf("rollout %s; pods seen ending %d; reconnects %d, resume p50 %s p99 %s max %s",
		rollout.Round(time.Millisecond), len(drained), len(resumes), p50, p99, maxResume)

	// 9. The load tool against the upgraded cluster: its own devices and
	// backends through the pod IPs, one pod drained by its admin API.
	runLoadTool(t, ctx, ns, selector, redisAddr, apiToken)
}

// runLoadTool runs socketbench against the ready pods with a drain storm;
// it exits non-zero when a message is lost or a device is not back.
func runLoadTool(t *testing.T, ctx context.Context, ns string, selector map[string]string, redisAddr, apiToken string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "socketbench")
	tokenFile := filepath.Join(t.TempDir(), "api-token")
	if err := os.WriteFile(tokenFile, []byte(apiToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/socketbench")
	build.Dir = cluster.repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build socketbench: %v\n%s", err, out)
	}
	pods, err := cluster.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(selector).String()})
	if err != nil {
		t.Fatal(err)
	}
	var addrs, admins []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" && podReady(&p) {
			addrs = append(addrs, net.JoinHostPort(p.Status.PodIP, strconv.Itoa(tcpPort)))
			admins = append(admins, net.JoinHostPort(p.Status.PodIP, strconv.Itoa(adminPort)))
		}
	}
	cmd := exec.CommandContext(ctx, bin, "--addrs", strings.Join(addrs, ","), "--admin-addrs", strings.Join(admins, ","),
		"--redis-addr", redisAddr, "--api-token-file", tokenFile, "--connections", "1000", "--deliver-rate", "200", "--publish-rate", "200",
		"--duration", "20s", "--settle", "45s", "--storm=drain", "--max-time", "4m")
	out, err := cmd.Output() // the table (with the ambiguous-send and duplicate counters); progress goes to stderr
	t.Logf("socketbench against %d pods:\n%s", len(addrs), out)
	if err != nil {
		t.Fatalf("socketbench: %v (lost messages, devices not back, or a failed run)", err)
	}
}

// connectionsReported waits until the SocketCluster's status counts every
// device (pods publish their counts every 5 s, the operator reads them
// every 15 s).
func connectionsReported(t *testing.T, ns string, want int) {
	t.Helper()
	eventually(t, 2*time.Minute, fmt.Sprintf("status.connections = %d", want), func() error {
		got := strings.TrimSpace(kubectlNoFail("-n", ns, "get", "socketcluster", scName, "-o", "jsonpath={.status.connections}"))
		if got != strconv.Itoa(want) {
			return fmt.Errorf("status.connections is %q", got)
		}
		return nil
	})
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// startRedis runs Redis (the image images.sh made from Debian's
// redis-server) as a Pod and returns its IP once it is ready.
func startRedis(t *testing.T, ctx context.Context, ns string) string {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "redis"},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)},
			Containers: []corev1.Container{{
				Name:            "redis",
				Image:           cluster.env["REDIS_IMAGE"],
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"--port", strconv.Itoa(redisPort), "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/tmp"},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt(redisPort)}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
	if _, err := cluster.kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var ip string
	eventually(t, 2*time.Minute, "redis ready", func() error {
		p, err := cluster.kube.CoreV1().Pods(ns).Get(ctx, "redis", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(p) {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		ip = p.Status.PodIP
		return nil
	})
	return ip
}

// installOperator installs the chart into ns with the operator image at
// tag, then points the manager at the API server's pod-network address.
func installOperator(t *testing.T, ns, tag string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(cluster.repo, "hack/helm.sh")).Output()
	if err != nil {
		t.Fatalf("hack/helm.sh: %v", err)
	}
	helm := strings.TrimSpace(string(out))
	release := "e2e-operator"
	cmd := exec.Command(helm, "install", release, filepath.Join(cluster.repo, "charts/socketcluster-operator"),
		"--kubeconfig", cluster.kubeconfig, "--namespace", ns, "--set", "watchNamespace="+ns,
		"--set", "image.repository="+cluster.env["IMAGE_REPO"], "--set", "image.tag="+tag, "--set", "image.pullPolicy=Never")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		// SocketClusters go first, while the operator still runs for them.
		kubectlNoFail("-n", ns, "delete", "socketclusters", "--all", "--timeout=2m")
		if out, err := exec.Command(helm, "uninstall", release, "--kubeconfig", cluster.kubeconfig, "--namespace", ns).CombinedOutput(); err != nil {
			t.Logf("helm uninstall: %v\n%s", err, out)
		}
		// The chart keeps its CRD; this run installed it, so it goes too.
		kubectlNoFail("delete", "crd", "socketclusters."+v1alpha1.GroupVersion.Group, "--ignore-not-found", "--timeout=1m")
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", cluster.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(strings.TrimPrefix(cfg.Host, "https://"), ":")
	kubectl(t, "-n", ns, "set", "env", "deployment", "-l", "app.kubernetes.io/instance="+release,
		"KUBERNETES_SERVICE_HOST="+host, "KUBERNETES_SERVICE_PORT="+port)
	kubectl(t, "-n", ns, "rollout", "status", "deployment", "-l", "app.kubernetes.io/instance="+release, "--timeout=3m")
}

// generatedAPIToken reads the admin API token the operator generated for
// the SocketCluster, from the Secret its status names.
func generatedAPIToken(t *testing.T, ctx context.Context, ns, name string) string {
	t.Helper()
	var secret string
	eventually(t, time.Minute, "status.apiTokenSecretName", func() error {
		secret = strings.TrimSpace(kubectlNoFail("-n", ns, "get", "socketcluster", name, "-o", "jsonpath={.status.apiTokenSecretName}"))
		if secret == "" {
			return fmt.Errorf("not set yet")
		}
		return nil
	})
	s, err := cluster.kube.CoreV1().Secrets(ns).Get(ctx, secret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(s.Data[resources.APITokenKey]))
	if len(token) < 32 {
		t.Fatalf("Secret %s: token of %d characters", secret, len(token))
	}
	return token
}

func applySocketCluster(t *testing.T, ns, img, redisAddr string) {
	t.Helper()
	manifest := fmt.Sprintf(`apiVersion: %s
kind: SocketCluster
metadata:
  name: %s
  namespace: %s
spec:
  replicas: 3
  image: %s
  imagePullPolicy: Never
  redis:
    addresses: [%q]
  auth:
    insecureNoAuth: true
  listeners:
    grpc:
      enabled: true
      port: %d
    mqtt:
      enabled: true
      port: %d
  drain:
    timeout: 20s
    jitter: 2s
`, v1alpha1.GroupVersion.String(), scName, ns, img, redisAddr, grpcPort, mqttPort)
	kubectlApply(t, manifest)
}

// rolledOutTo is nil once the SocketCluster's 3 pods all run img, all
// ready, and no other pod is left.
func rolledOutTo(ctx context.Context, ns, name, img string) error {
	pods, err := cluster.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: resources.LabelInstance + "=" + name})
	if err != nil {
		return err
	}
	if len(pods.Items) != 3 {
		return fmt.Errorf("%d pods", len(pods.Items))
	}
	for _, p := range pods.Items {
		if p.Spec.Containers[0].Image != img || !podReady(&p) || p.DeletionTimestamp != nil {
			return fmt.Errorf("pod %s: image %s ready %v", p.Name, p.Spec.Containers[0].Image, podReady(&p))
		}
	}
	return nil
}

// deletePod deletes one running pod of the cluster, as an operator of the
// cluster (or a node drain) would.
func deletePod(t *testing.T, ctx context.Context, ns string, selector map[string]string) {
	t.Helper()
	p := somePod(t, ctx, ns, selector)
	if err := cluster.kube.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted pod %s", p.Name)
}

// killContainer SIGKILLs the socketserver container of one pod through
// containerd (no drain, no grace) and returns the pod's name and restart
// count before the kill.
func killContainer(t *testing.T, ctx context.Context, ns string, selector map[string]string) podRestart {
	t.Helper()
	p := somePod(t, ctx, ns, selector)
	st := p.Status.ContainerStatuses[0]
	id := strings.TrimPrefix(st.ContainerID, "containerd://")
	cmd := exec.Command(cluster.env["CTR"], "--address", cluster.env["CONTAINERD_ADDRESS"], "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ctr tasks kill %s: %v\n%s", id, err, out)
	}
	t.Logf("killed the container of pod %s", p.Name)
	return podRestart{name: p.Name, restarts: st.RestartCount}
}

type podRestart struct {
	name     string
	restarts int32
}

// readyAgain is nil once the killed container was restarted and is ready.
func readyAgain(ctx context.Context, ns string, k podRestart) error {
	p, err := cluster.kube.CoreV1().Pods(ns).Get(ctx, k.name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if n := p.Status.ContainerStatuses[0].RestartCount; n <= k.restarts || !podReady(p) {
		return fmt.Errorf("restarts %d, ready %v", n, podReady(p))
	}
	return nil
}

func somePod(t *testing.T, ctx context.Context, ns string, selector map[string]string) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	eventually(t, time.Minute, "a ready pod", func() error {
		list, err := cluster.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: resources.LabelInstance + "=" + selector[resources.LabelInstance]})
		if err != nil {
			return err
		}
		for _, p := range list.Items {
			if podReady(&p) && p.DeletionTimestamp == nil && len(p.Status.ContainerStatuses) > 0 {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("none of %d", len(list.Items))
	})
	return pod
}

// exitWatch records how the socketserver container of each deleted pod
// ended, as the kubelet reports it before the pod goes away.
type exitWatch struct {
	mu    sync.Mutex
	codes map[string]int32
}

func watchExits(t *testing.T, ctx context.Context, ns string, selector map[string]string) *exitWatch {
	t.Helper()
	w, err := cluster.kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: resources.LabelInstance + "=" + selector[resources.LabelInstance]})
	if err != nil {
		t.Fatal(err)
	}
	ew := &exitWatch{codes: map[string]int32{}}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.DeletionTimestamp == nil || len(p.Status.ContainerStatuses) == 0 {
				continue
			}
			if term := p.Status.ContainerStatuses[0].State.Terminated; term != nil {
				ew.mu.Lock()
				ew.codes[p.Name] = term.ExitCode
				ew.mu.Unlock()
			}
		}
	}()
	return ew
}

func (ew *exitWatch) drained() map[string]int32 {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	return ew.codes
}

// checkUpstream: every acknowledged publish is in the upstream stream
// exactly once (one Redis, so no duplicates are allowed).
func checkUpstream(t *testing.T, ctx context.Context, addr string, devs []*device) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	entries, err := rdb.XRange(ctx, "scp:upstream", "-", "+").Result()
	if err != nil {
		t.Fatalf("read upstream stream: %v", err)
	}
	seen := map[string]int{}
	for _, e := range entries {
		seen[fmt.Sprint(e.Values["device"], "/", e.Values["id"])]++
	}
	for _, d := range devs {
		for _, id := range d.published {
			if n := seen[fmt.Sprint(d.name, "/", id)]; n != 1 {
				t.Errorf("publish %s/%d is in the upstream stream %d times, want 1", d.name, id, n)
			}
		}
	}
	t.Logf("upstream stream: %d entries", len(entries))
}
