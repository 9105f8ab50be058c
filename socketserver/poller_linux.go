package socketserver

import (
	"errors"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// poller waits for input on idle connections so that they need no
// goroutine: a parked connection is an entry in an epoll set (one-shot),
// and its read loop is started again when bytes arrive. A goroutine blocked
// in Read costs a 4 KiB stack and its read window; with tens of thousands of
// mostly silent devices per pod, that is most of the memory.
type poller struct {
	epfd, wakefd int
	mu           sync.Mutex
	conns        map[uint64]*conn
	next         uint64
	closed       bool
	done         chan struct{}
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	// The wake descriptor has id 0; connections count from 1.
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	p := &poller{epfd: epfd, wakefd: wakefd, conns: map[uint64]*conn{}, done: make(chan struct{})}
	go p.run()
	return p, nil
}

// add gives c an id; the read loop calls it, once c.raw is set, before c
// is first marked parked.
func (p *poller) add(c *conn) {
	p.mu.Lock()
	p.next++
	c.pollID = p.next
	p.conns[c.pollID] = c
	p.mu.Unlock()
}

// wait reports whether input arrives within d, without reading it: a busy
// connection then keeps its goroutine instead of paying for a re-arm and
// a goroutine start per frame.
func (p *poller) wait(c *conn, d time.Duration) bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(d))
	err := c.raw.Read(func(fd uintptr) bool {
		// Peek, since the runtime's readiness flag may be stale.
		var b byte
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		return errno != unix.EAGAIN
	})
	_ = c.nc.SetReadDeadline(time.Time{})
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// arm asks for one wake-up when c has input. The caller has marked c
// parked; false means it could not be armed (not a plain socket, closed,
// or the poller stopped) and the caller keeps reading with a goroutine.
func (p *poller) arm(c *conn) bool {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(c.pollID), Pad: int32(c.pollID >> 32)}
	var cerr error
	err := c.raw.Control(func(fd uintptr) {
		// Re-arm; the first time, add. Nothing else is written after the
		// caller marked c parked: the wake-up may already run.
		if cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev); cerr == unix.ENOENT {
			cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	return err == nil && cerr == nil
}

// forget drops c when its connection ended; closing the socket already
// took it out of the epoll set.
func (p *poller) forget(c *conn) {
	if c.pollID == 0 {
		return
	}
	p.mu.Lock()
	delete(p.conns, c.pollID)
	p.mu.Unlock()
}

func (p *poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	ready := make([]*conn, 0, len(events))
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		ready = ready[:0]
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if c := p.conns[id]; c != nil {
				ready = append(ready, c)
			}
		}
		p.mu.Unlock()
		for _, c := range ready {
			c.unpark()
		}
	}
}

// close stops the poller; connections still parked are closed by the
// server's shutdown, which restarts their read loops.
func (p *poller) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(p.wakefd, one[:])
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
}
