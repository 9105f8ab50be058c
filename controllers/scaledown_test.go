package controllers_test

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/controllers/scaledown"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// runPod plays a running, ready pod (envtest has no kubelet): a real
// socketserver whose admin API listens on ip:adminPort, the address the
// operator calls, and the pod's status pointing there.
func runPod(t *testing.T, c client.Client, ns string, labels map[string]string, name, ip string, adminPort int, token string) *adminapi.Client {
	t.Helper()
	startServer(t, socketserver.Config{
		TCPAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", AdminAddr: net.JoinHostPort(ip, strconv.Itoa(adminPort)),
		ServerName: name, InsecureNoAuth: true, APIToken: token, DrainTimeout: time.Hour,
	}, store.NewMemory())
	createPods(t, c, ns, labels, name)
	readyPod(t, c, ns, name, ip)
	return &adminapi.Client{BaseURL: net.JoinHostPort(ip, strconv.Itoa(adminPort)), Token: token}
}

// fleet is a SocketCluster of ready pods, each a real socketserver whose
// admin API the operator calls, with the counts they publish.
type fleet struct {
	t     *testing.T
	c     client.Client
	ns    string
	rdb   *redis.Client
	conns map[string]int64
	admin map[string]*adminapi.Client
	sc    *v1alpha1.SocketCluster
	port  int
	token string
}

// newFleet runs the SocketCluster "edge" with one pod per count (pods
// named in order edge-a, edge-b...), spec.replicas as many.
func newFleet(t *testing.T, conns ...int64) *fleet {
	c := k8s(t)
	f := &fleet{t: t, c: c, ns: namespace(t, c), conns: map[string]int64{}, admin: map[string]*adminapi.Client{}}
	rs := redistest.Start(t)
	f.rdb = rs.Client()
	secret(t, c, f.ns, "device-key", map[string]string{"key": "k1"})
	port := freeAdminPort(t)
	sc := socketCluster(t, c, f.ns, `
metadata: {name: edge}
spec:
  replicas: `+strconv.Itoa(len(conns))+`
  redis: {addresses: ["`+rs.Addr+`"], keyPrefix: sd}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
  listeners: {adminPort: `+strconv.Itoa(port)+`}
  drain: {timeout: 30m}
  rollout: {resumeWindow: 2s}
  # The published counts are uneven on purpose; no shed in between.
  rebalance: {enabled: false}
`)
	deployment(t, c, f.ns, anyDeployment)
	setAvailable(t, c, f.ns, "edge", int32(len(conns)))
	var token string
	eventually(t, "the generated API token", func() error {
		s := &corev1.Secret{}
		if err := c.Get(ctx, key(f.ns, resources.GeneratedAPITokenSecretName(sc)), s); err != nil {
			return err
		}
		token = string(s.Data[resources.APITokenKey])
		return nil
	})
	f.sc, f.port, f.token = sc, port, token
	for i, n := range conns {
		f.run(resources.SelectorLabels(sc), fmt.Sprintf("edge-%c", 'a'+i), n)
	}
	f.publish()
	touch(t, c, f.ns, "edge")
	eventually(t, "steady", func() error { f.publish(); return f.state(int32(len(conns)), v1alpha1.ReasonNoOldRevision) })
	return f
}

// run adds a ready pod with its real admin API and the count it publishes.
func (f *fleet) run(labels map[string]string, name string, conns int64) {
	f.conns[name] = conns
	f.admin[name] = runPod(f.t, f.c, f.ns, labels, name, fmt.Sprintf("127.0.0.%d", len(f.admin)+2), f.port, f.token)
}

// publish republishes the counts (on every look: the operator ignores
// stale ones).
func (f *fleet) publish() {
	for name, n := range f.conns {
		publishStats(f.t, f.rdb, "sd", name, store.ServerStats{Connections: n, UpdatedUnixMs: time.Now().UnixMilli()})
	}
}

// draining checks that exactly the named pods drain, asking their admin API.
func (f *fleet) draining(want ...string) error {
	for name, api := range f.admin {
		info, err := api.Server(ctx)
		if err != nil {
			return err
		}
		if w := slices.Contains(want, name); info.Draining != w {
			return fmt.Errorf("pod %s draining %v, want %v", name, info.Draining, w)
		}
	}
	return nil
}

