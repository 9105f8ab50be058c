//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/client"
)

// servers tracks the ready endpoints of a SocketCluster's public Service,
// from its EndpointSlices, the way an L4 load balancer does (the local
// cluster has no kube-proxy): devices and backends pick only those. It also
// maps pods to their image and revision, and records each WELCOME devices
// got, so a test can tell where devices landed during a rollout.
type servers struct {
	mu  sync.Mutex
	ips []string
	// pods maps a pod name to its image as last listed.
	pods map[string]string
	// revision is the one the Service selects ("" for every pod), and
	// switchedAt when the refresh first saw it select another.
	revision   string
	switchedAt time.Time
	welcomes   []welcomed
}

// welcomed is a device session that a pod accepted.
type welcomed struct {
	at  time.Time
	pod string
}

func (s *servers) refresh(ctx context.Context, ns string, selector map[string]string) {
	service := selector[resources.LabelInstance] // the public Service is named like the SocketCluster
	for ctx.Err() == nil {
		s.refreshOnce(ctx, ns, service, selector)
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *servers) refreshOnce(ctx context.Context, ns, service string, selector map[string]string) {
	eps, err := cluster.kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
	if err != nil {
		return
	}
	var ips []string
	for _, sl := range eps.Items {
		for _, ep := range sl.Endpoints {
			// Ready is nil when unknown, which means ready; a terminating
			// endpoint is never ready.
			if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
				ips = append(ips, ep.Addresses...)
			}
		}
	}
	svc, svcErr := cluster.kube.CoreV1().Services(ns).Get(ctx, service, metav1.GetOptions{})
	pods, podsErr := cluster.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(selector).String()})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ips = ips
	if svcErr == nil {
		if rev := svc.Spec.Selector[resources.LabelRevision]; rev != s.revision {
			s.revision, s.switchedAt = rev, time.Now()
		}
	}
	if podsErr == nil {
		if s.pods == nil {
			s.pods = map[string]string{}
		}
		for _, p := range pods.Items {
			s.pods[p.Name] = p.Spec.Containers[0].Image
		}
	}
}

// pick returns a random ready endpoint's IP with port, or "" while there is none.
func (s *servers) pick(port int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ips) == 0 {
		return ""
	}
	return net.JoinHostPort(s.ips[rand.IntN(len(s.ips))], strconv.Itoa(port))
}

// welcomed records that pod accepted a device's HELLO at at.
func (s *servers) welcomed(pod string, at time.Time) {
	s.mu.Lock()
	s.welcomes = append(s.welcomes, welcomed{at, pod})
	s.mu.Unlock()
}

// landedOn counts the HELLOs accepted after since by pods whose image is img.
func (s *servers) landedOn(img string, since time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, w := range s.welcomes {
		if w.at.After(since) && s.pods[w.pod] == img {
			n++
		}
	}
	return n
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// device is one simulated device and what it saw.
type device struct {
	name   string
	client *client.Client

	mu        sync.Mutex
	received  []uint64 // message numbers, in delivery order
	connected bool
	server    string // the pod it is connected to, while connected
	downSince time.Time
	resumes   []time.Duration // disconnect -> next WELCOME
	published []uint64        // PUBACKed ids

	// Written by the one backend goroutine that sends to this device.
	next     uint64          // number of the next message
	accepted []uint64        // numbers answered with a seq
	unknown  map[uint64]bool // numbers still ambiguous after every retry: stored or not
}

// newDevice is a device over transport: tcp, sse (its stream and POSTs to
// the WebSocket port), grpc (a Connect stream on the gRPC port) or mqtt
// (MQTT 5 on the MQTT port).
func newDevice(name string, srv *servers, transport string) *device {
	d := &device{name: name, unknown: map[uint64]bool{}}
	port, addr := tcpPort, "socketcluster:"+strconv.Itoa(tcpPort) // the host is replaced by Dial
	switch transport {
	case "sse":
		port, addr = wsPort, "http://socketcluster:"+strconv.Itoa(wsPort)+"/sse"
	case "grpc":
		port, addr = grpcPort, "grpc://socketcluster:"+strconv.Itoa(grpcPort)
	case "mqtt":
		port, addr = mqttPort, "mqtt://socketcluster:"+strconv.Itoa(mqttPort)
	}
	d.client = client.New(client.Config{
		Addr:   addr,
		Device: name,
		Token:  "insecure-no-auth",
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			addr := srv.pick(port)
			if addr == "" {
				return nil, fmt.Errorf("no ready server")
			}
			var nd net.Dialer
			return nd.DialContext(ctx, network, addr)
		},
		OnMessage: func(_ uint64, payload []byte) {
			n, _ := strconv.ParseUint(string(payload), 10, 64)
			d.mu.Lock()
			d.received = append(d.received, n)
			d.mu.Unlock()
		},
		OnEvent: func(ev client.Event) {
			d.mu.Lock()
			defer d.mu.Unlock()
			switch ev.Type {
			case client.EventConnected:
				srv.welcomed(ev.Welcome.Server, ev.At)
				if !d.downSince.IsZero() {
					d.resumes = append(d.resumes, ev.At.Sub(d.downSince))
				}
				d.connected, d.downSince, d.server = true, time.Time{}, ev.Welcome.Server
			case client.EventDisconnected:
				if d.connected {
					d.downSince = ev.At
				}
				d.connected = false
			}
		},
	})
	return d
}

