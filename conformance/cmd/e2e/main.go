// Command e2e runs a real Kubernetes control plane (kube-apiserver and
// kube-controller-manager, no scheduler, no kubelet) on Koine — or on etcd,
// the reference — and drives it with client-go and kubectl, asserting what a
// Kubernetes user relies on: reads see writes, conflicts are detected,
// controllers converge, pagination and watches are exact, compaction
// yields 410 Gone, TTL'd objects expire, and a storage process killed
// mid-load loses nothing that was acknowledged.
//
// One control plane is started, every selected check runs against it in
// order, and everything is torn down. Each check prints
// `PASS name (duration)`, `FAIL name: reason` or `SKIP name: reason`;
// -report writes the same as JSON. The exit status is 1 if a check failed.
//
//	e2e -backend sqlite -koine-bin target/debug/koine -bin-dir target/conformance/bin
//	e2e -backend postgres -dsn postgres://postgres@127.0.0.1:5432/kubernetes?sslmode=disable -instances 3
//	e2e -backend etcd -bin-dir target/conformance/bin -checks crd,watch-compaction
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

type options struct {
	backend        string
	dsn            string
	koineBin       string
	binDir         string
	workDir        string
	instances      int
	checks         string
	keep           bool
	report         string
	crdObjects     int
	startupTimeout time.Duration
	kineBin        string
	benchObjects   int
	benchClients   int
	migratePath    string
	etcd36Dir      string
}

// check is one assertion group. run returns nil on success; r collects
// details for the report and names the logs to show on failure.
type check struct {
	name      string
	timeout   time.Duration
	koineOnly bool // needs Koine processes (skipped on etcd and kine)
	haOnly    bool // needs -instances >= 3
	onlyNamed bool // a measurement, or a check that swaps the storage: runs only when -checks names it
	// prepare, if set, runs right after the control plane is up, before
	// any check, so that slow waits (Event TTL) overlap with other checks.
	prepare func(ctx context.Context, e *env) error
	run     func(ctx context.Context, e *env, r *result) error
}

// The order matters: kill-restart and ha disturb the backend, so they come
// last, and leases-events judges the controller-manager's lease before
// them, on an undisturbed cluster. watch-compaction comes late because it
// first waits for the apiserver's own compactor to have run.
func allChecks() []*check {
	return []*check{
		{name: "readyz", timeout: 3 * time.Minute, run: checkReadyz},
		{name: "configmaps-secrets", timeout: 3 * time.Minute, run: checkConfigMapsSecrets},
		{name: "namespace-deletion", timeout: 4 * time.Minute, run: checkNamespaceDeletion},
		{name: "deployment", timeout: 5 * time.Minute, run: checkDeployment},
		{name: "crd", timeout: 8 * time.Minute, run: checkCRD},
		{name: "leases-events", timeout: 5 * time.Minute, prepare: prepareEvent, run: checkLeasesEvents},
		{name: "watch-compaction", timeout: 4 * time.Minute, run: checkWatchCompaction},
		{name: "kill-restart", timeout: 5 * time.Minute, run: checkKillRestart},
		{name: "ha", timeout: 5 * time.Minute, koineOnly: true, haOnly: true, run: checkHA},
		{name: "bench-configmaps", timeout: 20 * time.Minute, onlyNamed: true, run: checkBenchConfigMaps},
		{name: "migrate", timeout: 10 * time.Minute, onlyNamed: true, run: checkMigrate},
	}
}

// result is one check's outcome, as printed and as written to the report.
type result struct {
	Name     string         `json:"name"`
	Status   string         `json:"status"` // pass, fail or skip
	Seconds  float64        `json:"duration_seconds"`
	Error    string         `json:"error,omitempty"`
	Details  map[string]any `json:"details,omitempty"`
	mu       sync.Mutex
	showLogs []string // process names whose logs are relevant; nil: all
}

// note records a detail for the report (safe from several goroutines).
func (r *result) note(key string, value any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Details == nil {
		r.Details = map[string]any{}
	}
	r.Details[key] = value
}

type report struct {
	Backend        string    `json:"backend"`
	Instances      int       `json:"instances"`
	Started        time.Time `json:"started"`
	StartupSeconds float64   `json:"control_plane_startup_seconds"`
	StartupError   string    `json:"control_plane_error,omitempty"`
	TotalSeconds   float64   `json:"total_seconds"`
	Passed         int       `json:"passed"`
	Failed         int       `json:"failed"`
	Skipped        int       `json:"skipped"`
	Checks         []*result `json:"checks"`
}

func main() { os.Exit(run()) }

