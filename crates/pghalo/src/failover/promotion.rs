//! Acting on a committed promotion: the new primary promoted (pg_promote
//! or failover_command), made the node table's primary, and every other
//! standby that is up pointed at it (the built-in follow or
//! follow_primary_command); a standby that cannot follow is detached.

use crate::cluster::{ClusterSnapshot, Detachment, Epoch, NodeId, Status};
use crate::coordinator::Decision;
use crate::health::Target;

use super::command::{self, Placeholders};
use super::{Control, Unfinished, Worker};

impl Worker {
    /// Commits the promotion of `candidate` in place of `old`, promotes it,
    /// makes it the node table's primary, and points every other standby
    /// that was up in `before` at it. Err says which step failed.
    ///
    /// `made_under` is the coordinator's epoch when `before` was read: a
    /// decision committed since (a node detached by hand) refuses this one,
    /// and the caller looks again.
    pub(super) async fn promote_and_follow(
        &mut self,
        control: &Control,
        candidate: NodeId,
        old: NodeId,
        before: &ClusterSnapshot,
        made_under: Epoch,
        reason: String,
    ) -> Result<Epoch, String> {
        let decision = Decision::Promote {
            node: candidate,
            replaces: Some(old),
        };
        let committed = self
            .coordinator
            .decide(decision, reason, made_under)
            .await
            .map_err(|refused| format!("not decided: {refused}"))?;
        self.unfinished = Some(Unfinished {
            node: candidate,
            replaces: old,
            before: before.clone(),
            epoch: committed.epoch,
        });
        let target = self
            .settings
            .targets
            .get(candidate.index())
            .ok_or_else(|| format!("there is no node {candidate}"))?;
        self.promote(control, candidate, old).await.map_err(|e| {
            format!(
                "promoting {} failed (epoch {}): {e}",
                target.name, committed.epoch
            )
        })?;
        // Routing acts on the decision, not on the next check's say-so.
        self.observer
            .set_primary(candidate)
            .await
            .map_err(|e| e.to_string())?;
        self.waker.check_now();
        let taken = self
            .view
            .wait_for(self.settings.promote_timeout, |s| {
                s.primary == Some(candidate)
                    && s.node(candidate)
                        .is_some_and(|n| n.in_recovery == Some(false))
            })
            .await;
        if taken.is_err() {
            return Err(format!(
                "{} was promoted but the node table has not taken it as primary (epoch {})",
                target.name, committed.epoch
            ));
        }
        self.retire(old, candidate).await;
        self.follow_all(control, candidate, old, before).await;
        self.unfinished = None;
        Ok(committed.epoch)
    }

    /// Carries an unfinished promotion through once its node is the
    /// primary after all: the other standbys are pointed at it.
    pub(super) async fn finish_promotion(&mut self, snapshot: &ClusterSnapshot) {
        let Some(unfinished) = &self.unfinished else {
            return;
        };
        if self.coordinator.epoch() != unfinished.epoch {
            // Something else was decided since (by hand, or a retry).
            self.unfinished = None;
            return;
        }
        let writable = snapshot.primary == Some(unfinished.node)
            && snapshot
                .node(unfinished.node)
                .is_some_and(|n| n.status == Status::Up && n.in_recovery == Some(false));
        let Some(control) = self.settings.control.clone() else {
            return;
        };
        if !writable {
            return;
        }
        if let Some(done) = self.unfinished.take() {
            tracing::warn!(
                "{} left recovery after its promotion was given up on: pointing the other standbys at it",
                self.name(done.node)
            );
            self.retire(done.replaces, done.node).await;
            self.follow_all(&control, done.node, done.replaces, &done.before)
                .await;
        }
    }

    /// Detaches `old`, replaced by `new`: back as a standby it must not
    /// serve reads until it streams from the new primary on its timeline
    /// (auto_failback, or ctl attach); restarted without pg_rewind it holds
    /// a history the new primary does not have.
    async fn retire(&mut self, old: NodeId, new: NodeId) {
        if old == new || self.view.snapshot().node(old).is_none_or(|n| n.detached) {
            return;
        }
        let reason = format!("{} replaced it as the primary", self.name(new));
        self.set_detached(old, Detachment::Automatic, reason).await;
    }

