//! One pghalo instance deciding alone: a decision is committed as soon as
//! it is made under the current epoch.

use std::sync::Mutex;
use std::time::SystemTime;

use crate::cluster::Epoch;

use super::{Committed, Coordinator, Decided, Decision, Event, Refused};

/// How many events are kept (the oldest go first).
const KEPT: usize = 1000;

/// One pghalo instance deciding alone.
#[derive(Debug, Default)]
pub struct Solo {
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    epoch: Epoch,
    events: Vec<Event>,
}

impl Solo {
    pub fn new() -> Solo {
        Solo::default()
    }

    /// Goes on from a state file: epochs continue after the last one it
    /// saw, and its events come first in `events()`.
    pub fn restore(epoch: Epoch, events: Vec<Event>) -> Solo {
        Solo {
            log: Mutex::new(Log { epoch, events }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn commit(
        &self,
        decision: Decision,
        reason: String,
        made_under: Epoch,
    ) -> Result<Committed, Refused> {
        let mut log = self.lock();
        let current = log.epoch;
        if made_under != current {
            return Err(Refused::Stale {
                made_under,
                current,
            });
        }
        let committed = Committed {
            epoch: current.next(),
            decision,
            reason,
            at: SystemTime::now(),
        };
        tracing::info!(epoch = %committed.epoch, reason = %committed.reason, "decided: {}", committed.decision);
        log.epoch = committed.epoch;
        log.push(Event::from(&committed));
        Ok(committed)
    }
}

impl Log {
    fn push(&mut self, event: Event) {
        if self.events.len() >= KEPT {
            self.events.remove(0);
        }
        self.events.push(event);
    }
}

impl Coordinator for Solo {
    fn decide(&self, decision: Decision, reason: String, made_under: Epoch) -> Decided<'_> {
        let outcome = self.commit(decision, reason, made_under);
        Box::pin(async move { outcome })
    }

    fn epoch(&self) -> Epoch {
        self.lock().epoch
    }

    fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    fn report(&self, what: String, reason: String) {
        let mut log = self.lock();
        // The same report again (a failover retried every few seconds)
        // adds nothing.
        if log
            .events
            .last()
            .is_some_and(|e| e.epoch.is_none() && e.what == what && e.reason == reason)
        {
            return;
        }
        log.push(Event {
            epoch: None,
            at: SystemTime::now(),
            what,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeId;

    #[tokio::test]
    async fn epochs_rise_and_stale_decisions_are_refused() {
        let solo = Solo::new();
        assert_eq!(solo.epoch(), Epoch::ZERO);
        let first = solo
            .decide(
                Decision::Detach { node: NodeId(2) },
                "down".into(),
                Epoch::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(first.epoch, Epoch(1));
        let promote = Decision::Promote {
            node: NodeId(1),
            replaces: Some(NodeId(0)),
        };
        // Made before the detach was committed: refused.
        assert_eq!(
            solo.decide(promote.clone(), "x".into(), Epoch::ZERO).await,
            Err(Refused::Stale {
                made_under: Epoch::ZERO,
                current: Epoch(1)
            })
        );
        let second = solo
            .decide(promote, "primary down".into(), Epoch(1))
            .await
            .unwrap();
        assert_eq!(second.epoch, Epoch(2));
        assert_eq!(
            second.decision.to_string(),
            "promote node 1 in place of node 0"
        );
        solo.report("no failover".into(), "why".into());
        solo.report("no failover".into(), "why".into());
        let events = solo.events();
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].epoch, Some(Epoch(2)));
        assert_eq!(events[2].epoch, None);
        assert_eq!(solo.epoch(), Epoch(2));

        // Restored from a state file: epochs go on from the last one.
        let restored = Solo::restore(Epoch(2), events);
        let third = restored
            .decide(
                Decision::Attach { node: NodeId(2) },
                "back".into(),
                Epoch(2),
            )
            .await
            .unwrap();
        assert_eq!(third.epoch, Epoch(3));
        assert_eq!(restored.events().len(), 4);
    }
}
