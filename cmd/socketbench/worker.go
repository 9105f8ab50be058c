package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/client"
)

// WorkerSpec is what the coordinator hands a worker process (as JSON).
type WorkerSpec struct {
	ID              int           `json:"id"`
	DevicePrefix    string        `json:"device_prefix"`
	FirstDevice     int           `json:"first_device"`
	Devices         int           `json:"devices"`
	Addrs           []string      `json:"addrs"` // host:port, ws:// or http://…/sse URLs
	Admins          []string      `json:"admins"`
	SourceIPs       []string      `json:"source_ips"`
	ConnectRate     float64       `json:"connect_rate"`
	DeliverRate     float64       `json:"deliver_rate"`
	PublishRate     float64       `json:"publish_rate"`
	Payload         int           `json:"payload"`
	PostConcurrency int           `json:"post_concurrency"`
	PostBatch       int           `json:"post_batch"`
	Burst           int           `json:"burst"`
	ConnectTimeout  time.Duration `json:"connect_timeout"`
	Duration        time.Duration `json:"duration"`
	Settle          time.Duration `json:"settle"`
	KeyFile         string        `json:"key_file,omitempty"`
	APIToken        string        `json:"api_token,omitempty"`
}

// Result is one worker's account of the run; the coordinator adds them up.
type Result struct {
	Devices, Connected, ConnectedAtEnd int
	ConnectSeconds, LoadSeconds        float64
	// LoadCPUSeconds is this worker's own CPU time in the load phase.
	LoadCPUSeconds float64
	// Downstream: backend sends accepted (a seq answered), failed by
	// status or error code (or "refused", "error" without an answer), or
	// not sent because the posters could not keep up.
	Posted, PostSkipped   uint64
	PostFailures          map[string]uint64
	Delivered, Duplicates uint64
	LoadDelivered         uint64
	// Every send carries an idempotency key. AmbiguousSends: sends with an
	// attempt of unknown outcome (a timeout, a 5xx, a connection lost after
	// the request was written), resent with the same key; SendRetries:
	// attempts after the first; DuplicateAnswers: answers marked duplicate
	// (an earlier attempt had been stored); UnknownOutcomes: sends still
	// ambiguous after the last attempt (stored or not: neither lost if
	// missing nor wrong if delivered).
	AmbiguousSends, SendRetries, DuplicateAnswers, UnknownOutcomes uint64
	// LostDownstream: accepted messages that a device connected at the end
	// never got; Undelivered: those still stored for devices that were not
	// connected at the end (not lost: they get them on resume). Messages
	// are matched one by one (by their send stamp), so a message stored
	// although its send failed cannot hide a lost one;
	// DeliveredUnaccepted counts those. DeliveredTwice: messages a device
	// got under two seqs (stored twice: exactly-once broken).
	LostDownstream, Undelivered, DeliveredUnaccepted, DeliveredTwice uint64
	// Upstream: publishes handed to the client, PUBACKed, still unacked at the end.
	Published, PublishAcked, LoadPublishAcked, PublishUnacked, Retransmits uint64
	// ResumeLatency: disconnect -> WELCOME of each outage; HelloLatency: the
	// part of it from TCP connected to WELCOME (the rest is failed attempts
	// and backoff), which tells a slow server from a slow client.
	DeliverLatency, PublishLatency, ResumeLatency, HelloLatency Hist
	Disconnects, ErrorCodes                                     map[string]uint64
	// DisconnectSamples holds the first error seen for each disconnect reason.
	DisconnectSamples map[string]string
	// Storm: devices that lost a connection they had (for any reason:
	// GOAWAY, a killed server), their outages, the outages that ended
	// (ResumeLatency: disconnect -> WELCOME), those still open at the end,
	// and when the last one ended.
	Affected, Outages, Resumed uint64
	PendingResume              int64
	LastResumeUnixNano         int64
	// AckedIDs: the PUBACKed publish ids of each device, which the
	// coordinator looks up in the upstream stream.
	AckedIDs map[string][]uint64 `json:",omitempty"`
	// The load tool's own idle memory: before the first device and once
	// every device connected (after a collection that returns freed
	// memory to the system), and its goroutines, for the cost per device.
	ClientRSSBefore, ClientRSSReady   float64
	ClientHeapBefore, ClientHeapReady float64
	GoroutinesBefore, GoroutinesReady int
}

