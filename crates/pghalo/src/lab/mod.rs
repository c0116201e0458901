//! `pghalo lab`: local clusters of real PostgreSQL (primary + streaming
//! standbys) for the demo, the integration tests and the benchmarks. The job
//! pgpool-II's pgpool_setup does, built on initdb, pg_ctl and pg_basebackup.
//!
//! Owns: the lab directory and the servers in it. Must not: be used by the
//! daemon's normal path.

pub mod demo;
mod error;
mod layout;
mod pg_bin;
mod ports;
mod process;
mod proxies;
mod secrets;
mod server_user;
mod sql;
mod status;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::LabError;
pub use layout::{LabLayout, Manifest, NodeSpec, ProxySpec};
pub use pg_bin::{MIN_MAJOR, PgBin};
pub use secrets::{HEALTH_USER, REPLICATION_USER, SUPERUSER, Secrets};
pub use server_user::ServerUser;
pub use status::{LabStatus, NodeStatus, ProxyStatus, ReplicationRow, Role};

use process::{children_of, is_alive, kill_hard, last_lines, postmaster_pid, run};
use sql::{connect, sql_error};

const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(300);
const PG_CTL_TIMEOUT_SECS: u64 = 60;
const REPLICATION_WAIT: Duration = Duration::from_secs(60);
const SQL_TIMEOUT: Duration = Duration::from_secs(60);

/// What `lab init` is asked to build.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub backends: usize,
    pub sync: bool,
    pub base_port: Option<u16>,
    pub pg_bin: Option<PathBuf>,
    /// pghalo instances in front of the nodes.
    pub proxies: usize,
}

impl InitOptions {
    pub fn new(dir: impl Into<PathBuf>) -> InitOptions {
        InitOptions {
            dir: dir.into(),
            backends: 3,
            sync: false,
            base_port: None,
            pg_bin: None,
            proxies: 1,
        }
    }
}

/// How hard `stop` asks: `Fast` rolls back sessions and checkpoints,
/// `Immediate` is a crash (what `destroy` uses: nothing is kept anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// An initialised lab, opened from its directory.
#[derive(Debug, Clone)]
pub struct Lab {
    pub layout: LabLayout,
    pub manifest: Manifest,
    pub secrets: Secrets,
    pg: PgBin,
    user: ServerUser,
    /// The pghalo binary proxies run (see `with_pghalo_bin`).
    pghalo_bin: Option<PathBuf>,
}

impl Lab {
    /// Builds a new lab: node0 primary, node1.. standbys made by
    /// pg_basebackup, every server stopped at the end. On any failure the
    /// directory is left as it was found (or removed if init created it).
    pub async fn init(opts: &InitOptions) -> Result<Lab, LabError> {
        if !(1..=16).contains(&opts.backends) {
            return Err(LabError::BackendCount(opts.backends));
        }
        if opts.proxies > 16 {
            return Err(LabError::ProxyCount(opts.proxies));
        }
        let pg = PgBin::locate(opts.pg_bin.as_deref())?;
        let dir_existed = check_target_dir(&opts.dir)?;
        let user = ServerUser::resolve()?;
        if !dir_existed {
            std::fs::create_dir_all(&opts.dir).map_err(|e| LabError::DirCreate {
                path: opts.dir.clone(),
                reason: e.to_string(),
            })?;
        }
        let mut guard = InitGuard {
            dir: opts.dir.clone(),
            remove_dir: !dir_existed,
            ports: Vec::new(),
            pg: None,
        };
        let lab = build(opts, pg, user, &mut guard).await?;
        guard.disarm();
        Ok(lab)
    }

    /// Opens the lab in `dir` without touching any server.
    pub fn open(dir: &Path) -> Result<Lab, LabError> {
        let dir = dir
            .canonicalize()
            .map_err(|_| LabError::NotALab(dir.to_path_buf()))?;
        let layout = LabLayout::new(&dir);
        let manifest = layout.read_manifest()?;
        let secrets = Secrets::read(&layout)?;
        let pg = PgBin::check(&manifest.pg_bin)?;
        let user = ServerUser::resolve()?;
        Ok(Lab {
            layout,
            manifest,
            secrets,
            pg,
            user,
            pghalo_bin: None,
        })
    }

