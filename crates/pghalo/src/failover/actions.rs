//! The built-in actions, over SQL as recovery_user: promote a standby and
//! wait until it writes; point a standby at a new primary and wait until
//! it streams from it. Each returns a typed outcome; none retries on its
//! own (the orchestrator decides what a failure means).

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::cluster::Lsn;
use crate::config::BackendHost;
use crate::config::passwd::Secret;
use crate::health::Target;

use super::conninfo;

/// How pghalo logs in to act on a node.
#[derive(Clone, Debug)]
pub struct Control {
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    /// Connecting and each statement.
    pub timeout: Duration,
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("cannot reach {node}: {source}")]
    Connect {
        node: String,
        source: tokio_postgres::Error,
    },
    #[error("{node}: {what}: {detail}")]
    Sql {
        node: String,
        what: &'static str,
        detail: String,
    },
    #[error("{node}: no answer within {limit:?} ({what})")]
    Timeout {
        node: String,
        what: &'static str,
        limit: Duration,
    },
    #[error("{node}: {reason}")]
    Refused { node: String, reason: String },
}

impl Control {
    async fn connect(&self, node: &Target) -> Result<(Client, Driver), ActionError> {
        let mut config = tokio_postgres::Config::new();
        match &node.host {
            BackendHost::Tcp(host) => config.host(host),
            BackendHost::Unix(dir) => config.host_path(dir),
        };
        config
            .port(node.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name("pghalo-failover")
            .connect_timeout(self.timeout);
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        // connect_timeout bounds the socket's connect only: a server that
        // accepts and then never answers (a stopped postmaster, hung
        // storage) would hold the failover here for good.
        let (client, connection) = tokio::time::timeout(self.timeout, config.connect(NoTls))
            .await
            .map_err(|_| ActionError::Timeout {
                node: node.name.clone(),
                what: "logging in",
                limit: self.timeout,
            })?
            .map_err(|source| ActionError::Connect {
                node: node.name.clone(),
                source,
            })?;
        let driver = Driver(tokio::spawn(async move {
            let _ = connection.await;
        }));
        Ok((client, driver))
    }

    async fn run<T>(
        &self,
        node: &Target,
        what: &'static str,
        step: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, ActionError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(ActionError::Sql {
                node: node.name.clone(),
                what,
                detail: describe(&source),
            }),
            Err(_) => Err(ActionError::Timeout {
                node: node.name.clone(),
                what,
                limit: self.timeout,
            }),
        }
    }

    /// A standby's WAL positions now: (received, replayed).
    pub async fn positions(
        &self,
        node: &Target,
    ) -> Result<(Option<Lsn>, Option<Lsn>), ActionError> {
        let (client, _driver) = self.connect(node).await?;
        let row = self
            .run(
                node,
                "reading WAL positions",
                client.query_one(
                    "SELECT pg_catalog.pg_last_wal_receive_lsn()::text, \
                            pg_catalog.pg_last_wal_replay_lsn()::text",
                    &[],
                ),
            )
            .await?;
        let lsn = |i: usize| {
            row.get::<_, Option<String>>(i)
                .and_then(|text| text.parse::<Lsn>().ok())
        };
        Ok((lsn(0), lsn(1)))
    }

