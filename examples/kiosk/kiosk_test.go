// Package kiosk_test drives the example kiosk page (index.html, kiosk.js and
// the JavaScript client in clients/js) in headless Chromium against two real
// socketservers that share one real Redis: messages from the backend API
// reach the page exactly once and in order across a drain that moves the
// device to the other server, and each button press reaches the upstream
// Redis stream exactly once, over WebSocket and over SSE.
package kiosk_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

var (
	deviceKey = []byte("kiosk-device-key-for-tests-0123456789")
	apiToken  = "kiosk-api-token"
)

const (
	prefix = "kiosk"
	// wait bounds every wait for the page or the servers; generous, since
	// this test shares two cores with the race-enabled suite.
	wait = 45 * time.Second
)

func TestKioskPage(t *testing.T) {
	chromium := findChromium(t)
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dist := buildClient(t, filepath.Join(repo, "clients", "js"))

	// The page and the client as a static site, on another origin than the servers.
	mux := http.NewServeMux()
	mux.Handle("/examples/kiosk/", http.StripPrefix("/examples/kiosk/", http.FileServer(http.Dir(filepath.Join(repo, "examples", "kiosk")))))
	mux.Handle("/clients/js/dist/", http.StripPrefix("/clients/js/dist/", http.FileServer(http.Dir(dist))))
	site := httptest.NewServer(mux)
	t.Cleanup(site.Close)

	alloc, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 720),
	)...)
	t.Cleanup(cancel)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start chromium: %v", err)
	}

	out := filepath.Join("testdata", "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("websocket", func(t *testing.T) {
		runScenario(t, browser, site.URL, scenario{name: "websocket", device: "kiosk-ws", want: "ws", shot: filepath.Join(out, "kiosk-websocket.png")})
	})
	// An HTTP-only network: a proxy in front of each server refuses WebSocket
	// upgrades, so the page's "auto" transport falls back to SSE.
	t.Run("sse-fallback", func(t *testing.T) {
		runScenario(t, browser, site.URL, scenario{name: "sse", device: "kiosk-sse", blockWS: true, want: "sse", shot: filepath.Join(out, "kiosk-sse.png")})
	})
}

type scenario struct {
	name, device string
	blockWS      bool
	want         string // the transport the page must use
	shot         string
}

type server struct {
	name  string
	srv   *socketserver.Server
	page  string // the address the page connects to
	admin string
}