    /// Names the pghalo binary the lab's proxies run (tests, whose own
    /// executable is not pghalo).
    pub fn with_pghalo_bin(mut self, bin: impl Into<PathBuf>) -> Lab {
        self.pghalo_bin = Some(bin.into());
        self
    }

    pub fn proxy(&self, name: &str) -> Option<&ProxySpec> {
        self.manifest.proxies.iter().find(|p| p.name == name)
    }

    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    pub fn pgpass(&self) -> PathBuf {
        self.layout.pgpass()
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.manifest.nodes.iter().find(|n| n.name == name)
    }

    /// Starts every stopped node (running ones are left alone), waits
    /// until each standby streams from the primary, then starts the proxies.
    pub async fn start(&self) -> Result<(), LabError> {
        for node in &self.manifest.nodes {
            self.start_node(&node.name).await?;
        }
        self.wait_for_replication(REPLICATION_WAIT).await?;
        self.start_proxies().await
    }

    /// Starts one node if it is not running.
    pub async fn start_node(&self, name: &str) -> Result<(), LabError> {
        let data_dir = self.layout.data_dir(name);
        if postmaster_pid(&data_dir).is_some() {
            return Ok(());
        }
        tracing::info!(node = name, "starting");
        let log = self.layout.log_file(name);
        let mut cmd = self.user.command(&self.pg.tool("pg_ctl"), &self.layout.dir);
        cmd.arg("start")
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_TIMEOUT_SECS.to_string());
        cmd.arg("-D").arg(&data_dir).arg("-l").arg(&log);
        let limit = Duration::from_secs(PG_CTL_TIMEOUT_SECS + 10);
        run(cmd, &format!("pg_ctl start of {name}"), limit)
            .await
            .map_err(|e| {
                let tail = std::fs::read_to_string(&log)
                    .map(|t| last_lines(&t, 3))
                    .unwrap_or_default();
                LabError::StartFailed {
                    node: name.to_string(),
                    detail: if tail.is_empty() { e.to_string() } else { tail },
                }
            })?;
        Ok(())
    }

    /// Stops every running proxy and node; stopped ones are left alone.
    pub async fn stop(&self, mode: StopMode) -> Result<(), LabError> {
        self.stop_proxies().await;
        for node in &self.manifest.nodes {
            self.stop_node(&node.name, mode).await?;
        }
        Ok(())
    }

    /// Stops one node, escalating to an immediate stop and then SIGKILL if
    /// the server does not go away; returns once no server process is left.
    pub async fn stop_node(&self, name: &str, mode: StopMode) -> Result<(), LabError> {
        let data_dir = self.layout.data_dir(name);
        let Some(pid) = postmaster_pid(&data_dir) else {
            return Ok(());
        };
        tracing::info!(node = name, mode = mode.as_str(), "stopping");
        for mode in [mode, StopMode::Immediate] {
            let mut cmd = self.user.command(&self.pg.tool("pg_ctl"), &self.layout.dir);
            cmd.arg("stop")
                .arg("-w")
                .arg("-t")
                .arg("30")
                .arg("-m")
                .arg(mode.as_str())
                .arg("-D")
                .arg(&data_dir);
            match run(
                cmd,
                &format!("pg_ctl stop of {name}"),
                Duration::from_secs(40),
            )
            .await
            {
                Ok(_) if wait_gone(pid, Duration::from_secs(10)).await => return Ok(()),
                Ok(_) => {}
                Err(e) => tracing::warn!(node = name, "{e}"),
            }
        }
        let children = children_of(pid);
        kill_hard(pid);
        for child in children {
            kill_hard(child);
        }
        if wait_gone(pid, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(LabError::Command {
                what: format!("stopping {name}"),
                detail: format!("postmaster {pid} survived SIGKILL"),
            })
        }
    }

    pub async fn status(&self) -> Result<LabStatus, LabError> {
        status::collect(self).await
    }

    /// Stops every server and removes the lab directory.
    pub async fn destroy(self) -> Result<(), LabError> {
        self.stop(StopMode::Immediate).await?;
        ports::release_ports(&self.manifest.ports(), &self.layout.dir);
        std::fs::remove_dir_all(&self.layout.dir)
            .map_err(|e| LabError::io("cannot remove", &self.layout.dir, e))
    }

    /// Superuser SQL connection to a node.
    pub async fn connect(&self, name: &str) -> Result<tokio_postgres::Client, LabError> {
        let node = self.node(name).ok_or_else(|| LabError::Sql {
            node: name.to_string(),
            detail: "no such node".into(),
        })?;
        connect(name, node.port, SUPERUSER, &self.secrets.postgres).await
    }

    /// Waits until the one primary's pg_stat_replication shows every running
    /// standby as `streaming`. Does nothing when there is no single primary
    /// (a lab in the middle of a failover experiment).
    pub async fn wait_for_replication(&self, limit: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await?;
            let primaries = status.primaries();
            let [primary] = primaries.as_slice() else {
                return Ok(());
            };
            let lagging: Vec<&str> = status
                .nodes
                .iter()
                .filter(|n| n.role == Role::Standby)
                .filter(|n| {
                    !primary.replicas.iter().any(|r| {
                        r.application_name == n.name && r.state.as_deref() == Some("streaming")
                    })
                })
                .map(|n| n.name.as_str())
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::ReplicationNotStreaming {
                    secs: limit.as_secs(),
                    detail: format!("{} not streaming from {}", lagging.join(", "), primary.name),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Undoes a failed `init`: stops what it started, removes what it wrote,
/// releases its ports. Disarmed once init has succeeded.
struct InitGuard {
    dir: PathBuf,
    remove_dir: bool,
    ports: Vec<u16>,
    pg: Option<(PgBin, ServerUser, Vec<PathBuf>)>,
}

impl InitGuard {
    fn disarm(&mut self) {
        self.ports.clear();
        self.pg = None;
        self.remove_dir = false;
        self.dir = PathBuf::new();
    }
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Some((pg, user, data_dirs)) = &self.pg {
            for data_dir in data_dirs {
                if let Some(pid) = postmaster_pid(data_dir) {
                    let mut cmd = std::process::Command::new(pg.tool("pg_ctl"));
                    cmd.arg("stop")
                        .arg("-w")
                        .arg("-m")
                        .arg("immediate")
                        .arg("-D")
                        .arg(data_dir);
                    user.blocking_run(cmd);
                    if is_alive(pid) {
                        kill_hard(pid);
                    }
                }
            }
        }
        ports::release_ports(&self.ports, &self.dir);
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else if let Ok(entries) = std::fs::read_dir(&self.dir) {
            // The directory was empty before init: empty it again.
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }
}

/// Returns whether `dir` already exists (it must then be an empty directory).
fn check_target_dir(dir: &Path) -> Result<bool, LabError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(LabError::DirNotADirectory(dir.to_path_buf())),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).map_err(|e| LabError::io("cannot read", dir, e))?;
            if entries.next().is_some() {
                return Err(LabError::DirNotEmpty(dir.to_path_buf()));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LabError::io("cannot inspect", dir, e)),
    }
}

