package socketserver

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// sseUpstream serves what SSE devices send: ACK and PUBLISH as POSTs that
// any server accepts, checked against the session epoch in the store, so
// they need not reach the server holding the stream. These are short
// requests, so net/http serves them, keep-alive included.
type sseUpstream struct {
	srv *http.Server
	l   *connListener
}

func (s *Server) startSSEUpstream() {
	u := &sseUpstream{l: newConnListener()}
	u.srv = &http.Server{Handler: http.HandlerFunc(s.serveSSEUpstream),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout, ReadTimeout: 15 * time.Second, WriteTimeout: 15 * time.Second,
		IdleTimeout: 30 * time.Second, MaxHeaderBytes: maxRequestHead,
		ErrorLog: log.New(io.Discard, "", 0)}
	s.sseUp = u
	go func() { _ = u.srv.Serve(u.l) }()
}

// handoff gives a connection whose head the HTTP listener read to net/http.
func (u *sseUpstream) handoff(c net.Conn) {
	_ = c.SetDeadline(time.Time{})
	u.l.push(c)
}

func (u *sseUpstream) close() {
	_ = u.srv.Close()
	_ = u.l.Close()
}

func (s *Server) serveSSEUpstream(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
		h.Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.URL.Path == "/sse" && r.Method == http.MethodGet {
		s.serveHijackedSSE(w, r)
		return
	}
	ack := r.URL.Path == "/sse/ack"
	if !ack && r.URL.Path != "/sse/publish" {
		sseError(w, protocol.Errorf(protocol.CodeBadFrame, "not found: devices POST to /sse/ack and /sse/publish"), http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		h.Set("Allow", "POST, OPTIONS")
		sseError(w, protocol.Errorf(protocol.CodeBadFrame, "use POST"), http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	token := requestToken(r)
	device := q.Get("device")
	if device == "" {
		device = subjectOf(token)
	}
	if !protocol.ValidDevice(device) {
		sseError(w, protocol.Errorf(protocol.CodeBadFrame, "device must be 1-128 characters of [A-Za-z0-9._:-]"), 0)
		return
	}
	if err := s.auth.verify(device, token); err != nil {
		sseError(w, protocol.Errorf(protocol.CodeUnauthorized, "%v", err), 0)
		return
	}
	param := "id"
	if ack {
		param = "seq"
	}
	epoch, ok1 := parseUint(q.Get("epoch"), true)
	n, ok2 := parseUint(q.Get(param), true)
	if !ok1 || !ok2 || epoch == 0 {
		sseError(w, protocol.Errorf(protocol.CodeBadFrame, "epoch (the session_epoch of the welcome) and %s are required decimal numbers", param), 0)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
	defer cancel()
	if ack {
		if err := s.store.Ack(ctx, device, epoch, n); err != nil {
			s.metrics.storeErrors.WithLabelValues("ack").Inc()
			sseError(w, storeError(err), 0)
			return
		}
		s.metrics.acks.Inc()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	limit := s.cfg.MaxFrameBytes - 9 // a DELIVER's or PUBLISH's header
	payload, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	switch {
	case err != nil:
		sseError(w, protocol.Errorf(protocol.CodeBadFrame, "reading the payload: %v", err), 0)
		return
	case len(payload) > limit:
		sseError(w, protocol.Errorf(protocol.CodeFrameTooLarge, "payload above %d bytes (--max-frame-bytes minus 9)", limit), 0)
		return
	}
	dup, err := s.store.Publish(ctx, device, epoch, n, payload)
	if err != nil {
		s.metrics.publishes.WithLabelValues("failed").Inc()
		sseError(w, storeError(err), 0)
		return
	}
	result := "stored"
	if dup {
		result = "duplicate"
	}
	s.metrics.publishes.WithLabelValues(result).Inc()
	h.Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"id":` + strconv.FormatUint(n, 10) + `,"duplicate":` + strconv.FormatBool(dup) + "}"))
}

// storeError is how a failed ACK or PUBLISH is answered: fenced by a
// newer HELLO, or retry (a lost session is restored by its holder).
func storeError(err error) error {
	switch {
	case errors.Is(err, store.ErrFenced):
		return protocol.Errorf(protocol.CodeSessionTakenOver, "a newer connection of this device took the session")
	case errors.Is(err, store.ErrLost):
		return protocol.Errorf(protocol.CodeUnavailable, "the session is being restored; retry")
	}
	return protocol.Errorf(protocol.CodeUnavailable, "session store unavailable; retry later")
}

// sseError answers with the ERROR body as JSON; status 0 takes the code's.
func sseError(w http.ResponseWriter, err error, status int) {
	code := protocol.CodeOf(err)
	if status == 0 {
		status = httpStatusOf(code)
	}
	var retry int64
	if code == protocol.CodeUnavailable {
		retry = retryAfter()
		w.Header().Set("Retry-After", strconv.FormatInt((retry+999)/1000, 10))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(protocol.MustJSON(protocol.ErrorBody{Code: code, Message: errMessage(err), RetryAfterMs: retry}))
}
