//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

const adminPort = 9090

// TestSmoke: a plain Deployment of the product image runs as real Pods that
// answer on their pod IPs, and `kubectl set image` rolls it to the second
// tag with every replica replaced.
func TestSmoke(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, "smoke")
	tagA, tagB := imageTags(t)
	deploys := cluster.kube.AppsV1().Deployments(ns)

	start := time.Now()
	if _, err := deploys.Create(ctx, smokeDeployment(image(tagA)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "3 ready replicas", func() error { return rolledOut(ctx, ns, image(tagA)) })
	before := healthyPods(t, ctx, ns, image(tagA))
	t.Logf("3 replicas ready in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	kubectl(t, "-n", ns, "set", "image", "deployment/socketserver", "socketserver="+image(tagB))
	kubectl(t, "-n", ns, "rollout", "status", "deployment/socketserver", "--timeout=3m")
	eventually(t, time.Minute, "rollout to "+tagB, func() error { return rolledOut(ctx, ns, image(tagB)) })
	after := healthyPods(t, ctx, ns, image(tagB))
	t.Logf("rolled to %s in %s", tagB, time.Since(start).Round(time.Millisecond))

	for uid, name := range after {
		if old, ok := before[uid]; ok {
			t.Errorf("pod %s (%s) survived the rollout", name, old)
		}
	}
}

func smokeDeployment(img string) *appsv1.Deployment {
	labels := map[string]string{"app.kubernetes.io/name": "socketserver"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "socketserver", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxUnavailable: ptr.To(intstr.FromInt32(0)),
				MaxSurge:       ptr.To(intstr.FromInt32(1)),
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					// The image's own user (65532) must be non-root, or the kubelet refuses it.
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)},
					Containers: []corev1.Container{{
						Name:            "socketserver",
						Image:           img,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"--insecure-no-auth", "--insecure-no-api-auth", "--drain-timeout=5s"},
						Ports:           []corev1.ContainerPort{{Name: "admin", ContainerPort: adminPort}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("admin")}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
}

// rolledOut is nil once the Deployment runs img on all its replicas, all
// ready, with no old replica left.
func rolledOut(ctx context.Context, ns, img string) error {
	d, err := cluster.kube.AppsV1().Deployments(ns).Get(ctx, "socketserver", metav1.GetOptions{})
	if err != nil {
		return err
	}
	want := *d.Spec.Replicas
	s := d.Status
	if d.Spec.Template.Spec.Containers[0].Image != img || s.ObservedGeneration < d.Generation ||
		s.UpdatedReplicas != want || s.ReadyReplicas != want || s.Replicas != want {
		return fmt.Errorf("image %s, status %+v", d.Spec.Template.Spec.Containers[0].Image, s)
	}
	return nil
}

// healthyPods waits until exactly the Deployment's replicas exist (old ones
// gone), checks that each runs img and answers /healthz on its pod IP, and
// returns them by UID.
func healthyPods(t *testing.T, ctx context.Context, ns, img string) map[string]string {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, time.Minute, "only the new pods", func() error {
		list, err := cluster.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		pods = list.Items
		if len(pods) != 3 {
			return fmt.Errorf("%d pods", len(pods))
		}
		return nil
	})
	client := &http.Client{Timeout: 5 * time.Second}
	byUID := map[string]string{}
	for _, p := range pods {
		if got := p.Spec.Containers[0].Image; got != img {
			t.Errorf("pod %s runs %s, want %s", p.Name, got, img)
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(adminPort)) + "/healthz"
		resp, err := client.Get(url)
		if err != nil {
			t.Errorf("pod %s: %v", p.Name, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", url, resp.Status)
		}
		byUID[string(p.UID)] = p.Name
	}
	return byUID
}
