//! CancelRequest routing. Each client gets a (pid, key) pair made up by
//! pghalo; a cancel naming it is forwarded to the one server connection the
//! client is using at that moment, and to no other (pgpool sends it to every
//! backend).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use pghalo_protocol::CancelKey;
use tokio::io::AsyncWriteExt;

use crate::backend::{ServerAddr, ServerKey};

/// The server connection a client's queries currently run on.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: ServerAddr,
    pub key: ServerKey,
}

#[derive(Debug)]
struct Entry {
    key: CancelKey,
    target: Option<CancelTarget>,
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
}

impl CancelMap {
    /// Hands out a fresh identity for a new client.
    pub fn register(self: &Arc<Self>) -> Option<CancelHandle> {
        let key = CancelKey::random(4).ok()?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..64 {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                entries.insert(
                    pid,
                    Entry {
                        key: key.clone(),
                        target: None,
                    },
                );
                return Some(CancelHandle {
                    map: self.clone(),
                    pid,
                    key,
                });
            }
        }
        None
    }

    fn lookup(&self, pid: i32, key: &CancelKey) -> Option<CancelTarget> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // CancelKey's equality is constant-time.
        entries
            .get(&pid)
            .filter(|e| &e.key == key)
            .and_then(|e| e.target.clone())
    }

    /// Forwards a client's CancelRequest; unknown or wrong keys are ignored,
    /// as PostgreSQL does (the requester learns nothing either way).
    pub async fn cancel(&self, pid: i32, key: &CancelKey) {
        let Some(target) = self.lookup(pid, key) else {
            tracing::debug!(pid, "cancel request for an unknown session ignored");
            return;
        };
        let mut out = BytesMut::new();
        pghalo_protocol::frontend::write_cancel_request(&mut out, target.key.pid, &target.key.key);
        match target.addr.dial().await {
            Ok(mut stream) => {
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
            }
            Err(e) => tracing::warn!(server = %target.addr, "cannot forward a cancel request: {e}"),
        }
    }
}

impl CancelHandle {
    pub fn set_target(&self, target: Option<CancelTarget>) {
        let mut entries = self.map.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get_mut(&self.pid) {
            entry.target = target;
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        let mut entries = self.map.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&self.pid);
    }
}