    /// Ends every client session on `node` (a primary being switched
    /// over, already out of routing) and returns its WAL position once
    /// none is left, so that nothing is written after it. pghalo's own
    /// checks (read-only) are spared: ending them would make the node look
    /// down.
    pub async fn quiesce(&self, node: &Target, limit: Duration) -> Result<Lsn, ActionError> {
        let (client, _driver) = self.connect(node).await?;
        let deadline = Instant::now() + limit;
        loop {
            let left: i64 = self
                .run(
                    node,
                    "ending client sessions",
                    client.query_one(
                        "SELECT count(pg_catalog.pg_terminate_backend(pid))                          FROM pg_catalog.pg_stat_activity                          WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() \
                           AND application_name IS DISTINCT FROM $1",
                        &[&crate::health::MONITOR_APPLICATION_NAME],
                    ),
                )
                .await?
                .get(0);
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Refused {
                    node: node.name.clone(),
                    reason: format!("{left} client sessions still run after {limit:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text: String = self
            .run(
                node,
                "reading the WAL position",
                client.query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[]),
            )
            .await?
            .get(0);
        text.parse::<Lsn>().map_err(|e| ActionError::Refused {
            node: node.name.clone(),
            reason: format!("unexpected WAL position {text:?}: {e}"),
        })
    }

    /// Waits until standby `node` has received WAL up to `lsn`.
    pub async fn wait_received(
        &self,
        node: &Target,
        lsn: Lsn,
        limit: Duration,
    ) -> Result<(), ActionError> {
        poll_until(node, limit, Duration::from_millis(50), || async {
            let (receive, replay) = self.positions(node).await?;
            Ok(receive.max(replay).is_some_and(|at| at >= lsn))
        })
        .await
        .map_err(|e| e.or_reason(format!("has not received WAL up to {lsn} after {limit:?}")))
    }

    /// Waits until `node` is out of recovery (promoted by a command).
    pub async fn wait_out_of_recovery(
        &self,
        node: &Target,
        limit: Duration,
    ) -> Result<(), ActionError> {
        // Connections may fail while the node restarts into a primary.
        poll_until(node, limit, Duration::from_millis(100), || async {
            Ok(matches!(self.is_in_recovery(node).await, Ok(false)))
        })
        .await
        .map_err(|e| e.or_reason(format!("still in recovery after {limit:?}")))
    }

    /// Whether `node` is in recovery now.
    pub async fn is_in_recovery(&self, node: &Target) -> Result<bool, ActionError> {
        let (client, _driver) = self.connect(node).await?;
        let row = self
            .run(
                node,
                "pg_is_in_recovery",
                client.query_one("SELECT pg_catalog.pg_is_in_recovery()", &[]),
            )
            .await?;
        Ok(row.get(0))
    }

    /// Promotes `node` and returns once it is out of recovery.
    pub async fn promote(&self, node: &Target, limit: Duration) -> Result<(), ActionError> {
        let (client, _driver) = self.connect(node).await?;
        let seconds = i32::try_from(limit.as_secs().max(1)).unwrap_or(i32::MAX);
        // pg_promote(wait => true) returns once the server has left
        // recovery, or false when it did not within the limit.
        let promoted: bool = match tokio::time::timeout(
            limit + self.timeout,
            client.query_one("SELECT pg_catalog.pg_promote(true, $1)", &[&seconds]),
        )
        .await
        {
            Ok(Ok(row)) => row.get(0),
            Ok(Err(source)) => {
                return Err(ActionError::Sql {
                    node: node.name.clone(),
                    what: "pg_promote",
                    detail: describe(&source),
                });
            }
            Err(_) => {
                return Err(ActionError::Timeout {
                    node: node.name.clone(),
                    what: "pg_promote",
                    limit,
                });
            }
        };
        let in_recovery: bool = self
            .run(
                node,
                "pg_is_in_recovery",
                client.query_one("SELECT pg_catalog.pg_is_in_recovery()", &[]),
            )
            .await?
            .get(0);
        if !promoted || in_recovery {
            return Err(ActionError::Refused {
                node: node.name.clone(),
                reason: format!("still in recovery {limit:?} after pg_promote"),
            });
        }
        Ok(())
    }

    /// Creates physical replication slot `slot` on `primary` unless it
    /// exists.
    pub async fn ensure_slot(&self, primary: &Target, slot: &str) -> Result<(), ActionError> {
        let (client, _driver) = self.connect(primary).await?;
        self.run(
            primary,
            "creating the replication slot",
            client.execute(
                "SELECT pg_catalog.pg_create_physical_replication_slot($1) \
                 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            ),
        )
        .await?;
        Ok(())
    }

    /// Drops replication slot `slot` on `primary` if it exists and no
    /// walsender uses it; true if it was dropped.
    pub async fn drop_slot(&self, primary: &Target, slot: &str) -> Result<bool, ActionError> {
        let (client, _driver) = self.connect(primary).await?;
        let dropped = self
            .run(
                primary,
                "dropping the replication slot",
                client.query(
                    "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
                     FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active",
                    &[&slot],
                ),
            )
            .await?;
        Ok(!dropped.is_empty())
    }

    /// Points `standby` at `primary`: its replication slot made on the
    /// primary first, primary_conninfo rewritten to the primary's address
    /// (everything else, credentials included, kept), the configuration
    /// reloaded; returns once it streams from the primary.
    pub async fn follow(
        &self,
        primary: &Target,
        standby: &Target,
        limit: Duration,
    ) -> Result<(), ActionError> {
        let (on_standby, _standby_driver) = self.connect(standby).await?;
        let settings = self
            .run(
                standby,
                "reading primary_conninfo",
                on_standby.query_one(
                    "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')",
                    &[],
                ),
            )
            .await?;
        let (old_conninfo, slot): (String, String) = (settings.get(0), settings.get(1));
        let host = match &primary.host {
            BackendHost::Tcp(host) => host.clone(),
            BackendHost::Unix(dir) => dir.display().to_string(),
        };
        let new_conninfo =
            conninfo::pointed_at(&old_conninfo, &host, primary.port).map_err(|reason| {
                ActionError::Refused {
                    node: standby.name.clone(),
                    reason: format!("cannot read its primary_conninfo: {reason}"),
                }
            })?;
        if !slot.is_empty() {
            self.ensure_slot(primary, &slot).await?;
        }
        // ALTER SYSTEM takes no parameters (a quoted literal) and cannot
        // share a Query with another statement (it refuses to run inside
        // the implicit transaction of several).
        let literal = format!("'{}'", new_conninfo.replace('\'', "''"));
        self.run(
            standby,
            "ALTER SYSTEM SET primary_conninfo",
            on_standby.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = {literal}")),
        )
        .await?;
        self.run(
            standby,
            "pg_reload_conf",
            on_standby.batch_execute("SELECT pg_catalog.pg_reload_conf()"),
        )
        .await?;
        poll_until(standby, limit, Duration::from_millis(100), || async {
            let row = self
                .run(
                    standby,
                    "reading pg_stat_wal_receiver",
                    on_standby.query_opt(
                        "SELECT status, sender_host, sender_port FROM pg_catalog.pg_stat_wal_receiver",
                        &[],
                    ),
                )
                .await?;
            // The host too: nodes on different hosts often share a port,
            // and the old walreceiver may still be streaming from the old
            // primary right after the reload.
            Ok(row.is_some_and(|r| {
                r.get::<_, Option<String>>(0).as_deref() == Some("streaming")
                    && r.get::<_, Option<String>>(1).as_deref() == Some(host.as_str())
                    && r.get::<_, Option<i32>>(2) == Some(i32::from(primary.port))
            }))
        })
        .await
        .map_err(|e| {
            e.or_reason(format!(
                "not streaming from {} after {limit:?}: it may have diverged and need pg_rewind",
                primary.name
            ))
        })
    }
}

/// Asks `ready` every `every` until it says true, or `limit` passes (then
/// [`Waited::TimedOut`]); an error from `ready` ends the wait at once.
async fn poll_until<F, Fut>(
    node: &Target,
    limit: Duration,
    every: Duration,
    mut ready: F,
) -> Result<(), Waited>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, ActionError>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if ready().await.map_err(Waited::Failed)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Waited::TimedOut(node.name.clone()));
        }
        tokio::time::sleep(every).await;
    }
}

/// How a [`poll_until`] ended without the condition.
enum Waited {
    Failed(ActionError),
    /// The node's name.
    TimedOut(String),
}

impl Waited {
    /// The error, with `reason` for a wait that ran out.
    fn or_reason(self, reason: String) -> ActionError {
        match self {
            Waited::Failed(e) => e,
            Waited::TimedOut(node) => ActionError::Refused { node, reason },
        }
    }
}

/// The server's own message when there is one ("db error" alone says
/// nothing).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

/// Drives a control connection's socket until dropped.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}
