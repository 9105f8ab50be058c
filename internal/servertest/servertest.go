// Package servertest runs in-process socketservers for tests of any
// package, each shut down when its test ends.
package servertest

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// Start runs a socketserver with cfg on st until t ends.
func Start(t testing.TB, cfg socketserver.Config, st store.Store, log logr.Logger) *socketserver.Server {
	t.Helper()
	srv, err := socketserver.New(cfg, st, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv
}
