//! Starting the servers tests talk to: Koine in-process (SQLite in a temp
//! dir) or as a process, and a throwaway real etcd (Debian `etcd-server`).
//! A missing binary fails the test loudly; nothing is skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Which server a behaviour test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Koine on SQLite, in-process.
    Sqlite,
    /// Koine on the shared throwaway PostgreSQL, a fresh database.
    Postgres,
    /// Koine on the shared throwaway PostgreSQL through PgBouncer in
    /// session pooling mode (Debian's, default configuration), a fresh
    /// database.
    PgBouncer,
    /// Koine on the shared throwaway MariaDB, a fresh database.
    MySql,
    /// A real etcd 3.4, to prove the test's expectations.
    Etcd,
    /// etcd 3.7 as `scripts/kubernetes.sh` builds it (`$ETCD37_DIR/etcd`),
    /// for the behaviour etcd 3.5+ changed; its tests are `#[ignore]`d
    /// and run by scripts/test.sh once the Go side is built.
    Etcd37,
    /// Koine in passthrough mode in front of a real etcd 3.4: answers as
    /// that etcd does.
    Passthrough,
}

/// A running server of any target.
pub struct Server {
    pub target: Target,
    pub endpoint: String,
    _guard: Guard,
}

#[allow(dead_code)]
enum Guard {
    Koine(Koine),
    Etcd(Etcd),
    /// Koine first, so that it stops before its etcd.
    Passthrough(Koine, Etcd),
}

impl Server {
    pub async fn start(target: Target) -> Server {
        match target {
            Target::Sqlite => {
                let k = Koine::start(&[]).await;
                Server {
                    target,
                    endpoint: k.endpoint.clone(),
                    _guard: Guard::Koine(k),
                }
            }
            Target::Postgres | Target::PgBouncer | Target::MySql => {
                let dsn = match target {
                    Target::Postgres => crate::dbs::fresh_postgres_dsn().await,
                    Target::PgBouncer => crate::dbs::fresh_pgbouncer_dsn().await,
                    _ => crate::dbs::fresh_mariadb_dsn().await,
                };
                let k = Koine::start_on(&dsn, &[]).await;
                Server {
                    target,
                    endpoint: k.endpoint.clone(),
                    _guard: Guard::Koine(k),
                }
            }
            Target::Etcd => {
                let e = Etcd::start().await;
                Server {
                    target,
                    endpoint: e.endpoint.clone(),
                    _guard: Guard::Etcd(e),
                }
            }
            Target::Etcd37 => {
                let dir = std::env::var("ETCD37_DIR").expect(
                    "ETCD37_DIR is not set: scripts/test.sh builds etcd 3.7 (scripts/kubernetes.sh)",
                );
                let e = Etcd::start_bin(&Path::new(&dir).join("etcd")).await;
                Server {
                    target,
                    endpoint: e.endpoint.clone(),
                    _guard: Guard::Etcd(e),
                }
            }
            Target::Passthrough => {
                let e = Etcd::start().await;
                let k = Koine::start_on(&e.endpoint, &[]).await;
                Server {
                    target,
                    endpoint: k.endpoint.clone(),
                    _guard: Guard::Passthrough(k, e),
                }
            }
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect")
    }

    /// Koine's own engine answers (not etcd, directly or through
    /// passthrough): for behaviour where Koine follows etcd 3.5 and the
    /// test etcd is 3.4.
    pub fn is_koine(&self) -> bool {
        !matches!(
            self.target,
            Target::Etcd | Target::Etcd37 | Target::Passthrough
        )
    }
}

/// Runs one behaviour test body against a fresh server of `target`.
pub async fn run<F, Fut>(target: Target, body: F)
where
    F: FnOnce(Server) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let server = Server::start(target).await;
    body(server).await;
}

/// Generates one `#[tokio::test]` per target for each named test body.
#[macro_export]
macro_rules! on_every_target {
    ($($name:ident),* $(,)?) => {
        $crate::on_targets!([Sqlite sqlite, Postgres postgres, PgBouncer pgbouncer, MySql mysql, Etcd etcd, Passthrough passthrough]; $($name),*);
    };
}

/// Generates one `#[tokio::test]` per listed target (`Variant test_name`)
/// for each named test body.
#[macro_export]
macro_rules! on_targets {
    (@one [$($target:ident $test:ident),*] $name:ident) => {
        mod $name {
            use $crate::harness::{run, Target};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() { run(Target::$target, super::$name).await }
            )*
        }
    };
    ($targets:tt; $(,)?) => {};
    ($targets:tt; $name:ident $(, $rest:ident)* $(,)?) => {
        $crate::on_targets!(@one $targets $name);
        $crate::on_targets!($targets; $($rest),*);
    };
}

