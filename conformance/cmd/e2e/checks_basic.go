package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

// readyz: the apiserver reports its storage healthy, and its storage
// metrics reflect what was written.
func checkReadyz(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver")
	rc := e.kube.Discovery().RESTClient()

	body, err := rc.Get().AbsPath("/readyz").Param("verbose", "").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("GET /readyz?verbose: %v\n%s", err, body)
	}
	// "etcd" is the storage health check, "etcd-readiness" the readiness
	// check (storage reachable and every watch cache initialized).
	for _, want := range []string{"[+]etcd ok", "[+]etcd-readiness ok", "readyz check passed"} {
		if !strings.Contains(string(body), want) {
			return fmt.Errorf("/readyz?verbose lacks %q:\n%s", want, body)
		}
	}
	body, err = rc.Get().AbsPath("/livez").Param("verbose", "").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("GET /livez?verbose: %v\n%s", err, body)
	}
	if !strings.Contains(string(body), "[+]etcd ok") {
		return fmt.Errorf("/livez?verbose lacks \"[+]etcd ok\":\n%s", body)
	}

	ns, err := e.newNamespace(ctx, "e2e-readyz")
	if err != nil {
		return err
	}
	defer e.deleteNamespaceLater(ns)
	const created = 60
	for i := 0; i < created; i++ {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%02d", i)}, Data: map[string]string{"i": fmt.Sprint(i)}}
		if _, err := e.kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating configmap %d: %w", i, err)
		}
	}
	all, err := e.kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing all configmaps: %w", err)
	}
	total := len(all.Items)
	r.note("configmaps_listed", total)

	// The object count is refreshed every --etcd-count-metric-poll-period
	// (5s): wait for it to include what was just created. Nothing deletes
	// configmaps meanwhile, so it must reach the listed total, and it must
	// not wildly exceed it.
	return poll(ctx, 2*time.Second, time.Minute, "storage metrics to reflect the created configmaps", func(ctx context.Context) (bool, error) {
		raw, err := rc.Get().AbsPath("/metrics").DoRaw(ctx)
		if err != nil {
			return false, fmt.Errorf("GET /metrics: %v", err)
		}
		samples := parseMetrics(string(raw))
		var creates float64
		for _, s := range findSamples(samples, "etcd_request_duration_seconds_count", map[string]string{"operation": "create", "resource": "configmaps"}) {
			creates += s.value
		}
		if creates < created {
			return false, fmt.Errorf("etcd_request_duration_seconds_count{operation=create,resource=configmaps} is %v, want >= %d", creates, created)
		}
		metric := "apiserver_storage_objects"
		counts := findSamples(samples, metric, map[string]string{"resource": "configmaps"})
		if len(counts) == 0 {
			// Deprecated since 1.34 and hidden in later releases.
			metric = "apiserver_resource_objects"
			counts = findSamples(samples, metric, map[string]string{"resource": "configmaps", "group": ""})
		}
		if len(counts) == 0 {
			return false, fmt.Errorf("neither apiserver_storage_objects nor apiserver_resource_objects has a configmaps series")
		}
		v := counts[0].value
		r.note("object_count_metric", fmt.Sprintf("%s{resource=configmaps} = %v", metric, v))
		if v > float64(total+20) {
			return false, permanent(fmt.Errorf("%s{resource=configmaps} = %v but only %d configmaps exist", metric, v, total))
		}
		if v < float64(total) {
			return false, fmt.Errorf("%s{resource=configmaps} = %v, want >= %d (the listed total, %d of them just created)", metric, v, total, created)
		}
		r.note("etcd_request_creates", creates)
		return true, nil
	})
}

