package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// kill-restart: kill -9 the storage process (the first Koine instance, or
// etcd) under write load and start it again on the same data and port
// after 2s. The apiserver must recover by itself; nothing acknowledged may
// be lost; a watch opened before the kill must end up exactly in sync.
func checkKillRestart(ctx context.Context, e *env, r *result) error {
	return failover(ctx, e, r, 0, true)
}

// ha: with three Koine instances on one database and all three in
// --etcd-servers, kill -9 one for good: the workload continues through
// the other two, and nothing acknowledged is lost.
func checkHA(ctx context.Context, e *env, r *result) error {
	if len(e.backends) < 3 {
		return fmt.Errorf("needs 3 Koine instances, have %d", len(e.backends))
	}
	return failover(ctx, e, r, 1, false)
}

func failover(ctx context.Context, e *env, r *result, victimIdx int, restart bool) error {
	r.showLogs = nil // every log matters here
	victim := e.backends[victimIdx]
	if !victim.Alive() {
		return fmt.Errorf("%s is not running before the check", victim.Name())
	}
	prefix, event := "e2e-ha", "kill"
	if restart {
		prefix, event = "e2e-kill", "restart"
	}
	ns, err := e.newNamespace(ctx, prefix)
	if err != nil {
		return err
	}
	defer e.deleteNamespaceLater(ns)

	obs := startObserver(ctx, e, ns)
	defer obs.stop()
	if err := poll(ctx, 100*time.Millisecond, 30*time.Second, "the observer's initial list", func(context.Context) (bool, error) {
		return obs.listed(), nil
	}); err != nil {
		return err
	}
	wr := startWriter(ctx, e, ns, 4, 10)
	defer wr.stop()

	if err := poll(ctx, 100*time.Millisecond, time.Minute, "200 acknowledged writes before the kill", func(context.Context) (bool, error) {
		n := wr.count()
		return n >= 200, fmt.Errorf("%d acknowledged (errors: %s)", n, wr.errSummary())
	}); err != nil {
		return err
	}

	r.note("victim", victim.Name())
	progress("%s: kill -9 %s (pid %d) under load", r.Name, victim.Name(), victim.Pid())
	killedAt := time.Now()
	victim.Kill()
	back := killedAt
	if restart {
		if err := sleepCtx(ctx, 2*time.Second); err != nil {
			return err
		}
		if err := victim.Start(); err != nil {
			return fmt.Errorf("restarting %s: %w", victim.Name(), err)
		}
		if err := e.waitBackend(ctx, victimIdx, time.Minute); err != nil {
			return fmt.Errorf("restarted %s: %w", victim.Name(), err)
		}
		back = time.Now()
		r.note("storage_down_seconds", back.Sub(killedAt).Seconds())
	}

	// The apiserver must recover on its own: a write started after the
	// storage came back (or, with HA, after the kill) is acknowledged.
	var recovered time.Time
	if err := poll(ctx, 100*time.Millisecond, time.Minute, "an acknowledged write after the "+event, func(context.Context) (bool, error) {
		if !e.apiserver.Alive() {
			return false, permanent(fmt.Errorf("kube-apiserver exited: %v", e.apiserver.ExitErr()))
		}
		if t, ok := wr.firstAckStartedAfter(back); ok {
			recovered = t
			return true, nil
		}
		return false, fmt.Errorf("none yet; writer errors: %s", wr.errSummary())
	}); err != nil {
		return err
	}
	r.note("recovery_seconds", recovered.Sub(back).Seconds())
	if !restart && recovered.Sub(back) > 30*time.Second {
		return fmt.Errorf("writes resumed only %s after the kill; the other instances should have taken them at once", recovered.Sub(back).Round(time.Second))
	}
	if err := poll(ctx, 500*time.Millisecond, time.Minute, "kube-apiserver /readyz after the "+event, func(ctx context.Context) (bool, error) {
		body, err := e.kube.Discovery().RESTClient().Get().AbsPath("/readyz").Param("verbose", "").DoRaw(ctx)
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, body)
		}
		return true, nil
	}); err != nil {
		return err
	}
	// Keep the load on for a while after recovery.
	n := wr.count()
	if err := poll(ctx, 100*time.Millisecond, time.Minute, "300 more acknowledged writes after recovery", func(context.Context) (bool, error) {
		return wr.count() >= n+300, fmt.Errorf("%d more (errors: %s)", wr.count()-n, wr.errSummary())
	}); err != nil {
		return err
	}
	wr.stop()
	r.note("acknowledged_writes", wr.count())
	r.note("failed_writes", wr.errCount())
	r.note("max_ack_gap_seconds", wr.maxGap().Seconds())
	if s := wr.errSummary(); s != "" {
		r.note("write_errors", s)
	}

	// Nothing acknowledged is lost: each object, read from storage (a get
	// without resourceVersion is a quorum read), is at least as new as its
	// last acknowledged write.
	if err := wr.verify(ctx); err != nil {
		return err
	}

	// The watch opened before the kill ends in sync with storage, and saw
	// every acknowledged change exactly once, in order (or, where it had
	// to relist, a list that covered it).
	if err := obs.verify(ctx, e, wr.allAcks()); err != nil {
		return err
	}
	r.note("watch_resumes", obs.resumeCount())
	r.note("watch_relists", obs.relistCount()-1)

	// The rest of the control plane recovered too.
	if !e.kcm.Alive() {
		return fmt.Errorf("kube-controller-manager exited: %v", e.kcm.ExitErr())
	}
	return kcmLeaseAdvancing(ctx, e)
}

