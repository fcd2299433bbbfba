package main

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"koine.local/conformance/internal/proc"
)

// logMarker begins the start and exit lines that proc writes into every
// process's log; klogProblem keeps them.
const logMarker = "=== e2e:"

// processes is the registry of everything started, so that every exit
// path can stop it all.
type processes struct {
	mu    sync.Mutex
	procs []*proc.Proc
}

func (ps *processes) add(name, bin, logDir string, args []string, env ...string) *proc.Proc {
	p := proc.New(name, bin, args, logDir)
	p.Env = env
	p.Marker = logMarker
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p
}

func (ps *processes) byName(name string) *proc.Proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.procs {
		if p.Name() == name {
			return p
		}
	}
	return nil
}

func (ps *processes) all() []*proc.Proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]*proc.Proc(nil), ps.procs...)
}

// stopAll stops the processes in reverse start order (clients of the
// storage first), each with SIGTERM and, after a grace period, SIGKILL.
func (ps *processes) stopAll() {
	procs := ps.all()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(5 * time.Second)
	}
}

// klogProblem keeps klog's warning and error lines (W0102 ..., E0102 ...)
// and our own start/exit markers: the apiserver's info lines drown them.
func klogProblem(line string) bool {
	if strings.HasPrefix(line, logMarker) {
		return true
	}
	if strings.Contains(line, "because it has no resources") { // startup noise
		return false
	}
	return len(line) > 5 && (line[0] == 'E' || line[0] == 'W' || line[0] == 'F') &&
		line[1] >= '0' && line[1] <= '9'
}

// printLogTails prints the end of the named processes' logs (nil: all).
func printLogTails(ps *processes, names []string) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, p := range ps.all() {
		if names != nil && !want[p.Name()] {
			continue
		}
		var lines []string
		var what string
		switch {
		case strings.HasPrefix(p.Name(), "kube-"):
			lines, what = proc.TailLines(p.LogPath(), 40, klogProblem), "warnings and errors"
		default:
			// Without grpc-go's internal chatter (connection teardown).
			lines, what = proc.TailLines(p.LogPath(), 25, func(l string) bool { return !strings.Contains(l, "[core]") }), "last lines"
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Printf("    --- %s log (%s; %s):\n", p.Name(), what, p.LogPath())
		for _, l := range lines {
			if len(l) > 600 {
				l = l[:600] + "…"
			}
			fmt.Printf("    | %s\n", l)
		}
	}
}
