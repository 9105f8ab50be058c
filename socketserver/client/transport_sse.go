package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// sseTransport speaks protocol v1 over Server-Sent Events: the session's
// HELLO is a GET whose answer is an event stream (welcome, deliver,
// deliver64, goaway, error), and ACK and PUBLISH are POSTs that any server
// of the cluster answers once stored. One http.Transport per client carries
// the stream and the POSTs (keep-alive), over HTTP/1.1.
type sseTransport struct {
	c       *Client
	base    *url.URL // Config.Addr, e.g. http://host:8080/sse
	baseErr error
	ht      *http.Transport
	hc      *http.Client
}

const (
	// sseReadBufferSize is the stream's read buffer (on top of net/http's
	// own): events are small, and idle devices are the common case.
	sseReadBufferSize = 1024
	// sseIdleConnTimeout closes the POSTs' idle connections before the
	// server does (30 s), so that a request never goes out on a
	// connection the server is closing.
	sseIdleConnTimeout = 25 * time.Second
	// sseAckRetry is the pause before an ACK that failed is sent again.
	sseAckRetry = time.Second
	// ssePublishRetryMin and Max bound the pause before a PUBLISH that got
	// no answer is sent again (doubling, jittered).
	ssePublishRetryMin = 100 * time.Millisecond
	ssePublishRetryMax = 2 * time.Second
	// sseErrorBodyMax bounds what is read of a refusal's or a POST's answer.
	sseErrorBodyMax = 4096
)

func newSSETransport(c *Client) *sseTransport {
	t := &sseTransport{c: c}
	c.callbacks = new(sync.Mutex) // OnMessage on the reader, OnPubAck on the PUBLISH requests
	u, err := url.Parse(c.cfg.Addr)
	switch {
	case err != nil:
		t.baseErr = err
	case u.Host == "":
		t.baseErr = fmt.Errorf("SSE address %q has no host", c.cfg.Addr)
	default:
		t.base = u
	}
	var tlsCfg = c.cfg.TLS
	if tlsCfg != nil {
		tlsCfg = tlsCfg.Clone()
	}
	t.ht = &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
			defer cancel()
			return c.netDial(ctx, network, addr)
		},
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: c.cfg.DialTimeout,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     sseIdleConnTimeout,
		DisableCompression:  true, // a compressed stream would hold events back
		// Small buffers: a connection reads events and short answers and
		// writes requests and payloads (which bypass a full buffer); idle
		// devices are the common case.
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
	}
	t.hc = &http.Client{Transport: t.ht,
		// A redirect would drop the Authorization header: report it instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return t
}

// closeIdle closes the kept-alive connections of the POSTs when Run returns.
func (t *sseTransport) closeIdle() { t.ht.CloseIdleConnections() }

// url returns the address with path suffix (the POSTs' "/ack",
// "/publish") and the query q added to its own.
func (t *sseTransport) url(suffix string, q url.Values) string {
	u := *t.base
	u.Path += suffix
	if u.RawPath != "" {
		u.RawPath += suffix
	}
	all := u.Query()
	for k, v := range q {
		all[k] = v
	}
	u.RawQuery = all.Encode()
	return u.String()
}

// SSEStatusError is the answer to the SSE stream request that is neither
// an event stream nor a protocol ERROR: Addr is probably not a server's
// /sse (a wrong path, a proxy's page). Run retries it like any failed
// connection; Event.Err carries it.
type SSEStatusError struct {
	URL string // Config.Addr
	// Status is the HTTP status, e.g. "404 Not Found"; ContentType is the
	// answer's type when the status was 200.
	Status      string
	ContentType string
}

func (e *SSEStatusError) Error() string {
	if e.ContentType != "" {
		return fmt.Sprintf("GET %s answered %s with %q, not an event stream", e.URL, e.Status, e.ContentType)
	}
	return fmt.Sprintf("GET %s answered %s without a protocol ERROR: is it the socket server's /sse?", e.URL, e.Status)
}

