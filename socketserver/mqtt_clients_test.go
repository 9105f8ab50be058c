package socketserver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/socketcluster/socketcluster/internal/redistest"
	"github.com/socketcluster/socketcluster/socketserver"
)

// lookMosquitto finds a mosquitto client; in CI its absence is a failure.
func lookMosquitto(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("%s not found: apt-get install mosquitto-clients; with CI set this is a failure", name)
		}
		t.Fatalf("%s not found: apt-get install mosquitto-clients", name)
	}
	return p
}

// mosquitto_sub and mosquitto_pub, as written by the Eclipse Mosquitto
// project, with a device JWT as the password, in both protocol versions.
func TestMQTTMosquittoClients(t *testing.T) {
	sub, pub := lookMosquitto(t, "mosquitto_sub"), lookMosquitto(t, "mosquitto_pub")
	r := redistest.Start(t)
	srv := startServer(t, redisStore(t, r), "pod-a", nil)
	host, port, _ := strings.Cut(srv.Addrs().MQTT, ":")
	for _, v := range []string{"mqttv311", "mqttv5"} {
		t.Run(v, func(t *testing.T) {
			device := "mosq-" + strings.TrimPrefix(v, "mqttv")
			args := []string{"-h", host, "-p", port, "-V", v, "-i", device, "-u", device, "-P", token(device, time.Hour), "-q", "1"}
			send(t, srv, device, "from the backend")
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// -C 1: one message, then it acknowledges and disconnects.
			out, err := exec.CommandContext(ctx, sub, append(args, "-t", socketserver.MQTTInboxTopic(device), "-C", "1", "-v")...).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != socketserver.MQTTInboxTopic(device)+" from the backend" {
				t.Fatalf("mosquitto_sub: %v\n%s", err, out)
			}
			eventually(t, "the PUBACK stored as the ACK", func() bool { return deviceInfo(t, srv, device).Pending == 0 })
			if out, err := exec.CommandContext(ctx, pub, append(args, "-t", socketserver.MQTTOutboxTopic(device), "-m", "pressed")...).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_pub: %v\n%s", err, out)
			}
			if up := upstreamOf(t, r, device); strings.Join(up, " ") != "pressed" {
				t.Fatalf("upstream of %s: %q, want the one PUBLISH", device, up)
			}
			// Someone else's inbox is refused.
			out, _ = exec.CommandContext(ctx, sub, append(args, "-t", "devices/other/inbox", "-C", "1", "-W", "5")...).CombinedOutput()
			if !strings.Contains(string(out), "All subscription requests were denied") {
				t.Fatalf("mosquitto_sub on another device's inbox: %s", out)
			}
		})
	}
}