/// archive_command is a shell command line: keep the lab's path free of
/// anything the shell or postgresql.conf quoting would interpret.
fn check_path_charset(dir: &Path) -> Result<(), LabError> {
    let ok = dir.to_str().is_some_and(|s| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@,:".contains(c))
    });
    if ok {
        Ok(())
    } else {
        Err(LabError::DirUnsupportedPath(dir.to_path_buf()))
    }
}

async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while is_alive(pid) || !children_of(pid).is_empty() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

async fn build(
    opts: &InitOptions,
    pg: PgBin,
    user: ServerUser,
    guard: &mut InitGuard,
) -> Result<Lab, LabError> {
    let dir = opts
        .dir
        .canonicalize()
        .map_err(|e| LabError::io("cannot resolve", &opts.dir, e))?;
    guard.dir = dir.clone();
    check_path_charset(&dir)?;
    user.give(&dir)?;
    if !user.can_write(&dir).await {
        return Err(LabError::DirNoServerAccess {
            user: user.name.clone(),
            path: dir,
        });
    }
    let layout = LabLayout::new(&dir);
    let names: Vec<String> = (0..opts.backends).map(|i| format!("node{i}")).collect();
    guard.pg = Some((
        pg.clone(),
        user.clone(),
        names.iter().map(|n| layout.data_dir(n)).collect(),
    ));

    let ports = ports::reserve(opts.base_port, opts.backends + opts.proxies, &dir)?;
    guard.ports = ports.clone();
    let manifest = Manifest {
        pg_bin: pg.dir.clone(),
        pg_version: pg.version.clone(),
        server_user: user.name.clone(),
        sync: opts.sync,
        nodes: names
            .iter()
            .zip(&ports)
            .map(|(name, &port)| NodeSpec {
                name: name.clone(),
                port,
            })
            .collect(),
        proxies: (0..opts.proxies)
            .map(|i| ProxySpec {
                name: format!("pghalo{i}"),
                port: ports[opts.backends + i],
            })
            .collect(),
    };
    let secrets = Secrets::generate();
    secrets.write(&layout)?;
    secrets.write_pgpass(&layout, &ports)?;
    for sub in [layout.archive(), layout.log_dir()] {
        std::fs::create_dir(&sub).map_err(|e| LabError::io("cannot create", &sub, e))?;
        user.give(&sub)?;
    }
    layout.write_manifest(&manifest)?;
    let lab = Lab {
        layout,
        manifest,
        secrets,
        pg,
        user,
        pghalo_bin: None,
    };

    let primary = &lab.manifest.nodes[0];
    lab.initdb(primary).await?;
    lab.start_node(&primary.name).await?;
    lab.create_roles(primary).await?;
    let verifiers = lab.scram_verifiers(primary).await?;
    lab.write_proxy_configs(&verifiers)?;
    for standby in &lab.manifest.nodes[1..] {
        lab.basebackup(primary, standby).await?;
    }
    lab.stop(StopMode::Fast).await?;
    if lab.manifest.sync {
        lab.enable_sync()?;
    }
    tracing::info!(dir = %lab.layout.dir.display(), "lab initialised");
    Ok(lab)
}