func runScenario(t *testing.T, browser context.Context, site string, sc scenario) {
	start := time.Now()
	rd := redistest.Start(t)
	rdb := rd.Client()
	servers := []*server{startServer(t, rd, "kiosk-a"), startServer(t, rd, "kiosk-b")}
	var addrs []string
	for _, s := range servers {
		s.page = s.srv.Addrs().WS
		if sc.blockWS {
			s.page = noWebSocketProxy(t, s.page)
		}
		addrs = append(addrs, s.page)
	}
	byName := func(name string) *server {
		for _, s := range servers {
			if s.name == name {
				return s
			}
		}
		t.Fatalf("no server named %q", name)
		return nil
	}

	q := url.Values{"servers": {strings.Join(addrs, ",")}, "device": {sc.device}, "token": {deviceToken(t, sc.device)}, "transport": {"auto"}}
	pageURL := site + "/examples/kiosk/index.html?" + q.Encode()
	page := openPage(t, browser, pageURL)
	page.waitFor(fmt.Sprintf(`kiosk.client.status === "connected" && document.getElementById("transport").textContent === %q`, sc.want),
		"the page connected over "+sc.want)
	first := byName(page.text("server"))
	t.Logf("%s: connected to %s over %s after %v", sc.name, first.name, sc.want, time.Since(start).Round(time.Millisecond))

	// Downstream, then a press, on the first server.
	send(t, servers[0], sc.device, "order-1")
	send(t, servers[1], sc.device, "order-2")
	page.waitOrders([]string{"order-1", "order-2"})
	page.run(chromedp.Click(chromedp.ID("press")))
	page.waitFor(`document.getElementById("stored").textContent === "1"`, "the first press stored")

	// Drain the server holding the page: it moves to the other one. Messages
	// are sent before the drain, right after it started, and after the move.
	var other *server
	for _, s := range servers {
		if s != first {
			other = s
		}
	}
	send(t, other, sc.device, "order-3")
	drainStarted := time.Now()
	adminCall(t, first, "POST", "/drain", "", nil)
	send(t, other, sc.device, "order-4")
	page.waitFor(fmt.Sprintf(`kiosk.client.status === "connected" && document.getElementById("server").textContent === %q`, other.name),
		"the page moved to "+other.name)
	t.Logf("%s: on %s %v after POST /drain", sc.name, other.name, time.Since(drainStarted).Round(time.Millisecond))
	if got := page.text("transport"); got != sc.want {
		t.Errorf("after the drain the page uses %q, want %q", got, sc.want)
	}
	send(t, other, sc.device, "order-5")
	send(t, first, sc.device, "order-6") // a drained server's API still takes messages
	page.waitOrders([]string{"order-1", "order-2", "order-3", "order-4", "order-5", "order-6"})
	page.run(chromedp.Click(chromedp.ID("press")))
	page.waitFor(`document.getElementById("stored").textContent === "2"`, "the second press stored")
	checkUpstream(t, rdb, sc.device, 2)
	waitAcked(t, other, sc.device)
	page.screenshot(sc.shot)

	// A reload: nothing acknowledged comes back, and publish ids keep rising.
	page.run(chromedp.Reload())
	page.waitFor(`window.kiosk && kiosk.client.status === "connected"`, "the reloaded page connected")
	send(t, other, sc.device, "order-7")
	page.waitOrders([]string{"order-7"})
	page.run(chromedp.Click(chromedp.ID("press")))
	page.waitFor(`document.getElementById("stored").textContent === "1"`, "the press after the reload stored")
	checkUpstream(t, rdb, sc.device, 3)

	// A second kiosk of the same device (another tab) takes the session
	// over: the first one stops for good and the second gets what follows.
	second := openPage(t, browser, pageURL)
	second.waitFor(`kiosk.client.status === "connected"`, "the second tab connected")
	page.waitFor(`kiosk.client.status === "stopped"`, "the first tab stopped")
	if !strings.Contains(page.describe(), "stopped: session_taken_over") {
		t.Errorf("the first tab does not report session_taken_over\n%s", page.describe())
	}
	send(t, other, sc.device, "order-8")
	second.waitOrders([]string{"order-8"})
	if got := page.orders(); !slices.Equal(got, []string{"order-7"}) {
		t.Errorf("the stopped tab lists %q", got)
	}
	if got := page.text("status"); got != "stopped" {
		t.Errorf("the first tab's status is %q after the takeover", got)
	}
	t.Logf("%s: done in %v", sc.name, time.Since(start).Round(time.Millisecond))
}

// openPage opens url in a new tab, closed when the test ends; exceptions
// that the page throws fail the test.
func openPage(t *testing.T, browser context.Context, url string) *kioskPage {
	t.Helper()
	tab, cancel := chromedp.NewContext(browser)
	tab, cancelTimeout := context.WithTimeout(tab, 3*time.Minute)
	page := &kioskPage{t: t, ctx: tab}
	t.Cleanup(func() {
		for _, m := range page.exceptions() {
			t.Errorf("page exception: %s", m)
		}
		cancelTimeout()
		cancel()
	})
	// The tab lives as long as the context of its first Run: this one, not a per-step timeout.
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	go page.readConsole()
	page.run(chromedp.Navigate(url))
	return page
}

// kioskPage runs actions in the page's tab; every wait is bounded.
type kioskPage struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// readConsole keeps what the page writes to its console, until the tab closes.
func (p *kioskPage) readConsole() {
	for m, err := range chromedp.Console(p.ctx) {
		if err != nil {
			return
		}
		p.mu.Lock()
		p.console = append(p.console, m)
		p.mu.Unlock()
	}
}

