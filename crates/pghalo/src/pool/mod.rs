//! Server connections per (node, database, user).
//!
//! A connection leaves the pool only inside a [`PooledConnection`] guard,
//! which holds one of the shard's permits. The guard goes back into the pool
//! only through [`PooledConnection::release`], which checks that the
//! connection is clean (ReadyForQuery seen with status idle) and resets it;
//! a guard dropped any other way closes its connection, so a connection a
//! vanished client left mid-request can never reach another client.
//! Waiters queue on a fair semaphore: first come, first served, each for at
//! most `checkout_timeout`.
//!
//! Owns: server connections at rest. Must not: change node health.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pghalo_protocol::SqlState;
use pghalo_protocol::backend::TransactionStatus;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendCredentials, BackendError, ServerAddr, ServerConnection};

/// The limits a pool works within (from the `[pool]` configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub max_pool_size: usize,
    /// Idle connections kept open per pool (opened ahead of demand once a
    /// client has shown the credentials to open them).
    pub min_idle: usize,
    pub max_lifetime: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    /// Run, in order, before a session-mode connection is reused.
    pub reset_queries: Vec<String>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_pool_size: 20,
            min_idle: 0,
            max_lifetime: Some(Duration::from_secs(3600)),
            idle_timeout: Some(Duration::from_secs(600)),
            checkout_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reset_queries: vec!["DISCARD ALL".to_string()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: usize,
    pub database: String,
    pub user: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection for user \"{user}\" became free within {} s (max_pool_size is {size})", .waited.as_secs())]
    Exhausted {
        user: String,
        size: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PoolError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            PoolError::Exhausted { .. } => SqlState::TOO_MANY_CONNECTIONS,
            PoolError::Backend(e) => e.sqlstate(),
        }
    }
}

/// Every pool of one pghalo instance.
#[derive(Debug)]
pub struct Pools {
    shards: Mutex<HashMap<PoolKey, Arc<Shard>>>,
    settings: arc_swap::ArcSwap<PoolSettings>,
    /// Server-side names of statements some server has accepted (transaction
    /// pooling): preparing one of these again can be answered without
    /// waiting for a server connection.
    known_statements: Mutex<std::collections::HashSet<String>>,
}

