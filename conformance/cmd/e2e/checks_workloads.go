package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
)

// deployment: the controllers (deployment, replicaset, garbage collector)
// converge through watches on storage: a Deployment gets a ReplicaSet and
// Pods, follows scaling, and is cleaned up by background deletion.
func checkDeployment(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver", "kube-controller-manager")
	ns, err := e.newNamespace(ctx, "e2e-deploy")
	if err != nil {
		return err
	}
	defer e.deleteNamespaceLater(ns)
	if err := e.waitDefaultServiceAccount(ctx, ns); err != nil {
		return err
	}
	deps := e.kube.AppsV1().Deployments(ns)
	replicas := int32(3)
	dep, err := deps.Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: pauseTemplate("web"),
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create deployment: %w", err)
	}

	var rsUID types.UID
	// waitPods waits until the Deployment owns exactly one ReplicaSet,
	// which owns exactly want live Pods, all Pending and unscheduled, and
	// the Deployment's status reports them.
	waitPods := func(want int) error {
		start := time.Now()
		err := poll(ctx, 500*time.Millisecond, 2*time.Minute, fmt.Sprintf("%d pods", want), func(ctx context.Context) (bool, error) {
			rsl, err := e.kube.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			var owned []appsv1.ReplicaSet
			for _, rs := range rsl.Items {
				if ref := metav1.GetControllerOf(&rs); ref != nil && ref.UID == dep.UID {
					owned = append(owned, rs)
				}
			}
			if len(owned) != 1 {
				return false, fmt.Errorf("the deployment owns %d replicasets", len(owned))
			}
			rs := owned[0]
			if rsUID != "" && rs.UID != rsUID {
				return false, permanent(fmt.Errorf("scaling replaced the replicaset %s by %s", rsUID, rs.UID))
			}
			rsUID = rs.UID
			pods, err := e.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			live := 0
			for _, p := range pods.Items {
				ref := metav1.GetControllerOf(&p)
				if p.DeletionTimestamp != nil || ref == nil || ref.UID != rs.UID {
					continue
				}
				if p.Spec.NodeName != "" || p.Status.Phase != corev1.PodPending {
					return false, permanent(fmt.Errorf("pod %s is on node %q in phase %q; with no scheduler it must stay Pending", p.Name, p.Spec.NodeName, p.Status.Phase))
				}
				live++
			}
			if live != want {
				return false, fmt.Errorf("replicaset %s owns %d live pods (spec.replicas %d, status.replicas %d)", rs.Name, live, ptrVal(rs.Spec.Replicas), rs.Status.Replicas)
			}
			d, err := deps.Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if d.Status.ObservedGeneration < d.Generation || int(d.Status.Replicas) != want {
				return false, fmt.Errorf("deployment status: observedGeneration %d (generation %d), replicas %d", d.Status.ObservedGeneration, d.Generation, d.Status.Replicas)
			}
			return true, nil
		})
		r.note(fmt.Sprintf("seconds_to_%d_pods", want), time.Since(start).Seconds())
		return err
	}
	if err := waitPods(3); err != nil {
		return err
	}

	// Scale up through the scale subresource (what autoscalers use)...
	sc, err := deps.GetScale(ctx, "web", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get scale: %w", err)
	}
	sc.Spec.Replicas = 5
	if _, err := deps.UpdateScale(ctx, "web", sc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update scale: %w", err)
	}
	if err := waitPods(5); err != nil {
		return err
	}
	// ...and down with kubectl.
	if _, _, err := e.kubectl(ctx, "", "-n", ns, "scale", "deployment/web", "--replicas=1"); err != nil {
		return err
	}
	if err := waitPods(1); err != nil {
		return err
	}

	// Background propagation: the Deployment goes at once, the garbage
	// collector then deletes the ReplicaSet it owned, and that one's Pods.
	bg := metav1.DeletePropagationBackground
	if err := deps.Delete(ctx, "web", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		return fmt.Errorf("delete deployment: %w", err)
	}
	start := time.Now()
	err = poll(ctx, 500*time.Millisecond, 3*time.Minute, "the garbage collector to delete the replicaset and pods", func(ctx context.Context) (bool, error) {
		if _, err := deps.Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("deployment still readable (err %v)", err)
		}
		rsl, err := e.kube.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		pods, err := e.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		if len(rsl.Items)+len(pods.Items) > 0 {
			return false, fmt.Errorf("%d replicasets and %d pods remain", len(rsl.Items), len(pods.Items))
		}
		return true, nil
	})
	r.note("gc_seconds", time.Since(start).Seconds())
	return err
}

func ptrVal(p *int32) int32 {
	if p == nil {
		return -1
	}
	return *p
}

var widgetGVR = schema.GroupVersionResource{Group: "e2e.koine.dev", Version: "v1", Resource: "widgets"}

