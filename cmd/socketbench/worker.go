package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/client"
)

// WorkerSpec is what the coordinator hands a worker process (as JSON).
type WorkerSpec struct {
	ID              int           `json:"id"`
	DevicePrefix    string        `json:"device_prefix"`
	FirstDevice     int           `json:"first_device"`
	Devices         int           `json:"devices"`
	Addrs           []string      `json:"addrs"` // host:port or ws:// URLs
	Admins          []string      `json:"admins"`
	SourceIPs       []string      `json:"source_ips"`
	ConnectRate     float64       `json:"connect_rate"`
	DeliverRate     float64       `json:"deliver_rate"`
	PublishRate     float64       `json:"publish_rate"`
	Payload         int           `json:"payload"`
	PostConcurrency int           `json:"post_concurrency"`
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
	// Downstream: backend POSTs answered 202, failed by status, or not
	// sent because the posters could not keep up.
	Posted, PostSkipped   uint64
	PostFailures          map[string]uint64
	Delivered, Duplicates uint64
	LoadDelivered         uint64
	// LostDownstream: 202-acknowledged messages that a device connected at
	// the end never got; Undelivered: those still stored for devices that
	// were not connected at the end (not lost: they get them on resume).
	LostDownstream, Undelivered uint64
	// Upstream: publishes handed to the client, PUBACKed, still unacked at the end.
	Published, PublishAcked, LoadPublishAcked, PublishUnacked, Retransmits uint64
	DeliverLatency, PublishLatency, ResumeLatency                          Hist
	Disconnects, ErrorCodes                                                map[string]uint64
	// DisconnectSamples holds the first error seen for each disconnect reason.
	DisconnectSamples map[string]string
	// Storm: devices sent away by GOAWAY, and when the last of them was back.
	GoAwayDevices, Resumed uint64
	PendingResume          int64
	LastResumeUnixNano     int64
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
	spec  WorkerSpec
	devs  []*benchDevice
	hosts []string // host:port of each address
	avoid sync.Map // host:port -> true once it sent GOAWAY (like an unready endpoint)
	http  *http.Client

	everConnected, connectedNow atomic.Int64
	delivered, pubAcked         atomic.Uint64
	published, postSkipped      atomic.Uint64
	pendingResume               atomic.Int64
	lastResume                  atomic.Int64
	goAwayDevices, resumed      atomic.Uint64

	mu                          sync.Mutex
	deliverLat, pubLat, resLat  Hist
	disconnects, codes, postErr map[string]uint64
	samples                     map[string]string
}

type benchDevice struct {
	w        *worker
	name     string
	idx      int
	pref     int          // index of the server it prefers
	local    *net.TCPAddr // source address
	c        *client.Client
	posted   atomic.Uint64
	received atomic.Uint64
	up       atomic.Bool
	// Touched only on the client's Run goroutine (dial, events, messages).
	host     string
	ever     bool
	goAwayAt time.Time
}

func runWorker(specJSON string) int {
	var spec WorkerSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The coordinator holds our stdin: when it goes away, so do we.
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	w := newWorker(spec)
	out := json.NewEncoder(os.Stdout)
	res, err := w.run(ctx, func(m message) { _ = out.Encode(m) })
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	_ = out.Encode(message{Result: res})
	return 0
}

func newWorker(spec WorkerSpec) *worker {
	w := &worker{spec: spec, disconnects: map[string]uint64{}, codes: map[string]uint64{}, postErr: map[string]uint64{},
		samples: map[string]string{}, http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: spec.PostConcurrency}}}
	for _, a := range spec.Addrs {
		if u, err := url.Parse(a); err == nil && u.Host != "" && strings.HasPrefix(a, "ws") {
			a = u.Host
		}
		w.hosts = append(w.hosts, a)
	}
	return w
}

