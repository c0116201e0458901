//! The integration-test harness: real PostgreSQL labs for test binaries.
//!
//! Each test binary shares one lab (`shared_lab`), built on first use; tests
//! that stop or reconfigure servers build their own (`TestLab::build`).
//! Every lab is watched by a reaper process that destroys it when the test
//! process goes away, however it goes (pass, fail, panic, SIGKILL): the
//! reaper waits for end-of-file on a pipe whose write end only this process
//! holds.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pghalo::lab::{InitOptions, Lab};

pub const PGHALO: &str = env!("CARGO_BIN_EXE_pghalo");

pub struct TestLab {
    pub lab: Lab,
    /// Dropping this closes the pipe, and the reaper destroys the lab.
    reaper_pipe: Mutex<Option<ChildStdin>>,
    reaper: Mutex<Option<Child>>,
}

impl TestLab {
    /// Builds, starts and waits for a lab; `configure` adjusts the defaults
    /// (3 backends, asynchronous replication).
    pub fn build(tag: &str, configure: impl FnOnce(&mut InitOptions)) -> TestLab {
        let dir = unique_dir(tag);
        let (reaper, pipe) = spawn_reaper(&dir);
        let mut opts = InitOptions::new(&dir);
        configure(&mut opts);
        let lab = block_on(async move {
            let lab = Lab::init(&opts).await?.with_pghalo_bin(PGHALO);
            lab.start().await?;
            Ok::<_, pghalo::lab::LabError>(lab)
        })
        .unwrap_or_else(|e| panic!("building the test lab in {}: {e}", dir.display()));
        TestLab {
            lab,
            reaper_pipe: Mutex::new(Some(pipe)),
            reaper: Mutex::new(Some(reaper)),
        }
    }

    pub fn dir(&self) -> &Path {
        self.lab.dir()
    }

    /// Destroys the lab now and waits for the reaper to finish doing it.
    pub fn destroy(&self) {
        if let Ok(mut pipe) = self.reaper_pipe.lock() {
            pipe.take();
        }
        if let Some(mut child) = self.reaper.lock().ok().and_then(|mut r| r.take()) {
            let _ = child.wait();
        }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// The lab shared by every test of this binary: 3 nodes, asynchronous.
pub fn shared_lab() -> &'static TestLab {
    static LAB: OnceLock<TestLab> = OnceLock::new();
    LAB.get_or_init(|| TestLab::build("shared", |_| {}))
}

/// A directory path under the system temp dir that no other test (of any
/// binary running in parallel) uses; it does not exist yet.
pub fn unique_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "pghalo-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A reaper for a lab that something other than `TestLab` builds (the demo):
/// the lab in `dir` is destroyed when the returned guard is dropped or the
/// test process ends.
pub fn reap_on_exit(dir: &Path) -> ReaperGuard {
    let (child, pipe) = spawn_reaper(dir);
    ReaperGuard {
        child,
        pipe: Some(pipe),
    }
}

pub struct ReaperGuard {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        self.pipe.take();
        let _ = self.child.wait();
    }
}

fn spawn_reaper(dir: &Path) -> (Child, ChildStdin) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read -r _; [ -f "$1/lab.json" ] && exec "$0" lab destroy --dir "$1"; exit 0"#)
        .arg(PGHALO)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C aimed at the test run must not
        // kill the reaper before it has cleaned up.
        .process_group(0)
        .spawn()
        .expect("spawning the lab reaper");
    let pipe = child.stdin.take().expect("reaper stdin is piped");
    (child, pipe)
}

/// Runs a future to completion on a runtime of its own, so the harness works
/// from plain and async tests alike.
pub fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime")
            .block_on(future)
    })
    .join()
    .expect("harness thread panicked")
}

/// Runs the pghalo binary; returns (exit success, stdout, stderr).
pub fn pghalo(args: &[&str]) -> (bool, String, String) {
    pghalo_env(args, &[])
}

