package socketserver

import (
	"hash/maphash"
	"sync"
	"time"
)

// registry holds the sessions of this server, one per device, in shards so
// that deliveries to different devices do not contend on one lock, and
// the takeover notices (fences) for devices with no session here yet.
type registry struct {
	seed   maphash.Seed
	shards [64]shard
}

// shard holds the sessions of some devices.
type shard struct {
	mu sync.Mutex // guards m and fences
	m  map[string]*session
	// fences keep takeover notices for devices not (yet) registered here:
	// a HELLO whose store call finished just before a newer HELLO elsewhere
	// registers after the notice arrived, and must still lose.
	fences map[string]fence
}

type fence struct {
	epoch uint64
	at    time.Time
}

// fenceTTL is how long a takeover notice waits for a connection to register.
const fenceTTL = 30 * time.Second

func (r *registry) init() {
	r.seed = maphash.MakeSeed()
	for i := range r.shards {
		r.shards[i].m = map[string]*session{}
		r.shards[i].fences = map[string]fence{}
	}
}

func (r *registry) shard(device string) *shard {
	return &r.shards[maphash.String(r.seed, device)%uint64(len(r.shards))]
}

// register makes s the session of its device here. Of two sessions of one
// device, the higher epoch wins; so does a takeover notice that arrived
// before s registered. It returns the session that lost, to be told: the
// one s replaced, or s itself; nil if none.
func (r *registry) register(s *session) (loser *session) {
	sh := r.shard(s.device)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.m[s.device]
	if f, ok := sh.fences[s.device]; old != nil && old.epoch > s.epoch || ok && f.epoch > s.epoch {
		return s
	}
	sh.m[s.device] = s
	return old
}

// unregister forgets s, unless a newer session of its device replaced it.
func (r *registry) unregister(s *session) {
	sh := r.shard(s.device)
	sh.mu.Lock()
	if sh.m[s.device] == s {
		delete(sh.m, s.device)
	}
	sh.mu.Unlock()
}

func (r *registry) lookup(device string) *session {
	sh := r.shard(device)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m[device]
}

func (r *registry) all() []*session {
	var out []*session
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, s := range sh.m {
			out = append(out, s)
		}
		sh.mu.Unlock()
	}
	return out
}

// appendIf appends the sessions for which keep holds to dst; keep runs
// under a shard's lock, so it must not call into the session. The
// heartbeat sweep reuses dst, and allocates nothing per sweep.
func (r *registry) appendIf(dst []*session, keep func(*session) bool) []*session {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, s := range sh.m {
			if keep(s) {
				dst = append(dst, s)
			}
		}
		sh.mu.Unlock()
	}
	return dst
}

// takeover keeps a takeover notice for device, for a connection that may
// still be between its store call and its registration, and returns the
// device's session here, if any.
func (r *registry) takeover(device string, epoch uint64) *session {
	sh := r.shard(device)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.fences[device]; epoch > f.epoch {
		sh.fences[device] = fence{epoch: epoch, at: time.Now()}
	}
	return sh.m[device]
}

// pruneFences forgets takeover notices that no connection claimed in time.
func (r *registry) pruneFences() {
	old := time.Now().Add(-fenceTTL)
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for d, f := range sh.fences {
			if f.at.Before(old) {
				delete(sh.fences, d)
			}
		}
		sh.mu.Unlock()
	}
}

// Deliver implements store.Handler.
func (s *Server) Deliver(device string, seq uint64, payload []byte) {
	if sess := s.sessions.lookup(device); sess != nil {
		sess.deliver(seq, payload)
	}
}

// TakenOver implements store.Handler. The notice is also kept for a while:
// a connection of this device may still be between its store call and
// its registration.
func (s *Server) TakenOver(device string, epoch uint64) {
	sess := s.sessions.takeover(device, epoch)
	if sess == nil {
		s.metrics.fenced.Inc()
	} else if sess.epoch < epoch {
		sess.takenOver()
	}
}
