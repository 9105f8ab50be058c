package protocol

import "sync"

// A frame body that does not fit the read window grows as its bytes
// arrive, through pooled size classes of 1 KiB to 64 KiB, each twice the
// last: a header announcing a large frame pins no more than about twice
// the bytes that followed it, and a steady flow of large frames allocates
// nothing. Bodies above the largest class are allocated and not pooled.
const (
	minClass   = 1 << 10
	numClasses = 7 // 1 KiB … 64 KiB
)

var classPools [numClasses]sync.Pool // of *[]byte

func init() {
	for i := range classPools {
		size := minClass << i
		classPools[i].New = func() any { b := make([]byte, 0, size); return &b }
	}
}

// classFor is the smallest class holding n bytes, or -1 if none does.
func classFor(n int) int {
	for i := 0; i < numClasses; i++ {
		if n <= minClass<<i {
			return i
		}
	}
	return -1
}

// body is the buffer a Reader holds a large frame body in.
type body struct {
	p   *[]byte
	cls int // index in classPools; -1: not pooled
}

// grow returns a copy of buf in a buffer with room for more, at most
// limit bytes (in total) and at least twice len(buf) or the smallest
// class; the buffer b held before goes back to its pool. len(buf) < limit.
func (b *body) grow(buf []byte, limit int) []byte {
	want := min(limit, max(2*len(buf), minClass))
	old, oldCls := b.p, b.cls
	if c := classFor(want); c >= 0 {
		b.p, b.cls = classPools[c].Get().(*[]byte), c
	} else {
		nb := make([]byte, 0, want)
		b.p, b.cls = &nb, -1
	}
	nb := append((*b.p)[:0], buf...)
	if old != nil && oldCls >= 0 {
		classPools[oldCls].Put(old)
	}
	return nb
}

// release gives the buffer back to its pool.
func (b *body) release() {
	if b.p != nil && b.cls >= 0 {
		classPools[b.cls].Put(b.p)
	}
	b.p = nil
}
