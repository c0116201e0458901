//! Failover, follow-primary and (later) failback: the control path's
//! actions. One task watches the node table; when the primary's checks
//! fail, it confirms the failure with a few immediate checks, has the
//! coordinator commit the promotion of the best standby, promotes it over
//! SQL, waits until the node table takes it as primary, and points every
//! other standby at it. Must not talk to clients: sessions learn the new
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
//!
//! Not yet (issue 5 goes on): health_check_* parameters of their own.

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
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use actions::{ActionError, Control};
pub use candidate::{NoCandidate, choose_candidate};
pub use command::{NodeFacts, Placeholders};

use crate::cluster::{CheckErrorKind, ClusterSnapshot, ClusterView, NodeId, Observer, Status};
use crate::config::passwd::{PasswdError, PasswordFile};
use crate::config::{Config, ResolvedPassword};
use crate::coordinator::Coordinator;
use crate::health::{MonitorWaker, Target, postmaster_answers};

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
    /// Failed checks in a row that make the primary down.
    pub confirmations: u32,
    pub interval: Duration,
    /// A confirming check that takes longer counts as failed.
    pub check_timeout: Duration,
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
            confirmations: f.failover_confirmations.max(1),
            interval: f.confirmation_interval.as_duration(),
            check_timeout: config.streaming_replication.sr_check_timeout.as_duration(),
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
    pub fn start(
        settings: FailoverSettings,
        view: ClusterView,
        observer: Observer,
        waker: MonitorWaker,
        coordinator: Arc<dyn Coordinator>,
        shutdown: watch::Receiver<bool>,
    ) -> FailoverTask {
        let worker = Worker {
            settings,
            view,
            observer,
            waker,
            coordinator,
            slots: HashMap::new(),
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
    coordinator: Arc<dyn Coordinator>,
    /// What pghalo did to detached standbys' replication slots.
    slots: HashMap<NodeId, standby::SlotState>,
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
            self.standby_upkeep(&snapshot).await;
            let Some(primary) = snapshot.primary_node() else {
                continue;
            };
            if primary.status != Status::Down {
                reported = None;
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
        let candidate = match choose_candidate(&fresh, failed, self.settings.max_lag) {
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
            self.settings.confirmations
        );
        match self
            .promote_and_follow(&control, candidate, failed, &snapshot, reason)
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

    /// Some(snapshot) when `failed` fails `confirmations` checks in a row
    /// (the one that made it down counts); None when it answers again.
    ///
    /// A check that timed out asks the postmaster for a sign of life (an
    /// SSLRequest, answered without a login): no answer confirms at once
    /// (a hung or cut-off primary fails over about one timeout after it
    /// stops, not several); an answer means the server is slow, not gone,
    /// and the failure counts as one of the `confirmations` like any other.
    async fn confirm_down(&mut self, failed: NodeId) -> Option<Arc<ClusterSnapshot>> {
        let mut seen = self.view.snapshot();
        let mut node = seen.node(failed)?;
        let mut last = node.last_check;
        let mut failures = 1;
        loop {
            if node
                .last_error
                .as_ref()
                .is_some_and(|e| e.kind == CheckErrorKind::Timeout)
            {
                let target = self.settings.targets.get(failed.index())?;
                let limit = PING_LIMIT.min(self.settings.check_timeout);
                if !postmaster_answers(target, limit).await {
                    return Some(seen);
                }
                tracing::warn!(
                    node = %node.name,
                    "a check timed out, but the postmaster answers: the server is slow, not gone; checking again before any failover"
                );
            }
            if failures >= self.settings.confirmations {
                return Some(seen);
            }
            tokio::time::sleep(self.settings.interval).await;
            self.waker.check_now();
            let limit = self.settings.check_timeout + Duration::from_secs(1);
            let checked = self
                .view
                .wait_for(limit, |s| {
                    s.node(failed).is_some_and(|n| n.last_check > last)
                })
                .await;
            // No newer check within a check's timeout: the check itself is
            // stuck, which counts as a failure.
            seen = checked.unwrap_or_else(|s| s);
            node = seen.node(failed)?;
            if node.status != Status::Down {
                tracing::info!(node = %node.name, "the primary answered again: no failover");
                return None;
            }
            failures += 1;
            last = node.last_check.or(last).or(Some(SystemTime::now()));
        }
    }
}