impl Lab {
    async fn initdb(&self, node: &NodeSpec) -> Result<(), LabError> {
        tracing::info!(node = %node.name, version = %self.pg.version, "initdb");
        let data_dir = self.layout.data_dir(&node.name);
        // initdb reads the superuser password from a file the server user can
        // read; it exists only for the length of this call.
        let pwfile = self.layout.dir.join(".initdb-pw");
        layout::write_atomically(&pwfile, self.secrets.postgres.as_bytes(), 0o600)?;
        self.user.give(&pwfile)?;
        let mut cmd = self.user.command(&self.pg.tool("initdb"), &self.layout.dir);
        cmd.arg("-D").arg(&data_dir).args([
            "-U",
            SUPERUSER,
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ]);
        cmd.arg(format!("--pwfile={}", pwfile.display()));
        let result = run(cmd, "initdb", INITDB_TIMEOUT).await;
        let _ = std::fs::remove_file(&pwfile);
        result?;
        self.append_conf(&data_dir, &self.primary_conf(node))?;
        let hba = data_dir.join("pg_hba.conf");
        std::fs::write(&hba, HBA).map_err(|e| LabError::io("cannot write", &hba, e))
    }

    fn primary_conf(&self, node: &NodeSpec) -> String {
        let archive = self.layout.archive();
        format!(
            "\n# --- pghalo lab ---\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = ''\n\
             cluster_name = '{name}'\n\
             max_connections = 100\n\
             shared_buffers = 32MB\n\
             wal_level = replica\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             wal_log_hints = on\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_receiver_status_interval = 1s\n\
             archive_mode = on\n\
             archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'\n\
             password_encryption = 'scram-sha-256'\n\
             shared_preload_libraries = 'pg_stat_statements'\n\
             pg_stat_statements.track = all\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = node.port,
            name = node.name,
            archive = archive.display(),
        )
    }

