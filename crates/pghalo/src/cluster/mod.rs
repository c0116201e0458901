//! The node table: every backend's role, status, timeline, WAL positions
//! and replication lag, with the epoch of the roles. One owner task holds
//! the table; readers get immutable snapshots through an `ArcSwap` and
//! never lock. Must not act on nodes: it only records and publishes.
//!
//! # Layout
//! - `types.rs`: [`NodeId`], [`Lsn`], [`Epoch`], [`Role`], [`Status`].
//! - `observation.rs`: [`Observation`], what the control path reports.
//! - `table.rs`: the table and the role rules (pure, unit-tested).
//! - `snapshot.rs`: [`ClusterSnapshot`] and [`NodeState`], what readers get.
//! - `mod.rs`: [`Cluster`] (the owner task), [`ClusterView`] (readers) and
//!   [`Observer`] (writers of observations).
//!
//! # The seam for the coordinator (issue 5)
//! Observations come in over one channel ([`Observer::send`]) and only the
//! owner task turns them into roles, with the rules in `table.rs`. When the
//! coordinator exists it takes the observations instead, decides, and
//! sends decided roles (each with its epoch) down the same kind of channel;
//! the table then applies decisions rather than choosing, and nothing on
//! the reading side changes. docs/topology.md says more.

mod observation;
mod snapshot;
mod table;
mod types;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::config::BackendConfig;

pub use observation::{CheckError, CheckErrorKind, Observation, Probe, Sender};
pub use snapshot::{
    CheckStats, ClusterSnapshot, Detachment, LagLimits, NodeLsns, NodeState, Replication,
};
pub use types::{Epoch, FalsePrimary, Lsn, LsnError, NodeId, Role, Status};

use table::{NodeTable, Notice, RoleChange};

/// Observations waiting for the owner. A full queue makes the monitor
/// wait, which is the right back-pressure: one check per node per period
/// cannot outrun a task that only updates a small table.
const QUEUE: usize = 256;

/// The owner of the node table. Dropping it (and every [`Observer`]) ends
/// the owner task; the last snapshot stays readable through any
/// [`ClusterView`].
pub struct Cluster {
    view: ClusterView,
    observer: Observer,
    /// A reload's backends; only their weights can change live.
    backends: watch::Sender<Vec<BackendConfig>>,
}

impl Cluster {
    /// Builds the table for `backends` (every node waiting, roles unknown
    /// except an ALWAYS_PRIMARY node's), publishes it, and spawns the owner
    /// task. Needs a tokio runtime.
    pub fn start(backends: &[BackendConfig]) -> Cluster {
        Cluster::start_decided(backends, None, &[], &[])
    }

    /// As `start`, taking over a state file's decisions: `primary` (name,
    /// timeline) is the known primary until observations show otherwise,
    /// and the `detached` nodes stay detached (those also in `by_hand` as
    /// detached by the operator). Names the configuration does not have
    /// are logged and ignored.
    pub fn start_decided(
        backends: &[BackendConfig],
        primary: Option<(&str, Option<u32>)>,
        detached: &[String],
        by_hand: &[String],
    ) -> Cluster {
        let mut table = NodeTable::new(backends);
        for name in table.restore(primary, detached, by_hand) {
            tracing::warn!(node = %name, "the state file names a node the configuration does not have; ignored");
        }
        let first = Arc::new(table.snapshot());
        let current = Arc::new(ArcSwap::new(first.clone()));
        let (published, published_rx) = watch::channel(first.generation);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (backends_tx, backends_rx) = watch::channel(backends.to_vec());
        tokio::spawn(own(table, rx, backends_rx, current.clone(), published));
        Cluster {
            view: ClusterView {
                current,
                published: published_rx,
            },
            observer: Observer { tx },
            backends: backends_tx,
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        self.view.snapshot()
    }

    /// A reader's handle.
    pub fn view(&self) -> ClusterView {
        self.view.clone()
    }

    /// A writer's handle, for the replication monitor (and health checks).
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Takes a reloaded configuration's backends (their weights; the rest
    /// needs a restart and is ignored).
    pub fn update_backends(&self, backends: &[BackendConfig]) {
        self.backends.send_replace(backends.to_vec());
    }
}

/// Read access to the published snapshots: cheap to clone, lock-free to
/// read.
#[derive(Clone)]
pub struct ClusterView {
    current: Arc<ArcSwap<ClusterSnapshot>>,
    /// The generation of the latest publication, to wait on.
    published: watch::Receiver<u64>,
}

impl ClusterView {
    /// The latest snapshot. Never blocks and never locks: what the data
    /// path calls for every routing decision.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        self.current.load_full()
    }

