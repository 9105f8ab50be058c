package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/poll"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// The preStop hook the operator writes, run by this command against a real
// server: the server turns unready and, after the wait, sends GOAWAY; the
// hook returns 0 once the device left.
func TestPreStopHookDrainsAfterTheWait(t *testing.T) {
	sc := &v1alpha1.SocketCluster{ObjectMeta: metav1.ObjectMeta{Name: "edge"}}
	sc.Spec.Redis.Addresses = []string{"r:6379"}
	sc.Spec.Listeners.AdminPort = 9090
	sc.Spec.Drain.Timeout = metav1.Duration{Duration: 10 * time.Second}
	sc.Spec.Drain.PreStopWait = &metav1.Duration{Duration: 200 * time.Millisecond}
	hook := resources.Deployment(sc, "img", "").Spec.Template.Spec.Containers[0].Lifecycle.PreStop.Exec.Command
	if hook[0] != "/socketserver" || hook[1] != "drain" {
		t.Fatalf("preStop %q", hook)
	}

	const token = "prestop-token"
	srv, err := socketserver.New(socketserver.Config{TCPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ServerName: "edge-0",
		InsecureNoAuth: true, APIToken: token, DrainTimeout: 10 * time.Second}, store.NewMemory(), logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The pod's paths and port, pointed at this server.
	var args []string
	for _, a := range hook[2:] {
		switch {
		case strings.HasPrefix(a, "--admin-addr="):
			a = "--admin-addr=" + srv.Addrs().Admin
		case strings.HasPrefix(a, "--api-token-file="):
			a = "--api-token-file=" + tokenFile
		}
		args = append(args, a)
	}

	nc, err := net.Dial("tcp", srv.Addrs().TCP)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := protocol.NewReader(nc, 1<<20, 4096)
	if _, err := nc.Write(protocol.AppendFrame(nil, protocol.TypeHello, protocol.MustJSON(protocol.Hello{Protocol: 1, Device: "d", Token: "x"}))); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if typ, _, err := r.ReadFrame(); err != nil || typ != protocol.TypeWelcome {
		t.Fatalf("HELLO: %v %v", typ, err)
	}

	exit := make(chan int, 1)
	go func() { exit <- drainCommand(args) }()
	poll.Until(t, 30*time.Second, "the server draining", poll.True(srv.Draining))
	resp, err := http.Get("http://" + srv.Addrs().Admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readyz during the hook: %d", resp.StatusCode)
	}
	if typ, _, err := r.ReadFrame(); err != nil || typ != protocol.TypeGoAway {
		t.Fatalf("want GOAWAY after the wait: %v %v", typ, err)
	}
	nc.Close()
	if code := <-exit; code != 0 {
		t.Fatalf("preStop hook exited %d", code)
	}
}