// silenceError ends a stream that sent nothing, not even its keepalive
// comment, for d: the server or the path to it is gone.
type silenceError struct{ d time.Duration }

func (e silenceError) Error() string {
	return fmt.Sprintf("sse: nothing from the server for %s", e.d.Round(time.Millisecond))
}
func (silenceError) Timeout() bool   { return true }
func (silenceError) Temporary() bool { return true }

var errLinkClosed = errors.New("sse: connection closed")

func (t *sseTransport) dial(ctx context.Context, s *session, hello protocol.Hello) (link, error) {
	if t.baseErr != nil {
		return nil, t.baseErr
	}
	c := t.c
	// The POSTs of this session go where its stream goes, not to the
	// previous one's server (which may be draining).
	t.ht.CloseIdleConnections()
	q := url.Values{"device": {hello.Device}}
	if hello.LastSeq > 0 {
		q.Set("last_seq", strconv.FormatUint(hello.LastSeq, 10))
	}
	target := t.url("", q)
	l := &sseLink{t: t, token: hello.Token}
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	l.postCtx, l.cancelPosts = context.WithCancel(context.WithoutCancel(ctx))
	l.idle.Store(int64(c.cfg.HandshakeTimeout))
	l.last.Store(time.Now().UnixNano())
	l.timer = time.AfterFunc(c.cfg.HandshakeTimeout, l.watch)

	var connected atomic.Bool
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { connected.Store(true) }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(l.ctx, trace), http.MethodGet, target, nil)
	if err != nil {
		l.close()
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-store")
	l.authorize(req)
	resp, err := t.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // "Get <url>:" would repeat the address, and the query
		}
		if cause := context.Cause(l.ctx); cause != nil && ctx.Err() == nil {
			err = cause // silence: no answer within the handshake timeout
		}
		if !connected.Load() {
			l.close()
			return nil, err
		}
		l.failed = err // reached a server that did not answer: a handshake failure
		return l, nil
	}
	if resp.StatusCode != http.StatusOK {
		l.failed = l.refusal(resp, c.cfg.Addr)
		return l, nil
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		resp.Body.Close()
		l.failed = &SSEStatusError{URL: c.cfg.Addr, Status: resp.Status, ContentType: resp.Header.Get("Content-Type")}
		return l, nil
	}
	l.body = resp.Body
	// An event holds at most a frame's payload in base64, or as text with
	// its line breaks, plus its field names.
	limit := c.cfg.MaxFrameBytes*4/3 + 1024
	l.events = newSSEParser(bufio.NewReaderSize(bodyReader{l}, sseReadBufferSize), limit)
	return l, nil
}

// refusal reads a non-200 answer to the stream request: the ERROR it
// carries becomes the link's first frame, as on the other transports.
func (l *sseLink) refusal(resp *http.Response, addr string) error {
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, sseErrorBodyMax))
	var e protocol.ErrorBody
	if json.Unmarshal(raw, &e) != nil || e.Code == "" {
		return &SSEStatusError{URL: addr, Status: resp.Status}
	}
	if e.RetryAfterMs == 0 {
		e.RetryAfterMs = retryAfterHeader(resp)
	}
	l.refused = protocol.MustJSON(e)
	return nil
}

// retryAfterHeader reads Retry-After (seconds) in milliseconds, 0 without one.
func retryAfterHeader(resp *http.Response) int64 {
	if n, err := strconv.ParseInt(resp.Header.Get("Retry-After"), 10, 64); err == nil && n > 0 {
		return n * 1000
	}
	return 0
}

// sseLink is one SSE session: the stream (read by the Run goroutine) and
// the POSTs (sent by writeLoop, at most one ACK and one PUBLISH at a time).
type sseLink struct {
	t     *sseTransport
	token string

	ctx         context.Context // the stream's request
	cancel      context.CancelCauseFunc
	postCtx     context.Context // the POSTs: outlives Run's context for the last ACK
	cancelPosts context.CancelFunc

	// The stream's watchdog: the stream ends when nothing arrived for idle
	// since last (both in nanoseconds).
	timer      *time.Timer
	idle, last atomic.Int64

	// Only the Run goroutine uses these.
	failed  error  // the stream request failed: the first readFrame returns it
	refused []byte // the stream request was refused: the first frame is this ERROR
	body    io.ReadCloser
	events  *sseParser
	frame   []byte

	closeOnce sync.Once
}