func run() int {
	o := &options{}
	flag.StringVar(&o.backend, "backend", "sqlite", "storage: sqlite, postgres, mysql (Koine), etcd (the reference) or kine-sqlite, kine-postgres, kine-mysql")
	flag.StringVar(&o.dsn, "dsn", "", "base DSN for postgres/mysql; its database name is replaced by a fresh one")
	flag.StringVar(&o.koineBin, "koine-bin", os.Getenv("KOINE_BIN"), "the koine binary (default $KOINE_BIN)")
	flag.StringVar(&o.binDir, "bin-dir", "target/conformance/bin", "directory of kube-apiserver, kube-controller-manager, kubectl and etcd")
	flag.StringVar(&o.workDir, "work-dir", "", "working directory for certificates, data and logs (default: a new temp dir)")
	flag.IntVar(&o.instances, "instances", 1, "Koine instances sharing one database (postgres/mysql only; 3 enables the ha check)")
	flag.StringVar(&o.checks, "checks", "", "comma-separated checks to run (default: all)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work dir")
	flag.StringVar(&o.report, "report", "", "write per-check results to this JSON file")
	flag.IntVar(&o.crdObjects, "crd-objects", 3000, "custom objects the crd check creates")
	flag.DurationVar(&o.startupTimeout, "startup-timeout", 3*time.Minute, "how long kube-apiserver may take to become ready")
	flag.StringVar(&o.kineBin, "kine-bin", "", "the kine binary, for the kine-* backends (default: kine in -bin-dir)")
	flag.IntVar(&o.benchObjects, "bench-objects", 10000, "ConfigMaps the bench-configmaps check creates")
	flag.IntVar(&o.benchClients, "bench-clients", 32, "concurrent clients of the bench-configmaps check")
	flag.StringVar(&o.migratePath, "migrate-path", "koine-sqlite", "the migrate check's moves, in order: koine-sqlite, koine-postgres (needs -dsn), etcd36")
	flag.StringVar(&o.etcd36Dir, "etcd36-dir", "target/conformance/etcd36", "etcd and etcdutl 3.6, for the migrate check's etcd36 hop")
	flag.Parse()

	checks, err := selectChecks(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	if err := resolveBinaries(o); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	if o.workDir == "" {
		if o.workDir, err = os.MkdirTemp("", "koine-e2e-"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 2
		}
	} else if err := os.MkdirAll(o.workDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	if o.workDir, err = filepath.Abs(o.workDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	if err := os.MkdirAll(filepath.Join(o.workDir, "logs"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 2
	}
	// client-go's own logging (reflector retries, etc.) goes to a file, not
	// into the PASS/FAIL output.
	if f, err := os.Create(filepath.Join(o.workDir, "logs", "client.log")); err == nil {
		fs := flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(fs)
		_ = fs.Set("logtostderr", "false")
		_ = fs.Set("stderrthreshold", "FATAL")
		klog.SetOutput(f)
	}

	rep := &report{Backend: o.backend, Instances: o.instances, Started: time.Now()}
	procs := &processes{}
	var cleanupOnce sync.Once
	cleanup := func() {
		cleanupOnce.Do(func() {
			procs.stopAll()
			if o.keep {
				progress("work dir kept: %s", o.workDir)
			} else {
				_ = os.RemoveAll(o.workDir)
			}
		})
	}
	defer cleanup()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// On SIGINT/SIGTERM the running check is cancelled and the normal exit
	// path stops every process; if that hangs, a second signal or 30s
	// force it. (If this program is killed outright, Pdeathsig kills them.)
	var interrupted atomic.Bool
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		progress("%v: stopping", s)
		interrupted.Store(true)
		cancel()
		select {
		case <-sigs:
		case <-time.After(30 * time.Second):
		}
		cleanup()
		os.Exit(130)
	}()
	exitCode := func(failed bool) int {
		switch {
		case interrupted.Load():
			return 130
		case failed:
			return 1
		}
		return 0
	}

	progress("backend %s, %d instance(s), work dir %s", o.backend, o.instances, o.workDir)
	started := time.Now()
	c, err := startCluster(ctx, o, procs)
	rep.StartupSeconds = time.Since(started).Seconds()
	if err != nil {
		rep.StartupError = err.Error()
		fmt.Printf("FAIL control-plane: %v\n", err)
		printLogTails(procs, nil)
		for _, ch := range checks {
			rep.Checks = append(rep.Checks, &result{Name: ch.name, Status: "fail", Error: "control plane did not start"})
			rep.Failed++
		}
		finish(o, rep, started)
		return exitCode(true)
	}
	progress("control plane ready in %s", time.Since(started).Round(100*time.Millisecond))
	e := newEnv(c, o)
	defer e.close()

	for _, ch := range checks {
		if ch.prepare == nil || skipReason(o, ch) != "" {
			continue
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Minute)
		if err := ch.prepare(pctx, e); err != nil {
			e.prepareErrs[ch.name] = err
		}
		pcancel()
	}

	for _, ch := range checks {
		r := &result{Name: ch.name}
		rep.Checks = append(rep.Checks, r)
		if reason := skipReason(o, ch); reason != "" {
			r.Status = "skip"
			r.Error = reason
			rep.Skipped++
			fmt.Printf("SKIP %s: %s\n", ch.name, reason)
			continue
		}
		progress("running %s", ch.name)
		start := time.Now()
		err := runCheck(ctx, e, ch, r)
		r.Seconds = time.Since(start).Seconds()
		if err != nil {
			r.Status = "fail"
			r.Error = err.Error()
			rep.Failed++
			if interrupted.Load() {
				r.Error = "interrupted"
				fmt.Printf("FAIL %s: interrupted\n", ch.name)
				break
			}
			fmt.Printf("FAIL %s: %v\n", ch.name, err)
			printLogTails(procs, r.showLogs)
		} else {
			r.Status = "pass"
			rep.Passed++
			fmt.Printf("PASS %s (%s)\n", ch.name, time.Since(start).Round(100*time.Millisecond))
		}
	}
	finish(o, rep, started)
	return exitCode(rep.Failed > 0)
}

// runCheck runs one check with its timeout; a panic is a failure.
func runCheck(ctx context.Context, e *env, ch *check, r *result) (err error) {
	ctx, cancel := context.WithTimeout(ctx, ch.timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	if perr := e.prepareErrs[ch.name]; perr != nil {
		return fmt.Errorf("preparation failed: %w", perr)
	}
	err = ch.run(ctx, e, r)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (check timed out after %s)", err, ch.timeout)
	}
	return err
}

func finish(o *options, rep *report, started time.Time) {
	rep.TotalSeconds = time.Since(started).Seconds()
	fmt.Printf("SUMMARY backend=%s instances=%d: %d passed, %d failed, %d skipped (%s)\n",
		rep.Backend, o.instances, rep.Passed, rep.Failed, rep.Skipped, time.Since(started).Round(time.Second))
	if o.report == "" {
		return
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err == nil {
		err = os.WriteFile(o.report, append(data, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: writing %s: %v\n", o.report, err)
	}
}

func selectChecks(o *options) ([]*check, error) {
	switch o.backend {
	case "sqlite", "etcd", "kine-sqlite", "kine-postgres", "kine-mysql":
		if strings.HasPrefix(o.backend, "kine-") && o.backend != "kine-sqlite" && o.dsn == "" {
			return nil, fmt.Errorf("-backend %s needs -dsn", o.backend)
		}
		if o.instances != 1 {
			return nil, fmt.Errorf("-instances %d: several instances need a shared database (postgres or mysql)", o.instances)
		}
	case "postgres", "mysql":
		if o.dsn == "" {
			return nil, fmt.Errorf("-backend %s needs -dsn", o.backend)
		}
		if o.instances < 1 {
			return nil, fmt.Errorf("-instances must be at least 1")
		}
	default:
		return nil, fmt.Errorf("unknown -backend %q (sqlite, postgres, mysql, etcd, kine-sqlite, kine-postgres or kine-mysql)", o.backend)
	}
	all := allChecks()
	if o.checks == "" || o.checks == "all" {
		var out []*check
		for _, c := range all {
			if !c.onlyNamed {
				out = append(out, c)
			}
		}
		return out, nil
	}
	byName := map[string]*check{}
	var names []string
	for _, c := range all {
		byName[c.name] = c
		names = append(names, c.name)
	}
	want := map[string]bool{}
	for _, n := range strings.Split(o.checks, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if byName[n] == nil {
			return nil, fmt.Errorf("unknown check %q (known: %s)", n, strings.Join(names, ", "))
		}
		want[n] = true
	}
	var out []*check
	for _, c := range all { // keep the canonical order
		if want[c.name] {
			out = append(out, c)
		}
	}
	return out, nil
}

func skipReason(o *options, ch *check) string {
	if ch.koineOnly && !isKoine(o.backend) {
		return "needs Koine instances sharing a database"
	}
	if ch.haOnly && o.instances < 3 {
		return "needs -instances 3 (postgres or mysql)"
	}
	return ""
}

func resolveBinaries(o *options) error {
	var err error
	if o.binDir, err = filepath.Abs(o.binDir); err != nil {
		return err
	}
	if o.etcd36Dir, err = filepath.Abs(o.etcd36Dir); err != nil {
		return err
	}
	// The migrate check runs `koine import` whatever the backend.
	if o.koineBin != "" {
		if o.koineBin, err = filepath.Abs(o.koineBin); err != nil {
			return err
		}
	}
	need := []string{"kube-apiserver", "kube-controller-manager", "kubectl"}
	if o.backend == "etcd" {
		need = append(need, "etcd")
	} else if strings.HasPrefix(o.backend, "kine-") {
		if o.kineBin == "" {
			o.kineBin = filepath.Join(o.binDir, "kine")
		}
		if _, err := os.Stat(o.kineBin); err != nil {
			return fmt.Errorf("kine binary: %v", err)
		}
	} else {
		if o.koineBin == "" {
			return fmt.Errorf("-koine-bin (or $KOINE_BIN) is required for backend %s", o.backend)
		}
		if o.koineBin, err = filepath.Abs(o.koineBin); err != nil {
			return err
		}
		if _, err := os.Stat(o.koineBin); err != nil {
			return fmt.Errorf("koine binary: %v", err)
		}
	}
	for _, n := range need {
		if _, err := os.Stat(filepath.Join(o.binDir, n)); err != nil {
			return fmt.Errorf("%s not found in -bin-dir: %v", n, err)
		}
	}
	return nil
}

// progress writes a timestamped line to stderr; stdout carries results only.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s e2e: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
