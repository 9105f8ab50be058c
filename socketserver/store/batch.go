package store

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher runs the scripts of many connections as pipelines: each Redis
// round trip costs the server two syscalls and a pool checkout, so under
// load a few pipelines of many commands beat many single commands. A
// lone command still goes out at once.
type batcher struct {
	rdb  redis.UniversalClient
	reqs chan *scriptReq
	quit chan struct{}
}

type scriptReq struct {
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd
	done   chan struct{}
}

const (
	batchWorkers = 8
	batchMax     = 128
	// batchTimeout bounds one pipeline, and so every call that passes no
	// deadline of its own; callers treat a timeout as an unknown outcome.
	batchTimeout = 2 * time.Second
)

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{rdb: rdb, reqs: make(chan *scriptReq, batchWorkers*batchMax), quit: make(chan struct{})}
	for i := 0; i < batchWorkers; i++ {
		go b.work()
	}
	return b
}

// run executes script and waits for its reply or ctx.
func (b *batcher) run(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	return b.start(ctx, script, keys, args...).wait(ctx)
}

// start queues script; wait for its reply. Several started before their
// waits share pipelines.
func (b *batcher) start(ctx context.Context, script *redis.Script, keys []string, args ...any) *scriptReq {
	r := &scriptReq{script: script, keys: keys, args: args, done: make(chan struct{})}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		r.cmd = errCmd(ctx, ctx.Err())
		close(r.done)
	case <-b.quit:
		r.cmd = errCmd(ctx, redis.ErrClosed)
		close(r.done)
	}
	return r
}

func (r *scriptReq) wait(ctx context.Context) *redis.Cmd {
	select {
	case <-r.done:
		return r.cmd
	case <-ctx.Done():
		return errCmd(ctx, ctx.Err())
	}
}

func errCmd(ctx context.Context, err error) *redis.Cmd {
	c := redis.NewCmd(ctx)
	c.SetErr(err)
	return c
}

func (b *batcher) work() {
	batch := make([]*scriptReq, 0, batchMax)
	for {
		var first *scriptReq
		select {
		case first = <-b.reqs:
		case <-b.quit:
			return
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < batchMax {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		b.exec(batch)
	}
}

func (b *batcher) exec(batch []*scriptReq) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	if len(batch) == 1 {
		r := batch[0]
		r.cmd = r.script.Run(ctx, b.rdb, r.keys, r.args...)
		close(r.done)
		return
	}
	_, _ = b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range batch {
			r.cmd = r.script.EvalSha(ctx, p, r.keys, r.args...)
		}
		return nil
	})
	for _, r := range batch {
		// After a Redis restart its script cache is empty: Run loads it.
		if err := r.cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			r.cmd = r.script.Run(ctx, b.rdb, r.keys, r.args...)
		}
		close(r.done)
	}
}

// close stops the workers; later calls fail with redis.ErrClosed.
func (b *batcher) close() { close(b.quit) }
