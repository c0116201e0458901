//! One check of one node: a connection of its own, one query, and the
//! answer read into a [`Probe`] or the failure sorted into a
//! [`CheckErrorKind`]. Every check opens a new connection (and closes it):
//! a postmaster that hangs or died while its old backends live on would go
//! unnoticed on a kept connection, whose backend still answers.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Row};

use crate::cluster::{CheckError, CheckErrorKind, Lsn, Probe, Sender};
use crate::config::BackendHost;

use super::settings::{Login, NodeCheck};

/// Everything the check asks, in one round trip. Works on PostgreSQL 13 to
/// 17: only functions and columns all of them have (`pg_stat_wal_receiver
/// .received_tli` since 9.6, the `*_wal_*` function names since 10).
///
/// - The recovery flag is read once, in a CTE that is materialised, so the
///   CASEs below agree with the value returned even if the node is
///   promoted while the query runs; each CASE then calls only functions
///   that work in that state (pg_current_wal_lsn() and pg_walfile_name()
///   fail during recovery).
/// - The timeline of a primary is the one it writes, the first 8 hex
///   digits of its current WAL file name: exact at once after a promotion,
///   where pg_control_checkpoint() shows the old timeline until the next
///   checkpoint completes. A standby reports the newest timeline it has:
///   the one it receives, or the newest in its pg_wal (a history file or
///   a segment), or its last restartpoint's, whichever is highest. Not
///   streaming is not enough to forget a newer timeline: a standby that
///   followed a new primary now down must still show that a former
///   primary on an older timeline was replaced (the node table's rule 4).
/// - The replay delay is pgpool's: the age of the last replayed commit
///   when the standby has received WAL it has not replayed, else 0, in
///   microseconds.
/// - On a primary, `synchronous_standby_names` and its walsenders (for the
///   failover's synchronous rule and SHOW POOL_NODES); the walsender
///   columns other than the pid read as NULL without pg_monitor.
const PROBE: &str = "\
WITH r AS MATERIALIZED (SELECT pg_catalog.pg_is_in_recovery() AS in_recovery)
SELECT r.in_recovery,
       CASE WHEN NOT r.in_recovery THEN pg_catalog.pg_current_wal_lsn()::text END,
       pg_catalog.pg_last_wal_receive_lsn()::text,
       pg_catalog.pg_last_wal_replay_lsn()::text,
       CASE WHEN NOT r.in_recovery
            THEN ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int
            ELSE greatest((SELECT received_tli FROM pg_catalog.pg_stat_wal_receiver),
                          (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int)
                           FROM pg_catalog.pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}'),
                          (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()))
       END,
       CASE WHEN r.in_recovery THEN
            CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
                 ELSE (extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp()) * 1000000)::bigint
            END
       END,
       current_setting('server_version_num')::int,
       CASE WHEN NOT r.in_recovery THEN current_setting('synchronous_standby_names') END,
       s.names, s.states, s.sync_states,
       CASE WHEN r.in_recovery THEN nullif(current_setting('primary_slot_name'), '') END
FROM r, LATERAL (
    SELECT array_agg(coalesce(application_name, '')) AS names,
           array_agg(coalesce(state, '')) AS states,
           array_agg(coalesce(sync_state, '')) AS sync_states
    FROM pg_catalog.pg_stat_replication
    WHERE NOT r.in_recovery
) s";

/// The name the monitor's sessions carry in pg_stat_activity.
pub const APPLICATION_NAME: &str = "pghalo-sr-check";

/// Drives a connection's socket; aborted on drop, so a node that stopped
/// answering cannot keep a task alive.
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks one node within its health_check_timeout, on a connection made
/// for this check and closed after it.
pub(super) async fn check(node: &NodeCheck) -> Result<Probe, CheckError> {
    let attempt = async {
        let (client, _driver) = open(node, &node.login.database)
            .await
            .map_err(|e| classify(&e, &node.login))?;
        let row = client
            .query_one(PROBE, &[])
            .await
            .map_err(|e| classify(&e, &node.login))?;
        read_probe(&row)
    };
    let timeout = node.schedule.timeout;
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CheckError::new(
            CheckErrorKind::Timeout,
            format!("no answer within {}", shown(timeout)),
        )),
    }
}

