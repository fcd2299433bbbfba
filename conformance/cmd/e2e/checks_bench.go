package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// bench-configmaps (run only when named): the Kubernetes-level figure of
// scripts/bench.sh. -bench-objects ConfigMaps (1 KiB of data each) are
// created by -bench-clients concurrent client-go workers, then listed
// three ways: paginated like kubectl (limit 500) with a consistent read,
// and in one request from the apiserver's watch cache (resourceVersion 0).
// Every create must succeed and every list must return every object; the
// timings go to the report.
func checkBenchConfigMaps(ctx context.Context, e *env, r *result) error {
	r.showLogs = append(e.backendNames(), "kube-apiserver")
	ns, err := e.newNamespace(ctx, "bench-cm")
	if err != nil {
		return err
	}
	cms := e.kube.CoreV1().ConfigMaps(ns)
	objects, clients := e.o.benchObjects, e.o.benchClients
	data := map[string]string{"payload": strings.Repeat("x", 1024)}

	var next atomic.Int64
	var mu sync.Mutex
	var latencies []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	began := time.Now()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for {
				i := next.Add(1) - 1
				if i >= int64(objects) {
					break
				}
				t := time.Now()
				_, err := cms.Create(ctx, &corev1.ConfigMap{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%06d", i)},
					Data:       data,
				}, metav1.CreateOptions{})
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("create cm-%06d: %w", i, err)
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	createSeconds := time.Since(began).Seconds()
	if firstErr != nil {
		return firstErr
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(p float64) float64 {
		return float64(latencies[int(float64(len(latencies)-1)*p)].Microseconds()) / 1000
	}
	r.note("objects", objects)
	r.note("clients", clients)
	r.note("create_seconds", createSeconds)
	r.note("creates_per_second", float64(objects)/createSeconds)
	r.note("create_p50_ms", pct(0.5))
	r.note("create_p99_ms", pct(0.99))

	// Paginated, consistent: what kubectl get does.
	list := func(opts metav1.ListOptions) (float64, error) {
		t := time.Now()
		seen := 0
		for {
			l, err := cms.List(ctx, opts)
			if err != nil {
				return 0, err
			}
			// The controller-manager adds kube-root-ca.crt to every
			// namespace: count only this check's objects.
			for _, cm := range l.Items {
				if strings.HasPrefix(cm.Name, "cm-") {
					seen++
				}
			}
			if l.Continue == "" {
				break
			}
			opts.Continue = l.Continue
		}
		if seen != objects {
			return 0, fmt.Errorf("list returned %d objects, want %d", seen, objects)
		}
		return time.Since(t).Seconds(), nil
	}
	var paged []float64
	for i := 0; i < 3; i++ {
		s, err := list(metav1.ListOptions{Limit: 500})
		if err != nil {
			return fmt.Errorf("paginated list: %w", err)
		}
		paged = append(paged, s)
	}
	sort.Float64s(paged)
	r.note("list_paginated_seconds", paged[1])
	cached, err := list(metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return fmt.Errorf("list from the watch cache: %w", err)
	}
	r.note("list_cache_seconds", cached)
	progress("%d configmaps: created in %.1fs (%.0f/s), paginated list %.2fs, cached list %.2fs",
		objects, createSeconds, float64(objects)/createSeconds, paged[1], cached)
	return nil
}
