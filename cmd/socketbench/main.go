// Command socketbench is the load tool: it opens many device connections
// (TCP, WebSocket or SSE) to one or more socketservers, drives backend messages
// and device publishes at set rates, optionally injects a fault mid-run
// (--storm=drain|kill|restart), and prints a table: connections held, server
// memory per connection, connect rate, resume time, throughput, end-to-end
// latency, errors and lost messages (which must be 0). Every backend send
// carries an idempotency key and is resent with it after an ambiguous
// outcome, so each message must arrive exactly once.
//
// It spreads connections over source addresses 127.0.0.2, .3, … (one
// address gives ~28k ports) and over worker processes (re-executions of
// itself with --worker), because a process here may hold 20,000 files.
// Everything is bounded: --duration, --settle and the hard cap --max-time.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/internal/timeline"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "--worker" {
		os.Exit(runWorker(os.Args[2]))
	}
	os.Exit(run(os.Args[1:]))
}

type options struct {
	connections, perWorker, sourceIPs, spawn, payload, postConcurrency int
	postBatch, burst                                                   int
	idleBeforeLoad                                                     time.Duration
	transport, addrs, admins, serverBin, redisAddr, prefix             string
	keyFile, apiTokenFile, jsonOut, timeline                           string
	connectRate, deliverRate, publishRate                              float64
	duration, settle, connectTimeout, maxTime, stormAfter              time.Duration
	drainTimeout, drainJitter                                          time.Duration
	storm                                                              stormMode
	scenario                                                           string
}

// scenarios are named workloads: flags that reproduce a figure of the README
// under one name. Flags given on the command line override them.
var scenarios = map[string]map[string]string{
	// Every message to a random device, batched by the backend: the
	// workload where each message costs its own writes and reads.
	"uniform-deliver": {"transport": "ws", "connections": "2000", "publish-rate": "0", "deliver-rate": "10000",
		"post-batch": "100", "post-concurrency": "8"},
	// Every publish from a random device.
	"uniform-publish": {"transport": "ws", "connections": "2000", "publish-rate": "10000", "deliver-rate": "0"},
}

func scenarioNames() string { return strings.Join(slices.Sorted(maps.Keys(scenarios)), ", ") }

// stormMode is the fault --storm injects during the load.
type stormMode string

const (
	stormOff     stormMode = ""
	stormDrain   stormMode = "drain"   // POST /drain to server 0: its devices get GOAWAY
	stormKill    stormMode = "kill"    // SIGKILL spawned server 0: its devices just lose the connection
	stormRestart stormMode = "restart" // SIGKILL every spawned server, then start them again on the same ports
)

func (m *stormMode) String() string { return string(*m) }

// IsBoolFlag lets a plain --storm (which the flag package sets to "true")
// keep meaning drain, as it did when it was a bool.
func (m *stormMode) IsBoolFlag() bool { return true }