// configmaps-secrets: the basic object contract — reads see writes,
// optimistic concurrency, server-side apply ownership, deletion — through
// client-go and kubectl.
func checkConfigMapsSecrets(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver")
	ns, err := e.newNamespace(ctx, "e2e-cm")
	if err != nil {
		return err
	}
	defer e.deleteNamespaceLater(ns)
	cms := e.kube.CoreV1().ConfigMaps(ns)

	created, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"a": "1"}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create configmap: %w", err)
	}
	got, err := cms.Get(ctx, "cm", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get configmap: %w", err)
	}
	if got.Data["a"] != "1" || got.ResourceVersion != created.ResourceVersion || got.UID != created.UID {
		return fmt.Errorf("get after create: data %v rv %s uid %s, want a=1 rv %s uid %s", got.Data, got.ResourceVersion, got.UID, created.ResourceVersion, created.UID)
	}
	upd := got.DeepCopy()
	upd.Data["a"] = "2"
	updated, err := cms.Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update configmap: %w", err)
	}
	if mustRV(updated.ResourceVersion) <= mustRV(got.ResourceVersion) {
		return fmt.Errorf("update returned resourceVersion %s, not newer than %s", updated.ResourceVersion, got.ResourceVersion)
	}
	// Optimistic concurrency: an update carrying the old resourceVersion
	// must be refused, and must change nothing.
	stale := got.DeepCopy()
	stale.Data["a"] = "stale"
	if _, err := cms.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		return fmt.Errorf("update with stale resourceVersion %s: got %v, want 409 Conflict", got.ResourceVersion, err)
	}
	if after, err := cms.Get(ctx, "cm", metav1.GetOptions{}); err != nil || after.Data["a"] != "2" || after.ResourceVersion != updated.ResourceVersion {
		return fmt.Errorf("after the refused update: %v %v, want a=2 at rv %s", err, dataOf(after), updated.ResourceVersion)
	}

	// Label selectors are evaluated over what storage returns.
	for i, sel := range []string{"yes", "yes", "no", "yes"} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sel-%d", i), Labels: map[string]string{"sel": sel}}}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create sel-%d: %w", i, err)
		}
	}
	sel, err := cms.List(ctx, metav1.ListOptions{LabelSelector: "sel=yes"})
	if err != nil {
		return fmt.Errorf("list sel=yes: %w", err)
	}
	if names := itemNames(sel.Items); strings.Join(names, ",") != "sel-0,sel-1,sel-3" {
		return fmt.Errorf("list sel=yes returned %v, want [sel-0 sel-1 sel-3]", names)
	}

	// Secrets: binary data round-trips byte for byte.
	secrets := e.kube.CoreV1().Secrets(ns)
	blob := []byte{0, 1, 2, 0xfe, 0xff, '\n', 'x'}
	sec, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec"}, Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"blob": blob}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create secret: %w", err)
	}
	gotSec, err := secrets.Get(ctx, "sec", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get secret: %w", err)
	}
	if !bytes.Equal(gotSec.Data["blob"], blob) || gotSec.Type != corev1.SecretTypeOpaque {
		return fmt.Errorf("secret read back as %q type %s, want %q Opaque", gotSec.Data["blob"], gotSec.Type, blob)
	}
	updSec := gotSec.DeepCopy()
	updSec.Data["blob"] = []byte("new")
	if _, err := secrets.Update(ctx, updSec, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update secret: %w", err)
	}
	staleSec := sec.DeepCopy()
	staleSec.Data["blob"] = []byte("stale")
	if _, err := secrets.Update(ctx, staleSec, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		return fmt.Errorf("secret update with stale resourceVersion: got %v, want 409 Conflict", err)
	}
	if gotSec, err = secrets.Get(ctx, "sec", metav1.GetOptions{}); err != nil || string(gotSec.Data["blob"]) != "new" {
		return fmt.Errorf("secret after update: %v %q, want \"new\"", err, secretBlob(gotSec))
	}

	// Server-side apply: the applier owns the fields it sets; another
	// manager changing them conflicts unless it forces.
	apply := func(manager, value string, force bool) (*corev1.ConfigMap, error) {
		return cms.Apply(ctx, corev1ac.ConfigMap("ssa", ns).WithData(map[string]string{"k": value}),
			metav1.ApplyOptions{FieldManager: manager, Force: force})
	}
	a1, err := apply("e2e-a", "v1", false)
	if err != nil {
		return fmt.Errorf("server-side apply (create) by e2e-a: %w", err)
	}
	a2, err := apply("e2e-a", "v2", false)
	if err != nil {
		return fmt.Errorf("server-side apply (change) by e2e-a: %w", err)
	}
	if a2.Data["k"] != "v2" || a2.ResourceVersion == a1.ResourceVersion {
		return fmt.Errorf("second apply: data %v rv %s (first rv %s), want k=v2 and a new rv", a2.Data, a2.ResourceVersion, a1.ResourceVersion)
	}
	if _, err := apply("e2e-b", "other", false); !apierrors.IsConflict(err) {
		return fmt.Errorf("apply by e2e-b of a field e2e-a owns: got %v, want 409 Conflict", err)
	}
	if cur, err := cms.Get(ctx, "ssa", metav1.GetOptions{}); err != nil || cur.Data["k"] != "v2" {
		return fmt.Errorf("after the conflicting apply: %v %v, want k=v2", err, dataOf(cur))
	}
	forced, err := apply("e2e-b", "other", true)
	if err != nil {
		return fmt.Errorf("forced apply by e2e-b: %w", err)
	}
	if forced.Data["k"] != "other" {
		return fmt.Errorf("forced apply: data %v, want k=other", forced.Data)
	}
	if owner := fieldOwner(forced.ManagedFields, "f:k"); owner != "e2e-b" {
		return fmt.Errorf("after the forced apply f:data.f:k is owned by %q, want e2e-b (managedFields %s)", owner, managedSummary(forced.ManagedFields))
	}

	for _, del := range []func() error{
		func() error { return cms.Delete(ctx, "cm", metav1.DeleteOptions{}) },
		func() error { return cms.Delete(ctx, "ssa", metav1.DeleteOptions{}) },
		func() error { return secrets.Delete(ctx, "sec", metav1.DeleteOptions{}) },
	} {
		if err := del(); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
	}
	for _, name := range []string{"cm", "ssa"} {
		if _, err := cms.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("get configmap %s after delete: %v, want NotFound", name, err)
		}
	}
	if _, err := secrets.Get(ctx, "sec", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return fmt.Errorf("get secret after delete: %v, want NotFound", err)
	}

	return kubectlConfigMaps(ctx, e, ns)
}