// publishLoop publishes a message every interval (jittered) until ctx ends.
func (d *device) publishLoop(ctx context.Context, interval time.Duration) {
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval/2 + rand.N(interval)):
		}
		id, err := d.client.Publish(ctx, []byte(d.name+"/"+strconv.Itoa(n)))
		if err != nil {
			return // ctx ended: an unacknowledged publish is not counted
		}
		d.mu.Lock()
		d.published = append(d.published, id)
		d.mu.Unlock()
	}
}

// startBackends sends to devs from n backends, each with its share of the
// devices, until stop, which waits for them to end.
func startBackends(ctx context.Context, devs []*device, srv *servers, apiToken string, n int) (sent *backendStats, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	sent = &backendStats{}
	var wg sync.WaitGroup
	for b := range n {
		var mine []*device
		for i := b; i < len(devs); i += n {
			mine = append(mine, devs[i])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			backend(ctx, mine, srv, adminPort, apiToken, 40*time.Millisecond, sent)
		}()
	}
	return sent, func() { cancel(); wg.Wait() }
}

// backendStats counts what the backends saw: sends answered with a seq,
// sends with an ambiguous attempt (timeout, 5xx, connection lost after the
// request was written), the retries, answers marked duplicate (an earlier
// attempt had been stored) and sends still ambiguous after every retry.
type backendStats struct {
	accepted, ambiguous, retries, duplicates, unknown atomic.Int64
}

// sendAttempts bounds the attempts of one backend message.
const sendAttempts = 5

// backend sends numbered messages to its devices through the admin API of a
// random ready pod, one device at a time, so that each device's numbers are
// sent (and stored) in increasing order. Each message has an idempotency
// key; an ambiguous attempt is resent with the same key, to any ready pod,
// so the device gets it once.
func backend(ctx context.Context, devs []*device, srv *servers, adminPort int, token string, every time.Duration, st *backendStats) {
	hc := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % len(devs) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d := devs[i]
		if srv.pick(adminPort) == "" {
			continue
		}
		d.next++
		n := d.next
		key := "e2e-" + strconv.FormatUint(n, 10)
		payload := []byte(strconv.FormatUint(n, 10))
		ambiguous := false
		for attempt, wait := 1, 200*time.Millisecond; ; attempt, wait = attempt+1, wait*2 {
			var err error
			if addr := srv.pick(adminPort); addr == "" {
				err = fmt.Errorf("no ready server")
			} else {
				api := &adminapi.Client{BaseURL: addr, Token: token, HTTP: hc}
				// A send in flight when the backends stop still finishes.
				var res adminapi.SendResult
				res, err = api.Send(context.WithoutCancel(ctx), d.name, payload, key)
				if err == nil {
					d.accepted = append(d.accepted, n)
					st.accepted.Add(1)
					if res.Duplicate {
						st.duplicates.Add(1)
					}
					break
				}
			}
			if adminapi.IsAmbiguous(err) && !ambiguous {
				ambiguous = true
				st.ambiguous.Add(1)
			}
			// A refusal (e.g. 429) stores nothing, though an earlier
			// ambiguous attempt may have.
			if adminapi.IsRefused(err) || attempt == sendAttempts {
				if ambiguous {
					d.unknown[n] = true
					st.unknown.Add(1)
				}
				break
			}
			st.retries.Add(1)
			time.Sleep(wait)
		}
	}
}

// checkDelivery: every accepted message reached its device exactly once, in
// the order it was sent; anything else delivered was a send whose outcome
// stayed unknown.
func (d *device) checkDelivery() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[uint64]bool{}
	for _, n := range d.accepted {
		want[n] = true
	}
	var last uint64
	for _, n := range d.received {
		if n <= last {
			return fmt.Errorf("%s: message %d after %d (duplicate or out of order)", d.name, n, last)
		}
		last = n
		if !want[n] && !d.unknown[n] {
			return fmt.Errorf("%s: message %d was never sent", d.name, n)
		}
		delete(want, n)
	}
	if len(want) > 0 {
		return fmt.Errorf("%s: %d accepted messages not delivered (received %d)", d.name, len(want), len(d.received))
	}
	return nil
}

// percentiles returns p50, p99 and max of ds.
func percentiles(ds []time.Duration) (p50, p99, maxD time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return at(0.50), at(0.99), ds[len(ds)-1]
}

// allReceived is nil once every device holds every message accepted for it.
func allReceived(devs []*device) error {
	missing := 0
	for _, d := range devs {
		d.mu.Lock()
		if len(d.accepted) > 0 && (len(d.received) == 0 || d.received[len(d.received)-1] < d.accepted[len(d.accepted)-1]) {
			missing++
		}
		d.mu.Unlock()
	}
	if missing > 0 {
		return fmt.Errorf("%d devices still wait for messages", missing)
	}
	return nil
}

func allConnected(devs []*device) error {
	down := 0
	for _, d := range devs {
		d.mu.Lock()
		if !d.connected {
			down++
		}
		d.mu.Unlock()
	}
	if down > 0 {
		return fmt.Errorf("%d devices disconnected", down)
	}
	return nil
}