// message is one line of a worker's stdout.
type message struct {
	Progress *progress `json:"progress,omitempty"`
	Ready    *progress `json:"ready,omitempty"`
	Result   *Result   `json:"result,omitempty"`
}

type progress struct {
	Connected   int     `json:"connected"`
	Delivered   uint64  `json:"delivered"`
	Published   uint64  `json:"published"`
	Seconds     float64 `json:"seconds"`
	Unconnected int     `json:"unconnected"`
}

type worker struct {
	spec          WorkerSpec
	devs          []*benchDevice
	hosts         []string  // host:port of each address
	servers, apis avoidList // of hosts and of spec.Admins
	api           map[string]*adminapi.Client

	everConnected, connectedNow atomic.Int64
	delivered, pubAcked         atomic.Uint64
	published, postSkipped      atomic.Uint64
	ambiguous, retries, dupAns  atomic.Uint64
	unknown                     atomic.Uint64
	awaitDelivery               atomic.Int64 // 202-accepted messages not delivered yet
	lastStamp                   atomic.Int64 // makes payload stamps unique
	pendingResume, lastResume   atomic.Int64
	affected, outages, resumed  atomic.Uint64

	mu                                   sync.Mutex
	deliverLat, pubLat, resLat, helloLat Hist
	disconnects, codes, postErr          map[string]uint64
	samples                              map[string]string
}

type benchDevice struct {
	w     *worker
	name  string
	idx   int
	pref  int          // index of the server it prefers
	local *net.TCPAddr // source address
	c     *client.Client
	up    atomic.Bool
	// The device's server, and when the dial of its connection succeeded:
	// SSE dials the connections of its POSTs on other goroutines.
	hostMu   sync.Mutex
	host     string
	dialedAt time.Time
	// Touched only on the client's Run goroutine (events, messages).
	ever     bool
	affected bool
	downAt   time.Time // when it lost its connection; zero while connected

	mu     sync.Mutex
	posted uint64
	// A message's answer and its delivery come in either order: each
	// waits here, by send stamp, for the other, with its seq.
	waiting, early map[int64]uint64
	twice          uint64   // messages delivered under a second seq
	acked          []uint64 // PUBACKed publish ids
}

// accepted: the backend's send of the message stamped stamp was answered
// with seq.
func (d *benchDevice) accepted(stamp int64, seq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.posted++
	if got, ok := d.early[stamp]; ok {
		delete(d.early, stamp)
		if got != seq {
			d.twice++ // delivered under a seq its send did not get: stored twice
		}
		return
	}
	if d.waiting == nil {
		d.waiting = map[int64]uint64{}
	}
	d.waiting[stamp] = seq
	d.w.awaitDelivery.Add(1)
}

// got: the message stamped stamp arrived as seq.
func (d *benchDevice) got(stamp int64, seq uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if want, ok := d.waiting[stamp]; ok {
		delete(d.waiting, stamp)
		d.w.awaitDelivery.Add(-1)
		if want != seq {
			d.twice++
		}
		return
	}
	if d.early == nil {
		d.early = map[int64]uint64{}
	}
	if prev, ok := d.early[stamp]; ok && prev != seq {
		d.twice++ // an unanswered send stored twice
		return
	}
	d.early[stamp] = seq
}

// avoidFor is how long a server that failed a connection is skipped.
const avoidFor = 3 * time.Second

