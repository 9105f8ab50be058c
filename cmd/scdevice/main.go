// Command scdevice acts as one device: it keeps a session with a socket
// cluster, prints each delivery on stdout as "seq=N payload", publishes each
// line of stdin, and reports PUBACKs, connects, failed connection attempts,
// refusals and GOAWAYs on stderr. It exits 0 once stdin has ended and every
// line of it is acknowledged, 1 when it gives up (see usage).
// With --token-for it only prints a signed device token.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

const usage = `Usage:
  scdevice --device NAME [flags] < lines     act as device NAME
  scdevice --token-for NAME --key-file FILE  print a token for NAME and exit

scdevice keeps a session with a socket cluster over TCP (--addr host:port),
WebSocket (ws://host:port/ws, wss://…), Server-Sent Events
(http://host:port/sse, https://…), gRPC (grpc://host:port, grpcs://…) or
MQTT 5 (mqtt://host:port, mqtts://…).
It prints each delivery on stdout as
"seq=N payload" and publishes each line of stdin as one message.
On stderr it reports connects, PUBACKs ("puback id=N"), every failed
connection attempt with the wait before the next one (refused connections,
HELLO refused by the server with its error code, a port that answered HTTP),
and GOAWAYs.

Once stdin has ended, scdevice waits until it has had a session and every
line read from stdin is acknowledged (PUBACK), then exits 0. It gives up
when --wait passes without a PUBACK meanwhile, or while 1024 lines read from
stdin wait to be published. --stay keeps it running after stdin ends
instead, until it is interrupted.

Exit codes:
  0  stdin ended, a session was made and every line of stdin was
     acknowledged (when interrupted: every line read so far was)
  1  lines not acknowledged: gave up after --wait, interrupted, or stdin
     could not be read to its end
  2  bad usage
  3  the session was taken over by another connection of this device

Flags:
`

