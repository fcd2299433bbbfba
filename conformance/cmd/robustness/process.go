package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process in a process group of its own, logging to one
// file (appended to across restarts). It can be killed, frozen and thawed
// as a group, and started again with the same command line — how the
// faults restart Koine or a database on the same data and port. Every run
// has Pdeathsig SIGKILL: nothing outlives this program.
type proc struct {
	name    string
	bin     string
	args    []string
	logPath string
	cred    *syscall.Credential // run as this user (PostgreSQL refuses root)

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current run has exited
	waitErr error
	starts  int
}

func newProc(name, bin string, args []string, logDir string) *proc {
	return &proc{name: name, bin: bin, args: args, logPath: filepath.Join(logDir, name+".log")}
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
	fmt.Fprintf(logFile, "=== robustness: start #%d at %s: %s %s\n", p.starts,
		time.Now().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true, // signals go to the process and its children
		Credential: p.cred,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logFile, "=== robustness: exited at %s: %v\n", time.Now().Format(time.RFC3339Nano), err)
		logFile.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

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

// signalGroup sends s to the process group of the current run (the
// process and every child it started).
func (p *proc) signalGroup(s syscall.Signal) {
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

// kill is kill -9 of the process and its children; it returns once the
// process has exited.
func (p *proc) kill() {
	p.signalGroup(syscall.SIGKILL)
	<-p.exited()
	// Children may outlive their parent by a moment: kill the group again.
	p.signalGroup(syscall.SIGKILL)
}

func (p *proc) freeze() { p.signalGroup(syscall.SIGSTOP) }
func (p *proc) thaw()   { p.signalGroup(syscall.SIGCONT) }

// stop ends the process for good: SIGCONT (it may be frozen), SIGTERM,
// then SIGKILL after the grace period.
func (p *proc) stop(grace time.Duration) {
	if !p.alive() {
		p.signalGroup(syscall.SIGKILL)
		return
	}
	p.signalGroup(syscall.SIGCONT)
	p.signalGroup(syscall.SIGTERM)
	select {
	case <-p.exited():
	case <-time.After(grace):
	}
	p.kill()
}

// run runs a command to completion (initdb and friends), its output to
// the log; the error includes the log's tail.
func runLogged(name, bin string, args []string, logDir string, cred *syscall.Credential) error {
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
			strings.Join(tailLines(logPath, 20), "\n"))
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tailLines returns the last n lines of a file.
func tailLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 4*n {
			lines = append([]string(nil), lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// proxy is a TCP proxy from a port of its own to the database, one per
// Koine instance, that can cut every connection passing through it at
// once (the "connections cut" fault: what a network blip or a database
// failover does to a client's pool).
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		go p.handle(c)
	}
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false // closed
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *proxy) handle(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.target, 3*time.Second)
	if err != nil {
		client.Close()
		return
	}
	if !p.track(client) || !p.track(server) {
		client.Close()
		server.Close()
		return
	}
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			client.Close()
			server.Close()
			p.untrack(client)
			p.untrack(server)
		})
	}
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		closeBoth()
	}
	go pipe(server, client)
	go pipe(client, server)
}

// cut closes every connection currently open through the proxy (with a
// reset, as a dead peer would); new connections are accepted as before.
// It returns how many client connections were cut.
func (p *proxy) cut() int {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	return len(conns) / 2
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
