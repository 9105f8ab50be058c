// Package socketserver is the data plane: it holds device connections over
// TCP and WebSocket, keeps their sessions in a shared store so a device can
// resume on any server, and drains gracefully. It has no Kubernetes imports.
package socketserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Config is the server's configuration; zero values take the contract's defaults.
type Config struct {
	TCPAddr, WSAddr, AdminAddr string
	// GRPCAddr is the gRPC listener (scp.v1.Device); "" = none.
	GRPCAddr string
	// MQTTAddr is the MQTT 3.1.1 / 5.0 listener; "" = none.
	MQTTAddr string
	// GRPCReflection offers gRPC server reflection on it.
	GRPCReflection    bool
	DisableSSE        bool // no /sse paths on the WebSocket listener
	ServerName        string
	AuthKey           []byte
	InsecureNoAuth    bool
	APIToken          string
	InsecureNoAPIAuth bool // New refuses an empty APIToken unless set
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	HelloTimeout      time.Duration
	DrainTimeout      time.Duration
	DrainRate         float64
	DrainJitter       time.Duration
	MaxFrameBytes     int
	MaxConnections    int
	MaxPending        int
	TLS               *tls.Config
	// WriteTimeout bounds one socket write: a device that stops reading is cut.
	WriteTimeout time.Duration
	// StoreTimeout bounds one store operation.
	StoreTimeout time.Duration
	// AckDelay bounds how long a device's ACK waits to be written to the
	// store together with other devices' ACKs (default 2ms); AckBatch
	// bounds the devices written together (default 256).
	AckDelay time.Duration
	AckBatch int
	// StatsInterval is how often the server publishes its stats for the operator.
	StatsInterval time.Duration
	// MaxPendingBytes bounds a device's unacknowledged payload bytes (0 = unbounded).
	MaxPendingBytes int64
	// IdempotencyWindow is how long a backend's Idempotency-Key is remembered.
	IdempotencyWindow time.Duration
	// AuditInterval is how often the server checks that the store still
	// knows the sessions it holds (an evicted or lost session is restored).
	AuditInterval time.Duration
	// AllowTokensWithoutExp accepts device tokens that carry no exp claim.
	AllowTokensWithoutExp bool
	// MaxHandshakes bounds the TLS and WebSocket handshakes in progress
	// (default 256); further connections wait in the listen backlog.
	MaxHandshakes int
	// HandshakeTimeout bounds a TLS or WebSocket handshake (default 5s,
	// at most the hello timeout).
	HandshakeTimeout time.Duration
}

// DefaultConfig is the contract's defaults, in one place: the command's
// flags show and take theirs from it, and New fills a zero field from it.
func DefaultConfig() Config {
	return Config{
		TCPAddr: ":7000", WSAddr: ":8080", AdminAddr: ":9090",
		HeartbeatInterval: 15 * time.Second, HelloTimeout: 10 * time.Second,
		DrainTimeout: 60 * time.Second, DrainJitter: 10 * time.Second,
		MaxFrameBytes: protocol.DefaultMaxFrameBytes, MaxPending: 10000, MaxPendingBytes: 16 << 20,
		WriteTimeout: 10 * time.Second, StoreTimeout: 2 * time.Second, StatsInterval: 5 * time.Second,
		IdempotencyWindow: 24 * time.Hour, AuditInterval: 15 * time.Second,
		MaxHandshakes: 256, HandshakeTimeout: 5 * time.Second,
		AckDelay: 2 * time.Millisecond, AckBatch: 256,
	}
}

