//! Failover, follow-primary and failback: the control path's actions. One
//! task watches the node table; when the primary's check fails, it waits
//! until the monitor's retries confirm the failure
//! (health_check_max_retries), has the coordinator commit the promotion of
//! the best standby, promotes it over SQL, waits until the node table
//! takes it as primary, and points every other standby at it. Must not talk to clients: sessions learn the new
//! primary from the next snapshot.
//!
//! # Layout
//! - `candidate.rs`: which standby to promote (pure).
//! - `sync_rule.rs`: what synchronous_standby_names promises (pure).
//! - `actions.rs`: promote and follow over SQL as recovery_user.
//! - `conninfo.rs`: primary_conninfo read and pointed elsewhere.
//! - `command.rs`: failover_command / follow_primary_command, pgpool's
//!   placeholders, run under a time limit with the exit status checked.
//! - `promotion.rs`: a committed promotion carried out: promote, take
//!   the new primary, point the others at it.
//! - `manual.rs`: `pghalo ctl promote`: a failover or a switchover to a
//!   node the operator names.
//! - `standby.rs`: failed standbys detached, their slots dropped after a
//!   grace period, auto_failback.
//! - `mod.rs`: [`FailoverSettings`] and the task ([`FailoverTask`]).

mod actions;
mod candidate;
mod command;
mod conninfo;
mod manual;
mod promotion;
mod standby;
mod sync_rule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use actions::{ActionError, Control};
pub use candidate::{NoCandidate, choose_candidate};
pub use command::{NodeFacts, Placeholders};

use crate::cluster::{
    CheckErrorKind, ClusterSnapshot, ClusterView, Epoch, NodeId, Observer, Status,
};
use crate::config::passwd::{PasswdError, PasswordFile};
use crate::config::{Config, ResolvedPassword};
use crate::coordinator::Coordinator;
use crate::health::{CheckSchedule, MonitorSettings, MonitorWaker, Target, postmaster_answers};

/// How long to wait before trying a failed failover again.
const BACKOFF: Duration = Duration::from_secs(5);

/// How long to wait for the node table to show a decision just applied.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a postmaster has to answer a sign-of-life request after a
/// check timed out: forking a backend and writing one byte takes
/// milliseconds even on a loaded server.
const PING_LIMIT: Duration = Duration::from_millis(500);

/// What the failover task needs from the configuration.
#[derive(Clone, Debug)]
pub struct FailoverSettings {
    /// None: no recovery_user, or auto_failover off; failures are only
    /// reported.
    pub control: Option<Control>,
    pub max_lag: Option<u64>,
    pub promote_timeout: Duration,
    pub follow_timeout: Duration,
    pub auto_failback: bool,
    /// None: slots are never dropped.
    pub slot_grace: Option<Duration>,
    /// pgpool failover_command: promotes in place of pg_promote().
    pub failover_command: Option<String>,
    /// pgpool follow_primary_command: points a standby at the new primary
    /// in place of the built-in follow.
    pub follow_primary_command: Option<String>,
    pub targets: Vec<Target>,
    /// What the command placeholders say about each node.
    pub facts: Vec<NodeFacts>,
}

