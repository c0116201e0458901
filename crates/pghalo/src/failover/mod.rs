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
//! - `actions.rs`: promote and follow over SQL as recovery_user.
//! - `conninfo.rs`: primary_conninfo read and pointed elsewhere.
//! - `mod.rs`: [`FailoverSettings`] and the task ([`FailoverTask`]).
//!
//! Not yet (issue 5 goes on): the failover_command / follow_primary_command
//! templates, synchronous-standby-only candidates, per-node priorities,
//! auto_failback, the slot grace period, sessions waiting for the new
//! primary, `pghalo ctl`.

mod actions;
mod candidate;
mod conninfo;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use actions::{ActionError, Control};
pub use candidate::{NoCandidate, choose_candidate};

use crate::cluster::{CheckErrorKind, ClusterSnapshot, ClusterView, NodeId, Observer, Status};
use crate::config::passwd::{PasswdError, PasswordFile};
use crate::config::{Config, ResolvedPassword};
use crate::coordinator::{Coordinator, Decision};
use crate::health::{MonitorWaker, Target};

/// How long to wait before trying a failed failover again.
const BACKOFF: Duration = Duration::from_secs(5);

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
    pub targets: Vec<Target>,
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
            targets: Target::all(config),
        })
    }
}

/// The running task; dropping the handle stops it.
pub struct FailoverTask {
    task: JoinHandle<()>,
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
        };
        FailoverTask {
            task: tokio::spawn(worker.run(shutdown)),
        }
    }
}

struct Worker {
    settings: FailoverSettings,
    view: ClusterView,
    observer: Observer,
    waker: MonitorWaker,
    coordinator: Arc<dyn Coordinator>,
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
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut reported: Option<NodeId> = None;
        loop {
            tokio::select! {
                alive = self.view.changed() => if !alive { return },
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            let snapshot = self.view.snapshot();
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
        let name = |id: NodeId| {
            self.settings
                .targets
                .get(id.index())
                .map_or_else(|| id.to_string(), |t| t.name.clone())
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
                tracing::error!(failed = %name(failed), "the primary is down and no standby can be promoted: {why}");
                return Outcome::Retry;
            }
        };
        let reason = format!(
            "{} failed {} checks in a row",
            name(failed),
            self.settings.confirmations
        );
        let decision = Decision::Promote {
            node: candidate,
            replaces: Some(failed),
        };
        let committed = match self
            .coordinator
            .decide(decision, reason, self.coordinator.epoch())
            .await
        {
            Ok(committed) => committed,
            Err(refused) => {
                tracing::warn!("failover not decided: {refused}");
                return Outcome::Retry;
            }
        };
        let Some(target) = self.settings.targets.get(candidate.index()) else {
            return Outcome::Handled;
        };
        if let Err(e) = control.promote(target, self.settings.promote_timeout).await {
            tracing::error!(epoch = %committed.epoch, "promoting {} failed: {e}", target.name);
            return Outcome::Retry;
        }
        let promoted = started.elapsed();
        // The node table takes the new primary at its next check: ask now.
        self.waker.check_now();
        let taken = self
            .view
            .wait_for(self.settings.promote_timeout, |s| {
                s.primary == Some(candidate)
            })
            .await;
        if taken.is_err() {
            tracing::error!(
                epoch = %committed.epoch,
                "{} was promoted but the node table has not taken it as primary",
                target.name
            );
            return Outcome::Retry;
        }
        tracing::warn!(
            epoch = %committed.epoch,
            detected_ms = detected.as_millis() as u64,
            promoted_ms = promoted.as_millis() as u64,
            "failover: {} is the primary in place of {}",
            target.name,
            name(failed)
        );
        self.follow_all(&control, candidate, failed, &snapshot)
            .await;
        Outcome::Handled
    }

    /// Some(snapshot) when `failed` fails `confirmations` checks in a row
    /// (the one that made it down counts); None when it answers again. A
    /// check that timed out is confirmation enough: the node was given
    /// sr_check_timeout to answer and did not (a hung primary fails over
    /// one timeout after it hangs, not several).
    async fn confirm_down(&mut self, failed: NodeId) -> Option<Arc<ClusterSnapshot>> {
        let mut seen = self.view.snapshot();
        let node = seen.node(failed)?;
        if node
            .last_error
            .as_ref()
            .is_some_and(|e| e.kind == CheckErrorKind::Timeout)
        {
            return Some(seen);
        }
        let mut last = node.last_check;
        for _ in 1..self.settings.confirmations {
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
            let node = seen.node(failed)?;
            if node.status != Status::Down {
                tracing::info!(node = %node.name, "the primary answered again: no failover");
                return None;
            }
            if node
                .last_error
                .as_ref()
                .is_some_and(|e| e.kind == CheckErrorKind::Timeout)
            {
                break;
            }
            last = node.last_check.or(last).or(Some(SystemTime::now()));
        }
        Some(seen)
    }

    /// Points every standby but `new` at `new`; one that cannot follow is
    /// detached (a committed decision) and reported as needing recovery.
    async fn follow_all(
        &mut self,
        control: &Control,
        new: NodeId,
        failed: NodeId,
        before: &ClusterSnapshot,
    ) {
        let Some(primary) = self.settings.targets.get(new.index()).cloned() else {
            return;
        };
        let followers: Vec<NodeId> = before
            .standbys()
            .filter(|n| n.id != new && n.id != failed && n.status == Status::Up)
            .map(|n| n.id)
            .collect();
        for node in followers {
            let Some(standby) = self.settings.targets.get(node.index()) else {
                continue;
            };
            match control
                .follow(&primary, standby, self.settings.follow_timeout)
                .await
            {
                Ok(()) => tracing::info!("{} follows {}", standby.name, primary.name),
                Err(e) => {
                    tracing::error!(
                        "{} cannot follow {}; detached, it needs recovery: {e}",
                        standby.name,
                        primary.name
                    );
                    let reason = format!("cannot follow {}: {e}", primary.name);
                    let decided = self
                        .coordinator
                        .decide(Decision::Detach { node }, reason, self.coordinator.epoch())
                        .await;
                    if decided.is_ok() {
                        let _ = self.observer.set_detached(node, true).await;
                    }
                }
            }
        }
    }
}