// avoidList is the tool's view of which servers are ready, as a Kubernetes
// Service keeps its endpoints: a server that sent GOAWAY is draining and
// skipped for good; one that failed a connection (refused it, or reset it
// before WELCOME) is probably down and skipped for avoidFor, or until a
// connection to it succeeds.
type avoidList struct {
	mu       sync.Mutex
	draining map[string]bool
	downTill map[string]time.Time
}

func (a *avoidList) goAway(h string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining == nil {
		a.draining = map[string]bool{}
	}
	a.draining[h] = true
}

func (a *avoidList) failed(h string, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.downTill == nil {
		a.downTill = map[string]time.Time{}
	}
	a.downTill[h] = now.Add(avoidFor)
}

func (a *avoidList) succeeded(h string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.downTill, h)
}

// pick returns hosts[pref] if it is usable, else one of the usable hosts
// (spread by idx), else hosts[pref] anyway: with nowhere to go, the
// device's backoff paces the retries.
func (a *avoidList) pick(hosts []string, pref, idx int, now time.Time) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	usable := func(h string) bool { return !a.draining[h] && !now.Before(a.downTill[h]) }
	if usable(hosts[pref]) {
		return hosts[pref]
	}
	var ok []string
	for _, h := range hosts {
		if usable(h) {
			ok = append(ok, h)
		}
	}
	if len(ok) == 0 {
		return hosts[pref]
	}
	return ok[idx%len(ok)]
}

func runWorker(specJSON string) int {
	var spec WorkerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The coordinator says "load" on our stdin when every worker is ready,
	// and closes it when it has every result: then we go.
	start := make(chan struct{})
	go func() {
		var once sync.Once
		for sc := bufio.NewScanner(os.Stdin); sc.Scan(); {
			if sc.Text() == "load" {
				once.Do(func() { close(start) })
			}
		}
		cancel()
	}()
	w := newWorker(spec)
	out := json.NewEncoder(os.Stdout)
	if err := w.run(ctx, start, func(m message) { _ = out.Encode(m) }); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	return 0
}

func newWorker(spec WorkerSpec) *worker {
	w := &worker{spec: spec, disconnects: map[string]uint64{}, codes: map[string]uint64{}, postErr: map[string]uint64{},
		samples: map[string]string{}, api: map[string]*adminapi.Client{}}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: spec.PostConcurrency}}
	for _, a := range spec.Admins {
		w.api[a] = &adminapi.Client{BaseURL: a, Token: spec.APIToken, HTTP: hc}
	}
	for _, a := range spec.Addrs {
		if u, err := url.Parse(a); err == nil && u.Host != "" && strings.Contains(a, "://") {
			a = u.Host // ws:// or http://…/sse
		}
		w.hosts = append(w.hosts, a)
	}
	return w
}

