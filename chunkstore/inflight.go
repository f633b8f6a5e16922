package chunkstore

import (
	"context"
	"sync"
)

// inflight coalesces the chunks concurrent PutMany calls of one process
// store: a chunk one call is storing is waited for by another rather than
// compressed and written a second time (ingest runs several batches at
// once, and the same chunk often sits in neighbouring batches). Without it
// the template ingest stored 0.4% of its chunks twice.
type inflight struct {
	mu    sync.Mutex
	calls map[ID]*putCall
}

// putCall is one PutMany's set of chunks; done is closed when the call
// has returned, err says whether its chunks may be missing.
type putCall struct {
	done chan struct{}
	err  error
}

// take registers the chunks of fresh no other call is storing under a new
// call, and returns them, the chunks other calls are storing, and the
// calls to wait for.
func (f *inflight) take(fresh []Chunk) (mine, theirs []Chunk, waits []*putCall, call *putCall) {
	call = &putCall{done: make(chan struct{})}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[ID]*putCall{}
	}
	seen := map[*putCall]bool{}
	for _, c := range fresh {
		if other := f.calls[c.ID]; other != nil {
			theirs = append(theirs, c)
			if !seen[other] {
				seen[other] = true
				waits = append(waits, other)
			}
			continue
		}
		f.calls[c.ID] = call
		mine = append(mine, c)
	}
	return mine, theirs, waits, call
}

// finish ends call, which held the chunks mine, with its result.
func (f *inflight) finish(call *putCall, mine []Chunk, err error) {
	f.mu.Lock()
	for _, c := range mine {
		if f.calls[c.ID] == call {
			delete(f.calls, c.ID)
		}
	}
	f.mu.Unlock()
	call.err = err
	close(call.done)
}

// wait waits for the calls of waits to end.
func wait(ctx context.Context, waits []*putCall) error {
	for _, w := range waits {
		select {
		case <-w.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
