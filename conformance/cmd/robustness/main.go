// Command robustness is a robustness test of Koine in the style of etcd's
// tests/robustness: clients run Put, Range, Txn (compare-and-swap),
// DeleteRange and lease operations on a few hot keys, spread over one or
// more Koine instances, while faults are injected (Koine killed or frozen;
// on PostgreSQL and MariaDB also the database killed or frozen and the
// instances' database connections cut). Every operation is recorded with
// its call and return times and its result, and the history is checked
// for linearizability with porcupine against a model of etcd's key-value
// store. Watchers on every instance, resumed across faults, record every
// event; the watch guarantees are checked on the same run.
//
//	robustness -backend sqlite -koine-bin target/debug/koine
//	robustness -backend postgres -instances 3 -duration 20s -report out.json
//
// It prints one summary line (PASS or FAIL) and the anomalies, writes
// -report as JSON, and exits 1 on any anomaly. -self-test perturbs one
// recorded read and drops one watch event, to show the checks fail.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

type options struct {
	backend      string
	instances    int
	koineBin     string
	duration     time.Duration
	clients      int
	keys         int
	seed         int64
	report       string
	workDir      string
	keep         bool
	selfTest     bool
	checkTimeout time.Duration
	pause        time.Duration
	crossReads   bool
	checkHistory string
}

const keyPrefix = "/robustness/"

func main() {
	var o options
	flag.StringVar(&o.backend, "backend", "sqlite", "sqlite, postgres or mysql")
	flag.IntVar(&o.instances, "instances", 0, "Koine instances on the database (default 1 for sqlite, which allows only 1; 3 for postgres and mysql)")
	flag.StringVar(&o.koineBin, "koine-bin", "target/debug/koine", "the Koine binary")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long the load runs")
	flag.IntVar(&o.clients, "clients", 6, "concurrent clients, spread over the instances")
	flag.IntVar(&o.keys, "keys", 4, "hot keys")
	flag.Int64Var(&o.seed, "seed", 0, "random seed (0: from the clock)")
	flag.StringVar(&o.report, "report", "", "write a JSON summary here")
	flag.StringVar(&o.workDir, "work-dir", "", "directory for the run's directory (logs, data; default: the system temp dir)")
	flag.BoolVar(&o.keep, "keep", false, "keep the run's directory even if the run passed")
	flag.BoolVar(&o.selfTest, "self-test", false, "perturb one recorded read and drop one watch event: the checks must fail")
	flag.DurationVar(&o.checkTimeout, "check-timeout", 2*time.Minute, "porcupine's time limit (beyond it the result is unknown: a failure)")
	flag.DurationVar(&o.pause, "pause", 0, "pause of each client between operations")
	flag.BoolVar(&o.crossReads, "cross-reads", false, "each client reads through another instance than the one it writes through")
	flag.StringVar(&o.checkHistory, "check-history", "", "run nothing: check the history.json of an earlier run")
	flag.Parse()
	os.Exit(run(&o))
}

// report is the JSON summary.
type report struct {
	Pass            bool           `json:"pass"`
	Backend         string         `json:"backend"`
	Instances       int            `json:"instances"`
	CrossReads      bool           `json:"cross_reads,omitempty"`
	Clients         int            `json:"clients"`
	Keys            int            `json:"keys"`
	Seed            int64          `json:"seed"`
	Duration        string         `json:"duration"`
	SelfTest        bool           `json:"self_test,omitempty"`
	Operations      int            `json:"operations"`
	OperationsBy    map[string]int `json:"operations_by_kind"`
	UnknownOutcome  int            `json:"unknown_outcome"`
	LeaseNotFound   int            `json:"lease_not_found"`
	FinalRevision   int64          `json:"final_revision"`
	Faults          map[string]int `json:"faults"`
	FaultLog        []faultRecord  `json:"fault_log"`
	Linearizability linStats       `json:"linearizability"`
	Watch           watchStats     `json:"watch"`
	Anomalies       []string       `json:"anomalies"`
	AnomalyCounts   map[string]int `json:"anomaly_counts"`
	WorkDir         string         `json:"work_dir,omitempty"`
	Errors          []string       `json:"errors,omitempty"`
}

