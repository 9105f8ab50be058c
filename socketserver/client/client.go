// Package client is the device side of socket protocol v1, the library that
// POS terminals and kiosks embed. A Client keeps one connection to the
// cluster, resumes its session after any disconnect (on any server),
// delivers downstream messages in seq order exactly once per process
// (dropping the at-least-once duplicates), and keeps every upstream message
// until the cluster has stored it.
//
// Transports: TCP, WebSocket and Server-Sent Events (a GET stream down,
// ACK and PUBLISH as POSTs), chosen by the form of Config.Addr; the
// guarantees are the same on each.
//
// Lifecycle: Run owns the connection. Per connection the Run goroutine is the
// only reader and one writer goroutine is the only writer (over SSE it sends
// each ACK and PUBLISH request on a goroutine of its own, one of each at a
// time); everything they share is guarded by the Client's mutex.
package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// Config configures a Client. Zero durations take the documented defaults.
type Config struct {
	// Addr is "host:port" for the TCP listener (TLS when TLS is set),
	// "ws://host:port/ws" / "wss://host:port/ws" for WebSocket, or
	// "http://host:port/sse" / "https://host:port/sse" for Server-Sent
	// Events (a GET stream down, HTTP POSTs for ACK and PUBLISH; on the
	// WebSocket listener), or "grpc://host:port" / "grpcs://host:port" for
	// gRPC (scp.v1.Device/Connect; grpcs with TLS, from TLS or the
	// system's roots).
	Addr   string
	Device string
	// Token is sent in every HELLO unless TokenFunc is set; TokenFunc is
	// asked before every connection, so short-lived JWTs stay fresh.
	Token     string
	TokenFunc func(ctx context.Context) (string, error)
	TLS       *tls.Config
	// LastSeq is the highest seq the device processed before this process
	// started (for devices that persist it); 0 lets the server's stored ACK decide.
	LastSeq uint64

	// OnMessage receives each downstream message once, in seq order, on the
	// reading goroutine; the message is acknowledged after it returns.
	// payload is only valid during the call.
	OnMessage func(seq uint64, payload []byte)
	// OnState receives the session state of every WELCOME.
	OnState func(state json.RawMessage)
	// OnPubAck receives each published message once, when its PUBACK
	// arrives, on the reading goroutine (over SSE on the goroutine that
	// sends PUBLISH requests, never while OnMessage runs); payload is only
	// valid during the call. An alternative to waiting on every Pending.
	OnPubAck func(id uint64, payload []byte)
	// OnEvent receives connects and disconnects, on the Run goroutine.
	OnEvent func(Event)

	// BackoffMin and BackoffMax bound the exponential, fully jittered wait
	// between failed connections (default 100ms and 10s).
	BackoffMin, BackoffMax time.Duration
	// PubAckTimeout is how long a PUBLISH waits for its PUBACK before it is
	// sent again with the same id (default 10s).
	PubAckTimeout time.Duration
	// MaxInFlight bounds unacknowledged publishes; Publish blocks beyond it (default 256).
	MaxInFlight int
	// DialTimeout bounds connecting, and HandshakeTimeout waiting for WELCOME (default 10s each).
	DialTimeout, HandshakeTimeout time.Duration
	// WriteTimeout bounds one socket write (default 10s).
	WriteTimeout time.Duration
	// MaxFrameBytes bounds a frame read from the server (default 1 MiB).
	MaxFrameBytes int

	// Dial replaces the network dial (also under WebSocket and SSE, where
	// it also dials the connections of the ACK and PUBLISH requests, on
	// other goroutines), e.g. to pick among several servers; LocalAddr
	// binds the source address otherwise.
	Dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	LocalAddr *net.TCPAddr
	Logger    logr.Logger
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.BackoffMin, 100*time.Millisecond)
	def(&c.BackoffMax, 10*time.Second)
	def(&c.PubAckTimeout, 10*time.Second)
	def(&c.DialTimeout, 10*time.Second)
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.WriteTimeout, 10*time.Second)
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = 1 << 20
	}
}

