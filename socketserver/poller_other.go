//go:build !linux

package socketserver

import "time"

// poller is Linux-only; elsewhere every connection keeps its read goroutine.
type poller struct{}

func newPoller() (*poller, error)                    { return nil, nil }
func (p *poller) add(c *conn)                        {}
func (p *poller) wait(c *conn, d time.Duration) bool { return true }
func (p *poller) arm(c *conn) bool                   { return false }
func (p *poller) forget(c *conn)                     {}
func (p *poller) close()                             {}