// crd: custom resources at volume — a CRD becomes Established, thousands
// of objects are created concurrently, paginated lists return each exactly
// once at one resourceVersion, kubectl's chunked get agrees, and a watch
// from an older resourceVersion replays exactly the later changes in order.
func checkCRD(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver")
	n := e.o.crdObjects
	crds := e.ext.ApiextensionsV1().CustomResourceDefinitions()
	crd := &apiextv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "widgets.e2e.koine.dev"},
		Spec: apiextv1.CustomResourceDefinitionSpec{
			Group: "e2e.koine.dev",
			Scope: apiextv1.NamespaceScoped,
			Names: apiextv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget", ListKind: "WidgetList"},
			Versions: []apiextv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextv1.CustomResourceValidation{OpenAPIV3Schema: &apiextv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextv1.JSONSchemaProps{
						"spec": {
							Type:     "object",
							Required: []string{"size"},
							Properties: map[string]apiextv1.JSONSchemaProps{
								"size":  {Type: "integer"},
								"color": {Type: "string"},
							},
						},
					},
				}},
			}},
		},
	}
	if _, err := crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CRD: %w", err)
	}
	err := poll(ctx, 250*time.Millisecond, 2*time.Minute, "the CRD to be Established", func(ctx context.Context) (bool, error) {
		got, err := crds.Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		est, names := false, false
		for _, c := range got.Status.Conditions {
			est = est || (c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue)
			names = names || (c.Type == apiextv1.NamesAccepted && c.Status == apiextv1.ConditionTrue)
		}
		if !est || !names {
			return false, fmt.Errorf("conditions %+v", got.Status.Conditions)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	ns, err := e.newNamespace(ctx, "e2e-crd")
	if err != nil {
		return err
	}
	// The namespace and its objects are left in place: deleting thousands
	// of objects would load the backend during the following checks.
	res := e.dyn.Resource(widgetGVR).Namespace(ns)
	// Established can precede the handler serving the new resource.
	err = poll(ctx, 250*time.Millisecond, time.Minute, "widgets to be served", func(ctx context.Context) (bool, error) {
		_, err := res.List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, err
	})
	if err != nil {
		return err
	}

	// Create n objects with a bounded number of concurrent workers.
	start := time.Now()
	var retries atomic.Int64
	err = parallel(ctx, 8, n, func(ctx context.Context, i int) error {
		obj := widget(fmt.Sprintf("w-%05d", i), int64(i))
		for attempt := 0; ; attempt++ {
			_, err := res.Create(ctx, obj, metav1.CreateOptions{})
			if err == nil || (attempt > 0 && apierrors.IsAlreadyExists(err)) {
				return nil
			}
			if attempt >= 5 || !retryable(err) {
				return fmt.Errorf("create %s: %w", obj.GetName(), err)
			}
			retries.Add(1)
			time.Sleep(200 * time.Millisecond)
		}
	})
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	r.note("created", n)
	r.note("create_seconds", elapsed.Seconds())
	r.note("creates_per_second", float64(n)/elapsed.Seconds())
	r.note("create_retries", retries.Load())

	// Paginated list: every object exactly once, every page at the first
	// page's resourceVersion (a consistent snapshot).
	listRV, pages, err := listAllPages(ctx, e, ns, metav1.ListOptions{Limit: 500}, n)
	if err != nil {
		return fmt.Errorf("paginated list (limit 500): %w", err)
	}
	r.note("pages", pages)
	if want := (n + 499) / 500; pages != want {
		return fmt.Errorf("paginated list of %d objects with limit 500 took %d pages, want %d", n, pages, want)
	}
	// The same snapshot again, asked for by resourceVersion.
	if _, _, err := listAllPages(ctx, e, ns, metav1.ListOptions{Limit: 1000, ResourceVersion: listRV, ResourceVersionMatch: metav1.ResourceVersionMatchExact}, n); err != nil {
		return fmt.Errorf("paginated list at resourceVersion %s (Exact): %w", listRV, err)
	}

	out, _, err := e.kubectl(ctx, "", "-n", ns, "get", "widgets.e2e.koine.dev", "--chunk-size=200", "-o", "name")
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			if seen[l] {
				return fmt.Errorf("kubectl get --chunk-size=200 printed %s twice", l)
			}
			seen[l] = true
		}
	}
	if len(seen) != n {
		return fmt.Errorf("kubectl get --chunk-size=200 -o name printed %d names, want %d", len(seen), n)
	}

	// Watch replay: note a resourceVersion, make the updates, then watch
	// from it: exactly those changes, once each, in revision order.
	first, err := res.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return err
	}
	rv0 := first.GetResourceVersion()
	k := min(500, n)
	type change struct {
		name string
		rv   uint64
		size int64
	}
	changes := make([]change, k)
	err = parallel(ctx, 8, k, func(ctx context.Context, i int) error {
		name := fmt.Sprintf("w-%05d", i)
		size := int64(100000 + i)
		patch := fmt.Appendf(nil, `{"spec":{"size":%d}}`, size)
		got, err := res.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			return fmt.Errorf("patch %s: %w", name, err)
		}
		rv, err := rvNum(got.GetResourceVersion())
		if err != nil {
			return err
		}
		changes[i] = change{name, rv, size}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Slice(changes, func(i, j int) bool { return changes[i].rv < changes[j].rv })
	for i := 1; i < k; i++ {
		if changes[i].rv == changes[i-1].rv {
			return fmt.Errorf("updates of %s and %s were both acknowledged at resourceVersion %d", changes[i-1].name, changes[i].name, changes[i].rv)
		}
	}

	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	w, err := res.Watch(wctx, metav1.ListOptions{ResourceVersion: rv0})
	if err != nil {
		return fmt.Errorf("watch from %s: %w", rv0, err)
	}
	defer w.Stop()
	var got []change
	var extraDeadline <-chan time.Time
collect:
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				break collect
			}
			if ev.Type == watch.Error {
				return fmt.Errorf("watch from %s: error event after %d changes: %v", rv0, len(got), apierrors.FromObject(ev.Object))
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				return fmt.Errorf("watch event %s carries %T", ev.Type, ev.Object)
			}
			if ev.Type != watch.Modified {
				return fmt.Errorf("watch from %s: unexpected %s of %s at %s", rv0, ev.Type, u.GetName(), u.GetResourceVersion())
			}
			rv, err := rvNum(u.GetResourceVersion())
			if err != nil {
				return err
			}
			size, _, _ := unstructured.NestedInt64(u.Object, "spec", "size")
			got = append(got, change{u.GetName(), rv, size})
			if len(got) == k {
				// Anything after the last change would be a duplicate.
				extraDeadline = time.After(3 * time.Second)
			}
		case <-extraDeadline:
			break collect
		case <-wctx.Done():
			break collect
		}
	}
	r.note("watch_events", len(got))
	for i := range got {
		if i > 0 && got[i].rv <= got[i-1].rv {
			return fmt.Errorf("watch from %s: event %d (%s at %d) does not follow %s at %d: resourceVersions must strictly increase", rv0, i, got[i].name, got[i].rv, got[i-1].name, got[i-1].rv)
		}
		if i >= k {
			return fmt.Errorf("watch from %s delivered %d events for %d changes; extra: %s at %d", rv0, len(got), k, got[i].name, got[i].rv)
		}
		if got[i] != changes[i] {
			return fmt.Errorf("watch from %s: event %d is %+v, want %+v", rv0, i, got[i], changes[i])
		}
	}
	if len(got) != k {
		return fmt.Errorf("watch from %s delivered %d of the %d changes", rv0, len(got), k)
	}
	return nil
}

