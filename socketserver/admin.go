package socketserver

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// adminHandler serves the backend API and the probes. It listens on the
// admin address only, never on the public listeners.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices/{device}/messages", s.guard(s.postMessage))
	mux.HandleFunc("POST /v1/messages", s.guard(s.postMessages))
	mux.HandleFunc("GET /v1/devices/{device}", s.guard(s.getDevice))
	mux.HandleFunc("PUT /v1/devices/{device}/state", s.guard(s.putState))
	mux.HandleFunc("POST /drain", s.guard(s.postDrain))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	// Profiles of a live pod, behind the API token like the rest of the API.
	mux.HandleFunc("GET /debug/pprof/", s.guard(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", s.guard(pprof.Profile))
	return mux
}

func (s *Server) guard(h http.HandlerFunc) http.HandlerFunc {
	if s.cfg.APIToken == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.APIToken)
	return func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized"})
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func deviceParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	d := r.PathValue("device")
	if !protocol.ValidDevice(d) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_device",
			"message": "device must be 1-128 characters of [A-Za-z0-9._:-]"})
		return "", false
	}
	return d, true
}

func (s *Server) storeCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
}

func (s *Server) postMessage(w http.ResponseWriter, r *http.Request) {
	device, ok := deviceParam(w, r)
	if !ok {
		return
	}
	maxPayload := s.cfg.MaxFrameBytes - 9
	payload, err := io.ReadAll(io.LimitReader(r.Body, int64(maxPayload)+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_body", "message": err.Error()})
		return
	}
	if len(payload) > maxPayload {
		s.metrics.enqueued.WithLabelValues("413").Inc()
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "too_large",
			"message": fmt.Sprintf("payload exceeds %d bytes (max frame bytes %d minus 9)", maxPayload, s.cfg.MaxFrameBytes)})
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if _, ok := r.Header["Idempotency-Key"]; ok && !validKey(key) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_key", "message": badKeyMessage})
		return
	}
	ctx, cancel := s.storeCtx(r)
	res := s.enqueue(ctx, device, []store.Outgoing{{Payload: payload, Key: key}})[0]
	cancel()
	if res.Error == "unavailable" {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, res.status, res)
}

const badKeyMessage = "an idempotency key is 1-128 printable ASCII characters"

