package protocol

import (
	"bytes"
	"encoding/json"
)

// Hello is the body of HELLO.
type Hello struct {
	Protocol int    `json:"protocol"`
	Device   string `json:"device"`
	Token    string `json:"token,omitempty"`
	LastSeq  uint64 `json:"last_seq,omitempty"`
}

// Welcome is the body of WELCOME.
type Welcome struct {
	Server        string          `json:"server"`
	SessionEpoch  uint64          `json:"session_epoch"`
	Resumed       bool            `json:"resumed"`
	HeartbeatMs   int64           `json:"heartbeat_ms"`
	LastPublishID uint64          `json:"last_publish_id"`
	State         json.RawMessage `json:"state"`
}

// GoAway is the body of GOAWAY.
type GoAway struct {
	Reason           string `json:"reason"`
	ReconnectAfterMs int64  `json:"reconnect_after_ms"`
}

// ErrorBody is the body of ERROR.
type ErrorBody struct {
	Code         Code   `json:"code"`
	Message      string `json:"message"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
}

// ParseHello decodes and validates a HELLO body in the contract's order:
// JSON shape, protocol version, device name.
func ParseHello(body []byte) (Hello, error) {
	var h struct {
		Protocol *int    `json:"protocol"`
		Device   string  `json:"device"`
		Token    string  `json:"token"`
		LastSeq  *uint64 `json:"last_seq"`
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Hello{}, Errorf(CodeBadFrame, "HELLO body is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if err := dec.Decode(&h); err != nil {
		return Hello{}, Errorf(CodeBadFrame, "HELLO body is not a JSON object: %v", err)
	}
	if dec.More() {
		return Hello{}, Errorf(CodeBadFrame, "HELLO body has trailing data")
	}
	if h.Protocol == nil || *h.Protocol != Version {
		return Hello{}, Errorf(CodeUnsupportedProtocol, "this server speaks protocol 1")
	}
	if !ValidDevice(h.Device) {
		return Hello{}, Errorf(CodeBadFrame, "device must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	out := Hello{Protocol: Version, Device: h.Device, Token: h.Token}
	if h.LastSeq != nil {
		out.LastSeq = *h.LastSeq
	}
	return out, nil
}

// ParseJSON decodes a JSON body of a server frame (WELCOME, GOAWAY, ERROR).
func ParseJSON(body []byte, v any) error {
	if err := json.Unmarshal(body, v); err != nil {
		return Errorf(CodeBadFrame, "bad JSON body: %v", err)
	}
	return nil
}

// MustJSON marshals values that cannot fail to marshal.
func MustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