func (m *stormMode) Set(v string) error {
	switch v {
	case "true":
		*m = stormDrain
	case "false":
		*m = stormOff
	case string(stormDrain), string(stormKill), string(stormRestart):
		*m = stormMode(v)
	default:
		return fmt.Errorf("%q is not drain, kill or restart", v)
	}
	return nil
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("socketbench", flag.ContinueOnError)
	fs.IntVar(&o.connections, "connections", 1000, "device connections to open")
	fs.StringVar(&o.transport, "transport", "tcp", "tcp, ws (WebSocket), sse (Server-Sent Events: a GET stream, ACK and PUBLISH as POSTs), grpc (scp.v1.Device/Connect) or mqtt (MQTT 5)")
	fs.StringVar(&o.addrs, "addrs", "", "device addresses of existing servers, comma-separated (host:port; for ws and sse the WebSocket listener's host:port)")
	fs.StringVar(&o.admins, "admin-addrs", "", "admin addresses of those servers, same order")
	fs.IntVar(&o.spawn, "spawn-servers", 0, "start this many socketservers on 127.0.0.1 (with a Redis) instead of --addrs")
	fs.StringVar(&o.serverBin, "server-bin", "bin/socketserver", "socketserver binary for --spawn-servers")
	fs.StringVar(&o.redisAddr, "redis-addr", "", "Redis for spawned servers (default: start a redis-server); also used to count stored publishes")
	fs.StringVar(&o.prefix, "redis-prefix", "scp", "Redis key prefix of the servers")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 20*time.Second, "--drain-timeout of spawned servers")
	fs.DurationVar(&o.drainJitter, "drain-jitter", 2*time.Second, "--drain-jitter of spawned servers")
	fs.IntVar(&o.sourceIPs, "source-ips", 0, "source addresses 127.0.0.2.. to spread connections over (0: one per 20,000 connections when the servers are on loopback, none otherwise)")
	fs.IntVar(&o.perWorker, "per-worker", 15000, "connections per worker process (a process may hold 20,000 files)")
	fs.Float64Var(&o.connectRate, "connect-rate", 5000, "new connections per second, all workers together (0: unpaced)")
	fs.Float64Var(&o.deliverRate, "deliver-rate", 1000, "backend messages per second (POSTs to the admin API)")
	fs.Float64Var(&o.publishRate, "publish-rate", 1000, "device PUBLISHes per second")
	fs.IntVar(&o.payload, "payload", 64, "payload bytes (at least 8: the send timestamp)")
	fs.IntVar(&o.postConcurrency, "post-concurrency", 64, "backend requests in flight per worker")
	fs.IntVar(&o.postBatch, "post-batch", 1, "backend messages per request: 1 posts to /v1/devices/{d}/messages, more batch them in POST /v1/messages")
	fs.IntVar(&o.burst, "burst", 1, "messages in a row to, and from, one device (1: each message picks a random device)")
	fs.DurationVar(&o.idleBeforeLoad, "idle-before-load", 3*time.Second, "pause between connecting and the load, in which idle memory is measured")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "load phase, after every device connected")
	fs.DurationVar(&o.settle, "settle", 30*time.Second, "longest wait after the load for deliveries, PUBACKs and resumes")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", 2*time.Minute, "longest connect phase")
	fs.DurationVar(&o.maxTime, "max-time", 0, "hard cap on the whole run (default: connect-timeout + duration + settle + 1m)")
	fs.Var(&o.storm, "storm", "fault during the load, measured until every affected device resumed: drain (POST /drain to the first server; plain --storm), "+
		"kill (SIGKILL the first spawned server) or restart (SIGKILL every spawned server and start them again on the same ports)")
	fs.DurationVar(&o.stormAfter, "storm-after", 0, "when the storm hits, after the load started (default: a third of --duration)")
	fs.StringVar(&o.keyFile, "key-file", "", "device key to sign tokens (spawned servers run without auth)")
	fs.StringVar(&o.apiTokenFile, "api-token-file", "", "bearer token file for the admin API (spawned servers: default a random token)")
	fs.StringVar(&o.jsonOut, "json", "", "also write the summed results as JSON to this file")
	fs.StringVar(&o.timeline, "timeline", "", "also draw each server's connections over the run (GET /v1/server every 250 ms) as an SVG in this file")
	fs.StringVar(&o.scenario, "scenario", "", "named workload that sets the flags it names unless they are given: "+scenarioNames())
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.scenario != "" {
		sc, ok := scenarios[o.scenario]
		if !ok {
			return nil, fmt.Errorf("--scenario %q is not one of %s", o.scenario, scenarioNames())
		}
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for name, v := range sc {
			if !given[name] {
				if err := fs.Set(name, v); err != nil {
					return nil, fmt.Errorf("scenario %s: --%s %s: %w", o.scenario, name, v, err)
				}
			}
		}
	}
	if fs.NArg() > 0 { // "--storm kill" sets drain and stops parsing at "kill"
		return nil, fmt.Errorf("unexpected argument %q (a storm mode is given as --storm=kill)", fs.Arg(0))
	}
	servers := o.spawn
	if servers == 0 {
		servers = len(strings.Split(o.addrs, ","))
	}
	switch {
	case o.connections < 1:
		return nil, errors.New("--connections must be at least 1")
	case o.transport != "tcp" && o.transport != "ws" && o.transport != "sse" && o.transport != "grpc" && o.transport != "mqtt":
		return nil, errors.New("--transport is tcp, ws, sse, grpc or mqtt")
	case o.spawn == 0 && o.addrs == "":
		return nil, errors.New("give --addrs and --admin-addrs, or --spawn-servers N")
	case (o.storm == stormKill || o.storm == stormRestart) && o.spawn == 0:
		return nil, fmt.Errorf("--storm=%s needs --spawn-servers: the tool kills only servers it started", o.storm)
	case (o.storm == stormDrain || o.storm == stormKill) && servers < 2:
		// Restart brings the same servers back; drain and kill need another one to move to.
		return nil, fmt.Errorf("--storm=%s needs at least two servers", o.storm)
	}
	if o.maxTime == 0 {
		o.maxTime = o.connectTimeout + o.duration + o.settle + time.Minute
	}
	if o.stormAfter == 0 {
		o.stormAfter = o.duration / 3
	}
	if o.sourceIPs == 0 && (o.spawn > 0 || loopback(o.addrs)) {
		o.sourceIPs = (o.connections + 19999) / 20000
	}
	return o, nil
}