// chosen checks that exactly the named pods (of those that exist) are
// chosen for the scale-down, with the lowest pod-deletion-cost.
func (f *fleet) chosen(want ...string) error {
	for name := range f.admin {
		p := &corev1.Pod{}
		if err := f.c.Get(ctx, key(f.ns, name), p); apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return err
		}
		_, isChosen := p.Annotations[scaledown.AnnotationChosen]
		lowest := p.Annotations[resources.AnnotationPodDeletionCost] == scaledown.LowestDeletionCost
		if w := slices.Contains(want, name); isChosen != w || lowest != w {
			return fmt.Errorf("pod %s: chosen %v, lowest deletion cost %v, want %v", name, isChosen, lowest, w)
		}
	}
	return nil
}

// state checks the Deployment's replicas and the Draining condition.
func (f *fleet) state(replicas int32, reason string) error {
	d := &appsv1.Deployment{}
	if err := f.c.Get(ctx, key(f.ns, "edge"), d); err != nil {
		return err
	}
	if *d.Spec.Replicas != replicas {
		return fmt.Errorf("Deployment replicas %d, want %d", *d.Spec.Replicas, replicas)
	}
	got := &v1alpha1.SocketCluster{}
	if err := f.c.Get(ctx, key(f.ns, "edge"), got); err != nil {
		return err
	}
	status := metav1.ConditionTrue
	if reason == v1alpha1.ReasonNoOldRevision {
		status = metav1.ConditionFalse
	}
	return conditionIs(got, v1alpha1.ConditionDraining, status, reason)
}

// Lowering spec.replicas (as kubectl scale does) drains the least loaded
// pods one at a time, through their real admin API, before the Deployment
// is lowered; they carry the lowest pod-deletion-cost, so that the
// ReplicaSet removes exactly them. A pod whose devices do not come back
// pauses the next drain until they do.
func TestScaleDownDrainsLeastLoadedFirst(t *testing.T) {
	f := newFleet(t, 500, 30, 400, 20)
	c, ns := f.c, f.ns
	patchSpec(t, c, ns, "edge", `{"replicas":2}`)
	eventually(t, "the 2 least loaded pods chosen, the least loaded draining, the Deployment held", func() error {
		f.publish()
		return errors.Join(f.chosen("edge-b", "edge-d"), f.draining("edge-d"), f.state(4, v1alpha1.ReasonScaleDown))
	})

	// edge-d is empty, but its devices did not come back (630 of the 950
	// before): after rollout.resumeWindow the scale-down pauses.
	f.conns["edge-d"], f.conns["edge-a"], f.conns["edge-c"] = 0, 300, 300
	eventually(t, "paused", func() error {
		f.publish()
		return errors.Join(f.state(4, v1alpha1.ReasonDevicesNotReturning), f.draining("edge-d"))
	})
	eventually(t, "a Warning event", func() error { return warned(c, ns, v1alpha1.ReasonDevicesNotReturning) })

	// They come back (930 of 950): edge-b drains, the Deployment still held.
	f.conns["edge-a"], f.conns["edge-c"] = 500, 400
	eventually(t, "resumed: the next pod drains", func() error {
		f.publish()
		return errors.Join(f.draining("edge-b", "edge-d"), f.state(4, v1alpha1.ReasonScaleDown))
	})
	// Only once it is empty (and its devices are back) does the
	// Deployment lose the two.
	f.conns["edge-b"] = 0
	eventually(t, "the Deployment lowered to 2", func() error {
		f.publish()
		return errors.Join(f.state(2, v1alpha1.ReasonNoOldRevision), f.chosen("edge-b", "edge-d"))
	})
}