#[derive(Debug)]
struct Shard {
    key: PoolKey,
    /// Where and as whom new connections are opened: the last client's
    /// view, so maintenance can open connections ahead of demand.
    target: Mutex<Option<(ServerAddr, BackendCredentials)>>,
    /// Idle connections, most recently used last (reused first among those
    /// registered with the checking-out worker: warm caches).
    idle: Mutex<Vec<ServerConnection>>,
    /// One permit per connection that may exist, idle or checked out.
    permits: Arc<Semaphore>,
    size: usize,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Pools {
        Pools {
            shards: Mutex::new(HashMap::new()),
            settings: arc_swap::ArcSwap::from_pointee(settings),
            known_statements: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// New limits apply to connections checked out from now on; a changed
    /// pool size applies to shards created from now on.
    pub fn update_settings(&self, settings: PoolSettings) {
        self.settings.store(Arc::new(settings));
    }

    fn shard(&self, key: &PoolKey, size: usize) -> Arc<Shard> {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Looked up first: `entry` wants an owned key, two Strings cloned
        // at every checkout (every transaction, in transaction pooling).
        if let Some(shard) = shards.get(key) {
            return shard.clone();
        }
        shards
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Shard {
                    key: key.clone(),
                    target: Mutex::new(None),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(size)),
                    size,
                })
            })
            .clone()
    }

    /// A clean server connection for `key`: an idle one if there is a live
    /// one, else a new one, waiting first-in first-out for a free slot.
    pub async fn checkout(
        &self,
        key: &PoolKey,
        addr: &ServerAddr,
        credentials: &BackendCredentials,
    ) -> Result<PooledConnection, PoolError> {
        let settings = self.settings();
        let shard = self.shard(key, settings.max_pool_size);
        if let Ok(mut target) = shard.target.lock() {
            *target = Some((addr.clone(), credentials.clone()));
        }
        let permit = tokio::time::timeout(
            settings.checkout_timeout,
            shard.permits.clone().acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| PoolError::Exhausted {
            user: key.user.clone(),
            size: shard.size,
            waited: settings.checkout_timeout,
        })?;
        while let Some(mut conn) = shard.pop_idle() {
            // A connection made under settings a reload has since replaced (TLS
            // to the backend) is not what this checkout asked for.
            if expired(&conn, &settings) || conn.addr != *addr || !still_open(&mut conn) {
                tokio::spawn(conn.terminate());
                continue;
            }
            let conn = match conn.rehome() {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(server = %addr, "an idle connection cannot move to this worker: {e}");
                    continue;
                }
            };
            return Ok(PooledConnection {
                conn: Some(conn),
                shard,
                _permit: permit,
                settings,
            });
        }
        // Boxed: dialing and logging in is a large future that only this
        // path needs; inline, every session's future would carry its size.
        let conn = Box::pin(ServerConnection::connect(
            addr,
            &key.user,
            &key.database,
            credentials,
            settings.connect_timeout,
        ))
        .await?;
        Ok(PooledConnection {
            conn: Some(conn),
            shard,
            _permit: permit,
            settings,
        })
    }

    /// Closes idle connections past their lifetime or idle timeout and
    /// opens connections up to `min_idle`; run every second or so.
    pub async fn maintain(&self) {
        let settings = self.settings();
        let shards: Vec<Arc<Shard>> = {
            let shards = self
                .shards
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            shards.values().cloned().collect()
        };
        for shard in shards {
            let expired_conns: Vec<ServerConnection> = match shard.idle.lock() {
                Ok(mut idle) => {
                    let (old, keep): (Vec<_>, Vec<_>) =
                        idle.drain(..).partition(|c| expired(c, &settings));
                    *idle = keep;
                    old
                }
                Err(_) => Vec::new(),
            };
            for conn in expired_conns {
                tokio::spawn(conn.terminate());
            }
            self.fill_min_idle(&shard, &settings).await;
        }
    }

    async fn fill_min_idle(&self, shard: &Arc<Shard>, settings: &PoolSettings) {
        let Some((addr, credentials)) = shard.target.lock().ok().and_then(|t| t.clone()) else {
            return;
        };
        loop {
            let idle = shard.idle.lock().map_or(usize::MAX, |idle| idle.len());
            let checked_out = shard.size - shard.permits.available_permits();
            if idle >= settings.min_idle || idle + checked_out >= shard.size {
                return;
            }
            // Holding a permit while dialling keeps a client from being
            // promised the slot this connection will fill.
            let Ok(_permit) = shard.permits.clone().try_acquire_owned() else {
                return;
            };
            let key = &shard.key;
            match ServerConnection::connect(
                &addr,
                &key.user,
                &key.database,
                &credentials,
                settings.connect_timeout,
            )
            .await
            {
                Ok(conn) => {
                    if let Ok(mut idle) = shard.idle.lock() {
                        idle.push(conn);
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %addr, user = %key.user, "cannot open an idle connection for min_idle: {e}");
                    return;
                }
            }
        }
    }

    pub fn statement_known(&self, server_name: &str) -> bool {
        self.known_statements
            .lock()
            .is_ok_and(|known| known.contains(server_name))
    }

    pub fn note_statement(&self, server_name: &str) {
        if let Ok(mut known) = self.known_statements.lock() {
            // Bounded: a client generating endless distinct statements
            // must not grow this forever.
            if known.len() >= 100_000 {
                known.clear();
            }
            known.insert(server_name.to_string());
        }
    }

    /// (connections idle, connections checked out) for `key`.
    pub fn counts(&self, key: &PoolKey) -> (usize, usize) {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shards.get(key).map_or((0, 0), |shard| {
            let idle = shard.idle.lock().map_or(0, |idle| idle.len());
            (idle, shard.size - shard.permits.available_permits())
        })
    }
}

