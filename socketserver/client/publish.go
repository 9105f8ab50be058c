package client

import (
	"context"
	"time"
)

// Pending is an upstream message kept until the cluster stored it.
type Pending struct {
	c       *Client
	id      uint64
	payload []byte
	done    chan struct{}
	// Set by the writer: the connection that last sent it (0 = none yet) and when.
	gen    uint64
	sentAt time.Time
}

// Done is closed when the message got its PUBACK.
func (p *Pending) Done() <-chan struct{} { return p.done }

// ID is the message's PUBLISH id. It changes only in the rare case the
// server failed to store the message but stored a later one (see PublishAsync).
func (p *Pending) ID() uint64 {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	return p.id
}

// PublishAsync queues payload (copied) for upstream delivery and returns at
// once unless MaxInFlight messages are unacknowledged or no WELCOME was seen
// yet (ids continue from the cluster's last_publish_id, so the first one
// must be known). The message is sent on every connection until PUBACKed.
//
// Ids are strictly increasing and never reused. When the server acknowledges
// a later id while an earlier one that cannot have been stored before this
// connection (it is above the WELCOME's last_publish_id) has no PUBACK, the
// store failed for it and its id is now taken for a retransmit, so that
// message gets a fresh id instead of a false PUBACK.
func (c *Client) PublishAsync(ctx context.Context, payload []byte) (*Pending, error) {
	select {
	case <-c.welcomed:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, ErrStopped
	}
	select {
	case c.window <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, ErrStopped
	}
	p := &Pending{c: c, payload: append([]byte(nil), payload...), done: make(chan struct{})}
	c.mu.Lock()
	p.id = c.nextID
	c.nextID++
	c.inflight = append(c.inflight, p)
	cur := c.cur
	c.mu.Unlock()
	if cur != nil {
		cur.wake()
	}
	return p, nil
}

// Publish sends payload upstream and waits for its PUBACK. When ctx ends
// first the message stays queued and is still delivered; only the wait ends.
func (c *Client) Publish(ctx context.Context, payload []byte) (uint64, error) {
	p, err := c.PublishAsync(ctx, payload)
	if err != nil {
		return 0, err
	}
	select {
	case <-p.done:
		return p.ID(), nil
	case <-ctx.Done():
		return p.ID(), ctx.Err()
	case <-c.done:
		return p.ID(), ErrStopped
	}
}

// pubAcked completes the message with id, and renumbers the earlier ones the
// server evidently failed to store on connection s.
func (c *Client) pubAcked(s *session, id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var acked *Pending
	for _, p := range c.inflight {
		if p.id == id {
			acked = p
			break
		}
	}
	if acked == nil {
		return // a retransmit's second PUBACK
	}
	keep, lost := c.inflight[:0], []*Pending(nil)
	for _, p := range c.inflight {
		switch {
		case p == acked:
		case p.id < id && p.id > s.lastPublishID:
			lost = append(lost, p)
		default:
			keep = append(keep, p)
		}
	}
	for _, p := range lost {
		p.id, p.gen = c.nextID, 0
		c.nextID++
		c.stats.Renumbered++
		keep = append(keep, p)
	}
	clear(c.inflight[len(keep):])
	c.inflight = keep
	c.stats.PublishesAcked++
	close(acked.done)
	<-c.window
	if len(lost) > 0 {
		s.wake()
	}
}