// The replicas go back up mid-way: the pod that drains (unready, its
// devices gone) is replaced, the one still to drain is given back, and
// the Deployment takes the count at once.
func TestScaleUpMidDrainReplacesTheDrainedPod(t *testing.T) {
	f := newFleet(t, 500, 30, 20)
	c, ns := f.c, f.ns
	patchSpec(t, c, ns, "edge", `{"replicas":1}`)
	eventually(t, "edge-c drains", func() error {
		f.publish()
		return errors.Join(f.chosen("edge-b", "edge-c"), f.draining("edge-c"), f.state(3, v1alpha1.ReasonScaleDown))
	})
	patchSpec(t, c, ns, "edge", `{"replicas":3}`)
	eventually(t, "edge-c replaced, edge-b given back", func() error {
		f.publish()
		p := &corev1.Pod{}
		if err := c.Get(ctx, key(ns, "edge-c"), p); err == nil && p.DeletionTimestamp == nil {
			return errors.New("edge-c still there")
		} else if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if err := c.Get(ctx, key(ns, "edge-b"), p); err != nil {
			return err
		}
		if cost := p.Annotations[resources.AnnotationPodDeletionCost]; cost != "30" {
			return fmt.Errorf("edge-b deletion cost %q, want its count back", cost)
		}
		return errors.Join(f.chosen(), f.state(3, v1alpha1.ReasonNoOldRevision))
	})
}

// A ReconnectOnce rollout drains the least loaded old pod alone, the
// canary; the other old pods wait for its devices to come back to the new
// revision, the rollout pausing (DevicesNotReturning, a Warning event)
// while they do not, and drain together once they did.
func TestReconnectOnceDrainsACanaryFirst(t *testing.T) {
	f := newFleet(t, 500, 300, 400)
	c, ns := f.c, f.ns
	patchSpec(t, c, ns, "edge", `{"image":"socketcluster/socketcluster:next","rollout":{"strategy":"ReconnectOnce","maxSurge":"100%"},"drain":{"preStopWait":"1s"}}`)
	var rev string
	eventually(t, "the new revision's Deployment", func() error {
		ds, err := revisionDeployments(c, ns)
		if err != nil {
			return err
		}
		for name, d := range ds {
			if name != "edge" {
				rev = d.Labels[resources.LabelRevision]
				return nil
			}
		}
		return errors.New("no revision Deployment yet")
	})
	for _, name := range []string{"edge-n1", "edge-n2", "edge-n3"} {
		f.run(resources.RevisionSelectorLabels(f.sc, rev), name, 0)
	}
	setAvailable(t, c, ns, "edge-"+rev, 3)
	eventually(t, "the canary, edge-b, drains alone", func() error {
		f.publish()
		return errors.Join(serviceSelects(c, ns, rev), f.draining("edge-b"), f.rollout(v1alpha1.ReasonDrainingOldRevision, "edge-b drains first"))
	})

	// Empty, but its 300 devices did not reach the new pods: the others
	// wait, then the rollout pauses once rollout.resumeWindow (2s) passed.
	f.conns["edge-b"] = 0
	eventually(t, "paused", func() error {
		f.publish()
		return errors.Join(f.draining("edge-b"), f.rollout(v1alpha1.ReasonDevicesNotReturning, "below 90%"))
	})
	eventually(t, "a Warning event", func() error { return warned(c, ns, v1alpha1.ReasonDevicesNotReturning) })

	// They come back: the other old pods drain, together.
	f.conns["edge-n1"], f.conns["edge-n2"] = 150, 150
	eventually(t, "the other old pods drain", func() error {
		f.publish()
		return errors.Join(f.draining("edge-a", "edge-b", "edge-c"), f.rollout(v1alpha1.ReasonDrainingOldRevision, "connections left"))
	})
}

// rollout checks the Draining condition's reason and message.
func (f *fleet) rollout(reason, msg string) error {
	got := &v1alpha1.SocketCluster{}
	if err := f.c.Get(ctx, key(f.ns, "edge"), got); err != nil {
		return err
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDraining); c == nil || c.Reason != reason || !strings.Contains(c.Message, msg) {
		return fmt.Errorf("Draining %+v, want %s with %q", c, reason, msg)
	}
	return nil
}

// warned finds a Warning event with the reason.
func warned(c client.Client, ns, reason string) error {
	list := &eventsv1.EventList{}
	if err := c.List(ctx, list, client.InNamespace(ns)); err != nil {
		return err
	}
	for _, e := range list.Items {
		if e.Type == corev1.EventTypeWarning && e.Reason == reason {
			return nil
		}
	}
	return fmt.Errorf("no Warning event %s", reason)
}