// bodyReader reads the stream and feeds the watchdog.
type bodyReader struct{ l *sseLink }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.l.body.Read(p)
	if n > 0 {
		b.l.last.Store(time.Now().UnixNano())
	}
	if err != nil {
		if cause := context.Cause(b.l.ctx); cause != nil {
			err = cause
		}
	}
	return n, err
}

// watch runs when the watchdog's timer fires: it ends a stream that has
// been silent for its idle span, and otherwise waits again.
func (l *sseLink) watch() {
	idle := time.Duration(l.idle.Load())
	quiet := time.Since(time.Unix(0, l.last.Load()))
	if quiet < idle {
		l.timer.Reset(idle - quiet)
		return
	}
	l.cancel(silenceError{quiet})
}

func (l *sseLink) setReadDeadline(t time.Time) {
	now := time.Now()
	d := t.Sub(now)
	l.last.Store(now.UnixNano())
	if time.Duration(l.idle.Swap(int64(d))) != d {
		l.timer.Reset(d) // from the handshake's span to the heartbeat's
	}
}

func (l *sseLink) buffered() bool {
	return l.events != nil && l.events.buffered()
}

func (l *sseLink) firstReadFailed(error) error { return nil }

// pong: servers send no PING on SSE, and the device could not answer one.
func (l *sseLink) pong(*session, []byte) {}

func (l *sseLink) close() {
	l.closeOnce.Do(func() {
		l.timer.Stop()
		l.cancel(errLinkClosed)
		l.cancelPosts()
		if l.body != nil {
			_ = l.body.Close()
		}
	})
}

func (l *sseLink) authorize(req *http.Request) {
	if l.token != "" {
		req.Header.Set("Authorization", "Bearer "+l.token)
	}
}

// readFrame turns the stream's next event into the frame it stands for;
// events of other types (from a later protocol version) are skipped.
func (l *sseLink) readFrame() (byte, []byte, error) {
	if l.refused != nil {
		b := l.refused
		l.refused = nil
		l.failed = errLinkClosed // nothing follows an ERROR
		return protocol.TypeError, b, nil
	}
	if l.failed != nil {
		return 0, nil, l.failed
	}
	for {
		ev, err := l.events.next()
		if err != nil {
			if errors.Is(err, errEventTooLarge) {
				err = protocol.Errorf(protocol.CodeFrameTooLarge, "an event of the stream exceeds %d bytes", l.events.max)
			}
			return 0, nil, err
		}
		switch string(ev.typ) {
		case "welcome":
			return protocol.TypeWelcome, ev.data, nil
		case "deliver", "deliver64":
			seq, err := strconv.ParseUint(string(ev.id), 10, 64)
			if !ev.hasID || err != nil {
				return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "%s event without a seq id (id %q)", ev.typ, ev.id)
			}
			l.frame = binary.BigEndian.AppendUint64(l.frame[:0], seq)
			if string(ev.typ) == "deliver" {
				l.frame = append(l.frame, ev.data...)
				return protocol.TypeDeliver, l.frame, nil
			}
			n := base64.StdEncoding.DecodedLen(len(ev.data))
			l.frame = append(l.frame, make([]byte, n)...)
			n, err = base64.StdEncoding.Decode(l.frame[8:], ev.data)
			if err != nil {
				return 0, nil, protocol.Errorf(protocol.CodeBadFrame, "deliver64 seq %d: %v", seq, err)
			}
			return protocol.TypeDeliver, l.frame[:8+n], nil
		case "goaway":
			return protocol.TypeGoAway, ev.data, nil
		case "error":
			return protocol.TypeError, ev.data, nil
		}
	}
}