// setDefaults fills the fields whose zero value means "the default";
// addresses (empty disables), DrainJitter and MaxPendingBytes (0 = none)
// keep their zero.
func (c *Config) setDefaults() {
	d := DefaultConfig()
	def := func(v *time.Duration, dv time.Duration) {
		if *v == 0 {
			*v = dv
		}
	}
	def(&c.HeartbeatInterval, d.HeartbeatInterval)
	def(&c.HeartbeatTimeout, 3*c.HeartbeatInterval)
	def(&c.HelloTimeout, d.HelloTimeout)
	def(&c.DrainTimeout, d.DrainTimeout)
	def(&c.WriteTimeout, d.WriteTimeout)
	def(&c.StoreTimeout, d.StoreTimeout)
	def(&c.StatsInterval, d.StatsInterval)
	def(&c.IdempotencyWindow, d.IdempotencyWindow)
	def(&c.AuditInterval, d.AuditInterval)
	def(&c.HandshakeTimeout, d.HandshakeTimeout)
	def(&c.AckDelay, d.AckDelay)
	if c.AckBatch == 0 {
		c.AckBatch = d.AckBatch
	}
	c.HandshakeTimeout = min(c.HandshakeTimeout, c.HelloTimeout)
	if c.MaxHandshakes == 0 {
		c.MaxHandshakes = d.MaxHandshakes
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = d.MaxFrameBytes
	}
	if c.MaxPending == 0 {
		c.MaxPending = d.MaxPending
	}
}

// Addrs are the addresses the listeners are bound to.
type Addrs struct{ TCP, WS, GRPC, MQTT, Admin string }

// Server is one socket server process (one pod).
type Server struct {
	cfg      Config
	store    store.Store
	log      logr.Logger
	auth     *authenticator
	metrics  *metrics
	maxConns int

	draining  atomic.Bool // unready: set when a drain is asked for
	goingAway atomic.Bool // GOAWAYs started: set after the drain's delay
	drainOnce sync.Once
	// drainRate, when set (float64 bits), paces this drain instead of
	// cfg.DrainRate: the operator shares a cluster-wide rate this way.
	drainRate atomic.Uint64
	drainNow  chan struct{} // closed to end a drain's delay early
	nowOnce   sync.Once
	drainDone chan struct{}
	// refusal, while set, turns away new devices during a shed (see admit).
	refusal atomic.Pointer[shedRefusal]

	sessions registry
	connIDs  atomic.Uint64
	// acks writes the devices' ACKs to the store in batches.
	acks *store.AckCoalescer
	// warnings say how the store could lose acknowledged data.
	warnings atomic.Pointer[[]string]

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool

	poller *poller // nil: every connection keeps its read goroutine

	// handshakes holds a slot per TLS or WebSocket handshake in progress.
	handshakes chan struct{}

	listeners  []net.Listener
	grpc       *grpc.Server  // nil without GRPCAddr
	grpcConns  *connListener // what the gRPC listener hands to grpc-go
	grpcHealth *health.Server
	sseUp      *sseUpstream // nil without SSE
	admin      *http.Server
	addrs      Addrs
	ctx        context.Context
	cancel     context.CancelFunc
	wg         sync.WaitGroup
}

// New builds a server on st. Nothing listens until Start.
func New(cfg Config, st store.Store, log logr.Logger) (*Server, error) {
	cfg.setDefaults()
	if cfg.ServerName == "" {
		return nil, errors.New("server name is required")
	}
	if cfg.HeartbeatTimeout <= cfg.HeartbeatInterval {
		return nil, fmt.Errorf("heartbeat timeout %s must exceed the interval %s", cfg.HeartbeatTimeout, cfg.HeartbeatInterval)
	}
	if cfg.MaxFrameBytes < 16 {
		return nil, fmt.Errorf("max frame bytes %d is below 16", cfg.MaxFrameBytes)
	}
	auth, err := newAuthenticator(cfg.AuthKey, cfg.InsecureNoAuth, cfg.AllowTokensWithoutExp)
	if err != nil {
		return nil, err
	}
	if cfg.APIToken == "" && !cfg.InsecureNoAPIAuth {
		return nil, errors.New("the backend API needs a bearer token (--api-token-file), or --insecure-no-api-auth to leave it open (development only)")
	}
	if cfg.MaxHandshakes < 1 {
		return nil, fmt.Errorf("max handshakes %d is below 1", cfg.MaxHandshakes)
	}
	s := &Server{cfg: cfg, store: st, log: log, auth: auth,
		drainDone: make(chan struct{}), drainNow: make(chan struct{}), conns: map[*conn]struct{}{},
		handshakes: make(chan struct{}, cfg.MaxHandshakes)}
	s.maxConns = connectionCeiling(cfg.MaxConnections)
	s.metrics = newMetrics(transportNames(), s.draining.Load, s.maxConns, cfg.DrainTimeout)
	s.sessions.init()
	s.connIDs.Store(rand.Uint64() >> 1)
	return s, nil
}