impl FailoverSettings {
    pub fn from_config(
        config: &Config,
        pool_passwd: &PasswordFile,
    ) -> Result<FailoverSettings, PasswdError> {
        let f = &config.failover;
        let user = f.recovery_user.trim().to_owned();
        let control = if user.is_empty() || !f.auto_failover {
            None
        } else {
            let file = config.auth.pool_passwd.as_ref().map(|_| pool_passwd);
            let password = match f.recovery_password.resolve(
                "failover.recovery_password",
                &user,
                file,
                config.auth.pool_key_file.as_deref(),
            )? {
                ResolvedPassword::Password(secret) => Some(secret),
                ResolvedPassword::Missing(_) => None,
            };
            Some(Control {
                user,
                password,
                database: config.streaming_replication.sr_check_database.clone(),
                timeout: config.streaming_replication.sr_check_timeout.as_duration(),
            })
        };
        Ok(FailoverSettings {
            control,
            max_lag: Some(f.max_lag_on_failover.bytes()).filter(|b| *b > 0),
            promote_timeout: f.promote_timeout.as_duration(),
            follow_timeout: f.follow_primary_timeout.as_duration(),
            auto_failback: f.auto_failback,
            slot_grace: f.slot_grace_period.limit(),
            failover_command: Some(f.failover_command.trim().to_owned()).filter(|c| !c.is_empty()),
            follow_primary_command: Some(f.follow_primary_command.trim().to_owned())
                .filter(|c| !c.is_empty()),
            targets: Target::all(config),
            facts: config
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| NodeFacts {
                    id: NodeId(i),
                    host: b.host.clone(),
                    port: b.port,
                    data_directory: b.data_directory.clone(),
                })
                .collect(),
        })
    }
}

/// The running task; dropping the handle stops it.
pub struct FailoverTask {
    task: JoinHandle<()>,
    handle: FailoverHandle,
}

/// Asks the failover task for a promotion by hand (`pghalo ctl promote`).
#[derive(Clone)]
pub struct FailoverHandle {
    requests: mpsc::Sender<PromoteRequest>,
}

struct PromoteRequest {
    node: NodeId,
    reply: oneshot::Sender<Result<String, String>>,
}

impl FailoverHandle {
    /// Promotes `node`: a failover when the primary is down, a switchover
    /// when it is up. Ok holds what was done, Err why nothing was (or what
    /// failed), each a sentence for the operator.
    pub async fn promote(&self, node: NodeId) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(PromoteRequest { node, reply })
            .await
            .map_err(|_| "the failover task is not running".to_owned())?;
        answer
            .await
            .map_err(|_| "the failover task stopped before it answered".to_owned())?
    }
}

impl Drop for FailoverTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FailoverTask {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        settings: FailoverSettings,
        view: ClusterView,
        observer: Observer,
        waker: MonitorWaker,
        checks: watch::Receiver<Arc<MonitorSettings>>,
        coordinator: Arc<dyn Coordinator>,
        shutdown: watch::Receiver<bool>,
    ) -> FailoverTask {
        let worker = Worker {
            settings,
            view,
            observer,
            waker,
            checks,
            coordinator,
            slots: HashMap::new(),
            unfinished: None,
        };
        let (requests, incoming) = mpsc::channel(4);
        FailoverTask {
            task: tokio::spawn(worker.run(incoming, shutdown)),
            handle: FailoverHandle { requests },
        }
    }

    pub fn handle(&self) -> FailoverHandle {
        self.handle.clone()
    }
}

struct Worker {
    settings: FailoverSettings,
    view: ClusterView,
    observer: Observer,
    waker: MonitorWaker,
    /// The monitor's settings in force: each node's retries, their delay
    /// and the check timeout.
    checks: watch::Receiver<Arc<MonitorSettings>>,
    coordinator: Arc<dyn Coordinator>,
    /// What pghalo did to detached standbys' replication slots.
    slots: HashMap<NodeId, standby::SlotState>,
    /// A promotion committed whose promote or follow step failed.
    unfinished: Option<Unfinished>,
}

/// A committed promotion not carried through: the node may yet leave
/// recovery on its own (pg_promote past its wait, a slow failover_command),
/// and then the other standbys must be pointed at it; until then a retry
/// of the same failover promotes the same node, never a second one.
struct Unfinished {
    node: NodeId,
    replaces: NodeId,
    before: ClusterSnapshot,
    epoch: Epoch,
}

/// How a look at a down primary ended.
enum Outcome {
    /// Nothing to do (it answered again, or it is not down).
    Nothing,
    /// Done, or reported; look again at the next change.
    Handled,
    /// Failed; try again after a pause.
    Retry,
}