// run connects the devices, reports Ready, loads once loadNow is closed,
// settles and emits its Result; then it holds the connections until ctx
// ends, so that a worker that finishes first frees no room on the servers
// for another's devices while that one still counts.
func (w *worker) run(ctx context.Context, loadNow <-chan struct{}, emit func(message)) error {
	spec := w.spec
	var key []byte
	if spec.KeyFile != "" {
		var err error
		if key, err = client.LoadKey(spec.KeyFile); err != nil {
			return err
		}
	}
	devCtx, stopDevices := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() { stopDevices(); running.Wait() }()

	rssBefore, heapBefore, goroutinesBefore := memory()

	// Connect phase: start devices at the connect rate, with a bounded
	// number of handshakes outstanding.
	start := time.Now()
	ticker := time.NewTicker(time.Second / 2)
	defer ticker.Stop()
	report := func() progress {
		return progress{Connected: int(w.everConnected.Load()), Delivered: w.delivered.Load(),
			Published: w.pubAcked.Load(), Seconds: time.Since(start).Seconds()}
	}
	connectDeadline := start.Add(spec.ConnectTimeout)
	pace := newPacer(spec.ConnectRate)
	for i := 0; i < spec.Devices && time.Now().Before(connectDeadline) && ctx.Err() == nil; {
		n := pace.due()
		for ; n > 0 && i < spec.Devices && int64(i)-w.everConnected.Load() < 1000; n-- {
			d := w.newDevice(spec.FirstDevice+i, key)
			w.devs = append(w.devs, d)
			running.Add(1)
			go func() { defer running.Done(); _ = d.c.Run(devCtx) }()
			i++
		}
		select {
		case <-ticker.C:
			emit(message{Progress: ptr(report())})
		case <-time.After(5 * time.Millisecond):
		}
	}
	for int(w.everConnected.Load()) < len(w.devs) && time.Now().Before(connectDeadline) && ctx.Err() == nil {
		select {
		case <-ticker.C:
			emit(message{Progress: ptr(report())})
		case <-time.After(5 * time.Millisecond):
		}
	}
	connectSeconds := time.Since(start).Seconds()
	rssReady, heapReady, goroutinesReady := memory()
	emit(message{Ready: ptr(report())})
	select { // the coordinator measures idle memory meanwhile
	case <-loadNow:
	case <-ctx.Done():
	}

	// Load phase.
	loadCtx, stopLoad := context.WithTimeout(ctx, spec.Duration)
	loadStart, cpuStart := time.Now(), cpuSeconds()
	delivered0, acked0 := w.delivered.Load(), w.pubAcked.Load()
	var load sync.WaitGroup
	load.Add(2)
	go func() { defer load.Done(); w.postLoop(loadCtx) }()
	go func() { defer load.Done(); w.publishLoop(loadCtx) }()
	for loadCtx.Err() == nil {
		select {
		case <-ticker.C:
			emit(message{Progress: ptr(report())})
		case <-loadCtx.Done():
		}
	}
	stopLoad()
	loadCPU := cpuSeconds() - cpuStart
	load.Wait()
	loadSeconds := time.Since(loadStart).Seconds()
	loadDelivered, loadAcked := w.delivered.Load()-delivered0, w.pubAcked.Load()-acked0

	// Settle: wait until everything sent arrived (or the settle time ends).
	settleEnd := time.Now().Add(spec.Settle)
	for !w.settled() && time.Now().Before(settleEnd) && ctx.Err() == nil {
		select {
		case <-ticker.C:
			p := report()
			p.Unconnected = len(w.devs) - int(w.connectedNow.Load())
			emit(message{Progress: &p})
		case <-time.After(50 * time.Millisecond):
		}
	}
	r := w.result(connectSeconds, loadSeconds, loadDelivered, loadAcked)
	r.LoadCPUSeconds = loadCPU
	r.ClientRSSBefore, r.ClientHeapBefore, r.GoroutinesBefore = rssBefore, heapBefore, goroutinesBefore
	r.ClientRSSReady, r.ClientHeapReady, r.GoroutinesReady = rssReady, heapReady, goroutinesReady
	emit(message{Result: r})
	<-ctx.Done()
	return nil
}

func ptr[T any](v T) *T { return &v }

func (w *worker) newDevice(i int, key []byte) *benchDevice {
	spec := w.spec
	d := &benchDevice{w: w, name: fmt.Sprintf("%s-%d", spec.DevicePrefix, i), idx: i, pref: i % len(w.hosts)}
	cfg := client.Config{Addr: spec.Addrs[0], Device: d.name, Dial: d.dial,
		OnMessage: d.onMessage, OnPubAck: d.onPubAck, OnEvent: d.onEvent, BackoffMax: 5 * time.Second}
	if len(spec.SourceIPs) > 0 {
		d.local = &net.TCPAddr{IP: net.ParseIP(spec.SourceIPs[i%len(spec.SourceIPs)])}
	}
	if key != nil {
		cfg.TokenFunc = client.KeyTokenFunc(key, d.name, time.Hour)
	}
	d.c = client.New(cfg)
	return d
}

