// Command socketserver runs the data plane: device connections over TCP and
// WebSocket, sessions in Redis (or in memory without --redis-addr), the
// backend API, and graceful drain. `socketserver drain` asks a running
// server to drain and waits (used as the pod's preStop hook).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/socketserver"
	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "drain" {
		os.Exit(drainCommand(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:]))
}

type options struct {
	cfg                                        socketserver.Config
	redisAddr, redisPrefix, redisMode          string
	redisMasterName, redisUser, redisPass      string
	redisTLS                                   bool
	authKeyFile, apiTokenFile, tlsCert, tlsKey string
	logFormat                                  string
	logVerbosity, redisPoolSize                int
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("socketserver", flag.ContinueOnError)
	c := &o.cfg
	d := socketserver.DefaultConfig()
	fs.StringVar(&c.TCPAddr, "tcp-addr", d.TCPAddr, "TCP listener for devices (length-prefixed frames); empty disables")
	fs.StringVar(&c.WSAddr, "ws-addr", d.WSAddr, "WebSocket listener for devices (GET /ws, and GET /sse unless --sse-enabled=false); empty disables")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", d.GRPCAddr, "gRPC listener for devices (scp.v1.Device/Connect); empty disables")
	fs.StringVar(&c.MQTTAddr, "mqtt-addr", d.MQTTAddr, "MQTT 3.1.1 and 5.0 listener for devices (e.g. :1883; client id = device, password = token); empty disables")
	fs.BoolVar(&c.GRPCReflection, "grpc-reflection", d.GRPCReflection, "offer gRPC server reflection on the gRPC listener (for tools such as grpcurl)")
	var sseEnabled bool
	fs.BoolVar(&sseEnabled, "sse-enabled", !d.DisableSSE, "serve Server-Sent Events (GET /sse, POST /sse/ack, /sse/publish) on the WebSocket listener")
	fs.StringVar(&c.AdminAddr, "admin-addr", d.AdminAddr, "backend API, probes and metrics; never expose publicly")
	fs.StringVar(&o.redisAddr, "redis-addr", "", "Redis address(es), comma-separated; empty runs on an embedded in-process store (single server)")
	fs.StringVar(&o.redisPrefix, "redis-prefix", "scp", "prefix of every Redis key")
	fs.StringVar(&o.redisMode, "redis-mode", "", "standalone, sentinel or cluster (default: standalone for one address, cluster for several, sentinel with --redis-master-name)")
	fs.StringVar(&o.redisMasterName, "redis-master-name", "", "Sentinel master name")
	fs.StringVar(&o.redisUser, "redis-username", "", "Redis ACL user")
	fs.StringVar(&o.redisPass, "redis-password", "", "Redis password (prefer env SOCKETSERVER_REDIS_PASSWORD)")
	fs.BoolVar(&o.redisTLS, "redis-tls", false, "connect to Redis over TLS")
	fs.IntVar(&o.redisPoolSize, "redis-pool-size", 128, "Redis connections per node; every in-flight HELLO, ACK or PUBLISH holds one")
	fs.StringVar(&c.ServerName, "pod-name", firstNonEmpty(os.Getenv("POD_NAME"), host), "this server's name in the cluster (env POD_NAME)")
	fs.StringVar(&o.authKeyFile, "auth-key-file", "", "file holding the HS256 device key")
	fs.BoolVar(&c.InsecureNoAuth, "insecure-no-auth", false, "accept any token (development only)")
	fs.BoolVar(&c.AllowTokensWithoutExp, "allow-tokens-without-exp", false, "accept device tokens without an exp claim")
	fs.StringVar(&o.apiTokenFile, "api-token-file", "", "file holding the bearer token of the backend API, /drain and /debug/pprof (required unless --insecure-no-api-auth)")
	fs.BoolVar(&c.InsecureNoAPIAuth, "insecure-no-api-auth", false, "serve the backend API without a token when --api-token-file is not given (development only)")
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", d.HeartbeatInterval, "how often devices must PING")
	fs.DurationVar(&c.HeartbeatTimeout, "heartbeat-timeout", 0, "silence after which a device is dropped (default 3 x interval)")
	fs.DurationVar(&c.HelloTimeout, "hello-timeout", d.HelloTimeout, "time from accept to HELLO")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", d.DrainTimeout, "longest drain; remaining connections are closed then")
	fs.Float64Var(&c.DrainRate, "drain-rate", 0, "GOAWAYs per second while draining (0 = spread over 80% of the drain timeout)")
	fs.DurationVar(&c.DrainJitter, "drain-jitter", d.DrainJitter, "upper bound of the reconnect delay hinted in GOAWAY")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", d.MaxFrameBytes, "largest frame (type byte + body)")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "connection limit (0 = as many as open files allow)")
	fs.IntVar(&c.MaxHandshakes, "max-handshakes", d.MaxHandshakes, "TLS (TCP, WebSocket, gRPC) and WebSocket handshakes in progress at a time; more wait in the listen backlog")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "time from accept to a completed TLS or WebSocket handshake (at most --hello-timeout)")
	fs.IntVar(&c.MaxPending, "max-pending", d.MaxPending, "unacknowledged messages per device before the backend gets 429")
	fs.Int64Var(&c.MaxPendingBytes, "max-pending-bytes", d.MaxPendingBytes, "unacknowledged payload bytes per device before the backend gets 429 (0 = unbounded)")
	fs.DurationVar(&c.IdempotencyWindow, "idempotency-window", d.IdempotencyWindow, "how long a backend's Idempotency-Key is remembered per device")
	fs.StringVar(&o.tlsCert, "tls-cert-file", "", "TLS certificate for the device listeners (TCP, WebSocket, gRPC)")
	fs.StringVar(&o.tlsKey, "tls-key-file", "", "TLS key for the device listeners")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.IntVar(&o.logVerbosity, "v", 0, "log verbosity (1 = per-connection events)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := applyEnv(fs); err != nil {
		return nil, err
	}
	c.DisableSSE = !sseEnabled
	return o, nil
}

