//! The client side of pghalo: listeners, one task per client, the startup
//! and authentication phases, and the session that relays a client's
//! traffic to a pooled server connection.
//!
//! Owns: client sockets, the cancel map. Must not: dial servers itself (it
//! asks `pool`) or decide topology.

mod cancel;
mod client_auth;
mod do_block;
mod error;
mod relay;
mod route;
mod session;
mod startup;
mod startup_params;
mod tx_policy;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use pghalo_protocol::SqlState;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

pub use client_auth::{AuthFiles, Peer, TlsState};
pub use error::ClientError;
pub use route::Routing;

use crate::backend::ServerAddr;
use crate::net::Stream;
use crate::net::tls::ServerTls;
use crate::pool::{PoolSettings, Pools};
use cancel::CancelMap;
use startup::{Opening, StartupFailure, read_opening};
use workers::SessionWorkers;

/// What the client side works with; replaced whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// Backends by node id.
    pub backends: Vec<ServerAddr>,
    /// The node every session goes to (routing arrives with the router).
    pub primary: usize,
    /// None: no limit.
    pub authentication_timeout: Option<Duration>,
    pub max_client_connections: usize,
    /// Largest message a client may send.
    pub max_message_len: usize,
    /// When a server connection returns to the pool.
    pub pool_mode: crate::config::PoolMode,
    /// pgpool's client_idle_limit; None: no limit.
    pub client_idle_limit: Option<Duration>,
    /// How long a request that needs a primary that is down waits for one.
    pub wait_for_primary: Duration,
    /// pgpool failover_on_backend_error: a node a session cannot reach (or
    /// loses mid-request) has every node checked at once. Never a failover
    /// by itself: the failure must still be confirmed.
    pub check_on_backend_error: bool,
    /// pgpool failover_on_backend_shutdown: a server ending a session with
    /// admin or crash shutdown (57P01, 57P02) has every node checked at
    /// once, likewise.
    pub check_on_backend_shutdown: bool,
}

/// Where the topology comes from, set once by the daemon.
#[derive(Default)]
struct TopologySource(std::sync::OnceLock<crate::cluster::ClusterView>);

impl std::fmt::Debug for TopologySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "TopologySource(cluster)"
        } else {
            "TopologySource(config)"
        })
    }
}

/// One pghalo instance's client side, shared by every client task.
#[derive(Debug)]
pub struct Proxy {
    settings: ArcSwap<ProxySettings>,
    auth: ArcSwap<AuthFiles>,
    pub pools: Pools,
    cancels: Arc<CancelMap>,
    /// One permit per client connection allowed in.
    clients: Arc<Semaphore>,
    /// The published topology, once the daemon has one: sessions go to the
    /// node it names primary.
    cluster: TopologySource,
    /// Answers SSLRequests when set; the daemon swaps it on reload, and a
    /// handshake uses the one it loaded when it began.
    tls: arc_swap::ArcSwapOption<ServerTls>,
    /// Read/write routing; swapped on reload, read per request.
    routing: ArcSwap<Routing>,
    /// Statements sent to each node, by kind (SHOW POOL_NODES,
    /// POOL_BACKEND_STATS).
    counters: Box<[NodeCounters]>,
    /// Client sessions past authentication.
    sessions: std::sync::atomic::AtomicUsize,
    /// Asks the replication monitor for checks now (a backend a session
    /// could not reach).
    monitor: std::sync::OnceLock<crate::health::MonitorWaker>,
    /// Asks for pg_proc to be read again (after a session's DDL).
    catalog_refresh: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

/// What was sent to one node. Relaxed atomics: statistics, not
/// synchronisation.
#[derive(Debug, Default)]
pub struct NodeCounters {
    pub select: AtomicU64,
    pub insert: AtomicU64,
    pub update: AtomicU64,
    pub delete: AtomicU64,
    pub ddl: AtomicU64,
    pub other: AtomicU64,
    /// ErrorResponses the node sent, by severity.
    pub error: AtomicU64,
    pub fatal: AtomicU64,
    pub panic: AtomicU64,
}

impl NodeCounters {
    /// The values now, as the SHOW commands print them.
    pub fn snapshot(&self) -> crate::admin::show::NodeCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::admin::show::NodeCounts {
            select: get(&self.select),
            insert: get(&self.insert),
            update: get(&self.update),
            delete: get(&self.delete),
            ddl: get(&self.ddl),
            other: get(&self.other),
            panic: get(&self.panic),
            fatal: get(&self.fatal),
            error: get(&self.error),
        }
    }

