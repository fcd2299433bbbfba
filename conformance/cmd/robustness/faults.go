package main

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"time"
)

// The faults. Each is injected and healed by one call; the injector runs
// them one after another, a short random pause between them.
const (
	faultKillInstance   = "kill-instance"   // kill -9 a Koine, restart it 1 s later (same port, same database)
	faultFreezeInstance = "freeze-instance" // SIGSTOP a Koine for 3 s, then SIGCONT
	faultKillDB         = "kill-db"         // kill -9 the database server, restart it (same data, same port)
	faultFreezeDB       = "freeze-db"       // SIGSTOP the database server and its children for 3 s
	faultCutConns       = "cut-connections" // the proxy cuts all of one instance's database connections (4 times, 0.1-0.4 s apart)
)

// faultRecord is one injected fault, for the report and for placing
// anomalies in time.
type faultRecord struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Start  int64  `json:"start_ns"`
	Healed int64  `json:"healed_ns"` // everything back up (Koine ready, database accepting)
	Detail string `json:"detail,omitempty"`
	Error  string `json:"error,omitempty"`
}

func faultKinds(backend string) []string {
	if backend == "sqlite" {
		return []string{faultKillInstance, faultFreezeInstance}
	}
	return []string{faultKillInstance, faultFreezeInstance, faultKillDB, faultFreezeDB, faultCutConns}
}

type injector struct {
	c     *cluster
	rng   *rand.Rand
	clock func() int64
	logf  func(format string, args ...interface{})

	mu      sync.Mutex
	records []faultRecord
}

// longestFault bounds how long one fault takes to inject and heal on a
// healthy machine; no fault starts unless it can be healed this long
// before the load ends.
const longestFault = 5 * time.Second

// run injects faults from `first` after the start until `healBy`, in
// random order: every kind once per round, each round shuffled.
func (j *injector) run(ctx context.Context, start time.Time, first time.Duration, healBy time.Time) {
	kinds := faultKinds(j.c.o.backend)
	var round []string
	sleepCtx(ctx, time.Until(start.Add(first)))
	for ctx.Err() == nil && time.Now().Add(longestFault).Before(healBy) {
		if len(round) == 0 {
			round = append([]string(nil), kinds...)
			j.rng.Shuffle(len(round), func(a, b int) { round[a], round[b] = round[b], round[a] })
		}
		kind := round[0]
		round = round[1:]
		rec := j.inject(ctx, kind)
		j.mu.Lock()
		j.records = append(j.records, rec)
		j.mu.Unlock()
		if rec.Error != "" {
			j.logf("fault %s on %s: %s", rec.Kind, rec.Target, rec.Error)
		}
		sleepCtx(ctx, time.Duration(500+j.rng.Intn(1000))*time.Millisecond)
	}
}

func (j *injector) inject(ctx context.Context, kind string) faultRecord {
	c := j.c
	in := c.instances[j.rng.Intn(len(c.instances))]
	rec := faultRecord{Kind: kind, Target: in.proc.Name(), Start: j.clock()}
	var err error
	switch kind {
	case faultKillInstance:
		c.killInstance(in)
		sleepCtx(ctx, time.Second)
		err = c.startInstance(ctx, in)
	case faultFreezeInstance:
		in.proc.Freeze()
		sleepCtx(ctx, 3*time.Second)
		in.proc.Thaw()
		err = waitReadyz(ctx, in, time.Minute)
	case faultKillDB:
		rec.Target = c.db.proc.Name()
		c.db.proc.Kill()
		sleepCtx(ctx, 500*time.Millisecond)
		if err = c.db.restart(ctx); err == nil {
			err = c.waitAllReady(ctx, time.Minute)
		}
	case faultFreezeDB:
		rec.Target = c.db.proc.Name()
		c.db.proc.Freeze()
		sleepCtx(ctx, 3*time.Second)
		c.db.proc.Thaw()
		err = c.waitAllReady(ctx, time.Minute)
	case faultCutConns:
		// A few cuts in a row, so that some land while a COMMIT is in
		// flight (Koine then asks the database whether it took effect).
		var cut []string
		for i := 0; i < 4; i++ {
			if i > 0 {
				sleepCtx(ctx, time.Duration(100+j.rng.Intn(300))*time.Millisecond)
			}
			cut = append(cut, fmt.Sprint(in.proxy.cut()))
		}
		rec.Detail = "connections cut: " + strings.Join(cut, ", ")
		err = waitReadyz(ctx, in, time.Minute)
	}
	rec.Healed = j.clock()
	if err != nil {
		rec.Error = err.Error()
	}
	return rec
}

func (j *injector) faults() []faultRecord {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]faultRecord(nil), j.records...)
}
