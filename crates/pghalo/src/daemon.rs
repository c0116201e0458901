//! `pghalo run`: reads the configuration, binds the listeners, runs the
//! proxy, applies SIGHUP reloads and stops on SIGINT/SIGTERM. The wiring
//! between modules lives here so that each module stays ignorant of the
//! others' construction.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::admin::ctl::{CtlContext, CtlServer};
use crate::backend::{BackendTls, ServerAddr};
use crate::cluster::{Cluster, Epoch};
use crate::config::hba::HbaRules;
use crate::config::passwd::PasswordFile;
use crate::config::{
    BackendHost, BackendTlsMode, Config, ConfigError, ListenAddress, ReloadPlan, reload_plan,
};
use crate::coordinator::{Solo, StateFile, StateKeeper};
use crate::failover::{FailoverSettings, FailoverTask};
use crate::health::{CatalogLoader, MonitorSettings, ReplicationMonitor};
use crate::net::tls::{ClientTls, ServerTls, TlsError};
use crate::pool::PoolSettings;
use crate::proxy::workers::{self, SessionWorkers};
use crate::proxy::{AuthFiles, Proxy, ProxySettings};
use crate::router::CatalogVolatility;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    AuthFile(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot install the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("pid file {} names process {pid}, which is running: is another pghalo using this configuration?", .path.display())]
    AlreadyRunning { path: PathBuf, pid: i32 },
    #[error("cannot write the pid file {}: {source}", .path.display())]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} sets no [daemon] pid_file_name, so there is no way to find the running pghalo", .0.display())]
    NoPidFile(PathBuf),
    #[error("no pghalo is running for {}: {why}", .path.display())]
    NotRunning { path: PathBuf, why: String },
    #[error("pghalo (pid {0}) did not stop within 30 s")]
    StopTimeout(i32),
    #[error("cannot start the session worker threads: {0}")]
    Workers(std::io::Error),
}

/// A running pghalo instance.
pub struct Daemon {
    path: PathBuf,
    config: Arc<Config>,
    proxy: Arc<Proxy>,
    /// Turning this true stops every listener.
    shutdown: watch::Sender<bool>,
    tcp_addrs: Vec<SocketAddr>,
    unix_paths: Vec<PathBuf>,
    /// The node table the replication monitor feeds; lives as long as
    /// the daemon.
    cluster: Cluster,
    /// Stops with `shutdown`.
    monitor: ReplicationMonitor,
    /// Function volatility from pg_proc, shared by every routing
    /// configuration (reloads keep it).
    volatility: Arc<CatalogVolatility>,
    /// Fills `volatility`; stops with `shutdown` or when dropped.
    _catalog: CatalogLoader,
    /// Where topology decisions are committed.
    coordinator: Arc<Solo>,
    /// Acts when the primary fails; stops when dropped.
    _failover: FailoverTask,
    /// Writes the state file; stops when dropped.
    _state_keeper: Option<StateKeeper>,
    /// `pghalo ctl`'s socket; removed when dropped.
    _ctl: Option<CtlServer>,
}