// kubectlConfigMaps drives the same contract through kubectl.
func kubectlConfigMaps(ctx context.Context, e *env, ns string) error {
	cms := e.kube.CoreV1().ConfigMaps(ns)
	if _, _, err := e.kubectl(ctx, "", "-n", ns, "create", "configmap", "kc", "--from-literal=x=1"); err != nil {
		return err
	}
	out, _, err := e.kubectl(ctx, "", "-n", ns, "get", "configmap", "kc", "-o", "json")
	if err != nil {
		return err
	}
	var kc corev1.ConfigMap
	if err := json.Unmarshal([]byte(out), &kc); err != nil {
		return fmt.Errorf("kubectl get -o json: %v", err)
	}
	viaClient, err := cms.Get(ctx, "kc", metav1.GetOptions{})
	if err != nil {
		return err
	}
	if kc.Data["x"] != "1" || kc.ResourceVersion != viaClient.ResourceVersion {
		return fmt.Errorf("kubectl get: data %v rv %s; client-go: rv %s; want x=1 and the same rv", kc.Data, kc.ResourceVersion, viaClient.ResourceVersion)
	}

	manifest := func(name, key, value string) (string, error) {
		path := filepath.Join(e.dir, fmt.Sprintf("%s-%s-%s.yaml", ns, name, value))
		// Keys are quoted: YAML 1.1 would read a bare y or n as a boolean.
		text := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: %s\ndata:\n  %q: %q\n", name, ns, key, value)
		return path, os.WriteFile(path, []byte(text), 0o644)
	}
	for _, v := range []string{"1", "2"} {
		path, err := manifest("kc-ssa", "val", v)
		if err != nil {
			return err
		}
		out, _, err := e.kubectl(ctx, "", "apply", "--server-side", "-f", path)
		if err != nil {
			return err
		}
		if !strings.Contains(out, "serverside-applied") {
			return fmt.Errorf("kubectl apply --server-side printed %q, want \"serverside-applied\"", out)
		}
		got, err := cms.Get(ctx, "kc-ssa", metav1.GetOptions{})
		if err != nil || got.Data["val"] != v {
			return fmt.Errorf("after kubectl apply val=%s: %v %v", v, err, dataOf(got))
		}
	}
	// kc's data.x belongs to "kubectl-create": applying another value
	// conflicts, and --force-conflicts takes it over.
	path, err := manifest("kc", "x", "2")
	if err != nil {
		return err
	}
	_, stderr, err := e.kubectl(ctx, "", "apply", "--server-side", "-f", path)
	if err == nil || !strings.Contains(strings.ToLower(stderr), "conflict") {
		return fmt.Errorf("kubectl apply --server-side over kubectl-create's field: err %v, stderr %q; want a conflict", err, stderr)
	}
	if got, err := cms.Get(ctx, "kc", metav1.GetOptions{}); err != nil || got.Data["x"] != "1" {
		return fmt.Errorf("after the conflicting kubectl apply: %v %v, want x=1", err, dataOf(got))
	}
	if _, _, err := e.kubectl(ctx, "", "apply", "--server-side", "--force-conflicts", "-f", path); err != nil {
		return err
	}
	if got, err := cms.Get(ctx, "kc", metav1.GetOptions{}); err != nil || got.Data["x"] != "2" {
		return fmt.Errorf("after kubectl apply --force-conflicts: %v %v, want x=2", err, dataOf(got))
	}
	out, _, err = e.kubectl(ctx, "", "-n", ns, "get", "configmaps", "-o", "name")
	if err != nil {
		return err
	}
	for _, want := range []string{"configmap/kc", "configmap/kc-ssa", "configmap/sel-0"} {
		if !containsLine(out, want) {
			return fmt.Errorf("kubectl get configmaps -o name lacks %s:\n%s", want, out)
		}
	}
	if _, _, err := e.kubectl(ctx, "", "-n", ns, "delete", "configmap", "kc", "kc-ssa"); err != nil {
		return err
	}
	for _, name := range []string{"kc", "kc-ssa"} {
		_, stderr, err := e.kubectl(ctx, "", "-n", ns, "get", "configmap", name)
		if err == nil || !strings.Contains(stderr, "NotFound") {
			return fmt.Errorf("kubectl get configmap %s after kubectl delete: err %v, stderr %q; want NotFound", name, err, stderr)
		}
	}
	return nil
}

