//! `pghalo ctl promote N`: the operator names the new primary.
//!
//! - With the primary down (or none known), it is a failover to N that
//!   skips what only guards automatic ones: the confirmation, the choice
//!   of the most advanced standby, max_lag_on_failover and the synchronous
//!   rule. The operator has taken that responsibility (issue 5: "the admin
//!   can force it").
//! - With the primary up, it is a switchover that loses nothing: the
//!   primary is detached (no request reaches it; its sessions end with
//!   57P01), its client sessions are ended, N waits until it has received
//!   all the primary wrote, and only then is N promoted and the other
//!   standbys pointed at it. The old primary keeps running as a primary,
//!   detached and fenced: making it a standby again is the recovery
//!   issue's job (pg_rewind), and `ctl attach` once it follows.
//!
//! Refused, with nothing changed: a node that does not exist, the current
//! primary, a node that is not an up standby, a detached node.

use crate::cluster::{Detachment, NodeId, Role, Status};
use crate::coordinator::Decision;

use super::Worker;

impl Worker {
    pub(super) async fn promote_by_hand(&mut self, node: NodeId) -> Result<String, String> {
        let Some(control) = self.settings.control.clone() else {
            return Err(
                "pghalo cannot promote: failover.recovery_user is not set, or failover.auto_failover is false"
                    .to_owned(),
            );
        };
        let made_under = self.coordinator.epoch();
        let snapshot = self.view.snapshot();
        let Some(target) = snapshot.node(node) else {
            return Err(format!(
                "there is no node {node}: the nodes are 0 to {}",
                snapshot.nodes.len().saturating_sub(1)
            ));
        };
        let name = target.name.clone();
        if snapshot.primary == Some(node) {
            return Err(format!("node {node} ({name}) is already the primary"));
        }
        if target.status != Status::Up {
            return Err(format!(
                "node {node} ({name}) is {}: only a standby that is up can be promoted",
                target.status
            ));
        }
        if target.role != Role::Standby {
            return Err(format!(
                "node {node} ({name}) is not a standby (its role is {})",
                target.role
            ));
        }
        if target.detached {
            return Err(format!(
                "node {node} ({name}) is detached: attach it first (pghalo ctl attach {node})"
            ));
        }
        let old = snapshot.primary_node().filter(|p| p.status == Status::Up);
        let Some(old) = old else {
            // No live primary: a failover to the named node.
            let replaced = snapshot.primary.unwrap_or(node);
            let reason =
                "promoted by hand (pghalo ctl promote) while the primary is down".to_owned();
            let epoch = self
                .promote_and_follow(&control, node, replaced, &snapshot, made_under, reason)
                .await?;
            return Ok(format!("{name} is the primary (epoch {epoch})"));
        };
        let (old_id, old_name) = (old.id, old.name.clone());
        let Some(old_target) = self.settings.targets.get(old_id.index()).cloned() else {
            return Err(format!("there is no node {old_id}"));
        };
        let Some(new_target) = self.settings.targets.get(node.index()).cloned() else {
            return Err(format!("there is no node {node}"));
        };
        // Out of routing first, so nothing new is written on it.
        let detach = self
            .coordinator
            .decide(
                Decision::Detach { node: old_id },
                format!("switchover to {name} (pghalo ctl promote)"),
                made_under,
            )
            .await
            .map_err(|refused| format!("not decided: {refused}"))?;
        self.observer
            .set_detached(old_id, Detachment::Automatic)
            .await
            .map_err(|e| e.to_string())?;
        let caught_up = async {
            let lsn = control
                .quiesce(&old_target, self.settings.follow_timeout)
                .await?;
            control
                .wait_received(&new_target, lsn, self.settings.follow_timeout)
                .await
                .map(|()| lsn)
        }
        .await;
        let lsn = match caught_up {
            Ok(lsn) => lsn,
            Err(e) => {
                // Nothing was promoted: the old primary goes back.
                let reason = format!("switchover to {name} abandoned: {e}");
                if self
                    .coordinator
                    .decide(
                        Decision::Attach { node: old_id },
                        reason.clone(),
                        detach.epoch,
                    )
                    .await
                    .is_ok()
                {
                    let _ = self
                        .observer
                        .set_detached(old_id, Detachment::Attached)
                        .await;
                }
                return Err(reason);
            }
        };
        let reason =
            format!("switchover by hand (pghalo ctl promote); {name} has received up to {lsn}");
        let epoch = self
            .promote_and_follow(&control, node, old_id, &snapshot, detach.epoch, reason)
            .await?;
        let report = format!(
            "{old_name} still runs as a primary, detached: rebuild it as a standby of {name} (pg_rewind), then attach it"
        );
        self.coordinator.report(
            format!("switchover from {old_name} to {name}"),
            report.clone(),
        );
        Ok(format!("{name} is the primary (epoch {epoch}); {report}"))
    }
}
