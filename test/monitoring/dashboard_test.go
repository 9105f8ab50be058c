package monitoring

import (
	"bufio"
	"fmt"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers"
	"github.com/socketcluster/socketcluster/internal/servertest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// exportedMetrics returns the names a socketserver serves on /metrics and
// those the operator registers on controller-runtime's registry.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	srv := startServer(t, store.NewMemory(), "names")
	resp, err := http.Get("http://" + srv.Addrs().Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		names[line[:strings.IndexAny(line, "{ ")]] = true
	}
	// A SocketCluster's conditions make the operator's gauge appear.
	sample := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Namespace: "monitoring-test", Name: "names"}}
	sample.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionDegraded, Status: metav1.ConditionFalse}}
	controllers.RecordConditions(sample)
	mfs, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

// startServer runs an in-process socketserver on loopback ports, on st.
func startServer(t *testing.T, st store.Store, name string) *socketserver.Server {
	t.Helper()
	return servertest.Start(t, socketserver.Config{TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerName: name, InsecureNoAuth: true, InsecureNoAPIAuth: true, StatsInterval: 200 * time.Millisecond,
		AuditInterval: 200 * time.Millisecond}, st, logr.Discard())
}

// Every panel's and every alert's expression parses (promtool loads them
// as recording rules) and names only metrics the servers or the operator
// export.
func TestQueriesNameExportedMetrics(t *testing.T) {
	exprs := dashboardExprs(t)
	for _, a := range alerts(t) {
		exprs["alert "+a.Alert] = a.Expr
	}
	exported := exportedMetrics(t)
	keys := make([]string, 0, len(exprs))
	for k := range exprs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var g ruleGroups
	g.Groups = append(g.Groups, struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	}{Name: "queries"})
	for i, k := range keys {
		expr := grafanaVars(exprs[k], "apps")
		g.Groups[0].Rules = append(g.Groups[0].Rules, rule{Record: fmt.Sprintf("query:%d", i), Expr: expr})
		sels := selectors(expr)
		if len(sels) == 0 {
			t.Errorf("%s: no selector found in %s", k, expr)
		}
		for _, s := range sels {
			if !exported[metricName(s)] {
				t.Errorf("%s: %s is not exported by a socketserver or the operator", k, metricName(s))
			}
		}
	}
	promtool := tool(t, "promtool")
	dir := t.TempDir()
	writeRuleFile(t, dir, g)
	cmd := exec.Command(promtool, "check", "rules", "rules.yaml")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the queries: %v\n%s", err, out)
	}
}