// namespace-deletion: the namespace controller empties a deleted
// namespace and finalizes it; nothing of it stays in storage.
func checkNamespaceDeletion(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver", "kube-controller-manager")
	ns, err := e.newNamespace(ctx, "e2e-nsdel")
	if err != nil {
		return err
	}
	core := e.kube.CoreV1()
	for i := 0; i < 10; i++ {
		if _, err := core.ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%d", i)}, Data: map[string]string{"i": fmt.Sprint(i)}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	for i := 0; i < 5; i++ {
		if _, err := core.Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sec-%d", i)}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	if _, err := core.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sa"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	svc, err := core.Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "svc"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "none"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	if _, err := core.PodTemplates(ns).Create(ctx, &corev1.PodTemplate{ObjectMeta: metav1.ObjectMeta{Name: "pt"}, Template: pauseTemplate("pt")}, metav1.CreateOptions{}); err != nil {
		return err
	}
	holder := "e2e"
	if _, err := e.kube.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "lease"}, Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	// The ClusterIP is held by an IPAddress object (the allocator of
	// recent releases); if so, deleting the namespace must release it.
	ipHeld := false
	if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != "None" {
		if _, err := e.kube.NetworkingV1().IPAddresses().Get(ctx, svc.Spec.ClusterIP, metav1.GetOptions{}); err == nil {
			ipHeld = true
		}
	}
	r.note("cluster_ip_ipaddress_object", ipHeld)

	prefixes := []string{"configmaps", "secrets", "serviceaccounts", "services/specs", "podtemplates", "leases"}
	if n, err := e.countKeys(ctx, "/registry/configmaps/"+ns+"/"); err != nil || n < 10 {
		return fmt.Errorf("storage has %d configmap keys for %s (err %v), want >= 10", n, ns, err)
	}

	start := time.Now()
	if err := core.Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	if got, err := core.Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil && got.Status.Phase != corev1.NamespaceTerminating {
		return fmt.Errorf("deleted namespace is in phase %q, want Terminating", got.Status.Phase)
	}
	err = poll(ctx, 500*time.Millisecond, 3*time.Minute, "namespace "+ns+" to be finalized", func(ctx context.Context) (bool, error) {
		got, err := core.Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return false, fmt.Errorf("still there: phase %s, conditions %s", got.Status.Phase, nsConditions(got))
	})
	if err != nil {
		return err
	}
	r.note("finalized_seconds", time.Since(start).Seconds())

	lists := map[string]func() (int, error){
		"configmaps": func() (int, error) {
			l, err := core.ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			return lenOr(l, err)
		},
		"secrets":  func() (int, error) { l, err := core.Secrets(ns).List(ctx, metav1.ListOptions{}); return lenOr(l, err) },
		"services": func() (int, error) { l, err := core.Services(ns).List(ctx, metav1.ListOptions{}); return lenOr(l, err) },
		"serviceaccounts": func() (int, error) {
			l, err := core.ServiceAccounts(ns).List(ctx, metav1.ListOptions{})
			return lenOr(l, err)
		},
		"podtemplates": func() (int, error) {
			l, err := core.PodTemplates(ns).List(ctx, metav1.ListOptions{})
			return lenOr(l, err)
		},
		"leases": func() (int, error) {
			l, err := e.kube.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{})
			return lenOr(l, err)
		},
	}
	for what, list := range lists {
		if n, err := list(); err != nil || n != 0 {
			return fmt.Errorf("after the namespace is gone, listing its %s returns %d items (err %v), want 0", what, n, err)
		}
	}
	// And in storage itself, bypassing the apiserver's caches.
	for _, p := range prefixes {
		key := "/registry/" + p + "/" + ns + "/"
		if n, err := e.countKeys(ctx, key); err != nil || n != 0 {
			return fmt.Errorf("storage still has %d keys under %s (err %v)", n, key, err)
		}
	}
	if n, err := e.countKeys(ctx, "/registry/namespaces/"+ns); err != nil || n != 0 {
		return fmt.Errorf("storage still has the namespace key (count %d, err %v)", n, err)
	}
	if ipHeld {
		err := poll(ctx, 500*time.Millisecond, 30*time.Second, "the Service's IPAddress to be released", func(ctx context.Context) (bool, error) {
			_, err := e.kube.NetworkingV1().IPAddresses().Get(ctx, svc.Spec.ClusterIP, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, fmt.Errorf("IPAddress %s still exists (err %v)", svc.Spec.ClusterIP, err)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// countKeys counts the keys with a prefix straight from the backend.
func (e *env) countKeys(ctx context.Context, prefix string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := e.etcd.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// deleteNamespaceLater deletes a check's namespace without waiting: the
// namespace controller cleans up in the background.
func (e *env) deleteNamespaceLater(ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = e.kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
}

func pauseTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		// Never pulled: there is no kubelet, Pods stay Pending.
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "pause", Image: "registry.k8s.io/pause:3.10"}}},
	}
}