func kcmLeaseAdvancing(ctx context.Context, e *env) error {
	leases := e.kube.CoordinationV1().Leases("kube-system")
	var first *metav1.MicroTime
	return poll(ctx, time.Second, time.Minute, "kube-controller-manager to renew its lease", func(ctx context.Context) (bool, error) {
		if !e.kcm.Alive() {
			return false, permanent(fmt.Errorf("kube-controller-manager exited: %v", e.kcm.ExitErr()))
		}
		l, err := leases.Get(ctx, "kube-controller-manager", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if l.Spec.RenewTime == nil {
			return false, fmt.Errorf("no renewTime")
		}
		if first == nil {
			first = l.Spec.RenewTime
			return false, fmt.Errorf("renewTime %v", first)
		}
		return l.Spec.RenewTime.After(first.Time), fmt.Errorf("renewTime still %v", first)
	})
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ack is one acknowledged write: the object's resourceVersion and the
// value of data.v the write set.
type ack struct {
	name    string
	rv      uint64
	val     int
	started time.Time // when the request was sent
	done    time.Time
}

// writer keeps creating and updating ConfigMaps, each worker owning its
// own names, and records every acknowledged write. Every attempt writes a
// larger data.v than the one before, so a stored value below the last
// acknowledged one means an acknowledged write was lost.
type writer struct {
	e  *env
	ns string

	mu       sync.Mutex
	acks     []ack
	last     map[string]ack
	errs     int
	errKinds map[string]int
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

func startWriter(ctx context.Context, e *env, ns string, workers, names int) *writer {
	ctx, cancel := context.WithCancel(ctx)
	w := &writer{e: e, ns: ns, last: map[string]ack{}, errKinds: map[string]int{}, cancel: cancel}
	for i := 0; i < workers; i++ {
		w.wg.Add(1)
		go w.work(ctx, i, names)
	}
	return w
}

func (w *writer) stop() {
	w.stopOnce.Do(func() {
		w.cancel()
		w.wg.Wait()
	})
}

func (w *writer) work(ctx context.Context, id, n int) {
	defer w.wg.Done()
	cms := w.e.kube.CoreV1().ConfigMaps(w.ns)
	objs := map[string]*corev1.ConfigMap{}
	val := 0
	refresh := func(name string) {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if got, err := cms.Get(gctx, name, metav1.GetOptions{}); err == nil {
			objs[name] = got
		}
	}
	for {
		for j := 0; j < n; j++ {
			if ctx.Err() != nil {
				return
			}
			name := fmt.Sprintf("w%d-%02d", id, j)
			val++
			data := map[string]string{"v": strconv.Itoa(val)}
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			started := time.Now()
			var res *corev1.ConfigMap
			var err error
			if cur := objs[name]; cur == nil {
				res, err = cms.Create(rctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{})
			} else {
				upd := cur.DeepCopy()
				upd.Data = data
				res, err = cms.Update(rctx, upd, metav1.UpdateOptions{})
			}
			cancel()
			if ctx.Err() != nil {
				return // stopping: an interrupted request is neither acked nor an error
			}
			switch {
			case err == nil:
				rv, perr := rvNum(res.ResourceVersion)
				if perr != nil {
					w.recordErr(perr)
					continue
				}
				w.record(ack{name: name, rv: rv, val: val, started: started, done: time.Now()})
				objs[name] = res
			case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
				// An earlier failed attempt did land after all: catch up.
				w.recordErr(err)
				refresh(name)
			default:
				w.recordErr(err)
				_ = sleepCtx(ctx, 100*time.Millisecond)
			}
		}
	}
}

func (w *writer) record(a ack) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.acks = append(w.acks, a)
	w.last[a.name] = a
}

func (w *writer) recordErr(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs++
	kind := string(apierrors.ReasonForError(err))
	if kind == "" {
		kind = err.Error()
		if len(kind) > 120 {
			kind = kind[:120]
		}
	}
	w.errKinds[kind]++
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks)
}

func (w *writer) errCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

func (w *writer) errSummary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var parts []string
	for k, n := range w.errKinds {
		parts = append(parts, fmt.Sprintf("%dx %s", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func (w *writer) allAcks() []ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ack(nil), w.acks...)
}

func (w *writer) firstAckStartedAfter(t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var best time.Time
	for _, a := range w.acks {
		if a.started.After(t) && (best.IsZero() || a.done.Before(best)) {
			best = a.done
		}
	}
	return best, !best.IsZero()
}

// maxGap is the longest time without an acknowledged write.
func (w *writer) maxGap() time.Duration {
	acks := w.allAcks()
	sort.Slice(acks, func(i, j int) bool { return acks[i].done.Before(acks[j].done) })
	var gap time.Duration
	for i := 1; i < len(acks); i++ {
		gap = max(gap, acks[i].done.Sub(acks[i-1].done))
	}
	return gap
}

func (w *writer) verify(ctx context.Context) error {
	cms := w.e.kube.CoreV1().ConfigMaps(w.ns)
	w.mu.Lock()
	last := make(map[string]ack, len(w.last))
	var maxRV uint64
	for k, v := range w.last {
		last[k] = v
		maxRV = max(maxRV, v.rv)
	}
	w.mu.Unlock()
	var lost []string
	for name, a := range last {
		got, err := cms.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			lost = append(lost, fmt.Sprintf("%s (acknowledged v=%d at %d) is missing", name, a.val, a.rv))
			continue
		}
		if err != nil {
			return fmt.Errorf("reading back %s: %w", name, err)
		}
		rv := mustRV(got.ResourceVersion)
		v, _ := strconv.Atoi(got.Data["v"])
		switch {
		case rv < a.rv:
			lost = append(lost, fmt.Sprintf("%s is at resourceVersion %d (v=%d), older than its acknowledged write at %d (v=%d)", name, rv, v, a.rv, a.val))
		case rv == a.rv && v != a.val:
			lost = append(lost, fmt.Sprintf("%s at resourceVersion %d has v=%d, but that write set v=%d", name, rv, v, a.val))
		case v < a.val:
			lost = append(lost, fmt.Sprintf("%s has v=%d (rv %d), older than its acknowledged v=%d (rv %d)", name, v, rv, a.val, a.rv))
		}
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		return fmt.Errorf("%d of %d objects lost acknowledged writes: %s", len(lost), len(last), strings.Join(head(lost), "; "))
	}
	l, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list after the load: %w", err)
	}
	listed := map[string]bool{}
	for _, it := range l.Items {
		listed[it.Name] = true
	}
	for name := range last {
		if !listed[name] {
			return fmt.Errorf("%s is readable but missing from the list at resourceVersion %s", name, l.ResourceVersion)
		}
	}
	if mustRV(l.ResourceVersion) < maxRV {
		return fmt.Errorf("list resourceVersion %s is older than an acknowledged write at %d", l.ResourceVersion, maxRV)
	}
	return nil
}