// dial spreads devices over the servers and skips servers that sent GOAWAY
// or refused a connection, as a Service skips unready pods. A connected
// SSE device dials its POSTs' connections to the server of its stream.
func (d *benchDevice) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	d.hostMu.Lock()
	session := !d.up.Load() || d.host == ""
	if session {
		d.host = d.w.servers.pick(d.w.hosts, d.pref, d.idx, time.Now())
	}
	host := d.host
	d.hostMu.Unlock()
	var nd net.Dialer
	if d.local != nil {
		nd.LocalAddr, nd.Control = d.local, bindNoPort
	}
	nc, err := nd.DialContext(ctx, network, host)
	switch {
	case err == nil:
		if session {
			d.hostMu.Lock()
			d.dialedAt = time.Now()
			d.hostMu.Unlock()
		}
		d.w.servers.succeeded(host)
	case ctx.Err() == nil: // refused, or reset by a dying server; not a slow one
		d.w.servers.failed(host, time.Now())
	}
	return nc, err
}

// server returns the device's server and when its connection was dialed.
func (d *benchDevice) server() (string, time.Time) {
	d.hostMu.Lock()
	defer d.hostMu.Unlock()
	return d.host, d.dialedAt
}

func (d *benchDevice) onMessage(seq uint64, payload []byte) {
	d.w.delivered.Add(1)
	if len(payload) >= 8 {
		stamp := int64(binary.BigEndian.Uint64(payload))
		d.w.mu.Lock()
		d.w.deliverLat.Record(time.Since(time.Unix(0, stamp)))
		d.w.mu.Unlock()
		d.got(stamp, seq)
	}
}

func (d *benchDevice) onPubAck(id uint64, payload []byte) {
	d.mu.Lock()
	d.acked = append(d.acked, id)
	d.mu.Unlock()
	d.w.pubAcked.Add(1)
	sent := time.Unix(0, int64(binary.BigEndian.Uint64(payload)))
	d.w.mu.Lock()
	d.w.pubLat.Record(time.Since(sent))
	d.w.mu.Unlock()
}

func (d *benchDevice) onEvent(ev client.Event) {
	w := d.w
	host, dialedAt := d.server()
	if ev.Type == client.EventConnected {
		d.up.Store(true)
		w.connectedNow.Add(1)
		if !d.ever {
			d.ever = true
			w.everConnected.Add(1)
		}
		if !d.downAt.IsZero() {
			w.mu.Lock()
			w.resLat.Record(ev.At.Sub(d.downAt))
			w.helloLat.Record(ev.At.Sub(dialedAt))
			w.mu.Unlock()
			w.resumed.Add(1)
			w.pendingResume.Add(-1)
			storeMax(&w.lastResume, ev.At.UnixNano())
			d.downAt = time.Time{}
		}
		return
	}
	wasUp := d.up.Swap(false)
	if wasUp {
		// Whatever the reason (GOAWAY, a dead server), the outage lasts
		// until the next WELCOME; failed reconnects do not restart it.
		w.connectedNow.Add(-1)
		d.downAt = ev.At
		w.outages.Add(1)
		w.pendingResume.Add(1)
		if !d.affected {
			d.affected = true
			w.affected.Add(1)
		}
	}
	w.mu.Lock()
	w.disconnects[string(ev.Reason)]++
	if _, seen := w.samples[string(ev.Reason)]; !seen && ev.Err != nil {
		w.samples[string(ev.Reason)] = ev.Err.Error()
	}
	if ev.Code != "" {
		w.codes[string(ev.Code)]++
	}
	w.mu.Unlock()
	switch {
	case ev.Reason == client.ReasonGoAway:
		w.servers.goAway(host)
	case ev.Reason == client.ReasonHandshake, ev.Reason == client.ReasonConnLost && !wasUp:
		// Connected but never welcomed: a dying server's listener still
		// accepts until the process is gone, then resets. It is not serving.
		w.servers.failed(host, ev.At)
	}
}

// storeMax raises a to v unless it is already higher.
func storeMax(a *atomic.Int64, v int64) {
	for old := a.Load(); v > old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}