// loopback reports whether every address is on loopback, where source
// addresses 127.0.0.x can reach it.
func loopback(addrs string) bool {
	for _, a := range strings.Split(addrs, ",") {
		if u, err := url.Parse(a); err == nil && u.Host != "" {
			a = u.Host // a ws:// URL
		}
		host, _, err := net.SplitHostPort(a)
		if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return false
		}
	}
	return true
}

func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "socketbench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.maxTime)
	defer cancel()
	b := &bench{o: o}
	defer b.stopChildren()
	if err := b.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "socketbench:", err)
		return 1
	}
	sum, err := b.run(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "socketbench:", err)
		return 1
	}
	b.print(os.Stdout, sum)
	if o.jsonOut != "" {
		data, _ := json.MarshalIndent(sum, "", "  ")
		if err := os.WriteFile(o.jsonOut, data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "socketbench:", err)
		}
	}
	if sum.LostDownstream > 0 || sum.DeliveredTwice > 0 || sum.UpstreamMissing > 0 || sum.UpstreamDuplicates > 0 || sum.ConnectedAtEnd < o.connections {
		return 1
	}
	return 0
}

type bench struct {
	o        *options
	mu       sync.Mutex // guards children
	children []*process // everything started, dead or alive: killed at the end
	servers  []*server  // spawned servers
	addrs    []string   // device addresses, in the transport's form
	admins   []string
	apiToken string
	// tokenFile holds apiToken for spawned servers; removed at the end
	// when the tool wrote it.
	tokenFile string
	rdb       *redis.Client
}

// server is a spawned socketserver; p is its current process.
type server struct {
	name  string
	p     *process
	addrs serverAddrs
}

func (b *bench) track(p *process) {
	b.mu.Lock()
	b.children = append(b.children, p)
	b.mu.Unlock()
}

func (b *bench) stopChildren() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := len(b.children) - 1; i >= 0; i-- {
		b.children[i].kill()
	}
	if b.rdb != nil {
		b.rdb.Close()
	}
	if b.tokenFile != "" && b.o.apiTokenFile == "" {
		_ = os.Remove(b.tokenFile)
	}
}

// writeToken writes a random API token to a new file.
func writeToken() (file, token string, err error) {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", "", err
	}
	token = hex.EncodeToString(raw)
	f, err := os.CreateTemp("", "socketbench-api-token-")
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	if _, err := f.WriteString(token + "\n"); err != nil {
		return "", "", err
	}
	return f.Name(), token, nil
}

// admin is the API client of one admin address.
func (b *bench) admin(addr string) *adminapi.Client {
	return &adminapi.Client{BaseURL: addr, Token: b.apiToken}
}