// end finishes the session from the sending side: the reader returns
// end, and the stream is cut so that it does so at once.
func (l *sseLink) end(s *session, end sessionEnd) {
	s.c.mu.Lock()
	if s.ended == nil {
		end.welcomed = true
		s.ended = &end
	}
	s.c.mu.Unlock()
	l.cancel(errLinkClosed)
}

// postResult is the outcome of one POST.
type postResult struct {
	ack    bool
	seq    uint64   // ACK: the seq sent
	p      *Pending // PUBLISH: the message sent
	status int      // 0: no answer
	body   []byte
	retry  time.Duration // Retry-After
	err    error
}

// post sends one ACK or PUBLISH request and reads its answer.
func (l *sseLink) post(ctx context.Context, timeout time.Duration, what string, q url.Values, body []byte) postResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.t.url(what, q), bytes.NewReader(body))
	if err != nil {
		return postResult{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	l.authorize(req)
	resp, err := l.t.hc.Do(req)
	if err != nil {
		return postResult{err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, sseErrorBodyMax))
	if err != nil {
		return postResult{err: err}
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, sseErrorBodyMax)) // let the connection be reused
	r := postResult{status: resp.StatusCode, body: raw}
	if ms := retryAfterHeader(resp); ms > 0 {
		r.retry = time.Duration(ms) * time.Millisecond
	}
	return r
}

// outcome sorts a POST that did not succeed: retry after the returned
// pause, or (end != nil) the session is over.
func (r postResult) outcome(what string, fallback time.Duration) (time.Duration, *sessionEnd) {
	if r.status == 0 {
		return fallback, nil
	}
	var e protocol.ErrorBody
	if json.Unmarshal(r.body, &e) != nil || e.Code == "" {
		if r.status >= 500 { // a proxy's error page: the request may go elsewhere next time
			return max(fallback, r.retry), nil
		}
		return 0, &sessionEnd{reason: ReasonProtocolError,
			err: fmt.Errorf("POST %s answered HTTP %d without a protocol ERROR", what, r.status)}
	}
	hint := time.Duration(e.RetryAfterMs) * time.Millisecond
	if hint == 0 {
		hint = r.retry
	}
	if e.Code == protocol.CodeUnavailable || e.Code == protocol.CodeInternal {
		return max(hint, fallback/2), nil
	}
	// session_taken_over, unauthorized (the token expired while the stream
	// stayed up), frame_too_large, bad_frame: as an ERROR frame, the session
	// ends, and a reconnect (with a fresh token) follows unless taken over.
	return 0, &sessionEnd{reason: ReasonServerError, code: e.Code, hint: hint,
		err: &ServerError{Code: e.Code, Message: e.Message, RetryAfterMs: e.RetryAfterMs}}
}