impl Daemon {
    /// Loads `path`, binds every listener (all or none), and starts serving.
    pub async fn start(path: &Path) -> Result<Daemon, DaemonError> {
        let config = Arc::new(Config::load(path)?);
        let auth = load_auth(&config)?;
        let monitor_settings = monitor_settings(&config, &auth)?;
        let failover_settings = FailoverSettings::from_config(&config, &auth.passwd)
            .map_err(|e| DaemonError::AuthFile(e.to_string()))?;
        if let Some(pid_file) = &config.daemon.pid_file_name {
            // A launcher (the lab) may have written our own pid already.
            if let Some(pid) = running_pid(pid_file).filter(|&pid| pid != std::process::id() as i32)
            {
                return Err(DaemonError::AlreadyRunning {
                    path: pid_file.clone(),
                    pid,
                });
            }
        }
        let tls = load_tls(&config)?;
        if tls.backend != BackendTls::Disable && config.tls.backend_ca_file.is_none() {
            tracing::warn!(
                "tls.backend = {} without tls.backend_ca_file: backend connections are encrypted, but the servers' certificates are not verified",
                config.tls.backend
            );
        }
        let proxy = Proxy::new(
            proxy_settings(&config, &tls.backend),
            auth,
            pool_settings(&config),
        );
        proxy.set_tls(tls.server);
        let volatility = Arc::new(CatalogVolatility::default());
        proxy.set_routing(crate::proxy::Routing::from_config(
            &config,
            volatility.clone(),
        ));
        let (shutdown, watcher) = watch::channel(false);
        let mut tcp = Vec::new();
        for addr in listen_addrs(&config) {
            let listener =
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| DaemonError::Listen {
                        addr: addr.clone(),
                        source,
                    })?;
            tcp.push(listener);
        }
        let mut unix = Vec::new();
        for dir in &config.listen.unix_socket_directories {
            let path = dir.join(format!(".s.PGSQL.{}", config.listen.port));
            let shown = path.display().to_string();
            // A socket file left by a previous run that nothing answers on.
            if std::os::unix::net::UnixStream::connect(&path).is_err() {
                let _ = std::fs::remove_file(&path);
            }
            let listener = UnixListener::bind(&path).map_err(|source| DaemonError::Listen {
                addr: shown.clone(),
                source,
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                &path,
                std::fs::Permissions::from_mode(config.listen.unix_socket_permissions.bits()),
            )
            .map_err(|source| DaemonError::Listen {
                addr: shown,
                source,
            })?;
            unix.push((listener, path));
        }
        let tcp_addrs = tcp.iter().filter_map(|l| l.local_addr().ok()).collect();
        tokio::spawn(maintain_pools(proxy.clone(), watcher.clone()));
        let state_file = config.daemon.state_file.as_deref().map(StateFile::new);
        let decided = match state_file.as_ref().map(StateFile::load) {
            Some(Ok(decided)) => decided,
            Some(Err(e)) => {
                tracing::error!(
                    "{e}; starting without it (a former primary is still kept out by its timeline)"
                );
                None
            }
            None => None,
        };
        let cluster = match &decided {
            Some(d) => {
                tracing::info!(
                    primary = d.primary.as_ref().map(|p| p.name.as_str()),
                    detached = ?d.detached,
                    epoch = d.epoch,
                    "taking over the decided state"
                );
                Cluster::start_decided(
                    &config.backends,
                    d.primary.as_ref().map(|p| (p.name.as_str(), p.timeline)),
                    &d.detached,
                    &d.detached_by_hand,
                )
            }
            None => Cluster::start(&config.backends),
        };
        proxy.set_cluster(cluster.view());
        let monitor =
            ReplicationMonitor::start(monitor_settings, cluster.observer(), watcher.clone());
        let catalog = CatalogLoader::start(
            monitor.subscribe(),
            cluster.view(),
            volatility.clone(),
            watcher.clone(),
        );
        proxy.set_catalog_refresh(catalog.refresher());
        proxy.set_monitor(monitor.waker());
        let coordinator = Arc::new(match decided {
            Some(d) => Solo::restore(Epoch(d.epoch), d.restored_events()),
            None => Solo::new(),
        });
        let state_keeper = state_file.map(|file| {
            StateKeeper::start(file, cluster.view(), coordinator.clone(), watcher.clone())
        });
        let failover = FailoverTask::start(
            failover_settings,
            cluster.view(),
            cluster.observer(),
            monitor.waker(),
            monitor.subscribe(),
            coordinator.clone(),
            watcher.clone(),
        );
        let ctl = match &config.daemon.ctl_socket {
            Some(path) => Some(
                CtlServer::start(
                    path,
                    CtlContext {
                        view: cluster.view(),
                        observer: cluster.observer(),
                        coordinator: coordinator.clone(),
                        failover: failover.handle(),
                    },
                    watcher.clone(),
                )
                .map_err(|source| DaemonError::Listen {
                    addr: path.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let workers = Arc::new(
            SessionWorkers::start(match config.daemon.worker_threads {
                0 => workers::default_count(),
                n => n as usize,
            })
            .map_err(DaemonError::Workers)?,
        );
        // Each accept loop runs on a worker, which keeps the clients it
        // accepts while it is no busier than the others.
        let mut next_worker = 0;
        for listener in tcp {
            let addr = listener
                .local_addr()
                .map_or_else(|_| "a TCP address".to_string(), |a| a.to_string());
            let listener = listener
                .into_std()
                .map_err(|source| DaemonError::Listen { addr, source })?;
            let serve = proxy
                .clone()
                .serve_tcp(listener, workers.clone(), watcher.clone());
            workers.spawn_on(next_worker, serve);
            next_worker += 1;
        }
        let mut unix_paths = Vec::new();
        for (listener, path) in unix {
            let listener = listener.into_std().map_err(|source| DaemonError::Listen {
                addr: path.display().to_string(),
                source,
            })?;
            let serve = proxy
                .clone()
                .serve_unix(listener, workers.clone(), watcher.clone());
            workers.spawn_on(next_worker, serve);
            next_worker += 1;
            unix_paths.push(path);
        }
        if let Some(pid_file) = &config.daemon.pid_file_name {
            std::fs::write(pid_file, format!("{}\n", std::process::id())).map_err(|source| {
                DaemonError::PidFile {
                    path: pid_file.clone(),
                    source,
                }
            })?;
        }
        tracing::info!(config = %path.display(), listen = ?tcp_addrs, "pghalo is serving");
        Ok(Daemon {
            path: path.to_path_buf(),
            config,
            proxy,
            shutdown,
            tcp_addrs,
            unix_paths,
            cluster,
            monitor,
            volatility,
            _catalog: catalog,
            coordinator,
            _failover: failover,
            _state_keeper: state_keeper,
            _ctl: ctl,
        })
    }

    /// The committed topology decisions.
    pub fn coordinator(&self) -> &Solo {
        &self.coordinator
    }

    /// The node table: roles, statuses and lag as the replication monitor
    /// sees them.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Where TCP clients can connect.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Re-reads the configuration and the hba and password files. What can
    /// change live does at once, without dropping clients; what needs a
    /// restart is reported and left as it was. A file with an error changes
    /// nothing: that includes the TLS certificate, key and CA files, which
    /// are read again here and apply to handshakes that start afterwards.
    pub fn reload(&mut self) -> Result<ReloadPlan, DaemonError> {
        let new = Config::load(&self.path)?;
        let auth = load_auth(&new)?;
        let plan = reload_plan(&self.config, &new);
        let applied = Arc::new(crate::config::apply_live(&self.config, &new));
        let tls = load_tls(&applied)?;
        let monitor_settings = monitor_settings(&applied, &auth)?;
        self.proxy.reload(
            proxy_settings(&applied, &tls.backend),
            auth,
            pool_settings(&applied),
        );
        self.proxy.set_tls(tls.server);
        self.proxy.set_routing(crate::proxy::Routing::from_config(
            &applied,
            self.volatility.clone(),
        ));
        self.monitor.reconfigure(monitor_settings);
        self.cluster.update_backends(&applied.backends);
        self.config = applied;
        Ok(plan)
    }

    /// Stops accepting clients; sessions already running finish on their own.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        for path in &self.unix_paths {
            let _ = std::fs::remove_file(path);
        }
        if let Some(pid_file) = &self.config.daemon.pid_file_name
            && running_pid(pid_file) == Some(std::process::id() as i32)
        {
            let _ = std::fs::remove_file(pid_file);
        }
    }

    /// Serves until SIGINT or SIGTERM, reloading on SIGHUP.
    pub async fn run_until_signalled(mut self) -> Result<(), DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).map_err(|e| DaemonError::Signal("SIGHUP", e))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| DaemonError::Signal("SIGINT", e))?;
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
        loop {
            tokio::select! {
                _ = hup.recv() => match self.reload() {
                    Ok(plan) => {
                        for change in &plan.live {
                            tracing::info!("reload applied: {change}");
                        }
                        for change in &plan.restart_required {
                            tracing::warn!("reload: {change} needs a restart; keeping the running value");
                        }
                    }
                    Err(e) => tracing::error!("reload refused, nothing changed: {e}"),
                },
                _ = int.recv() => break,
                _ = term.recv() => break,
            }
        }
        tracing::info!("pghalo is stopping");
        self.stop();
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pid in `pid_file`, if that process is alive.
fn running_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::process::is_alive(pid).then_some(pid)
}

