package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// anomalies collects what the checks found, by check.
type anomalies struct {
	list    []string
	byCheck map[string]int
}

const maxPerCheck = 25 // messages kept per check (all are counted)

func (a *anomalies) add(check, format string, args ...interface{}) {
	if a.byCheck == nil {
		a.byCheck = map[string]int{}
	}
	a.byCheck[check]++
	if a.byCheck[check] <= maxPerCheck {
		a.list = append(a.list, check+": "+fmt.Sprintf(format, args...))
	} else if a.byCheck[check] == maxPerCheck+1 {
		a.list = append(a.list, check+": (further anomalies of this check counted, not listed)")
	}
}

func (a *anomalies) count() int {
	n := 0
	for _, c := range a.byCheck {
		n += c
	}
	return n
}

func secs(ns int64) string { return fmt.Sprintf("%.3fs", float64(ns)/1e9) }

// history is everything recorded, with what the checks need to name
// operations precisely.
type history struct {
	keys     []string
	records  []*record
	watchers []*watcher
	faults   []faultRecord
	finalRev int64
}

func (h *history) describe(r *record) string {
	ret := secs(r.Return)
	if r.Output.Status == statusUnknown {
		ret = "?"
	}
	who := fmt.Sprintf("client %d", r.Client)
	if r.Client < 0 {
		who = "final read"
	}
	return fmt.Sprintf("%s by %s on instance %d [%s..%s]%s",
		describeOp(&r.Input, &r.Output, h.keys), who, r.Instance, secs(r.Call), ret, h.faultsDuring(r.Call, r.Return))
}

