// Command scdevice acts as one device: it keeps a session with a socket
// cluster, prints each delivery on stdout as "seq=N payload", publishes each
// line of stdin, and reports PUBACKs, connects, GOAWAYs and errors on stderr.
// With --token-for it only prints a signed device token.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("scdevice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:7000", "server: host:port (TCP) or ws://host:port/ws, wss://host:port/ws")
	device := fs.String("device", "", "device name")
	token := fs.String("token", "", "device token (JWT)")
	keyFile := fs.String("key-file", "", "device key: sign a fresh HS256 token (sub=device) for every connection")
	ttl := fs.Duration("ttl", time.Hour, "lifetime of tokens signed with --key-file")
	tokenFor := fs.String("token-for", "", "only print a token for this device, signed with --key-file")
	lastSeq := fs.Uint64("last-seq", 0, "highest seq already processed (sent in HELLO)")
	useTLS := fs.Bool("tls", false, "TLS on the TCP address")
	caFile := fs.String("ca-file", "", "CA bundle to verify the server (TLS, wss)")
	stay := fs.Bool("stay", false, "keep running after stdin ends (default: exit once its lines are acknowledged)")
	if err := fs.Parse(args); err != nil {
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
	cfg := client.Config{Addr: *addr, Device: *device, Token: *token, LastSeq: *lastSeq,
		OnMessage: func(seq uint64, payload []byte) { say(stdout, "seq=%d %s", seq, payload) },
		OnState:   func(state json.RawMessage) { say(stderr, "state %s", state) },
		OnEvent: func(ev client.Event) {
			if ev.Type == client.EventConnected {
				w := ev.Welcome
				say(stderr, "connected server=%s epoch=%d resumed=%t last_publish_id=%d", w.Server, w.SessionEpoch, w.Resumed, w.LastPublishID)
				return
			}
			say(stderr, "disconnected reason=%s err=%v retry_in=%s", ev.Reason, ev.Err, ev.Wait.Round(time.Millisecond))
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

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(ctx) }()
	go func() {
		publishLines(ctx, c, stdin, func(format string, a ...any) { say(stderr, format, a...) })
		if !*stay {
			cancel()
		}
	}()
	err := <-runErr
	switch {
	case errors.Is(err, client.ErrTakenOver):
		say(stderr, "scdevice: %v", err)
		return 3
	case ctx.Err() != nil:
		return 0
	}
	say(stderr, "scdevice: %v", err)
	return 1
}

// publishLines publishes stdin line by line, in order, and returns once
// every line is acknowledged (or ctx ends).
func publishLines(ctx context.Context, c *client.Client, stdin io.Reader, say func(string, ...any)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p, err := c.PublishAsync(ctx, sc.Bytes())
		if err != nil {
			say("publish: %v", err)
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-p.Done():
				say("puback id=%d", p.ID())
			case <-ctx.Done():
			}
		}()
	}
	if err := sc.Err(); err != nil {
		say("stdin: %v", err)
	}
}
