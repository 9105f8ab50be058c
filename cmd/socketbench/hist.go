package main

import (
	"math"
	"time"
)

// histBuckets per power of two: values are kept within ~4.4%.
const histBuckets = 16

// Hist is a log-bucketed latency histogram in microseconds. Workers send
// theirs to the coordinator, which adds them up.
type Hist struct {
	Counts []uint64 `json:"counts"`
	N      uint64   `json:"n"`
	Max    float64  `json:"max_us"`
}

func (h *Hist) Record(d time.Duration) {
	us := max(float64(d)/float64(time.Microsecond), 0)
	i := int(histBuckets * math.Log2(us+1))
	if i >= len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, i+1-len(h.Counts))...)
	}
	h.Counts[i]++
	h.N++
	h.Max = max(h.Max, us)
}

func (h *Hist) Add(o Hist) {
	if len(o.Counts) > len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, len(o.Counts)-len(h.Counts))...)
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.N += o.N
	h.Max = max(h.Max, o.Max)
}

// Quantile returns the upper bound of the bucket holding quantile q.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.N == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.N)))
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			us := min(math.Exp2(float64(i+1)/histBuckets)-1, h.Max)
			return time.Duration(us * float64(time.Microsecond))
		}
	}
	return time.Duration(h.Max * float64(time.Microsecond))
}
