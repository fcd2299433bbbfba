package proc

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A kill reaches the children of the process too (its group), and the
// process can be started again, its log appended to.
func TestKillGroupAndRestart(t *testing.T) {
	dir := t.TempDir()
	p := New("sh", "/bin/sh", []string{"-c", "sleep 1000 & echo child $!; wait"}, dir)
	p.Marker = "=== test:"
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0; {
		for _, l := range TailLines(p.LogPath(), 10, func(l string) bool { return strings.HasPrefix(l, "child ") }) {
			child, _ = strconv.Atoi(strings.TrimPrefix(l, "child "))
		}
		if time.Now().After(deadline) {
			t.Fatal("no child pid in the log")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !p.Alive() || p.Pid() == 0 {
		t.Fatal("not running after Start")
	}
	p.Kill()
	if p.Alive() || p.ExitErr() == nil {
		t.Fatalf("alive %v, exit error %v after Kill", p.Alive(), p.ExitErr())
	}
	for deadline := time.Now().Add(5 * time.Second); syscall.Kill(child, 0) == nil; {
		// A zombie until init reaps it: look at its state.
		b, err := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d survived Kill", child)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	p.Stop(time.Second)
	markers := TailLines(p.LogPath(), 10, func(l string) bool { return strings.HasPrefix(l, "=== test:") })
	if len(markers) != 4 || !strings.Contains(markers[2], "start #2") {
		t.Fatalf("markers: %q", markers)
	}
}

func TestTailLines(t *testing.T) {
	path := t.TempDir() + "/log"
	var b strings.Builder
	for i := range 100 {
		b.WriteString(strconv.Itoa(i) + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(TailLines(path, 3, nil), ","); got != "97,98,99" {
		t.Fatalf("all lines: %s", got)
	}
	even := func(l string) bool { n, _ := strconv.Atoi(l); return n%2 == 0 }
	if got := strings.Join(TailLines(path, 2, even), ","); got != "96,98" {
		t.Fatalf("even lines: %s", got)
	}
	if TailLines(path+".missing", 3, nil) != nil {
		t.Fatal("lines from a missing file")
	}
}
