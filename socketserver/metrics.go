package socketserver

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

type metrics struct {
	reg         *prometheus.Registry
	connections *prometheus.GaugeVec
	hellos      *prometheus.CounterVec
	resumes     prometheus.Counter
	reclaims    prometheus.Counter
	fenced      prometheus.Counter
	warnings    prometheus.Gauge
	deliveries  prometheus.Counter
	acks        prometheus.Counter
	ackWrites   prometheus.Histogram
	publishes   *prometheus.CounterVec
	goaways     prometheus.Counter
	drains      prometheus.Counter
	shed        prometheus.Counter
	shedRefused prometheus.Counter
	errors      *prometheus.CounterVec
	closes      *prometheus.CounterVec
	storeErrors *prometheus.CounterVec
	enqueued    *prometheus.CounterVec
	redis       *prometheus.HistogramVec

	// Outbox backlog of the devices held here, as of the last audit.
	outboxPending prometheus.Gauge
	outboxOldest  prometheus.Gauge
	drainStarted  prometheus.Gauge
	drainDelay    prometheus.Gauge
	storeUp       prometheus.Gauge
	resumeFails   *prometheus.CounterVec
	helloLatency  prometheus.Histogram
}

// Label values seeded at start, so that every series a rule or a
// dashboard uses exists (at 0) before its first event, and rate() sees the
// first one.
var (
	helloResults   = append([]string{"accepted", "goaway"}, codeStrings()...)
	publishResults = []string{"stored", "duplicate", "failed"}
	storeOps       = []string{"ack", "audit", "enqueue", "pending", "reclaim", "stats"}
	backendStatus  = []string{"202", "413", "429", "503"}
	// Redis commands: scripts and pipelines carry every per-device operation.
	redisCommands = []string{"script", "pipeline"}
	// resumeFailureReasons: the store failed a HELLO that carried a
	// last_seq, or accepted it without a session to resume (the store lost it).
	resumeFailureReasons = []string{"unavailable", "session_lost"}
)

func codeStrings() []string {
	out := make([]string, len(protocol.Codes))
	for i, c := range protocol.Codes {
		out[i] = string(c)
	}
	return out
}