// readAhead is how many lines of stdin may wait to be published. When that
// many wait, --wait runs as if stdin had ended: the server takes nothing.
const readAhead = 1024

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scdevice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	addr := fs.String("addr", "127.0.0.1:7000", "server: host:port (TCP), ws://host:port/ws, wss://host:port/ws (WebSocket),\n"+
		"http://host:port/sse or https://host:port/sse (Server-Sent Events), grpc://host:port or grpcs://host:port (gRPC), mqtt://host:port or mqtts://host:port (MQTT 5)")
	device := fs.String("device", "", "device name")
	token := fs.String("token", "", "device token (JWT)")
	keyFile := fs.String("key-file", "", "device key: sign a fresh HS256 token (sub=device) for every connection")
	ttl := fs.Duration("ttl", time.Hour, "lifetime of tokens signed with --key-file")
	tokenFor := fs.String("token-for", "", "only print a token for this device, signed with --key-file")
	lastSeq := fs.Uint64("last-seq", 0, "highest seq already processed (sent in HELLO)")
	useTLS := fs.Bool("tls", false, "TLS on the TCP address")
	caFile := fs.String("ca-file", "", "CA bundle to verify the server (TLS, wss, https, grpcs)")
	stay := fs.Bool("stay", false, "keep running after stdin ends (default: exit once its lines are acknowledged)")
	wait := fs.Duration("wait", 10*time.Second, "once stdin has ended, give up (exit 1) when this long passes without a PUBACK\n"+
		"while lines are unacknowledged or no session was made yet; 0 waits forever")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var key []byte
	if *keyFile != "" {
		var err error
		if key, err = client.LoadKey(*keyFile); err != nil {
			fmt.Fprintln(stderr, "scdevice:", err)
			return 2
		}
	}
	if *tokenFor != "" {
		if key == nil {
			fmt.Fprintln(stderr, "scdevice: --token-for needs --key-file")
			return 2
		}
		tok, err := client.SignToken(key, *tokenFor, *ttl)
		if err != nil {
			fmt.Fprintln(stderr, "scdevice:", err)
			return 1
		}
		fmt.Fprintln(stdout, tok)
		return 0
	}
	if *device == "" {
		fmt.Fprintln(stderr, "scdevice: --device is required")
		return 2
	}

	var out sync.Mutex // one line at a time on each stream
	say := func(w io.Writer, format string, a ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Fprintf(w, format+"\n", a...)
	}
	prog := &progress{changed: make(chan struct{}, 1)}
	connected := false // only the Run goroutine calls OnEvent
	cfg := client.Config{Addr: *addr, Device: *device, Token: *token, LastSeq: *lastSeq,
		OnMessage: func(seq uint64, payload []byte) { say(stdout, "seq=%d %s", seq, payload) },
		OnState:   func(state json.RawMessage) { say(stderr, "state %s", state) },
		OnPubAck: func(id uint64, _ []byte) {
			say(stderr, "puback id=%d", id)
			prog.update(func(n *counts) { n.acked++ })
		},
		OnEvent: func(ev client.Event) {
			if ev.Type == client.EventConnected {
				connected = true
				w := ev.Welcome
				say(stderr, "connected server=%s epoch=%d resumed=%t last_publish_id=%d", w.Server, w.SessionEpoch, w.Resumed, w.LastPublishID)
				prog.update(func(n *counts) { n.session = true })
				return
			}
			if ev.Code != protocol.CodeSessionTakenOver { // reported when Run returns
				say(stderr, "scdevice: %s", describe(ev, *addr, connected))
			}
			connected = false
		},
	}
	if key != nil {
		cfg.TokenFunc = client.KeyTokenFunc(key, *device, *ttl)
	}
	if *useTLS || *caFile != "" {
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				fmt.Fprintln(stderr, "scdevice:", err)
				return 2
			}
			cfg.TLS.RootCAs = x509.NewCertPool()
			if !cfg.TLS.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintln(stderr, "scdevice: no certificate in", *caFile)
				return 2
			}
		}
	}
	c := client.New(cfg)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(runCtx) }()
	// stop ends the session; Run flushes the last ACK before it returns.
	stop := func(code int) int {
		cancel()
		<-runErr
		return code
	}
	lines := make(chan []byte, readAhead)
	go readLines(runCtx, stdin, lines, prog, func(err error) { say(stderr, "scdevice: stdin: %v", err) })
	go func() {
		for line := range lines {
			if _, err := c.PublishAsync(runCtx, line); err != nil {
				return // the session ended
			}
		}
	}()

	var giveUp *time.Timer
	var giveUpC <-chan time.Time
	waiting, lastAcked := false, 0
	for {
		n := prog.get()
		if !*stay && n.ended && n.acked == n.read && (n.session || n.readErr != nil) {
			if n.readErr != nil {
				say(stderr, "scdevice: stdin could not be read to its end; %d lines of it were acknowledged", n.acked)
				return stop(1)
			}
			return stop(0)
		}
		// The give-up clock runs while nothing more can be read from stdin,
		// and starts again with every PUBACK.
		nowWaiting := !*stay && *wait > 0 && (n.ended || n.full)
		switch {
		case nowWaiting && (!waiting || n.acked != lastAcked):
			if giveUp == nil {
				giveUp = time.NewTimer(*wait)
				defer giveUp.Stop()
			} else {
				giveUp.Reset(*wait)
			}
			giveUpC = giveUp.C
		case !nowWaiting && waiting:
			giveUp.Stop()
			giveUpC = nil
		}
		waiting, lastAcked = nowWaiting, n.acked

		select {
		case <-prog.changed:
		case <-giveUpC:
			say(stderr, "scdevice: %s", gaveUp(prog.get(), *wait, *addr))
			return stop(1)
		case err := <-runErr:
			if errors.Is(err, client.ErrTakenOver) {
				say(stderr, "scdevice: %v", err)
				return 3
			}
			if ctx.Err() == nil {
				say(stderr, "scdevice: %v", err)
				return 1
			}
			// Interrupted.
			n := prog.get()
			if n.read != n.acked {
				say(stderr, "scdevice: interrupted: %d of %d lines from stdin not acknowledged", n.read-n.acked, n.read)
				return 1
			}
			if n.readErr != nil {
				return 1
			}
			return 0
		}
	}
}

// counts is what became of stdin.
type counts struct {
	read, acked int   // lines read from stdin, and PUBACKed
	ended       bool  // stdin ended (EOF or a read error)
	readErr     error // why stdin could not be read to its end
	full        bool  // readAhead lines wait to be published
	session     bool  // a WELCOME was received
}

// progress holds the counts; changed is signalled after every change.
type progress struct {
	mu      sync.Mutex
	n       counts
	changed chan struct{}
}

func (p *progress) update(f func(*counts)) {
	p.mu.Lock()
	f(&p.n)
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

func (p *progress) get() counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// readLines reads stdin line by line into lines, at most readAhead ahead of
// the publisher, and closes it when stdin ends (or ctx does).
func readLines(ctx context.Context, stdin io.Reader, lines chan<- []byte, prog *progress, failed func(error)) {
	defer close(lines)
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := bytes.Clone(sc.Bytes())
		prog.update(func(n *counts) { n.read++ })
		select {
		case lines <- line:
			continue
		default:
		}
		prog.update(func(n *counts) { n.full = true })
		select {
		case lines <- line:
		case <-ctx.Done():
			return
		}
		prog.update(func(n *counts) { n.full = false })
	}
	err := sc.Err()
	if err != nil {
		failed(err)
	}
	prog.update(func(n *counts) { n.ended, n.readErr = true, err })
}

