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
	ctx, cancel := s.storeCtx(r)
	seq, err := s.store.Enqueue(ctx, device, payload, s.cfg.MaxPending)
	cancel()
	switch {
	case errors.Is(err, store.ErrOutboxFull):
		s.metrics.enqueued.WithLabelValues("429").Inc()
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": "outbox_full"})
	case err != nil:
		s.metrics.enqueued.WithLabelValues("503").Inc()
		s.metrics.storeErrors.WithLabelValues("enqueue").Inc()
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "unavailable", "message": err.Error()})
	default:
		s.metrics.enqueued.WithLabelValues("202").Inc()
		writeJSON(w, http.StatusAccepted, map[string]uint64{"seq": seq})
	}
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
