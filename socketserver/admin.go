package socketserver

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/socketcluster/socketcluster/socketserver/adminapi"
	"github.com/socketcluster/socketcluster/socketserver/protocol"
	"github.com/socketcluster/socketcluster/socketserver/store"
)

// adminHandler serves the backend API and the probes. It listens on the
// admin address only, never on the public listeners.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	batches := make(chan struct{}, maxConcurrentBatches)
	mux.HandleFunc("POST /v1/devices/{device}/messages", s.guard(s.postMessage))
	mux.HandleFunc("POST "+adminapi.PathMessages, s.guard(limitBatches(batches, s.postMessages)))
	mux.HandleFunc("GET /v1/devices/{device}", s.guard(s.getDevice))
	mux.HandleFunc("PUT /v1/devices/{device}/state", s.guard(s.putState))
	mux.HandleFunc("GET "+adminapi.PathUpstream, s.guard(s.getUpstream))
	mux.HandleFunc("POST "+adminapi.PathUpstreamAck, s.guard(s.ackUpstream))
	mux.HandleFunc("POST "+adminapi.PathDrain, s.guard(s.postDrain))
	mux.HandleFunc("POST "+adminapi.PathShed, s.guard(s.postShed))
	mux.HandleFunc("GET "+adminapi.PathServer, s.guard(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, adminapi.ServerInfo{Name: s.cfg.ServerName, Connections: s.Connections(), Draining: s.Draining()})
	}))
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

// guard requires the API token. New refuses a server without one unless
// InsecureNoAPIAuth is set; only then is the API open.
func (s *Server) guard(h http.HandlerFunc) http.HandlerFunc {
	if s.cfg.APIToken == "" {
		return h
	}
	want := []byte("Bearer " + s.cfg.APIToken)
	return func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, http.StatusUnauthorized, adminapi.CodeUnauthorized, "this API needs Authorization: Bearer <the token of --api-token-file>")
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, adminapi.ErrorBody{Error: code, Message: msg})
}

const badDeviceMessage = "device must be 1-128 characters of [A-Za-z0-9._:-]"

func deviceParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	d := r.PathValue("device")
	if !protocol.ValidDevice(d) {
		writeError(w, http.StatusBadRequest, adminapi.CodeBadDevice, badDeviceMessage)
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
	key := r.Header.Get(adminapi.HeaderIdempotencyKey)
	if _, ok := r.Header[adminapi.HeaderIdempotencyKey]; ok && !adminapi.ValidKey(key) {
		writeError(w, http.StatusBadRequest, adminapi.CodeBadKey, adminapi.KeyRule)
		return
	}
	maxPayload := s.cfg.MaxFrameBytes - 9
	payload, err := io.ReadAll(io.LimitReader(r.Body, int64(maxPayload)+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, adminapi.CodeBadBody, err.Error())
		return
	}
	if len(payload) > maxPayload {
		s.metrics.enqueued.WithLabelValues("413").Inc()
		writeError(w, http.StatusRequestEntityTooLarge, adminapi.CodeTooLarge,
			fmt.Sprintf("payload exceeds %d bytes (max frame bytes %d minus 9)", maxPayload, s.cfg.MaxFrameBytes))
		return
	}
	ctx, cancel := s.storeCtx(r)
	res := s.enqueue(ctx, device, []store.Outgoing{{Payload: payload, Key: key}})[0]
	cancel()
	if res.status != http.StatusAccepted {
		if res.Error == adminapi.CodeUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, res.status, res.Error, res.Message)
		return
	}
	writeJSON(w, http.StatusAccepted, adminapi.SendResult{Seq: res.Seq, Duplicate: res.Duplicate})
}

// enqueued is the answer for one message, alone or in a batch.
type enqueued struct {
	adminapi.BatchResult
	status int
}

// enqueue stores a device's messages in order as one store operation and
// answers each; ctx carries the request's deadline.
func (s *Server) enqueue(ctx context.Context, device string, msgs []store.Outgoing) []enqueued {
	stored, err := s.store.EnqueueBatch(ctx, device, msgs, s.limits())
	return s.answer(msgs, stored, err)
}

func (s *Server) limits() store.Limits {
	return store.Limits{MaxPending: s.cfg.MaxPending, MaxPendingBytes: s.cfg.MaxPendingBytes, KeyTTL: s.cfg.IdempotencyWindow}
}