pub fn pghalo_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let output = Command::new(PGHALO)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("running pghalo");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The postmaster pid of every node of the lab in `dir` that is running.
pub fn postmaster_pids(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("postmaster.pid")).ok())
        .filter_map(|text| text.lines().next()?.trim().parse().ok())
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// Live (non-zombie) process, or any live child of it.
pub fn process_alive(pid: i32) -> bool {
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    alive(pid) || children(pid).into_iter().any(alive)
}

fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Polls `check` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create file");
    f.write_all(text.as_bytes()).expect("write file");
}

/// A port nothing listens on right now, for in-process pghalo instances.
/// Not the kernel's pick: that comes from the ephemeral range, where an
/// outgoing connection of a test running alongside can take it before
/// pghalo binds it (seen in CI as AddrInUse). These come from below the
/// labs' range (20000+) and Linux's ephemeral one (32768+), each handed
/// out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(BASE + offset).expect("ports below 20000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN);
}

/// A pghalo configuration in front of `lab`'s nodes, written into a new
/// directory: `[pool]` and `[listen]` extras, an hba file and a
/// pool_passwd (the lab users' SCRAM verifiers unless `passwd` is given).
pub struct ProxyConfig {
    pub dir: PathBuf,
    pub port: u16,
}

impl ProxyConfig {
    pub fn write(
        lab: &Lab,
        tag: &str,
        listen_extra: &str,
        pool_extra: &str,
        hba: &str,
        passwd: Option<&str>,
    ) -> ProxyConfig {
        let dir = unique_dir(tag);
        std::fs::create_dir_all(&dir).expect("config dir");
        let port = free_port();
        let mut text = format!(
            "[listen]\nlisten_addresses = [\"127.0.0.1\"]\nport = {port}\n{listen_extra}\n[pool]\n{pool_extra}\n[auth]\npool_hba = \"pool_hba.conf\"\npool_passwd = \"pool_passwd\"\n"
        );
        for node in &lab.manifest.nodes {
            text.push_str(&format!(
                "\n[[backend]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
                node.name, node.port
            ));
        }
        write_file(&dir.join("pghalo.toml"), &text);
        write_file(&dir.join("pool_hba.conf"), hba);
        let passwd = match passwd {
            Some(p) => p.to_string(),
            None => std::fs::read_to_string(lab.dir().join("pghalo0").join("pool_passwd"))
                .expect("lab pool_passwd"),
        };
        write_file(&dir.join("pool_passwd"), &passwd);
        ProxyConfig { dir, port }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pghalo.toml")
    }
}

