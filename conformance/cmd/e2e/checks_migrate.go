package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"

	"koine.local/conformance/internal/proc"
)

// migrate: moves the control plane's storage from one datastore to the
// next along -migrate-path, the way docs/migration.md tells a K3s user
// to: stop the apiserver and the controller-manager, carry the data over
// (`koine import` from kine's database, from an etcd snapshot or from
// another Koine database; or `etcdctl snapshot save` from Koine and
// `etcdutl snapshot restore` into etcd 3.6), start the new datastore on
// the old one's address, start the control plane again. After each move:
// every object is there with its resourceVersion, a watch resumed from a
// resourceVersion handed out before the move sees exactly the changes made
// after it, and new writes get later resourceVersions.
//
// Hops: koine-sqlite, koine-postgres (needs -dsn), etcd36 (etcd and
// etcdutl 3.6 from -etcd36-dir).
func checkMigrate(ctx context.Context, e *env, r *result) error {
	r.showLogs = nil
	hops := strings.Split(e.o.migratePath, ",")
	ns, err := e.newNamespace(ctx, "e2e-migrate")
	if err != nil {
		return err
	}
	pts := e.kube.CoreV1().PodTemplates(ns)
	next := 0
	create := func() (*corev1.PodTemplate, error) {
		name := fmt.Sprintf("pt-%03d", next)
		next++
		return pts.Create(ctx, &corev1.PodTemplate{ObjectMeta: metav1.ObjectMeta{Name: name}, Template: pauseTemplate(name)}, metav1.CreateOptions{})
	}
	for i := 0; i < 20; i++ {
		if _, err := create(); err != nil {
			return err
		}
	}
	var moves []string
	for i, hop := range hops {
		hop = strings.TrimSpace(hop)
		tag := fmt.Sprintf("hop%d_%s", i+1, hop)
		from := e.o.backend
		// A compaction first, as the apiserver's compactor makes them: the
		// move must carry it (and compact_rev_key's version) over.
		compacted, err := compactLikeAPIServer(ctx, e)
		if err != nil {
			return fmt.Errorf("before %s -> %s: %w", from, hop, err)
		}
		// kine ignores Compact while its own compactor runs (every 5
		// minutes by default): only a compaction the source really made
		// can be required to survive the move (tests/it/migrate.rs checks
		// kine's own compaction).
		_, below := e.etcd.Get(ctx, compactRevKey, clientv3.WithRev(compacted-1))
		sourceCompacted := errors.Is(below, rpctypes.ErrCompacted)
		r.note(tag+"_source_compacted", sourceCompacted)
		// A resourceVersion handed out before the move, then changes after
		// it: what a watch resumed from it must see.
		list, err := pts.List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		resumeAt := list.ResourceVersion
		r.note(tag+"_compacted_at", compacted)
		var want []string
		for i, pt := range list.Items[:5] {
			patch := fmt.Appendf(nil, `{"metadata":{"labels":{"hop":"%s-%d"}}}`, hop, i)
			got, err := pts.Patch(ctx, pt.Name, "application/merge-patch+json", patch, metav1.PatchOptions{})
			if err != nil {
				return err
			}
			want = append(want, fmt.Sprintf("MODIFIED %s %s", got.Name, got.ResourceVersion))
		}
		for _, pt := range list.Items[5:7] {
			if err := pts.Delete(ctx, pt.Name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			want = append(want, "DELETED "+pt.Name)
		}
		for i := 0; i < 3; i++ {
			got, err := create()
			if err != nil {
				return err
			}
			want = append(want, fmt.Sprintf("ADDED %s %s", got.Name, got.ResourceVersion))
		}
		before, err := pts.List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}

		start := time.Now()
		if err := e.move(ctx, hop, r); err != nil {
			return fmt.Errorf("moving %s -> %s: %w", from, hop, err)
		}
		took := time.Since(start).Round(100 * time.Millisecond)
		moves = append(moves, fmt.Sprintf("%s -> %s (%s)", from, hop, took))
		progress("%s: moved %s -> %s in %s", r.Name, from, hop, took)

		after, err := pts.List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("after %s -> %s: %w", from, hop, err)
		}
		if a, b := describeItems(before.Items), describeItems(after.Items); a != b {
			return fmt.Errorf("after %s -> %s the objects differ:\nbefore: %s\nafter:  %s", from, hop, a, b)
		}
		// Below the compaction stays compacted: a watch from RV starts at
		// RV+1, so RV = compacted-2 asks for a compacted revision.
		if sourceCompacted {
			below := fmt.Sprint(compacted - 2)
			if err := expectWatchGone(ctx, func(ctx context.Context) (watch.Interface, error) {
				return pts.Watch(ctx, metav1.ListOptions{ResourceVersion: below})
			}); err != nil {
				return fmt.Errorf("after %s -> %s, a watch from %s (starting below the compaction to %d before the move): %w", from, hop, below, compacted, err)
			}
		}
		open := func(rv string) (watch.Interface, error) {
			return pts.Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
		}
		reopened := 0
		w, got, err := collect(ctx, open, resumeAt, len(want), &reopened)
		if err != nil {
			return fmt.Errorf("after %s -> %s, the watch from %s (handed out before the move): %w", from, hop, resumeAt, err)
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			w.Stop()
			return fmt.Errorf("after %s -> %s the watch from %s saw:\n%s\nwant:\n%s", from, hop, resumeAt,
				strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// The store goes on from where it was: the next write is newer
		// than anything before the move, and the resumed watch sees it.
		fresh, err := create()
		if err != nil {
			w.Stop()
			return fmt.Errorf("after %s -> %s, a write: %w", from, hop, err)
		}
		if mustRV(fresh.ResourceVersion) <= mustRV(before.ResourceVersion) {
			w.Stop()
			return fmt.Errorf("after %s -> %s a new write got resourceVersion %s, not after %s", from, hop, fresh.ResourceVersion, before.ResourceVersion)
		}
		// The last change was a creation: its resourceVersion is where the
		// open watch stands.
		last := got[len(got)-1]
		lastRV := last[strings.LastIndex(last, " ")+1:]
		current := w
		w2, more, err := collect(ctx, func(rv string) (watch.Interface, error) {
			if current != nil {
				open1 := current
				current = nil
				return open1, nil
			}
			return open(rv)
		}, lastRV, 1, &reopened)
		if err != nil {
			return err
		}
		w2.Stop()
		r.note(tag+"_watch_reopened", reopened)
		if wantNew := fmt.Sprintf("ADDED %s %s", fresh.Name, fresh.ResourceVersion); more[0] != wantNew {
			return fmt.Errorf("after %s -> %s the watch saw %q, want %q", from, hop, more[0], wantNew)
		}
	}
	r.note("moves", moves)
	return nil
}

func describeItems(items []corev1.PodTemplate) string {
	var out []string
	for _, it := range items {
		out = append(out, fmt.Sprintf("%s@%s%v", it.Name, it.ResourceVersion, it.Labels))
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// collect reads n events (type, name, and the resourceVersion of adds and
// modifications). A watch that ends without an error is reopened from the
// last resourceVersion it delivered, as client-go's reflector does (the
// apiserver's etcd client can end a watch whose gRPC stream it is
// recycling); how often is counted in reopened.
func collect(ctx context.Context, open func(rv string) (watch.Interface, error), from string, n int, reopened *int) (watch.Interface, []string, error) {
	var out []string
	rv := from
	w, err := open(rv)
	if err != nil {
		return nil, nil, err
	}
	timeout := time.After(time.Minute)
	for len(out) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				if *reopened >= 3 {
					return nil, out, fmt.Errorf("the watch ended after %d of %d events, %d times", len(out), n, *reopened)
				}
				*reopened++
				if w, err = open(rv); err != nil {
					return nil, out, err
				}
				continue
			}
			pt, isPT := ev.Object.(*corev1.PodTemplate)
			if !isPT {
				w.Stop()
				return nil, out, fmt.Errorf("watch event %s: %s", ev.Type, describe(ev.Object))
			}
			rv = pt.ResourceVersion
			if ev.Type == watch.Deleted {
				out = append(out, "DELETED "+pt.Name)
			} else {
				out = append(out, fmt.Sprintf("%s %s %s", ev.Type, pt.Name, pt.ResourceVersion))
			}
		case <-timeout:
			w.Stop()
			return nil, out, fmt.Errorf("%d of %d events after a minute", len(out), n)
		case <-ctx.Done():
			w.Stop()
			return nil, out, ctx.Err()
		}
	}
	return w, out, nil
}