// Start binds the listeners, subscribes to the store and starts serving.
func (s *Server) Start() error {
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.acks = store.NewAckCoalescer(s.store, s.cfg.AckBatch, s.cfg.AckDelay, s.cfg.StoreTimeout,
		func(n int) { s.metrics.ackWrites.Observe(float64(n)) })
	if err := s.store.Subscribe(s.ctx, s.cfg.ServerName, s); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	s.checkStore()
	p, err := newPoller()
	if err != nil {
		s.log.Error(err, "no poller: idle connections keep a goroutine each")
	}
	s.poller = p
	listen := func(addr, name, alpn string) (net.Listener, error) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s: %w", name, addr, err)
		}
		s.log.Info(fmt.Sprintf("listening %s=%s", name, l.Addr()))
		if cfg := s.cfg.TLS; cfg != nil {
			if alpn != "" {
				cfg = cfg.Clone()
				cfg.NextProtos = []string{alpn}
			}
			l = tls.NewListener(l, cfg)
		}
		s.listeners = append(s.listeners, l)
		return l, nil
	}
	if s.cfg.WSAddr != "" && !s.cfg.DisableSSE {
		s.startSSEUpstream()
	}
	if s.cfg.GRPCAddr != "" {
		s.startGRPC()
	}
	for _, e := range endpoints {
		addr := e.addr(&s.cfg)
		if addr == "" {
			continue
		}
		l, err := listen(addr, e.factory.name(), e.alpn)
		if err != nil {
			return err
		}
		*e.bound(&s.addrs) = l.Addr().String()
		s.wg.Add(1)
		go s.acceptLoop(l, e.factory)
	}
	if s.cfg.AdminAddr != "" {
		l, err := net.Listen("tcp", s.cfg.AdminAddr)
		if err != nil {
			return fmt.Errorf("listen admin %s: %w", s.cfg.AdminAddr, err)
		}
		s.log.Info(fmt.Sprintf("listening admin=%s", l.Addr()))
		s.addrs.Admin = l.Addr().String()
		s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.admin.Serve(l) }()
	}
	s.wg.Add(3)
	go s.statsLoop()
	go s.heartbeatLoop()
	go s.auditLoop()
	return nil
}

// Addrs returns the bound listener addresses (after Start).
func (s *Server) Addrs() Addrs { return s.addrs }

// acceptLoop accepts the connections of one listener; f opens their transport.
func (s *Server) acceptLoop(l net.Listener, f transportFactory) {
	defer s.wg.Done()
	// Every connection of this listener starts with a handshake. Its slot
	// is taken once the connection is accepted (taken before, the loop of
	// an idle listener would hold one): beyond MaxHandshakes the loop
	// waits holding this one connection, and the next ones wait in the
	// listen backlog, where they hold no descriptor.
	_, upgrades := f.(upgrader)
	needsHandshake := upgrades || s.cfg.TLS != nil
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			// Out of descriptors (or another transient error): back off
			// instead of spinning; the connection waits in the backlog.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.V(1).Info("accept failed", "err", err.Error(), "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		c := newConn(s, nc)
		full, ok := s.track(c)
		if !ok {
			_ = nc.Close()
			continue
		}
		if full && needsHandshake {
			// No framed ERROR can go out before the handshake: refuse first.
			go s.refuse(c, f)
			continue
		}
		if needsHandshake {
			select {
			case s.handshakes <- struct{}{}:
			case <-s.ctx.Done():
				_ = nc.Close()
				s.untrack(c)
				s.wg.Done()
				return
			}
		}
		go s.serveConn(c, f, full)
	}
}

