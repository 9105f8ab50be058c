// Package helm tests the chart in charts/socketcluster-operator: lint,
// rendering with every ci/*-values.yaml, the values schema, drift against
// config/, and installing it on a real kube-apiserver (envtest).
package helm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

const (
	chartDir  = "../../charts/socketcluster-operator"
	configDir = "../../config"
	// releaseNamespace is where the tests install the chart.
	releaseNamespace = "socketcluster-system"
	// crdServed renders the chart as for a cluster that serves SocketClusters
	// already, as helm upgrade does after the first install.
	crdServed = "--api-versions=sockets.socketcluster.io/v1alpha1/SocketCluster"
)

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helmBinary is $HELM (set by make test) or the one hack/helm.sh builds from
// the Go module proxy.
func helmBinary(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() {
		if helmPath = os.Getenv("HELM"); helmPath != "" {
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("../../hack/helm.sh")
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			helmErr = errors.New(err.Error() + ": " + stderr.String())
			return
		}
		helmPath = strings.TrimSpace(string(out))
	})
	if helmErr != nil {
		t.Fatalf("helm is unavailable: set HELM to a helm v3 binary or make hack/helm.sh work: %v", helmErr)
	}
	return helmPath
}

// runHelm runs helm with its state directories inside the test's temp dir,
// so that tests leave nothing in $HOME.
func runHelm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(helmBinary(t), args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), errors.New(err.Error() + ": " + stderr.String())
	}
	return stdout.String(), nil
}

// render runs helm template for the release "socketcluster" and decodes the objects.
func render(t *testing.T, args ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := runHelm(t, append([]string{"template", "socketcluster", chartDir, "--namespace", releaseNamespace}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v", args, err)
	}
	return decodeAll(t, out)
}

func decodeAll(t *testing.T, manifests string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("decoding rendered chart: %v\n%s", err, manifests)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}

// valueSets lists the value sets CI must cover: the defaults ("") and
// every ci/*-values.yaml of the chart.
func valueSets(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci/*-values.yaml in %s (%v)", chartDir, err)
	}
	return append([]string{""}, files...)
}

// valuesName names a value set in test names.
func valuesName(values string) string {
	if values == "" {
		return "default"
	}
	return filepath.Base(values)
}

// valuesArgs are the helm arguments that select a value set.
func valuesArgs(values string) []string {
	if values == "" {
		return nil
	}
	return []string{"--values", values}
}

func readYAMLFile(t *testing.T, path string) *unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (the operator's generated manifests; run make manifests)", err)
	}
	objs := decodeAll(t, string(b))
	if len(objs) != 1 {
		t.Fatalf("%s: want 1 object, got %d", path, len(objs))
	}
	return objs[0]
}

func TestLint(t *testing.T) {
	for _, values := range valueSets(t) {
		t.Run(valuesName(values), func(t *testing.T) {
			args := append([]string{"lint", chartDir, "--strict", "--namespace", releaseNamespace}, valuesArgs(values)...)
			if out, err := runHelm(t, args...); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
		})
	}
}