// observer is a client that lists, then watches from the list's
// resourceVersion, like an informer: when the watch closes it resumes
// from the last resourceVersion it saw, and when that is refused (410)
// it relists. It records what it saw and any violation of the watch
// contract (an event not newer than the previous one, a repeat, a state
// going backwards).
type observer struct {
	e      *env
	ns     string
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	state      map[string]observed
	seen       map[string]map[uint64]int // name -> resourceVersion -> deliveries
	relists    []uint64                  // list resourceVersions; [0] is the first list
	resumes    int
	errEvents  []string
	violations []string
	lastRV     uint64
}

type observed struct {
	rv  uint64
	val string
}

func startObserver(ctx context.Context, e *env, ns string) *observer {
	ctx, cancel := context.WithCancel(ctx)
	o := &observer{e: e, ns: ns, cancel: cancel, done: make(chan struct{}),
		state: map[string]observed{}, seen: map[string]map[uint64]int{}}
	go o.run(ctx)
	return o
}

func (o *observer) stop() {
	o.cancel()
	<-o.done
}

func (o *observer) listed() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.relists) > 0
}

func (o *observer) resumeCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.resumes
}

func (o *observer) relistCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.relists)
}

func (o *observer) violate(format string, args ...any) {
	if len(o.violations) < 20 {
		o.violations = append(o.violations, fmt.Sprintf(format, args...))
	}
}