func (w *worker) run(ctx context.Context, emit func(message)) (*Result, error) {
	spec := w.spec
	var key []byte
	if spec.KeyFile != "" {
		var err error
		if key, err = client.LoadKey(spec.KeyFile); err != nil {
			return nil, err
		}
	}
	devCtx, stopDevices := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() { stopDevices(); running.Wait() }()

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
	emit(message{Ready: ptr(report())})

	// Load phase.
	loadCtx, stopLoad := context.WithTimeout(ctx, spec.Duration)
	loadStart := time.Now()
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
	return w.result(connectSeconds, loadSeconds, loadDelivered, loadAcked), nil
}

func ptr[T any](v T) *T { return &v }

func (w *worker) newDevice(i int, key []byte) *benchDevice {
	spec := w.spec
	d := &benchDevice{w: w, name: fmt.Sprintf("%s-%d", spec.DevicePrefix, i), idx: i, pref: i % len(w.hosts)}
	cfg := client.Config{Addr: spec.Addrs[0], Device: d.name, Dial: d.dial,
		OnMessage: d.onMessage, OnEvent: d.onEvent, BackoffMax: 5 * time.Second}
	if len(spec.SourceIPs) > 0 {
		d.local = &net.TCPAddr{IP: net.ParseIP(spec.SourceIPs[i%len(spec.SourceIPs)])}
	}
	if key != nil {
		cfg.TokenFunc = client.KeyTokenFunc(key, d.name, time.Hour)
	}
	d.c = client.New(cfg)
	return d
}

// dial spreads devices over the servers and skips servers that sent GOAWAY,
// as a Service skips unready pods.
func (d *benchDevice) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	hosts := d.w.hosts
	var ok []string
	for _, h := range hosts {
		if _, bad := d.w.avoid.Load(h); !bad {
			ok = append(ok, h)
		}
	}
	switch _, bad := d.w.avoid.Load(hosts[d.pref]); {
	case !bad || len(ok) == 0:
		d.host = hosts[d.pref]
	default: // spread the devices of a drained server over the others
		d.host = ok[d.idx%len(ok)]
	}
	var nd net.Dialer
	if d.local != nil {
		nd.LocalAddr, nd.Control = d.local, bindNoPort
	}
	return nd.DialContext(ctx, network, d.host)
}

func (d *benchDevice) onMessage(_ uint64, payload []byte) {
	d.received.Add(1)
	d.w.delivered.Add(1)
	if len(payload) >= 8 {
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(payload)))
		d.w.mu.Lock()
		d.w.deliverLat.Record(time.Since(sent))
		d.w.mu.Unlock()
	}
}

func (d *benchDevice) onEvent(ev client.Event) {
	w := d.w
	if ev.Type == client.EventConnected {
		d.up.Store(true)
		w.connectedNow.Add(1)
		if !d.ever {
			d.ever = true
			w.everConnected.Add(1)
		}
		if !d.goAwayAt.IsZero() {
			w.mu.Lock()
			w.resLat.Record(ev.At.Sub(d.goAwayAt))
			w.mu.Unlock()
			w.resumed.Add(1)
			w.pendingResume.Add(-1)
			w.lastResume.Store(ev.At.UnixNano())
			d.goAwayAt = time.Time{}
		}
		return
	}
	if d.up.Swap(false) {
		w.connectedNow.Add(-1)
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
	if ev.Reason == client.ReasonGoAway {
		w.avoid.Store(d.host, true)
		if d.goAwayAt.IsZero() {
			d.goAwayAt = ev.At
			w.goAwayDevices.Add(1)
			w.pendingResume.Add(1)
		}
	}
}

func (w *worker) payload() []byte {
	b := make([]byte, max(w.spec.Payload, 8))
	for i := 8; i < len(b); i++ {
		b[i] = 'x'
	}
	binary.BigEndian.PutUint64(b, uint64(time.Now().UnixNano()))
	return b
}

// postLoop plays the backend: POSTs at the deliver rate to random devices
// through the admin APIs, with a bounded number of requests in flight.
func (w *worker) postLoop(ctx context.Context) {
	if w.spec.DeliverRate <= 0 || len(w.devs) == 0 {
		return
	}
	jobs := make(chan *benchDevice, w.spec.PostConcurrency)
	var wg sync.WaitGroup
	for k := 0; k < w.spec.PostConcurrency; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				// Requests in flight finish after the load ends (bounded by the
				// client's timeout), so that every stored message is counted.
				w.post(context.WithoutCancel(ctx), d, w.spec.Admins[rand.IntN(len(w.spec.Admins))])
			}
		}()
	}
	pace := newPacer(w.spec.DeliverRate)
	for wait(ctx, 2*time.Millisecond) {
		for n := pace.due(); n > 0; n-- {
			select {
			case jobs <- w.devs[rand.IntN(len(w.devs))]:
			default:
				w.postSkipped.Add(1)
			}
		}
	}
	close(jobs)
	wg.Wait()
}