// faultsDuring names the faults active during [from, to].
func (h *history) faultsDuring(from, to int64) string {
	var names []string
	for _, f := range h.faults {
		if f.Start <= to && f.Healed >= from {
			names = append(names, fmt.Sprintf("%s %s [%s..%s]", f.Kind, f.Target, secs(f.Start), secs(f.Healed)))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " during " + strings.Join(names, ", ")
}

// checkRevisions: simple consequences of linearizability, checked first
// because their messages point at the operations involved:
//   - an operation that starts after another returned sees at least its
//     revision (no stale reads, within a client or across clients and
//     instances);
//   - no two acknowledged writes share a revision.
func checkRevisions(h *history, an *anomalies) {
	var defs []*record
	for _, r := range h.records {
		if r.Output.Status == statusOK {
			defs = append(defs, r)
		}
	}
	byReturn := append([]*record(nil), defs...)
	sort.Slice(byReturn, func(i, j int) bool { return byReturn[i].Return < byReturn[j].Return })
	byCall := append([]*record(nil), defs...)
	sort.Slice(byCall, func(i, j int) bool { return byCall[i].Call < byCall[j].Call })
	var maxRev *record
	i := 0
	for _, b := range byCall {
		for i < len(byReturn) && byReturn[i].Return < b.Call {
			if maxRev == nil || byReturn[i].Output.Rev > maxRev.Output.Rev {
				maxRev = byReturn[i]
			}
			i++
		}
		if maxRev != nil && b.Output.Rev < maxRev.Output.Rev {
			an.add("revision-order", "%s answered revision %d, but %s had already returned revision %d",
				h.describe(b), b.Output.Rev, h.describe(maxRev), maxRev.Output.Rev)
		}
	}
	writes := map[int64]*record{}
	for _, r := range defs {
		if !ackedChange(r) {
			continue
		}
		if r.Output.Rev < 2 {
			an.add("write-revision", "%s: a change at revision %d (the first write takes 2)", h.describe(r), r.Output.Rev)
		}
		if o, ok := writes[r.Output.Rev]; ok {
			an.add("write-revision", "two acknowledged changes at revision %d: %s and %s", r.Output.Rev, h.describe(o), h.describe(r))
		}
		writes[r.Output.Rev] = r
	}
}

// ackedChange: an acknowledged request known to have changed something.
func ackedChange(r *record) bool {
	if r.Output.Status != statusOK {
		return false
	}
	switch r.Input.Kind {
	case opPut:
		return true
	case opCAS:
		return r.Output.Succeeded
	case opDelete:
		return r.Output.Deleted > 0
	}
	return false
}

// linStats is what the linearizability check reports.
type linStats struct {
	Result     string  `json:"result"`
	Seconds    float64 `json:"seconds"`
	Operations int     `json:"operations"` // given to porcupine
	// Operations whose outcome is unknown, by what the checker made of them
	// (see porcupineHistory).
	UnknownPending      int    `json:"unknown_pending_to_end"`
	UnknownBounded      int    `json:"unknown_bounded"`
	UnknownWritesSeen   int    `json:"unknown_writes_seen"`
	UnknownWritesUnseen int    `json:"unknown_writes_never_seen"`
	UnknownNoEffect     int    `json:"unknown_without_effect"`
	ReadsFailed         int    `json:"failed_reads_left_out"`
	GrantsUnknown       int    `json:"unknown_grants_left_out"`
	Visualization       string `json:"visualization,omitempty"`
}

// porcupineHistory turns the records into porcupine operations. An
// operation whose outcome is unknown may take effect at any time after its
// call, or never: porcupine is given it with the return time "end of the
// history" and the model allows both. Left like that, a few dozen of them
// (clients keep trying while an instance is down) make the search
// exponential, so, as etcd's robustness tests do, the checker uses what
// else was observed to leave out those that surely had no effect and to
// bound when the others took effect. This relies on the watch history being
// complete, which checkWatches verifies (every revision 2..final is there,
// identical on every watcher):
//   - a failed read (Get, list) says nothing: left out;
//   - a LeaseGrant whose outcome is unknown is left out: its id is never
//     used (clients use only leases whose grant was answered), and a lease
//     nothing refers to changes no key and no revision;
//   - a Put or Txn writes a value never written before: if no read, no
//     watch event (value or prev_kv) and no final read ever saw it, it was
//     not applied and is left out; if something saw it, it was applied
//     before the first sighting, which becomes its return time;
//   - a Delete that had an effect made a DELETE event of its key received
//     after its call that no acknowledged Delete or Revoke explains: with
//     no such event it had no effect (left out), else it returns at the
//     last such event's reception at the latest;
//   - a client repeats a Revoke whose outcome is unknown until it knows: if
//     the repeat succeeded the earlier attempts had no effect (left out);
//     if it found no lease, any effect came before it returned, its return
//     time; never known (the run ended): pending to the end.
func porcupineHistory(h *history, st *linStats) []porcupine.Operation {
	seen := map[string]int64{} // value -> earliest time something saw it
	see := func(v string, t int64) {
		if v == "" {
			return
		}
		if old, ok := seen[v]; !ok || t < old {
			seen[v] = t
		}
	}
	var end int64
	for _, r := range h.records {
		if r.Return > end {
			end = r.Return
		}
		if r.Output.Status != statusOK {
			continue
		}
		see(r.Output.KV.Value, r.Return)
		for _, k := range r.Output.List {
			see(k.Value, r.Return)
		}
	}
	// The DELETE events (earliest reception over all watchers), for the
	// unknown Deletes.
	type delEvent struct {
		rev       int64
		key       string
		prevLease int64
		recv      int64
	}
	dels := map[string]*delEvent{} // "rev/key"
	for _, w := range h.watchers {
		for _, e := range w.events {
			see(e.KV.Value, e.Recv)
			if e.Prev != nil {
				see(e.Prev.Value, e.Recv)
			}
			if e.Recv > end {
				end = e.Recv
			}
			if !e.Delete {
				continue
			}
			id := fmt.Sprintf("%d/%s", e.rev(), e.Key)
			d, ok := dels[id]
			if !ok {
				d = &delEvent{rev: e.rev(), key: e.Key, recv: e.Recv}
				if e.Prev != nil {
					d.prevLease = e.Prev.Lease
				}
				dels[id] = d
			}
			if e.Recv < d.recv {
				d.recv = e.Recv
			}
		}
	}
	end++
	// DELETE events that acknowledged requests explain.
	for _, r := range h.records {
		if r.Output.Status != statusOK {
			continue
		}
		switch {
		case r.Input.Kind == opDelete && r.Output.Deleted > 0:
			delete(dels, fmt.Sprintf("%d/%s", r.Output.Rev, h.keys[r.Input.Key]))
		case r.Input.Kind == opRevoke:
			for id, d := range dels {
				if d.rev == r.Output.Rev && d.prevLease == r.Input.Lease {
					delete(dels, id)
				}
			}
		}
	}
	unexplained := map[string][]*delEvent{} // key -> events
	for _, d := range dels {
		unexplained[d.key] = append(unexplained[d.key], d)
	}
	// Each client's next definite Revoke of a lease, for unknown Revokes.
	byClient := map[int][]*record{}
	for _, r := range h.records {
		byClient[r.Client] = append(byClient[r.Client], r)
	}
	revokeSettled := map[*record]*record{}
	for _, rs := range byClient {
		for i, r := range rs {
			if r.Input.Kind != opRevoke || r.Output.Status != statusUnknown {
				continue
			}
			for _, n := range rs[i+1:] {
				if n.Input.Kind == opRevoke && n.Input.Lease == r.Input.Lease && n.Output.Status != statusUnknown {
					revokeSettled[r] = n
					break
				}
			}
		}
	}

	var ops []porcupine.Operation
	for _, r := range h.records {
		ret := r.Return
		if r.Output.Status == statusUnknown {
			switch r.Input.Kind {
			case opGet, opList:
				st.ReadsFailed++
				continue
			case opGrant:
				st.GrantsUnknown++
				continue
			case opPut, opCAS:
				t, ok := seen[r.Input.Value]
				if !ok {
					st.UnknownWritesUnseen++
					continue
				}
				st.UnknownWritesSeen++
				ret = t
				if ret < r.Call {
					// Seen before it was sent: impossible, and porcupine
					// will say so (the write cannot precede its call).
					ret = r.Call
				}
			case opDelete:
				var last int64 = -1
				for _, d := range unexplained[h.keys[r.Input.Key]] {
					if d.recv >= r.Call && d.recv > last {
						last = d.recv
					}
				}
				if last < 0 {
					st.UnknownNoEffect++
					continue
				}
				st.UnknownBounded++
				ret = last
			case opRevoke:
				n, ok := revokeSettled[r]
				switch {
				case ok && n.Output.Status == statusOK:
					st.UnknownNoEffect++
					continue
				case ok:
					st.UnknownBounded++
					ret = n.Return
				default:
					st.UnknownPending++
					ret = end
				}
			default:
				st.UnknownPending++
				ret = end
			}
		}
		client := r.Client
		if client < 0 {
			client = -client + 1000 // final reads: clients of their own
		}
		ops = append(ops, porcupine.Operation{
			ClientId: client,
			Input:    &r.Input,
			Call:     r.Call,
			Output:   &r.Output,
			Return:   ret,
			Metadata: r,
		})
	}
	return ops
}

func checkLinearizability(h *history, timeout time.Duration, runDir string, an *anomalies) linStats {
	var st linStats
	ops := porcupineHistory(h, &st)
	st.Operations = len(ops)
	model := newModel(len(h.keys), h.keys)
	t0 := time.Now()
	res := porcupine.CheckOperationsTimeout(model, ops, timeout)
	st.Seconds = time.Since(t0).Seconds()
	st.Result = string(res)
	switch res {
	case porcupine.Ok:
		return st
	case porcupine.Unknown:
		an.add("linearizability", "porcupine did not finish within %s: the result is unknown (%d operations)", timeout, len(ops))
		return st
	}
	// Illegal: again, verbosely, for the longest linearizable prefix and
	// the visualization.
	res2, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
	msg := fmt.Sprintf("the history of %d operations is not linearizable", len(ops))
	if res2 == porcupine.Illegal {
		msg += diagnose(h, model, ops, info)
		path := filepath.Join(runDir, "linearizability.html")
		if err := porcupine.VisualizePath(model, info, path); err == nil {
			st.Visualization = path
			msg += "\n  visualization: " + path
		}
	}
	an.add("linearizability", "%s", msg)
	return st
}

// diagnose names where the search got stuck: the longest linearizable
// prefix found, the model's state(s) after it, and the operations that
// could not come next.
func diagnose(h *history, model porcupine.Model, ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	partials := info.PartialLinearizations()
	if len(partials) == 0 {
		return ""
	}
	var longest []int
	for _, p := range partials[0] {
		if len(p) > len(longest) {
			longest = p
		}
	}
	in := map[int]bool{}
	st := model.Init()
	for _, id := range longest {
		in[id] = true
		_, st = model.Step(st, ops[id].Input, ops[id].Output)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n  longest linearizable prefix: %d of %d operations; its last ones:", len(longest), len(ops))
	from := len(longest) - 5
	if from < 0 {
		from = 0
	}
	for _, id := range longest[from:] {
		fmt.Fprintf(&b, "\n    %s", h.describe(ops[id].Metadata.(*record)))
	}
	fmt.Fprintf(&b, "\n  model state(s) after it: %s", model.DescribeState(st))
	// The operations that must come next (outside the prefix, returned
	// earliest) and the ones concurrent with the first of them.
	var rest []int
	for id := range ops {
		if !in[id] {
			rest = append(rest, id)
		}
	}
	sort.Slice(rest, func(i, j int) bool { return ops[rest[i]].Return < ops[rest[j]].Return })
	if len(rest) == 0 {
		return b.String()
	}
	first := ops[rest[0]]
	fmt.Fprintf(&b, "\n  none of these fits next; the first to have returned:\n    %s", h.describe(first.Metadata.(*record)))
	n := 0
	for _, id := range rest[1:] {
		o := ops[id]
		if o.Call <= first.Return && n < 8 {
			fmt.Fprintf(&b, "\n    concurrent: %s", h.describe(o.Metadata.(*record)))
			n++
		}
	}
	return b.String()
}

// watchStats is what the watch checks report.
type watchStats struct {
	Watchers   int          `json:"watchers"`
	Events     int          `json:"events"`
	Revisions  int          `json:"revisions"`
	Starts     int          `json:"watch_starts"` // creations and resumptions
	PerWatcher []watcherSum `json:"per_watcher"`
	// Puts and Txns whose outcome was unknown to the client, by error:
	// whether the watch history shows them applied.
	UnknownWrites map[string]*appliedCount `json:"unknown_outcome_writes"`
}

type appliedCount struct {
	Applied    int `json:"applied"`
	NotApplied int `json:"not_applied"`
}

// errClass names an error for the report.
func errClass(err string) string {
	for _, c := range []struct{ needle, class string }{
		{"request timed out", "etcdserver: request timed out"},
		{"koine: database unavailable", "koine: database unavailable"},
		{"server stopped", "etcdserver: server stopped"},
		{"deadline exceeded", "client timeout"},
		{"connection refused", "connection refused"},
		{"error reading from server", "connection lost"},
		{"connection reset", "connection lost"},
		{"EOF", "connection lost"},
	} {
		if strings.Contains(err, c.needle) {
			return c.class
		}
	}
	if len(err) > 80 {
		err = err[:80]
	}
	return err
}

// koineSaysNotApplied: Koine answers "etcdserver: request timed out" when
// a write's outcome is unknown to it, and promises that a write that
// failed with any other error of its own did not apply. (The client still
// treats them as unknown: the check below holds Koine to its promise.)
func koineSaysNotApplied(err string) bool {
	return strings.Contains(err, "koine: database unavailable") || strings.Contains(err, "etcdserver: server stopped")
}

type watcherSum struct {
	ID      int          `json:"id"`
	Events  int          `json:"events"`
	LastRev int64        `json:"last_revision"`
	Starts  []watchStart `json:"starts"`
	Errors  []string     `json:"errors,omitempty"`
}

// checkWatches checks etcd's watch guarantees on every watcher's whole
// (resumed) history, against each other, the final read and the
// acknowledged writes.
func checkWatches(h *history, final []kv, an *anomalies) watchStats {
	st := watchStats{UnknownWrites: map[string]*appliedCount{}}
	st.Watchers = len(h.watchers)
	ref := map[int64][]watchEvent{} // revision -> events, as the first watcher that had it got them
	refFrom := map[int64]int{}
	for _, w := range h.watchers {
		name := fmt.Sprintf("watcher %d", w.id)
		st.Events += len(w.events)
		st.Starts += len(w.starts)
		st.PerWatcher = append(st.PerWatcher, watcherSum{ID: w.id, Events: len(w.events), LastRev: w.lastRev, Starts: w.starts, Errors: w.errors})
		cur := map[string]kv{} // the state replayed from the events
		seen := map[int64]bool{}
		seenKey := map[string]bool{} // "rev/key"
		var prevRev int64
		var byRev = map[int64][]watchEvent{}
		for i, e := range w.events {
			at := fmt.Sprintf("%s event #%d (%s, from instance %d, received %s)", name, i, e, e.Instance, secs(e.Recv))
			r := e.rev()
			if r < prevRev {
				an.add("watch-order", "%s: revision %d after revision %d", at, r, prevRev)
			}
			rk := fmt.Sprintf("%d/%s", r, e.Key)
			if seenKey[rk] {
				an.add("watch-duplicate", "%s: key %s at revision %d delivered again", at, e.Key, r)
				continue // judged once
			}
			seenKey[rk] = true
			if r > h.finalRev {
				an.add("watch-future", "%s: revision %d beyond the final revision %d", at, r, h.finalRev)
			}
			if keyIndex(h.keys, e.Key) < 0 {
				an.add("watch-key", "%s: a key outside the hot keys", at)
			}
			seen[r] = true
			prevRev = r
			byRev[r] = append(byRev[r], e)
			// prev_kv, create revision and version against the key's
			// previous version in this history.
			old, existed := cur[e.Key]
			switch {
			case e.Prev == nil && existed:
				an.add("watch-prev-kv", "%s: no prev_kv, but the key was %s", at, old)
			case e.Prev != nil && !existed:
				an.add("watch-prev-kv", "%s: prev_kv %s, but the key did not exist", at, *e.Prev)
			case e.Prev != nil && *e.Prev != old:
				an.add("watch-prev-kv", "%s: prev_kv %s, but the key was %s", at, *e.Prev, old)
			}
			if e.Delete {
				if !existed {
					an.add("watch-event", "%s: a delete of a key that did not exist", at)
				}
				delete(cur, e.Key)
				continue
			}
			want := kv{Value: e.KV.Value, ModRev: r, CreateRev: r, Version: 1, Lease: e.KV.Lease}
			if existed {
				want.CreateRev, want.Version = old.CreateRev, old.Version+1
			}
			if e.KV != want {
				an.add("watch-event", "%s: expected create revision %d and version %d after %s", at, want.CreateRev, want.Version, old)
			}
			cur[e.Key] = e.KV
		}
		// Every revision from 2 (the first write) to the final one: each
		// was made by a write that changed a hot key.
		var missing []string
		for r := int64(2); r <= h.finalRev; r++ {
			if seen[r] {
				continue
			}
			from := r
			for r+1 <= h.finalRev && !seen[r+1] {
				r++
			}
			if from == r {
				missing = append(missing, fmt.Sprint(from))
			} else {
				missing = append(missing, fmt.Sprintf("%d-%d", from, r))
			}
		}
		if len(missing) > 0 {
			an.add("watch-missing", "%s: no events at revisions %s (final revision %d)%s", name,
				strings.Join(missing, ", "), h.finalRev, describeStarts(w))
		}
		// The replayed state is the final read.
		for i, k := range h.keys {
			got := cur[k]
			if got != final[i] {
				an.add("watch-final-state", "%s: replaying the events gives %s=%s, the final read %s", name, k, got, final[i])
			}
		}
		// The same revision carries the same events for every watcher.
		for r, evs := range byRev {
			other, ok := ref[r]
			if !ok {
				ref[r] = evs
				refFrom[r] = w.id
				continue
			}
			if !sameEvents(evs, other) {
				an.add("watch-agreement", "revision %d: watcher %d got [%s], watcher %d got [%s]",
					r, refFrom[r], joinEvents(other), w.id, joinEvents(evs))
			}
		}
	}
	st.Revisions = len(ref)
	// Every acknowledged change is an event at the revision it was
	// acknowledged with; a written value appears once at most.
	valueAt := map[string]int64{}
	for r, evs := range ref {
		for _, e := range evs {
			if e.Delete {
				continue
			}
			if o, ok := valueAt[e.KV.Value]; ok && o != r {
				an.add("watch-unique-write", "value %q written at revisions %d and %d", e.KV.Value, o, r)
			}
			valueAt[e.KV.Value] = r
		}
	}
	for _, rec := range h.records {
		in := &rec.Input
		if rec.Output.Status == statusUnknown && (in.Kind == opPut || in.Kind == opCAS) {
			class := errClass(rec.Output.Err)
			if st.UnknownWrites[class] == nil {
				st.UnknownWrites[class] = &appliedCount{}
			}
			r, applied := valueAt[in.Value]
			if applied {
				st.UnknownWrites[class].Applied++
			} else {
				st.UnknownWrites[class].NotApplied++
			}
			if applied && koineSaysNotApplied(rec.Output.Err) {
				an.add("koine-failed-write", "%s: Koine's error says it did not apply, yet its value is an event at revision %d",
					h.describe(rec), r)
			}
			continue
		}
		if !ackedChange(rec) {
			if rec.Output.Status != statusOK && (in.Kind == opPut || in.Kind == opCAS) {
				if r, ok := valueAt[in.Value]; ok {
					an.add("watch-failed-write", "%s failed for sure, yet its value is an event at revision %d", h.describe(rec), r)
				}
			}
			if rec.Output.Status == statusOK && in.Kind == opCAS && !rec.Output.Succeeded {
				if r, ok := valueAt[in.Value]; ok {
					an.add("watch-failed-write", "%s did not succeed, yet its value is an event at revision %d", h.describe(rec), r)
				}
			}
			continue
		}
		r := rec.Output.Rev
		evs, ok := ref[r]
		if !ok {
			an.add("watch-acknowledged", "%s: no watcher received revision %d", h.describe(rec), r)
			continue
		}
		key := h.keys[in.Key]
		found := false
		for _, e := range evs {
			if e.Key != key {
				continue
			}
			switch in.Kind {
			case opPut:
				found = !e.Delete && e.KV.Value == in.Value && e.KV.Lease == in.Lease
			case opCAS:
				found = !e.Delete && e.KV.Value == in.Value && e.KV.Lease == 0
			case opDelete:
				found = e.Delete
			}
		}
		if !found {
			an.add("watch-acknowledged", "%s: the events at revision %d are [%s]", h.describe(rec), r, joinEvents(evs))
		}
	}
	return st
}

func describeStarts(w *watcher) string {
	var parts []string
	for _, s := range w.starts {
		parts = append(parts, fmt.Sprintf("from revision %d on instance %d at %s (%s)", s.FromRev, s.Instance, secs(s.At), s.Reason))
	}
	return "; its watches: " + strings.Join(parts, ", ")
}

func sameEvents(a, b []watchEvent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].same(b[i]) {
			return false
		}
	}
	return true
}

func joinEvents(evs []watchEvent) string {
	parts := make([]string, len(evs))
	for i, e := range evs {
		parts[i] = e.String()
	}
	return strings.Join(parts, "; ")
}
