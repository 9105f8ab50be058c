package protocol

import (
	"io"
	"sync"
)

// window is a connection's small read buffer. It is borrowed from a pool
// while input flows and given back when the connection goes idle
// (release), so that silent devices hold no buffer at all.
type window struct {
	rd   io.Reader
	size int
	p    *[]byte // pooled backing of buf
	buf  []byte
	r, w int
}

var windowPool sync.Pool // of *[]byte

func (b *window) acquire() {
	if v, _ := windowPool.Get().(*[]byte); v != nil && len(*v) == b.size {
		b.p = v
	} else {
		s := make([]byte, b.size)
		b.p = &s
	}
	b.buf = *b.p
}

// release gives the buffer back if nothing is buffered in it.
func (b *window) release() {
	if b.p == nil || b.r != b.w {
		return
	}
	windowPool.Put(b.p)
	b.p, b.buf = nil, nil
	b.r, b.w = 0, 0
}

func (b *window) buffered() bool { return b.w > b.r }

// fill makes at least n (at most size) bytes available at buf[r:].
func (b *window) fill(n int) error {
	if b.w-b.r >= n {
		return nil
	}
	if b.buf == nil {
		b.acquire()
	}
	if b.r > 0 && len(b.buf)-b.r < n {
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	for b.w-b.r < n {
		m, err := b.rd.Read(b.buf[b.w:])
		b.w += m
		if err != nil {
			if b.w-b.r >= n {
				return nil
			}
			if err == io.EOF && b.w > b.r {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// Read serves buffered bytes first; reads as large as the window bypass it.
func (b *window) Read(p []byte) (int, error) {
	if b.r == b.w {
		if len(p) >= b.size {
			return b.rd.Read(p)
		}
		if err := b.fill(1); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}

// payload returns the n bytes that follow head bytes at buf[r:] (the
// head is buffered already) and consumes both: from the window when they
// fit in it, else moved into big, which grows only as the bytes arrive.
func (b *window) payload(big *body, head, n int) ([]byte, error) {
	if head+n <= len(b.buf) {
		if err := b.fill(head + n); err != nil {
			return nil, unexpected(err)
		}
		p := b.buf[b.r+head : b.r+head+n]
		b.r += head + n
		return p, nil
	}
	p := big.grow(b.buf[b.r+head:b.w], n)
	b.r, b.w = 0, 0
	for len(p) < n {
		if len(p) == cap(p) {
			p = big.grow(p, n)
		}
		m, err := b.rd.Read(p[len(p):min(cap(p), n)])
		p = p[:len(p)+m]
		if err != nil && len(p) < n {
			return nil, unexpected(err)
		}
	}
	return p, nil
}
