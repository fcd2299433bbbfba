package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process whose stdout and stderr go to one log file
// (appended to across restarts). It can be killed and started again with
// the same command line, which is how the failure checks restart Koine or
// etcd on the same data and port.
type proc struct {
	name    string
	bin     string
	args    []string
	env     []string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current run exits
	waitErr error
	starts  int
}

// processes is the registry of everything started, so that every exit
// path can stop it all.
type processes struct {
	mu    sync.Mutex
	procs []*proc
}

func (ps *processes) add(name, bin, logDir string, args []string, env ...string) *proc {
	p := &proc{name: name, bin: bin, args: args, env: env, logPath: filepath.Join(logDir, name+".log")}
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p
}

func (ps *processes) byName(name string) *proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (ps *processes) all() []*proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return append([]*proc(nil), ps.procs...)
}

// stopAll stops the processes in reverse start order (clients of the
// storage first), each with SIGTERM and, after a grace period, SIGKILL.
func (ps *processes) stopAll() {
	procs := ps.all()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(5 * time.Second)
	}
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s is already running", p.name)
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(logFile, "=== e2e: start #%d at %s: %s %s\n", p.starts, time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(append(os.Environ(), "NO_COLOR=1"), p.env...)
	// The kernel kills the child if this program dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logFile, "=== e2e: exited at %s: %v\n", time.Now().Format(time.RFC3339Nano), err)
		logFile.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// exited is closed when the current run ends.
func (p *proc) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

func (p *proc) alive() bool {
	select {
	case <-p.exited():
		return false
	default:
		return true
	}
}

func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// kill is kill -9: no chance to flush or close connections.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.exited()
}

func (p *proc) stop(grace time.Duration) {
	if !p.alive() {
		return
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited():
	case <-time.After(grace):
		p.kill()
	}
}

func (p *proc) signal(s syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil && !isClosed(p.done) {
		_ = p.cmd.Process.Signal(s)
	}
}

func isClosed(c chan struct{}) bool {
	if c == nil {
		return true
	}
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailLines returns the last n lines of a file that pass keep (nil: all).
func tailLines(path string, n int, keep func(string) bool) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if keep != nil && !keep(line) {
			continue
		}
		lines = append(lines, line)
		if len(lines) > 4*n {
			lines = append([]string(nil), lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// klogProblem keeps klog's warning and error lines (W0102 ..., E0102 ...)
// and our own start/exit markers: the apiserver's info lines drown them.
func klogProblem(line string) bool {
	if strings.HasPrefix(line, "=== e2e:") {
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
		if names != nil && !want[p.name] {
			continue
		}
		var lines []string
		var what string
		switch {
		case strings.HasPrefix(p.name, "kube-"):
			lines, what = tailLines(p.logPath, 40, klogProblem), "warnings and errors"
		default:
			// Without grpc-go's internal chatter (connection teardown).
			lines, what = tailLines(p.logPath, 25, func(l string) bool { return !strings.Contains(l, "[core]") }), "last lines"
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Printf("    --- %s log (%s; %s):\n", p.name, what, p.logPath)
		for _, l := range lines {
			if len(l) > 600 {
				l = l[:600] + "…"
			}
			fmt.Printf("    | %s\n", l)
		}
	}
}
