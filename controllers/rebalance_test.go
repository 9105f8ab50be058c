package controllers_test

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/internal/servertest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// rebalancePod is a real socketserver standing in for a pod: its admin API
// listens on the pod's IP (a loopback address) and the SocketCluster's
// admin port, and it publishes its connections to Redis as a pod does.
func rebalancePod(t *testing.T, rs *redistest.Server, prefix, name, ip string, adminPort int) *socketserver.Server {
	return startServer(t, socketserver.Config{TCPAddr: "127.0.0.1:0", AdminAddr: net.JoinHostPort(ip, strconv.Itoa(adminPort)),
		ServerName: name, InsecureNoAuth: true, InsecureNoAPIAuth: true, StatsInterval: 100 * time.Millisecond,
		DrainJitter: 100 * time.Millisecond, DrainTimeout: 5 * time.Second}, store.NewRedis(rs.Client(), prefix))
}

// startServer runs a socketserver until the test ends.
func startServer(t *testing.T, cfg socketserver.Config, st store.Store) *socketserver.Server {
	return servertest.Start(t, cfg, st, logr.Discard())
}

// freeAdminPort is a port free on the loopback addresses the pods use
// (127.0.0.2 to 127.0.0.9; every pod's admin API listens on the same
// port, like in a cluster).
func freeAdminPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		free := port != 7000 && port != 8080
		for i := 2; i <= 9 && free; i++ {
			l, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i), strconv.Itoa(port)))
			if free = err == nil; free {
				l.Close()
			}
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on 127.0.0.1 to 127.0.0.9")
	return 0
}

// device is a device on raw TCP frames; frames carries what it receives.
type device struct {
	name   string
	nc     net.Conn
	frames chan byte // frame types
}

func connectDevice(t *testing.T, srv *socketserver.Server, name string) *device {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Addrs().TCP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	d := &device{name: name, nc: nc, frames: make(chan byte, 16)}
	hello := protocol.MustJSON(protocol.Hello{Protocol: 1, Device: name, Token: "any"})
	if _, err := nc.Write(protocol.AppendFrame(nil, protocol.TypeHello, hello)); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(d.frames)
		r := protocol.NewReader(nc, 1<<20, 4096)
		for {
			typ, _, err := r.ReadFrame()
			if err != nil {
				return
			}
			d.frames <- typ
		}
	}()
	return d
}

// first is the device's first frame.
func (d *device) first(t *testing.T) byte {
	t.Helper()
	select {
	case typ := <-d.frames:
		return typ
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no answer to its HELLO", d.name)
		return 0
	}
}

