package socketserver

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

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
	publishes   *prometheus.CounterVec
	goaways     prometheus.Counter
	drains      prometheus.Counter
	shed        prometheus.Counter
	errors      *prometheus.CounterVec
	closes      *prometheus.CounterVec
	storeErrors *prometheus.CounterVec
	enqueued    *prometheus.CounterVec
	redis       *prometheus.HistogramVec
}

// newMetrics registers the metrics; transports seeds the label values of
// the connections gauge, so that every transport reports 0 before its first
// connection.
func newMetrics(transports []string) *metrics {
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
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "publishes_total",
			Help: "PUBLISH frames by result: stored, duplicate, failed."}, []string{"result"}),
		goaways: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "goaways_total",
			Help: "GOAWAY frames sent."}),
		drains: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "drains_total",
			Help: "Drains started."}),
		shed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "shed_total",
			Help: "Sessions picked by POST /shed to move to other pods (rebalancing)."}),
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
	}
	m.reg.MustRegister(m.connections, m.hellos, m.resumes, m.reclaims, m.fenced, m.warnings, m.deliveries, m.acks, m.publishes, m.goaways,
		m.drains, m.shed, m.errors, m.closes, m.storeErrors, m.enqueued, m.redis,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	for _, t := range transports {
		m.connections.WithLabelValues(t)
	}
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