// listAllPages lists widgets page by page and checks that every page has
// the first page's resourceVersion and that w-00000..w-(n-1) each appear
// exactly once. It returns that resourceVersion and the page count.
func listAllPages(ctx context.Context, e *env, ns string, opts metav1.ListOptions, n int) (string, int, error) {
	res := e.dyn.Resource(widgetGVR).Namespace(ns)
	count := map[string]int{}
	listRV := ""
	pages := 0
	for {
		l, err := res.List(ctx, opts)
		if err != nil {
			return "", pages, fmt.Errorf("page %d: %w", pages+1, err)
		}
		pages++
		if pages == 1 {
			listRV = l.GetResourceVersion()
		} else if l.GetResourceVersion() != listRV {
			return "", pages, fmt.Errorf("page %d has resourceVersion %s, the first page %s", pages, l.GetResourceVersion(), listRV)
		}
		for _, it := range l.Items {
			count[it.GetName()]++
		}
		if int64(len(l.Items)) > opts.Limit {
			return "", pages, fmt.Errorf("page %d has %d items, limit %d", pages, len(l.Items), opts.Limit)
		}
		if l.GetContinue() == "" {
			break
		}
		opts.Continue = l.GetContinue()
		// The continue token carries the resourceVersion from here on.
		opts.ResourceVersion, opts.ResourceVersionMatch = "", ""
		if pages > n/int(opts.Limit)+10 {
			return "", pages, fmt.Errorf("still continuing after %d pages", pages)
		}
	}
	var dup, missing []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("w-%05d", i)
		switch count[name] {
		case 0:
			missing = append(missing, name)
		case 1:
		default:
			dup = append(dup, name)
		}
		delete(count, name)
	}
	if len(missing)+len(dup)+len(count) > 0 {
		return "", pages, fmt.Errorf("%d missing (e.g. %v), %d repeated (e.g. %v), %d unexpected", len(missing), head(missing), len(dup), head(dup), len(count))
	}
	return listRV, pages, nil
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

func widget(name string, size int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "e2e.koine.dev/v1",
		"kind":       "Widget",
		"metadata":   map[string]any{"name": name, "labels": map[string]any{"e2e": "widget"}},
		"spec":       map[string]any{"size": size, "color": "blue"},
	}}
}

// parallel runs fn(0..n-1) on workers goroutines; the first error stops
// the others.
func parallel(ctx context.Context, workers, n int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

// retryable: errors a client retries (overload, timeouts, a storage
// hiccup); anything else is a real answer.
func retryable(err error) bool {
	var ne net.Error
	return apierrors.IsTooManyRequests(err) || apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) ||
		apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || errors.As(err, &ne)
}