// payload starts with the send time in nanoseconds, unique in this worker
// (it also names the message for the lost check), and returns it.
func (w *worker) payload() ([]byte, int64) {
	b := make([]byte, max(w.spec.Payload, 8))
	for i := 8; i < len(b); i++ {
		b[i] = 'x'
	}
	var stamp int64
	for {
		last := w.lastStamp.Load()
		stamp = max(time.Now().UnixNano(), last+1)
		if w.lastStamp.CompareAndSwap(last, stamp) {
			break
		}
	}
	binary.BigEndian.PutUint64(b, uint64(stamp))
	return b, stamp
}

// postLoop plays the backend: messages at the deliver rate to random
// devices through the admin APIs, one POST per message or per batch of
// PostBatch, with a bounded number of requests in flight.
func (w *worker) postLoop(ctx context.Context) {
	if w.spec.DeliverRate <= 0 || len(w.devs) == 0 {
		return
	}
	batch := max(w.spec.PostBatch, 1)
	jobs := make(chan *benchDevice, w.spec.PostConcurrency*batch)
	var wg sync.WaitGroup
	for k := 0; k < w.spec.PostConcurrency; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ds []*benchDevice
			for d := range jobs {
				ds = append(ds[:0], d)
			more:
				for len(ds) < batch {
					select {
					case d, ok := <-jobs:
						if !ok {
							break more
						}
						ds = append(ds, d)
					default:
						break more
					}
				}
				// Requests in flight, and their retries, finish after the load
				// ends (bounded by the client's timeout and sendAttempts), so
				// that every stored message is counted.
				msgs := make([]*outgoing, len(ds))
				for i, d := range ds {
					msgs[i] = w.newOutgoing(d)
				}
				w.send(context.WithoutCancel(ctx), msgs, batch > 1)
			}
		}()
	}
	w.paced(ctx, w.spec.DeliverRate, false, func(d *benchDevice) bool {
		select {
		case jobs <- d:
		default:
			w.postSkipped.Add(1)
		}
		return true
	})
	close(jobs)
	wg.Wait()
}

// outgoing is one backend message and what its attempts found.
type outgoing struct {
	d       *benchDevice
	payload []byte
	stamp   int64
	key     string
	// ambiguous: an attempt's outcome was unknown; failure: why the last
	// attempt failed.
	ambiguous bool
	failure   string
}

func (w *worker) newOutgoing(d *benchDevice) *outgoing {
	p, stamp := w.payload()
	// The stamp is unique in this worker, so the key is unique per device.
	return &outgoing{d: d, payload: p, stamp: stamp, key: "bench-" + strconv.FormatInt(stamp, 36)}
}

// sendAttempts bounds the attempts of one message; retries wait
// retryBackoff, doubled each time, and go to a server picked anew.
const (
	sendAttempts = 4
	retryBackoff = 250 * time.Millisecond
)

// send plays the backend for msgs, alone or in one POST /v1/messages: a
// message counts as sent when an answer gives it a seq (and then it must
// arrive exactly once). An ambiguous attempt, or one that never reached a
// server, is resent with the same key to another server; a refusal is a
// failure. A send still ambiguous after the last attempt, or refused after
// an ambiguous one, is an unknown outcome.
func (w *worker) send(ctx context.Context, msgs []*outgoing, batch bool) {
	wait := retryBackoff
	for attempt := 1; ; attempt++ {
		var retry []*outgoing
		n := len(w.spec.Admins)
		admin := w.apis.pick(w.spec.Admins, rand.IntN(n), rand.IntN(n), time.Now())
		if batch {
			retry = w.sendBatch(ctx, w.api[admin], msgs)
		} else {
			for _, m := range msgs {
				if !w.sendOne(ctx, w.api[admin], m) {
					retry = append(retry, m)
				}
			}
		}
		if len(retry) == 0 {
			return
		}
		if attempt == sendAttempts {
			for _, m := range retry {
				if m.ambiguous {
					w.unknown.Add(1)
				} else {
					w.postFailed(m.failure, 1)
				}
			}
			return
		}
		w.retries.Add(uint64(len(retry)))
		time.Sleep(wait)
		wait *= 2
		msgs = retry
	}
}

