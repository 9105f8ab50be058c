package client

import (
	"maps"
	"time"

	"github.com/socketcluster/socketcluster/socketserver/protocol"
)

// Stats are the client's counters since New.
type Stats struct {
	// Connects counts accepted HELLOs (WELCOMEs); Reconnects those after the
	// first; Resumes those with resumed=true.
	Connects, Reconnects, Resumes uint64
	DialFailures, Disconnects     uint64
	LastWelcome                   protocol.Welcome
	LastWelcomeAt                 time.Time
	// Delivered counts messages handed to OnMessage, Duplicates the
	// re-deliveries dropped by seq; LastSeq is the highest seq processed.
	Delivered, Duplicates, LastSeq uint64
	// PublishesAcked counts PUBACKed messages; Retransmits PUBLISH frames sent again.
	PublishesAcked, Retransmits uint64
	InFlight                    int
	// Errors counts ERROR frames by code.
	Errors map[protocol.Code]uint64
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.InFlight = len(c.inflight)
	st.Errors = maps.Clone(c.stats.Errors)
	return st
}

// EventType tells connects from disconnects.
type EventType int

const (
	// EventConnected: a WELCOME was received (Event.Welcome).
	EventConnected EventType = iota + 1
	// EventDisconnected: a connection ended or could not be made
	// (Reason, Code, Err), and the client waits Wait before the next one.
	EventDisconnected
)

// Event is a connection state change. The time from an EventDisconnected to
// the next EventConnected is the device's resume latency.
type Event struct {
	Type    EventType
	At      time.Time
	Welcome protocol.Welcome
	Reason  Reason
	Code    protocol.Code
	Err     error
	Wait    time.Duration
}