// readyPod plays the kubelet: the pod runs, is ready, and has ip.
func readyPod(t *testing.T, c client.Client, ns, name, ip string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p := &corev1.Pod{}
		if err := c.Get(ctx, key(ns, name), p); err != nil {
			return err
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		return c.Status().Update(ctx, p)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// balanced waits (touching the SocketCluster, so that it reconciles on
// the pods' latest counts) for the Balanced condition.
func balanced(t *testing.T, c client.Client, ns string, status metav1.ConditionStatus, reason, msg string) *v1alpha1.SocketCluster {
	t.Helper()
	sc := &v1alpha1.SocketCluster{}
	eventually(t, fmt.Sprintf("Balanced %s/%s %q", status, reason, msg), func() error {
		touch(t, c, ns, "edge")
		if err := c.Get(ctx, key(ns, "edge"), sc); err != nil {
			return err
		}
		if err := conditionIs(sc, v1alpha1.ConditionBalanced, status, reason); err != nil {
			return err
		}
		if cond := meta.FindStatusCondition(sc.Status.Conditions, v1alpha1.ConditionBalanced); !strings.Contains(cond.Message, msg) {
			return fmt.Errorf("Balanced message %q, want %q", cond.Message, msg)
		}
		return nil
	})
	return sc
}

// eventWith waits for an event of the SocketCluster with reason and a
// note containing msg.
func eventWith(t *testing.T, c client.Client, ns, reason, msg string) {
	t.Helper()
	eventually(t, reason+" event", func() error {
		events := &corev1.EventList{}
		if err := c.List(ctx, events, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Reason == reason && e.InvolvedObject.Name == "edge" && strings.Contains(e.Message, msg) {
				return nil
			}
		}
		var seen []string
		for _, e := range events.Items {
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return fmt.Errorf("no %s event with %q in %q", reason, msg, seen)
	})
}

// After a scale-out one pod holds every device. The thresholds decide
// whether that is uneven; when it is, the operator asks the fuller pod to
// shed down to the mean with a target, so that the pod refuses new
// devices meanwhile; the Balanced condition and events follow, and
// spec.rebalance.enabled: false turns it all off. Rebalancing needs no
// spec.autoscaling: a kubectl scale out is as uneven.
func TestRebalanceShedsToTheMean(t *testing.T) {
	c := k8s(t)
	ns := namespace(t, c)
	rs := redistest.Start(t)
	port := freeAdminPort(t)
	secret(t, c, ns, "device-key", map[string]string{"key": "k1"})
	sc := socketCluster(t, c, ns, `
metadata: {name: edge}
spec:
  redis: {addresses: ["`+rs.Addr+`"], keyPrefix: rb}
  auth: {deviceKeySecretRef: {name: device-key, key: key}}
  listeners: {adminPort: `+strconv.Itoa(port)+`}
  replicas: 2
  rebalance: {shedRate: 100}
`)
	// Defaults that keep the thresholds of before.
	if r := sc.Spec.Rebalance; !r.RebalanceEnabled() || r.RelativeThreshold != 20 || r.AbsoluteThreshold != 10 || r.ShedRate != 100 {
		t.Fatalf("spec.rebalance defaults: %+v", r)
	}
	full := rebalancePod(t, rs, "rb", "edge-a", "127.0.0.1", port)
	empty := rebalancePod(t, rs, "rb", "edge-b", "127.0.0.2", port)
	createPods(t, c, ns, resources.SelectorLabels(sc), "edge-a", "edge-b")
	readyPod(t, c, ns, "edge-a", "127.0.0.1")
	readyPod(t, c, ns, "edge-b", "127.0.0.2")
	deployment(t, c, ns, anyDeployment)
	setAvailable(t, c, ns, "edge", 2)

	devices := map[string]*device{}
	for i := range 4 {
		d := connectDevice(t, full, fmt.Sprintf("dev%d", i))
		if typ := d.first(t); typ != protocol.TypeWelcome {
			t.Fatalf("%s: %s, want WELCOME", d.name, protocol.TypeName(typ))
		}
		devices[d.name] = d
	}
	// 4 and 0: 2 from the mean is 100% of it, but fewer than 10 connections.
	balanced(t, c, ns, metav1.ConditionTrue, v1alpha1.ReasonBalanced, "max 4, mean 2, min 0 connections over 2 pods")

	// With an absolute threshold of 1 they are uneven: edge-a sheds 2 and
	// refuses new devices while it holds 2 or more.
	patchSpec(t, c, ns, "edge", `{"rebalance":{"absoluteThreshold":1}}`)
	balanced(t, c, ns, metav1.ConditionFalse, v1alpha1.ReasonRebalancing, "max 4, mean 2, min 0 connections over 2 pods")
	eventWith(t, c, ns, v1alpha1.ReasonRebalancing, "max 4, mean 2, min 0")
	eventWith(t, c, ns, "Shed", "pod edge-a sheds 2 of its 4 connections and refuses new devices while it holds 2 or more")
	var moved []string
	eventually(t, "2 GOAWAYs on edge-a", func() error {
		for name, d := range devices {
			select {
			case typ := <-d.frames:
				if typ != protocol.TypeGoAway {
					t.Fatalf("%s: %s, want GOAWAY", name, protocol.TypeName(typ))
				}
				moved = append(moved, name)
				delete(devices, name)
				d.nc.Close()
			default:
			}
		}
		if len(moved) != 2 {
			return fmt.Errorf("GOAWAY to %v", moved)
		}
		return nil
	})
	// The target reached the pod: a new device is sent away, not welcomed.
	newcomer := connectDevice(t, full, "newcomer")
	if typ := newcomer.first(t); typ != protocol.TypeGoAway {
		t.Fatalf("a new device on the shedding pod got %s, want GOAWAY", protocol.TypeName(typ))
	}
	newcomer.nc.Close() // it leaves, as told
	// The status follows the shed that the devices saw, once the
	// reconcile that asked for it writes it.
	got := &v1alpha1.SocketCluster{}
	eventually(t, "the shed in status.rebalance", func() error {
		if err := c.Get(ctx, key(ns, "edge"), got); err != nil {
			return err
		}
		if rb := got.Status.Rebalance; rb == nil || rb.RebalancedAt == nil || rb.ShedUntil == nil || !rb.ShedUntil.After(rb.RebalancedAt.Time) {
			return fmt.Errorf("status.rebalance %+v, want rebalancedAt and a later shedUntil", rb)
		}
		return nil
	})
	if rb := got.Status.Rebalance; rb.UnevenSince == nil || rb.RebalancedAt.Sub(rb.UnevenSince.Time) < 10*time.Second {
		t.Fatalf("status.rebalance %+v: shed before the pods stayed uneven for 10s", rb)
	}

	// The shed devices reconnect to the emptier pod: balanced.
	for _, name := range moved {
		if typ := connectDevice(t, empty, name).first(t); typ != protocol.TypeWelcome {
			t.Fatalf("%s on edge-b: %s, want WELCOME", name, protocol.TypeName(typ))
		}
	}
	balanced(t, c, ns, metav1.ConditionTrue, v1alpha1.ReasonBalanced, "max 2, mean 2, min 2 connections over 2 pods")
	// The event comes with the first balanced counts, which may be before
	// the last device is back (2 and 1 are within the thresholds too).
	eventWith(t, c, ns, v1alpha1.ReasonBalanced, "balanced: max ")

	patchSpec(t, c, ns, "edge", `{"rebalance":{"enabled":false}}`)
	balanced(t, c, ns, metav1.ConditionUnknown, v1alpha1.ReasonRebalanceDisabled, "spec.rebalance.enabled is false")
}