// sendOne makes one attempt; false: resend m.
func (w *worker) sendOne(ctx context.Context, api *adminapi.Client, m *outgoing) bool {
	res, err := api.Send(ctx, m.d.name, m.payload, m.key)
	if err == nil {
		w.apis.succeeded(api.BaseURL)
		w.accepted(m, res.Seq, res.Duplicate)
		return true
	}
	return w.attemptFailed(api, err, []*outgoing{m})
}

// sendBatch makes one attempt for msgs in one request and returns those
// to resend.
func (w *worker) sendBatch(ctx context.Context, api *adminapi.Client, msgs []*outgoing) []*outgoing {
	batch := make([]adminapi.BatchMessage, len(msgs))
	for i, m := range msgs {
		batch[i] = adminapi.BatchMessage{Device: m.d.name, Payload: m.payload, Key: m.key}
	}
	results, err := api.SendBatch(ctx, batch)
	if err != nil {
		if w.attemptFailed(api, err, msgs) {
			return nil
		}
		return msgs
	}
	w.apis.succeeded(api.BaseURL)
	var retry []*outgoing
	for i, r := range results {
		m := msgs[i]
		switch {
		case r.Seq != 0:
			w.accepted(m, r.Seq, r.Duplicate)
		case r.Ambiguous():
			w.markAmbiguous(m)
			m.failure = r.Error
			retry = append(retry, m)
		case m.ambiguous: // refused now, yet an earlier attempt may have stored it
			w.unknown.Add(1)
		default:
			w.postFailed(r.Error, 1)
		}
	}
	return retry
}

func (w *worker) accepted(m *outgoing, seq uint64, duplicate bool) {
	if duplicate {
		w.dupAns.Add(1)
	}
	m.d.accepted(m.stamp, seq)
}

func (w *worker) markAmbiguous(m *outgoing) {
	if !m.ambiguous {
		m.ambiguous = true
		w.ambiguous.Add(1)
	}
}

// attemptFailed sorts a failed request for msgs: true when they failed for
// good (a refusal, counted), false when they are to be resent.
func (w *worker) attemptFailed(api *adminapi.Client, err error, msgs []*outgoing) bool {
	var e *adminapi.Error
	if !errors.As(err, &e) {
		w.postFailed("error", uint64(len(msgs)))
		return true
	}
	if e.Status == 0 {
		w.apis.failed(api.BaseURL, time.Now()) // down, or too slow: try others
	}
	if e.Refused() {
		for _, m := range msgs {
			if m.ambiguous { // an earlier attempt may have stored it
				w.unknown.Add(1)
			} else {
				w.postFailed(strconv.Itoa(e.Status), 1)
			}
		}
		return true
	}
	reason := strconv.Itoa(e.Status)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		reason = "refused"
	case e.Status == 0:
		reason = "error"
	}
	for _, m := range msgs {
		if e.Ambiguous() {
			w.markAmbiguous(m)
		}
		m.failure = reason
	}
	return false
}

func (w *worker) postFailed(status string, n uint64) {
	w.mu.Lock()
	w.postErr[status] += n
	w.mu.Unlock()
}

// publishLoop makes connected devices PUBLISH at the publish rate.
func (w *worker) publishLoop(ctx context.Context) {
	if w.spec.PublishRate <= 0 || len(w.devs) == 0 {
		return
	}
	w.paced(ctx, w.spec.PublishRate, true, func(d *benchDevice) bool {
		body, _ := w.payload() // onPubAck takes the latency from its stamp
		if _, err := d.c.PublishAsync(ctx, body); err != nil {
			return false
		}
		w.published.Add(1)
		return true
	})
}