// refuse turns away a connection over the limit before any handshake. A
// plain connection of a transport with its own handshake is answered in
// it (WebSocket: HTTP 503 with Retry-After and the ERROR body as JSON,
// without an upgrade); a TLS connection is closed at once.
func (s *Server) refuse(c *conn, f transportFactory) {
	defer s.wg.Done()
	defer s.untrack(c)
	s.metrics.closes.WithLabelValues(ReasonRejected.String()).Inc()
	if u, ok := f.(upgrader); ok {
		if _, isTLS := c.nc.(*tls.Conn); !isTLS {
			u.refuse(c.nc, retryAfter())
		}
	}
	_ = c.nc.Close()
}

// serveConn runs a connection; the wait group counts it until teardown.
func (s *Server) serveConn(c *conn, f transportFactory, full bool) {
	_, isTLS := c.nc.(*tls.Conn)
	u, upgrades := f.(upgrader)
	if upgrades || isTLS {
		var once sync.Once
		free := func() { once.Do(func() { <-s.handshakes }) }
		err := onFreshStack(func() (err error) { f, err = s.handshake(c, f, u, free); return err })
		free()
		if err != nil || f == nil {
			if err != nil {
				s.log.V(1).Info("handshake failed", "remote", c.nc.RemoteAddr().String(), "err", err.Error())
				_ = c.nc.Close()
			} // else handed off, no device connection
			s.untrack(c)
			s.wg.Done()
			return
		}
	}
	// Until WELCOME a frame may not exceed MaxFrameBeforeWelcome; hello raises it.
	limit := min(protocol.MaxFrameBeforeWelcome, s.cfg.MaxFrameBytes)
	c.serve(f.open(c.nc, limit, &c.w), full)
}

// handshake completes TLS and the listener's own handshake, if any (u
// may be nil), within the handshake timeout, and returns the factory of
// the connection's transport (f without an upgrader; nil: handed off).
func (s *Server) handshake(c *conn, f transportFactory, u upgrader, free func()) (transportFactory, error) {
	_ = c.nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			return nil, err
		}
	}
	if u != nil {
		var err error
		if f, err = u.upgrade(s, c.nc, free); err != nil || f == nil {
			return nil, err
		}
	}
	_ = c.nc.SetWriteDeadline(time.Time{})
	return f, nil
}

// onFreshStack runs f on a short-lived goroutine and waits for it. Work
// such as a TLS handshake, JWT checks or a Redis round trip grows a stack
// to 8 KiB or more, and a connection's read loop would keep that stack for
// its whole life; idle connections are the common case, so they keep only
// the small stack their read loop needs.
func onFreshStack(f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	return <-done
}

// track counts a new connection, in handshake or not. full reports that it
// is over the limit and must be refused with server_full; ok is false
// after Shutdown, or when so many refusals are under way that the
// connection is to be closed at once: refusals hold descriptors too.
func (s *Server) track(c *conn) (full, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, false
	}
	full = s.maxConns > 0 && len(s.conns) >= s.maxConns
	if full && len(s.conns) >= s.maxConns+refusalReserve {
		s.metrics.closes.WithLabelValues(ReasonRejected.String()).Inc()
		return true, false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return full, true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Connections is the number of open connections.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// releaseFailed releases a HELLO that failed with an unknown outcome, a
// few times over half a minute: a stalled store may apply it late, and the
// device would then look connected here for good. Release only acts for
// this connection, so a later HELLO of the device is safe.
func (s *Server) releaseFailed(device string, h store.Holder) {
	var try func(i int)
	try = func(i int) {
		if s.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StoreTimeout)
		_ = s.store.Release(ctx, device, h)
		cancel()
		if i+1 < len(releaseRetries) {
			time.AfterFunc(releaseRetries[i+1]-releaseRetries[i], func() { try(i + 1) })
		}
	}
	time.AfterFunc(releaseRetries[0], func() { try(0) })
}

var releaseRetries = []time.Duration{time.Second, 4 * time.Second, 12 * time.Second, 30 * time.Second}

// Resync implements store.Handler: after a lost link to the store, find
// sessions taken over meanwhile, restore those the store lost, and re-read
// every outbox.
func (s *Server) Resync() {
	go func() {
		s.checkStore()
		s.audit(true)
	}()
}