func (o *observer) run(ctx context.Context) {
	defer close(o.done)
	cms := o.e.kube.CoreV1().ConfigMaps(o.ns)
	needList := true
	for ctx.Err() == nil {
		if needList {
			l, err := cms.List(ctx, metav1.ListOptions{})
			if err != nil {
				_ = sleepCtx(ctx, 500*time.Millisecond)
				continue
			}
			o.mu.Lock()
			lrv, err := rvNum(l.ResourceVersion)
			if err != nil {
				o.violate("list: %v", err)
			}
			if lrv < o.lastRV {
				o.violate("relist at resourceVersion %d is older than the last event seen (%d)", lrv, o.lastRV)
			}
			state := map[string]observed{}
			for _, it := range l.Items {
				rv, _ := rvNum(it.ResourceVersion)
				if prev, ok := o.state[it.Name]; ok && rv < prev.rv {
					o.violate("relist has %s at %d, older than already seen %d", it.Name, rv, prev.rv)
				}
				state[it.Name] = observed{rv, it.Data["v"]}
			}
			o.state = state
			o.relists = append(o.relists, lrv)
			o.lastRV = lrv
			o.mu.Unlock()
			needList = false
		}
		o.mu.Lock()
		from := strconv.FormatUint(o.lastRV, 10)
		o.mu.Unlock()
		w, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: from})
		if err != nil {
			if expired(err) {
				needList = true
			}
			_ = sleepCtx(ctx, 500*time.Millisecond)
			continue
		}
		needList = o.consume(w)
		w.Stop()
		if !needList && ctx.Err() == nil {
			o.mu.Lock()
			o.resumes++
			o.mu.Unlock()
		}
	}
}

