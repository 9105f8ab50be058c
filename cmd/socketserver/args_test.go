package main

import (
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/socketcluster/socketcluster/api/v1alpha1"
	"github.com/socketcluster/socketcluster/controllers/resources"
)

// The operator's arguments for a SocketCluster that sets every option the
// server takes, parsed with the server's own flag set: a flag the server
// does not know, or a value it reads differently, fails here, not in a pod.
func TestOperatorArgumentsParse(t *testing.T) {
	var sc v1alpha1.SocketCluster
	err := yaml.UnmarshalStrict([]byte(`
metadata: {name: fleet, namespace: prod}
spec:
  listeners:
    tcp: {port: 7001}
    websocket: {port: 8443}
    sse: {enabled: false}
    grpc: {enabled: true, port: 50051}
    adminPort: 9091
    tls: {secretName: fleet-tls}
  redis:
    mode: sentinel
    masterName: mymaster
    addresses: ["s-0:26379", "s-1:26379"]
    keyPrefix: fleet
    tls: true
  auth:
    deviceKeySecretRef: {name: fleet-device-key, key: hs256}
    apiTokenSecretRef: {name: fleet-api-token, key: token}
  heartbeat: {interval: 10s, timeout: 35s}
  drain: {timeout: 120s, rate: 50, jitter: 20s}
  maxFrameBytes: 131072
  maxConnectionsPerPod: 50000
  maxPendingPerDevice: 500
`), &sc)
	if err != nil {
		t.Fatal(err)
	}
	args := resources.Args(&sc)
	o, err := parseFlags(args)
	if err != nil {
		t.Fatalf("the server refuses the operator's arguments %q: %v", args, err)
	}
	c := o.cfg
	for _, f := range []struct {
		name      string
		got, want any
	}{
		{"tcp addr", c.TCPAddr, ":7001"},
		{"ws addr", c.WSAddr, ":8443"},
		{"sse disabled", c.DisableSSE, true},
		{"grpc addr", c.GRPCAddr, ":50051"},
		{"admin addr", c.AdminAddr, ":9091"},
		{"redis addr", o.redisAddr, "s-0:26379,s-1:26379"},
		{"redis mode", o.redisMode, "sentinel"},
		{"redis master", o.redisMasterName, "mymaster"},
		{"redis prefix", o.redisPrefix, "fleet"},
		{"redis tls", o.redisTLS, true},
		{"heartbeat interval", c.HeartbeatInterval, 10 * time.Second},
		{"heartbeat timeout", c.HeartbeatTimeout, 35 * time.Second},
		{"drain timeout", c.DrainTimeout, 120 * time.Second},
		{"drain rate", c.DrainRate, 50.0},
		{"drain jitter", c.DrainJitter, 20 * time.Second},
		{"max frame bytes", c.MaxFrameBytes, 131072},
		{"max connections", c.MaxConnections, 50000},
		{"max pending", c.MaxPending, 500},
		{"insecure no auth", c.InsecureNoAuth, false},
		{"insecure no api auth", c.InsecureNoAPIAuth, false},
	} {
		if f.got != f.want {
			t.Errorf("%s: the server reads %v, want %v (args %q)", f.name, f.got, f.want, args)
		}
	}
	for _, f := range []struct{ name, got string }{
		{"--auth-key-file", o.authKeyFile}, {"--api-token-file", o.apiTokenFile},
		{"--tls-cert-file", o.tlsCert}, {"--tls-key-file", o.tlsKey},
	} {
		if f.got == "" {
			t.Errorf("%s not given (args %q)", f.name, args)
		}
	}

	// SSE is on when the spec leaves it on: the operator then passes no
	// flag, and the server's default must serve it.
	sc.Spec.Listeners.SSE.Enabled = nil
	args = resources.Args(&sc)
	if o, err = parseFlags(args); err != nil {
		t.Fatalf("the server refuses the operator's arguments %q: %v", args, err)
	}
	if o.cfg.DisableSSE {
		t.Errorf("SSE disabled by the arguments %q of a spec that enables it", args)
	}
}

// --sse-enabled defaults to true and, like every flag, can come from the
// environment.
func TestSSEFlag(t *testing.T) {
	for _, tc := range []struct {
		name, env string
		args      []string
		disabled  bool
	}{
		{"default", "", nil, false},
		{"off", "", []string{"--sse-enabled=false"}, true},
		{"on", "", []string{"--sse-enabled"}, false},
		{"off from env", "false", nil, true},
		{"flag wins over env", "false", []string{"--sse-enabled=true"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("SOCKETSERVER_SSE_ENABLED", tc.env)
			}
			o, err := parseFlags(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if o.cfg.DisableSSE != tc.disabled {
				t.Errorf("DisableSSE %v, want %v", o.cfg.DisableSSE, tc.disabled)
			}
		})
	}
}
