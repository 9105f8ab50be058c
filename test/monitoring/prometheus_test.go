package monitoring

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// A real Prometheus scrapes two real socketservers on a real Redis, with
// devices connected and messages flowing both ways, and the operator's
// metrics endpoint (controller-runtime's registry, where the manager serves
// socketcluster_condition). It loads the alert rules as they are, and
// every selector of every alert and dashboard panel must return series:
// an alert's full expression is rightly empty while all is well, but a
// selector that matches nothing means the alert can never fire.
func TestPrometheusScrapesEverySelector(t *testing.T) {
	prom := tool(t, "prometheus")
	r := redistest.Start(t)
	servers := []*socketserver.Server{
		startServer(t, store.NewRedis(r.Client(), "mon"), "devices-a"),
		startServer(t, store.NewRedis(r.Client(), "mon"), "devices-b"),
	}
	traffic(t, servers)
	operator := serveOperatorMetrics(t)

	dir := t.TempDir()
	writeRuleFile(t, dir, loadRules(t))
	var targets strings.Builder
	for i, s := range servers {
		fmt.Fprintf(&targets, "  - targets: [%q]\n    labels: {namespace: apps, pod: devices-%c}\n", s.Addrs().Admin, 'a'+i)
	}
	// The labels a PodMonitor gives the socketservers' series (namespace,
	// pod); the operator's own namespace and name labels win (honor_labels,
	// as in its ServiceMonitor).
	cfg := fmt.Sprintf(`global: {scrape_interval: 250ms, evaluation_interval: 250ms}
rule_files: [rules.yaml]
scrape_configs:
- job_name: socketservers
  static_configs:
%s- job_name: operator
  honor_labels: true
  static_configs:
  - targets: [%q]
    labels: {namespace: socketcluster-system, pod: operator-0}
`, targets.String(), operator)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	api := startPrometheus(t, prom, dir)

	waitFor(t, "3 targets up", func() (bool, string) {
		res, err := api.query(`up == 1`)
		return err == nil && len(res) == 3, fmt.Sprintf("%d up, %v", len(res), err)
	})

	exprs := dashboardExprs(t)
	for _, a := range alerts(t) {
		exprs["alert "+a.Alert] = a.Expr
	}
	keys := make([]string, 0, len(exprs))
	for k := range exprs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	checked := map[string]bool{}
	for _, k := range keys {
		expr := grafanaVars(exprs[k], "apps")
		// The whole expression is valid PromQL for this Prometheus.
		if _, err := api.query(expr); err != nil {
			t.Errorf("%s: %v", k, err)
		}
		for _, sel := range selectors(expr) {
			if checked[sel] {
				continue
			}
			checked[sel] = true
			waitFor(t, k+": "+sel, func() (bool, string) {
				res, err := api.query(sel)
				return err == nil && len(res) > 0, fmt.Sprintf("%d series, %v", len(res), err)
			})
		}
	}
	// The rules Prometheus loaded are the file's, all healthy.
	var rules struct {
		Groups []struct {
			Rules []struct {
				Name   string `json:"name"`
				Health string `json:"health"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := api.get("/api/v1/rules", nil, &rules); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health == "err" {
				t.Errorf("rule %s: health %s", r.Name, r.Health)
			}
		}
	}
	if n != len(alerts(t)) {
		t.Errorf("Prometheus loaded %d rules, the file has %d", n, len(alerts(t)))
	}
	t.Logf("%d expressions, %d distinct selectors, each with series", len(exprs), len(checked))
}

// traffic connects devices to both servers over TCP, sends them messages
// through the admin API and has them publish, until every message arrived.
func traffic(t *testing.T, servers []*socketserver.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 64)
	done := make(chan struct{})
	var clients []*client.Client
	for i := range 6 {
		s := servers[i%len(servers)]
		device := fmt.Sprintf("dev-%d", i)
		c := client.New(client.Config{Addr: s.Addrs().TCP, Device: device, Token: "x",
			OnMessage: func(seq uint64, p []byte) { got <- device + " " + string(p) }})
		clients = append(clients, c)
		go func() { _ = c.Run(ctx); done <- struct{}{} }()
	}
	t.Cleanup(func() {
		cancel()
		for range clients {
			<-done
		}
	})
	for i, c := range clients {
		if _, err := c.Publish(ctx, []byte("hello")); err != nil {
			t.Fatalf("publish of dev-%d: %v", i, err)
		}
	}
	for i := range clients {
		admin := &adminapi.Client{BaseURL: servers[(i+1)%len(servers)].Addrs().Admin}
		if _, err := admin.Send(ctx, fmt.Sprintf("dev-%d", i), []byte("order"), ""); err != nil {
			t.Fatal(err)
		}
	}
	for range clients {
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			t.Fatal("a device did not get its message")
		}
	}
}

// serveOperatorMetrics serves controller-runtime's metrics registry, as
// the manager does, with one SocketCluster's conditions recorded.
func serveOperatorMetrics(t *testing.T) string {
	t.Helper()
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "devices"}}
	sc.Status.Conditions = []metav1.Condition{
		{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionFalse},
		{Type: v1alpha1.ConditionAvailable, Status: metav1.ConditionTrue},
	}
	controllers.RecordConditions(sc)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

type promAPI struct{ base string }

// startPrometheus runs prometheus on a free loopback port with the config
// in dir, until the test ends, and waits until it is ready. The port is
// picked free, then bound by prometheus: another process may take it in
// between, so a start that finds it taken is retried on a new one.
func startPrometheus(t *testing.T, bin, dir string) promAPI {
	t.Helper()
	for attempt := 0; ; attempt++ {
		api, err := tryPrometheus(t, bin, dir)
		if err == nil {
			return api
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
}

func tryPrometheus(t *testing.T, bin, dir string) (promAPI, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return promAPI{}, err
	}
	addr := l.Addr().String()
	_ = l.Close()
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		return promAPI{}, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--config.file=prometheus.yml", "--storage.tsdb.path=data",
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return promAPI{}, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	log := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
	for {
		select {
		case err := <-exited:
			return promAPI{}, fmt.Errorf("prometheus exited: %v\n%s", err, log())
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log())
		}
	})
	return promAPI{base: "http://" + addr}, nil
}

func (p promAPI) get(path string, q url.Values, out any) error {
	resp, err := http.Get(p.base + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s", path, body.Error)
	}
	return json.Unmarshal(body.Data, out)
}

// query evaluates expr now and returns its series.
func (p promAPI) query(expr string) ([]json.RawMessage, error) {
	var data struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	}
	if err := p.get("/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, fmt.Errorf("%s: %w", expr, err)
	}
	return data.Result, nil
}

// waitFor polls cond until it holds, or fails after a minute with its last word.
func waitFor(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Until(t, time.Minute, what, func() error {
		if ok, last := cond(); !ok {
			return errors.New(last)
		}
		return nil
	})
}