// paced calls send at rate until ctx ends or send returns false, with a
// random device that changes every Burst messages (a connected one, if a
// few tries find one, when connected is set).
func (w *worker) paced(ctx context.Context, rate float64, connected bool, send func(*benchDevice) bool) {
	pace := newPacer(rate)
	var d *benchDevice
	for i := 0; wait(ctx, 2*time.Millisecond); {
		for n := pace.due(); n > 0; n, i = n-1, i+1 {
			if i%max(w.spec.Burst, 1) == 0 {
				d = w.devs[rand.IntN(len(w.devs))]
				for k := 0; connected && k < 8 && !d.up.Load(); k++ {
					d = w.devs[rand.IntN(len(w.devs))]
				}
			}
			if !send(d) {
				return
			}
		}
	}
}

// settled: every device connected, every accepted message delivered, every publish acked.
func (w *worker) settled() bool {
	return int(w.connectedNow.Load()) == len(w.devs) && w.awaitDelivery.Load() == 0 &&
		w.pubAcked.Load() >= w.published.Load()
}

func (w *worker) result(connectSeconds, loadSeconds float64, loadDelivered, loadAcked uint64) *Result {
	r := &Result{Devices: w.spec.Devices, Connected: int(w.everConnected.Load()), ConnectedAtEnd: int(w.connectedNow.Load()),
		ConnectSeconds: connectSeconds, LoadSeconds: loadSeconds, PostSkipped: w.postSkipped.Load(),
		Delivered: w.delivered.Load(), LoadDelivered: loadDelivered, Published: w.published.Load(),
		AmbiguousSends: w.ambiguous.Load(), SendRetries: w.retries.Load(), DuplicateAnswers: w.dupAns.Load(), UnknownOutcomes: w.unknown.Load(),
		PublishAcked: w.pubAcked.Load(), LoadPublishAcked: loadAcked,
		Affected: w.affected.Load(), Outages: w.outages.Load(), Resumed: w.resumed.Load(),
		PendingResume: w.pendingResume.Load(), LastResumeUnixNano: w.lastResume.Load(), AckedIDs: map[string][]uint64{}}
	r.PublishUnacked = r.Published - r.PublishAcked
	for _, d := range w.devs {
		d.mu.Lock()
		r.Posted += d.posted
		r.DeliveredTwice += d.twice
		r.DeliveredUnaccepted += uint64(len(d.early))
		if d.up.Load() {
			r.LostDownstream += uint64(len(d.waiting))
		} else {
			r.Undelivered += uint64(len(d.waiting))
		}
		if len(d.acked) > 0 {
			r.AckedIDs[d.name] = d.acked
		}
		d.mu.Unlock()
		st := d.c.Stats()
		r.Duplicates += st.Duplicates
		r.Retransmits += st.Retransmits
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	r.DeliverLatency, r.PublishLatency, r.ResumeLatency, r.HelloLatency = w.deliverLat, w.pubLat, w.resLat, w.helloLat
	r.Disconnects, r.ErrorCodes, r.PostFailures, r.DisconnectSamples = w.disconnects, w.codes, w.postErr, w.samples
	return r
}

// pacer turns a rate into a number of events due at each check.
type pacer struct {
	rate  float64
	start time.Time
	done  float64
}

func newPacer(rate float64) *pacer { return &pacer{rate: rate, start: time.Now()} }

func (p *pacer) due() int {
	if p.rate <= 0 {
		return 1 << 30
	}
	want := time.Since(p.start).Seconds() * p.rate
	n := int(want - p.done)
	p.done += float64(n)
	return n
}

// wait sleeps d and reports whether ctx is still alive.
func wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// memory returns the worker's resident memory and Go heap in bytes, and its
// goroutines, after a collection that returns freed memory to the system.
func memory() (rssBytes, heapBytes float64, goroutines int) {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return rss(), float64(ms.HeapInuse), runtime.NumGoroutine()
}