impl Drop for ProxyConfig {
    fn drop(&mut self) {
        // A daemon just stopped may still be saving its state file here:
        // a file made during the removal leaves the directory behind, so
        // the removal is tried again.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// libpq-style connection string to `port` as `user`.
pub fn conninfo(port: u16, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname=postgres connect_timeout=10"
    )
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn pg_connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// What a psql run printed.
pub struct PsqlOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs psql (`-X -w -At`, password from `pgpass`) against 127.0.0.1:`port`
/// as `user`, with `args` after the connection options and `stdin` fed in.
pub fn psql(pgpass: &Path, port: u16, user: &str, args: &[&str], stdin: &str) -> PsqlOutput {
    let mut child = Command::new("psql")
        .env("PGPASSFILE", pgpass)
        .args([
            "-X",
            "-w",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "postgres",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running psql");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("feeding psql");
    }
    let out = child.wait_with_output().expect("waiting for psql");
    PsqlOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// --- Routing tests: databases, monitored proxies, replay waits ------------

/// libpq-style connection string to `port` as `user`, database `db`.
pub fn conninfo_db(port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname={db} connect_timeout=10"
    )
}

/// A superuser session straight to one lab node, database `db`.
pub async fn node_client(lab: &Lab, node: &str, db: &str) -> tokio_postgres::Client {
    let port = lab
        .node(node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .port;
    pg_connect(&conninfo_db(port, "postgres", &lab.secrets.postgres, db))
        .await
        .unwrap_or_else(|e| panic!("connecting to {node}/{db}: {e}"))
}

/// The `[streaming_replication]` section that turns the replication monitor
/// on as the lab's `pghalo` user, checking every 200 ms; `extra` holds more
/// keys of that section (`delay_threshold = "64kB"`).
pub fn monitor_section(lab: &Lab, extra: &str) -> String {
    format!(
        "[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"{}\"\nsr_check_period = \"200ms\"\nsr_check_timeout = \"2s\"\n{extra}\n",
        lab.secrets.pghalo
    )
}

/// A pghalo configuration in front of every node of `lab` (see
/// `ProxyConfig::write`; any client may log in with SCRAM), with
/// `sections` (whole TOML tables such as `[load_balance]`) placed before
/// the backends, and backend `i` given `weights[i]` when there is one.
pub fn routing_config(lab: &Lab, tag: &str, sections: &str, weights: &[f64]) -> ProxyConfig {
    let config = ProxyConfig::write(
        lab,
        tag,
        "",
        "",
        "host all all 127.0.0.1/32 scram-sha-256\n",
        None,
    );
    let text = std::fs::read_to_string(config.path()).expect("reading pghalo.toml");
    let at = text.find("[[backend]]").expect("backends in pghalo.toml");
    let mut out = format!("{}{sections}\n", &text[..at]);
    for (i, node) in lab.manifest.nodes.iter().enumerate() {
        out.push_str(&format!(
            "[[backend]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            node.name, node.port
        ));
        if let Some(weight) = weights.get(i) {
            out.push_str(&format!("weight = {weight}\n"));
        }
        out.push('\n');
    }
    write_file(&config.path(), &out);
    config
}

/// A libpq password file (mode 0600) in `dir` for `user` on 127.0.0.1:`port`,
/// for `psql` against an in-process pghalo.
pub fn pgpass_for(dir: &Path, port: u16, user: &str, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("pgpass-{port}"));
    write_file(&path, &format!("127.0.0.1:{port}:*:{user}:{password}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod pgpass");
    path
}

/// Waits until the daemon's replication monitor has found node0 the primary
/// and every other node an up standby whose replay LSN it knows.
pub async fn wait_for_topology(
    daemon: &pghalo::daemon::Daemon,
    limit: Duration,
) -> std::sync::Arc<pghalo::cluster::ClusterSnapshot> {
    use pghalo::cluster::{NodeId, Role, Status};
    daemon
        .cluster()
        .view()
        .wait_for(limit, |s| {
            s.primary == Some(NodeId(0))
                && s.nodes.iter().all(|n| n.status == Status::Up)
                && s.nodes[1..]
                    .iter()
                    .all(|n| n.role == Role::Standby && n.lsn.replay.is_some())
        })
        .await
        .unwrap_or_else(|last| panic!("the monitor never saw the lab's topology: {last:?}"))
}

/// Waits until every standby of `lab` has replayed all the WAL the primary
/// (node0) had written when this was called; asks the nodes directly.
pub async fn wait_for_replay(lab: &Lab, limit: Duration) {
    let primary = node_client(lab, "node0", "postgres").await;
    let lsn: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("primary LSN")
        .get(0);
    for node in &lab.manifest.nodes[1..] {
        let client = node_client(lab, &node.name, "postgres").await;
        let deadline = Instant::now() + limit;
        loop {
            let done: bool = client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&lsn],
                )
                .await
                .expect("standby replay LSN")
                .get(0);
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} has not replayed up to {lsn} within {limit:?}",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// pghalo in process in front of `lab`, checking every 200 ms and failing
/// over as the lab superuser: `before` goes first in the configuration
/// (a `[load_balance]` section, say), `failover_extra` into `[failover]`.
/// Returns once the monitor has seen the lab's topology.
pub async fn start_failover_proxy(
    lab: &Lab,
    tag: &str,
    before: &str,
    failover_extra: &str,
) -> (ProxyConfig, pghalo::daemon::Daemon) {
    start_failover_proxy_with(lab, tag, before, failover_extra, "").await
}

/// `start_failover_proxy`, with `last_backend_extra` keys in the last
/// node's `[[backend]]` table.
pub async fn start_failover_proxy_with(
    lab: &Lab,
    tag: &str,
    before: &str,
    failover_extra: &str,
    last_backend_extra: &str,
) -> (ProxyConfig, pghalo::daemon::Daemon) {
    let sections = format!(
        "{before}{}\n{}",
        monitor_section(lab, ""),
        failover_section(lab, failover_extra)
    );
    let config = routing_config(lab, tag, &sections, &[]);
    let text = std::fs::read_to_string(config.path()).expect("reading pghalo.toml");
    write_file(&config.path(), &format!("{text}{last_backend_extra}\n"));
    let daemon = pghalo::daemon::Daemon::start(&config.path())
        .await
        .expect("starting pghalo");
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    (config, daemon)
}

/// pghalo's logs in the test output when RUST_LOG asks for them.
pub fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A `[failover]` section that lets pghalo fail over (the lab superuser as
/// recovery_user), with `extra` lines.
pub fn failover_section(lab: &Lab, extra: &str) -> String {
    format!(
        "[failover]\nrecovery_user = \"postgres\"\nrecovery_password = \"TEXT{}\"\n{extra}\n",
        lab.secrets.postgres
    )
}

/// The pid in the first line of a data directory's postmaster.pid.
pub fn postmaster_pid(lab: &Lab, node: &str) -> i32 {
    let text = std::fs::read_to_string(lab.dir().join(node).join("postmaster.pid"))
        .expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid in postmaster.pid")
}

/// A postmaster stopped by [`stop_postmaster`]; SIGCONT when dropped,
/// however the test ends: a stopped server would outlive the lab.
pub struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

/// Stops `node`'s postmaster (SIGSTOP): the kernel still accepts
/// connections, nobody answers them, and its backends run on.
pub fn stop_postmaster(lab: &Lab, node: &str) -> Resume {
    stop_process(postmaster_pid(lab, node))
}

/// Stops process `pid` (a postmaster, a backend) until the guard drops.
pub fn stop_process(pid: i32) -> Resume {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .expect("stopping a server process");
    Resume(pid)
}

/// Sends `signal` to `node`'s postmaster (SIGKILL: it dies; SIGSTOP: it
/// hangs while its backends run on).
pub fn signal_postmaster(lab: &Lab, node: &str, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(postmaster_pid(lab, node)),
        signal,
    )
    .expect("signalling the postmaster");
}

/// Cuts standby `node` off from the WAL stream (its primary_conninfo
/// pointed at a closed port) and waits until it no longer streams: the
/// primary's writes from now on do not reach it.
pub async fn cut_off_from_wal(lab: &Lab, node: &str) {
    let client = node_client(lab, node, "postgres").await;
    let conninfo: String = client
        .query_one("SELECT current_setting('primary_conninfo')", &[])
        .await
        .expect("primary_conninfo")
        .get(0);
    let primary_port = lab.node("node0").expect("node0").port;
    let cut_off = conninfo.replace(&format!("port={primary_port}"), "port=1");
    assert_ne!(cut_off, conninfo, "{conninfo}");
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = '{}'",
            cut_off.replace('\'', "''")
        ))
        .await
        .expect("ALTER SYSTEM");
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .query_opt(
            "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await
        .expect("pg_stat_wal_receiver")
        .is_some()
    {
        assert!(Instant::now() < deadline, "{node} keeps streaming");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw protocol client: just enough to send a request in pieces.
pub struct RawClient(pub tokio::net::TcpStream);

impl RawClient {
    /// Logs in as postgres (the proxy trusts it) and waits for
    /// ReadyForQuery.
    pub async fn login(port: u16) -> RawClient {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for text in ["user", "postgres", "database", "postgres", ""] {
            body.extend_from_slice(text.as_bytes());
            body.push(0);
        }
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        let mut client = RawClient(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connecting to pghalo"),
        );
        client.send(&packet).await;
        client.until_ready().await;
        client
    }

    /// Reads `SELECT inet_server_port(), pg_backend_pid()` until the
    /// port is one `wanted` accepts (statement-level balancing moves the
    /// session each time); the row.
    pub async fn read_until(&mut self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        for _ in 0..300 {
            self.send(&query_message(
                "SELECT inet_server_port(), pg_backend_pid()",
            ))
            .await;
            let row = first_row(&self.until_ready().await);
            if wanted(&row[0]) {
                return row;
            }
        }
        panic!("300 reads, none where wanted");
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(bytes).await.expect("writing to pghalo");
    }

    /// The messages up to ReadyForQuery, (tag, body) each, within 10 s.
    pub async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut messages = Vec::new();
        let read = async {
            loop {
                let mut header = [0u8; 5];
                if let Err(e) = self.0.read_exact(&mut header).await {
                    panic!("the connection ended after {messages:?}: {e}");
                }
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                let mut body = vec![0u8; (len as usize).saturating_sub(4)];
                self.0
                    .read_exact(&mut body)
                    .await
                    .expect("reading a message body");
                let tag = header[0];
                messages.push((tag, body));
                if tag == b'Z' {
                    return;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .is_err()
        {
            panic!("no ReadyForQuery within 10 s");
        }
        messages
    }
}

/// A Query message for `sql`.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut message = vec![b'Q'];
    message.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    message.extend_from_slice(sql.as_bytes());
    message.push(0);
    message
}

/// The first DataRow's text columns in `messages` (NULL as "NULL");
/// panics on an error.
pub fn first_row(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
    if let Some((_, error)) = messages.iter().find(|(tag, _)| *tag == b'E') {
        panic!("error: {}", String::from_utf8_lossy(error));
    }
    let (_, row) = messages
        .iter()
        .find(|(tag, _)| *tag == b'D')
        .unwrap_or_else(|| panic!("no row in {messages:?}"));
    let columns = u16::from_be_bytes([row[0], row[1]]);
    let mut at = 2;
    (0..columns)
        .map(|_| {
            let len = i32::from_be_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
            at += 4;
            let Ok(len) = usize::try_from(len) else {
                return "NULL".to_string();
            };
            let value = String::from_utf8_lossy(&row[at..at + len]).into_owned();
            at += len;
            value
        })
        .collect()
}

/// Parse of the unnamed statement `sql` (no parameter types), Describe of
/// it, Sync.
pub fn prepare_unnamed(sql: &str) -> Vec<u8> {
    let mut messages = frontend_message(b'P', format!("\0{sql}\0\0\0").as_bytes());
    messages.extend(frontend_message(b'D', b"S\0"));
    messages.extend(frontend_message(b'S', b""));
    messages
}

/// A frontend message: `tag`, its length, `body`.
pub fn frontend_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![tag];
    message.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// pghalo in process in front of `lab`, balancing each statement, with
/// trust for clients on 127.0.0.1 (so a raw client logs in without a
/// password exchange) and the postgres password in clear for the servers.
pub async fn trusting_balanced_proxy(
    lab: &Lab,
    tag: &str,
) -> (ProxyConfig, pghalo::daemon::Daemon) {
    let sections = format!(
        "[load_balance]\nstatement_level_load_balance = true\n\n{}",
        monitor_section(lab, "")
    );
    let config = routing_config(lab, tag, &sections, &[]);
    write_file(
        &config.dir.join("pool_hba.conf"),
        "host all all 127.0.0.1/32 trust\n",
    );
    write_file(
        &config.dir.join("pool_passwd"),
        &format!("postgres:TEXT{}\n", lab.secrets.postgres),
    );
    let daemon = pghalo::daemon::Daemon::start(&config.path())
        .await
        .expect("starting pghalo");
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    (config, daemon)
}
