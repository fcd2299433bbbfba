// Package proc runs the servers that the conformance programs (cmd/e2e,
// cmd/robustness) start as child processes: Koine, etcd, the Kubernetes
// control plane, PostgreSQL and MariaDB. Both programs kill, freeze and
// restart these as faults, so they share one implementation: a fault must
// mean the same thing in both, and a fix to process handling must reach
// both.
package proc

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

// Proc is a child process in a process group of its own, its stdout and
// stderr going to one log file (appended to across restarts). It can be
// killed, frozen and thawed as a group — signals reach the children a
// server starts (PostgreSQL's backends) — and started again with the same
// command line, which is how the faults restart a server on the same data
// and port. Every run has Pdeathsig SIGKILL: nothing outlives the program
// that started it.
//
// Env, Cred and Marker are read by Start; set them before.
type Proc struct {
	// Env is added to this program's environment (after NO_COLOR=1).
	Env []string
	// Cred runs the process as another user (PostgreSQL refuses root).
	Cred *syscall.Credential
	// Marker begins the start and exit lines written to the log, so that
	// they can be told from the process's own output and filtered for
	// ("=== e2e:"); "===" if empty.
	Marker string

	name    string
	bin     string
	args    []string
	logPath string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current run has exited
	waitErr error
	starts  int
}

// New returns a process that is not started yet; its log is
// logDir/name.log.
func New(name, bin string, args []string, logDir string) *Proc {
	return &Proc{name: name, bin: bin, args: args, logPath: filepath.Join(logDir, name+".log")}
}

// Name is the name the process was created with.
func (p *Proc) Name() string { return p.name }

// LogPath is the file the process's output goes to.
func (p *Proc) LogPath() string { return p.logPath }

// Start starts a run of the process; it fails if one is running.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("%s is already running", p.name)
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	marker := p.Marker
	if marker == "" {
		marker = "==="
	}
	p.starts++
	fmt.Fprintf(logFile, "%s start #%d at %s: %s %s\n", marker, p.starts,
		time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(append(os.Environ(), "NO_COLOR=1"), p.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL, // the kernel kills it if this program dies
		Setpgid:    true,            // signals go to the process and its children
		Credential: p.Cred,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logFile, "%s exited at %s: %v\n", marker, time.Now().Format(time.RFC3339Nano), err)
		logFile.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Exited is closed when the current run has exited (at once if the
// process was never started).
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

// Alive reports whether the current run has not exited yet.
func (p *Proc) Alive() bool {
	select {
	case <-p.Exited():
		return false
	default:
		return true
	}
}

// ExitErr is the last run's exit error (nil while it runs).
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Pid is the process id of the current (or last) run; 0 if never started.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends s to the process group of the current run (the process
// and every child it started). The group is signalled even after the
// process has exited, to reach children that outlive it.
func (p *Proc) Signal(s syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, s)
	if !isClosed(p.done) {
		_ = syscall.Kill(pid, s)
	}
}

// Kill is kill -9 of the process and its children: no chance to flush or
// close connections. It returns once the process has exited.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.Exited()
	// Children may outlive their parent by a moment: kill the group again.
	p.Signal(syscall.SIGKILL)
}

// Freeze stops the process group (SIGSTOP): it holds its connections and
// locks but does nothing, as a stalled server would.
func (p *Proc) Freeze() { p.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen process group (SIGCONT).
func (p *Proc) Thaw() { p.Signal(syscall.SIGCONT) }

// Stop ends the process for good: SIGCONT (it may be frozen), SIGTERM,
// then SIGKILL after the grace period.
func (p *Proc) Stop(grace time.Duration) {
	if !p.Alive() {
		p.Signal(syscall.SIGKILL)
		return
	}
	p.Signal(syscall.SIGCONT)
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Exited():
	case <-time.After(grace):
	}
	p.Kill()
}

// RunLogged runs a command to completion (initdb and friends), optionally
// as another user, its output appended to logDir/name.log; the error
// includes the log's tail.
func RunLogged(name, bin string, args []string, logDir string, cred *syscall.Credential) error {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", bin, strings.Join(args, " "), err,
			strings.Join(TailLines(logPath, 20, nil), "\n"))
	}
	return nil
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

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// for a server to listen on.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// TailLines returns the last n lines of a file that pass keep (nil: all
// lines); nothing if the file cannot be read.
func TailLines(path string, n int, keep func(string) bool) []string {
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
