package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"koine.local/conformance/internal/proc"
)

// newProc is proc.New with this program's marker on the start and exit
// lines in the log, which tells them from the server's own output.
func newProc(name, bin string, args []string, logDir string) *proc.Proc {
	p := proc.New(name, bin, args, logDir)
	p.Marker = "=== robustness:"
	return p
}

// instance is one Koine process, with the proxy its database connections
// go through (none on SQLite).
type instance struct {
	id    int
	port  int
	proc  *proc.Proc
	proxy *proxy

	mu sync.Mutex
	// down is closed when the instance is killed; replaced when it is
	// started again. Watchers on it move elsewhere when it closes.
	down chan struct{}
	up   bool
}

func (in *instance) endpoint() string { return fmt.Sprintf("127.0.0.1:%d", in.port) }

func (in *instance) downCh() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.down
}

func (in *instance) isUp() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.up
}

func (in *instance) setUp(up bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.up == up {
		return
	}
	in.up = up
	if up {
		in.down = make(chan struct{})
	} else {
		close(in.down)
	}
}

// cluster is the database server (PostgreSQL, MariaDB; none for SQLite)
// and the Koine instances on it.
type cluster struct {
	o         *options
	db        *dbServer
	instances []*instance
	logDir    string
}

func startCluster(ctx context.Context, o *options, runDir string) (*cluster, error) {
	c := &cluster{o: o, logDir: filepath.Join(runDir, "logs")}
	if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return nil, err
	}
	var endpoint string
	switch o.backend {
	case "sqlite":
		dir := filepath.Join(runDir, "sqlite")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		endpoint = "sqlite://" + filepath.Join(dir, "state.db")
	default:
		db, err := startDB(ctx, o.backend, runDir, c.logDir)
		if err != nil {
			return nil, err
		}
		c.db = db
	}
	for i := 0; i < o.instances; i++ {
		port, err := proc.FreePort()
		if err != nil {
			return c, err
		}
		in := &instance{id: i, port: port, down: make(chan struct{})}
		dsn := endpoint
		if c.db != nil {
			px, err := startProxy(c.db.addr())
			if err != nil {
				return c, err
			}
			in.proxy = px
			dsn = c.db.dsn(px.port(), "koine")
		}
		in.proc = newProc(fmt.Sprintf("koine-%d", i), o.koineBin, []string{
			"--listen-address", in.endpoint(),
			"--endpoint", dsn,
			"--name", fmt.Sprintf("koine-%d", i),
			"--log-level", "warn",
			"--compact-interval", "0",
			"--request-timeout", "3s",
		}, c.logDir)
		c.instances = append(c.instances, in)
		// One at a time: the first creates the database and its schema.
		if err := c.startInstance(ctx, in); err != nil {
			return c, err
		}
	}
	return c, nil
}

// startInstance starts (or restarts, on the same port and database) a
// Koine instance and waits until /readyz answers 200.
func (c *cluster) startInstance(ctx context.Context, in *instance) error {
	if err := in.proc.Start(); err != nil {
		return err
	}
	if err := waitReadyz(ctx, in, time.Minute); err != nil {
		return err
	}
	in.setUp(true)
	return nil
}

func (c *cluster) killInstance(in *instance) {
	in.setUp(false)
	in.proc.Kill()
}

func waitReadyz(ctx context.Context, in *instance, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	url := "http://" + in.endpoint() + "/readyz"
	var last string
	for {
		if !in.proc.Alive() {
			return fmt.Errorf("%s exited: %v (log %s)", in.proc.Name(), in.proc.ExitErr(), in.proc.LogPath())
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (last: %s; log %s)", in.proc.Name(), timeout, last, in.proc.LogPath())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitAllReady waits until the database and every instance are up.
func (c *cluster) waitAllReady(ctx context.Context, timeout time.Duration) error {
	if c.db != nil {
		if err := c.db.waitReady(ctx, timeout); err != nil {
			return err
		}
	}
	for _, in := range c.instances {
		if err := waitReadyz(ctx, in, timeout); err != nil {
			return err
		}
	}
	return nil
}

func (c *cluster) stop() {
	for _, in := range c.instances {
		if in.proc != nil {
			in.proc.Stop(5 * time.Second)
		}
		if in.proxy != nil {
			in.proxy.close()
		}
	}
	if c.db != nil {
		c.db.proc.Stop(10 * time.Second)
	}
}

// newClient is an etcd client of one instance. clientv3 reconnects by
// itself when the instance comes back.
func newClient(in *instance) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            []string{in.endpoint()},
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
	})
}