    /// Promotes `candidate` with failover_command if one is set (its exit
    /// status checked, then pghalo waits until the node is out of
    /// recovery itself), else with pg_promote().
    async fn promote(
        &self,
        control: &Control,
        candidate: NodeId,
        old: NodeId,
    ) -> Result<(), String> {
        let target = self
            .settings
            .targets
            .get(candidate.index())
            .ok_or_else(|| format!("there is no node {candidate}"))?;
        let limit = self.settings.promote_timeout;
        if matches!(control.is_in_recovery(target).await, Ok(false)) {
            // A retry after a promotion that finished late: done already.
            return Ok(());
        }
        let Some(template) = &self.settings.failover_command else {
            return control
                .promote(target, limit)
                .await
                .map_err(|e| e.to_string());
        };
        self.run_command("failover_command", template, (old, candidate, old), limit)
            .await?;
        control
            .wait_out_of_recovery(target, limit)
            .await
            .map_err(|e| format!("after failover_command: {e}"))
    }

    /// Points `standby` at `new`: follow_primary_command if one is set
    /// (then pghalo waits until the new primary shows it streaming), else
    /// the built-in follow.
    async fn follow(
        &self,
        control: &Control,
        primary: &Target,
        standby: NodeId,
        new: NodeId,
        old: NodeId,
    ) -> Result<(), String> {
        let target = self
            .settings
            .targets
            .get(standby.index())
            .ok_or_else(|| format!("there is no node {standby}"))?;
        let limit = self.settings.follow_timeout;
        let Some(template) = &self.settings.follow_primary_command else {
            return control
                .follow(primary, target, limit)
                .await
                .map_err(|e| e.to_string());
        };
        self.run_command(
            "follow_primary_command",
            template,
            (standby, new, old),
            limit,
        )
        .await?;
        self.waker.check_now();
        self.view
            .wait_for(limit, |s| {
                s.primary == Some(new)
                    && s.node(standby).is_some_and(|n| {
                        n.replication
                            .as_ref()
                            .is_some_and(|r| r.state == "streaming")
                    })
            })
            .await
            .map(|_| ())
            .map_err(|_| {
                format!(
                    "follow_primary_command succeeded, but {} does not stream from {} after {limit:?}",
                    target.name, primary.name
                )
            })
    }

    /// Runs the operator's `what` (failover_command or
    /// follow_primary_command), its placeholders filled for `(node, new,
    /// old)`, within `limit`; Err says why it did not succeed.
    async fn run_command(
        &self,
        what: &str,
        template: &str,
        (node, new, old): (NodeId, NodeId, NodeId),
        limit: std::time::Duration,
    ) -> Result<(), String> {
        let line = self
            .placeholders(node, new, old)
            .map(|p| command::expand(template, &p))
            .ok_or_else(|| "a node is missing from the configuration".to_owned())?;
        tracing::info!(command = %line, "running {what}");
        let output = command::run(&line, limit)
            .await
            .map_err(|e| format!("{what} {line:?}: {e}"))?;
        tracing::info!(output = %output.trim(), "{what} succeeded");
        Ok(())
    }

    fn placeholders(&self, node: NodeId, new: NodeId, old: NodeId) -> Option<Placeholders> {
        let facts = |id: NodeId| self.settings.facts.get(id.index()).cloned();
        Some(Placeholders {
            node: facts(node)?,
            new_primary: facts(new)?,
            old_primary: facts(old)?,
        })
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
            let Some(standby) = self.settings.targets.get(node.index()).cloned() else {
                continue;
            };
            match self.follow(control, &primary, node, new, failed).await {
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
                        let _ = self
                            .observer
                            .set_detached(node, Detachment::Automatic)
                            .await;
                    }
                }
            }
        }
    }
}