// newMetrics registers the metrics; transports seeds the label values of
// the connections gauge, so that every transport reports 0 before its first
// connection. draining and maxConns are read at scrape time.
func newMetrics(transports []string, draining func() bool, maxConns int, drainTimeout time.Duration) *metrics {
	const ns = "socketserver"
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "connections",
			Help: "Open device connections by transport."}, []string{"transport"}),
		hellos: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "hellos_total",
			Help: "HELLOs by result: accepted, goaway, or the ERROR code."}, []string{"result"}),
		resumes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "resumes_total",
			Help: "Accepted HELLOs that resumed an existing session."}),
		reclaims: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "sessions_reclaimed_total",
			Help: "Sessions of live connections restored after the store lost them."}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "takeover_notices_kept_total",
			Help: "Takeover notices for a device with no session here, kept for a connection that may still register."}),
		warnings: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "store_durability_warnings",
			Help: "Ways the store could lose acknowledged data (0 = none found)."}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "deliveries_total",
			Help: "DELIVER frames queued to devices."}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "acks_total",
			Help: "Cumulative ACKs applied to the store."}),
		ackWrites: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "ack_write_devices",
			Help:    "Devices whose ACKs one store write applied (the server writes many devices' ACKs together).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "publishes_total",
			Help: "PUBLISH frames by result: stored, duplicate, failed."}, []string{"result"}),
		goaways: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "goaways_total",
			Help: "GOAWAY frames sent."}),
		drains: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "drains_total",
			Help: "Drains started."}),
		shed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "shed_total",
			Help: "Sessions picked by POST /shed to move to other pods (rebalancing)."}),
		shedRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "shed_refused_hellos_total",
			Help: "HELLOs of devices not held here answered with GOAWAY because a shed refuses new devices while the server holds its target (also counted in hellos_total as goaway)."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "errors_total",
			Help: "ERROR frames sent, by code."}, []string{"code"}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "closes_total",
			Help: "Closed connections by reason."}, []string{"reason"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "store_errors_total",
			Help: "Store operations that failed, by operation."}, []string{"op"}),
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "backend_messages_total",
			Help: "Backend POSTs of device messages by HTTP status."}, []string{"status"}),
		redis: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "redis_command_seconds",
			Help: "Latency of Redis commands and pipelines.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)},
			[]string{"command"}),
		outboxPending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "outbox_pending_messages",
			Help: "Unacknowledged messages in the outboxes of the devices held here, as of the last session audit."}),
		outboxOldest: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "outbox_oldest_pending_seconds",
			Help: "Longest time a device held here has had unacknowledged messages without its ACK moving, as of the last session audit: a lower bound of its oldest pending message's age."}),
		drainStarted: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "drain_started_timestamp_seconds",
			Help: "Unix time the drain started, when the server became unready (0: not draining)."}),
		drainDelay: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "drain_delay_seconds",
			Help: "The drain's delay before its first GOAWAY, as asked when it started."}),
		storeUp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "store_up",
			Help: "1 when the last stats write to the store succeeded, 0 when it failed (every stats interval)."}),
		resumeFails: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "resume_failures_total",
			Help: "HELLOs carrying a last_seq that did not resume: unavailable (the store failed), session_lost (the store had no session to resume)."},
			[]string{"reason"}),
		helloLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "hello_seconds",
			Help:    "Time from a HELLO to its WELCOME being queued (token check and store), accepted HELLOs only.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	gaugeFunc := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, f)
	}
	m.reg.MustRegister(m.connections, m.hellos, m.resumes, m.reclaims, m.fenced, m.warnings, m.deliveries, m.acks, m.publishes, m.goaways,
		m.drains, m.shed, m.shedRefused, m.errors, m.closes, m.storeErrors, m.enqueued, m.redis,
		m.outboxPending, m.outboxOldest, m.drainStarted, m.drainDelay, m.storeUp, m.resumeFails, m.helloLatency,
		gaugeFunc("draining", "1 while the server drains (unready, in its delay or sending GOAWAYs).", func() float64 { return b2f(draining()) }),
		gaugeFunc("drain_timeout_seconds", "The drain timeout: connections that remain this long after the first GOAWAY are closed.",
			func() float64 { return drainTimeout.Seconds() }),
		gaugeFunc("max_connections", "Connections accepted before server_full (the configured limit, capped below the open-file limit; 0: none).",
			func() float64 { return float64(maxConns) }),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m.reg.MustRegister(m.ackWrites)
	seed := func(v interface {
		WithLabelValues(...string) prometheus.Counter
	}, values []string) {
		for _, x := range values {
			v.WithLabelValues(x)
		}
	}
	for _, t := range transports {
		m.connections.WithLabelValues(t)
	}
	seed(m.hellos, helloResults)
	seed(m.errors, codeStrings())
	seed(m.publishes, publishResults)
	seed(m.storeErrors, storeOps)
	seed(m.resumeFails, resumeFailureReasons)
	seed(m.enqueued, backendStatus)
	for _, c := range redisCommands {
		m.redis.WithLabelValues(c)
	}
	for _, r := range closeReasons {
		m.closes.WithLabelValues(r)
	}
	m.storeUp.Set(1)
	return m
}

// RedisHook returns a go-redis hook that feeds the Redis latency histogram.
func (s *Server) RedisHook() redis.Hook { return latencyHook{s.metrics.redis} }

type latencyHook struct{ h *prometheus.HistogramVec }

func (latencyHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l latencyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		t := time.Now()
		err := next(ctx, cmd)
		name := cmd.Name()
		if name == "evalsha" || name == "eval" {
			name = "script"
		}
		l.h.WithLabelValues(name).Observe(time.Since(t).Seconds())
		return err
	}
}

func (l latencyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		t := time.Now()
		err := next(ctx, cmds)
		l.h.WithLabelValues("pipeline").Observe(time.Since(t).Seconds())
		return err
	}
}
