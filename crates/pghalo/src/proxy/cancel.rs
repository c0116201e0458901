//! CancelRequest routing. Each client gets a (pid, key) pair made up by
//! pghalo; a cancel naming it is forwarded to the one server connection the
//! client is using at that moment, and to no other (pgpool sends it to every
//! backend).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pghalo_protocol::CancelKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::backend::{ServerAddr, ServerKey};

/// The server connection a client's queries currently run on.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: ServerAddr,
    pub key: ServerKey,
}

/// How long a forwarded cancel may take, from dialling the server to its
/// postmaster closing the connection (the backend has been signalled).
const CANCEL_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Entry {
    key: CancelKey,
    target: Option<CancelTarget>,
    gate: Arc<CancelGate>,
}

/// The cancels of one client still on their way to its server. Its server
/// connection must not go to another client before they landed: the
/// signal would stop that client's query instead.
#[derive(Debug, Default)]
struct CancelGate {
    in_flight: AtomicUsize,
    landed: Notify,
    /// A cancel gave up waiting for the server: it may still land, at any
    /// time, on whatever that server connection then runs.
    unsure: AtomicBool,
}

/// One cancel on its way; dropped when it has landed or given up.
struct InFlight(Arc<CancelGate>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.landed.notify_waiters();
        }
    }
}

/// Every live client's cancel identity.
#[derive(Debug, Default)]
pub struct CancelMap {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// A client's registration; dropping it forgets the client.
#[derive(Debug)]
pub struct CancelHandle {
    map: Arc<CancelMap>,
    pub pid: i32,
    pub key: CancelKey,
    gate: Arc<CancelGate>,
}

impl CancelMap {
    /// Hands out a fresh identity for a new client.
    pub fn register(self: &Arc<Self>) -> Option<CancelHandle> {
        let key = CancelKey::random(4).ok()?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..64 {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                let gate = Arc::new(CancelGate::default());
                entries.insert(
                    pid,
                    Entry {
                        key: key.clone(),
                        target: None,
                        gate: gate.clone(),
                    },
                );
                return Some(CancelHandle {
                    map: self.clone(),
                    pid,
                    key,
                    gate,
                });
            }
        }
        None
    }

    /// The target, counted in flight under the same lock that clears it:
    /// a client that let its connection go finds nothing to wait for.
    fn lookup(&self, pid: i32, key: &CancelKey) -> Option<(CancelTarget, InFlight)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // CancelKey's equality is constant-time.
        let entry = entries.get(&pid).filter(|e| &e.key == key)?;
        let target = entry.target.clone()?;
        entry.gate.in_flight.fetch_add(1, Ordering::SeqCst);
        Some((target, InFlight(entry.gate.clone())))
    }

    /// Forwards a client's CancelRequest; unknown or wrong keys are ignored,
    /// as PostgreSQL does (the requester learns nothing either way).
    pub async fn cancel(&self, pid: i32, key: &CancelKey) {
        let Some((target, in_flight)) = self.lookup(pid, key) else {
            tracing::debug!(pid, "cancel request for an unknown session ignored");
            return;
        };
        let mut out = BytesMut::new();
        pghalo_protocol::frontend::write_cancel_request(&mut out, target.key.pid, &target.key.key);
        let forward = async {
            let mut stream = target.addr.dial().await?;
            stream.write_all(&out).await?;
            // The server closes once it has signalled the backend; until
            // then the client keeps its server connection.
            let mut rest = [0u8; 64];
            while stream.read(&mut rest).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(CANCEL_LIMIT, forward).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(server = %target.addr, "cannot forward a cancel request: {e}");
            }
            Err(_) => {
                tracing::warn!(
                    server = %target.addr,
                    "a cancel request got no answer within {CANCEL_LIMIT:?}: its server connection will be closed, not reused"
                );
                in_flight.0.unsure.store(true, Ordering::SeqCst);
            }
        }
        drop(in_flight);
    }
}

impl CancelHandle {
    pub fn set_target(&self, target: Option<CancelTarget>) {
        let mut entries = self.map.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get_mut(&self.pid) {
            entry.target = target;
        }
    }

    /// Whether a cancel of this client is on its way to its server.
    pub fn cancel_in_flight(&self) -> bool {
        self.gate.in_flight.load(Ordering::SeqCst) != 0
    }

    /// Before the client's server connection goes back to the pool: no
    /// cancel finds it from now on, and those already on their way have
    /// landed (at most CANCEL_LIMIT). False if one gave up waiting: the
    /// connection must then be closed, not handed to another client.
    pub async fn let_go(&self) -> bool {
        self.set_target(None);
        // With the target gone nothing adds to the count: zero is final.
        while self.gate.in_flight.load(Ordering::SeqCst) != 0 {
            let landed = self.gate.landed.notified();
            tokio::pin!(landed);
            landed.as_mut().enable();
            if self.gate.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            landed.await;
        }
        !self.gate.unsure.swap(false, Ordering::SeqCst)
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        let mut entries = self.map.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&self.pid);
    }
}
