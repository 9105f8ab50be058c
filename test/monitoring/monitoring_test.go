// Package monitoring tests the alerts (config/prometheus/rules.yaml) and
// the Grafana dashboard (config/grafana/) against real software: promtool's
// rule unit tests, the metrics the socketservers and the operator export,
// and a real Prometheus scraping real socketservers.
package monitoring

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	rulesFile     = "../../config/prometheus/rules.yaml"
	rulesTests    = "../../config/prometheus/tests/alerts_test.yaml"
	dashboardFile = "../../config/grafana/socketcluster-dashboard.json"
	operationsDoc = "../../docs/operations.md"
)

// tool finds a Prometheus binary (Debian's prometheus package has both).
// Without it the test skips, unless CI is set, where that is a failure.
func tool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") == "" {
		t.Skipf("%s not found: apt-get install prometheus; with CI set this is a failure", name)
	}
	t.Fatalf("%s not found (CI is set): apt-get install prometheus", name)
	return ""
}

type rule struct {
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

// loadRules reads the PrometheusRule and returns its spec, which is a
// Prometheus rule file.
func loadRules(t *testing.T) ruleGroups {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   map[string]string `json:"metadata"`
		Spec       ruleGroups        `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(b, &pr); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if pr.Kind != "PrometheusRule" || len(pr.Spec.Groups) == 0 {
		t.Fatalf("%s is not a PrometheusRule with groups", rulesFile)
	}
	return pr.Spec
}

func alerts(t *testing.T) []rule {
	var out []rule
	for _, g := range loadRules(t).Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// writeRuleFile writes groups as a Prometheus rule file in dir.
func writeRuleFile(t *testing.T, dir string, groups ruleGroups) string {
	t.Helper()
	b, err := yaml.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

type panel struct {
	ID      int    `json:"id"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// dashboardExprs returns every panel's expressions, keyed "panel title #n".
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	out := map[string]string{}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			out[p.Title+" #"+string(rune('A'+i))] = tg.Expr
		}
	}
	if len(out) == 0 {
		t.Fatal("the dashboard has no panel queries")
	}
	return out
}

// grafanaVars replaces the dashboard's variables with what a query in
// Prometheus itself takes: the namespace under test, every pod.
func grafanaVars(expr, namespace string) string {
	return strings.NewReplacer("$__rate_interval", "1m", "$namespace", namespace, "$pod", ".+").Replace(expr)
}
