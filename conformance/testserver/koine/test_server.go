// Package testserver replaces k8s.io/apiserver/pkg/storage/etcd3/testserver
// when the apiserver's storage tests are built for Koine (scripts/kubernetes.sh
// passes this file to `go test -overlay` in place of the original
// test_server.go; no test file is touched). It keeps the original API —
// NewTestConfig and RunEtcd — but RunEtcd starts the Koine binary on a fresh
// database for every call instead of an embedded etcd.
//
// Environment:
//
//	KOINE_BIN       the koine binary (required)
//	KOINE_TEST_DSN  empty: SQLite in the test's temp dir; otherwise a
//	                postgres:// or mysql:// DSN whose database name is
//	                replaced by a fresh one per server (dropped afterwards)
package testserver

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// NewTestConfig returns the configuration RunEtcd reads: a free client port
// on 127.0.0.1 and a temp dir that is removed when the test ends. Tests
// adjust WatchProgressNotifyInterval and ClientTLSInfo on it as they would
// for embedded etcd.
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	cfg.ListenClientUrls = []url.URL{u}
	cfg.AdvertiseClientUrls = []url.URL{u}
	cfg.Dir = t.TempDir()
	return cfg
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("could not bind to a port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var servers atomic.Int64

// RunEtcd starts Koine with the given config (or NewTestConfig(t) if nil)
// and returns a client connected to it, wrapped in the same call recorders
// as the original. The server is stopped, and its database dropped, when
// the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	if cfg == nil {
		cfg = NewTestConfig(t)
	}
	bin := os.Getenv("KOINE_BIN")
	if bin == "" {
		t.Fatal("KOINE_BIN is not set: the Koine test server needs the koine binary")
	}
	listen := cfg.ListenClientUrls[0]
	dsn, drop, err := freshDatabase(os.Getenv("KOINE_TEST_DSN"), cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--listen-address", listen.Host,
		"--endpoint", dsn,
		"--compact-interval", "0",
		"--log-level", "warn",
	}
	if cfg.WatchProgressNotifyInterval > 0 {
		args = append(args, "--watch-progress-notify-interval", cfg.WatchProgressNotifyInterval.String())
	}
	tlsInfo := cfg.ClientTLSInfo
	if !tlsInfo.Empty() {
		args = append(args, "--server-cert-file", tlsInfo.CertFile, "--server-key-file", tlsInfo.KeyFile)
		if tlsInfo.TrustedCAFile != "" {
			args = append(args, "--trusted-ca-file", tlsInfo.TrustedCAFile)
		}
	}
	logPath := filepath.Join(cfg.Dir, fmt.Sprintf("koine-%d.log", servers.Add(1)))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	// Dies with the test binary even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			if text, err := os.ReadFile(logPath); err == nil && len(text) > 0 {
				t.Logf("koine log (%s):\n%s", logPath, tail(text, 4000))
			}
		}
		if err := drop(); err != nil {
			t.Logf("dropping the test database: %v", err)
		}
	})
	scheme := "http"
	if !tlsInfo.Empty() {
		scheme = "https"
	}
	tlsConfig, err := tlsInfo.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := waitReady(scheme+"://"+listen.Host, tlsConfig, exited); err != nil {
		text, _ := os.ReadFile(logPath)
		t.Fatalf("koine did not start: %v\n%s", err, tail(text, 4000))
	}
	client, err := kubernetes.New(clientv3.Config{
		TLS:         tlsConfig,
		Endpoints:   []string{scheme + "://" + listen.Host},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	kubernetesRecorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, kubernetesRecorder)
	client.Kubernetes = kubernetesRecorder
	return client
}

// waitReady waits until Koine's /readyz answers 200: its port accepts
// connections before the database is connected and migrated, so an open
// port alone does not mean it serves.
func waitReady(base string, tlsConfig *tls.Config, exited <-chan error) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConfig},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(60 * time.Second)
	last := fmt.Errorf("no answer")
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited during startup: %v", err)
		default:
		}
		resp, err := client.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready at %s after 60s: %v", base, last)
}

// freshDatabase returns the DSN for a new, empty database named after dir,
// and a function that drops it. An empty base means SQLite in dir.
func freshDatabase(base, dir string) (string, func() error, error) {
	noop := func() error { return nil }
	if base == "" {
		return "sqlite://" + filepath.Join(dir, "state.db"), noop, nil
	}
	sum := sha256.Sum256([]byte(dir))
	name := "koine_t" + hex.EncodeToString(sum[:8])
	u, err := url.Parse(base)
	if err != nil {
		return "", nil, fmt.Errorf("KOINE_TEST_DSN: %v", err)
	}
	switch u.Scheme {
	case "postgres", "postgresql":
		admin := *u
		admin.Path = "/postgres"
		u.Path = "/" + name
		return u.String(), func() error {
			return execAdmin("pgx", admin.String(), "DROP DATABASE IF EXISTS "+name)
		}, nil
	case "mysql":
		u.Path = "/" + name
		// go-sql-driver's form: user:pass@tcp(host:port)/
		admin := fmt.Sprintf("%s@tcp(%s)/", u.User.String(), u.Host)
		return u.String(), func() error {
			return execAdmin("mysql", admin, "DROP DATABASE IF EXISTS "+name)
		}, nil
	}
	return "", nil, fmt.Errorf("KOINE_TEST_DSN: unsupported scheme %q", u.Scheme)
}

func execAdmin(driver, dsn, stmt string) error {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = db.ExecContext(ctx, stmt)
	return err
}

func tail(b []byte, n int) string {
	s := string(b)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}
