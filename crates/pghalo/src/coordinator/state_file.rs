//! The decided state kept across restarts, pgpool_status's job: which node
//! is the primary (with its timeline), which nodes are detached, the last
//! epoch and the events. Written whenever it changes (to a temporary file,
//! synced, then renamed over the old one, so a crash leaves the old state
//! or the new, never half of one); read once at start.
//!
//! The file makes a restart keep what was decided; it is not what keeps an
//! old primary out. Without it (deleted, unreadable) the node table's
//! timeline rules still refuse a former primary whenever a node on a newer
//! timeline is seen, so discarding it is safe, only less informed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{ClusterSnapshot, ClusterView, Epoch};

use super::{Coordinator, Event};

/// The format written; a file with another version is not read.
const VERSION: u32 = 1;

/// What a restart takes over. Nodes are named, not numbered, so that a
/// configuration whose `[[backend]]` order changed still reads it right.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecidedState {
    pub version: u32,
    /// The last committed epoch.
    pub epoch: u64,
    pub primary: Option<DecidedPrimary>,
    /// Nodes taken out of routing by a decision.
    pub detached: Vec<String>,
    /// Those of `detached` the operator detached (auto_failback leaves
    /// them alone).
    #[serde(default)]
    pub detached_by_hand: Vec<String>,
    pub events: Vec<StoredEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecidedPrimary {
    pub name: String,
    /// The timeline it wrote when last seen: a node claiming the role on
    /// an older one after a restart is a former primary.
    pub timeline: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEvent {
    pub epoch: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub what: String,
    pub reason: String,
}

impl DecidedState {
    /// The state `snapshot` and `coordinator` show now.
    pub fn now(snapshot: &ClusterSnapshot, coordinator: &dyn Coordinator) -> DecidedState {
        DecidedState {
            version: VERSION,
            epoch: coordinator.epoch().0,
            primary: snapshot.primary_node().map(|p| DecidedPrimary {
                name: p.name.clone(),
                timeline: p.timeline,
            }),
            detached: snapshot
                .nodes
                .iter()
                .filter(|n| n.detached)
                .map(|n| n.name.clone())
                .collect(),
            detached_by_hand: snapshot
                .nodes
                .iter()
                .filter(|n| n.detached && n.detached_by_hand)
                .map(|n| n.name.clone())
                .collect(),
            events: coordinator
                .events()
                .iter()
                .map(|e| StoredEvent {
                    epoch: e.epoch.map(|e| e.0),
                    at_ms: e
                        .at
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    what: e.what.clone(),
                    reason: e.reason.clone(),
                })
                .collect(),
        }
    }

    /// The events, for `Solo::restore`.
    pub fn restored_events(&self) -> Vec<Event> {
        self.events
            .iter()
            .map(|e| Event {
                epoch: e.epoch.map(Epoch),
                at: UNIX_EPOCH + Duration::from_millis(e.at_ms),
                what: e.what.clone(),
                reason: e.reason.clone(),
            })
            .collect()
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot {what} the state file {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {} is not pghalo's state (version {VERSION}): {why}", .path.display())]
    Unreadable { path: PathBuf, why: String },
}

/// Where the decided state lives (`[failover] state_file`).
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: &Path) -> StateFile {
        StateFile {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// None when there is no file yet.
    pub fn load(&self) -> Result<Option<DecidedState>, StateFileError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateFileError::Io {
                    what: "read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let state: DecidedState =
            serde_json::from_str(&text).map_err(|e| StateFileError::Unreadable {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        if state.version != VERSION {
            return Err(StateFileError::Unreadable {
                path: self.path.clone(),
                why: format!("it has version {}", state.version),
            });
        }
        Ok(Some(state))
    }

    pub fn save(&self, state: &DecidedState) -> Result<(), StateFileError> {
        let io = |what| {
            let path = self.path.clone();
            move |source| StateFileError::Io { what, path, source }
        };
        let mut text =
            serde_json::to_vec_pretty(state).map_err(|e| StateFileError::Unreadable {
                path: self.path.clone(),
                why: e.to_string(),
            })?;
        text.push(b'\n');
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let mut file = std::fs::File::create(&temporary).map_err(io("create"))?;
        file.write_all(&text).map_err(io("write"))?;
        file.sync_all().map_err(io("sync"))?;
        std::fs::rename(&temporary, &self.path).map_err(io("replace"))?;
        // The rename itself is durable only once the directory is synced.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Writes the state file whenever the decided state changes; dropping it
/// stops the task.
pub struct StateKeeper {
    task: JoinHandle<()>,
}

impl Drop for StateKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StateKeeper {
    pub fn start(
        file: StateFile,
        mut view: ClusterView,
        coordinator: Arc<dyn Coordinator>,
        mut shutdown: watch::Receiver<bool>,
    ) -> StateKeeper {
        let task = tokio::spawn(async move {
            let mut written: Option<DecidedState> = None;
            let mut failing = false;
            loop {
                let state = DecidedState::now(&view.snapshot(), coordinator.as_ref());
                if written.as_ref() != Some(&state) {
                    // Blocking file I/O, but small and rare (a change of
                    // topology): not worth a thread hop.
                    match file.save(&state) {
                        Ok(()) => {
                            if failing {
                                tracing::info!(file = %file.path().display(), "the state file is written again");
                            }
                            failing = false;
                            written = Some(state);
                        }
                        Err(e) => {
                            if !failing {
                                tracing::error!("{e}; a restart will not know what was decided");
                            }
                            failing = true;
                        }
                    }
                }
                tokio::select! {
                    alive = view.changed() => if !alive { return },
                    _ = shutdown.changed() => {
                        if *shutdown.borrow() {
                            let state = DecidedState::now(&view.snapshot(), coordinator.as_ref());
                            if written.as_ref() != Some(&state) {
                                let _ = file.save(&state);
                            }
                            return;
                        }
                    }
                }
            }
        });
        StateKeeper { task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_what_it_did_not_write() {
        let dir = std::env::temp_dir().join(format!("pghalo-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(&dir.join("pghalo.state"));
        assert!(file.load().unwrap().is_none());
        let state = DecidedState {
            version: VERSION,
            epoch: 4,
            primary: Some(DecidedPrimary {
                name: "node2".into(),
                timeline: Some(2),
            }),
            detached: vec!["node1".into()],
            detached_by_hand: vec![],
            events: vec![StoredEvent {
                epoch: Some(4),
                at_ms: 1_700_000_000_123,
                what: "promote node 2 in place of node 0".into(),
                reason: "node0 failed 3 checks in a row".into(),
            }],
        };
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state.clone()));
        assert_eq!(
            state.restored_events()[0].at,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
        for garbage in ["", "{", "null", "{\"version\": 1}", "\u{0}\u{ff}"] {
            std::fs::write(file.path(), garbage).unwrap();
            let err = file.load().unwrap_err();
            assert!(err.to_string().contains("is not pghalo's state"), "{err}");
        }
        let mut other = serde_json::to_value(&state).unwrap();
        other["version"] = 9.into();
        std::fs::write(file.path(), other.to_string()).unwrap();
        assert!(file.load().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