func run(o *options) int {
	if o.checkHistory != "" {
		return checkOnly(o)
	}
	if o.instances == 0 {
		o.instances = 1
		if o.backend != "sqlite" {
			o.instances = 3
		}
	}
	switch {
	case o.backend != "sqlite" && o.backend != "postgres" && o.backend != "mysql":
		fmt.Fprintf(os.Stderr, "-backend must be sqlite, postgres or mysql\n")
		return 2
	case o.backend == "sqlite" && o.instances != 1:
		fmt.Fprintf(os.Stderr, "sqlite allows one instance\n")
		return 2
	case o.instances < 1 || o.clients < 1 || o.keys < 1 || o.duration <= 0:
		fmt.Fprintf(os.Stderr, "-instances, -clients, -keys and -duration must be positive\n")
		return 2
	}
	if o.seed == 0 {
		o.seed = time.Now().UnixNano()
	}
	bin, err := filepath.Abs(o.koineBin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "Koine binary: %v\n", err)
		return 2
	}
	o.koineBin = bin

	if o.workDir != "" {
		if err := os.MkdirAll(o.workDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	runDir, err := os.MkdirTemp(o.workDir, "koine-robustness-"+o.backend+"-")
	if err == nil {
		// PostgreSQL runs as its own user when we are root: it must reach
		// its directory inside this one.
		err = os.Chmod(runDir, 0o755)
	}
	if err == nil {
		runDir, err = filepath.Abs(runDir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}

	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	rep := &report{Backend: o.backend, Instances: o.instances, CrossReads: o.crossReads, Clients: o.clients, Keys: o.keys,
		Seed: o.seed, Duration: o.duration.String(), SelfTest: o.selfTest, WorkDir: runDir}
	an := &anomalies{}
	logf := func(format string, args ...interface{}) {
		fmt.Fprintf(os.Stderr, "robustness: "+format+"\n", args...)
	}
	logf("%s, %d instance(s), %d clients, %d keys, %s, seed %d; run directory %s",
		o.backend, o.instances, o.clients, o.keys, o.duration, o.seed, runDir)

	h, final, fatal := execute(ctx, o, runDir, rep, an, logf)
	if fatal != nil {
		rep.Errors = append(rep.Errors, fatal.Error())
		an.add("run", "%v", fatal)
	}
	if h != nil && fatal == nil {
		// The history as recorded (before any self-test perturbation), for
		// -check-history; removed with the run directory if the run passes.
		path := filepath.Join(runDir, "history.json")
		if err := writeHistory(path, o.backend, o.instances, h, final); err != nil {
			logf("writing the history: %v", err)
		}
		if o.selfTest {
			selfTest(h, logf)
		}
		checkRevisions(h, an)
		rep.Watch = checkWatches(h, final, an)
		logf("checking linearizability of %d operations (porcupine, limit %s)", len(h.records), o.checkTimeout)
		rep.Linearizability = checkLinearizability(h, o.checkTimeout, runDir, an)
	}
	rep.Anomalies = an.list
	if rep.Anomalies == nil {
		rep.Anomalies = []string{}
	}
	rep.AnomalyCounts = an.byCheck
	rep.Pass = an.count() == 0

	keepDir := !rep.Pass || o.keep
	if !keepDir {
		rep.WorkDir = ""
	}
	printSummary(rep, an)
	if o.report != "" {
		if err := writeJSON(o.report, rep); err != nil {
			logf("writing the report: %v", err)
		}
	}
	if keepDir {
		fmt.Printf("run directory (logs, data, history.json for -check-history): %s\n", runDir)
	} else {
		_ = os.RemoveAll(runDir)
	}
	if !rep.Pass {
		return 1
	}
	return 0
}

// execute starts everything, runs the load with faults and the watchers,
// reads the final state, and stops everything. It returns the history and
// the final state (one kv per key).
func execute(ctx context.Context, o *options, runDir string, rep *report, an *anomalies,
	logf func(string, ...interface{})) (*history, []kv, error) {
	c, err := startCluster(ctx, o, runDir)
	if c != nil {
		defer c.stop()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("starting: %w", err)
	}
	keys := make([]string, o.keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("%sk%d", keyPrefix, i)
	}
	start := time.Now()
	clock := func() int64 { return int64(time.Since(start)) }
	rng := rand.New(rand.NewSource(o.seed))

	var closers []*clientv3.Client
	defer func() {
		for _, cl := range closers {
			cl.Close()
		}
	}()
	newCli := func(in *instance) (*clientv3.Client, error) {
		cl, err := newClient(in)
		if err == nil {
			closers = append(closers, cl)
		}
		return cl, err
	}

	// Watchers: at least one per instance (two on a single instance, so
	// that watchers can be compared), each starting on its own instance.
	watchClients := make([]*clientv3.Client, len(c.instances))
	for i, in := range c.instances {
		if watchClients[i], err = newCli(in); err != nil {
			return nil, nil, err
		}
	}
	nw := len(c.instances)
	if nw < 2 {
		nw = 2
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var watchers []*watcher
	var wwg sync.WaitGroup
	for i := 0; i < nw; i++ {
		w := &watcher{id: i, prefix: keyPrefix, clients: watchClients, insts: c.instances, clock: clock}
		watchers = append(watchers, w)
		wwg.Add(1)
		go func(first int) {
			defer wwg.Done()
			w.run(watchCtx, first)
		}(i % len(c.instances))
	}

	// The load.
	var tcs []*trafficClient
	for i := 0; i < o.clients; i++ {
		in := c.instances[i%len(c.instances)]
		cl, err := newCli(in)
		if err != nil {
			return nil, nil, err
		}
		readCl := cl
		if o.crossReads && len(c.instances) > 1 {
			if readCl, err = newCli(c.instances[(i+1)%len(c.instances)]); err != nil {
				return nil, nil, err
			}
		}
		tcs = append(tcs, newTrafficClient(i, in, cl, readCl, o.seed+int64(i)+1, keys, keyPrefix, clock))
	}
	loadEnd := start.Add(o.duration)
	loadCtx, stopLoad := context.WithDeadline(ctx, loadEnd)
	defer stopLoad()
	var lwg sync.WaitGroup
	for _, tc := range tcs {
		lwg.Add(1)
		go func(tc *trafficClient) {
			defer lwg.Done()
			tc.run(loadCtx, o.pause)
		}(tc)
	}
	margin := o.duration / 5
	if margin < 4*time.Second {
		margin = 4 * time.Second
	}
	inj := &injector{c: c, rng: rand.New(rand.NewSource(rng.Int63())), clock: clock, logf: logf}
	var fwg sync.WaitGroup
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		inj.run(loadCtx, start, 1500*time.Millisecond, loadEnd.Add(-margin))
	}()
	lwg.Wait()
	fwg.Wait()
	faults := inj.faults()
	rep.FaultLog = faults
	rep.Faults = map[string]int{}
	for _, f := range faults {
		rep.Faults[f.Kind]++
		if f.Error != "" {
			an.add("fault", "%s on %s at %s did not heal: %s", f.Kind, f.Target, secs(f.Start), f.Error)
		}
	}
	if ctx.Err() != nil {
		return nil, nil, fmt.Errorf("interrupted")
	}
	logf("load done: %s of faults: %s", time.Since(start).Round(time.Millisecond), faultSummary(rep.Faults))

	// Everything must be up again.
	if err := c.waitAllReady(ctx, time.Minute); err != nil {
		return nil, nil, fmt.Errorf("after the load: %w", err)
	}

	// The final state, read on every instance: they must agree, and it is
	// part of the history.
	var records []*record
	for _, tc := range tcs {
		records = append(records, tc.ops...)
	}
	var finals []*record
	for i, in := range c.instances {
		var got *record
		for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
			r := &record{Client: -(i + 1), Instance: in.id, Input: opInput{Kind: opList}}
			rctx, cancel := context.WithTimeout(ctx, opTimeout)
			r.Call = clock()
			out, err := listKeys(rctx, watchClients[i], keyPrefix, keys)
			r.Return = clock()
			cancel()
			if err != nil {
				out = opOutput{Status: statusUnknown, Err: err.Error()}
			}
			r.Output = out
			records = append(records, r)
			if err == nil {
				got = r
				break
			}
			sleepCtx(ctx, 500*time.Millisecond)
		}
		if got == nil {
			return nil, nil, fmt.Errorf("the final read on instance %d failed", i)
		}
		finals = append(finals, got)
	}
	h := &history{keys: keys, records: records, watchers: watchers, faults: faults}
	for _, f := range finals {
		if f.Output.Rev > h.finalRev {
			h.finalRev = f.Output.Rev
		}
	}
	for _, f := range finals[1:] {
		if f.Output.Rev != finals[0].Output.Rev || !sameList(f.Output.List, finals[0].Output.List) {
			an.add("final-state", "instances disagree after the load: %s; %s", h.describe(finals[0]), h.describe(f))
		}
	}
	final := finals[0].Output.List
	for _, f := range finals {
		if f.Output.Rev == h.finalRev {
			final = f.Output.List
		}
	}
	rep.FinalRevision = h.finalRev

	// Every watcher must get every event up to the final revision.
	deadline := time.Now().Add(30 * time.Second)
	for _, w := range watchers {
		for w.last() < h.finalRev && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	stopWatch()
	wwg.Wait()
	for _, w := range watchers {
		if w.lastRev < h.finalRev {
			an.add("watch-progress", "watcher %d received events up to revision %d only, 30 s after the final revision %d was read%s",
				w.id, w.lastRev, h.finalRev, describeStarts(w))
		}
	}

	// Operation counts.
	rep.OperationsBy = map[string]int{}
	for _, r := range records {
		rep.Operations++
		rep.OperationsBy[r.Input.Kind.String()]++
		switch r.Output.Status {
		case statusUnknown:
			rep.UnknownOutcome++
		case statusLeaseNotFound:
			rep.LeaseNotFound++
		}
	}
	return h, final, nil
}

func sameList(a, b []kv) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// selfTest plants two anomalies in the recorded history: a stale read (a
// successful Get answers the key's previous value with its current header
// revision) and a lost watch event (one event dropped from one watcher).
// Both must be reported.
func selfTest(h *history, logf func(string, ...interface{})) {
	// The previous version of each key's value, from the watch history.
	prevOf := map[string]kv{} // value -> the version it replaced
	for _, e := range h.watchers[0].events {
		if !e.Delete && e.Prev != nil {
			prevOf[e.KV.Value] = *e.Prev
		}
	}
	planted := false
	for i := len(h.records) / 2; i < len(h.records) && !planted; i++ {
		r := h.records[i]
		if r.Input.Kind != opGet || r.Output.Status != statusOK || !r.Output.KV.exists() {
			continue
		}
		if p, ok := prevOf[r.Output.KV.Value]; ok {
			logf("self-test: %s now answers the stale %s", h.describe(r), p)
			r.Output.KV = p
			planted = true
		}
	}
	if !planted {
		for _, r := range h.records {
			if r.Input.Kind == opGet && r.Output.Status == statusOK {
				logf("self-test: %s now answers a value never written", h.describe(r))
				r.Output.KV = kv{Value: "self-test", ModRev: r.Output.Rev, CreateRev: r.Output.Rev, Version: 1}
				break
			}
		}
	}
	w := h.watchers[len(h.watchers)-1]
	if n := len(w.events); n > 0 {
		i := n / 2
		logf("self-test: dropping watcher %d's event #%d (%s)", w.id, i, w.events[i])
		w.events = append(w.events[:i:i], w.events[i+1:]...)
	}
}

// checkOnly checks a recorded history again.
func checkOnly(o *options) int {
	d, h, err := readHistory(o.checkHistory)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logf := func(format string, args ...interface{}) {
		fmt.Fprintf(os.Stderr, "robustness: "+format+"\n", args...)
	}
	an := &anomalies{}
	rep := &report{Backend: d.Backend, Instances: d.Instances, Operations: len(h.records), FinalRevision: h.finalRev, Faults: map[string]int{}}
	for _, f := range h.faults {
		rep.Faults[f.Kind]++
	}
	for _, r := range h.records {
		if r.Output.Status == statusUnknown {
			rep.UnknownOutcome++
		}
	}
	if o.selfTest {
		selfTest(h, logf)
	}
	checkRevisions(h, an)
	rep.Watch = checkWatches(h, d.Final, an)
	rep.Linearizability = checkLinearizability(h, o.checkTimeout, filepath.Dir(o.checkHistory), an)
	rep.Anomalies = an.list
	rep.AnomalyCounts = an.byCheck
	rep.Pass = an.count() == 0
	printSummary(rep, an)
	if o.report != "" {
		if err := writeJSON(o.report, rep); err != nil {
			logf("writing the report: %v", err)
		}
	}
	if !rep.Pass {
		return 1
	}
	return 0
}

func faultSummary(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s:%d", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func printSummary(rep *report, an *anomalies) {
	verdict := "PASS"
	if !rep.Pass {
		verdict = "FAIL"
	}
	lin := rep.Linearizability
	fmt.Printf("%s backend=%s instances=%d operations=%d unknown-outcome=%d faults=%s watch-events=%d final-revision=%d porcupine=%s(%.1fs, %d ops) anomalies=%d\n",
		verdict, rep.Backend, rep.Instances, rep.Operations, rep.UnknownOutcome, faultSummary(rep.Faults),
		rep.Watch.Events, rep.FinalRevision, orDash(lin.Result), lin.Seconds, lin.Operations, an.count())
	for _, a := range an.list {
		fmt.Printf("  ANOMALY %s\n", a)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(path string, v interface{}) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
