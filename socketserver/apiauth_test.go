package socketserver_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
)

// The binary refuses to start with an open admin API unless told to: no
// --api-token-file, or one that is empty or only whitespace, exits 2 with
// a message naming the flags.
func TestBinaryRequiresAPIToken(t *testing.T) {
	bin := serverBinary(t)
	blank := filepath.Join(t.TempDir(), "blank")
	if err := os.WriteFile(blank, []byte(" \n\t\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var env []string // no SOCKETSERVER_* settings from outside
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SOCKETSERVER_") {
			env = append(env, kv)
		}
	}
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"no token", nil, []string{"--api-token-file", "--insecure-no-api-auth"}},
		{"blank token file", []string{"--api-token-file", blank}, []string{"--api-token-file", "empty or only whitespace"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := append([]string{"--tcp-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "127.0.0.1:0", "--insecure-no-auth"}, c.args...)
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit: %v, want code 2\n%s", err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Fatalf("output does not say %q:\n%s", w, out)
				}
			}
		})
	}
}

// With a token file, /v1/*, /drain and /debug/pprof need the bearer token;
// the probes and metrics stay open. With --insecure-no-api-auth instead,
// the server starts with the API open.
func TestBinaryAPIToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "", "pod-a", "--api-token-file", tokenFile)
	for _, c := range [][2]string{{"POST", "/v1/devices/d/messages"}, {"GET", "/v1/devices/d"}, {"POST", "/v1/messages"},
		{"GET", "/v1/upstream"}, {"POST", "/drain"}, {"GET", "/debug/pprof/"}} {
		if code, body := api(t, p, c[0], c[1], "x"); code != 401 || !strings.Contains(body, `"unauthorized"`) {
			t.Fatalf("%s %s without the token: %d %s", c[0], c[1], code, body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := api(t, p, "GET", path, ""); code != 200 {
			t.Fatalf("%s without the token: %d, want 200", path, code)
		}
	}
	if r, err := adminClient(p, "s3cret-token").Send(context.Background(), "d", []byte("x"), "k"); err != nil || r.Seq == 0 {
		t.Fatalf("with the token: %+v %v", r, err)
	}

	open := startProc(t, "", "pod-b") // --insecure-no-api-auth
	if _, err := adminClient(open, "").Device(context.Background(), "nobody"); !adminapi.IsRefused(err) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("open API: %v, want 404", err)
	}
}
