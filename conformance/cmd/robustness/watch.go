package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchEvent is one event as a watcher received it.
type watchEvent struct {
	Delete   bool
	Key      string
	KV       kv  // for a delete: only ModRev (the deletion's revision)
	Prev     *kv // prev_kv; nil when absent
	Instance int // where it came from
	Recv     int64
}

func (e watchEvent) rev() int64 { return e.KV.ModRev }

func (e watchEvent) String() string {
	prev := "<none>"
	if e.Prev != nil {
		prev = e.Prev.String()
	}
	if e.Delete {
		return fmt.Sprintf("DELETE %s @%d prev=%s", e.Key, e.KV.ModRev, prev)
	}
	return fmt.Sprintf("PUT %s=%s prev=%s", e.Key, e.KV, prev)
}

// same compares what the server sent (not where or when it was received).
func (e watchEvent) same(o watchEvent) bool {
	if e.Delete != o.Delete || e.Key != o.Key || e.KV != o.KV || (e.Prev == nil) != (o.Prev == nil) {
		return false
	}
	return e.Prev == nil || *e.Prev == *o.Prev
}

// watchStart is one (re)creation of a watcher's watch.
type watchStart struct {
	At       int64  `json:"at_ns"`
	Instance int    `json:"instance"`
	FromRev  int64  `json:"from_revision"`
	Reason   string `json:"reason"`
}

// watcher watches the key prefix from revision 1 with prev_kv, for the
// whole run. When its watch fails or its instance is killed it resumes on
// the next live instance from the revision after the last one it received
// (etcd's clients' rule). clientv3 also resumes by itself after a broken
// stream, on the same instance, by the same rule.
type watcher struct {
	id      int
	prefix  string
	clients []*clientv3.Client // one per instance
	insts   []*instance
	clock   func() int64

	mu      sync.Mutex
	events  []watchEvent
	lastRev int64
	starts  []watchStart
	errors  []string
}

func (w *watcher) last() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastRev
}

func (w *watcher) run(ctx context.Context, first int) {
	cur := first
	reason := "start"
	for ctx.Err() == nil {
		in := w.insts[cur]
		if !in.isUp() {
			// Move to the next instance that is up (on SQLite: wait for the
			// only one to come back).
			cur = w.pickUp(cur)
			in = w.insts[cur]
			if !in.isUp() {
				sleepCtx(ctx, 50*time.Millisecond)
				continue
			}
		}
		w.mu.Lock()
		from := w.lastRev + 1
		if w.lastRev == 0 {
			from = 1
		}
		w.starts = append(w.starts, watchStart{At: w.clock(), Instance: cur, FromRev: from, Reason: reason})
		w.mu.Unlock()
		reason = w.watchOnce(ctx, in, from)
		if ctx.Err() != nil {
			return
		}
		// A fresh instance next time: the one after this, if up.
		cur = w.pickUp(cur)
	}
}

// pickUp returns the first instance after cur that is up, else cur.
func (w *watcher) pickUp(cur int) int {
	n := len(w.insts)
	for i := 1; i <= n; i++ {
		j := (cur + i) % n
		if w.insts[j].isUp() {
			return j
		}
	}
	return cur
}

// watchOnce runs one watch until it fails, its instance goes down or ctx
// ends; it returns why it stopped.
func (w *watcher) watchOnce(ctx context.Context, in *instance, from int64) string {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	down := in.downCh()
	ch := w.clients[in.id].Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV())
	for {
		select {
		case <-ctx.Done():
			return "done"
		case <-down:
			return fmt.Sprintf("instance %d killed", in.id)
		case resp, ok := <-ch:
			if !ok {
				return "watch channel closed"
			}
			if err := resp.Err(); err != nil {
				w.mu.Lock()
				w.errors = append(w.errors, fmt.Sprintf("instance %d: %v", in.id, err))
				w.mu.Unlock()
				return "watch error: " + err.Error()
			}
			if resp.Canceled {
				return "watch canceled"
			}
			if len(resp.Events) == 0 {
				continue
			}
			now := w.clock()
			w.mu.Lock()
			for _, ev := range resp.Events {
				e := watchEvent{
					Delete:   ev.Type == mvccpb.DELETE,
					Key:      string(ev.Kv.Key),
					Instance: in.id,
					Recv:     now,
				}
				if e.Delete {
					e.KV = kv{ModRev: ev.Kv.ModRevision}
				} else {
					e.KV = toKV(ev.Kv)
				}
				if ev.PrevKv != nil {
					p := toKV(ev.PrevKv)
					e.Prev = &p
				}
				w.events = append(w.events, e)
				if e.rev() > w.lastRev {
					w.lastRev = e.rev()
				}
			}
			w.mu.Unlock()
		}
	}
}
