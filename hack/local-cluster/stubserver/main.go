// Command stubserver stands in for cmd/socketserver in the cluster image while
// that command does not exist yet: it answers the admin probes on
// --admin-addr and accepts (and ignores) the server's other flags.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	fs := flag.NewFlagSet("stubserver", flag.ContinueOnError)
	admin := fs.String("admin-addr", ":9090", "admin listener")
	fs.Bool("insecure-no-auth", false, "ignored")
	fs.String("redis-addr", "", "ignored")
	// Unknown flags are not fatal: the stub only needs the admin address.
	_ = fs.Parse(os.Args[1:])

	ok := func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }
	http.HandleFunc("GET /healthz", ok)
	http.HandleFunc("GET /readyz", ok)
	srv := &http.Server{Addr: *admin}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		srv.Shutdown(context.Background())
	}()
	log.Printf("listening admin=%s", *admin)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}