// answer turns what the store answered for a device's messages into the
// answer of each.
func (s *Server) answer(msgs []store.Outgoing, stored []store.Stored, err error) []enqueued {
	full := errors.Is(err, store.ErrOutboxFull)
	if err != nil && !full {
		s.metrics.storeErrors.WithLabelValues("enqueue").Inc()
	}
	n := len(stored)
	res := make([]enqueued, len(msgs))
	for i := range res {
		switch {
		case i < n:
			res[i] = enqueued{adminapi.BatchResult{Seq: stored[i].Seq, Duplicate: stored[i].Duplicate}, http.StatusAccepted}
		case full && i == n:
			res[i] = enqueued{adminapi.BatchResult{Error: adminapi.CodeOutboxFull}, http.StatusTooManyRequests}
		case full:
			// Storing later ones would reorder them when the backend retries.
			res[i] = enqueued{BatchResult: adminapi.BatchResult{Error: adminapi.CodeNotAttempted,
				Message: "an earlier message to this device in the batch was not stored"}}
			continue
		default: // the device's messages were stored all together or not at all
			res[i] = enqueued{adminapi.BatchResult{Error: adminapi.CodeUnavailable,
				Message: err.Error() + "; it may have been stored: resend with the same idempotency key"}, http.StatusServiceUnavailable}
		}
		s.metrics.enqueued.WithLabelValues(strconv.Itoa(res[i].status)).Inc()
	}
	return res
}

// maxConcurrentBatches bounds the batch requests a server decodes and
// stores at once: each may hold up to MaxBatch payloads in memory.
const maxConcurrentBatches = 8

// batchWait is how long a batch request waits for its turn before 503 busy.
const batchWait = time.Second

// limitBatches runs h for at most cap(sem) requests at once; the others
// wait up to batchWait, then get 503 busy with Retry-After, unread.
func limitBatches(sem chan struct{}, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
		default:
			t := time.NewTimer(batchWait)
			select {
			case sem <- struct{}{}:
				t.Stop()
			case <-t.C:
				// Answer at once rather than read the body first (net/http
				// would, to reuse the connection), and close.
				w.Header().Set("Connection", "close")
				w.Header().Set("Retry-After", "1")
				writeError(w, http.StatusServiceUnavailable, adminapi.CodeBusy,
					fmt.Sprintf("%d batch requests are being served; retry later", cap(sem)))
				return
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		defer func() { <-sem }()
		h(w, r)
	}
}

// postMessages stores a batch of messages for many devices: a backend that
// sends thousands per second makes one request per batch instead of one
// per message, and the store pipelines the batch. Each message gets its
// own answer, in order; 200 means the batch was read, not that every
// message was stored. The body is refused, with nothing stored, at the
// first message beyond MaxBatch, at a value beyond what a message can
// need, or at data after the JSON object; past 256 KiB it is decoded as a
// stream, so a huge body is not read beyond what refuses it.
func (s *Server) postMessages(w http.ResponseWriter, r *http.Request) {
	maxPayload := s.cfg.MaxFrameBytes - 9
	body := http.MaxBytesReader(w, r.Body, batchBodyLimit(maxPayload))
	msgs, err := readBatch(body, r.ContentLength, maxPayload)
	if err != nil {
		dropBody(w, body)
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, errTooMany):
		writeError(w, http.StatusRequestEntityTooLarge, adminapi.CodeTooMany,
			fmt.Sprintf("more than %d messages in one batch", adminapi.MaxBatch))
		return
	case errors.Is(err, errValueTooLarge) || errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, adminapi.CodeTooLarge,
			fmt.Sprintf("a batch message holds at most %d payload bytes (max frame bytes %d minus 9)", maxPayload, s.cfg.MaxFrameBytes))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, adminapi.CodeBadBody,
			`want {"messages":[{"device":"…","payload":"<base64>","key":"…"},…]}: `+err.Error())
		return
	}
	// One store call for all devices (Redis: as few scripts as the slots
	// allow), each device's messages in order in one operation.
	results := make([]enqueued, len(msgs))
	byDevice := map[string][]int{}
	var devices []string // in order of first appearance
	for i, m := range msgs {
		switch {
		case !protocol.ValidDevice(m.Device):
			results[i].BatchResult = adminapi.BatchResult{Error: adminapi.CodeBadDevice, Message: badDeviceMessage}
		case m.Key != "" && !adminapi.ValidKey(m.Key):
			results[i].BatchResult = adminapi.BatchResult{Error: adminapi.CodeBadKey, Message: adminapi.KeyRule}
		case len(m.Payload) > maxPayload:
			s.metrics.enqueued.WithLabelValues("413").Inc()
			results[i].BatchResult = adminapi.BatchResult{Error: adminapi.CodeTooLarge, Message: fmt.Sprintf("payload exceeds %d bytes", maxPayload)}
		default:
			if _, ok := byDevice[m.Device]; !ok {
				devices = append(devices, m.Device)
			}
			byDevice[m.Device] = append(byDevice[m.Device], i)
		}
	}
	batches := make([]store.DeviceBatch, len(devices))
	for j, d := range devices {
		out := make([]store.Outgoing, len(byDevice[d]))
		for k, i := range byDevice[d] {
			out[k] = store.Outgoing{Payload: msgs[i].Payload, Key: msgs[i].Key}
		}
		batches[j] = store.DeviceBatch{Device: d, Msgs: out}
	}
	ctx, cancel := s.storeCtx(r)
	defer cancel()
	for j, e := range s.store.EnqueueMany(ctx, batches, s.limits()) {
		idx := byDevice[devices[j]]
		for k, res := range s.answer(batches[j].Msgs, e.Stored, e.Err) {
			results[idx[k]] = res
		}
	}
	out := make([]adminapi.BatchResult, len(results))
	for i, r := range results {
		out[i] = r.BatchResult
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(appendBatchResponse(make([]byte, 0, 16+16*len(out)), out))
}