impl Worker {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<PromoteRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut reported: Option<NodeId> = None;
        loop {
            tokio::select! {
                alive = self.view.changed() => if !alive { return },
                _ = shutdown.changed() => return,
                Some(request) = requests.recv() => {
                    let outcome = self.promote_by_hand(request.node).await;
                    let _ = request.reply.send(outcome);
                    continue;
                }
            }
            if *shutdown.borrow() {
                return;
            }
            let snapshot = self.view.snapshot();
            self.finish_promotion(&snapshot).await;
            self.standby_upkeep(&snapshot).await;
            let Some(primary) = snapshot.primary_node() else {
                continue;
            };
            if primary.status != Status::Down {
                reported = None;
                if self
                    .unfinished
                    .as_ref()
                    .is_some_and(|u| u.replaces == primary.id)
                {
                    // The old primary answers again: no failover to finish,
                    // and none to repeat on that node at a later failure.
                    self.unfinished = None;
                }
                continue;
            }
            let failed = primary.id;
            if !primary.flags.allows_failover() || self.settings.control.is_none() {
                if reported != Some(failed) {
                    tracing::error!(
                        node = %primary.name,
                        "the primary is down and automatic failover is off ({})",
                        if primary.flags.allows_failover() {
                            "failover.recovery_user is not set, or failover.auto_failover is false"
                        } else {
                            "the node has DISALLOW_TO_FAILOVER"
                        }
                    );
                    reported = Some(failed);
                }
                continue;
            }
            match self.fail_over(failed).await {
                Outcome::Retry => {
                    tokio::select! {
                        _ = tokio::time::sleep(BACKOFF) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                Outcome::Nothing | Outcome::Handled => {}
            }
        }
    }

    /// How logs and ctl name a node.
    fn name(&self, id: NodeId) -> String {
        self.settings
            .targets
            .get(id.index())
            .map_or_else(|| format!("node {id}"), |t| t.name.clone())
    }

    /// Confirms that `failed` is down, then promotes a standby and points
    /// the others at it.
    async fn fail_over(&mut self, failed: NodeId) -> Outcome {
        let started = Instant::now();
        // Before anything is looked at: what is decided meanwhile (by hand)
        // makes this look stale.
        let made_under = self.coordinator.epoch();
        let Some(snapshot) = self.confirm_down(failed).await else {
            return Outcome::Nothing;
        };
        let detected = started.elapsed();
        let Some(control) = self.settings.control.clone() else {
            return Outcome::Nothing;
        };
        // The positions of the last checks may be a period old: ask every
        // standby now, so the most advanced one is the one promoted.
        let mut fresh = (*snapshot).clone();
        for node in fresh
            .nodes
            .iter_mut()
            .filter(|n| n.id != failed && n.status == Status::Up)
        {
            let Some(target) = self.settings.targets.get(node.id.index()) else {
                continue;
            };
            match control.positions(target).await {
                Ok((receive, replay)) => {
                    node.lsn.receive = receive;
                    node.lsn.replay = replay;
                }
                Err(e) => {
                    tracing::warn!("{} is not a candidate: {e}", target.name);
                    node.status = Status::Down;
                }
            }
        }
        let decided = self
            .unfinished
            .as_ref()
            .filter(|u| u.replaces == failed && u.epoch == made_under)
            .map(|u| u.node);
        let candidate = match decided {
            // Its promotion may still be under way: promoting another
            // standby could make two primaries.
            Some(node) if fresh.node(node).is_some_and(|n| n.status == Status::Up) => Ok(node),
            Some(node) => {
                tracing::warn!(
                    "{}, whose promotion did not finish, does not answer: choosing again",
                    self.name(node)
                );
                self.unfinished = None;
                choose_candidate(&fresh, failed, self.settings.max_lag)
            }
            None => choose_candidate(&fresh, failed, self.settings.max_lag),
        };
        let candidate = match candidate {
            Ok(node) => node,
            Err(why) => {
                tracing::error!(failed = %self.name(failed), "the primary is down and no standby can be promoted: {why}");
                self.coordinator.report(
                    format!("no automatic failover of {}", self.name(failed)),
                    why.to_string(),
                );
                return Outcome::Retry;
            }
        };
        let reason = format!(
            "{} failed {} checks in a row",
            self.name(failed),
            snapshot
                .node(failed)
                .map_or(0, |n| n.checks.consecutive_failures)
        );
        match self
            .promote_and_follow(&control, candidate, failed, &snapshot, made_under, reason)
            .await
        {
            Ok(epoch) => {
                tracing::warn!(
                    %epoch,
                    detected_ms = detected.as_millis() as u64,
                    "failover: {} is the primary in place of {}",
                    self.name(candidate),
                    self.name(failed)
                );
                Outcome::Handled
            }
            Err(e) => {
                tracing::error!("failover of {}: {e}", self.name(failed));
                self.coordinator
                    .report(format!("failover of {} failed", self.name(failed)), e);
                Outcome::Retry
            }
        }
    }

    /// The check schedule of `node` in force.
    fn schedule(&self, node: NodeId) -> Option<CheckSchedule> {
        self.checks.borrow().node(node.index()).map(|c| c.schedule)
    }

    /// Failed checks in a row that confirm `node` down: its first failed
    /// check and every retry (health_check_max_retries).
    fn confirmations(&self, node: NodeId) -> u32 {
        self.schedule(node).map_or(1, |s| s.confirmations())
    }

    /// Some(snapshot) once `failed` has failed its check and every retry,
    /// which the monitor makes health_check_retry_delay apart; None when
    /// it answers again.
    ///
    /// A check that timed out asks the postmaster for a sign of life (an
    /// SSLRequest, answered without a login): no answer confirms at once
    /// (a hung or cut-off primary fails over about one timeout after it
    /// stops, not one per retry); an answer means the server is slow, not
    /// gone, and the retries go on.
    async fn confirm_down(&mut self, failed: NodeId) -> Option<Arc<ClusterSnapshot>> {
        let mut seen = self.view.snapshot();
        let mut pinged: Option<u64> = None;
        loop {
            // Read each time: a reload may change the retries meanwhile.
            let schedule = self.schedule(failed)?;
            let node = seen.node(failed)?;
            if node.status != Status::Down {
                tracing::info!(node = %node.name, "the primary answered again: no failover");
                return None;
            }
            let last_kind = node.last_error.as_ref().map(|e| e.kind);
            if last_kind == Some(CheckErrorKind::Config) {
                // Its checks are refused at login: they cannot tell whether
                // it is down, and a configuration error never fails over.
                tracing::debug!(node = %node.name, "the primary's checks are refused at login: no failover");
                return None;
            }
            if last_kind == Some(CheckErrorKind::Busy) {
                // Promoting a standby now would make a second writable
                // primary: the full one keeps its sessions.
                tracing::warn!(node = %node.name, "the primary has no connection slot left for its check: busy, not down; no failover");
                return None;
            }
            if node.checks.consecutive_failures >= schedule.confirmations() {
                return Some(seen);
            }
            let checks = node.checks.total;
            if last_kind == Some(CheckErrorKind::Timeout) && pinged != Some(checks) {
                pinged = Some(checks);
                let target = self.settings.targets.get(failed.index())?;
                if !postmaster_answers(target, PING_LIMIT.min(schedule.timeout)).await {
                    return Some(seen);
                }
                tracing::warn!(
                    node = %node.name,
                    "a check timed out, but the postmaster answers: the server is slow, not gone; \
                     retrying the check before any failover"
                );
            }
            let limit = schedule.retry_delay + schedule.timeout + Duration::from_secs(1);
            seen = match self
                .view
                .wait_for(limit, |s| {
                    s.node(failed).is_some_and(|n| n.checks.total > checks)
                })
                .await
            {
                Ok(newer) => newer,
                // Every check ends within its timeout: no newer one means
                // the monitor stopped checking (pghalo is stopping, or a
                // reload changed the checks). Without its verdict nothing
                // is confirmed.
                Err(_) => {
                    tracing::warn!(node = %node.name, "the primary's retries did not come: no failover now");
                    return None;
                }
            };
        }
    }
}