// auditLoop checks the sessions held here against the store: a session
// the store lost without a lost link (an eviction) is restored, so that
// messages stored for its device reach it; a takeover whose notice was
// lost ends the old connection.
func (s *Server) auditLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.AuditInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.audit(false)
		case <-s.ctx.Done():
			return
		}
	}
}

// audit compares each session's epoch with the store's; pump re-reads
// every outbox, else only those of restored sessions. It also sums the
// backlog of the devices held here for the metrics.
func (s *Server) audit(pump bool) {
	sessions := s.sessions.all()
	now := time.Now()
	var pending uint64
	var oldest time.Duration
	failed := false
	const batch = 500
	for i := 0; i < len(sessions); i += batch {
		part := sessions[i:min(i+batch, len(sessions))]
		devices := make([]string, len(part))
		for j, sess := range part {
			devices[j] = sess.device
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StoreTimeout)
		infos, err := s.store.Audit(ctx, devices)
		cancel()
		if err != nil {
			failed = true
			if s.ctx.Err() == nil {
				s.metrics.storeErrors.WithLabelValues("audit").Inc()
			}
		}
		for j, sess := range part {
			switch {
			case err != nil:
				if pump {
					sess.resync()
				}
			case infos[j].Epoch > sess.epoch:
				sess.takenOver()
			case infos[j].Epoch < sess.epoch:
				sess.reclaim() // the store lost it; reclaim re-reads the outbox
			default:
				pending += infos[j].Pending
				oldest = max(oldest, sess.backlogAge(infos[j], now))
				if pump {
					sess.resync()
				}
			}
		}
	}
	if !failed { // a partial sum would read as a drop in the backlog
		s.metrics.outboxPending.Set(float64(pending))
		s.metrics.outboxOldest.Set(oldest.Seconds())
	}
}

// checkStore asks the store how it could lose acknowledged data and logs
// what changed; the warnings go to the operator with the stats.
func (s *Server) checkStore() {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StoreTimeout)
	w, err := s.store.Warnings(ctx)
	cancel()
	if err != nil {
		s.log.V(1).Info("store durability check failed", "err", err.Error())
		return
	}
	if old := s.warnings.Swap(&w); old == nil || !slices.Equal(*old, w) {
		for _, m := range w {
			s.log.Info("WARNING: acknowledged data can be lost", "store", m)
		}
	}
	s.metrics.warnings.Set(float64(len(w)))
}

// Warnings returns what the last store check found.
func (s *Server) Warnings() []string {
	if w := s.warnings.Load(); w != nil {
		return *w
	}
	return nil
}

func (s *Server) statsLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.StatsInterval)
	defer t.Stop()
	for {
		s.publishStats(s.ctx)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
	}
}

// heartbeatLoop ends welcomed connections whose device sent nothing within
// the heartbeat timeout, and writes the keepalives of one-way transports.
// A sweep instead of a read deadline: parked connections have no read to
// time out, and busy ones skip a timer reset per frame.
func (s *Server) heartbeatLoop() {
	defer s.wg.Done()
	t := time.NewTicker(min(max(s.cfg.HeartbeatTimeout/10, 10*time.Millisecond), time.Second))
	defer t.Stop()
	var dead []*session
	for {
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
		now := time.Now()
		limit := now.Add(-s.cfg.HeartbeatTimeout).UnixNano()
		// One-way connections: lastRead is when their last keepalive was queued.
		keepalive := now.Add(-s.cfg.HeartbeatInterval).UnixNano()
		dead = s.sessions.appendIf(dead, func(sess *session) bool {
			if _, ok := sess.c.tr.(oneWay); ok {
				return sess.c.lastRead.Load() < keepalive
			}
			if oh, ok := sess.c.tr.(ownHeartbeat); ok {
				if d := oh.silenceLimit(); d > 0 {
					return sess.c.lastRead.Load() < now.Add(-d).UnixNano()
				}
			}
			return sess.c.lastRead.Load() < limit
		})
		for _, sess := range dead {
			if ow, ok := sess.c.tr.(oneWay); ok {
				sess.c.lastRead.Store(now.UnixNano())
				sess.c.w.write(ow.appendKeepalive)
				continue
			}
			sess.c.fail(protocol.CodeHeartbeatTimeout, "no frame within the heartbeat timeout", 0, ReasonTimeout)
		}
		clear(dead)
		dead = dead[:0]
		s.sessions.pruneFences()
	}
}