// validKey: 1-128 printable ASCII characters.
func validKey(k string) bool {
	if len(k) == 0 || len(k) > 128 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

// enqueued is the answer for one message, alone or in a batch.
type enqueued struct {
	Seq       uint64 `json:"seq,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Error     string `json:"error,omitempty"`
	Message   string `json:"message,omitempty"`
	status    int
}

// enqueue stores a device's messages in order as one store operation and
// answers each; ctx carries the request's deadline.
func (s *Server) enqueue(ctx context.Context, device string, msgs []store.Outgoing) []enqueued {
	stored, err := s.store.EnqueueBatch(ctx, device, msgs, store.Limits{MaxPending: s.cfg.MaxPending,
		MaxPendingBytes: s.cfg.MaxPendingBytes, KeyTTL: s.cfg.IdempotencyWindow})
	full := errors.Is(err, store.ErrOutboxFull)
	if err != nil && !full {
		s.metrics.storeErrors.WithLabelValues("enqueue").Inc()
	}
	n := len(stored)
	res := make([]enqueued, len(msgs))
	for i := range res {
		switch {
		case i < n:
			res[i] = enqueued{Seq: stored[i].Seq, Duplicate: stored[i].Duplicate, status: http.StatusAccepted}
		case full && i == n:
			res[i] = enqueued{Error: "outbox_full", status: http.StatusTooManyRequests}
		case full:
			// Storing later ones would reorder them when the backend retries.
			res[i] = enqueued{Error: "not_attempted", Message: "an earlier message to this device in the batch was not stored"}
			continue
		default: // the device's messages were stored all together or not at all
			res[i] = enqueued{Error: "unavailable", Message: err.Error(), status: http.StatusServiceUnavailable}
		}
		s.metrics.enqueued.WithLabelValues(strconv.Itoa(res[i].status)).Inc()
	}
	return res
}

// maxBatch bounds the messages of one POST /v1/messages.
const maxBatch = 1000

// postMessages stores a batch of messages for many devices: a backend that
// sends thousands per second makes one request per batch instead of one
// per message, and the store pipelines the batch. Each message gets its
// own answer, in order; 200 means the batch was read, not that every
// message was stored.
func (s *Server) postMessages(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages []struct {
			Device  string `json:"device"`
			Payload []byte `json:"payload"` // base64 in JSON
			Key     string `json:"key"`
		} `json:"messages"`
	}
	limit := int64(maxBatch) * int64(s.cfg.MaxFrameBytes*4/3+64)
	if err := json.NewDecoder(io.LimitReader(r.Body, limit)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_body",
			"message": `want {"messages":[{"device":"…","payload":"<base64>"},…]}: ` + err.Error()})
		return
	}
	if len(req.Messages) > maxBatch {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "too_many",
			"message": fmt.Sprintf("%d messages in one batch; at most %d", len(req.Messages), maxBatch)})
		return
	}
	// Devices in parallel (the store pipelines them), each device's
	// messages in order in one store operation.
	results := make([]enqueued, len(req.Messages))
	byDevice := map[string][]int{}
	for i, m := range req.Messages {
		switch {
		case !protocol.ValidDevice(m.Device):
			results[i] = enqueued{Error: "bad_device", Message: "device must be 1-128 characters of [A-Za-z0-9._:-]"}
		case m.Key != "" && !validKey(m.Key):
			results[i] = enqueued{Error: "bad_key", Message: badKeyMessage}
		case len(m.Payload) > s.cfg.MaxFrameBytes-9:
			s.metrics.enqueued.WithLabelValues("413").Inc()
			results[i] = enqueued{Error: "too_large", Message: fmt.Sprintf("payload exceeds %d bytes", s.cfg.MaxFrameBytes-9)}
		default:
			byDevice[m.Device] = append(byDevice[m.Device], i)
		}
	}
	ctx, cancel := s.storeCtx(r)
	defer cancel()
	var wg sync.WaitGroup
	for device, idx := range byDevice {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]store.Outgoing, len(idx))
			for k, i := range idx {
				msgs[k] = store.Outgoing{Payload: req.Messages[i].Payload, Key: req.Messages[i].Key}
			}
			for k, res := range s.enqueue(ctx, device, msgs) {
				results[idx[k]] = res
			}
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, map[string][]enqueued{"results": results})
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	device, ok := deviceParam(w, r)
	if !ok {
		return
	}
	ctx, cancel := s.storeCtx(r)
	info, err := s.store.Device(ctx, device)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found"})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "unavailable", "message": err.Error()})
	default:
		writeJSON(w, http.StatusOK, info)
	}
}

func (s *Server) putState(w http.ResponseWriter, r *http.Request) {
	device, ok := deviceParam(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(s.cfg.MaxFrameBytes)+1))
	var obj map[string]json.RawMessage
	if err != nil || len(body) > s.cfg.MaxFrameBytes || json.Unmarshal(body, &obj) != nil || obj == nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_state",
			"message": fmt.Sprintf("state must be a JSON object of at most %d bytes", s.cfg.MaxFrameBytes)})
		return
	}
	ctx, cancel := s.storeCtx(r)
	err = s.store.SetState(ctx, device, body)
	cancel()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "unavailable", "message": err.Error()})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) postDrain(w http.ResponseWriter, r *http.Request) {
	done := s.Drain()
	if wait, _ := strconv.ParseBool(r.URL.Query().Get("wait")); !wait {
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "draining"})
		return
	}
	select {
	case <-done:
	case <-r.Context().Done():
		return
	}
	// Closed connections finish their teardown a moment after the drain ends.
	for i := 0; i < 20 && s.Connections() > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	writeJSON(w, http.StatusOK, map[string]int{"remaining": s.Connections()})
}