// setup starts Redis and the servers when asked, and resolves the addresses.
func (b *bench) setup(ctx context.Context) error {
	o := b.o
	if o.apiTokenFile != "" {
		t, err := os.ReadFile(o.apiTokenFile)
		if err != nil {
			return err
		}
		b.apiToken = strings.TrimSpace(string(t))
	}
	if o.spawn > 0 && o.apiTokenFile == "" {
		// Spawned servers get a fresh API token, as a deployment would.
		file, token, err := writeToken()
		if err != nil {
			return err
		}
		b.tokenFile, b.apiToken = file, token
	}
	var hostPorts []string
	if o.spawn > 0 {
		if o.redisAddr == "" {
			dir, err := tempDir()
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir) // redis writes nothing there without persistence
			p, addr, err := startRedis(dir)
			if err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			b.track(p)
			o.redisAddr = addr
		}
		for i := 0; i < o.spawn; i++ {
			b.servers = append(b.servers, &server{name: fmt.Sprintf("bench-%d", i)})
		}
		if err := b.startServers(); err != nil {
			return err
		}
		for _, s := range b.servers {
			switch o.transport {
			case "ws", "sse":
				hostPorts = append(hostPorts, s.addrs.WS)
			case "grpc":
				hostPorts = append(hostPorts, s.addrs.GRPC)
			case "mqtt":
				hostPorts = append(hostPorts, s.addrs.MQTT)
			default:
				hostPorts = append(hostPorts, s.addrs.TCP)
			}
			b.admins = append(b.admins, s.addrs.Admin)
		}
	} else {
		hostPorts = strings.Split(o.addrs, ",")
		b.admins = strings.Split(o.admins, ",")
		if o.admins == "" || len(b.admins) != len(hostPorts) {
			return errors.New("--admin-addrs must list one admin address per --addrs entry")
		}
	}
	for _, hp := range hostPorts {
		switch o.transport {
		case "ws":
			hp = "ws://" + hp + "/ws"
		case "sse":
			hp = "http://" + hp + "/sse"
		case "grpc":
			hp = "grpc://" + hp
		case "mqtt":
			hp = "mqtt://" + hp
		}
		b.addrs = append(b.addrs, hp)
	}
	if o.redisAddr != "" {
		b.rdb = redis.NewClient(&redis.Options{Addr: o.redisAddr})
	}
	return nil
}

