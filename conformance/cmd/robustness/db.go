package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"koine.local/conformance/internal/proc"
)

// dbServer is a throwaway PostgreSQL or MariaDB server, started the way
// scripts/lib/dbs.sh starts them (the same binaries, flags and settings:
// fast, yet an acknowledged commit survives the server process being
// killed), in a directory of its own on a free port of 127.0.0.1. Unlike
// the script's, it can be killed (-9), restarted on the same data and
// port, and frozen.
type dbServer struct {
	kind string // postgres | mysql
	dir  string
	port int
	proc *proc.Proc
	// ready reports whether the server accepts connections (PostgreSQL:
	// pg_isready; MariaDB: it sends its handshake).
	ready func(ctx context.Context) bool
}

func (d *dbServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", d.port) }

// dsn is the DSN Koine uses, through a proxy on port.
func (d *dbServer) dsn(port int, database string) string {
	if d.kind == "postgres" {
		return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, database)
	}
	return fmt.Sprintf("mysql://root@127.0.0.1:%d/%s", port, database)
}

// waitReady waits until the server accepts connections.
func (d *dbServer) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if !d.proc.Alive() {
			return fmt.Errorf("%s exited: %v (log %s)", d.proc.Name(), d.proc.ExitErr(), d.proc.LogPath())
		}
		if d.ready(ctx) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %s (log %s)", d.proc.Name(), timeout, d.proc.LogPath())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// restart starts the server again on the same data directory and port
// (after a kill: crash recovery happens on the way).
func (d *dbServer) restart(ctx context.Context) error {
	if d.kind == "postgres" {
		// Every process of the server is dead (killed as a group): the
		// lock file is stale, and its pid may by now be another process's,
		// which would make PostgreSQL refuse to start.
		_ = os.Remove(filepath.Join(d.dir, "data", "postmaster.pid"))
	}
	if err := d.proc.Start(); err != nil {
		return err
	}
	return d.waitReady(ctx, 2*time.Minute)
}

// startDB starts a server with its data under parent, its logs in logDir.
func startDB(ctx context.Context, kind, parent, logDir string) (*dbServer, error) {
	switch kind {
	case "postgres":
		return startPostgres(ctx, parent, logDir)
	case "mysql":
		return startMariaDB(ctx, parent, logDir)
	}
	return nil, fmt.Errorf("no database server for backend %q", kind)
}

func startPostgres(ctx context.Context, parent, logDir string) (*dbServer, error) {
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(bins, func(i, j int) bool { return versionLess(bins[i], bins[j]) })
	if len(bins) == 0 {
		return nil, fmt.Errorf("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: install postgresql")
	}
	bin := bins[len(bins)-1]
	dir := filepath.Join(parent, "postgres")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root: as user postgres, like dbs.sh.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if err := proc.RunLogged("initdb", filepath.Join(bin, "initdb"), []string{
		"-D", filepath.Join(dir, "data"), "-U", "postgres", "--auth=trust", "--no-sync",
		"-E", "UTF8", "--locale=C",
	}, logDir, cred); err != nil {
		return nil, err
	}
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	p := newProc("postgres", filepath.Join(bin, "postgres"), []string{
		"-D", filepath.Join(dir, "data"), "-p", strconv.Itoa(port), "-h", "127.0.0.1", "-k", dir,
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=500",
	}, logDir)
	p.Cred = cred
	d := &dbServer{kind: "postgres", dir: dir, port: port, proc: p}
	isready := filepath.Join(bin, "pg_isready")
	d.ready = func(ctx context.Context) bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, isready, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-q")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return cmd.Run() == nil
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	if err := d.waitReady(ctx, time.Minute); err != nil {
		p.Kill()
		return nil, err
	}
	return d, nil
}

func startMariaDB(ctx context.Context, parent, logDir string) (*dbServer, error) {
	mariadbd := firstExisting("/usr/sbin/mariadbd", "/usr/sbin/mysqld")
	install := firstExisting("/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db")
	if mariadbd == "" || install == "" {
		return nil, fmt.Errorf("no MariaDB server binaries: install mariadb-server")
	}
	dir := filepath.Join(parent, "mariadb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var userArg []string
	if os.Geteuid() == 0 {
		userArg = []string{"--user=root"}
	}
	initSQL := filepath.Join(dir, "init.sql")
	if err := os.WriteFile(initSQL, []byte(
		"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';\n"+
			"GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"), 0o644); err != nil {
		return nil, err
	}
	args := append([]string{"--no-defaults", "--datadir=" + filepath.Join(dir, "data")}, userArg...)
	args = append(args, "--skip-test-db", "--auth-root-authentication-method=normal", "--innodb-log-file-size=16M")
	if err := proc.RunLogged("mariadb-install-db", install, args, logDir, nil); err != nil {
		return nil, err
	}
	port, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	args = append([]string{"--no-defaults", "--datadir=" + filepath.Join(dir, "data")}, userArg...)
	args = append(args,
		"--port="+strconv.Itoa(port), "--bind-address=127.0.0.1",
		"--socket="+filepath.Join(dir, "mysqld.sock"), "--skip-name-resolve",
		"--init-file="+initSQL, "--skip-log-bin", "--performance-schema=0",
		"--innodb-flush-log-at-trx-commit=2", "--innodb-doublewrite=0",
		"--innodb-log-file-size=16M", "--max-connections=1000", "--max-connect-errors=1000000",
		"--max-allowed-packet=64M", "--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_general_ci")
	p := newProc("mariadb", mariadbd, args, logDir)
	d := &dbServer{kind: "mysql", dir: dir, port: port, proc: p}
	d.ready = func(ctx context.Context) bool {
		// A MySQL server speaks first: a handshake packet means it is
		// accepting (the init file has run by then).
		c, err := net.DialTimeout("tcp", d.addr(), 500*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		var b [4]byte
		n, err := c.Read(b[:])
		return err == nil && n > 0
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	if err := d.waitReady(ctx, 2*time.Minute); err != nil {
		p.Kill()
		return nil, err
	}
	return d, nil
}

func firstExisting(paths ...string) string {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// versionLess orders /usr/lib/postgresql/<N>/bin paths by N.
func versionLess(a, b string) bool {
	va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
	vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
	if va != vb {
		return va < vb
	}
	return a < b
}
