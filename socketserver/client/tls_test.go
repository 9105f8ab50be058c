package client_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/socketcluster/socketcluster/internal/testcert"
	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/client"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func TestTLS(t *testing.T) {
	cert, pool := testcert.SelfSigned(t)
	s := startServer(t, "server-a", store.NewMemory(), func(c *socketserver.Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	for name, addr := range map[string]string{"tls": s.Addrs().TCP, "wss": "wss://" + s.Addrs().WS + "/ws",
		"https": "https://" + s.Addrs().WS + "/sse", "grpcs": "grpcs://" + s.Addrs().GRPC,
		"mqtts": "mqtts://" + s.Addrs().MQTT} {
		t.Run(name, func(t *testing.T) {
			device := "pos-" + name
			d := runDevice(t, client.Config{Addr: addr, Device: device, TLS: &tls.Config{RootCAs: pool}})
			d.waitConnected(t, 1)
			post(t, s, device, "m1")
			assertInOrder(t, d, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := d.Publish(ctx, []byte("over TLS")); err != nil {
				t.Fatal(err)
			}
		})
	}
}