// writeLoop sends what the session owes the cluster: the ACK of the
// highest seq processed (one request at a time, so that a burst of
// deliveries costs few requests) and the oldest unacknowledged PUBLISH
// (one at a time, in id order, retried with the same id until stored).
// There is no PING: the server checks the stream by writing to it.
func (l *sseLink) writeLoop(s *session) {
	defer close(s.writerDone)
	c := s.c
	results := make(chan postResult, 2) // one ACK and one PUBLISH at most
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var ackBusy, pubBusy bool
	var ackAt, pubAt time.Time // no request before these (after a failure)
	pubFailures := 0
	for {
		select {
		case <-s.kick:
		case <-timer.C:
		case r := <-results:
			now := time.Now()
			if r.ack {
				ackBusy = false
				if l.acked(s, r) {
					break
				}
				if wait, end := r.outcome("/ack", sseAckRetry); end != nil {
					l.end(s, *end)
				} else {
					ackAt = now.Add(wait)
				}
				break
			}
			pubBusy = false
			if r.status == http.StatusOK {
				pubFailures = 0
				l.pubAcked(r.p.id)
				break
			}
			pubFailures++
			backoff := min(ssePublishRetryMax, ssePublishRetryMin<<min(pubFailures-1, 8))
			backoff = backoff/2 + rand.N(backoff/2+1)
			if wait, end := r.outcome("/publish", backoff); end != nil {
				l.end(s, *end)
			} else {
				pubAt = now.Add(wait)
			}
		case <-s.stop:
			l.finalAck(s, ackBusy, results)
			return
		}

		now := time.Now()
		var ackSeq, epoch uint64
		var p *Pending
		c.mu.Lock()
		ready := s.welcomed && s.ended == nil
		if ready && !ackBusy && !now.Before(ackAt) && c.lastSeq > s.ackSent {
			ackSeq = c.lastSeq
		}
		if ready && !pubBusy && !now.Before(pubAt) && len(c.inflight) > 0 {
			p = c.inflight[0]
			if !p.sentAt.IsZero() {
				c.stats.Retransmits++
			}
			p.gen, p.sentAt = s.gen, now
		}
		epoch = s.epoch
		wantAck := ready && c.lastSeq > s.ackSent
		wantPub := ready && len(c.inflight) > 0
		c.mu.Unlock()

		q := func(k string, v uint64) url.Values {
			return url.Values{"device": {c.cfg.Device}, "epoch": {strconv.FormatUint(epoch, 10)}, k: {strconv.FormatUint(v, 10)}}
		}
		if ackSeq != 0 {
			ackBusy = true
			go func() {
				r := l.post(l.postCtx, c.cfg.WriteTimeout, "/ack", q("seq", ackSeq), nil)
				r.ack, r.seq = true, ackSeq
				results <- r
			}()
		}
		if p != nil {
			pubBusy = true
			go func() {
				r := l.post(l.postCtx, c.cfg.PubAckTimeout, "/publish", q("id", p.id), p.payload)
				r.p = p
				results <- r
			}()
		}
		// Wake for a retry that is due later.
		var next time.Time
		if wantAck && !ackBusy {
			next = ackAt
		}
		if wantPub && !pubBusy && (next.IsZero() || pubAt.Before(next)) {
			next = pubAt
		}
		if !next.IsZero() {
			timer.Reset(max(next.Sub(now), time.Millisecond))
		}
	}
}

// pubAcked completes a stored PUBLISH; OnPubAck must not run while OnMessage does.
// acked records the seq of an ACK the server stored; false: not stored.
func (l *sseLink) acked(s *session, r postResult) bool {
	if r.status != http.StatusNoContent && r.status != http.StatusOK {
		return false
	}
	s.c.mu.Lock()
	s.ackSent = max(s.ackSent, r.seq)
	s.c.mu.Unlock()
	return true
}

func (l *sseLink) pubAcked(id uint64) {
	c := l.t.c
	c.callbacks.Lock()
	defer c.callbacks.Unlock()
	c.pubAcked(id)
}

// finalAck sends the last ACK when the session ends, within
// finalFlushTimeout: after the one in flight, if any, unless that already
// covered everything.
func (l *sseLink) finalAck(s *session, ackBusy bool, results <-chan postResult) {
	c := s.c
	deadline := time.Now().Add(finalFlushTimeout)
	wait := time.NewTimer(finalFlushTimeout)
	defer wait.Stop()
	for ackBusy {
		select {
		case r := <-results:
			if r.ack {
				ackBusy = false
				l.acked(s, r)
			}
		case <-wait.C:
			return
		}
	}
	c.mu.Lock()
	seq, epoch := c.lastSeq, s.epoch
	due := s.welcomed && s.ended == nil && seq > s.ackSent
	c.mu.Unlock()
	if !due {
		return
	}
	q := url.Values{"device": {c.cfg.Device}, "epoch": {strconv.FormatUint(epoch, 10)}, "seq": {strconv.FormatUint(seq, 10)}}
	if r := l.post(l.postCtx, time.Until(deadline), "/ack", q, nil); r.status == http.StatusNoContent || r.status == http.StatusOK {
		c.mu.Lock()
		s.ackSent = max(s.ackSent, seq)
		c.mu.Unlock()
	}
}
