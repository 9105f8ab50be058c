package client

import (
	"context"
	"slices"
	"time"
)

// Pending is an upstream message kept until the cluster stored it.
type Pending struct {
	id      uint64
	payload []byte
	done    chan struct{}
	// Set by the writer: the connection that last sent it (0 = none yet) and when.
	gen    uint64
	sentAt time.Time
}

// Done is closed when the message got its PUBACK.
func (p *Pending) Done() <-chan struct{} { return p.done }

// ID is the message's PUBLISH id.
func (p *Pending) ID() uint64 { return p.id }

// PublishAsync queues payload (copied) for upstream delivery and returns at
// once unless MaxInFlight messages are unacknowledged or no WELCOME was seen
// yet (ids continue from the cluster's last_publish_id, so the first one
// must be known). The message is sent on every connection until PUBACKed.
// Ids are strictly increasing and never reused; messages are (re)sent in id
// order, which is what lets the server tell a retransmit from a new message.
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
	p := &Pending{payload: append([]byte(nil), payload...), done: make(chan struct{})}
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
		return p.id, nil
	case <-ctx.Done():
		return p.id, ctx.Err()
	case <-c.done:
		return p.id, ErrStopped
	}
}

// pubAcked completes the message with id (a retransmit's second PUBACK finds nothing).
func (c *Client) pubAcked(id uint64) {
	c.mu.Lock()
	i := slices.IndexFunc(c.inflight, func(p *Pending) bool { return p.id == id })
	if i < 0 {
		c.mu.Unlock()
		return
	}
	p := c.inflight[i]
	c.inflight = slices.Delete(c.inflight, i, i+1)
	c.stats.PublishesAcked++
	c.mu.Unlock()
	<-c.window
	if c.cfg.OnPubAck != nil {
		c.cfg.OnPubAck(p.id, p.payload)
	}
	close(p.done)
}
