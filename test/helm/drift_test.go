package helm

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestChartCopiesMatchConfig keeps the chart's copies of the generated CRDs
// and RBAC rules (controller-gen writes them from the operator's markers),
// the alerts and the dashboard identical to config/.
func TestChartCopiesMatchConfig(t *testing.T) {
	const fix = "run make chart-sync"
	crds := func(dir string) []string {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for i, f := range files {
			files[i] = filepath.Base(f)
		}
		return files
	}
	generated, copied := crds(filepath.Join(configDir, "crd", "bases")), crds(filepath.Join(chartDir, "files", "crds"))
	if len(generated) == 0 {
		t.Fatalf("no CRDs in %s/crd/bases: run make manifests", configDir)
	}
	if !slices.Equal(generated, copied) {
		t.Fatalf("chart CRDs %v, config/crd/bases %v: %s", copied, generated, fix)
	}
	pairs := map[string]string{
		filepath.Join(configDir, "rbac", "role.yaml"):                       filepath.Join(chartDir, "files", "rbac", "role.yaml"),
		filepath.Join(configDir, "prometheus", "rules.yaml"):                filepath.Join(chartDir, "files", "prometheus", "rules.yaml"),
		filepath.Join(configDir, "grafana", "socketcluster-dashboard.json"): filepath.Join(chartDir, "files", "grafana", "socketcluster-dashboard.json"),
	}
	for _, name := range generated {
		pairs[filepath.Join(configDir, "crd", "bases", name)] = filepath.Join(chartDir, "files", "crds", name)
	}
	for src, dst := range pairs {
		want, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatalf("%v: %s", err, fix)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s: %s", dst, src, fix)
		}
	}
}