    /// Waits until a snapshot satisfies `condition` or `limit` passes;
    /// returns the satisfying snapshot, or the last one seen as the error.
    /// For tests, tools and the coordinator, never the data path.
    pub async fn wait_for(
        &self,
        limit: Duration,
        mut condition: impl FnMut(&ClusterSnapshot) -> bool,
    ) -> Result<Arc<ClusterSnapshot>, Arc<ClusterSnapshot>> {
        let mut published = self.published.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Marks the current generation seen before reading, so a
            // publication after the read wakes the wait below.
            published.borrow_and_update();
            let snapshot = self.snapshot();
            if condition(&snapshot) {
                return Ok(snapshot);
            }
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                // The owner has stopped: nothing will change any more.
                Ok(Err(_)) | Err(_) => {
                    let last = self.snapshot();
                    return if condition(&last) {
                        Ok(last)
                    } else {
                        Err(last)
                    };
                }
            }
        }
    }

    /// Waits for a publication this view has not waited for yet (one made
    /// since the view was cloned counts, so read `snapshot()` after this,
    /// and expect to see a generation twice at most); false once the owner
    /// has stopped.
    pub async fn changed(&mut self) -> bool {
        self.published.changed().await.is_ok()
    }
}

/// Sends observations to the owner task.
#[derive(Clone)]
pub struct Observer {
    tx: mpsc::Sender<Input>,
}

/// What the owner task is told.
#[derive(Debug)]
enum Input {
    Observed(Observation),
    /// A committed decision to take a node out of routing (or put it back).
    Detached {
        node: NodeId,
        how: Detachment,
    },
    /// A committed promotion, acted on: `node` is the primary.
    Primary {
        node: NodeId,
    },
}

/// The owner task has stopped (the [`Cluster`] was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cluster table is no longer running")]
pub struct ClusterClosed;

impl Observer {
    pub async fn send(&self, observation: Observation) -> Result<(), ClusterClosed> {
        self.tx
            .send(Input::Observed(observation))
            .await
            .map_err(|_| ClusterClosed)
    }

    /// Takes `node` out of routing (a committed Detach decision), or puts
    /// it back (`Detachment::Attached`).
    pub async fn set_detached(&self, node: NodeId, how: Detachment) -> Result<(), ClusterClosed> {
        self.tx
            .send(Input::Detached { node, how })
            .await
            .map_err(|_| ClusterClosed)
    }

    /// Makes `node` the known primary (a committed promotion, done): from
    /// now on any other node claiming the role is a false primary, even
    /// one that is up and on the same timeline (a switchover's old
    /// primary).
    pub async fn set_primary(&self, node: NodeId) -> Result<(), ClusterClosed> {
        self.tx
            .send(Input::Primary { node })
            .await
            .map_err(|_| ClusterClosed)
    }
}

impl NodeTable {
    fn take(&mut self, input: Input) -> Option<Notice> {
        match input {
            Input::Observed(observation) => self.observe(observation),
            Input::Detached { node, how } => {
                self.set_detached(node, how);
                None
            }
            Input::Primary { node } => {
                self.set_primary(node);
                None
            }
        }
    }
}