// The Eclipse Paho Go client (MQTT 3.1.1) across a drain: it is told to go
// by its pod, reconnects to the other pod with the same session, and every
// message sent before, during and after arrives; its publishes are stored.
func TestMQTTPahoResumesAcrossADrain(t *testing.T) {
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	const device = "paho-1"

	var mu sync.Mutex
	got := map[string]int{}
	connects := make(chan struct{}, 8)
	opts := paho.NewClientOptions().AddBroker("tcp://" + a.Addrs().MQTT).AddBroker("tcp://" + b.Addrs().MQTT).
		SetClientID(device).SetUsername(device).SetPassword(token(device, time.Hour)).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetOnConnectHandler(func(paho.Client) { connects <- struct{}{} }).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			mu.Lock()
			got[string(m.Payload())]++
			mu.Unlock()
		})
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	<-connects
	if tok := c.Subscribe(socketserver.MQTTInboxTopic(device), 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	received := func(n int) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(got) == n
		}
	}
	for i := 0; i < 10; i++ {
		send(t, a, device, fmt.Sprintf("before-%d", i))
	}
	eventually(t, "10 messages on pod-a", received(10))
	if code, _ := api(t, a, "POST", "/drain", ""); code != 202 {
		t.Fatalf("drain: %d", code)
	}
	for i := 0; i < 10; i++ {
		send(t, b, device, fmt.Sprintf("during-%d", i))
	}
	<-connects // reconnected, to pod-b (pod-a refuses while it drains)
	eventually(t, "the device on pod-b", func() bool { return deviceInfo(t, b, device).Server == "pod-b" })
	for i := 0; i < 10; i++ {
		send(t, b, device, fmt.Sprintf("after-%d", i))
	}
	eventually(t, "all 30 messages", received(30))
	eventually(t, "all acknowledged", func() bool { return deviceInfo(t, b, device).Pending == 0 })
	for i := 0; i < 5; i++ {
		if tok := c.Publish(socketserver.MQTTOutboxTopic(device), 1, false, fmt.Sprintf("up-%d", i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	if up := upstreamOf(t, r, device); strings.Join(up, " ") != "up-0 up-1 up-2 up-3 up-4" {
		t.Fatalf("upstream of the device: %q, want its 5 publishes once each", up)
	}
}

// pahoEvent is a line the Paho MQTT 5 device (testdata/paho_mqtt5.py) prints.
type pahoEvent struct {
	Event, Topic, Payload, Server, Seq string
	RC, QoS, Mid                       int
	Dup                                bool
	SessionPresent                     bool `json:"session_present"`
	Codes                              []int
}

// The Eclipse Paho Python client (Debian's python3-paho-mqtt) as an MQTT 5
// device: JWT as the password, a backend message received and PUBACKed,
// someone else's inbox refused, a drain that sends it DISCONNECT 0x8B,
// its session resumed on the other pod with every message once, and its
// publishes stored once each.
func TestMQTTPaho5ResumesAcrossADrain(t *testing.T) {
	python := "/usr/bin/python3" // Debian's, which has its python3-paho-mqtt
	if err := exec.Command(python, "-c", "import paho.mqtt.client").Run(); err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("no Paho for %s: apt-get install python3-paho-mqtt; with CI set this is a failure", python)
		}
		t.Fatalf("no Paho for %s (%v): apt-get install python3-paho-mqtt", python, err)
	}
	r := redistest.Start(t)
	a := startServer(t, redisStore(t, r), "pod-a", nil)
	b := startServer(t, redisStore(t, r), "pod-b", nil)
	const device = "paho5-1"
	for i := 0; i < 5; i++ {
		send(t, a, device, fmt.Sprintf("before-%d", i))
	}

	stdin, stdout := startScript(t, python, "testdata/paho_mqtt5.py", device, token(device, time.Hour), a.Addrs().MQTT, b.Addrs().MQTT)
	events := make(chan pahoEvent, 64)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var e pahoEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Errorf("paho printed %q: %v", sc.Text(), err)
				continue
			}
			events <- e
		}
	}()
	got := map[string]int{}
	// next returns the next event of kind, counting the messages on the way.
	next := func(kind string) pahoEvent {
		t.Helper()
		for e := range events {
			if e.Event == "message" {
				if e.Topic != socketserver.MQTTInboxTopic(device) || e.QoS != 1 || e.Seq == "" {
					t.Fatalf("message %+v: want QoS 1 on the inbox with a seq", e)
				}
				got[e.Payload]++
			}
			if e.Event == kind {
				return e
			}
		}
		t.Fatalf("paho ended before a %s event", kind)
		return pahoEvent{}
	}
	say := func(line string) {
		if _, err := fmt.Fprintln(stdin, line); err != nil {
			t.Fatal(err)
		}
	}

	if e := next("connack"); e.RC != 0 || e.Server != "pod-a" || e.SessionPresent {
		t.Fatalf("first CONNACK %+v: want accepted by pod-a, no session present", e)
	}
	say("sub")
	if e := next("suback"); fmt.Sprint(e.Codes) != "[1]" {
		t.Fatalf("SUBACK on its inbox: %v, want QoS 1 granted", e.Codes)
	}
	for len(got) < 5 {
		next("message")
	}
	eventually(t, "Paho's PUBACKs stored as the ACK", func() bool { return deviceInfo(t, a, device).Pending == 0 })
	say("sub devices/other/inbox")
	if e := next("suback"); fmt.Sprint(e.Codes) != "[135]" {
		t.Fatalf("SUBACK on another device's inbox: %v, want 0x87 not authorized", e.Codes)
	}

	if code, _ := api(t, a, "POST", "/drain", ""); code != 202 {
		t.Fatalf("drain: %d", code)
	}
	if e := next("disconnect"); e.RC != 0x8B {
		t.Fatalf("drain ended the connection with %d, want DISCONNECT 0x8B (server shutting down)", e.RC)
	}
	for i := 0; i < 5; i++ {
		send(t, b, device, fmt.Sprintf("after-%d", i))
	}
	if e := next("connack"); e.RC != 0 || e.Server != "pod-b" || !e.SessionPresent {
		t.Fatalf("CONNACK after the drain %+v: want pod-b with the session present", e)
	}
	for len(got) < 10 {
		next("message")
	}
	for i := 0; i < 5; i++ {
		say(fmt.Sprintf("pub up-%d", i))
		next("puback")
	}
	if up := upstreamOf(t, r, device); strings.Join(up, " ") != "up-0 up-1 up-2 up-3 up-4" {
		t.Fatalf("upstream of the device: %q, want its 5 publishes once each", up)
	}
	eventually(t, "all acknowledged on pod-b", func() bool { return deviceInfo(t, b, device).Pending == 0 })
	for p, n := range got {
		if n != 1 {
			t.Errorf("%s received %d times; every message was acknowledged before the drain, so once", p, n)
		}
	}
}

// upstreamOf reads the payloads of device in the Redis upstream stream.
func upstreamOf(t *testing.T, r *redistest.Server, device string) []string {
	t.Helper()
	entries, err := r.Client().XRange(context.Background(), "t:upstream", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Values["device"] == device {
			out = append(out, fmt.Sprint(e.Values["payload"]))
		}
	}
	return out
}