    fn count(&self, kind: crate::router::StatementKind) {
        use crate::router::StatementKind as K;
        let counter = match kind {
            K::Select => &self.select,
            K::Insert => &self.insert,
            K::Update => &self.update,
            K::Delete => &self.delete,
            K::Ddl => &self.ddl,
            K::Merge | K::Transaction | K::Other => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Proxy {
    pub fn new(settings: ProxySettings, auth: AuthFiles, pool: PoolSettings) -> Arc<Proxy> {
        let nodes = settings.backends.len();
        Arc::new(Proxy {
            clients: Arc::new(Semaphore::new(settings.max_client_connections)),
            settings: ArcSwap::from_pointee(settings),
            auth: ArcSwap::from_pointee(auth),
            pools: Pools::new(pool),
            cancels: Arc::new(CancelMap::default()),
            counters: (0..nodes).map(|_| NodeCounters::default()).collect(),
            cluster: TopologySource::default(),
            tls: arc_swap::ArcSwapOption::empty(),
            routing: ArcSwap::from_pointee(Routing::primary_only()),
            sessions: std::sync::atomic::AtomicUsize::new(0),
            catalog_refresh: std::sync::OnceLock::new(),
            monitor: std::sync::OnceLock::new(),
        })
    }

    /// TLS for new client connections from now on (None: SSLRequests are
    /// answered 'N'); sessions already encrypted keep theirs.
    pub fn set_tls(&self, tls: Option<Arc<ServerTls>>) {
        self.tls.store(tls);
    }

    pub fn settings(&self) -> Arc<ProxySettings> {
        self.settings.load_full()
    }

    /// How requests are routed from now on (each session reads it per
    /// request).
    pub fn set_routing(&self, routing: Routing) {
        self.routing.store(Arc::new(routing));
    }

    /// Where to ask for function volatility to be read again.
    pub fn set_catalog_refresh(&self, refresh: Arc<tokio::sync::Notify>) {
        let _ = self.catalog_refresh.set(refresh);
    }

    /// A session's DDL committed: functions may have come or changed.
    fn catalog_changed(&self) {
        if let Some(refresh) = self.catalog_refresh.get() {
            refresh.notify_one();
        }
    }

    pub(crate) fn routing(&self) -> arc_swap::Guard<Arc<Routing>> {
        self.routing.load()
    }

    /// The latest published topology, once the daemon has one.
    pub fn topology(&self) -> Option<Arc<crate::cluster::ClusterSnapshot>> {
        self.cluster.0.get().map(|view| view.snapshot())
    }

    /// Per-node statement counters, by node id.
    pub fn counters(&self) -> &[NodeCounters] {
        &self.counters
    }

    fn count(&self, node: usize, kind: crate::router::StatementKind) {
        if let Some(counters) = self.counters.get(node) {
            counters.count(kind);
        }
    }

    fn count_error(&self, node: usize, severity: Option<pghalo_protocol::backend::Severity>) {
        use pghalo_protocol::backend::Severity;
        if let Some(counters) = self.counters.get(node) {
            let counter = match severity {
                Some(Severity::Panic) => &counters.panic,
                Some(Severity::Fatal) => &counters.fatal,
                _ => &counters.error,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Client sessions past authentication right now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Lets sessions follow the node table the replication monitor keeps.
    pub fn set_cluster(&self, view: crate::cluster::ClusterView) {
        let _ = self.cluster.0.set(view);
    }

    /// The node a new session's writes go to: the primary the latest
    /// snapshot names, else (no monitor, or no answer yet) the configured
    /// one.
    pub fn primary_node(&self) -> usize {
        self.cluster
            .0
            .get()
            .and_then(|view| view.snapshot().primary)
            .map_or_else(|| self.settings.load().primary, |id| id.index())
    }

    /// `node`, or, when `node` is the primary and down (or no primary is
    /// known after one was), the primary once one is up again (a failover,
    /// or the node back), waiting at most `wait_for_primary`; after that
    /// `node` all the same, and the caller gets the usual connection error.
    pub(crate) async fn primary_when_up(&self, node: usize) -> usize {
        let Some(view) = self.cluster.0.get() else {
            return node;
        };
        let snapshot = view.snapshot();
        // No primary any more (roles were seen, so this is not the start):
        // a failover is under way; the configured first node would be a
        // guess, and may be the one that hung.
        let no_primary = snapshot.primary.is_none() && snapshot.epoch > crate::cluster::Epoch::ZERO;
        let down_primary = no_primary
            || (snapshot.primary == Some(crate::cluster::NodeId(node))
                && snapshot
                    .node(crate::cluster::NodeId(node))
                    .is_some_and(|n| n.status == crate::cluster::Status::Down));
        let limit = self.settings.load().wait_for_primary;
        if !down_primary || limit.is_zero() {
            return node;
        }
        let up = view
            .wait_for(limit, |s| {
                s.primary_node()
                    .is_some_and(|p| p.status == crate::cluster::Status::Up)
            })
            .await;
        match up {
            Ok(s) => s.primary.map_or(node, |p| p.index()),
            Err(_) => node,
        }
    }

    /// Lets sessions ask for immediate checks.
    pub fn set_monitor(&self, waker: crate::health::MonitorWaker) {
        let _ = self.monitor.set(waker);
    }

    /// A server ended a session with admin or crash shutdown: has every
    /// node checked now (failover_on_backend_shutdown), without waiting.
    pub(crate) fn backend_shut_down(&self) {
        if self.settings.load().check_on_backend_shutdown
            && let Some(monitor) = self.monitor.get()
        {
            monitor.check_now();
        }
    }

    /// A session could not reach `node`: has every node checked now, waits
    /// for `node`'s check, and, when it is the primary and down, for a
    /// primary that is up (see [`Self::primary_when_up`]). The node to try
    /// next: `node` itself when nothing better is known.
    pub(crate) async fn after_unreachable(&self, node: usize) -> usize {
        let (Some(view), Some(monitor)) = (self.cluster.0.get(), self.monitor.get()) else {
            return node;
        };
        if !self.settings.load().check_on_backend_error {
            return self.primary_when_up(node).await;
        }
        let asked = std::time::SystemTime::now();
        monitor.check_now();
        let id = crate::cluster::NodeId(node);
        // A check answers within health_check_timeout; wait_for_primary bounds
        // the whole wait the client sees.
        let limit = self.settings.load().wait_for_primary;
        let _ = view
            .wait_for(limit, |s| {
                s.node(id)
                    .is_some_and(|n| n.last_check.is_some_and(|at| at >= asked))
            })
            .await;
        self.primary_when_up(node).await
    }

    /// Applies a reload: new clients see the new files and settings at once;
    /// sessions already running keep their server connections.
    pub fn reload(&self, settings: ProxySettings, auth: AuthFiles, pool: PoolSettings) {
        let old = self.settings.load().max_client_connections;
        let new = settings.max_client_connections;
        if new > old {
            self.clients.add_permits(new - old);
        } else if new < old {
            let clients = self.clients.clone();
            // Shrinking takes permits as clients leave; nobody is cut off.
            tokio::spawn(async move {
                if let Ok(permits) = clients.acquire_many_owned((old - new) as u32).await {
                    permits.forget();
                }
            });
        }
        self.settings.store(Arc::new(settings));
        self.auth.store(Arc::new(auth));
        self.pools.update_settings(pool);
    }

    /// Accepts TCP clients until `shutdown` turns true, and starts each
    /// session on the least busy worker. Runs on a worker itself.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        workers: Arc<SessionWorkers>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("cannot serve a TCP listener: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, addr)) => {
                        self.start_session(&workers, Stream::tcp(socket), Peer::Tcp(addr));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Accepts Unix-socket clients until `shutdown` turns true; as
    /// [`serve_tcp`](Self::serve_tcp).
    pub async fn serve_unix(
        self: Arc<Self>,
        listener: std::os::unix::net::UnixListener,
        workers: Arc<SessionWorkers>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let listener = match UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("cannot serve a Unix-socket listener: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => {
                        self.start_session(&workers, Stream::Unix(socket), Peer::Unix);
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Starts an accepted client's session on the least busy worker.
    fn start_session(self: &Arc<Self>, workers: &SessionWorkers, stream: Stream, peer: Peer) {
        let worker = workers.pick();
        let proxy = self.clone();
        if workers.is_current(worker) {
            workers.spawn_session(worker, proxy.handle(stream, peer));
            return;
        }
        workers.spawn_session(worker, async move {
            // Registered with the accepting worker until now; this runs on
            // the one that takes the client over.
            match stream.rehome() {
                Ok(stream) => proxy.handle(stream, peer).await,
                Err(e) => tracing::warn!(%peer, "cannot take a client over: {e}"),
            }
        });
    }

    /// One client, from its first byte to its last.
    async fn handle(self: Arc<Self>, stream: Stream, peer: Peer) {
        let permit = self.clients.clone().try_acquire_owned().ok();
        let settings = self.settings();
        // Startup packets are small; the relay grows the buffer if the
        // client streams.
        let mut buf = BytesMut::with_capacity(1024);
        let now = tokio::time::Instant::now();
        let deadline = settings
            .authentication_timeout
            .and_then(|limit| now.checked_add(limit))
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));

        let tls = self.tls.load_full();
        let (mut stream, opening) = match tokio::time::timeout_at(
            deadline,
            read_opening(stream, &mut buf, tls.as_deref()),
        )
        .await
        {
            Ok(Ok(opened)) => opened,
            Ok(Err(StartupFailure::Refuse(mut stream, error))) => {
                return refuse(&mut stream, &error).await;
            }
            Ok(Err(StartupFailure::Gone)) => return,
            Err(_) => {
                tracing::debug!(%peer, "startup packet not received within authentication_timeout");
                return;
            }
        };
        let startup = match opening {
            Opening::Cancel { pid, key } => return self.cancels.cancel(pid, &key).await,
            Opening::Startup(msg) => msg,
        };
        let Some(_permit) = permit else {
            let error = ClientError::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            );
            return refuse(&mut stream, &error).await;
        };
        let tls = TlsState::of(&stream, tls.as_deref());
        let auth = self.auth.load_full();
        let who = match tokio::time::timeout_at(
            deadline,
            client_auth::authenticate(&mut stream, &mut buf, &startup, peer, &tls, &auth),
        )
        .await
        {
            Ok(Ok(who)) => who,
            Ok(Err(error)) => return refuse(&mut stream, &error).await,
            Err(_) => {
                let error =
                    ClientError::fatal(SqlState::PROTOCOL_VIOLATION, "authentication timeout");
                return refuse(&mut stream, &error).await;
            }
        };
        drop(auth);
        let Some(cancel) = self.cancels.register() else {
            let error =
                ClientError::fatal(SqlState::INTERNAL_ERROR, "cannot allocate a cancel key");
            return refuse(&mut stream, &error).await;
        };
        let user = who.user.clone();
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let outcome = session::run(self.clone(), &mut stream, buf, who, startup, cancel).await;
        self.sessions.fetch_sub(1, Ordering::Relaxed);
        if let Err(error) = outcome {
            tracing::info!(%user, %peer, "session refused: {}", error.message);
            refuse(&mut stream, &error).await;
        }
    }
}

async fn refuse(stream: &mut Stream, error: &ClientError) {
    let mut out = BytesMut::new();
    error.write(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