// startServers starts every spawned server at once: on ports the kernel
// picks the first time, on the same addresses again after a restart (as
// pods of a StatefulSet come back behind the same endpoints).
func (b *bench) startServers() error {
	o := b.o
	extra := []string{"--drain-timeout", o.drainTimeout.String(), "--drain-jitter", o.drainJitter.String()}
	if b.tokenFile != "" {
		extra = append(extra, "--api-token-file", b.tokenFile)
	} else if o.apiTokenFile != "" {
		extra = append(extra, "--api-token-file", o.apiTokenFile)
	}
	errs := make([]error, len(b.servers))
	var wg sync.WaitGroup
	for i, s := range b.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, a, err := startServer(o.serverBin, s.name, o.redisAddr, o.prefix, s.addrs, extra)
			if err != nil {
				errs[i] = err
				return
			}
			b.track(p)
			s.p, s.addrs = p, a
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Summary is the whole run: the workers' results added up, plus what the
// coordinator measured itself.
type Summary struct {
	Result
	Workers, Servers, SourceIPs int
	Transport                   string
	// Storm: what was done and when; StormSeconds runs from then until the
	// last affected device was back; RestartSeconds until every restarted
	// server listened again.
	StormAction                  string
	StormUnixNano                int64
	StormSeconds, RestartSeconds float64
	Memory                       []serverMemory
	// UpstreamStored: stream entries of this run's devices; missing:
	// PUBACKed publishes not among them; duplicates: entries beyond the
	// first of one (device, id).
	UpstreamStored, UpstreamMissing, UpstreamDuplicates int64
	// CPU time of the servers and of Redis in the load phase (without a storm).
	ServerCPUSeconds, RedisCPUSeconds float64
}

type serverMemory struct {
	Admin                 string
	Connections           float64
	RSSBefore, RSSReady   float64
	HeapBefore, HeapReady float64
}

func (b *bench) run(ctx context.Context) (*Summary, error) {
	o := b.o
	b.collectGarbage(ctx)
	before := b.scrapeAll(ctx)
	startID := "0-0" // the stream's last entry before the run
	if b.rdb != nil {
		if last, err := b.rdb.XRevRangeN(ctx, o.prefix+":upstream", "+", "-", 1).Result(); err == nil && len(last) > 0 {
			startID = last[0].ID
		}
	}
	workers := (o.connections + o.perWorker - 1) / o.perWorker
	var ips []string
	for i := 0; i < o.sourceIPs; i++ {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", 2+i))
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	prefix := fmt.Sprintf("bench%d", time.Now().Unix())
	start := time.Now()
	var sampled func() []timeline.Series
	if o.timeline != "" {
		sampled = b.sampleConnections(ctx, start)
		defer sampled() // on an early return; it may be called twice
	}
	var wg sync.WaitGroup
	st := &status{workers: workers, progress: make([]progress, workers), results: make([]*Result, workers),
		ready: make(chan struct{}), resultsIn: make(chan struct{})}
	var stdins []io.WriteCloser // "load" starts the workers' load; closing ends them
	defer func() {
		for _, in := range stdins {
			in.Close()
		}
	}()
	first := 0
	for i := 0; i < workers; i++ {
		n := o.connections / workers
		if i < o.connections%workers {
			n++
		}
		spec := WorkerSpec{ID: i, DevicePrefix: prefix, FirstDevice: first, Devices: n, Addrs: b.addrs, Admins: b.admins,
			SourceIPs: ips, ConnectRate: o.connectRate / float64(workers), DeliverRate: o.deliverRate / float64(workers),
			PublishRate: o.publishRate / float64(workers), Payload: o.payload, PostConcurrency: o.postConcurrency,
			PostBatch: o.postBatch, Burst: o.burst,
			ConnectTimeout: o.connectTimeout, Duration: o.duration, Settle: o.settle, KeyFile: o.keyFile, APIToken: b.apiToken}
		first += n
		specJSON, _ := json.Marshal(spec)
		cmd := exec.CommandContext(ctx, exe, "--worker", string(specJSON))
		cmd.Stderr = os.Stderr
		setParentDeathSignal(cmd)
		stdin, _ := cmd.StdinPipe()
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start worker: %w", err)
		}
		b.track(&process{name: "worker", cmd: cmd})
		stdins = append(stdins, stdin)
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.follow(i, stdout)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	go st.printProgress(done, o.connections)

	sum := &Summary{Workers: workers, Servers: len(b.addrs), SourceIPs: len(ips), Transport: o.transport}
	select {
	case <-st.ready:
	case <-done:
	case <-ctx.Done():
	}
	// Idle memory: connections parked, after a collection.
	loadStart := time.Now().Add(o.idleBeforeLoad)
	wait(ctx, o.idleBeforeLoad*2/3)
	b.collectGarbage(ctx)
	ready := b.scrapeAll(ctx)
	for i, admin := range b.admins {
		sum.Memory = append(sum.Memory, serverMemory{Admin: admin, Connections: ready[i]["socketserver_connections"],
			RSSBefore: before[i]["process_resident_memory_bytes"], RSSReady: ready[i]["process_resident_memory_bytes"],
			HeapBefore: before[i]["go_memstats_heap_inuse_bytes"], HeapReady: ready[i]["go_memstats_heap_inuse_bytes"]})
	}
	wait(ctx, time.Until(loadStart))
	for _, in := range stdins {
		_, _ = io.WriteString(in, "load\n")
	}
	cpu0 := b.cpu(ctx)
	if o.storm == stormOff { // restarted servers would reset their counters
		select {
		case <-time.After(time.Until(loadStart.Add(o.duration))):
			cpu1 := b.cpu(ctx)
			sum.ServerCPUSeconds, sum.RedisCPUSeconds = cpu1.server-cpu0.server, cpu1.redis-cpu0.redis
		case <-done:
		case <-ctx.Done():
		}
	}
	if o.storm != stormOff {
		select {
		case <-time.After(o.stormAfter):
			if err := b.storm(ctx, sum); err != nil {
				fmt.Fprintf(os.Stderr, "socketbench: storm %s: %v\n", o.storm, err)
			}
		case <-done:
		case <-ctx.Done():
		}
	}
	select {
	case <-st.resultsIn:
	case <-done:
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "socketbench: hard time cap reached; workers are stopped")
	}
	var series []timeline.Series
	if sampled != nil { // before the devices go
		series = sampled()
	}
	for _, in := range stdins { // every worker lets its devices go at once
		in.Close()
	}
	<-done
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, r := range st.results {
		if r == nil {
			return nil, fmt.Errorf("worker %d gave no result", i)
		}
		sum.add(r)
	}
	if sum.StormUnixNano != 0 && sum.LastResumeUnixNano > sum.StormUnixNano {
		sum.StormSeconds = float64(sum.LastResumeUnixNano-sum.StormUnixNano) / 1e9
	}
	if b.rdb != nil {
		if err := b.checkUpstream(startID, prefix+"-", sum); err != nil {
			fmt.Fprintln(os.Stderr, "socketbench: reading the upstream stream:", err)
		}
	}
	if sampled != nil {
		if err := b.writeTimeline(series, start, loadStart, sum); err != nil {
			fmt.Fprintln(os.Stderr, "socketbench: --timeline:", err)
		}
	}
	sum.AckedIDs = nil // checked; too long for the JSON output
	return sum, nil
}

// storm injects the fault and records when (sum.StormUnixNano, taken just
// before the action) and what.
func (b *bench) storm(ctx context.Context, sum *Summary) error {
	sum.StormUnixNano = time.Now().UnixNano()
	switch b.o.storm {
	case stormDrain:
		sum.StormAction = "POST /drain to " + b.admins[0]
		if err := b.drain(ctx, b.admins[0]); err != nil {
			sum.StormUnixNano = 0
			return err
		}
	case stormKill:
		s := b.servers[0]
		pid := s.p.cmd.Process.Pid
		s.p.kill()
		sum.StormAction = fmt.Sprintf("SIGKILL %s (pid %d), exited after %.2fs", s.name, pid, sinceStorm(sum))
	case stormRestart:
		for _, s := range b.servers { // all at once, then reap
			_ = s.p.cmd.Process.Kill()
		}
		for _, s := range b.servers {
			s.p.kill()
		}
		sum.StormAction = fmt.Sprintf("SIGKILL all %d servers (exited after %.2fs), start them again on the same ports",
			len(b.servers), sinceStorm(sum))
		err := b.startServers()
		sum.RestartSeconds = sinceStorm(sum)
		return err
	}
	return nil
}

func sinceStorm(sum *Summary) float64 { return float64(time.Now().UnixNano()-sum.StormUnixNano) / 1e9 }

// checkUpstream reads the entries this run's devices added to the upstream
// stream and checks that every PUBACKed publish is there exactly once.
func (b *bench) checkUpstream(startID, devicePrefix string, sum *Summary) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seen := map[string]int{} // "device id" -> entries
	for from := "(" + startID; ; {
		entries, err := b.rdb.XRangeN(ctx, b.o.prefix+":upstream", from, "+", 10000).Result()
		if err != nil {
			return err
		}
		for _, e := range entries {
			dev, _ := e.Values["device"].(string)
			if !strings.HasPrefix(dev, devicePrefix) {
				continue
			}
			sum.UpstreamStored++
			key := fmt.Sprint(dev, " ", e.Values["id"])
			if seen[key]++; seen[key] > 1 {
				sum.UpstreamDuplicates++
			}
		}
		if len(entries) < 10000 {
			break
		}
		from = "(" + entries[len(entries)-1].ID
	}
	for dev, ids := range sum.AckedIDs {
		for _, id := range ids {
			if seen[fmt.Sprint(dev, " ", id)] == 0 {
				sum.UpstreamMissing++
			}
		}
	}
	return nil
}