impl Pools {
    /// Every pool: (key, idle, checked out, waiting, size), for SHOW
    /// POOL_POOLS. Waiters are not counted per pool (0).
    pub fn stats(&self) -> Vec<(PoolKey, usize, usize, usize, usize)> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shards
            .values()
            .map(|shard| {
                let idle = shard.idle.lock().map_or(0, |idle| idle.len());
                let out = shard.size - shard.permits.available_permits();
                (shard.key.clone(), idle, out, 0, shard.size)
            })
            .collect()
    }
}

impl Shard {
    /// The most recently used idle connection whose socket is registered
    /// here, else the most recently used one.
    fn pop_idle(&self) -> Option<ServerConnection> {
        let mut idle = self.idle.lock().ok()?;
        let at = idle.iter().rposition(ServerConnection::is_home);
        match at {
            Some(at) => Some(idle.remove(at)),
            None => idle.pop(),
        }
    }
}

fn expired(conn: &ServerConnection, settings: &PoolSettings) -> bool {
    let now = Instant::now();
    settings
        .max_lifetime
        .is_some_and(|limit| now.duration_since(conn.created) >= limit)
        || settings
            .idle_timeout
            .is_some_and(|limit| now.duration_since(conn.last_used) >= limit)
}

/// An idle connection has nothing to say: end-of-file means the server
/// went away (restart, idle_session_timeout), anything else means it is out
/// of step. Either way it must not be used.
///
/// A socket registered with this thread's runtime needs no system call:
/// the runtime has recorded the readiness of whatever the server sent while
/// the connection sat idle, which the read attempt below finds. Only what
/// arrived since the runtime last polled for events escapes it, and a
/// transaction sent there fails as one the server dropped midway would.
/// Registered elsewhere (a TLS connection that cannot move, one about to
/// move here), the kernel is asked.
fn still_open(conn: &mut ServerConnection) -> bool {
    if !conn.read_buf.is_empty() || (!conn.is_home() && conn.stream().closed_or_unread()) {
        return false;
    }
    !conn.stream().said_something()
}

/// A checked-out server connection. Dropping it closes the connection;
/// only [`release`](Self::release) returns it to the pool.
#[derive(Debug)]
pub struct PooledConnection {
    conn: Option<ServerConnection>,
    shard: Arc<Shard>,
    /// Held for as long as the connection exists outside the idle list.
    _permit: OwnedSemaphorePermit,
    settings: Arc<PoolSettings>,
}

impl PooledConnection {
    pub fn get(&mut self) -> Option<&mut ServerConnection> {
        self.conn.as_mut()
    }

    /// Whether an idle connection held aside (a session's parked one) is
    /// still usable: the server has not closed it nor said anything.
    pub fn still_open(&mut self) -> bool {
        self.conn.as_mut().is_some_and(still_open)
    }

    /// Gives the connection back. `reset` runs the reset queries first
    /// (session mode). A connection that is not idle, fails its reset,
    /// or has outlived `max_lifetime` is closed instead.
    pub async fn release(mut self, reset: bool) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.tx_status != TransactionStatus::Idle || !conn.read_buf.is_empty() {
            tokio::spawn(conn.terminate());
            return;
        }
        if reset && !self.settings.reset_queries.is_empty() {
            let queries = self.settings.reset_queries.join("; ");
            let limit = self.settings.connect_timeout;
            let outcome = tokio::time::timeout(limit, conn.execute(&queries)).await;
            if !matches!(outcome, Ok(Ok(()))) || conn.tx_status != TransactionStatus::Idle {
                tokio::spawn(conn.terminate());
                return;
            }
            // The reset returned the session to the connection's defaults.
            conn.applied_settings = 0;
            conn.prepared.clear();
        }
        if self
            .settings
            .max_lifetime
            .is_some_and(|limit| conn.created.elapsed() >= limit)
        {
            tokio::spawn(conn.terminate());
            return;
        }
        conn.last_used = Instant::now();
        if let Ok(mut idle) = self.shard.idle.lock() {
            idle.push(conn);
        }
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        // Not released: its state is unknown, so it is closed, never reused.
        if let (Some(conn), Ok(handle)) = (self.conn.take(), tokio::runtime::Handle::try_current())
        {
            handle.spawn(conn.terminate());
        }
    }
}
