//go:build e2e

// Package e2e runs the product on a real single-node Kubernetes with real
// Pods: the one hack/local-cluster/ starts on this machine, or the cluster
// KUBECONFIG names (whose nodes must already hold the images). Test traffic
// goes only to Pods the tests created (their IPs are routed to this host).
//
//	make e2e                      # starts a cluster, runs everything, stops it
//	E2E_KEEP_CLUSTER=1 make e2e   # leaves the cluster it started running
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is the cluster every test of the package uses.
var cluster struct {
	repo       string
	env        map[string]string // hack/local-cluster/env.sh
	kubeconfig string
	local      bool // it is hack/local-cluster's, so ctr reaches its containerd
	kube       kubernetes.Interface
}

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		code = 1
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		return 0, err
	}
	cluster.repo = repo
	out, err := script("env.sh")
	if err != nil {
		return 0, err
	}
	cluster.env = parseExports(out)

	cluster.kubeconfig = os.Getenv("KUBECONFIG")
	cluster.local = cluster.kubeconfig == "" || cluster.kubeconfig == cluster.env["KUBECONFIG"]
	if cluster.kubeconfig == "" {
		start := time.Now()
		out, err := script("up.sh", "-k")
		if err != nil {
			return 0, err
		}
		cluster.kubeconfig = strings.TrimSpace(out)
		if os.Getenv("E2E_KEEP_CLUSTER") == "" {
			defer func() {
				if _, err := script("down.sh"); err != nil {
					fmt.Fprintln(os.Stderr, "e2e: cluster down:", err)
				}
			}()
		}
		fmt.Printf("e2e: cluster up in %s\n", time.Since(start).Round(time.Second))
	}
	if cluster.local {
		start := time.Now()
		if _, err := script("images.sh"); err != nil {
			return 0, err
		}
		fmt.Printf("e2e: images built and imported in %s\n", time.Since(start).Round(time.Second))
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", cluster.kubeconfig)
	if err != nil {
		return 0, err
	}
	if cluster.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// script runs hack/local-cluster/NAME and returns its standard output; its
// progress lines go to stderr as they come.
func script(name string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(cluster.repo, "hack/local-cluster", name), args...)
	cmd.Dir = cluster.repo
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return string(out), nil
}

// parseExports reads `export KEY="value"` lines.
func parseExports(s string) map[string]string {
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if u, err := strconv.Unquote(v); ok && err == nil {
			env[k] = u
		}
	}
	return env
}

// image is the product image with the given tag (of E2E's IMAGE_TAGS).
func image(tag string) string { return cluster.env["IMAGE_REPO"] + ":" + tag }

// imageTags are the tags images.sh gave the one product build.
func imageTags(t *testing.T) (string, string) {
	tags := strings.Fields(cluster.env["IMAGE_TAGS"])
	if len(tags) < 2 {
		t.Fatalf("IMAGE_TAGS %q: need two tags of one build", cluster.env["IMAGE_TAGS"])
	}
	return tags[0], tags[1]
}

// kubectl runs kubectl against the cluster and returns its output.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(cluster.env["KUBECTL"], append([]string{"--kubeconfig", cluster.kubeconfig}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// kubectlApply applies a manifest, failing the test with kubectl's words.
func kubectlApply(t *testing.T, manifest string) {
	t.Helper()
	cmd := exec.Command(cluster.env["KUBECTL"], "--kubeconfig", cluster.kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// namespace creates a namespace for one test and deletes it (waiting until
// it is gone, so that the cluster is empty for the next test) afterwards.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := cluster.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "e2e-" + prefix + "-",
		Labels:       map[string]string{"app.kubernetes.io/part-of": "socketcluster-e2e"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(kubectlNoFail("get", "all,events", "-n", ns.Name, "-o", "wide"))
		}
		if err := cluster.kube.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", ns.Name, err)
			return
		}
		eventually(t, 3*time.Minute, "namespace "+ns.Name+" deleted", func() error {
			_, err := cluster.kube.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there (%v)", err)
		})
	})
	return ns.Name
}

// kubectlNoFail is kubectl for diagnostics: errors become part of the text.
func kubectlNoFail(args ...string) string {
	out, err := exec.Command(cluster.env["KUBECTL"], append([]string{"--kubeconfig", cluster.kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s(kubectl: %v)", out, err)
	}
	return string(out)
}

// eventually retries check until it returns nil, failing the test with the
// last error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	poll.Until(t, timeout, what, check)
}
