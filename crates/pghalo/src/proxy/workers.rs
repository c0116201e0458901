//! The data path's threads: each worker is a single-threaded tokio runtime
//! on a thread of its own, and runs whole client sessions. A session's
//! client socket, its server connection and its timers are all polled by
//! the one thread, so relaying a request and its reply never wakes another
//! thread. (tokio's work-stealing runtime, which pghalo used before, moved
//! sessions between its threads and woke a parked one on most
//! transactions: 0.9 context switches per pgbench transaction against
//! PgBouncer's 0.5.)
//!
//! The control path (health checks, failover, the admin sockets) and pool
//! maintenance stay on the main runtime; only sessions and the accept loops
//! come here.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};

use crate::net::home::{self, Home};

/// The session workers of one pghalo instance.
#[derive(Debug)]
pub struct SessionWorkers {
    workers: Vec<Worker>,
    all: Arc<AllSessions>,
}

#[derive(Debug)]
struct Worker {
    id: Home,
    handle: Handle,
    /// Sessions running on this worker.
    sessions: Arc<AtomicUsize>,
    /// Dropped (with the `SessionWorkers`) to tell the thread to end once
    /// every worker's sessions have.
    _stop: oneshot::Sender<()>,
}

/// Sessions running on all the workers: a worker ends only when none is
/// left anywhere, since a session may use a socket another worker's runtime
/// drives (a TLS server connection, which does not move).
#[derive(Debug, Default)]
struct AllSessions {
    count: AtomicUsize,
    none_left: Notify,
}

/// Counts a session for as long as it runs, even when cancelled.
struct Running {
    worker: Arc<AtomicUsize>,
    all: Arc<AllSessions>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.worker.fetch_sub(1, Ordering::AcqRel);
        if self.all.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all.none_left.notify_waiters();
        }
    }
}

impl SessionWorkers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<SessionWorkers> {
        let all = Arc::new(AllSessions::default());
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let id = home::claim();
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::sync_channel(1);
            let thread_all = all.clone();
            // The runtime is built on its own thread: one dropped inside the
            // daemon's async start (a thread that failed to spawn) panics.
            std::thread::Builder::new()
                .name(format!("pghalo-worker-{index}"))
                .spawn(move || {
                    // No signal or process driver: sessions use neither,
                    // and the process driver looks for orphans at every park.
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    home::enter(id);
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async move {
                        let _ = stopped.await;
                        // Sessions already running finish on their own, as
                        // they did before the daemon stopped accepting.
                        loop {
                            let none_left = thread_all.none_left.notified();
                            if thread_all.count.load(Ordering::Acquire) == 0 {
                                break;
                            }
                            none_left.await;
                        }
                    });
                })?;
            let handle = handle
                .recv()
                .map_err(|_| io::Error::other("a session worker ended while starting"))??;
            workers.push(Worker {
                id,
                handle,
                sessions: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(SessionWorkers { workers, all })
    }

    /// The worker with the fewest sessions, the calling thread's own on a
    /// tie: a session started where its socket was accepted needs no move.
    pub fn pick(&self) -> usize {
        let here = home::here();
        let mut best = 0;
        let mut best_load = usize::MAX;
        for (index, worker) in self.workers.iter().enumerate() {
            let load = worker.sessions.load(Ordering::Relaxed);
            if load < best_load || load == best_load && worker.id == here {
                best = index;
                best_load = load;
            }
        }
        best
    }

    /// Whether the calling thread is worker `index`.
    pub fn is_current(&self, index: usize) -> bool {
        self.workers
            .get(index)
            .is_some_and(|w| w.id == home::here())
    }

    /// Runs a session on worker `index`. The future is first polled there,
    /// so the sockets it registers then belong to that worker's runtime.
    pub fn spawn_session(&self, index: usize, session: impl Future<Output = ()> + Send + 'static) {
        let Some(worker) = self.workers.get(index % self.workers.len().max(1)) else {
            return;
        };
        worker.sessions.fetch_add(1, Ordering::AcqRel);
        self.all.count.fetch_add(1, Ordering::AcqRel);
        let running = Running {
            worker: worker.sessions.clone(),
            all: self.all.clone(),
        };
        // Boxed on its own: a session's future is kilobytes, and a future
        // captured by an async block and awaited there takes its room twice
        // (10,000 idle clients).
        let session = Box::pin(session);
        worker.handle.spawn(async move {
            let _running = running;
            session.await;
        });
    }

    /// Runs a task that is not a session (an accept loop) on worker `index`.
    pub fn spawn_on(&self, index: usize, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(worker) = self.workers.get(index % self.workers.len().max(1)) {
            worker.handle.spawn(task);
        }
    }
}

/// How many workers `0` (the default) means: one per CPU pghalo may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_run_on_the_least_loaded_worker_and_count_while_they_run() {
        let workers = Arc::new(SessionWorkers::start(2).expect("workers start"));
        let (release, held) = tokio::sync::watch::channel(false);
        let (ran_on, mut seen) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let index = workers.pick();
            let mut held = held.clone();
            let ran_on = ran_on.clone();
            workers.spawn_session(index, async move {
                let _ = ran_on.send((index, home::here()));
                let _ = held.wait_for(|go| *go).await;
            });
        }
        let mut per_worker = [0; 2];
        let mut thread_ids = std::collections::HashSet::new();
        for _ in 0..4 {
            let (index, thread) = seen.recv().await.expect("a session ran");
            per_worker[index] += 1;
            assert_ne!(thread, 0, "a session ran off the worker threads");
            thread_ids.insert((index, thread));
        }
        assert_eq!(per_worker, [2, 2], "sessions spread by load");
        assert_eq!(thread_ids.len(), 2, "each worker is one thread");
        assert!(!workers.is_current(0) && !workers.is_current(1));
        let _ = release.send(true);
    }
}