func (p *kioskPage) exceptions() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, m := range p.console {
		if m.IsException() {
			out = append(out, m.String())
		}
	}
	return out
}

func (p *kioskPage) run(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, wait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("page: %v\n%s", err, p.describe())
	}
}

func evaluate[T any](p *kioskPage, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, wait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("page: evaluate %s: %v\n%s", expr, err, p.describe())
	}
	return v
}

// waitFor polls a JavaScript condition until it holds.
func (p *kioskPage) waitFor(cond, what string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, wait)
	defer cancel()
	ok, err := chromedp.Run(ctx, chromedp.Poll[bool](`(() => { try { return !!(`+cond+`); } catch (e) { return false; } })()`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(wait)))
	if err != nil || !ok {
		p.t.Fatalf("waiting for %s: %v\n%s", what, err, p.describe())
	}
}

func (p *kioskPage) text(id string) string {
	p.t.Helper()
	return evaluate[string](p, fmt.Sprintf(`document.getElementById(%q).textContent`, id))
}

// orders are the texts of the page's order list, in arrival order.
func (p *kioskPage) orders() []string {
	p.t.Helper()
	return evaluate[[]string](p, `Array.from(document.querySelectorAll("#orders li .text"), (e) => e.textContent)`)
}

// waitOrders waits until the page lists want: each once, in order, nothing else.
func (p *kioskPage) waitOrders(want []string) {
	p.t.Helper()
	p.waitFor(fmt.Sprintf(`document.querySelectorAll("#orders li").length >= %d`, len(want)), fmt.Sprintf("%d orders", len(want)))
	if got := p.orders(); !slices.Equal(got, want) {
		p.t.Fatalf("the page lists %q, want %q\n%s", got, want, p.describe())
	}
	seqs := evaluate[[]string](p, `Array.from(document.querySelectorAll("#orders li"), (e) => e.dataset.seq)`)
	for i := 1; i < len(seqs); i++ {
		a, _ := strconv.ParseUint(seqs[i-1], 10, 64)
		b, _ := strconv.ParseUint(seqs[i], 10, 64)
		if b <= a {
			p.t.Fatalf("seqs not increasing: %v", seqs)
		}
	}
}