    /// Synchronous replication is switched on only once the standbys exist:
    /// before that, every commit of init itself (the roles) would wait for a
    /// standby that is not there yet. Every node gets the same line so that a
    /// promoted standby keeps the same guarantee.
    fn enable_sync(&self) -> Result<(), LabError> {
        let standbys: Vec<&str> = self.manifest.nodes[1..]
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        let line = format!(
            "synchronous_standby_names = 'ANY 1 ({})'\n",
            standbys.join(", ")
        );
        for node in &self.manifest.nodes {
            self.append_conf(&self.layout.data_dir(&node.name), &line)?;
        }
        Ok(())
    }

    fn append_conf(&self, data_dir: &Path, text: &str) -> Result<(), LabError> {
        use std::io::Write;
        let path = data_dir.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| LabError::io("cannot open", &path, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| LabError::io("cannot write", &path, e))
    }

    async fn create_roles(&self, primary: &NodeSpec) -> Result<(), LabError> {
        let client = self.connect(&primary.name).await?;
        let verifier = |pw: &str| postgres_protocol::password::scram_sha_256(pw.as_bytes());
        // Verifiers are computed here, so no plain password ever reaches the
        // server (or its log, should a statement fail).
        let sql = format!(
            "ALTER ROLE {SUPERUSER} PASSWORD '{}';\n\
             CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{}';\n\
             CREATE ROLE {HEALTH_USER} WITH LOGIN PASSWORD '{}';\n\
             GRANT pg_monitor TO {HEALTH_USER};",
            verifier(&self.secrets.postgres),
            verifier(&self.secrets.repl),
            verifier(&self.secrets.pghalo),
        );
        tokio::time::timeout(SQL_TIMEOUT, client.batch_execute(&sql))
            .await
            .map_err(|_| LabError::Timeout {
                what: format!("creating the lab's roles on {}", primary.name),
                secs: SQL_TIMEOUT.as_secs(),
            })?
            .map_err(sql_error(&primary.name))
    }

    /// The lab users' SCRAM verifiers as the primary stores them.
    async fn scram_verifiers(&self, primary: &NodeSpec) -> Result<Vec<(String, String)>, LabError> {
        let client = self.connect(&primary.name).await?;
        let rows = client
            .query(
                "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = ANY($1) ORDER BY rolname",
                &[&proxies::PROXY_USERS.to_vec()],
            )
            .await
            .map_err(sql_error(&primary.name))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn basebackup(&self, primary: &NodeSpec, standby: &NodeSpec) -> Result<(), LabError> {
        tracing::info!(node = %standby.name, from = %primary.name, "pg_basebackup");
        let data_dir = self.layout.data_dir(&standby.name);
        let mut cmd = self
            .user
            .command(&self.pg.tool("pg_basebackup"), &self.layout.dir);
        cmd.arg("-D").arg(&data_dir);
        cmd.arg("-d").arg(format!(
            "host={} port={} user={REPLICATION_USER} application_name={}",
            layout::HOST,
            primary.port,
            standby.name
        ));
        cmd.args([
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-C",
            "-S",
            &standby.name,
        ]);
        // The environment, not argv: argv is visible to every user in ps.
        cmd.env("PGPASSWORD", &self.secrets.repl);
        run(
            cmd,
            &format!("pg_basebackup for {}", standby.name),
            BASEBACKUP_TIMEOUT,
        )
        .await?;
        self.append_conf(
            &data_dir,
            &format!(
                "\n# --- pghalo lab: {} ---\nport = {}\ncluster_name = '{}'\n",
                standby.name, standby.port, standby.name
            ),
        )
    }
}

const HBA: &str = "\
# pghalo lab: every connection authenticates with SCRAM-SHA-256.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 scram-sha-256
host    all          all   127.0.0.1/32  scram-sha-256
host    all          all   ::1/128       scram-sha-256
local   replication  all                 scram-sha-256
host    replication  all   127.0.0.1/32  scram-sha-256
host    replication  all   ::1/128       scram-sha-256
";
