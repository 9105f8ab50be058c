package socketserver_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Device tokens must expire unless the server allows otherwise.
func TestTokensWithoutExp(t *testing.T) {
	hello := protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "noexp", Token: token("noexp", 0)})
	c := dial(t, startServer(t, store.NewMemory(), "pod-a", nil).Addrs().TCP)
	c.send(protocol.TypeHello, hello)
	c.expectError(protocol.CodeUnauthorized)

	allowing := startServer(t, store.NewMemory(), "pod-b", func(c *socketserver.Config) { c.AllowTokensWithoutExp = true })
	c = dial(t, allowing.Addrs().TCP)
	c.send(protocol.TypeHello, hello)
	c.expect(protocol.TypeWelcome)
	c = dial(t, allowing.Addrs().TCP)
	c.hello("noexp", 0) // one with exp, still checked
	c.expect(protocol.TypeWelcome)
	c = dial(t, allowing.Addrs().TCP)
	c.send(protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "noexp", Token: token("noexp", -time.Minute)}))
	c.expectError(protocol.CodeUnauthorized)
}

// Device keys shorter than 32 bytes are refused at start, by New and by the
// binary.
func TestShortDeviceKeyRefused(t *testing.T) {
	cfg := func(key []byte) socketserver.Config {
		return socketserver.Config{TCPAddr: "127.0.0.1:0", ServerName: "pod-a", AuthKey: key}
	}
	_, err := socketserver.New(cfg([]byte(strings.Repeat("k", 31))), store.NewMemory(), logr.Discard())
	if err == nil || !strings.Contains(err.Error(), "--auth-key-file") || !strings.Contains(err.Error(), "32-byte") {
		t.Fatalf("31-byte key: %v, want an error naming --auth-key-file and the 32-byte minimum", err)
	}
	if _, err := socketserver.New(cfg([]byte(strings.Repeat("k", 32))), store.NewMemory(), logr.Discard()); err != nil {
		t.Fatalf("32-byte key: %v", err)
	}
	if testing.Short() {
		return
	}
	dir := t.TempDir()
	keyFile, tokenFile := filepath.Join(dir, "key"), filepath.Join(dir, "token")
	_ = os.WriteFile(keyFile, []byte("short-key\n"), 0o600)
	_ = os.WriteFile(tokenFile, []byte("admin-token-for-tests"), 0o600)
	out, err := exec.Command(serverBinary(t), "--tcp-addr", "127.0.0.1:0", "--ws-addr", "", "--admin-addr", "127.0.0.1:0",
		"--auth-key-file", keyFile, "--api-token-file", tokenFile).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 || !strings.Contains(string(out), "--auth-key-file") || !strings.Contains(string(out), "32-byte") {
		t.Fatalf("server with a 9-byte key: %v\n%s", err, out)
	}
}
