package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// compactRevKey is where kube-apiserver's compactor records the revision
// it compacted to; its version counts the compactor's rounds.
const compactRevKey = "compact_rev_key"

// watch-compaction: once storage is compacted past a resourceVersion,
// watching or listing from it fails with 410 Gone (the client must
// relist), and relisting and watching from the fresh resourceVersion
// works.
//
// The apiserver's watch cache can serve old resourceVersions from memory
// without asking storage, which would make a 410 depend on its window.
// Two ways make this deterministic:
//   - PodTemplates run without a watch cache (--watch-cache-sizes=
//     podtemplates#0), so their lists and watches always reach storage:
//     the 410 must come from the backend's compaction.
//   - For ConfigMaps (cached), the compaction is made the way the
//     apiserver's own compactor does it (compare-and-swap on
//     compact_rev_key, then Compact), so the apiserver learns the new
//     compacted revision through its watch on that key and drops older
//     cache snapshots; an Exact list at the old resourceVersion must then
//     fall through to storage and get 410.
func checkWatchCompaction(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver")

	// First, the apiserver's own compactor (--etcd-compaction-interval=30s)
	// must have compacted: it writes compact_rev_key every interval and
	// compacts from its second round on.
	if wait := 80*time.Second - time.Since(e.readyAt); wait > 0 {
		progress("watch-compaction: waiting %s for the apiserver's own compaction", wait.Round(time.Second))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	resp, err := e.etcd.Get(ctx, compactRevKey)
	if err != nil {
		return fmt.Errorf("get %s from the backend: %w", compactRevKey, err)
	}
	if len(resp.Kvs) != 1 {
		return fmt.Errorf("%s does not exist: the apiserver's compactor never wrote it", compactRevKey)
	}
	rounds := resp.Kvs[0].Version
	compacted, err := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
	if err != nil {
		return fmt.Errorf("%s = %q: %v", compactRevKey, resp.Kvs[0].Value, err)
	}
	r.note("apiserver_compaction_rounds", rounds)
	r.note("apiserver_compacted_revision", compacted)
	if rounds < 2 || compacted <= 1 {
		return fmt.Errorf("after %s the apiserver's compactor has written %s %d times (value %d): it has not compacted yet",
			time.Since(e.readyAt).Round(time.Second), compactRevKey, rounds, compacted)
	}
	// The compaction really happened in storage: the revision before is gone.
	if _, err := e.etcd.Get(ctx, compactRevKey, clientv3.WithRev(compacted-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		return fmt.Errorf("reading at revision %d, below the apiserver's compaction to %d: got %v, want %v", compacted-1, compacted, err, rpctypes.ErrCompacted)
	}

	ns, err := e.newNamespace(ctx, "e2e-compact")
	if err != nil {
		return err
	}
	defer e.deleteNamespaceLater(ns)
	pts := e.kube.CoreV1().PodTemplates(ns)
	cms := e.kube.CoreV1().ConfigMaps(ns)
	if _, err := pts.Create(ctx, &corev1.PodTemplate{ObjectMeta: metav1.ObjectMeta{Name: "pt"}, Template: pauseTemplate("pt")}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"i": "0"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	ptList, err := pts.List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	cmList, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	oldPT, oldCM := ptList.ResourceVersion, cmList.ResourceVersion
	// Writes after the old resourceVersions, so there is history to lose.
	for i := 1; i <= 20; i++ {
		if err := touchPodTemplate(ctx, e, ns, "pt", i); err != nil {
			return err
		}
		if _, err := cms.Patch(ctx, "cm", "application/merge-patch+json", fmt.Appendf(nil, `{"data":{"i":"%d"}}`, i), metav1.PatchOptions{}); err != nil {
			return err
		}
	}

	rev, err := compactLikeAPIServer(ctx, e)
	if err != nil {
		return err
	}
	r.note("compacted_to", rev)
	if uint64(rev) <= max(mustRV(oldPT), mustRV(oldCM)) {
		return fmt.Errorf("compacted to %d, not past the old resourceVersions %s and %s", rev, oldPT, oldCM)
	}

	// 1. Uncached watch from the compacted resourceVersion: 410.
	if err := expectWatchGone(ctx, func(ctx context.Context) (watch.Interface, error) {
		return pts.Watch(ctx, metav1.ListOptions{ResourceVersion: oldPT})
	}); err != nil {
		return fmt.Errorf("podtemplates (no watch cache), watch from %s after compaction to %d: %w", oldPT, rev, err)
	}
	// 2. Uncached list at exactly the compacted resourceVersion: 410.
	if _, err := pts.List(ctx, metav1.ListOptions{ResourceVersion: oldPT, ResourceVersionMatch: metav1.ResourceVersionMatchExact}); !expired(err) {
		return fmt.Errorf("podtemplates (no watch cache), list at resourceVersion %s (Exact) after compaction to %d: got %v, want 410 Gone", oldPT, rev, err)
	}
	// 3. Cached list at the compacted resourceVersion: 410 once the
	// apiserver has seen compact_rev_key change (its cache compactor polls
	// every 15s).
	start := time.Now()
	err = poll(ctx, time.Second, 75*time.Second, "the watch cache to stop serving the compacted resourceVersion", func(ctx context.Context) (bool, error) {
		_, err := cms.List(ctx, metav1.ListOptions{ResourceVersion: oldCM, ResourceVersionMatch: metav1.ResourceVersionMatchExact})
		if expired(err) {
			return true, nil
		}
		if err == nil {
			return false, fmt.Errorf("list at resourceVersion %s (Exact) still succeeds after compaction to %d", oldCM, rev)
		}
		return false, fmt.Errorf("list at resourceVersion %s (Exact): got %v, want 410 Gone", oldCM, err)
	})
	if err != nil {
		return fmt.Errorf("configmaps (watch cache): %w", err)
	}
	r.note("cached_410_after_seconds", time.Since(start).Seconds())

	// 4. What a client does after a 410: relist, watch from the list's
	// resourceVersion, and see the next change.
	if err := relistAndWatch(ctx, "podtemplates",
		func(ctx context.Context) (string, error) {
			l, err := pts.List(ctx, metav1.ListOptions{})
			return rvOf(l, err)
		},
		func(ctx context.Context, rv string) (watch.Interface, error) {
			return pts.Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
		},
		func(ctx context.Context) (string, error) {
			if err := touchPodTemplate(ctx, e, ns, "pt", 100); err != nil {
				return "", err
			}
			got, err := pts.Get(ctx, "pt", metav1.GetOptions{})
			return rvOf(got, err)
		}); err != nil {
		return err
	}
	return relistAndWatch(ctx, "configmaps",
		func(ctx context.Context) (string, error) {
			l, err := cms.List(ctx, metav1.ListOptions{})
			return rvOf(l, err)
		},
		func(ctx context.Context, rv string) (watch.Interface, error) {
			return cms.Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
		},
		func(ctx context.Context) (string, error) {
			got, err := cms.Patch(ctx, "cm", "application/merge-patch+json", []byte(`{"data":{"i":"after"}}`), metav1.PatchOptions{})
			return rvOf(got, err)
		})
}

// compactLikeAPIServer compacts the backend to its current revision the
// way kube-apiserver's compactor does: compare-and-swap compact_rev_key
// (whose version the apiservers use as a shared clock; the same Txn, Else
// branch included, which kine recognises), then Compact.
func compactLikeAPIServer(ctx context.Context, e *env) (int64, error) {
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := e.etcd.Get(ctx, compactRevKey)
		if err != nil {
			return 0, fmt.Errorf("get %s: %w", compactRevKey, err)
		}
		version := int64(0)
		if len(resp.Kvs) > 0 {
			version = resp.Kvs[0].Version
		}
		rev := resp.Header.Revision
		txn, err := e.etcd.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(compactRevKey), "=", version)).
			Then(clientv3.OpPut(compactRevKey, strconv.FormatInt(rev, 10))).
			Else(clientv3.OpGet(compactRevKey)).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("txn on %s: %w", compactRevKey, err)
		}
		if !txn.Succeeded {
			continue // the apiserver's compactor moved first
		}
		if _, err := e.etcd.Compact(ctx, rev); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
			return 0, fmt.Errorf("compact to %d: %w", rev, err)
		}
		return rev, nil
	}
	return 0, fmt.Errorf("could not win the compare-and-swap on %s", compactRevKey)
}