/// The owner task: applies whatever observations are queued, settles the
/// roles, publishes one snapshot, and waits for more. Ends when every
/// sender of observations is gone.
async fn own(
    mut table: NodeTable,
    mut rx: mpsc::Receiver<Input>,
    mut backends: watch::Receiver<Vec<BackendConfig>>,
    current: Arc<ArcSwap<ClusterSnapshot>>,
    published: watch::Sender<u64>,
) {
    let mut reloads_open = true;
    loop {
        let mut notices = Vec::new();
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { break };
                notices.extend(table.take(first));
                // Everything already queued goes into the same snapshot.
                while let Ok(next) = rx.try_recv() {
                    notices.extend(table.take(next));
                }
            }
            changed = backends.changed(), if reloads_open => {
                if changed.is_ok() {
                    table.update_backends(&backends.borrow_and_update());
                } else {
                    // The Cluster is gone; observers may still be draining.
                    reloads_open = false;
                    continue;
                }
            }
        }
        for notice in &notices {
            log_notice(&table, notice);
        }
        let changes = table.settle();
        for change in &changes {
            log_role_change(&table, change);
        }
        let snapshot = table.snapshot();
        let generation = snapshot.generation;
        current.store(Arc::new(snapshot));
        published.send_replace(generation);
    }
}

fn log_notice(table: &NodeTable, notice: &Notice) {
    match notice {
        Notice::StatusChanged {
            node,
            to: Status::Down,
            error,
            ..
        } => tracing::warn!(
            node = table.name(*node),
            error = error.as_ref().map(ToString::to_string),
            "node is down"
        ),
        Notice::StatusChanged { node, from, to, .. } => {
            tracing::info!(node = table.name(*node), %from, %to, "node status changed");
        }
        Notice::NewError { node, error } => {
            tracing::warn!(node = table.name(*node), %error, "replication check failed");
        }
    }
}

fn log_role_change(table: &NodeTable, change: &RoleChange) {
    let node = table.name(change.node);
    let epoch = table.epoch().0;
    match change.to {
        Role::FalsePrimary(why) => tracing::warn!(
            node,
            epoch,
            from = %change.from,
            "node claims to be a primary but is not taken as one: {why}"
        ),
        to => tracing::info!(node, epoch, from = %change.from, %to, "node role changed"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn publishes_what_observers_send() {
        let config = Config::from_str_with_name(
            "[[backend]]\nhost = \"a\"\nport = 1\n[[backend]]\nhost = \"b\"\nport = 1\n",
            "/t.toml",
        )
        .unwrap();
        let cluster = Cluster::start(&config.backends);
        let view = cluster.view();
        assert_eq!(view.snapshot().generation, 1);
        let observer = cluster.observer();
        for (node, in_recovery) in [(0, false), (1, true)] {
            observer
                .send(Observation {
                    node: NodeId(node),
                    at: SystemTime::now(),
                    elapsed: Duration::ZERO,
                    retry: 0,
                    outcome: Ok(Probe {
                        in_recovery,
                        ..Probe::default()
                    }),
                })
                .await
                .unwrap();
        }
        let s = view
            .wait_for(Duration::from_secs(5), |s| s.primary == Some(NodeId(0)))
            .await
            .unwrap();
        assert_eq!(s.nodes[1].role, Role::Standby);

        let mut reloaded = config.backends.clone();
        reloaded[0].weight = 0.0;
        cluster.update_backends(&reloaded);
        view.wait_for(Duration::from_secs(5), |s| s.nodes[0].weight == 0.0)
            .await
            .unwrap();

        // Nothing satisfies this: the wait ends at its limit with the last
        // snapshot.
        let last = view
            .wait_for(Duration::from_millis(50), |s| s.primary == Some(NodeId(1)))
            .await
            .unwrap_err();
        assert_eq!(last.primary, Some(NodeId(0)));

        drop(cluster);
        drop(observer);
        let mut view = view;
        // The owner stops once every sender is gone.
        while view.changed().await {}
        assert_eq!(view.snapshot().primary, Some(NodeId(0)));
    }
}
