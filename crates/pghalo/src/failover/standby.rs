//! Standbys that fail and come back: a standby whose check failed and
//! every retry failed too (health_check_max_retries) is detached (a decision); its
//! replication slot on the primary is dropped once it has been detached
//! longer than `slot_grace_period`, so WAL does not pile up; with
//! auto_failback it is attached again once the primary shows it streaming
//! on the primary's timeline (a slot pghalo dropped is made again first,
//! in case the WAL it needs is still there). A standby the operator
//! detached is never attached automatically.

use std::time::SystemTime;

use crate::cluster::{ClusterSnapshot, Detachment, NodeId, NodeState, Role, Status};
use crate::coordinator::Decision;

use super::{SETTLE, Worker};

/// The least time a slot made again is kept.
const REMADE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// What pghalo did to a detached standby's replication slot.
#[derive(Clone, Debug)]
pub(super) enum SlotState {
    /// Dropped after the grace period (its name, to make it again).
    Dropped(String),
    /// Made again when the standby came back, at this time.
    Remade(std::time::Instant),
}

impl Worker {
    pub(super) async fn standby_upkeep(&mut self, snapshot: &ClusterSnapshot) {
        let primary = snapshot.primary_node().filter(|p| p.status == Status::Up);
        for node in &snapshot.nodes {
            if Some(node.id) == snapshot.primary || node.role != Role::Standby {
                continue;
            }
            if !node.detached {
                if node.status == Status::Down
                    && node.checks.consecutive_failures >= self.confirmations(node.id)
                {
                    let reason = format!(
                        "{} failed {} checks in a row",
                        node.name, node.checks.consecutive_failures
                    );
                    self.set_detached(node.id, Detachment::Automatic, reason)
                        .await;
                }
                continue;
            }
            let Some(primary) = primary else { continue };
            self.keep_slot_within_grace(node, primary).await;
            if self.settings.auto_failback && !node.detached_by_hand {
                self.fail_back(node, primary).await;
            }
        }
    }

    /// Commits the detach or attach of `node`, applies it, and waits until
    /// a snapshot shows it (so the next look does not decide it again).
    pub(super) async fn set_detached(&mut self, node: NodeId, how: Detachment, reason: String) {
        let decision = if how == Detachment::Attached {
            Decision::Attach { node }
        } else {
            Decision::Detach { node }
        };
        let epoch = self.coordinator.epoch();
        match self.coordinator.decide(decision, reason, epoch).await {
            Ok(_) => {
                if self.observer.set_detached(node, how).await.is_ok() {
                    let detached = how != Detachment::Attached;
                    let _ = self
                        .view
                        .wait_for(SETTLE, |s| {
                            s.node(node).is_some_and(|n| n.detached == detached)
                        })
                        .await;
                }
            }
            Err(refused) => tracing::warn!("not decided: {refused}"),
        }
    }

    async fn keep_slot_within_grace(&mut self, node: &NodeState, primary: &NodeState) {
        let (Some(grace), Some(since), Some(slot), Some(control)) = (
            self.settings.slot_grace,
            node.detached_since,
            node.slot_name.clone(),
            self.settings.control.clone(),
        ) else {
            return;
        };
        let streaming = node
            .replication
            .as_ref()
            .is_some_and(|r| r.state == "streaming");
        let overdue = SystemTime::now()
            .duration_since(since)
            .is_ok_and(|detached_for| detached_for > grace);
        // A slot made again for a standby that came back gets a new grace
        // period from then, and at least a minute: the standby retries
        // streaming every wal_retrieve_retry_interval (5 s by default).
        let remade_overdue = match self.slots.get(&node.id) {
            None => true,
            Some(SlotState::Dropped(_)) => false,
            Some(SlotState::Remade(at)) => at.elapsed() > grace.max(REMADE_GRACE),
        };
        if streaming || !overdue || !remade_overdue {
            return;
        }
        let Some(target) = self.settings.targets.get(primary.id.index()) else {
            return;
        };
        match control.drop_slot(target, &slot).await {
            Ok(dropped) => {
                if dropped {
                    tracing::warn!(
                        "dropped replication slot {slot} of {} on {}: detached for more than slot_grace_period; it catches up only if the WAL it needs is still there, else it needs recovery",
                        node.name,
                        primary.name
                    );
                    self.coordinator.report(
                        format!("replication slot {slot} of {} dropped", node.name),
                        format!("detached for more than {grace:?}"),
                    );
                }
                self.slots.insert(node.id, SlotState::Dropped(slot));
            }
            Err(e) => tracing::warn!("cannot drop replication slot {slot} of {}: {e}", node.name),
        }
    }

    async fn fail_back(&mut self, node: &NodeState, primary: &NodeState) {
        if node.status != Status::Up {
            return;
        }
        let streaming = node
            .replication
            .as_ref()
            .is_some_and(|r| r.state == "streaming");
        if !streaming {
            // Back, but not streaming: if pghalo dropped its slot, make it
            // again so that it can.
            let dropped = match self.slots.get(&node.id) {
                Some(SlotState::Dropped(slot)) => Some(slot.clone()),
                _ => None,
            };
            if let (Some(slot), Some(control), Some(target)) = (
                dropped,
                self.settings.control.clone(),
                self.settings.targets.get(primary.id.index()),
            ) {
                match control.ensure_slot(target, &slot).await {
                    Ok(()) => {
                        tracing::info!("made replication slot {slot} for {} again", node.name);
                        self.slots
                            .insert(node.id, SlotState::Remade(std::time::Instant::now()));
                    }
                    Err(e) => tracing::warn!("cannot make replication slot {slot} again: {e}"),
                }
            }
            return;
        }
        if node.timeline != primary.timeline {
            return;
        }
        self.slots.remove(&node.id);
        let reason = format!("streams from {} again (auto_failback)", primary.name);
        tracing::info!(node = %node.name, "{reason}: attached");
        self.set_detached(node.id, Detachment::Attached, reason)
            .await;
    }
}
