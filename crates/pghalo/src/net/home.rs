//! Which runtime a socket belongs to. A tokio socket is registered with
//! the runtime that created it, and every readiness event for it is
//! delivered by that runtime's thread. pghalo runs sessions on several
//! single-threaded runtimes (`proxy::workers`); a pooled server connection
//! remembers its home so that a session on another thread can re-register
//! it ([`Stream::rehome`](super::Stream::rehome)) instead of having every
//! reply relayed through a wake-up of the other thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A runtime's identity: process-unique; 0 is every thread that is not a
/// session worker (the main runtime, test runtimes).
pub type Home = u64;

thread_local! {
    static HERE: Cell<Home> = const { Cell::new(0) };
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// The home of sockets created on the calling thread.
pub fn here() -> Home {
    HERE.with(Cell::get)
}

/// A new home, for a thread that is about to run a runtime of its own.
pub fn claim() -> Home {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Marks the calling thread as `home` for as long as it lives.
pub fn enter(home: Home) {
    HERE.with(|h| h.set(home));
}