// readBatch decodes a batch body: by hand when it is small and of the
// usual shape, else with decodeBatch.
func readBatch(body io.Reader, length int64, maxPayload int) ([]adminapi.BatchMessage, error) {
	if length < 0 || length > fastBatchBody {
		return decodeBatch(body, maxPayload)
	}
	buf := make([]byte, length)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, err
	}
	if msgs, ok := parseBatch(buf, int(maxBatchValue(maxPayload))); ok {
		return msgs, nil
	}
	return decodeBatch(bytes.NewReader(buf), maxPayload)
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
		writeError(w, http.StatusNotFound, adminapi.CodeNotFound, "the device has no accepted HELLO, message or state")
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, adminapi.CodeUnavailable, err.Error())
	default:
		writeJSON(w, http.StatusOK, adminapi.DeviceInfo{Device: info.Device, Connected: info.Connected, Server: info.Server,
			SessionEpoch: info.SessionEpoch, AckedSeq: info.AckedSeq, LastSeq: info.LastSeq, Pending: info.Pending, State: info.State})
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
		writeError(w, http.StatusBadRequest, adminapi.CodeBadState,
			fmt.Sprintf("state must be a JSON object of at most %d bytes", s.cfg.MaxFrameBytes))
		return
	}
	ctx, cancel := s.storeCtx(r)
	err = s.store.SetState(ctx, device, body)
	cancel()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, adminapi.CodeUnavailable, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// upstream returns the embedded store's upstream, or answers 404 for a
// store that keeps it elsewhere (Redis: a stream backends read directly).
func (s *Server) upstream(w http.ResponseWriter) (store.UpstreamReader, bool) {
	up, ok := s.store.(store.UpstreamReader)
	if !ok {
		writeError(w, http.StatusNotFound, adminapi.CodeUpstreamInRedis,
			"this server keeps device messages in Redis: read the stream <prefix>:upstream (--redis-prefix, default scp) with XREADGROUP; "+
				"these endpoints serve the embedded store only")
	}
	return up, ok
}

// getUpstream reads the embedded store's upstream: entries with a seq
// above ?after (default 0), at most ?limit (default 100, at most 1000).
func (s *Server) getUpstream(w http.ResponseWriter, r *http.Request) {
	up, ok := s.upstream(w)
	if !ok {
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, adminapi.CodeBadQuery, "after must be a seq (an unsigned integer)")
			return
		}
		after = n
	}
	limit := adminapi.DefaultUpstreamLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > adminapi.MaxUpstreamLimit {
			writeError(w, http.StatusBadRequest, adminapi.CodeBadQuery, fmt.Sprintf("limit must be 1-%d", adminapi.MaxUpstreamLimit))
			return
		}
		limit = n
	}
	entries := up.ReadUpstream(after, limit)
	page := adminapi.UpstreamPage{Entries: make([]adminapi.UpstreamEntry, len(entries)), Next: after}
	for i, e := range entries {
		page.Entries[i] = adminapi.UpstreamEntry{Seq: e.Seq, Device: e.Device, ID: e.ID, Payload: e.Payload}
		page.Next = e.Seq
	}
	writeJSON(w, http.StatusOK, page)
}

// ackUpstream forgets the embedded upstream's entries up to up_to, which
// frees room for more PUBLISHes.
func (s *Server) ackUpstream(w http.ResponseWriter, r *http.Request) {
	up, ok := s.upstream(w)
	if !ok {
		return
	}
	var req adminapi.UpstreamAck
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	if err := dec.Decode(&req); err != nil || dec.More() {
		writeError(w, http.StatusBadRequest, adminapi.CodeBadBody, `want {"up_to":N}`)
		return
	}
	up.AckUpstream(req.UpTo)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) postDrain(w http.ResponseWriter, r *http.Request) {
	var delay time.Duration
	if v := r.URL.Query().Get("delay"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, adminapi.CodeBadQuery, "delay must be a duration such as 30s")
			return
		}
		delay = d
	}
	var rate float64
	if v := r.URL.Query().Get("rate"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || math.IsInf(f, 0) {
			writeError(w, http.StatusBadRequest, adminapi.CodeBadQuery, "rate must be a positive number of GOAWAYs per second")
			return
		}
		rate = f
	}
	done := s.DrainAfterRate(delay, rate)
	if wait, _ := strconv.ParseBool(r.URL.Query().Get("wait")); !wait {
		writeJSON(w, http.StatusAccepted, adminapi.DrainStarted{Status: "draining"})
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
	writeJSON(w, http.StatusOK, adminapi.DrainDone{Remaining: s.Connections()})
}