type cpuTimes struct{ server, redis float64 }

// cpu reads the servers' and Redis's CPU time so far.
func (b *bench) cpu(ctx context.Context) cpuTimes {
	var t cpuTimes
	for _, m := range b.scrapeAll(ctx) {
		t.server += m["process_cpu_seconds_total"]
	}
	if b.rdb != nil {
		info, _ := b.rdb.Info(ctx, "cpu").Result()
		for _, line := range strings.Split(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			if k == "used_cpu_sys" || k == "used_cpu_user" {
				f, _ := strconv.ParseFloat(v, 64)
				t.redis += f
			}
		}
	}
	return t
}

// collectGarbage asks each server for a heap profile after a collection,
// so that the memory figures count live data, not garbage.
func (b *bench) collectGarbage(ctx context.Context) {
	for _, a := range b.admins {
		req, err := b.admin(a).NewRequest(ctx, http.MethodGet, "/debug/pprof/heap?gc=1", nil)
		if err != nil {
			continue
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

func (b *bench) scrapeAll(ctx context.Context) []map[string]float64 {
	out := make([]map[string]float64, len(b.admins))
	for i, a := range b.admins {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := scrape(sctx, a)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "socketbench: metrics of", a+":", err)
		}
		out[i] = m
	}
	return out
}

func (b *bench) drain(ctx context.Context, admin string) error {
	_, err := b.admin(admin).Drain(ctx, false)
	return err
}

// status follows the workers' output lines.
type status struct {
	mu         sync.Mutex
	workers    int
	progress   []progress
	results    []*Result
	readyCount int
	ready      chan struct{}
	// resultsIn is closed when every worker sent its result.
	resultCount int
	resultsIn   chan struct{}
}

func (s *status) follow(i int, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		s.mu.Lock()
		switch {
		case m.Progress != nil:
			s.progress[i] = *m.Progress
		case m.Ready != nil:
			s.progress[i] = *m.Ready
			if s.readyCount++; s.readyCount == s.workers {
				close(s.ready)
			}
		case m.Result != nil:
			s.results[i] = m.Result
			if s.resultCount++; s.resultCount == s.workers {
				close(s.resultsIn)
			}
		}
		s.mu.Unlock()
	}
}

