package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os/signal"
	"syscall"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/client"
)

// A device that prints what the backend sends and reports a sale.
func Example() {
	key, err := client.LoadKey("/etc/device/key")
	if err != nil {
		log.Fatal(err)
	}
	c := client.New(client.Config{
		Addr:      "wss://devices.example.com/ws",
		Device:    "store-1004",
		TokenFunc: client.KeyTokenFunc(key, "store-1004", time.Hour),
		OnMessage: func(seq uint64, payload []byte) { fmt.Printf("seq=%d %s\n", seq, payload) },
		OnEvent: func(ev client.Event) {
			if ev.Type == client.EventDisconnected {
				log.Printf("disconnected (%s), retrying in %s", ev.Reason, ev.Wait)
			}
		},
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		id, err := c.Publish(ctx, []byte(`{"sale":42}`))
		log.Printf("sale stored as id %d: %v", id, err)
	}()
	if err := c.Run(ctx); errors.Is(err, client.ErrTakenOver) {
		log.Fatal("another process runs as this device")
	}
}