func touchPodTemplate(ctx context.Context, e *env, ns, name string, i int) error {
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{"e2e/i":"%d"}}}`, i)
	_, err := e.kube.CoreV1().PodTemplates(ns).Patch(ctx, name, "application/merge-patch+json", patch, metav1.PatchOptions{})
	return err
}

func expired(err error) bool {
	return apierrors.IsGone(err) || apierrors.IsResourceExpired(err)
}

// expectWatchGone opens a watch and requires it to end with 410 Gone,
// either refused outright or as its first event.
func expectWatchGone(ctx context.Context, open func(context.Context) (watch.Interface, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := open(ctx)
	if err != nil {
		if expired(err) {
			return nil
		}
		return fmt.Errorf("got %v, want 410 Gone", err)
	}
	defer w.Stop()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			return fmt.Errorf("the watch closed without an event, want a 410 Gone error event")
		}
		if ev.Type != watch.Error {
			return fmt.Errorf("got a %s event (%s), want a 410 Gone error event", ev.Type, describe(ev.Object))
		}
		if err := apierrors.FromObject(ev.Object); !expired(err) {
			return fmt.Errorf("got error event %v, want 410 Gone", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("no event within 30s, want a 410 Gone error event")
	}
}

// relistAndWatch lists, watches from the list's resourceVersion, makes a
// change, and requires the watch to deliver exactly that change.
func relistAndWatch(ctx context.Context, what string,
	list func(context.Context) (string, error),
	open func(context.Context, string) (watch.Interface, error),
	change func(context.Context) (string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rv, err := list(ctx)
	if err != nil {
		return fmt.Errorf("%s: relist: %w", what, err)
	}
	w, err := open(ctx, rv)
	if err != nil {
		return fmt.Errorf("%s: watch from the fresh resourceVersion %s: %w", what, rv, err)
	}
	defer w.Stop()
	want, err := change(ctx)
	if err != nil {
		return fmt.Errorf("%s: change: %w", what, err)
	}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("%s: the watch from %s closed before delivering the change at %s", what, rv, want)
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("%s: the watch from %s failed: %v", what, rv, apierrors.FromObject(ev.Object))
			}
			m, err := meta.Accessor(ev.Object)
			if err != nil {
				return err
			}
			if ev.Type != watch.Modified || m.GetResourceVersion() != want {
				return fmt.Errorf("%s: the watch from %s delivered %s of %s at %s, want the change at %s", what, rv, ev.Type, m.GetName(), m.GetResourceVersion(), want)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("%s: the watch from %s did not deliver the change at %s", what, rv, want)
		}
	}
}

func rvOf(obj interface{ GetResourceVersion() string }, err error) (string, error) {
	if err != nil {
		return "", err
	}
	return obj.GetResourceVersion(), nil
}

func describe(obj any) string {
	if m, err := meta.Accessor(obj); err == nil {
		return fmt.Sprintf("%s at %s", m.GetName(), m.GetResourceVersion())
	}
	return fmt.Sprintf("%T", obj)
}

// eventProbe follows one Event from its creation (right after the control
// plane starts) until --event-ttl makes storage expire it, while the other
// checks run.
type eventProbe struct {
	ns, name      string
	before, after time.Time // around the create call
	createErr     error
	lease         int64
	grantedTTL    int64
	ttl           int64
	leaseErr      error

	mu       sync.Mutex
	goneAt   time.Time
	lastErr  error
	finished chan struct{}
}

func prepareEvent(ctx context.Context, e *env) error {
	ns, err := e.newNamespace(ctx, "e2e-events")
	if err != nil {
		return err
	}
	p := &eventProbe{ns: ns, name: "e2e-ttl", finished: make(chan struct{})}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: p.name},
		InvolvedObject: corev1.ObjectReference{APIVersion: "v1", Kind: "ConfigMap", Namespace: ns, Name: "subject"},
		Reason:         "E2ETest",
		Message:        "expires after --event-ttl",
		Type:           corev1.EventTypeNormal,
		Source:         corev1.EventSource{Component: "koine-e2e"},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	p.before = time.Now()
	_, err = e.kube.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{})
	p.after = time.Now()
	if err != nil {
		return fmt.Errorf("create event: %w", err)
	}
	if _, err := e.kube.CoreV1().Events(ns).Get(ctx, p.name, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("get the event just created: %w", err)
	}
	// The TTL is a storage lease attached to the event's key.
	key := "/registry/events/" + ns + "/" + p.name
	if resp, err := e.etcd.Get(ctx, key); err != nil {
		p.leaseErr = err
	} else if len(resp.Kvs) != 1 {
		p.leaseErr = fmt.Errorf("key %s not found in storage", key)
	} else if p.lease = resp.Kvs[0].Lease; p.lease == 0 {
		p.leaseErr = fmt.Errorf("key %s has no lease", key)
	} else if ttl, err := e.etcd.TimeToLive(ctx, clientv3.LeaseID(p.lease)); err != nil {
		p.leaseErr = fmt.Errorf("TimeToLive(%x): %w", p.lease, err)
	} else {
		p.grantedTTL, p.ttl = ttl.GrantedTTL, ttl.TTL
	}
	e.event = p
	go func() {
		defer close(p.finished)
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		for ctx.Err() == nil {
			gctx, gcancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := e.kube.CoreV1().Events(ns).Get(gctx, p.name, metav1.GetOptions{})
			gcancel()
			if apierrors.IsNotFound(err) {
				p.mu.Lock()
				p.goneAt = time.Now()
				p.mu.Unlock()
				return
			}
			p.mu.Lock()
			p.lastErr = err
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return nil
}

// leases-events: leader election works (the controller-manager's Lease
// is renewed; a Lease can be taken and renewed with optimistic
// concurrency) and Events expire after --event-ttl.
func checkLeasesEvents(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver", "kube-controller-manager")
	leases := e.kube.CoordinationV1().Leases("kube-system")
	first, err := leases.Get(ctx, "kube-controller-manager", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("kube-controller-manager's lease: %w", err)
	}
	if first.Spec.HolderIdentity == nil || *first.Spec.HolderIdentity == "" || first.Spec.RenewTime == nil {
		return fmt.Errorf("kube-controller-manager's lease has no holder or renewTime: %+v", first.Spec)
	}
	start := time.Now()

	// Meanwhile, a lease of our own, renewed like a leader would.
	ns := e.event.nsOr(e)
	own := e.kube.CoordinationV1().Leases(ns)
	holder, dur := "e2e-holder", int32(15)
	now := metav1.NowMicro()
	cur, err := own.Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-lock"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, AcquireTime: &now, RenewTime: &now},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	original := cur.DeepCopy()
	for i := 0; i < 3; i++ {
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
		upd := cur.DeepCopy()
		renew := metav1.NowMicro()
		upd.Spec.RenewTime = &renew
		next, err := own.Update(ctx, upd, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("renew %d: %w", i+1, err)
		}
		if mustRV(next.ResourceVersion) <= mustRV(cur.ResourceVersion) {
			return fmt.Errorf("renew %d: resourceVersion %s not newer than %s", i+1, next.ResourceVersion, cur.ResourceVersion)
		}
		got, err := own.Get(ctx, "e2e-lock", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if got.Spec.RenewTime == nil || !got.Spec.RenewTime.Time.Truncate(time.Microsecond).Equal(renew.Time.Truncate(time.Microsecond)) {
			return fmt.Errorf("renew %d: read back renewTime %v, want %v", i+1, got.Spec.RenewTime, renew)
		}
		cur = next
	}
	// A contender holding the original version must lose.
	contender := original.DeepCopy()
	other := "e2e-contender"
	contender.Spec.HolderIdentity = &other
	if _, err := own.Update(ctx, contender, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		return fmt.Errorf("lease update with a stale resourceVersion: got %v, want 409 Conflict", err)
	}
	if got, err := own.Get(ctx, "e2e-lock", metav1.GetOptions{}); err != nil || *got.Spec.HolderIdentity != holder {
		return fmt.Errorf("after the refused takeover: %v, holder %v", err, got.Spec.HolderIdentity)
	}

	// The controller-manager renews every 2s (--leader-elect-retry-period).
	if err := sleepCtx(ctx, 10*time.Second-time.Since(start)); err != nil {
		return err
	}
	second, err := leases.Get(ctx, "kube-controller-manager", metav1.GetOptions{})
	if err != nil {
		return err
	}
	advance := second.Spec.RenewTime.Sub(first.Spec.RenewTime.Time)
	r.note("kcm_lease_renew_advance_seconds", advance.Seconds())
	if advance < 4*time.Second {
		return fmt.Errorf("kube-controller-manager's lease renewTime advanced %s in %s (from %v to %v)", advance, time.Since(start).Round(time.Second), first.Spec.RenewTime, second.Spec.RenewTime)
	}

	return e.event.check(ctx, r)
}

func (p *eventProbe) nsOr(e *env) string {
	if p == nil {
		return "default"
	}
	return p.ns
}

func (p *eventProbe) check(ctx context.Context, r *result) error {
	if p == nil {
		return fmt.Errorf("the event was not prepared")
	}
	if p.leaseErr != nil {
		return fmt.Errorf("the event's storage lease: %w", p.leaseErr)
	}
	r.note("event_lease_granted_ttl", p.grantedTTL)
	// The apiserver asks for at least --event-ttl (it may add a little to
	// reuse one lease for several events).
	if p.grantedTTL < 60 || p.ttl <= 0 || p.ttl > p.grantedTTL {
		return fmt.Errorf("the event's lease %x: granted TTL %ds, remaining %ds; want >= 60s granted (--event-ttl=1m)", p.lease, p.grantedTTL, p.ttl)
	}
	deadline := p.before.Add(150 * time.Second)
	select {
	case <-p.finished:
	case <-time.After(time.Until(deadline)):
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	goneAt, lastErr := p.goneAt, p.lastErr
	p.mu.Unlock()
	if goneAt.IsZero() {
		return fmt.Errorf("event %s/%s still exists %s after creation (--event-ttl=1m; last get: %v)", p.ns, p.name, time.Since(p.before).Round(time.Second), lastErr)
	}
	lifetime := goneAt.Sub(p.after)
	r.note("event_lifetime_seconds", lifetime.Seconds())
	if lifetime < 58*time.Second {
		return fmt.Errorf("event %s/%s expired %s after creation, before its 1m TTL", p.ns, p.name, lifetime.Round(time.Second))
	}
	if goneAt.After(deadline) {
		return fmt.Errorf("event %s/%s expired only %s after creation", p.ns, p.name, goneAt.Sub(p.before).Round(time.Second))
	}
	return nil
}