// applyEnv fills every flag not given on the command line from
// SOCKETSERVER_<FLAG_IN_CAPS>, so the same names work in pod specs.
func applyEnv(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "SOCKETSERVER_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return err
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func newLogger(format string, verbosity int) logr.Logger {
	opts := &slog.HandlerOptions{Level: slog.Level(-verbosity)}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return logr.FromSlogHandler(h)
}

func readSecretFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return []byte(strings.TrimRight(string(b), " \t\r\n")), nil
}

func (o *options) openStore() (store.Store, redis.UniversalClient, error) {
	if o.redisAddr == "" {
		return store.NewMemory(), nil, nil
	}
	addrs := strings.Split(o.redisAddr, ",")
	opts := &redis.UniversalOptions{
		Addrs: addrs, MasterName: o.redisMasterName, Username: o.redisUser, Password: o.redisPass,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		MaxRetries: 1, PoolTimeout: 2 * time.Second, PoolSize: o.redisPoolSize,
		// Let the server's per-operation deadlines bound Redis calls too.
		ContextTimeoutEnabled: true,
		// Commands and replies are small; the 32 KiB defaults would cost
		// 8 MiB over a full pool. Pipelines have their own pool and buffers.
		ReadBufferSize: 8 << 10, WriteBufferSize: 8 << 10,
	}
	if o.redisTLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	var rdb redis.UniversalClient
	switch mode := o.redisMode; {
	case mode == "cluster" || (mode == "" && len(addrs) > 1 && o.redisMasterName == ""):
		rdb = redis.NewClusterClient(opts.Cluster())
	case mode == "sentinel" || (mode == "" && o.redisMasterName != ""):
		if o.redisMasterName == "" {
			return nil, nil, fmt.Errorf("--redis-mode=sentinel needs --redis-master-name")
		}
		rdb = redis.NewFailoverClient(opts.Failover())
	case mode == "standalone" || mode == "":
		if len(addrs) != 1 {
			return nil, nil, fmt.Errorf("standalone Redis takes one address, got %d", len(addrs))
		}
		rdb = redis.NewClient(opts.Simple())
	default:
		return nil, nil, fmt.Errorf("unknown --redis-mode %q", mode)
	}
	return store.NewRedis(rdb, o.redisPrefix), rdb, nil
}

func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		return 2
	}
	log := newLogger(o.logFormat, o.logVerbosity)
	fail := func(err error) int { log.Error(err, "cannot start"); return 1 }
	if o.cfg.AuthKey, err = readSecretFile(o.authKeyFile); err != nil {
		return fail(err)
	}
	token, err := readSecretFile(o.apiTokenFile)
	if err != nil {
		return fail(err)
	}
	switch {
	case o.apiTokenFile != "" && len(token) == 0:
		log.Error(nil, "cannot start: the file of --api-token-file is empty or only whitespace", "file", o.apiTokenFile)
		return 2
	case o.apiTokenFile == "" && !o.cfg.InsecureNoAPIAuth:
		log.Error(nil, "cannot start: the backend API needs a bearer token: give --api-token-file, or --insecure-no-api-auth to leave it open (development only)")
		return 2
	}
	o.cfg.APIToken = string(token)
	if o.tlsCert != "" || o.tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fail(err)
		}
		o.cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	st, rdb, err := o.openStore()
	if err != nil {
		return fail(err)
	}
	defer st.Close()
	srv, err := socketserver.New(o.cfg, st, log)
	if err != nil {
		return fail(err)
	}
	if rdb != nil {
		rdb.AddHook(srv.RedisHook())
		log.Info("store: redis", "addr", o.redisAddr, "prefix", o.redisPrefix)
	} else {
		log.Info("store: embedded in-process (single server; use --redis-addr for a cluster)")
	}
	if err := srv.Start(); err != nil {
		return fail(err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Info("signal received: draining", "signal", s.String())
	select {
	case <-srv.Drain():
	case s = <-sig:
		log.Info("second signal: stopping now", "signal", s.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Error(err, "shutdown")
	}
	log.Info("stopped")
	return 0
}

// drainCommand asks the server on --admin-addr to drain and waits until it
// has no connection left (the server bounds the wait by --delay plus its
// drain timeout). The server turns unready at once and sends its first
// GOAWAY after --delay.
func drainCommand(args []string) int {
	fs := flag.NewFlagSet("socketserver drain", flag.ContinueOnError)
	addr := fs.String("admin-addr", "127.0.0.1:9090", "admin address of the server to drain")
	tokenFile := fs.String("api-token-file", "", "file holding the backend API token")
	delay := fs.Duration("delay", 0, "how long the server stays up, unready, before its first GOAWAY (the load balancer's time to stop sending it new connections)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := applyEnv(fs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad --admin-addr:", err)
		return 2
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	token, err := readSecretFile(*tokenFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	api := adminapi.Client{BaseURL: net.JoinHostPort(host, port), Token: string(token)}
	remaining, err := api.DrainAfter(context.Background(), *delay, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "drain:", err)
		return 1
	}
	fmt.Printf("drain: done, %d connections remaining\n", remaining)
	return 0
}