/// The gRPC code and text of a client error (the test fails on any other
/// kind of error).
pub fn code_and_text(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Asserts an error's code and text.
pub fn assert_error(got: (tonic::Code, String), want: (tonic::Code, &str)) {
    assert_eq!((got.0, got.1.as_str()), want);
}

/// The next response of a watch stream, failing the test after 20 s or if
/// the stream errs or ends.
pub async fn next_watch_response(w: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(20), w.message())
        .await
        .expect("watch response in time")
        .expect("watch stream ok")
        .expect("watch stream open")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn endpoint_is_etcd(endpoint: &str) -> bool {
    endpoint.starts_with("http://") || endpoint.starts_with("https://")
}

/// Koine running in this test process.
pub struct Koine {
    pub endpoint: String,
    pub addr: SocketAddr,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Koine {
    /// Starts Koine on a fresh SQLite file with extra flags.
    pub async fn start(extra: &[&str]) -> Koine {
        let dir = tempfile::tempdir().expect("tempdir");
        Koine::start_in(dir, extra).await
    }

    pub async fn start_in(dir: TempDir, extra: &[&str]) -> Koine {
        let db = dir.path().join("state.db");
        let endpoint = format!("sqlite://{}", db.display());
        Koine::start_with(dir, &endpoint, extra).await
    }

    /// Starts Koine on a database endpoint (PostgreSQL, MySQL).
    pub async fn start_on(endpoint: &str, extra: &[&str]) -> Koine {
        let dir = tempfile::tempdir().expect("tempdir");
        Koine::start_with(dir, endpoint, extra).await
    }

    async fn start_with(dir: TempDir, endpoint: &str, extra: &[&str]) -> Koine {
        let mut args = vec!["koine", "--endpoint", endpoint];
        args.extend_from_slice(extra);
        let config = koine::config::Config::try_parse_from(args).expect("flags");
        // Until its database is open the port answers every call
        // Unavailable (`serve::serve_while_starting`); a test starts once
        // Koine serves. Tests of TLS on the client port and of passthrough
        // mode start on SQLite or etcd, which open at once.
        let wait = config.server_cert_file.is_none() && !endpoint_is_etcd(endpoint);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(koine::run(config, listener, async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{addr}");
        if wait {
            wait_ready(&endpoint).await;
        }
        Koine {
            endpoint,
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server gracefully and returns its data directory.
    pub async fn stop(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("koine exited with error");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Koine {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A real etcd, started from Debian's `etcd-server` package.
pub struct Etcd {
    pub endpoint: String,
    child: Child,
    _dir: TempDir,
}

pub fn etcd_binary() -> PathBuf {
    let p = PathBuf::from(std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into()));
    assert!(
        p.exists(),
        "{} not found: install Debian's etcd-server (the README's test command does)",
        p.display()
    );
    p
}

impl Etcd {
    pub async fn start() -> Etcd {
        Etcd::start_bin(&etcd_binary()).await
    }

    /// Starts the etcd binary at `bin` (Debian's 3.4, or a pinned build).
    pub async fn start_bin(bin: &Path) -> Etcd {
        Etcd::start_args(bin, &[]).await
    }

    /// Starts the etcd binary at `bin` with extra flags. A port
    /// `free_port` found free can be taken by a process starting beside
    /// (tests run in parallel): etcd then exits at once, and is started
    /// again on other ports.
    pub async fn start_args(bin: &Path, extra: &[&str]) -> Etcd {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let client = free_port();
            let peer = free_port();
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut child = etcd_command(bin, &dir.path().join("data"), &endpoint, &peer_url)
                // etcd 3.4 logs through capnslog unless told zap.
                .args(["--logger", "zap"])
                .args(extra)
                .spawn()
                .expect("spawn etcd");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(mut c) = etcd_client::Client::connect([endpoint.as_str()], None).await
                    && c.status().await.is_ok()
                {
                    return Etcd {
                        endpoint,
                        child,
                        _dir: dir,
                    };
                }
                if child.try_wait().expect("etcd's status").is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "{endpoint} did not become ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("etcd exited at start five times")
    }
}

/// etcd (`bin`) as a one-member cluster named "default" on `data`.
pub fn etcd_command(bin: &Path, data: &Path, endpoint: &str, peer_url: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--name",
        "default",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        endpoint,
        "--advertise-client-urls",
        endpoint,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        &format!("default={peer_url}"),
        "--log-level",
        "error",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    cmd
}

impl Etcd {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("etcd runs")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until an etcd API answers Status at `endpoint`.
pub async fn wait_ready(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([endpoint], None).await
            && c.status().await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoint} did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `etcdctl` (API v3) against `endpoint` and returns stdout; panics
/// with stderr on failure.
pub async fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let (ok, out, err) = etcdctl_raw(endpoint, args, None).await;
    assert!(ok, "etcdctl {args:?} failed: {err}");
    out
}

pub async fn etcdctl_raw(
    endpoint: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let bin = Path::new("/usr/bin/etcdctl");
    assert!(
        bin.exists(),
        "etcdctl not found: install Debian's etcd-client"
    );
    let mut cmd = Command::new(bin);
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--dial-timeout=5s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let out = child.wait_with_output().await.expect("etcdctl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Koine as a separate process (for multi-instance and kill -9 tests).
pub struct KoineProcess {
    pub endpoint: String,
    pub log: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl KoineProcess {
    pub async fn start(endpoint: &str, extra: &[&str]) -> KoineProcess {
        let k = KoineProcess::spawn(endpoint, extra);
        wait_ready(&k.endpoint).await;
        k
    }

    /// Starts Koine without waiting for it to serve.
    pub fn spawn(endpoint: &str, extra: &[&str]) -> KoineProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("koine.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_koine"))
            .arg("--listen-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--endpoint")
            .arg(endpoint)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn koine");
        let endpoint = format!("http://127.0.0.1:{port}");
        KoineProcess {
            endpoint,
            log,
            child,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("koine runs")
    }

    /// kill -9.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