func (s *Server) publishStats(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	st := store.ServerStats{Connections: int64(s.Connections()), Draining: s.draining.Load(),
		UpdatedUnixMs: time.Now().UnixMilli(), StoreWarnings: s.Warnings()}
	err := s.store.PublishStats(ctx, s.cfg.ServerName, st)
	// A timeout is a store error too; only a stopping server's is not.
	if err != nil && s.ctx.Err() == nil {
		s.metrics.storeErrors.WithLabelValues("stats").Inc()
	}
	s.metrics.storeUp.Set(b2f(err == nil))
}

// Draining reports whether a drain has started (the server is unready),
// whether or not its delay has passed.
func (s *Server) Draining() bool { return s.draining.Load() }

// Drain starts draining at once (or ends the delay of a drain that waits)
// and returns a channel closed when no connection remains or the drain
// timeout passed.
func (s *Server) Drain() <-chan struct{} { return s.DrainAfter(0) }

// DrainAfter makes the server unready at once and sends the first GOAWAY
// after delay: meanwhile it serves its connections and accepts new ones,
// while the load balancer notices and stops sending it any. Only the first
// call's delay counts, except that Drain ends it early. The channel is
// closed when no connection remains or the drain timeout passed after
// the delay.
func (s *Server) DrainAfter(delay time.Duration) <-chan struct{} {
	return s.DrainAfterRate(delay, 0)
}

// DrainAfterRate is DrainAfter sending rate GOAWAYs per second instead of
// the configured pacing (0 keeps it). Like the delay, only the first call's
// rate counts.
func (s *Server) DrainAfterRate(delay time.Duration, rate float64) <-chan struct{} {
	if delay <= 0 {
		s.nowOnce.Do(func() { close(s.drainNow) })
	}
	s.drainOnce.Do(func() {
		if rate > 0 {
			s.drainRate.Store(math.Float64bits(rate))
		}
		s.draining.Store(true)
		s.refusal.Store(nil) // the drain sends everyone away
		s.grpcNotReady()
		s.metrics.drains.Inc()
		s.metrics.drainStarted.Set(float64(time.Now().UnixMilli()) / 1e3)
		s.metrics.drainDelay.Set(max(delay, 0).Seconds())
		s.log.Info("draining", "connections", s.Connections(), "delay", delay.String(), "timeout", s.cfg.DrainTimeout.String())
		go func() {
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.drainNow:
			case <-s.ctx.Done():
				close(s.drainDone)
				return
			}
			s.drain()
		}()
	})
	return s.drainDone
}

// drain sends GOAWAY to every session, the first at once, then paced at
// DrainRate per second or spread over the first 80% of the drain timeout.
func (s *Server) drain() {
	defer close(s.drainDone)
	s.goingAway.Store(true)
	start := time.Now()
	deadline := start.Add(s.cfg.DrainTimeout)
	// The gRPC server keeps serving until Shutdown, as the other listeners
	// do: a device that still arrives gets its GOAWAY (with a reconnect
	// hint), not a refused connection that it would retry here.
	if !s.goAwayPaced(s.sessions.all(), nil, 0) {
		return
	}
	for time.Now().Before(deadline) {
		for _, sess := range s.sessions.all() {
			sess.goAway() // sessions that arrived while the first pass ran
		}
		if s.Connections() == 0 {
			s.log.Info("drained", "took", time.Since(start).String())
			return
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-s.ctx.Done():
			return
		}
	}
	s.mu.Lock()
	left := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		left = append(left, c)
	}
	s.mu.Unlock()
	s.log.Info("drain timeout: closing remaining connections", "remaining", len(left))

	for _, c := range left {
		c.close(ReasonDrained)
	}
}

