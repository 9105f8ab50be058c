package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Client calls one server's admin API. The zero value is not usable: set
// BaseURL. A Client is safe for concurrent use.
type Client struct {
	// BaseURL is the admin listener, "http://host:port" or just "host:port".
	BaseURL string
	// Token is the bearer token (--api-token-file); empty sends none.
	Token string
	// HTTP makes the requests; nil uses http.DefaultClient. Its Timeout (or
	// the context's deadline) bounds each call.
	HTTP *http.Client
}

// Error is a call that did not get the answer it wanted. It tells a
// definite refusal (the server answered 4xx: nothing was applied) from an
// ambiguous outcome (no answer after the request was written, or 5xx: it
// may have been applied) and from a request that never left (nothing was
// applied).
type Error struct {
	// Op is the call, e.g. "POST /v1/devices/d/messages".
	Op string
	// Status is the HTTP status, 0 when no answer came.
	Status int
	// Code and Message are the server's ErrorBody, when it sent one.
	Code, Message string
	// RetryAfter is the server's Retry-After hint (0 if none).
	RetryAfter time.Duration
	// Sent: the whole request was written to the server.
	Sent bool
	// Err is the transport or decoding error, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	b.WriteString(": ")
	switch {
	case e.Status != 0:
		b.WriteString(strconv.Itoa(e.Status))
		if e.Code != "" {
			b.WriteString(" " + e.Code)
		}
		if e.Message != "" {
			b.WriteString(": " + e.Message)
		}
		if e.Err != nil {
			b.WriteString(": " + e.Err.Error())
		}
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	}
	switch {
	case e.Ambiguous():
		b.WriteString(" (outcome unknown)")
	case e.NotSent():
		b.WriteString(" (not sent)")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Refused reports a definite refusal: the server answered 4xx and applied
// nothing. Resending the same request gets the same answer, except 429
// (outbox_full), which may pass later.
func (e *Error) Refused() bool { return e.Status >= 400 && e.Status < 500 }

// Ambiguous reports that the request reached the server but its outcome is
// unknown: a timeout or a broken connection after the request was written,
// a 5xx answer (503 unavailable: the store did not answer in time, yet may
// have stored), or an answer that did not decode. Resend with the same
// idempotency key, on any server, to learn the outcome.
func (e *Error) Ambiguous() bool { return e.Sent && !e.Refused() }

// NotSent reports that the request was not (completely) written, e.g. the
// connection was refused: nothing was applied, and a resend is safe.
func (e *Error) NotSent() bool { return !e.Sent && e.Status == 0 }

// IsAmbiguous reports whether err is an *Error with an unknown outcome.
func IsAmbiguous(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Ambiguous()
}

// IsRefused reports whether err is an *Error for a 4xx answer.
func IsRefused(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Refused()
}

// IsNotSent reports whether err is an *Error for a request that never
// reached the server.
func IsNotSent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.NotSent()
}

// Send stores payload for device (POST /v1/devices/{device}/messages).
// A non-empty key makes the send idempotent: a resend with the same key
// answers the first seq with Duplicate set.
func (c *Client) Send(ctx context.Context, device string, payload []byte, key string) (SendResult, error) {
	var h http.Header
	if key != "" {
		h = http.Header{HeaderIdempotencyKey: {key}}
	}
	var out SendResult
	err := c.call(ctx, http.MethodPost, MessagesPath(device), h, payload, http.StatusAccepted, &out)
	return out, err
}

// SendBatch stores messages for many devices in one request
// (POST /v1/messages, at most MaxBatch). The results are in the order of
// msgs; each tells its own outcome (see BatchResult.Ambiguous).
func (c *Client) SendBatch(ctx context.Context, msgs []BatchMessage) ([]BatchResult, error) {
	body, err := json.Marshal(BatchRequest{Messages: msgs})
	if err != nil {
		return nil, err
	}
	var out BatchResponse
	op := http.MethodPost + " " + PathMessages
	if err := c.call(ctx, http.MethodPost, PathMessages, http.Header{"Content-Type": {"application/json"}}, body, http.StatusOK, &out); err != nil {
		return nil, err
	}
	if len(out.Results) != len(msgs) {
		return nil, &Error{Op: op, Status: http.StatusOK, Sent: true,
			Err: fmt.Errorf("%d results for %d messages", len(out.Results), len(msgs))}
	}
	return out.Results, nil
}

// Device returns the device's session and outbox (GET /v1/devices/{device});
// an unknown device is an *Error with Status 404 and Code CodeNotFound.
func (c *Client) Device(ctx context.Context, device string) (DeviceInfo, error) {
	var out DeviceInfo
	err := c.call(ctx, http.MethodGet, DevicePath(device), nil, nil, http.StatusOK, &out)
	return out, err
}

// SetState stores the session state that the device's next WELCOME carries
// (PUT /v1/devices/{device}/state); state must encode as a JSON object.
func (c *Client) SetState(ctx context.Context, device string, state any) error {
	body, err := json.Marshal(state)
	if err != nil {
		return err
	}
	return c.call(ctx, http.MethodPut, StatePath(device), http.Header{"Content-Type": {"application/json"}}, body, http.StatusNoContent, nil)
}

// Drain starts draining the server (POST /drain). With wait it returns
// when no connection remains or the drain timeout passed, with the
// connections left then; without, remaining is 0.
func (c *Client) Drain(ctx context.Context, wait bool) (remaining int, err error) {
	return c.DrainAfter(ctx, 0, wait)
}

// DrainAfter is Drain with a delay: the server turns unready at once and
// sends its first GOAWAY after delay (the pod's preStop wait).
func (c *Client) DrainAfter(ctx context.Context, delay time.Duration, wait bool) (remaining int, err error) {
	if !wait {
		return 0, c.call(ctx, http.MethodPost, DrainQuery(delay, false), nil, nil, http.StatusAccepted, &DrainStarted{})
	}
	var out DrainDone
	err = c.call(ctx, http.MethodPost, DrainQuery(delay, true), nil, nil, http.StatusOK, &out)
	return out.Remaining, err
}

// DrainAtRate starts draining at once, rate GOAWAYs per second (0: the
// server's own pacing), and returns without waiting for the drain.
func (c *Client) DrainAtRate(ctx context.Context, rate float64) error {
	return c.DrainAfterAtRate(ctx, 0, rate)
}

// DrainAfterAtRate is DrainAtRate with a delay: the server turns unready
// at once and sends its first GOAWAY after delay, once the load balancer
// stopped sending it new devices.
func (c *Client) DrainAfterAtRate(ctx context.Context, delay time.Duration, rate float64) error {
	return c.call(ctx, http.MethodPost, DrainRateQuery(delay, rate, false), nil, nil, http.StatusAccepted, &DrainStarted{})
}

// Server returns the server's name, connections and drain state
// (GET /v1/server).
func (c *Client) Server(ctx context.Context) (ServerInfo, error) {
	var out ServerInfo
	err := c.call(ctx, http.MethodGet, PathServer, nil, nil, http.StatusOK, &out)
	return out, err
}

// Shed asks the server to send GOAWAY to count of its connections while it
// stays ready (POST /shed); the GOAWAYs go out paced after it answers.
func (c *Client) Shed(ctx context.Context, count int) (ShedStarted, error) {
	return c.ShedWith(ctx, ShedRequest{Count: count})
}

// ShedWith is Shed with a target, a refusal bound and a rate (POST /shed).
func (c *Client) ShedWith(ctx context.Context, req ShedRequest) (ShedStarted, error) {
	body, _ := json.Marshal(req)
	var out ShedStarted
	err := c.call(ctx, http.MethodPost, PathShed, http.Header{"Content-Type": {"application/json"}}, body, http.StatusAccepted, &out)
	return out, err
}

// ReadUpstream reads up to limit entries with a seq above after from the
// embedded store's upstream (GET /v1/upstream). A server on Redis answers
// an *Error with Code CodeUpstreamInRedis: read the Redis stream instead.
func (c *Client) ReadUpstream(ctx context.Context, after uint64, limit int) (UpstreamPage, error) {
	var out UpstreamPage
	err := c.call(ctx, http.MethodGet, UpstreamQuery(after, limit), nil, nil, http.StatusOK, &out)
	return out, err
}

// AckUpstream forgets every upstream entry up to upTo (POST /v1/upstream/ack).
func (c *Client) AckUpstream(ctx context.Context, upTo uint64) error {
	body, _ := json.Marshal(UpstreamAck{UpTo: upTo})
	return c.call(ctx, http.MethodPost, PathUpstreamAck, http.Header{"Content-Type": {"application/json"}}, body, http.StatusNoContent, nil)
}

// NewRequest builds a request to path with the bearer token, for calls
// this package does not wrap (e.g. /debug/pprof/heap).
func (c *Client) NewRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	base := strings.TrimRight(c.BaseURL, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// maxAnswer bounds the answer read (an upstream page of MaxUpstreamLimit
// frame-sized entries is about 90 MB of base64).
const maxAnswer = 256 << 20

// call makes one request and decodes a want answer into out (if not nil).
func (c *Client) call(ctx context.Context, method, path string, h http.Header, body []byte, want int, out any) error {
	op := method + " " + path
	if i := strings.IndexByte(op, '?'); i >= 0 {
		op = op[:i]
	}
	// The request counts as sent once it was written completely: from then
	// on the server may apply it whatever happens to the answer.
	var sent atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(i httptrace.WroteRequestInfo) {
		if i.Err == nil {
			sent.Store(true)
		}
	}})
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := c.NewRequest(ctx, method, path, rd)
	if err != nil {
		return &Error{Op: op, Err: err}
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return &Error{Op: op, Sent: sent.Load(), Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode == want {
		if out == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			return nil
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
			return &Error{Op: op, Status: resp.StatusCode, Sent: true, Err: fmt.Errorf("decoding the answer: %w", err)}
		}
		return nil
	}
	e := &Error{Op: op, Status: resp.StatusCode, Sent: true}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb ErrorBody
	switch {
	case err != nil:
		e.Err = err
	case json.Unmarshal(raw, &eb) == nil && eb.Error != "":
		e.Code, e.Message = eb.Error, eb.Message
	default:
		e.Message = strings.TrimSpace(string(raw))
	}
	return e
}