/// A connection to `database` on the node, logged in as its check's user;
/// the socket is driven until the returned guard is dropped.
pub(super) async fn open(
    node: &NodeCheck,
    database: &str,
) -> Result<(Client, AbortOnDrop), tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    match &node.target.host {
        BackendHost::Tcp(host) => config.host(host),
        BackendHost::Unix(dir) => config.host_path(dir),
    };
    config
        .port(node.target.port)
        .user(&node.login.user)
        .dbname(database)
        .application_name(APPLICATION_NAME);
    if let Some(password) = &node.login.password {
        config.password(password.expose());
    }
    // TLS to the backends is not used by the monitor yet (see
    // docs/topology.md); the check sends no password in clear with SCRAM.
    let (client, connection) = config.connect(NoTls).await?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        // Errors surface through the client (is_closed, a failed query).
        let _ = connection.await;
    }));
    Ok((client, driver))
}

fn read_probe(row: &Row) -> Result<Probe, CheckError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        CheckError::new(
            CheckErrorKind::Query,
            format!("unexpected answer ({what}): {e}"),
        )
    };
    let lsn = |index: usize, what: &str| -> Result<Option<Lsn>, CheckError> {
        let text: Option<String> = row.try_get(index).map_err(|e| bad(what, &e))?;
        text.map(|t| t.parse::<Lsn>().map_err(|e| bad(what, &e)))
            .transpose()
    };
    let in_recovery: bool = row.try_get(0).map_err(|e| bad("in recovery", &e))?;
    let timeline: Option<i32> = row.try_get(4).map_err(|e| bad("timeline", &e))?;
    let delay_us: Option<i64> = row.try_get(5).map_err(|e| bad("replay delay", &e))?;
    let version: Option<i32> = row.try_get(6).map_err(|e| bad("server version", &e))?;
    let sync_names: Option<String> = row
        .try_get(7)
        .map_err(|e| bad("synchronous_standby_names", &e))?;
    let column = |index: usize| -> Result<Vec<String>, CheckError> {
        let values: Option<Vec<String>> = row
            .try_get(index)
            .map_err(|e| bad("pg_stat_replication", &e))?;
        Ok(values.unwrap_or_default())
    };
    let (names, states, sync_states) = (column(8)?, column(9)?, column(10)?);
    let senders = names
        .into_iter()
        .zip(states)
        .zip(sync_states)
        .map(|((application_name, state), sync_state)| Sender {
            application_name,
            state,
            sync_state,
        })
        .collect();
    Ok(Probe {
        in_recovery,
        current_lsn: lsn(1, "current LSN")?,
        receive_lsn: lsn(2, "receive LSN")?,
        replay_lsn: lsn(3, "replay LSN")?,
        timeline: timeline.and_then(|t| u32::try_from(t).ok()),
        // The commit timestamp is the primary's clock and now() the
        // standby's: a skew can make the difference negative.
        replay_delay: delay_us.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))),
        server_version: version.and_then(|v| u32::try_from(v).ok()),
        synchronous_standby_names: sync_names,
        senders,
        slot_name: row.try_get(11).map_err(|e| bad("primary_slot_name", &e))?,
    })
}

/// Sorts a tokio-postgres failure into what the cluster tells apart.
fn classify(err: &tokio_postgres::Error, login: &Login) -> CheckError {
    use CheckErrorKind::{Busy, Closed, Config, Connect, Query, Unavailable};
    let (kind, mut message) = if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        let kind = match code {
            // invalid_authorization_specification, invalid_password (and
            // the rest of class 28): the user, password or pg_hba refuses
            // the check.
            c if c.starts_with("28") => Config,
            // invalid_catalog_name: health_check_database does not exist.
            "3D000" => Config,
            // insufficient_privilege: health_check_user lacks pg_monitor.
            "42501" => Config,
            // too_many_connections: the server is there, and answers.
            "53300" => Busy,
            // cannot_connect_now (starting up, shutting down), admin/crash
            // shutdown.
            "57P03" | "57P01" | "57P02" => Unavailable,
            _ => Query,
        };
        (kind, format!("{} (SQLSTATE {code})", db.message()))
    } else {
        let text = err.to_string();
        // tokio-postgres keeps its error kinds private; the Display
        // prefixes are the only way to tell them apart.
        let kind = if text.starts_with("invalid configuration")
            || text.starts_with("authentication error")
        {
            Config
        } else if text.starts_with("error connecting to server") {
            Connect
        } else if err.is_closed() || text.starts_with("error communicating with the server") {
            Closed
        } else {
            Query
        };
        (kind, text)
    };
    if kind == Config
        && let Some(why) = login.missing_password
    {
        message.push_str(&format!(" ({}: {why})", login.password_from));
    }
    CheckError::new(kind, message)
}

fn shown(d: Duration) -> String {
    crate::config::ConfigDuration(d).to_string()
}