// move stops the control plane, carries the data to the hop's datastore,
// starts it on the old datastore's address and the control plane again.
func (e *env) move(ctx context.Context, hop string, r *result) error {
	logs := filepath.Join(e.dir, "logs")
	work := filepath.Join(e.dir, "migrate-"+randHex(3))
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	from := e.o.backend
	old := e.backends[0]
	endpoint := e.endpoints[0]
	port := strings.TrimPrefix(endpoint, "http://127.0.0.1:")

	e.kcm.Stop(30 * time.Second)
	// With the controllers stopped nothing but the apiserver itself
	// writes: every object of these kinds must come back as it was.
	before, err := e.inventory(ctx)
	if err != nil {
		return err
	}
	e.apiserver.Stop(30 * time.Second)

	// A snapshot is taken from the running datastore (etcd, or Koine
	// when etcd comes next).
	snapshot := filepath.Join(work, "snapshot.db")
	if from == "etcd" || hop == "etcd36" {
		if strings.HasPrefix(from, "kine-") {
			return fmt.Errorf("kine has no snapshots: move it to Koine first")
		}
		rc, err := e.etcd.Snapshot(ctx)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		f, err := os.Create(snapshot)
		if err == nil {
			_, err = io.Copy(f, rc)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		rc.Close()
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
	}
	old.Stop(30 * time.Second)

	var p *proc.Proc
	switch hop {
	case "koine-sqlite", "koine-postgres":
		var dsn string
		if hop == "koine-sqlite" {
			dsn = "sqlite://" + filepath.Join(work, "state.db")
		} else {
			if e.o.dsn == "" {
				return fmt.Errorf("the koine-postgres hop needs -dsn")
			}
			var err error
			if dsn, err = withDatabase(e.o.dsn, "koine_moved_"+randHex(4)); err != nil {
				return err
			}
		}
		args := []string{"import", "--endpoint", dsn}
		switch {
		case from == "etcd":
			args = append(args, "--from-snapshot", snapshot)
		case strings.HasPrefix(from, "kine-"):
			args = append(args, "--from-kine", e.database)
		default:
			args = append(args, "--from-koine", e.database)
		}
		started := time.Now()
		if err := proc.RunLogged("koine-import", e.o.koineBin, args, logs, nil); err != nil {
			return err
		}
		r.note("import_"+from+"_to_"+hop+"_seconds", time.Since(started).Seconds())
		name := "koine-" + strings.TrimPrefix(hop, "koine-") + "-moved"
		p = e.procs.add(name, e.o.koineBin, logs, []string{
			"--listen-address", "127.0.0.1:" + port,
			"--endpoint", dsn,
			"--name", name,
			"--log-level", "warn",
			"--compact-interval", "0",
		})
		e.database = dsn
		e.o.backend = strings.TrimPrefix(hop, "koine-")
	case "etcd36":
		peer, err := proc.FreePort()
		if err != nil {
			return err
		}
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		data := filepath.Join(work, "etcd-data")
		if err := proc.RunLogged("etcdutl", filepath.Join(e.o.etcd36Dir, "etcdutl"), []string{
			"snapshot", "restore", snapshot,
			"--data-dir", data,
			"--name", "e2e",
			"--initial-cluster", "e2e=" + peerURL,
			"--initial-advertise-peer-urls", peerURL,
		}, logs, nil); err != nil {
			return err
		}
		p = e.procs.add("etcd36", filepath.Join(e.o.etcd36Dir, "etcd"), logs, []string{
			"--name=e2e",
			"--data-dir=" + data,
			"--listen-client-urls=" + endpoint,
			"--advertise-client-urls=" + endpoint,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=e2e=" + peerURL,
			"--log-level=warn",
		})
		e.database = ""
		e.o.backend = "etcd"
	default:
		return fmt.Errorf("unknown hop %q (koine-sqlite, koine-postgres, etcd36)", hop)
	}
	e.backends = []*proc.Proc{p}
	if err := p.Start(); err != nil {
		return err
	}
	if err := e.waitBackend(ctx, 0, time.Minute); err != nil {
		return err
	}
	if err := e.apiserver.Start(); err != nil {
		return err
	}
	if err := e.waitAPIServerReady(ctx, e.o.startupTimeout); err != nil {
		return err
	}
	after, err := e.inventory(ctx)
	if err != nil {
		return err
	}
	if gone, added := diff(before, after); len(gone)+len(added) > 0 {
		return fmt.Errorf("the objects differ after the move (of %d): gone or changed %v; new or changed %v", len(before), gone, added)
	}
	r.note("objects_compared_"+hop, len(before))
	if err := e.kcm.Start(); err != nil {
		return err
	}
	return e.waitControllerManager(ctx)
}

// inventoryGVRs: the kinds the move must carry over unchanged (the
// workload checks' objects and the control plane's own), listed through
// the apiserver. Leases and Endpoints are left out: the apiserver renews
// its own at start.
var inventoryGVRs = []schema.GroupVersionResource{
	{Version: "v1", Resource: "namespaces"},
	{Version: "v1", Resource: "configmaps"},
	{Version: "v1", Resource: "secrets"},
	{Version: "v1", Resource: "serviceaccounts"},
	{Version: "v1", Resource: "pods"},
	{Version: "v1", Resource: "podtemplates"},
	{Group: "apps", Version: "v1", Resource: "deployments"},
	{Group: "apps", Version: "v1", Resource: "replicasets"},
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
}

// inventory lists every object of inventoryGVRs (and of the crd check's
// custom resource, when it exists): kind, namespace, name and
// resourceVersion, sorted.
func (e *env) inventory(ctx context.Context) ([]string, error) {
	var out []string
	gvrs := append([]schema.GroupVersionResource{}, inventoryGVRs...)
	if _, err := e.dyn.Resource(widgetGVR).List(ctx, metav1.ListOptions{Limit: 1}); err == nil {
		gvrs = append(gvrs, widgetGVR)
	}
	for _, gvr := range gvrs {
		list, err := e.dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", gvr.Resource, err)
		}
		for _, it := range list.Items {
			out = append(out, fmt.Sprintf("%s %s/%s@%s", gvr.Resource, it.GetNamespace(), it.GetName(), it.GetResourceVersion()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// diff: what only a has, what only b has (both sorted).
func diff(a, b []string) (onlyA, onlyB []string) {
	inB := map[string]bool{}
	for _, x := range b {
		inB[x] = true
	}
	inA := map[string]bool{}
	for _, x := range a {
		inA[x] = true
		if !inB[x] {
			onlyA = append(onlyA, x)
		}
	}
	for _, x := range b {
		if !inA[x] {
			onlyB = append(onlyB, x)
		}
	}
	return onlyA, onlyB
}
