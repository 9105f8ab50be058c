package controllers_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// setAvailable plays the Deployment controller (envtest runs none): the
// Deployment has seen its spec and n pods are available.
func setAvailable(t *testing.T, c client.Client, ns, name string, n int32) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d := &appsv1.Deployment{}
		if err := c.Get(ctx, key(ns, name), d); err != nil {
			return err
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		return c.Status().Update(ctx, d)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// revisionDeployments returns the SocketCluster's Deployments by name.
func revisionDeployments(c client.Client, ns string) (map[string]*appsv1.Deployment, error) {
	list := &appsv1.DeploymentList{}
	if err := c.List(ctx, list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	out := map[string]*appsv1.Deployment{}
	for i := range list.Items {
		out[list.Items[i].Name] = &list.Items[i]
	}
	return out, nil
}

// An existing Surge cluster turns ReconnectOnce with a new image: the new
// revision starts maxSurge pods at a time beside the old Deployment while
// the Service keeps every device where it is, the Service switches only
// when the new revision is ready in full, the old Deployment goes only once
// its pods are empty, and the status says so at every step. Back to Surge,
// the revision Deployment goes once the Surge one is ready.
func TestReconnectOnceRollout(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	rs := redistest.Start(t)
	addr, rdb := rs.Addr, rs.Client()
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  replicas: 4
  redis: {addresses: ["`+addr+`"], keyPrefix: ro}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
  drain: {preStopWait: 1s}
  rollout: {maxSurge: 50%}
`)
	deployment(t, c, ns, anyDeployment)
	setAvailable(t, c, ns, "edge", 4)
	publish := func(pod string, conns int64) {
		publishStats(t, rdb, "ro", pod, store.ServerStats{Connections: conns, Draining: true, UpdatedUnixMs: time.Now().UnixMilli()})
	}
	// A pod of the Surge Deployment, holding devices (envtest has no kubelet).
	createPods(t, c, ns, resources.Labels(sc), "edge-old-1")
	publish("edge-old-1", 500)

	patchSpec(t, c, ns, "edge", `{"image":"socketcluster/socketcluster:next","rollout":{"strategy":"ReconnectOnce"}}`)
	var rev string
	eventually(t, "the new revision starts 2 pods while the Service selects every pod", func() error {
		ds, err := revisionDeployments(c, ns)
		if err != nil {
			return err
		}
		if len(ds) != 2 || ds["edge"] == nil {
			return fmt.Errorf("deployments %v, want edge and one revision", keys(ds))
		}
		for name, d := range ds {
			if name != "edge" {
				rev = d.Labels[resources.LabelRevision]
				if name != "edge-"+rev || *d.Spec.Replicas != 2 || d.Spec.Template.Spec.Containers[0].Image != "socketcluster/socketcluster:next" {
					return fmt.Errorf("revision Deployment %s: replicas %d", name, *d.Spec.Replicas)
				}
			}
		}
		return serviceSelects(c, ns, "")
	})
	checkStatus(t, c, ns, func(sc *v1alpha1.SocketCluster) error {
		return errors.Join(conditionIs(sc, v1alpha1.ConditionDraining, metav1.ConditionTrue, v1alpha1.ReasonStartingRevision),
			conditionIs(sc, v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRolloutInProgress),
			conditionIs(sc, v1alpha1.ConditionAvailable, metav1.ConditionTrue, v1alpha1.ReasonMinimumReplicasReady))
	})

	setAvailable(t, c, ns, "edge-"+rev, 2)
	eventually(t, "the next 2 pods", func() error {
		d := &appsv1.Deployment{}
		if err := c.Get(ctx, key(ns, "edge-"+rev), d); err != nil {
			return err
		}
		if *d.Spec.Replicas != 4 {
			return fmt.Errorf("replicas %d, want 4", *d.Spec.Replicas)
		}
		return serviceSelects(c, ns, "") // not all ready: no switch
	})
	setAvailable(t, c, ns, "edge-"+rev, 4)
	eventually(t, "the Service switches to the new revision", func() error { return serviceSelects(c, ns, rev) })
	checkStatus(t, c, ns, func(sc *v1alpha1.SocketCluster) error {
		if sc.Status.ActiveRevision != rev || sc.Status.ActiveSince == nil {
			return fmt.Errorf("active revision %q since %v", sc.Status.ActiveRevision, sc.Status.ActiveSince)
		}
		if want := "app.kubernetes.io/instance=edge,app.kubernetes.io/name=socketserver," + resources.LabelRevision + "=" + rev; sc.Status.Selector != want {
			return fmt.Errorf("scale selector %q, want %q", sc.Status.Selector, want)
		}
		var pod *v1alpha1.PodStatus
		for i := range sc.Status.Pods {
			if sc.Status.Pods[i].Name == "edge-old-1" {
				pod = &sc.Status.Pods[i]
			}
		}
		if pod == nil || pod.Connections == nil || *pod.Connections != 500 || !pod.Draining || pod.Revision != "" {
			return fmt.Errorf("status.pods %+v", sc.Status.Pods)
		}
		return conditionIs(sc, v1alpha1.ConditionDraining, metav1.ConditionTrue, v1alpha1.ReasonDrainingOldRevision)
	})
	// Devices left on the old pod: its Deployment stays. The reconcile
	// that wrote this message decided so (it deletes before the status).
	checkStatus(t, c, ns, func(sc *v1alpha1.SocketCluster) error {
		if c := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionDraining); c == nil || !strings.Contains(c.Message, "500 connections left") {
			return fmt.Errorf("Draining %+v, want the 500 connections left", c)
		}
		return nil
	})
	if err := c.Get(ctx, key(ns, "edge"), &appsv1.Deployment{}); err != nil {
		t.Fatalf("the old Deployment went while its pod held devices: %v", err)
	}

	publish("edge-old-1", 0)
	touch(t, c, ns, "edge")
	eventually(t, "the empty old Deployment goes", func() error {
		err := c.Get(ctx, key(ns, "edge"), &appsv1.Deployment{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("old Deployment: %v", err)
		}
		return nil
	})
	old := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edge-old-1"}}
	if err := c.Delete(ctx, old); err != nil { // the garbage collector's part
		t.Fatal(err)
	}
	checkStatus(t, c, ns, func(sc *v1alpha1.SocketCluster) error {
		return errors.Join(conditionIs(sc, v1alpha1.ConditionDraining, metav1.ConditionFalse, v1alpha1.ReasonNoOldRevision),
			conditionIs(sc, v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonRolloutComplete))
	})

	// Back to Surge: the Deployment "edge" again; the revision goes once it is ready.
	patchSpec(t, c, ns, "edge", `{"rollout":{"strategy":"Surge"}}`)
	deployment(t, c, ns, anyDeployment)
	if err := c.Get(ctx, key(ns, "edge-"+rev), &appsv1.Deployment{}); err != nil {
		t.Fatalf("the revision went before the Surge Deployment was ready: %v", err)
	}
	setAvailable(t, c, ns, "edge", 4)
	eventually(t, "the revision Deployment goes", func() error {
		if err := c.Get(ctx, key(ns, "edge-"+rev), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("revision Deployment: %v", err)
		}
		return serviceSelects(c, ns, "")
	})
}

func keys(m map[string]*appsv1.Deployment) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// serviceSelects checks that the public Service selects the pods of
// revision, or every pod when it is empty.
func serviceSelects(c client.Client, ns, revision string) error {
	svc := &corev1.Service{}
	if err := c.Get(ctx, key(ns, "edge"), svc); err != nil {
		return err
	}
	if got := svc.Spec.Selector[resources.LabelRevision]; got != revision {
		return fmt.Errorf("Service selects revision %q, want %q", got, revision)
	}
	return nil
}

func checkStatus(t *testing.T, c client.Client, ns string, ok func(*v1alpha1.SocketCluster) error) {
	t.Helper()
	eventually(t, "status", func() error {
		sc := &v1alpha1.SocketCluster{}
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		return ok(sc)
	})
}