func (w *worker) post(ctx context.Context, d *benchDevice, admin string) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+"/v1/devices/"+d.name+"/messages",
		strings.NewReader(string(w.payload())))
	if w.spec.APIToken != "" {
		req.Header.Set("Authorization", "Bearer "+w.spec.APIToken)
	}
	resp, err := w.http.Do(req)
	status := "error"
	if err == nil {
		_, _ = io.Copy(io.Discard, bufio.NewReader(resp.Body))
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			d.posted.Add(1)
			return
		}
		status = strconv.Itoa(resp.StatusCode)
	}
	w.mu.Lock()
	w.postErr[status]++
	w.mu.Unlock()
}

// publishLoop makes connected devices PUBLISH at the publish rate.
func (w *worker) publishLoop(ctx context.Context) {
	if w.spec.PublishRate <= 0 || len(w.devs) == 0 {
		return
	}
	pace := newPacer(w.spec.PublishRate)
	for wait(ctx, 2*time.Millisecond) {
		for n := pace.due(); n > 0; n-- {
			d := w.devs[rand.IntN(len(w.devs))]
			for k := 0; k < 8 && !d.up.Load(); k++ {
				d = w.devs[rand.IntN(len(w.devs))]
			}
			start := time.Now()
			p, err := d.c.PublishAsync(ctx, w.payload())
			if err != nil {
				return
			}
			w.published.Add(1)
			go func() {
				<-p.Done() // or never: the message then counts as unacked
				w.pubAcked.Add(1)
				w.mu.Lock()
				w.pubLat.Record(time.Since(start))
				w.mu.Unlock()
			}()
		}
	}
}

// settled: every device connected, every posted message delivered, every publish acked.
func (w *worker) settled() bool {
	if int(w.connectedNow.Load()) < len(w.devs) || w.pubAcked.Load() < w.published.Load() {
		return false
	}
	for _, d := range w.devs {
		if d.received.Load() < d.posted.Load() {
			return false
		}
	}
	return true
}

func (w *worker) result(connectSeconds, loadSeconds float64, loadDelivered, loadAcked uint64) *Result {
	r := &Result{Devices: w.spec.Devices, Connected: int(w.everConnected.Load()), ConnectedAtEnd: int(w.connectedNow.Load()),
		ConnectSeconds: connectSeconds, LoadSeconds: loadSeconds, PostSkipped: w.postSkipped.Load(),
		Delivered: w.delivered.Load(), LoadDelivered: loadDelivered, Published: w.published.Load(),
		PublishAcked: w.pubAcked.Load(), LoadPublishAcked: loadAcked,
		GoAwayDevices: w.goAwayDevices.Load(), Resumed: w.resumed.Load(),
		PendingResume: w.pendingResume.Load(), LastResumeUnixNano: w.lastResume.Load()}
	r.PublishUnacked = r.Published - r.PublishAcked
	for _, d := range w.devs {
		posted, got := d.posted.Load(), d.received.Load()
		r.Posted += posted
		switch {
		case got >= posted:
		case d.up.Load():
			r.LostDownstream += posted - got
		default:
			r.Undelivered += posted - got
		}
		st := d.c.Stats()
		r.Duplicates += st.Duplicates
		r.Retransmits += st.Retransmits
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	r.DeliverLatency, r.PublishLatency, r.ResumeLatency = w.deliverLat, w.pubLat, w.resLat
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