// gaveUp says what was left undone after wait passed without a PUBACK.
func gaveUp(n counts, wait time.Duration, addr string) string {
	var s string
	switch {
	case !n.session && n.read == 0:
		return fmt.Sprintf("gave up: no session with %s within %s after stdin ended", addr, wait)
	case !n.session:
		s = fmt.Sprintf("gave up: no session with %s within %s", addr, wait)
	default:
		s = fmt.Sprintf("gave up: no PUBACK within %s", wait)
	}
	s += fmt.Sprintf("; %d of %d lines from stdin not acknowledged", n.read-n.acked, n.read)
	if !n.ended {
		s += " (stdin not read to its end)"
	}
	return s
}

// describe says why a connection attempt failed or a session ended, and
// when the next attempt comes. wasConnected: the connection had a WELCOME.
func describe(ev client.Event, addr string, wasConnected bool) string {
	var what string
	switch ev.Reason {
	case client.ReasonDialFailed:
		what = fmt.Sprintf("connect %s: %s", addr, shortErr(ev.Err))
	case client.ReasonHandshake:
		var he *client.HTTPResponseError
		var se *client.SSEStatusError
		switch {
		case errors.As(ev.Err, &he):
			what = he.Error()
		case errors.As(ev.Err, &se):
			what = se.Error()
		case errors.Is(ev.Err, io.EOF), errors.Is(ev.Err, io.ErrUnexpectedEOF), errors.Is(ev.Err, syscall.ECONNRESET):
			what = fmt.Sprintf("connect %s: the server closed the connection without answering HELLO", addr)
			if !strings.Contains(addr, "://") {
				what += fmt.Sprintf(" (is it a protocol v1 TCP port? for WebSocket use ws://%s/ws, for SSE http://%s/sse)", addr, addr)
			}
		case errors.As(ev.Err, new(*protocol.Error)):
			what = fmt.Sprintf("connect %s: the server's answer to HELLO is not protocol v1 (%v)", addr, ev.Err)
		default:
			what = fmt.Sprintf("connect %s: no answer to HELLO: %s", addr, shortErr(ev.Err))
		}
	case client.ReasonServerError:
		var se *client.ServerError
		if !errors.As(ev.Err, &se) {
			se = &client.ServerError{Code: ev.Code, Message: fmt.Sprint(ev.Err)}
		}
		refusal := fmt.Sprintf("%s: %s", se.Code, se.Message)
		if se.RetryAfterMs > 0 {
			refusal += fmt.Sprintf(" (retry_after_ms=%d)", se.RetryAfterMs)
		}
		if wasConnected {
			what = fmt.Sprintf("the server at %s closed the session: %s", addr, refusal)
		} else {
			what = fmt.Sprintf("connect %s: HELLO refused: %s", addr, refusal)
		}
	case client.ReasonGoAway:
		what = fmt.Sprintf("the server at %s sent GOAWAY (%s)", addr, strings.TrimPrefix(fmt.Sprint(ev.Err), "goaway: "))
	case client.ReasonServerSilent:
		what = fmt.Sprintf("connection to %s lost: the server went silent", addr)
	case client.ReasonConnLost:
		what = fmt.Sprintf("connection to %s lost: %s", addr, shortErr(ev.Err))
	default:
		what = fmt.Sprintf("connection to %s ended (%s): %v", addr, ev.Reason, ev.Err)
	}
	next := "retrying"
	if wasConnected || ev.Reason == client.ReasonGoAway {
		next = "reconnecting"
	}
	return fmt.Sprintf("%s; %s in %s", what, next, roundWait(ev.Wait))
}

// shortErr drops what a network error repeats of the address and the
// operation: "connection refused" rather than
// "dial tcp 127.0.0.1:7001: connect: connection refused".
func shortErr(err error) string {
	if oe, ok := err.(*net.OpError); ok && oe.Err != nil {
		if se, ok := oe.Err.(*os.SyscallError); ok {
			return se.Err.Error()
		}
		return oe.Err.Error()
	}
	return fmt.Sprint(err)
}

// roundWait keeps a wait readable: "1.2s", "340ms".
func roundWait(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}