// goAwayPaced sends GOAWAY to sessions, the first at once, then at rate
// per second, or else the drain's rate, or else spread over the first 80%
// of the drain timeout. It returns false when the server stops, or when
// stop (if not nil) is closed, before the last.
func (s *Server) goAwayPaced(sessions []*session, stop <-chan struct{}, rate float64) bool {
	start := time.Now()
	var interval time.Duration
	if rate <= 0 {
		rate = s.cfg.DrainRate
		if r := math.Float64frombits(s.drainRate.Load()); r > 0 {
			rate = r
		}
	}
	switch {
	case rate > 0:
		interval = time.Duration(float64(time.Second) / rate)
	case len(sessions) > 1:
		interval = s.cfg.DrainTimeout * 8 / 10 / time.Duration(len(sessions))
	}
	for i, sess := range sessions {
		if i > 0 && interval > 0 {
			// Pace against the schedule, not per sleep, so timer slack
			// does not add up over thousands of connections.
			if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
				select {
				case <-time.After(wait):
				case <-s.ctx.Done():
					return false
				case <-stop:
					return false
				}
			}
		}
		sess.goAway()
	}
	return true
}

// Shed sends GOAWAY to up to n of this server's sessions, paced like a
// drain, while the server stays ready: the devices reconnect through the
// load balancer and spread over the other pods. It returns how many
// sessions it picked (none while draining); a drain that starts meanwhile
// takes over the rest.
func (s *Server) Shed(n int) int { return s.ShedWith(adminapi.ShedRequest{Count: n}) }

// ShedWith is Shed paced at req.Rate (when set) that, with req.Target,
// also refuses new devices while the server holds at least the target,
// for at most req.RefuseForMs (see adminapi.ShedRequest and admit). A
// later shed replaces the refusal.
func (s *Server) ShedWith(req adminapi.ShedRequest) int {
	if s.draining.Load() {
		return 0 // the drain moves every device
	}
	if req.Target > 0 {
		until := time.Now().Add(time.Duration(req.RefuseForMs) * time.Millisecond)
		s.refusal.Store(&shedRefusal{target: req.Target, until: until})
		s.log.Info("refusing new devices while shedding", "target", req.Target, "until", until.Format(time.RFC3339))
	} else {
		s.refusal.Store(nil)
	}
	n := req.Count
	var kept []*session
	for _, sess := range s.sessions.all() {
		if len(kept) == n {
			break
		}
		if sess.pickForShed() {
			kept = append(kept, sess)
		}
	}
	if len(kept) > 0 {
		s.metrics.shed.Add(float64(len(kept)))
		s.log.Info("shedding connections", "count", len(kept), "connections", s.Connections())
		go s.goAwayPaced(kept, s.drainNow, req.Rate)
	}
	return len(kept)
}

// shedRefusal is a shed's bound on new devices: refused while the server
// holds at least target connections, until the deadline.
type shedRefusal struct {
	target int
	until  time.Time
}

// admit says whether a HELLO of device may be welcomed while a shed may
// refuse new devices. A device this server holds (a takeover, a resume on
// a new connection) is welcomed: sending it away would move it twice;
// but not one it sent away, whose old connection may not have ended yet
// when it comes straight back. The refusal ends for good once the server
// holds fewer than its target (this HELLO's own connection aside) or its
// time is up.
func (s *Server) admit(device string) bool {
	r := s.refusal.Load()
	if r == nil {
		return true
	}
	if time.Now().After(r.until) || s.Connections()-1 < r.target {
		s.refusal.CompareAndSwap(r, nil)
		return true
	}
	held := s.sessions.lookup(device)
	return held != nil && !held.sentAway()
}

// Shutdown stops listening, closes every connection and waits for them to
// end (or ctx). Drain first for a graceful stop.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	for _, l := range s.listeners {
		_ = l.Close()
	}
	if s.sseUp != nil {
		s.sseUp.close()
	}
	for _, c := range conns {
		c.close(ReasonShutdown)
	}
	s.stopGRPC(time.Now().Add(finalFlushTimeout))
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
		s.poller.close() // nothing is parked any more
	case <-ctx.Done():
		err = ctx.Err()
	}
	if s.acks != nil {
		s.acks.Close() // what connections still open acked
	}
	// Tell the operator this server holds nothing any more.
	s.publishStats(context.Background())
	if s.admin != nil {
		_ = s.admin.Shutdown(ctx)
	}
	return err
}
