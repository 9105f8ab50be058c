package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/golang-jwt/jwt/v5"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// syncBuffer is a bytes.Buffer safe for the CLI's goroutines and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDeviceReceivesAndPublishes(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("k3y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := socketserver.New(socketserver.Config{TCPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerName: "server-a", AuthKey: []byte("k3y"), InsecureNoAPIAuth: true}, store.NewMemory(), logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	resp, err := http.Post("http://"+srv.Addrs().Admin+"/v1/devices/store-1/messages", "text/plain", strings.NewReader("price update"))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %v %v", resp, err)
	}
	resp.Body.Close()

	stdinR, stdinW := io.Pipe()
	var stdout, stderr syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"--addr", srv.Addrs().TCP, "--device", "store-1", "--key-file", keyFile},
			stdinR, &stdout, &stderr)
	}()
	_, _ = io.WriteString(stdinW, "sale 1\nsale 2\n")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "seq=1 price update\n") || !strings.Contains(stderr.String(), "puback id=2") {
		if time.Now().After(deadline) {
			t.Fatalf("stdout %q, stderr %q", stdout.String(), stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	stdinW.Close() // stdin ends: the CLI exits once its lines are acknowledged
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit code %d, stderr %q", c, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("scdevice did not exit after stdin ended")
	}
	if !strings.Contains(stderr.String(), "connected server=server-a epoch=1 resumed=false") {
		t.Fatalf("stderr %q", stderr.String())
	}
}

func TestTokenFor(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("k3y  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr syncBuffer
	if c := run(context.Background(), []string{"--token-for", "kiosk-9", "--key-file", keyFile}, nil, &stdout, &stderr); c != 0 {
		t.Fatalf("exit code %d: %s", c, stderr.String())
	}
	tok, err := jwt.NewParser(jwt.WithSubject("kiosk-9"), jwt.WithExpirationRequired()).
		Parse(strings.TrimSpace(stdout.String()), func(*jwt.Token) (any, error) { return []byte("k3y"), nil })
	if err != nil || !tok.Valid {
		t.Fatalf("printed token does not verify with the trimmed key: %v", err)
	}
	if c := run(context.Background(), []string{"--token-for", "kiosk-9"}, nil, &stdout, &stderr); c != 2 {
		t.Fatalf("--token-for without a key: exit code %d, want 2", c)
	}
}