// describe is the page's state for a failure message.
func (p *kioskPage) describe() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({status: window.kiosk && kiosk.client.status,
		transport: document.getElementById("transport").textContent, server: document.getElementById("server").textContent,
		orders: window.kiosk && kiosk.orders, sent: window.kiosk && kiosk.sent, stored: window.kiosk && kiosk.stored,
		log: Array.from(document.querySelectorAll("#log li"), (e) => e.textContent)}, null, 1)`))
	p.mu.Lock()
	defer p.mu.Unlock()
	var console strings.Builder
	for _, m := range p.console {
		fmt.Fprintf(&console, "\n  %s", m)
	}
	return "page state: " + s + "\npage console:" + console.String()
}

func evaluateAction[T any](p *kioskPage, a chromedp.Action[T]) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, wait)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		p.t.Fatalf("page: %v", err)
	}
	return v
}

func (p *kioskPage) screenshot(path string) {
	p.t.Helper()
	png := evaluateAction(p, chromedp.CaptureScreenshot())
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	p.t.Logf("screenshot: %s", abs)
}

// findChromium returns Chromium's path. Without it the test skips, unless
// it runs in CI (CI set), where a missing browser is a failure.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "" {
		t.Skip("chromium not found: apt-get install chromium (or set CHROMIUM); with CI set this is a failure")
	}
	t.Fatal("chromium not found (CI is set): apt-get install chromium, or set CHROMIUM")
	return ""
}

// buildClient compiles the TypeScript client into a temporary directory
// with the package's own TypeScript (npm ci first when it is not installed).
func buildClient(t *testing.T, dir string) string {
	t.Helper()
	tsc := filepath.Join(dir, "node_modules", "typescript", "bin", "tsc")
	if _, err := os.Stat(tsc); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			t.Fatal("npm not found: the kiosk test builds clients/js (install Node.js 20 and npm)")
		}
		cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: the kiosk test builds clients/js (install Node.js 20)")
	}
	out := t.TempDir()
	cmd := exec.Command(node, tsc, "-p", ".", "--outDir", out)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tsc: %v\n%s", err, b)
	}
	return out
}

func startServer(t *testing.T, rd *redistest.Server, name string) *server {
	t.Helper()
	var lg logr.Logger = logr.Discard()
	if testing.Verbose() {
		lg = testr.New(t)
	}
	srv, err := socketserver.New(socketserver.Config{
		WSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ServerName: name,
		AuthKey: deviceKey, APIToken: apiToken,
		DrainTimeout: 10 * time.Second, DrainJitter: 300 * time.Millisecond,
	}, store.NewRedis(rd.Client(), prefix), lg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &server{name: name, srv: srv, admin: srv.Addrs().Admin}
}

// noWebSocketProxy forwards HTTP to target and refuses WebSocket upgrades,
// like a proxy on an HTTP-only network; it returns its address.
func noWebSocketProxy(t *testing.T, target string) string {
	t.Helper()
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	rp.FlushInterval = -1
	rp.ErrorLog = log.New(io.Discard, "", 0) // streams cut at the end of the test
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "WebSocket is not allowed here", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.CloseClientConnections() // SSE streams would keep Close waiting
		p.Close()
	})
	return p.Listener.Addr().String()
}

func deviceToken(t *testing.T, device string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": device, "exp": time.Now().Add(time.Hour).Unix()}).SignedString(deviceKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

func adminCall(t *testing.T, s *server, method, path, body string, hdr http.Header) []byte {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+s.admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s on %s: %v", method, path, s.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s on %s: %s %s", method, path, s.name, resp.Status, b)
	}
	return b
}

// send is a backend's message to the device, with an idempotency key.
func send(t *testing.T, s *server, device, payload string) {
	t.Helper()
	adminCall(t, s, "POST", "/v1/devices/"+device+"/messages", payload, http.Header{"Idempotency-Key": {device + "-" + payload}})
}

// waitAcked waits until the page acknowledged everything sent to it.
func waitAcked(t *testing.T, s *server, device string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		var st struct {
			Pending uint64 `json:"pending"`
			Server  string `json:"server"`
		}
		if err := json.Unmarshal(adminCall(t, s, "GET", "/v1/devices/"+device, "", nil), &st); err != nil {
			t.Fatal(err)
		}
		if st.Pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still has %d unacknowledged messages", device, st.Pending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkUpstream reads <prefix>:upstream: the device's entries are n
// presses, each stored once, with strictly increasing ids.
func checkUpstream(t *testing.T, rdb *redis.Client, device string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msgs, err := rdb.XRange(ctx, prefix+":upstream", "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE %s:upstream: %v", prefix, err)
	}
	var ids []uint64
	for _, m := range msgs {
		if m.Values["device"] != device {
			continue
		}
		if m.Values["payload"] != "pressed" {
			t.Errorf("upstream entry %s: payload %q, want \"pressed\"", m.ID, m.Values["payload"])
		}
		id, err := strconv.ParseUint(fmt.Sprint(m.Values["id"]), 10, 64)
		if err != nil {
			t.Fatalf("upstream entry %s: id %v", m.ID, m.Values["id"])
		}
		if len(ids) > 0 && id <= ids[len(ids)-1] {
			t.Errorf("upstream ids not strictly increasing: %v then %d", ids, id)
		}
		ids = append(ids, id)
	}
	if len(ids) != n {
		t.Fatalf("%s has %d entries of %s (ids %v), want %d: each press exactly once", prefix+":upstream", len(ids), device, ids, n)
	}
}