// consume reads one watch until it ends; true means relist.
func (o *observer) consume(w watch.Interface) bool {
	for ev := range w.ResultChan() {
		switch ev.Type {
		case watch.Added, watch.Modified:
			cm, ok := ev.Object.(*corev1.ConfigMap)
			if !ok {
				o.mu.Lock()
				o.violate("%s event carries %T", ev.Type, ev.Object)
				o.mu.Unlock()
				continue
			}
			o.mu.Lock()
			rv, err := rvNum(cm.ResourceVersion)
			if err != nil {
				o.violate("%s", err)
			}
			if rv <= o.lastRV {
				o.violate("%s of %s at %d after an event at %d: resourceVersions must strictly increase", ev.Type, cm.Name, rv, o.lastRV)
			}
			if prev, ok := o.state[cm.Name]; ok && rv <= prev.rv {
				o.violate("%s of %s at %d, but %d was already seen", ev.Type, cm.Name, rv, prev.rv)
			}
			if o.seen[cm.Name] == nil {
				o.seen[cm.Name] = map[uint64]int{}
			}
			o.seen[cm.Name][rv]++
			o.state[cm.Name] = observed{rv, cm.Data["v"]}
			o.lastRV = max(o.lastRV, rv)
			o.mu.Unlock()
		case watch.Deleted:
			o.mu.Lock()
			o.violate("unexpected deletion of %s", describe(ev.Object))
			o.mu.Unlock()
		case watch.Error:
			o.mu.Lock()
			o.errEvents = append(o.errEvents, apierrors.FromObject(ev.Object).Error())
			o.mu.Unlock()
			return true
		}
	}
	return false
}

// verify waits until the observer matches a fresh list, then checks that
// every acknowledged write was delivered exactly once, unless a relist
// after it covered it.
func (o *observer) verify(ctx context.Context, e *env, acks []ack) error {
	cms := e.kube.CoreV1().ConfigMaps(o.ns)
	err := poll(ctx, 500*time.Millisecond, 30*time.Second, "the watch to catch up with a fresh list", func(ctx context.Context) (bool, error) {
		l, err := cms.List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		var diff []string
		fresh := map[string]bool{}
		for _, it := range l.Items {
			fresh[it.Name] = true
			got, ok := o.state[it.Name]
			if !ok || got.rv != mustRV(it.ResourceVersion) || got.val != it.Data["v"] {
				diff = append(diff, fmt.Sprintf("%s: list %s v=%s, watch %d v=%s", it.Name, it.ResourceVersion, it.Data["v"], got.rv, got.val))
			}
		}
		for name := range o.state {
			if !fresh[name] {
				diff = append(diff, name+": seen by the watch, not in the list")
			}
		}
		if len(diff) > 0 {
			sort.Strings(diff)
			return false, fmt.Errorf("%d differences (relists %d, resumes %d, error events %v): %s", len(diff), len(o.relists)-1, o.resumes, head(o.errEvents), strings.Join(head(diff), "; "))
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.violations) > 0 {
		return fmt.Errorf("watch contract violated: %s", strings.Join(o.violations, "; "))
	}
	var missed, dup []string
	for _, a := range acks {
		switch n := o.seen[a.name][a.rv]; {
		case n == 1:
		case n > 1:
			dup = append(dup, fmt.Sprintf("%s@%d x%d", a.name, a.rv, n))
		default:
			covered := false
			for _, l := range o.relists[1:] {
				covered = covered || l >= a.rv
			}
			if !covered {
				missed = append(missed, fmt.Sprintf("%s@%d", a.name, a.rv))
			}
		}
	}
	if len(missed)+len(dup) > 0 {
		return fmt.Errorf("the watch opened before the kill missed %d acknowledged changes (e.g. %v) and repeated %d (e.g. %v); relists %d, resumes %d",
			len(missed), head(missed), len(dup), head(dup), len(o.relists)-1, o.resumes)
	}
	return nil
}