var (
	// ErrTakenOver ends Run: a newer connection of this device won the
	// session. Reconnecting would evict that one, which would reconnect
	// too, so two instances of one device would fight forever; the caller
	// decides (usually: exit and let a supervisor report it).
	ErrTakenOver = errors.New("session taken over by another connection of this device")
	// ErrStopped is returned by Publish once Run has returned.
	ErrStopped = errors.New("client stopped")
)

// ServerError is an ERROR frame received from the server.
type ServerError struct {
	Code         protocol.Code
	Message      string
	RetryAfterMs int64
}

func (e *ServerError) Error() string { return "server error " + string(e.Code) + ": " + e.Message }

// goAwayFloor is the least wait after GOAWAY, so that a hint of 0 from many
// servers does not become a busy loop.
const goAwayFloor = 10 * time.Millisecond

// Client is one device. Create it with New, then call Run once.
type Client struct {
	cfg     Config
	tr      transport
	log     logr.Logger
	started atomic.Bool
	done    chan struct{} // closed when Run returns

	mu       sync.Mutex
	lastSeq  uint64
	nextID   uint64        // next PUBLISH id; 0 until the first WELCOME
	welcomed chan struct{} // closed by the first WELCOME
	inflight []*Pending    // unacknowledged publishes in id order
	window   chan struct{} // one token per in-flight publish
	cur      *session      // the welcomed connection, if any
	gen      uint64        // numbers connections
	stats    Stats

	// callbacks, when set, serialises OnMessage and OnPubAck, which SSE
	// calls on two goroutines.
	callbacks *sync.Mutex
}

// New returns a Client for cfg; nothing connects until Run.
func New(cfg Config) *Client {
	cfg.setDefaults()
	c := &Client{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), welcomed: make(chan struct{}),
		lastSeq: cfg.LastSeq, window: make(chan struct{}, cfg.MaxInFlight),
		stats: Stats{LastSeq: cfg.LastSeq, Errors: map[protocol.Code]uint64{}}}
	c.tr = newTransport(c)
	return c
}

// Run connects and keeps the device connected until ctx ends (returning
// ctx's error) or the session is taken over (returning an error wrapping
// ErrTakenOver). Connection failures are retried, never returned.
func (c *Client) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("client: Run called twice")
	}
	defer close(c.done)
	if cl, ok := c.tr.(interface{ closeIdle() }); ok {
		defer cl.closeIdle() // kept-alive connections of the SSE requests
	}
	attempt := 0
	for {
		end := c.connect(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if end.welcomed {
			attempt = 0
		}
		wait := c.waitAfter(end, &attempt)
		c.mu.Lock()
		c.stats.Disconnects++
		if end.code != "" {
			c.stats.Errors[end.code]++
		}
		c.mu.Unlock()
		ev := Event{Type: EventDisconnected, At: time.Now(), Reason: end.reason, Code: end.code, Err: end.err, Wait: wait}
		c.log.V(1).Info("disconnected", "device", c.cfg.Device, "reason", end.reason, "err", end.err, "wait", wait)
		if end.code == protocol.CodeSessionTakenOver {
			ev.Wait = 0
			c.emit(ev)
			return errors.Join(ErrTakenOver, end.err)
		}
		c.emit(ev)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitAfter picks the pause before the next connection: the server's hint
// for GOAWAY and retry_after_ms, else exponential backoff with full jitter.
func (c *Client) waitAfter(end sessionEnd, attempt *int) time.Duration {
	switch {
	case end.reason == ReasonGoAway:
		return max(end.hint, goAwayFloor)
	case end.hint > 0:
		return end.hint
	}
	ceiling := c.cfg.BackoffMax
	if *attempt < 30 {
		ceiling = min(ceiling, c.cfg.BackoffMin<<*attempt)
	}
	*attempt++
	return rand.N(ceiling + 1)
}

func (c *Client) emit(ev Event) {
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(ev)
	}
}

func (c *Client) token(ctx context.Context) (string, error) {
	if c.cfg.TokenFunc != nil {
		return c.cfg.TokenFunc(ctx)
	}
	return c.cfg.Token, nil
}