func (s *status) printProgress(done <-chan struct{}, total int) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		var p progress
		s.mu.Lock()
		for _, w := range s.progress {
			p.Connected += w.Connected
			p.Delivered += w.Delivered
			p.Published += w.Published
			p.Unconnected += w.Unconnected
		}
		s.mu.Unlock()
		el := time.Since(start).Seconds()
		fmt.Fprintf(os.Stderr, "[%4.0fs] connected %d/%d (%.0f/s) delivered %d published %d\n",
			el, p.Connected, total, float64(p.Connected)/el, p.Delivered, p.Published)
	}
}

func (s *Summary) add(r *Result) {
	t := &s.Result
	t.Devices += r.Devices
	t.Connected += r.Connected
	t.ConnectedAtEnd += r.ConnectedAtEnd
	t.ConnectSeconds = max(t.ConnectSeconds, r.ConnectSeconds)
	t.LoadCPUSeconds += r.LoadCPUSeconds
	t.LoadSeconds = max(t.LoadSeconds, r.LoadSeconds)
	t.Posted += r.Posted
	t.PostSkipped += r.PostSkipped
	t.Delivered += r.Delivered
	t.LoadDelivered += r.LoadDelivered
	t.Duplicates += r.Duplicates
	t.LostDownstream += r.LostDownstream
	t.DeliveredTwice += r.DeliveredTwice
	t.AmbiguousSends += r.AmbiguousSends
	t.SendRetries += r.SendRetries
	t.DuplicateAnswers += r.DuplicateAnswers
	t.UnknownOutcomes += r.UnknownOutcomes
	t.Undelivered += r.Undelivered
	t.Published += r.Published
	t.PublishAcked += r.PublishAcked
	t.LoadPublishAcked += r.LoadPublishAcked
	t.PublishUnacked += r.PublishUnacked
	t.Retransmits += r.Retransmits
	t.DeliverLatency.Add(r.DeliverLatency)
	t.PublishLatency.Add(r.PublishLatency)
	t.ResumeLatency.Add(r.ResumeLatency)
	t.HelloLatency.Add(r.HelloLatency)
	t.PostFailures = addCounts(t.PostFailures, r.PostFailures)
	t.Disconnects = addCounts(t.Disconnects, r.Disconnects)
	t.ErrorCodes = addCounts(t.ErrorCodes, r.ErrorCodes)
	for k, v := range r.DisconnectSamples {
		if t.DisconnectSamples == nil {
			t.DisconnectSamples = map[string]string{}
		}
		if _, ok := t.DisconnectSamples[k]; !ok {
			t.DisconnectSamples[k] = v
		}
	}
	t.DeliveredUnaccepted += r.DeliveredUnaccepted
	t.ClientRSSBefore += r.ClientRSSBefore
	t.ClientRSSReady += r.ClientRSSReady
	t.ClientHeapBefore += r.ClientHeapBefore
	t.ClientHeapReady += r.ClientHeapReady
	t.GoroutinesBefore += r.GoroutinesBefore
	t.GoroutinesReady += r.GoroutinesReady
	t.Affected += r.Affected
	t.Outages += r.Outages
	t.Resumed += r.Resumed
	t.PendingResume += r.PendingResume
	t.LastResumeUnixNano = max(t.LastResumeUnixNano, r.LastResumeUnixNano)
	for k, v := range r.AckedIDs {
		if t.AckedIDs == nil {
			t.AckedIDs = map[string][]uint64{}
		}
		t.AckedIDs[k] = v // device names are unique to a worker
	}
}

func addCounts(dst, src map[string]uint64) map[string]uint64 {
	if dst == nil {
		dst = map[string]uint64{}
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}