/// Signals the pghalo running with the configuration at `path` (found
/// through its pid file): SIGHUP for `pghalo reload`, SIGTERM for
/// `pghalo stop` (which then waits for it to exit).
pub async fn signal_running(
    path: &Path,
    signal: nix::sys::signal::Signal,
) -> Result<i32, DaemonError> {
    let config = Config::load(path)?;
    let pid_file = config
        .daemon
        .pid_file_name
        .ok_or_else(|| DaemonError::NoPidFile(path.to_path_buf()))?;
    let pid = running_pid(&pid_file).ok_or_else(|| DaemonError::NotRunning {
        path: path.to_path_buf(),
        why: format!("{} is missing or names no live process", pid_file.display()),
    })?;
    let target = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(target, signal).map_err(|e| DaemonError::NotRunning {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if signal == nix::sys::signal::Signal::SIGTERM {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while crate::process::is_alive(pid) {
            if std::time::Instant::now() >= deadline {
                return Err(DaemonError::StopTimeout(pid));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Ok(pid)
}

/// Pool upkeep (min_idle, idle timeouts) until shutdown.
async fn maintain_pools(proxy: Arc<Proxy>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => proxy.pools.maintain().await,
            _ = shutdown.changed() => return,
        }
    }
}

/// `pghalo check-config`: everything `run` would read, checked, and a
/// one-paragraph summary of it.
pub fn check_config(path: &Path) -> Result<String, DaemonError> {
    let config = Config::load(path)?;
    let auth = load_auth(&config)?;
    monitor_settings(&config, &auth)?;
    FailoverSettings::from_config(&config, &auth.passwd)
        .map_err(|e| DaemonError::AuthFile(e.to_string()))?;
    load_tls(&config)?;
    let backends: Vec<String> = config
        .backends
        .iter()
        .map(|b| format!("{} ({}:{})", b.name, b.host, b.port))
        .collect();
    Ok(format!(
        "{}: OK; listening on {:?} port {}, {} pooling, backends: {}",
        path.display(),
        listen_addrs(&config),
        config.listen.port,
        config.pool.mode,
        backends.join(", ")
    ))
}

fn load_auth(config: &Config) -> Result<AuthFiles, DaemonError> {
    let hba =
        HbaRules::load(&config.auth.pool_hba).map_err(|e| DaemonError::AuthFile(e.to_string()))?;
    let passwd = match &config.auth.pool_passwd {
        Some(path) => PasswordFile::load(path, config.auth.pool_key_file.as_deref())
            .map_err(|e| DaemonError::AuthFile(e.to_string()))?,
        None => PasswordFile::default(),
    };
    Ok(AuthFiles {
        hba,
        passwd,
        mock_secret: rand::random(),
        plain_verifiers: Default::default(),
    })
}

/// The replication monitor's settings, its password resolved (pool_passwd
/// looked up, AES decrypted): a password that cannot be used fails here.
fn monitor_settings(config: &Config, auth: &AuthFiles) -> Result<MonitorSettings, DaemonError> {
    MonitorSettings::from_config(config, &auth.passwd)
        .map_err(|e| DaemonError::AuthFile(e.to_string()))
}

/// The `[tls]` files, read and checked.
struct TlsFiles {
    /// For clients' SSLRequests; None when `tls.enabled` is off.
    server: Option<Arc<ServerTls>>,
    backend: BackendTls,
}

fn load_tls(config: &Config) -> Result<TlsFiles, DaemonError> {
    let tls = &config.tls;
    let server = match (tls.enabled, &tls.cert_file, &tls.key_file) {
        (false, _, _) => None,
        (true, Some(cert), Some(key)) => Some(Arc::new(ServerTls::load(
            cert,
            key,
            tls.ca_file.as_deref(),
        )?)),
        // Validation refuses this already; a clear error beats trusting it.
        (true, _, _) => {
            return Err(TlsError::Config(
                "tls.enabled needs both tls.cert_file and tls.key_file".into(),
            )
            .into());
        }
    };
    let ca = tls.backend_ca_file.as_deref();
    let backend = match tls.backend {
        BackendTlsMode::Disable => BackendTls::Disable,
        BackendTlsMode::Prefer => BackendTls::Prefer(ClientTls::load(ca)?),
        BackendTlsMode::Require => BackendTls::Require(ClientTls::load(ca)?),
    };
    Ok(TlsFiles { server, backend })
}

fn listen_addrs(config: &Config) -> Vec<String> {
    let port = config.listen.port;
    let mut addrs = Vec::new();
    for addr in &config.listen.listen_addresses {
        match addr {
            ListenAddress::Any => {
                addrs.push(format!("0.0.0.0:{port}"));
                addrs.push(format!("[::]:{port}"));
            }
            ListenAddress::Ip(ip) => addrs.push(SocketAddr::new(*ip, port).to_string()),
            ListenAddress::Host(host) => addrs.push(format!("{host}:{port}")),
        }
    }
    addrs
}

pub fn proxy_settings(config: &Config, backend_tls: &BackendTls) -> ProxySettings {
    let backends: Vec<ServerAddr> = config
        .backends
        .iter()
        .map(|b| ServerAddr {
            host: match &b.host {
                BackendHost::Tcp(host) => host.clone(),
                BackendHost::Unix(dir) => dir.display().to_string(),
            },
            port: b.port,
            tls: backend_tls.clone(),
        })
        .collect();
    let primary = config
        .backends
        .iter()
        .position(|b| b.flags.always_primary)
        .unwrap_or(0);
    ProxySettings {
        backends,
        primary,
        authentication_timeout: config.listen.authentication_timeout.limit(),
        max_client_connections: config.listen.max_client_connections as usize,
        max_message_len: 1 << 30,
        pool_mode: config.pool.mode,
        client_idle_limit: config.listen.client_idle_limit.limit(),
        wait_for_primary: config.failover.wait_for_primary.as_duration(),
        check_on_backend_error: config.failover.failover_on_backend_error,
        check_on_backend_shutdown: config.failover.failover_on_backend_shutdown,
    }
}

/// What "0 = no limit" becomes where a deadline is needed.
const FOREVER: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

pub fn pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        max_pool_size: config.pool.max_pool_size as usize,
        min_idle: config.pool.min_idle as usize,
        max_lifetime: config.pool.max_lifetime.limit(),
        idle_timeout: config.pool.idle_timeout.limit(),
        checkout_timeout: config.pool.checkout_timeout.as_duration(),
        connect_timeout: config.pool.connect_timeout.limit().unwrap_or(FOREVER),
        reset_queries: config.pool.reset_query_list.0.clone(),
    }
}