// postShed moves some of this server's devices elsewhere without draining it.
func (s *Server) postShed(w http.ResponseWriter, r *http.Request) {
	var req adminapi.ShedRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	if err := dec.Decode(&req); err != nil || dec.More() || !req.Valid() {
		writeError(w, http.StatusBadRequest, adminapi.CodeBadBody, adminapi.ShedRule)
		return
	}
	held := s.Connections()
	writeJSON(w, http.StatusAccepted, adminapi.ShedStarted{Shed: s.ShedWith(req), Connections: held})
}

// dropBody makes net/http close the connection after the answer instead
// of reading the rest of a refused body (it would, up to 256 KiB, to
// reuse the connection): a body that is not at its end counts as too
// large, and the server then lingers a moment before closing, so that the
// client reads the answer before its unread bytes reset the connection.
func dropBody(w http.ResponseWriter, body io.Reader) {
	var one [1]byte
	_, _ = http.MaxBytesReader(w, io.NopCloser(body), 0).Read(one[:])
}

// Batch bodies beyond fastBatchBody are decoded as a stream, value by
// value, so that memory follows what a batch may hold, not what a body
// claims: at most MaxBatch messages, each within what a payload of the
// frame limit needs in JSON.

var (
	errTooMany       = errors.New("too many messages")
	errValueTooLarge = errors.New("a value of the batch is larger than a message can be")
)

// valueOverhead is the JSON a batch message may need beside its base64
// payload: field names, device, key (escaped), whitespace.
const valueOverhead = 4096

// maxBatchValue bounds one value of a batch body (a message, a key, an
// unknown field) for payloads of at most maxPayload bytes.
func maxBatchValue(maxPayload int) int64 {
	return int64(maxPayload+2)/3*4 + valueOverhead
}

// batchBodyLimit bounds a whole batch body.
func batchBodyLimit(maxPayload int) int64 {
	return adminapi.MaxBatch*maxBatchValue(maxPayload) + valueOverhead
}

// capReader reads no further than limit bytes into its source: the decoder
// sets the limit before each value, so that one value (a huge base64
// string, a run of whitespace) cannot make it buffer the whole body.
type capReader struct {
	r        io.Reader
	n, limit int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n >= c.limit {
		return 0, errValueTooLarge
	}
	if int64(len(p)) > c.limit-c.n {
		p = p[:c.limit-c.n]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// decodeBatch decodes {"messages":[…]} from r, message by message. It
// fails with errTooMany at message MaxBatch+1 and with errValueTooLarge at
// a value beyond maxBatchValue, without reading on, and refuses anything
// but whitespace after the object. Unknown fields are skipped.
func decodeBatch(r io.Reader, maxPayload int) ([]adminapi.BatchMessage, error) {
	cr := &capReader{r: r}
	dec := json.NewDecoder(cr)
	maxValue := maxBatchValue(maxPayload)
	next := func() { cr.limit = dec.InputOffset() + maxValue }
	delim := func(want json.Delim) error {
		next()
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if tok != want {
			return fmt.Errorf("want %v, got %v", want, tok)
		}
		return nil
	}
	if err := delim('{'); err != nil {
		return nil, err
	}
	var msgs []adminapi.BatchMessage
	seen := false
	for dec.More() {
		next()
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if tok != "messages" {
			next()
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
			continue
		}
		if seen {
			return nil, errors.New(`"messages" given twice`)
		}
		seen = true
		next()
		tok, err = dec.Token()
		if err != nil {
			return nil, err
		}
		if tok == nil { // "messages": null
			continue
		}
		if tok != json.Delim('[') {
			return nil, fmt.Errorf(`"messages" must be an array, got %v`, tok)
		}
		for dec.More() {
			if len(msgs) == adminapi.MaxBatch {
				return nil, errTooMany
			}
			next()
			var m adminapi.BatchMessage
			if err := dec.Decode(&m); err != nil {
				return nil, fmt.Errorf("message %d: %w", len(msgs), err)
			}
			msgs = append(msgs, m)
		}
		if err := delim(']'); err != nil {
			return nil, err
		}
	}
	if err := delim('}'); err != nil {
		return nil, err
	}
	next()
	if tok, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("%v", tok)
		}
		return nil, fmt.Errorf("data after the JSON object: %w", err)
	}
	return msgs, nil
}
