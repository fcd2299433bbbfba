package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	apiextclientset "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"koine.local/conformance/internal/proc"
)

// cluster is the running control plane and its storage.
type cluster struct {
	o     *options
	procs *processes
	dir   string
	pki   *pki

	backends  []*proc.Proc // the Koine instances, or the one etcd
	endpoints []string     // http://127.0.0.1:PORT of each backend, same order
	database  string       // DSN of the database the Koine instances share

	apiserver *proc.Proc
	kcm       *proc.Proc
	apiURL    string
	readyAt   time.Time

	cfg  *rest.Config
	kube kubernetes.Interface
	dyn  dynamic.Interface
	ext  apiextclientset.Interface
	etcd *clientv3.Client // straight to the backend, bypassing the apiserver
}

func startCluster(ctx context.Context, o *options, procs *processes) (*cluster, error) {
	c := &cluster{o: o, procs: procs, dir: o.workDir}
	logs := filepath.Join(o.workDir, "logs")

	if err := c.startBackends(ctx, logs); err != nil {
		return nil, err
	}

	apiPort, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	kcmPort, err := proc.FreePort()
	if err != nil {
		return nil, err
	}
	if c.pki, err = newPKI(filepath.Join(o.workDir, "pki"), apiPort); err != nil {
		return nil, fmt.Errorf("generating certificates: %w", err)
	}
	c.apiURL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	p := c.pki
	c.apiserver = procs.add("kube-apiserver", filepath.Join(o.binDir, "kube-apiserver"), logs, []string{
		"--etcd-servers=" + strings.Join(c.endpoints, ","),
		"--storage-backend=etcd3",
		fmt.Sprintf("--secure-port=%d", apiPort),
		"--bind-address=127.0.0.1",
		// The endpoint reconciler refuses loopback addresses; nothing
		// connects to this one (a documentation address, TEST-NET-1), it is
		// only published in the kubernetes Service's endpoints and in the
		// apiserver's master lease.
		"--advertise-address=192.0.2.10",
		"--tls-cert-file=" + p.serverCert,
		"--tls-private-key-file=" + p.serverKey,
		"--client-ca-file=" + p.caCert,
		// Front-proxy settings, published in kube-system/extension-apiserver-
		// authentication; without them kube-controller-manager's delegated
		// authentication logs an error every few seconds.
		"--requestheader-client-ca-file=" + p.caCert,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--token-auth-file=" + p.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + p.saPub,
		"--service-account-signing-key-file=" + p.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// Short, so the apiserver's own compaction really runs during the
		// checks (the first compaction happens after two intervals).
		"--etcd-compaction-interval=30s",
		// Events expire through storage leases: checked by leases-events.
		"--event-ttl=1m",
		// PodTemplates get no watch cache: their lists and watches go to
		// storage, which makes watch-compaction's 410 deterministic.
		"--watch-cache-sizes=podtemplates#0",
		// Object-count metrics refreshed often enough for the readyz check.
		"--etcd-count-metric-poll-period=5s",
		"--cert-dir=" + filepath.Join(o.workDir, "apiserver-certs"),
	})
	if err := c.apiserver.Start(); err != nil {
		return nil, err
	}
	if err := c.waitAPIServerReady(ctx, o.startupTimeout); err != nil {
		return nil, err
	}
	c.readyAt = time.Now()

	c.cfg = &rest.Config{
		Host:            c.apiURL,
		BearerToken:     p.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		// No client-side throttling: the checks measure the server. The
		// admin token is in system:masters, which API Priority and
		// Fairness exempts, so the server does not throttle it either.
		QPS:            -1,
		WarningHandler: rest.NoWarnings{},
		UserAgent:      "koine-e2e",
	}
	if c.kube, err = kubernetes.NewForConfig(c.cfg); err != nil {
		return nil, err
	}
	if c.dyn, err = dynamic.NewForConfig(c.cfg); err != nil {
		return nil, err
	}
	if c.ext, err = apiextclientset.NewForConfig(c.cfg); err != nil {
		return nil, err
	}
	if c.etcd, err = clientv3.New(clientv3.Config{
		Endpoints:   c.endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}); err != nil {
		return nil, fmt.Errorf("etcd client for the backend: %w", err)
	}

	c.kcm = procs.add("kube-controller-manager", filepath.Join(o.binDir, "kube-controller-manager"), logs, []string{
		"--kubeconfig=" + p.kubeconfig,
		"--authentication-kubeconfig=" + p.kubeconfig,
		"--authorization-kubeconfig=" + p.kubeconfig,
		"--service-account-private-key-file=" + p.saKey,
		"--root-ca-file=" + p.caCert,
		"--cluster-signing-cert-file=" + p.caCert,
		"--cluster-signing-key-file=" + p.caKey,
		"--use-service-account-credentials=true",
		"--controllers=*",
		// Leader election renews the kube-system/kube-controller-manager
		// Lease every 2s: a steady write load leases-events looks at.
		"--leader-elect=true",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", kcmPort),
		"--cert-dir=" + filepath.Join(o.workDir, "kcm-certs"),
	})
	if err := c.kcm.Start(); err != nil {
		return nil, err
	}
	if err := c.waitControllerManager(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// waitControllerManager: controllers are up once the controller-manager
// holds its lease and the service-account controller has made the default
// namespace's "default" ServiceAccount (Pods cannot be created without it).
func (c *cluster) waitControllerManager(ctx context.Context) error {
	return poll(ctx, 500*time.Millisecond, 2*time.Minute, "kube-controller-manager to take its lease and create ServiceAccounts", func(ctx context.Context) (bool, error) {
		if !c.kcm.Alive() {
			return false, permanent(fmt.Errorf("kube-controller-manager exited: %v", c.kcm.ExitErr()))
		}
		l, err := c.kube.CoordinationV1().Leases("kube-system").Get(ctx, "kube-controller-manager", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			return false, fmt.Errorf("lease has no holder")
		}
		_, err = c.kube.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

// startBackends starts the Koine instances on one fresh database (or a
// fresh SQLite file), or etcd, and waits until each answers.
func (c *cluster) startBackends(ctx context.Context, logs string) error {
	o := c.o
	if o.backend == "etcd" {
		port, err := proc.FreePort()
		if err != nil {
			return err
		}
		peer, err := proc.FreePort()
		if err != nil {
			return err
		}
		client := fmt.Sprintf("http://127.0.0.1:%d", port)
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		p := c.procs.add("etcd", filepath.Join(o.binDir, "etcd"), logs, []string{
			"--name=e2e",
			"--data-dir=" + filepath.Join(o.workDir, "etcd-data"),
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=e2e=" + peerURL,
			"--initial-cluster-state=new",
			"--log-level=warn",
		})
		c.backends, c.endpoints = []*proc.Proc{p}, []string{client}
	} else if strings.HasPrefix(o.backend, "kine-") {
		port, err := proc.FreePort()
		if err != nil {
			return err
		}
		dsn := "sqlite://" + filepath.Join(o.workDir, "kine.db")
		if o.backend != "kine-sqlite" {
			if dsn, err = withDatabase(o.dsn, "kine_e2e_"+randHex(4)); err != nil {
				return err
			}
			// kine's MySQL driver reads user@tcp(host:port)/db.
			if strings.HasPrefix(dsn, "mysql://") {
				u, _ := url.Parse(dsn)
				dsn = fmt.Sprintf("mysql://%s@tcp(%s)%s", u.User.String(), u.Host, u.Path)
			}
		}
		c.database = dsn
		p := c.procs.add("kine", o.kineBin, logs, []string{
			"--listen-address", fmt.Sprintf("127.0.0.1:%d", port),
			"--endpoint", dsn,
			"--metrics-bind-address", "0",
		})
		c.backends, c.endpoints = []*proc.Proc{p}, []string{fmt.Sprintf("http://127.0.0.1:%d", port)}
	} else {
		switch o.backend {
		case "sqlite":
			dir := filepath.Join(o.workDir, "sqlite")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			c.database = "sqlite://" + filepath.Join(dir, "state.db")
		default:
			name := "koine_e2e_" + randHex(4)
			dsn, err := withDatabase(o.dsn, name)
			if err != nil {
				return err
			}
			c.database = dsn
		}
		for i := 0; i < o.instances; i++ {
			port, err := proc.FreePort()
			if err != nil {
				return err
			}
			name := fmt.Sprintf("koine-%d", i)
			p := c.procs.add(name, o.koineBin, logs, []string{
				"--listen-address", fmt.Sprintf("127.0.0.1:%d", port),
				"--endpoint", c.database,
				"--name", name,
				"--log-level", "warn",
				// The apiserver compacts (--etcd-compaction-interval); Koine's
				// own background compaction would blur what is checked.
				"--compact-interval", "0",
			})
			c.backends = append(c.backends, p)
			c.endpoints = append(c.endpoints, fmt.Sprintf("http://127.0.0.1:%d", port))
		}
	}
	for i, p := range c.backends {
		if err := p.Start(); err != nil {
			return err
		}
		if err := c.waitBackend(ctx, i, time.Minute); err != nil {
			return err
		}
	}
	return nil
}

// waitBackend waits until backend i serves its health endpoint: Koine's
// /readyz (its database is reachable), etcd's /health; kine, which has
// none, until it answers a read.
func (c *cluster) waitBackend(ctx context.Context, i int, timeout time.Duration) error {
	p := c.backends[i]
	if strings.HasPrefix(c.o.backend, "kine-") {
		return poll(ctx, 100*time.Millisecond, timeout, p.Name()+" to answer", func(ctx context.Context) (bool, error) {
			if !p.Alive() {
				return false, permanent(fmt.Errorf("%s exited: %v", p.Name(), p.ExitErr()))
			}
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.endpoints[i]}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				return false, err
			}
			defer cli.Close()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err = cli.Get(rctx, "/registry/health")
			return err == nil, err
		})
	}
	path := "/readyz"
	if c.o.backend == "etcd" {
		path = "/health"
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	return poll(ctx, 100*time.Millisecond, timeout, p.Name()+" to become ready", func(ctx context.Context) (bool, error) {
		if !p.Alive() {
			return false, permanent(fmt.Errorf("%s exited: %v", p.Name(), p.ExitErr()))
		}
		return httpOK(ctx, hc, c.endpoints[i]+path, "")
	})
}

func (c *cluster) waitAPIServerReady(ctx context.Context, timeout time.Duration) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	hc := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	return poll(ctx, 500*time.Millisecond, timeout, "kube-apiserver /readyz", func(ctx context.Context) (bool, error) {
		if !c.apiserver.Alive() {
			return false, permanent(fmt.Errorf("kube-apiserver exited: %v", c.apiserver.ExitErr()))
		}
		return httpOK(ctx, hc, c.apiURL+"/readyz", c.pki.token)
	})
}

// httpOK is true on a 200; otherwise the error says what came back.
func httpOK(ctx context.Context, hc *http.Client, u, token string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return false, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("%s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	return true, nil
}

// withDatabase replaces the database name (the URL path) of a
// postgres:// or mysql:// DSN. Koine creates the database if needed.
func withDatabase(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("-dsn must be a URL like postgres://user@host:port/db or mysql://user@host:port/db")
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// env is what the checks work with.
type env struct {
	*cluster
	prepareErrs map[string]error
	event       *eventProbe
}

func newEnv(c *cluster, o *options) *env {
	return &env{cluster: c, prepareErrs: map[string]error{}}
}

func (e *env) close() {
	if e.etcd != nil {
		_ = e.etcd.Close()
	}
}

// backendNames are the log names of the storage processes.
func (e *env) backendNames() []string {
	var out []string
	for _, p := range e.backends {
		out = append(out, p.Name())
	}
	return out
}

func (e *env) isKoine() bool { return isKoine(e.o.backend) }

// isKoine: the backend is Koine (not etcd, not kine).
func isKoine(backend string) bool {
	return backend != "etcd" && !strings.HasPrefix(backend, "kine-")
}

// kubectl runs kubectl against the cluster; stdin may be empty.
func (e *env) kubectl(ctx context.Context, stdin string, args ...string) (stdout, stderr string, err error) {
	full := append([]string{
		"--kubeconfig=" + e.pki.kubeconfig,
		"--cache-dir=" + filepath.Join(e.dir, "kubectl-cache"),
		"--request-timeout=60s",
	}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(e.o.binDir, "kubectl"), full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	if err != nil {
		err = fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), err
}

// newNamespace creates a namespace named after the check, with a random
// suffix so that reruns and checks never share objects.
func (e *env) newNamespace(ctx context.Context, prefix string) (string, error) {
	name := prefix + "-" + randHex(3)
	_, err := e.kube.CoreV1().Namespaces().Create(ctx, nsObject(name), metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return name, nil
}

// waitDefaultServiceAccount waits for the service-account controller:
// the ServiceAccount admission plugin rejects Pods until it exists.
func (e *env) waitDefaultServiceAccount(ctx context.Context, ns string) error {
	return poll(ctx, 200*time.Millisecond, time.Minute, "the default ServiceAccount in "+ns, func(ctx context.Context) (bool, error) {
		_, err := e.kube.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, err
		}
		return err == nil, err
	})
}
