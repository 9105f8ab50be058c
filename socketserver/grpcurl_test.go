package socketserver_test

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

var grpcurl struct {
	once sync.Once
	path string
	err  error
}

// grpcurlBinary is $GRPCURL or the grpcurl that hack/grpcurl.sh builds
// from the Go module proxy (cached after the first build).
func grpcurlBinary(t *testing.T) string {
	t.Helper()
	grpcurl.once.Do(func() {
		if grpcurl.path = os.Getenv("GRPCURL"); grpcurl.path != "" {
			return
		}
		out, err := exec.Command("../hack/grpcurl.sh").Output()
		grpcurl.path, grpcurl.err = strings.TrimSpace(string(out)), err
	})
	if grpcurl.err != nil {
		t.Fatalf("hack/grpcurl.sh: %v", grpcurl.err)
	}
	return grpcurl.path
}

// grpcurl, a client no one here wrote, finds the service by reflection and
// holds a session on one bidirectional stream: HELLO (the token as
// authorization metadata), DELIVER, ACK, PUBLISH, PUBACK, each message as
// the protobuf JSON mapping of the schema.
func TestGRPCurlSession(t *testing.T) {
	bin := grpcurlBinary(t)
	srv := startServer(t, store.NewMemory(), "pod-a", func(c *socketserver.Config) { c.GRPCReflection = true })
	addr := srv.Addrs().GRPC

	list, err := exec.Command(bin, "-plaintext", addr, "list").CombinedOutput()
	if err != nil || !strings.Contains(string(list), "scp.v1.Device\n") {
		t.Fatalf("grpcurl list: %v\n%s", err, list)
	}
	seq := send(t, srv, "cli-1", "order 17")

	cmd := exec.Command(bin, "-plaintext", "-H", "authorization: Bearer "+token("cli-1", time.Hour),
		"-d", "@", addr, "scp.v1.Device/Connect")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := json.NewDecoder(bufio.NewReader(stdout))
	next := func(want string) map[string]any {
		t.Helper()
		var m map[string]map[string]any
		if err := out.Decode(&m); err != nil {
			t.Fatalf("waiting for %s: %v; stderr:\n%s", want, err, stderr.String())
		}
		if m[want] == nil {
			t.Fatalf("got %v, want %s", m, want)
		}
		return m[want]
	}
	write := func(s string) {
		t.Helper()
		if _, err := io.WriteString(stdin, s+"\n"); err != nil {
			t.Fatal(err)
		}
	}

	write(`{"hello": {"protocol": 1, "device": "cli-1"}}`)
	if w := next("welcome"); w["server"] != "pod-a" || w["state"] != "{}" {
		t.Fatalf("welcome %v", w)
	}
	d := next("deliver")
	payload, _ := base64.StdEncoding.DecodeString(fmt.Sprint(d["payload"]))
	if d["seq"] != strconv.FormatUint(seq, 10) || string(payload) != "order 17" {
		t.Fatalf("deliver %v, want seq %d and order 17", d, seq)
	}
	write(fmt.Sprintf(`{"ack": {"seq": "%d"}}`, seq))
	write(`{"publish": {"id": "1", "payload": "` + base64.StdEncoding.EncodeToString([]byte("pressed")) + `"}}`)
	if p := next("puback"); p["id"] != "1" {
		t.Fatalf("puback %v", p)
	}
	_ = stdin.Close() // ends the device's side: the server ends the call
	if err := cmd.Wait(); err != nil {
		t.Fatalf("grpcurl: %v\n%s", err, stderr.String())
	}

	if code, body := api(t, srv, "GET", "/v1/devices/cli-1", ""); code != 200 || !strings.Contains(body, `"pending":0`) {
		t.Fatalf("device after the ACK: %d %s", code, body)
	}
	_, body := api(t, srv, "GET", "/v1/upstream?after=0", "")
	if !strings.Contains(body, `"device":"cli-1"`) || !strings.Contains(body, base64.StdEncoding.EncodeToString([]byte("pressed"))) {
		t.Fatalf("upstream %s lacks the PUBLISH", body)
	}
}