func lenOr(l runtime.Object, err error) (int, error) {
	if err != nil {
		return -1, err
	}
	return meta.LenList(l), nil
}

func itemNames(items []corev1.ConfigMap) []string {
	var out []string
	for _, i := range items {
		out = append(out, i.Name)
	}
	sort.Strings(out)
	return out
}

func dataOf(cm *corev1.ConfigMap) map[string]string {
	if cm == nil {
		return nil
	}
	return cm.Data
}

func secretBlob(s *corev1.Secret) []byte {
	if s == nil {
		return nil
	}
	return s.Data["blob"]
}

func containsLine(text, want string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

// fieldOwner returns the manager whose managedFields entry contains the
// given field path element (e.g. "f:k").
func fieldOwner(mf []metav1.ManagedFieldsEntry, field string) string {
	owner := ""
	for _, m := range mf {
		if m.FieldsV1 != nil && strings.Contains(string(m.FieldsV1.Raw), `"`+field+`"`) {
			if owner != "" {
				return owner + "+" + m.Manager
			}
			owner = m.Manager
		}
	}
	return owner
}

func managedSummary(mf []metav1.ManagedFieldsEntry) string {
	var parts []string
	for _, m := range mf {
		raw := ""
		if m.FieldsV1 != nil {
			raw = string(m.FieldsV1.Raw)
		}
		parts = append(parts, fmt.Sprintf("%s/%s:%s", m.Manager, m.Operation, raw))
	}
	return strings.Join(parts, "; ")
}

func nsConditions(ns *corev1.Namespace) string {
	var parts []string
	for _, c := range ns.Status.Conditions {
		if c.Status == corev1.ConditionTrue {
			parts = append(parts, fmt.Sprintf("%s: %s", c.Type, c.Message))
		}
	}
	return strings.Join(parts, "; ")
}
