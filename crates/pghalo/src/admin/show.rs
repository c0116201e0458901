//! pgpool-II's SQL SHOW commands, answered by pghalo itself: recognising
//! the statement ([`parse_show`], on the hot path of every Query and
//! Parse) and rendering its result set ([`render`]) from plain data the
//! proxy gathers ([`ShowContext`]). Pure: no I/O, no locks, no clock.
//!
//! The columns and their order are pgpool-II 4.5's
//! (`src/utils/pool_process_reporting.c`, `doc/src/sgml/ref/show_pool_*.sgml`),
//! so that what was written for pgpool (scripts over psql,
//! pgpool2_exporter) reads pghalo unchanged. Where pghalo does not keep
//! what a pgpool column shows, the column stays, holding what pgpool
//! itself shows for "nothing yet": `0` for a number, an empty string for
//! a text or a time. Each command's function says which columns those are.
//!
//! Two deliberate differences on the wire: columns are typed `text` (OID
//! 25) where pgpool sends OID 0 (no type), so that drivers need no
//! fallback to read them as text; times are UTC where pgpool uses the
//! local time zone, because pghalo carries no time-zone data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use pghalo_protocol::backend::{write_command_complete, write_data_row, write_row_description};
use pghalo_protocol::{EncodeError, ProtocolVersion};

use crate::cluster::{ClusterSnapshot, LagLimits, NodeState, Role, Status};

/// A SHOW command pghalo answers itself instead of the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShowCommand {
    PoolNodes,
    PoolVersion,
    PoolBackendStats,
    PoolHealthCheckStats,
    PoolProcesses,
    PoolPools,
}

impl ShowCommand {
    const ALL: [ShowCommand; 6] = [
        ShowCommand::PoolNodes,
        ShowCommand::PoolVersion,
        ShowCommand::PoolBackendStats,
        ShowCommand::PoolHealthCheckStats,
        ShowCommand::PoolProcesses,
        ShowCommand::PoolPools,
    ];

    /// The name after SHOW, as pgpool spells it.
    pub const fn name(self) -> &'static str {
        match self {
            ShowCommand::PoolNodes => "pool_nodes",
            ShowCommand::PoolVersion => "pool_version",
            ShowCommand::PoolBackendStats => "pool_backend_stats",
            ShowCommand::PoolHealthCheckStats => "pool_health_check_stats",
            ShowCommand::PoolProcesses => "pool_processes",
            ShowCommand::PoolPools => "pool_pools",
        }
    }
}

/// Recognises a query text that is exactly one of pgpool's SHOW commands:
/// `SHOW POOL_NODES` in any case, with whitespace and comments (`--`,
/// nested `/* */`) anywhere between the tokens, and trailing `;`s. The
/// name may also be quoted in pgpool's lowercase (`SHOW "pool_nodes"`), as
/// pgpool's parser allows. Anything else, a second statement included, is
/// `None` and goes to the backends like any query. `sql` is the text of a
/// Query or Parse without its NUL terminator.
///
/// Called for every Query and Parse: a text that does not start with
/// `show` (after whitespace and comments) is turned away at its first
/// bytes, and nothing is ever allocated.
pub fn parse_show(sql: &[u8]) -> Option<ShowCommand> {
    let text = skip_blank(sql)?;
    let (keyword, rest) = text.split_at_checked(4)?;
    if !keyword.eq_ignore_ascii_case(b"show") {
        return None;
    }
    let after = skip_blank(rest)?;
    // Without a separator, "SHOWpool_nodes" is one identifier.
    if after.len() == rest.len() {
        return None;
    }
    let (command, rest) = show_name(after)?;
    let mut rest = skip_blank(rest)?;
    while let [b';', tail @ ..] = rest {
        rest = skip_blank(tail)?;
    }
    rest.is_empty().then_some(command)
}

/// The name after SHOW and what follows it.
fn show_name(text: &[u8]) -> Option<(ShowCommand, &[u8])> {
    if let [b'"', quoted @ ..] = text {
        // Quoting keeps the case, so only pgpool's lowercase spelling
        // names a command, as in pgpool.
        let end = quoted.iter().position(|&b| b == b'"')?;
        let (name, rest) = quoted.split_at(end);
        let rest = rest.get(1..).unwrap_or_default();
        // `""` inside quotes is a quote character: in no name of ours.
        if rest.first() == Some(&b'"') {
            return None;
        }
        let command = ShowCommand::ALL
            .into_iter()
            .find(|c| c.name().as_bytes() == name)?;
        return Some((command, rest));
    }
    let end = text
        .iter()
        .position(|&b| !is_identifier_byte(b))
        .unwrap_or(text.len());
    let (name, rest) = text.split_at(end);
    let command = ShowCommand::ALL
        .into_iter()
        .find(|c| c.name().as_bytes().eq_ignore_ascii_case(name))?;
    Some((command, rest))
}

/// PostgreSQL's identifier bytes (every byte of a multibyte character
/// counts as one).
fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Skips whitespace and comments, as PostgreSQL's lexer does; `None` for a
/// block comment that never ends (the server will report it).
fn skip_blank(mut text: &[u8]) -> Option<&[u8]> {
    loop {
        text = match text {
            [b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c', rest @ ..] => rest,
            [b'-', b'-', rest @ ..] => {
                let end = rest
                    .iter()
                    .position(|&b| b == b'\n' || b == b'\r')
                    .unwrap_or(rest.len());
                rest.get(end..).unwrap_or_default()
            }
            [b'/', b'*', rest @ ..] => skip_block_comment(rest)?,
            _ => return Some(text),
        };
    }
}

/// Skips the rest of a block comment whose `/*` is already consumed.
/// PostgreSQL's block comments nest.
fn skip_block_comment(mut text: &[u8]) -> Option<&[u8]> {
    let mut depth = 1usize;
    loop {
        text = match text {
            [b'*', b'/', rest @ ..] => {
                depth -= 1;
                if depth == 0 {
                    return Some(rest);
                }
                rest
            }
            [b'/', b'*', rest @ ..] => {
                depth += 1;
                rest
            }
            [_, rest @ ..] => rest,
            [] => return None,
        };
    }
}

/// The statement counters of one node, since pghalo started. pgpool
/// counts SELECT/INSERT/UPDATE/DELETE by the statement routed to the node,
/// treats everything but a list of utility commands as DDL, and counts
/// the ErrorResponses the node sent by severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub select: u64,
    pub insert: u64,
    pub update: u64,
    pub delete: u64,
    pub ddl: u64,
    pub other: u64,
    pub panic: u64,
    pub fatal: u64,
    pub error: u64,
}

/// One pool of server connections, (node, database, user), as it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStat {
    /// The node id.
    pub node: usize,
    pub database: String,
    pub user: String,
    /// Open connections no client holds.
    pub idle: usize,
    /// Connections a client holds now.
    pub in_use: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// The most connections the pool may open.
    pub max: usize,
}

/// What a SHOW command shows, gathered by the proxy for one answer.
#[derive(Clone, Copy, Debug)]
pub struct ShowContext<'a> {
    pub snapshot: &'a ClusterSnapshot,
    /// Indexed by node id; a node missing here shows zeros.
    pub counts: &'a [NodeCounts],
    /// The node this client's session reads from, if it has one.
    pub load_balance_node: Option<usize>,
    /// Every pool, in any order (they are shown sorted).
    pub pools: &'a [PoolStat],
    /// Client sessions connected now. No pgpool column shows it (pgpool
    /// counts its child processes, which pghalo does not have), so no
    /// command renders it yet.
    pub sessions: usize,
    /// Whether lag is measured in time (delay_threshold_by_time) or bytes:
    /// SHOW POOL_NODES' replication_delay follows, as pgpool's does.
    pub lag_limits: LagLimits,
}

/// A rendered result set: every value text, as pgpool sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowResult {
    pub columns: Vec<&'static str>,
    /// One value per column; `None` would be NULL, which pgpool never sends.
    pub rows: Vec<Vec<Option<String>>>,
}

impl ShowResult {
    /// pgpool's tag for every SHOW it answers: `SELECT <rows>`.
    pub fn command_tag(&self) -> String {
        format!("SELECT {}", self.rows.len())
    }

    /// The RowDescription (for a simple Query, or a Describe of the
    /// statement or portal in the extended protocol).
    pub fn write_row_description(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        write_row_description(out, &self.columns)
    }

    /// One DataRow per row. On an error the rows before it stay in `out`;
    /// [`ShowResult::write`] takes them back.
    pub fn write_data_rows(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut values = Vec::with_capacity(self.columns.len());
        for row in &self.rows {
            values.clear();
            values.extend(row.iter().map(Option::as_deref));
            write_data_row(out, &values)?;
        }
        Ok(())
    }

    /// The CommandComplete.
    pub fn write_command_complete(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        write_command_complete(out, &self.command_tag())
    }

    /// The whole answer to a simple Query but its ReadyForQuery (whose
    /// transaction status is the session's): RowDescription, DataRows,
    /// CommandComplete. All or nothing: on an error `out` is as it was.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        let written = self
            .write_row_description(out)
            .and_then(|()| self.write_data_rows(out))
            .and_then(|()| self.write_command_complete(out));
        if written.is_err() {
            out.truncate(start);
        }
        written
    }
}

/// Renders `command` from `ctx`.
pub fn render(command: ShowCommand, ctx: &ShowContext<'_>) -> ShowResult {
    match command {
        ShowCommand::PoolNodes => pool_nodes(ctx),
        ShowCommand::PoolVersion => pool_version(),
        ShowCommand::PoolBackendStats => pool_backend_stats(ctx),
        ShowCommand::PoolHealthCheckStats => pool_health_check_stats(ctx),
        ShowCommand::PoolProcesses => pool_processes(ctx),
        ShowCommand::PoolPools => pool_pools(ctx),
    }
}

/// The pgpool release whose SHOW output pghalo reproduces. It leads
/// POOL_VERSION because tools read the version from the start of that
/// string (pgpool2_exporter skips POOL_BACKEND_STATS and
/// POOL_HEALTH_CHECK_STATS below 4.2).
const PGPOOL_VERSION: &str = "4.5.0";

const POOL_VERSION_COLUMNS: [&str; 1] = ["pool_version"];

/// pgpool prints `<release> (<code name>)`; pghalo names itself where the
/// code name goes.
fn pool_version() -> ShowResult {
    let version = format!("{PGPOOL_VERSION} (pghalo {})", env!("CARGO_PKG_VERSION"));
    ShowResult {
        columns: POOL_VERSION_COLUMNS.to_vec(),
        rows: vec![vec![Some(version)]],
    }
}

/// pgpool's status column: a node taken out of routing shows as down.
fn status(node: &crate::cluster::NodeState) -> String {
    if node.detached {
        "down".to_owned()
    } else {
        node.status.to_string()
    }
}

const POOL_NODES_COLUMNS: [&str; 14] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "pg_status",
    "lb_weight",
    "role",
    "pg_role",
    "select_cnt",
    "load_balance_node",
    "replication_delay",
    "replication_state",
    "replication_sync_state",
    "last_status_change",
];

/// One row per node. Where pghalo's values come from:
/// - `status`: the node table's status (`up`, `down`, or `waiting` until
///   the first check); `pg_status`: what the last check saw (`up` also
///   when the node answered but refused the check's login, `unknown`
///   before any check). pgpool pings the node for `pg_status` and asks
///   `pg_is_in_recovery()` for `pg_role`; pghalo shows its last check's
///   answers instead (no I/O here).
/// - `role`: the table's role (`primary`, `standby`, or `unknown` for a
///   node taken for neither, where pgpool would say `standby`); `pg_role`:
///   what the node said of itself at its last answer, `unknown` unless up.
/// - `lb_weight`: the weight over the sum of all weights, as pgpool's
///   normalised weight.
/// - `replication_delay`: `0` on the primary; bytes of WAL, or with a time
///   limit configured `N.NNNNNN second(s)`, as pgpool; empty when the lag
///   is not known (pgpool has no such case: it keeps the last value).
/// - `replication_state`, `replication_sync_state`: a standby's walsender
///   on the primary at its last check (`streaming`, `async` / `sync` /
///   `quorum` / `potential`), matched by backend application_name; empty
///   on the primary, and for a standby the primary does not stream to.
/// - `last_status_change`: when the node's status or role last changed;
///   empty while neither has.
fn pool_nodes(ctx: &ShowContext<'_>) -> ShowResult {
    let total_weight: f64 = ctx.snapshot.nodes.iter().map(|n| n.weight).sum();
    let rows = ctx
        .snapshot
        .nodes
        .iter()
        .map(|node| {
            let pg_status = pg_status(node);
            let pg_role = match (node.status, node.in_recovery) {
                (Status::Up, Some(true)) => "standby",
                (Status::Up, Some(false)) => "primary",
                _ => "unknown",
            };
            let lb_weight = if total_weight > 0.0 {
                node.weight / total_weight
            } else {
                0.0
            };
            let load_balance = ctx.load_balance_node == Some(node.id.index());
            row([
                node.id.to_string(),
                node.host.to_string(),
                node.port.to_string(),
                status(node),
                pg_status.to_owned(),
                format!("{lb_weight:.6}"),
                node.role.pgpool_name().to_owned(),
                pg_role.to_owned(),
                counts(ctx, node).select.to_string(),
                load_balance.to_string(),
                replication_delay(node, &ctx.lag_limits),
                node.replication
                    .as_ref()
                    .map(|r| r.state.clone())
                    .unwrap_or_default(),
                node.replication
                    .as_ref()
                    .map(|r| r.sync_state.clone())
                    .unwrap_or_default(),
                timestamp(node.status_changed),
            ])
        })
        .collect();
    ShowResult {
        columns: POOL_NODES_COLUMNS.to_vec(),
        rows,
    }
}

fn pg_status(node: &NodeState) -> &'static str {
    // A check refused at login still got an answer from the server.
    if node
        .last_error
        .as_ref()
        .is_some_and(|e| !e.kind.means_down())
    {
        return "up";
    }
    match node.status {
        Status::Up => "up",
        Status::Down => "down",
        Status::Waiting => "unknown",
    }
}

fn replication_delay(node: &NodeState, limits: &LagLimits) -> String {
    if node.role == Role::Primary {
        return "0".to_owned();
    }
    if limits.time.is_some() {
        node.lag_time.map(seconds).unwrap_or_default()
    } else {
        node.lag_bytes.map(|b| b.to_string()).unwrap_or_default()
    }
}

/// pgpool's `%.6f second(s)` of a delay in microseconds, without its trip
/// through a float.
fn seconds(delay: Duration) -> String {
    let unit = if delay >= Duration::from_secs(2) {
        "seconds"
    } else {
        "second"
    };
    format!("{}.{:06} {unit}", delay.as_secs(), delay.subsec_micros())
}

const POOL_BACKEND_STATS_COLUMNS: [&str; 14] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "select_cnt",
    "insert_cnt",
    "update_cnt",
    "delete_cnt",
    "ddl_cnt",
    "other_cnt",
    "panic_cnt",
    "fatal_cnt",
    "error_cnt",
];

/// One row per node: the identity columns of POOL_NODES, then
/// [`NodeCounts`].
fn pool_backend_stats(ctx: &ShowContext<'_>) -> ShowResult {
    let rows = ctx
        .snapshot
        .nodes
        .iter()
        .map(|node| {
            let c = counts(ctx, node);
            row([
                node.id.to_string(),
                node.host.to_string(),
                node.port.to_string(),
                status(node),
                node.role.pgpool_name().to_owned(),
                c.select.to_string(),
                c.insert.to_string(),
                c.update.to_string(),
                c.delete.to_string(),
                c.ddl.to_string(),
                c.other.to_string(),
                c.panic.to_string(),
                c.fatal.to_string(),
                c.error.to_string(),
            ])
        })
        .collect();
    ShowResult {
        columns: POOL_BACKEND_STATS_COLUMNS.to_vec(),
        rows,
    }
}

const POOL_HEALTH_CHECK_STATS_COLUMNS: [&str; 20] = [
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "last_status_change",
    "total_count",
    "success_count",
    "fail_count",
    "skip_count",
    "retry_count",
    "average_retry_count",
    "max_retry_count",
    "max_duration",
    "min_duration",
    "average_duration",
    "last_health_check",
    "last_successful_health_check",
    "last_skip_health_check",
    "last_failed_health_check",
];

/// One row per node, from the checks the node table counts (the
/// replication monitor's, which are pghalo's health checks):
/// - `total_count`, `success_count`, `fail_count`: every check since
///   pghalo started, retries included;
/// - `skip_count` is 0: pghalo goes on checking a node that is down, to
///   see it come back;
/// - `retry_count`: checks that retried a failed one
///   (health_check_max_retries); `average_retry_count` per check on
///   schedule; `max_retry_count` the most one failure had;
/// - `max_duration`, `min_duration`, `average_duration` in milliseconds;
/// - `last_health_check` is when the last check started,
///   `last_successful_health_check` the last answer,
///   `last_failed_health_check` the last failed check;
/// - `last_skip_health_check` is always empty.
fn pool_health_check_stats(ctx: &ShowContext<'_>) -> ShowResult {
    let rows = ctx
        .snapshot
        .nodes
        .iter()
        .map(|node| {
            let checks = &node.checks;
            let millis = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
            let average = checks.average().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            row([
                node.id.to_string(),
                node.host.to_string(),
                node.port.to_string(),
                status(node),
                node.role.pgpool_name().to_owned(),
                timestamp(node.status_changed),
                checks.total.to_string(),
                checks.success.to_string(),
                checks.fail.to_string(),
                "0".to_owned(),
                checks.retries.to_string(),
                format!("{:.6}", checks.average_retries()),
                checks.max_retry.to_string(),
                millis(checks.max).to_string(),
                millis(checks.min).to_string(),
                format!("{average:.6}"),
                timestamp(node.last_check),
                timestamp(node.last_answer),
                String::new(),
                timestamp(checks.last_failure),
            ])
        })
        .collect();
    ShowResult {
        columns: POOL_HEALTH_CHECK_STATS_COLUMNS.to_vec(),
        rows,
    }
}

/// pgpool's POOL_POOLS columns, then pghalo's own counts of the pool.
const POOL_POOLS_COLUMNS: [&str; 22] = [
    "pool_pid",
    "start_time",
    "client_connection_count",
    "pool_id",
    "backend_id",
    "database",
    "username",
    "backend_connection_time",
    "client_connection_time",
    "client_disconnection_time",
    "client_idle_duration",
    "majorversion",
    "minorversion",
    "pool_counter",
    "pool_backendpid",
    "pool_connected",
    "status",
    "load_balance_node",
    "idle",
    "in_use",
    "waiting",
    "max",
];

/// pgpool shows one row per connection slot of each child process;
/// pghalo has one process and a pool per (node, database, user), so one
/// row per pool, sorted by node, database and user. pgpool's columns:
/// - `pool_id`: the row's position; `backend_id`: the node;
///   `database`, `username`: the pool's.
/// - `majorversion`, `minorversion`: `3`, `0` (the protocol pghalo's
///   server connections speak) while the pool has a connection, else `0`,
///   `0` as pgpool shows for an empty slot.
/// - `pool_connected`: the connections clients hold (pgpool's 0 or 1 per
///   slot, summed over the pool).
/// - Not kept by pghalo: `pool_pid`, `start_time`,
///   `backend_connection_time`, `client_connection_time`,
///   `client_disconnection_time`, `status` are empty;
///   `client_connection_count`, `client_idle_duration`, `pool_counter`,
///   `pool_backendpid`, `load_balance_node` are `0`.
///
/// Then pghalo's: `idle`, `in_use`, `waiting`, `max` ([`PoolStat`]).
fn pool_pools(ctx: &ShowContext<'_>) -> ShowResult {
    let rows = sorted_pools(ctx.pools)
        .into_iter()
        .enumerate()
        .map(|(position, pool)| {
            let version = if pool.idle + pool.in_use > 0 {
                ProtocolVersion::V3_0
            } else {
                ProtocolVersion { major: 0, minor: 0 }
            };
            row([
                String::new(),
                String::new(),
                "0".to_owned(),
                position.to_string(),
                pool.node.to_string(),
                pool.database.clone(),
                pool.user.clone(),
                String::new(),
                String::new(),
                String::new(),
                "0".to_owned(),
                version.major.to_string(),
                version.minor.to_string(),
                "0".to_owned(),
                "0".to_owned(),
                pool.in_use.to_string(),
                String::new(),
                "0".to_owned(),
                pool.idle.to_string(),
                pool.in_use.to_string(),
                pool.waiting.to_string(),
                pool.max.to_string(),
            ])
        })
        .collect();
    ShowResult {
        columns: POOL_POOLS_COLUMNS.to_vec(),
        rows,
    }
}

/// pgpool's POOL_PROCESSES columns, then pghalo's own: the node, and the
/// counts of the pool.
const POOL_PROCESSES_COLUMNS: [&str; 13] = [
    "pool_pid",
    "start_time",
    "client_connection_count",
    "database",
    "username",
    "backend_connection_time",
    "pool_counter",
    "status",
    "backend_id",
    "idle",
    "in_use",
    "waiting",
    "max",
];

/// pgpool shows one row per child process (each serving one client at a
/// time); pghalo has no child processes, so one row per pool, as in
/// POOL_POOLS. pgpool's columns: `database`, `username` are the pool's;
/// `pool_pid`, `start_time`, `backend_connection_time`, `status` are
/// empty; `client_connection_count`, `pool_counter` are `0`. Then
/// pghalo's: `backend_id` (the node), `idle`, `in_use`, `waiting`, `max`.
fn pool_processes(ctx: &ShowContext<'_>) -> ShowResult {
    let rows = sorted_pools(ctx.pools)
        .into_iter()
        .map(|pool| {
            row([
                String::new(),
                String::new(),
                "0".to_owned(),
                pool.database.clone(),
                pool.user.clone(),
                String::new(),
                "0".to_owned(),
                String::new(),
                pool.node.to_string(),
                pool.idle.to_string(),
                pool.in_use.to_string(),
                pool.waiting.to_string(),
                pool.max.to_string(),
            ])
        })
        .collect();
    ShowResult {
        columns: POOL_PROCESSES_COLUMNS.to_vec(),
        rows,
    }
}

/// The same output for the same pools, whatever order the proxy gathered
/// them in.
fn sorted_pools(pools: &[PoolStat]) -> Vec<&PoolStat> {
    let mut sorted: Vec<&PoolStat> = pools.iter().collect();
    sorted.sort_by(|a, b| (a.node, &a.database, &a.user).cmp(&(b.node, &b.database, &b.user)));
    sorted
}

fn counts(ctx: &ShowContext<'_>, node: &NodeState) -> NodeCounts {
    ctx.counts.get(node.id.index()).copied().unwrap_or_default()
}

fn row<const N: usize>(values: [String; N]) -> Vec<Option<String>> {
    values.into_iter().map(Some).collect()
}

/// pgpool's `%Y-%m-%d %H:%M:%S`, in UTC; empty for no time (or one before
/// 1970, which no check has).
pub(crate) fn timestamp(at: Option<SystemTime>) -> String {
    let Some(since_epoch) = at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) else {
        return String::new();
    };
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let time = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// The Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days only).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras of 400 years start on 0000-03-01: the leap day
    // then ends each year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use pghalo_protocol::Header;
    use pghalo_protocol::backend::{
        COMMAND_COMPLETE, CommandComplete, DATA_ROW, DataRow, ROW_DESCRIPTION, RowDescription,
        TEXT_OID,
    };

    use super::*;
    use crate::cluster::{CheckError, CheckErrorKind, CheckStats, Epoch, NodeId};
    use crate::config::{BackendFlags, BackendHost};

    #[test]
    fn recognises_show_commands() {
        let accepted: &[(&str, ShowCommand)] = &[
            ("SHOW POOL_NODES", ShowCommand::PoolNodes),
            ("SHOW POOL_NODES;", ShowCommand::PoolNodes),
            ("show pool_nodes", ShowCommand::PoolNodes),
            ("/* c */ SHOW\n POOL_NODES ;", ShowCommand::PoolNodes),
            ("  \t\nShOw   Pool_Version  ;  \n", ShowCommand::PoolVersion),
            (
                "-- why\nSHOW pool_backend_stats",
                ShowCommand::PoolBackendStats,
            ),
            (
                "/* a /* nested */ comment */ show pool_health_check_stats",
                ShowCommand::PoolHealthCheckStats,
            ),
            ("SHOW/**/pool_processes", ShowCommand::PoolProcesses),
            ("SHOW pool_pools -- trailing", ShowCommand::PoolPools),
            (
                "SHOW pool_pools /* c */ ; /* d */ ;",
                ShowCommand::PoolPools,
            ),
            ("SHOW \"pool_nodes\"", ShowCommand::PoolNodes),
        ];
        for (sql, command) in accepted {
            assert_eq!(parse_show(sql.as_bytes()), Some(*command), "{sql:?}");
        }
        let rejected = [
            "SHOW POOL_NODESX",
            "SHOW pool_nodes_x",
            "SHOW POOL_NODES; SELECT 1",
            "SHOW pool_nodes SELECT 1",
            "SELECT 1",
            "SHOW work_mem",
            "SHOWpool_nodes",
            "SHOW",
            "SHOW ;",
            "show pool_nodes.x",
            "SHOW \"POOL_NODES\"",
            "SHOW \"pool_nodes\"\"\"",
            "SHOW \"pool_nodes",
            "/* never closed SHOW pool_nodes",
            "SHOW pool_nodes /* never closed",
            "EXPLAIN SHOW pool_nodes",
            "SHOW pool_status",
            "",
            ";",
        ];
        for sql in rejected {
            assert_eq!(parse_show(sql.as_bytes()), None, "{sql:?}");
        }
        // Not valid UTF-8 after the name: still just bytes.
        assert_eq!(parse_show(b"SHOW pool_nodes\xff"), None);
        assert_eq!(parse_show(b"SHOW pool_nodes\xc3\xa9"), None);
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn node(id: usize, host: BackendHost, port: u16) -> NodeState {
        NodeState {
            role_epoch: Epoch(1),
            timeline: Some(1),
            server_version: Some(170_000),
            ..NodeState::configured(
                NodeId(id),
                format!("pg{id}"),
                host,
                port,
                1.0,
                BackendFlags::default(),
            )
        }
    }

    /// A primary, a standby 1 KiB / 1.5 s behind, and a node down since
    /// 2024-02-29 12:34:50.
    fn three_nodes() -> ClusterSnapshot {
        let primary = NodeState {
            role: Role::Primary,
            status: Status::Up,
            in_recovery: Some(false),
            lag_bytes: Some(0),
            lag_time: Some(Duration::ZERO),
            last_check: Some(at(1_709_210_096)),
            status_changed: Some(at(1_709_210_096)),
            last_check_duration: Some(Duration::from_micros(3_400)),
            last_answer: Some(at(1_709_210_096)),
            checks: CheckStats {
                total: 3,
                success: 3,
                min: Some(Duration::from_micros(2_500)),
                max: Some(Duration::from_micros(4_000)),
                sum: Duration::from_micros(9_900),
                ..CheckStats::default()
            },
            ..node(0, BackendHost::Tcp("10.0.0.1".into()), 5432)
        };
        let standby = NodeState {
            role: Role::Standby,
            status: Status::Up,
            in_recovery: Some(true),
            lag_bytes: Some(1024),
            lag_time: Some(Duration::from_micros(1_500_000)),
            last_check: Some(at(1_709_210_097)),
            status_changed: Some(at(1_709_210_097)),
            last_check_duration: Some(Duration::from_millis(12)),
            last_answer: Some(at(1_709_210_097)),
            ..node(1, BackendHost::Tcp("10.0.0.2".into()), 5433)
        };
        let down = NodeState {
            status: Status::Down,
            in_recovery: Some(true),
            last_check: Some(at(1_709_210_098)),
            status_changed: Some(at(1_709_210_098)),
            last_check_duration: Some(Duration::from_secs(10)),
            last_answer: Some(at(1_709_210_090)),
            last_error: Some(CheckError::new(CheckErrorKind::Timeout, "no answer in 10s")),
            checks: CheckStats {
                total: 6,
                success: 4,
                fail: 2,
                consecutive_failures: 2,
                retries: 1,
                max_retry: 1,
                min: Some(Duration::from_millis(2)),
                max: Some(Duration::from_secs(10)),
                sum: Duration::from_millis(10_010),
                last_failure: Some(at(1_709_210_098)),
            },
            ..node(2, BackendHost::Unix(PathBuf::from("/tmp")), 5434)
        };
        ClusterSnapshot {
            epoch: Epoch(1),
            generation: 7,
            primary: Some(NodeId(0)),
            nodes: vec![primary, standby, down],
        }
    }

    fn context<'a>(
        snapshot: &'a ClusterSnapshot,
        counts: &'a [NodeCounts],
        pools: &'a [PoolStat],
    ) -> ShowContext<'a> {
        ShowContext {
            snapshot,
            counts,
            load_balance_node: Some(1),
            pools,
            sessions: 2,
            lag_limits: LagLimits::default(),
        }
    }

    fn values(result: &ShowResult) -> Vec<Vec<&str>> {
        result
            .rows
            .iter()
            .map(|row| row.iter().map(|v| v.as_deref().unwrap()).collect())
            .collect()
    }

    /// Looks up each row's value of `column`.
    fn column<'r>(result: &'r ShowResult, column: &str) -> Vec<&'r str> {
        let i = result.columns.iter().position(|c| *c == column).unwrap();
        result
            .rows
            .iter()
            .map(|row| row[i].as_deref().unwrap())
            .collect()
    }

    fn counts() -> Vec<NodeCounts> {
        vec![
            NodeCounts {
                select: 5,
                insert: 4,
                update: 3,
                delete: 2,
                ddl: 1,
                other: 6,
                panic: 0,
                fatal: 1,
                error: 2,
            },
            NodeCounts {
                select: 40,
                other: 1,
                error: 3,
                ..NodeCounts::default()
            },
            // Node 2 has none: zeros.
        ]
    }

    #[test]
    fn pool_nodes_shows_pgpool_columns() {
        let snapshot = three_nodes();
        let counts = counts();
        let result = render(ShowCommand::PoolNodes, &context(&snapshot, &counts, &[]));
        assert_eq!(
            result.columns,
            [
                "node_id",
                "hostname",
                "port",
                "status",
                "pg_status",
                "lb_weight",
                "role",
                "pg_role",
                "select_cnt",
                "load_balance_node",
                "replication_delay",
                "replication_state",
                "replication_sync_state",
                "last_status_change",
            ]
        );
        assert_eq!(
            values(&result),
            [
                [
                    "0",
                    "10.0.0.1",
                    "5432",
                    "up",
                    "up",
                    "0.333333",
                    "primary",
                    "primary",
                    "5",
                    "false",
                    "0",
                    "",
                    "",
                    "2024-02-29 12:34:56",
                ],
                [
                    "1",
                    "10.0.0.2",
                    "5433",
                    "up",
                    "up",
                    "0.333333",
                    "standby",
                    "standby",
                    "40",
                    "true",
                    "1024",
                    "",
                    "",
                    "2024-02-29 12:34:57",
                ],
                [
                    "2",
                    "/tmp",
                    "5434",
                    "down",
                    "down",
                    "0.333333",
                    "unknown",
                    "unknown",
                    "0",
                    "false",
                    "",
                    "",
                    "",
                    "2024-02-29 12:34:58",
                ],
            ]
        );
        assert_eq!(result.command_tag(), "SELECT 3");
    }

    #[test]
    fn pool_nodes_details() {
        let mut snapshot = three_nodes();
        let counts = counts();

        // With delay_threshold_by_time, the delay is in seconds.
        let mut ctx = context(&snapshot, &counts, &[]);
        ctx.lag_limits.time = Some(Duration::from_secs(1));
        let result = render(ShowCommand::PoolNodes, &ctx);
        assert_eq!(
            column(&result, "replication_delay"),
            ["0", "1.500000 second", ""]
        );

        snapshot.nodes[1].lag_time = Some(Duration::from_micros(2_000_001));
        snapshot.nodes[0].weight = 2.0;
        snapshot.nodes[2].weight = 0.0;
        // Not checked yet; then refused at login (the node answered).
        snapshot.nodes[2].status = Status::Waiting;
        snapshot.nodes[2].last_error = None;
        snapshot.nodes[2].last_check = None;
        snapshot.nodes[2].status_changed = None;
        let mut ctx = context(&snapshot, &counts, &[]);
        ctx.lag_limits.time = Some(Duration::from_secs(1));
        ctx.load_balance_node = None;
        let result = render(ShowCommand::PoolNodes, &ctx);
        assert_eq!(
            column(&result, "replication_delay"),
            ["0", "2.000001 seconds", ""]
        );
        assert_eq!(
            column(&result, "lb_weight"),
            ["0.666667", "0.333333", "0.000000"]
        );
        assert_eq!(column(&result, "status"), ["up", "up", "waiting"]);
        assert_eq!(column(&result, "pg_status"), ["up", "up", "unknown"]);
        assert_eq!(column(&result, "load_balance_node"), ["false"; 3]);
        assert_eq!(column(&result, "last_status_change")[2], "");

        snapshot.nodes[2].last_error = Some(CheckError::new(
            CheckErrorKind::Config,
            "password authentication failed",
        ));
        let result = render(ShowCommand::PoolNodes, &context(&snapshot, &counts, &[]));
        assert_eq!(column(&result, "pg_status")[2], "up");
        assert_eq!(column(&result, "pg_role")[2], "unknown");

        // All weights zero: no division by zero.
        for n in &mut snapshot.nodes {
            n.weight = 0.0;
        }
        let result = render(ShowCommand::PoolNodes, &context(&snapshot, &counts, &[]));
        assert_eq!(column(&result, "lb_weight"), ["0.000000"; 3]);
    }

    #[test]
    fn pool_version_leads_with_pgpool_release() {
        let snapshot = three_nodes();
        let result = render(ShowCommand::PoolVersion, &context(&snapshot, &[], &[]));
        assert_eq!(result.columns, ["pool_version"]);
        assert_eq!(
            values(&result),
            [[format!("4.5.0 (pghalo {})", env!("CARGO_PKG_VERSION"))]]
        );
        assert_eq!(result.command_tag(), "SELECT 1");
    }

    #[test]
    fn pool_backend_stats_shows_counts() {
        let snapshot = three_nodes();
        let counts = counts();
        let result = render(
            ShowCommand::PoolBackendStats,
            &context(&snapshot, &counts, &[]),
        );
        assert_eq!(
            result.columns,
            [
                "node_id",
                "hostname",
                "port",
                "status",
                "role",
                "select_cnt",
                "insert_cnt",
                "update_cnt",
                "delete_cnt",
                "ddl_cnt",
                "other_cnt",
                "panic_cnt",
                "fatal_cnt",
                "error_cnt",
            ]
        );
        assert_eq!(
            values(&result),
            [
                [
                    "0", "10.0.0.1", "5432", "up", "primary", "5", "4", "3", "2", "1", "6", "0",
                    "1", "2"
                ],
                [
                    "1", "10.0.0.2", "5433", "up", "standby", "40", "0", "0", "0", "0", "1", "0",
                    "0", "3"
                ],
                [
                    "2", "/tmp", "5434", "down", "unknown", "0", "0", "0", "0", "0", "0", "0", "0",
                    "0"
                ],
            ]
        );
    }

    #[test]
    fn pool_health_check_stats_shows_last_check() {
        let snapshot = three_nodes();
        let result = render(
            ShowCommand::PoolHealthCheckStats,
            &context(&snapshot, &[], &[]),
        );
        assert_eq!(
            result.columns,
            [
                "node_id",
                "hostname",
                "port",
                "status",
                "role",
                "last_status_change",
                "total_count",
                "success_count",
                "fail_count",
                "skip_count",
                "retry_count",
                "average_retry_count",
                "max_retry_count",
                "max_duration",
                "min_duration",
                "average_duration",
                "last_health_check",
                "last_successful_health_check",
                "last_skip_health_check",
                "last_failed_health_check",
            ]
        );
        let rows = values(&result);
        assert_eq!(
            rows[0],
            [
                "0",
                "10.0.0.1",
                "5432",
                "up",
                "primary",
                "2024-02-29 12:34:56",
                "3",
                "3",
                "0",
                "0",
                "0",
                "0.000000",
                "0",
                "4",
                "2",
                "3.300000",
                "2024-02-29 12:34:56",
                "2024-02-29 12:34:56",
                "",
                "",
            ]
        );
        assert_eq!(
            rows[2],
            [
                "2",
                "/tmp",
                "5434",
                "down",
                "unknown",
                "2024-02-29 12:34:58",
                "6",
                "4",
                "2",
                "0",
                "1",
                "0.200000",
                "1",
                "10000",
                "2",
                "1668.333333",
                "2024-02-29 12:34:58",
                "2024-02-29 12:34:50",
                "",
                "2024-02-29 12:34:58",
            ]
        );
    }

    fn pools() -> Vec<PoolStat> {
        vec![
            PoolStat {
                node: 1,
                database: "app".into(),
                user: "alice".into(),
                idle: 2,
                in_use: 1,
                waiting: 0,
                max: 10,
            },
            PoolStat {
                node: 0,
                database: "app".into(),
                user: "bob".into(),
                idle: 0,
                in_use: 0,
                waiting: 0,
                max: 10,
            },
            PoolStat {
                node: 0,
                database: "app".into(),
                user: "alice".into(),
                idle: 0,
                in_use: 4,
                waiting: 3,
                max: 4,
            },
        ]
    }

    #[test]
    fn pool_pools_one_row_per_pool() {
        let snapshot = three_nodes();
        let pools = pools();
        let result = render(ShowCommand::PoolPools, &context(&snapshot, &[], &pools));
        assert_eq!(
            result.columns,
            [
                "pool_pid",
                "start_time",
                "client_connection_count",
                "pool_id",
                "backend_id",
                "database",
                "username",
                "backend_connection_time",
                "client_connection_time",
                "client_disconnection_time",
                "client_idle_duration",
                "majorversion",
                "minorversion",
                "pool_counter",
                "pool_backendpid",
                "pool_connected",
                "status",
                "load_balance_node",
                "idle",
                "in_use",
                "waiting",
                "max",
            ]
        );
        assert_eq!(
            values(&result),
            [
                [
                    "", "", "0", "0", "0", "app", "alice", "", "", "", "0", "3", "0", "0", "0",
                    "4", "", "0", "0", "4", "3", "4"
                ],
                [
                    "", "", "0", "1", "0", "app", "bob", "", "", "", "0", "0", "0", "0", "0", "0",
                    "", "0", "0", "0", "0", "10"
                ],
                [
                    "", "", "0", "2", "1", "app", "alice", "", "", "", "0", "3", "0", "0", "0",
                    "1", "", "0", "2", "1", "0", "10"
                ],
            ]
        );
        let empty = render(ShowCommand::PoolPools, &context(&snapshot, &[], &[]));
        assert!(empty.rows.is_empty());
        assert_eq!(empty.command_tag(), "SELECT 0");
    }

    #[test]
    fn pool_processes_one_row_per_pool() {
        let snapshot = three_nodes();
        let pools = pools();
        let result = render(ShowCommand::PoolProcesses, &context(&snapshot, &[], &pools));
        assert_eq!(
            result.columns,
            [
                "pool_pid",
                "start_time",
                "client_connection_count",
                "database",
                "username",
                "backend_connection_time",
                "pool_counter",
                "status",
                "backend_id",
                "idle",
                "in_use",
                "waiting",
                "max",
            ]
        );
        assert_eq!(
            values(&result),
            [
                [
                    "", "", "0", "app", "alice", "", "0", "", "0", "0", "4", "3", "4"
                ],
                [
                    "", "", "0", "app", "bob", "", "0", "", "0", "0", "0", "0", "10"
                ],
                [
                    "", "", "0", "app", "alice", "", "0", "", "1", "2", "1", "0", "10"
                ],
            ]
        );
    }

    /// Splits `bytes` into (tag, body) messages.
    fn messages(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while let Some(header) = Header::parse(bytes).unwrap() {
            let (frame, rest) = bytes.split_at(header.frame_len());
            out.push((header.tag, &frame[Header::SIZE..]));
            bytes = rest;
        }
        assert!(bytes.is_empty());
        out
    }

    #[test]
    fn wire_encoding_round_trips() {
        let snapshot = three_nodes();
        let counts = counts();
        let result = render(ShowCommand::PoolNodes, &context(&snapshot, &counts, &[]));
        let mut out = BytesMut::from(&b"kept"[..]);
        result.write(&mut out).unwrap();
        assert_eq!(&out[..4], b"kept");

        let messages = messages(&out[4..]);
        assert_eq!(messages.len(), 1 + 3 + 1);
        let (tag, body) = messages[0];
        assert_eq!(tag, ROW_DESCRIPTION);
        let description = RowDescription::parse(body).unwrap();
        let columns: Vec<_> = description.columns().collect();
        assert_eq!(columns.len(), 14);
        for (column, name) in columns.iter().zip(&result.columns) {
            assert_eq!(column.name, *name);
            assert_eq!(column.type_oid, TEXT_OID);
            assert_eq!(column.format, 0);
        }
        for ((tag, body), row) in messages[1..4].iter().zip(&result.rows) {
            assert_eq!(*tag, DATA_ROW);
            let decoded: Vec<_> = DataRow::parse(body).unwrap().values().collect();
            let expected: Vec<_> = row
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect();
            assert_eq!(decoded, expected);
        }
        let (tag, body) = messages[4];
        assert_eq!(tag, COMMAND_COMPLETE);
        assert_eq!(CommandComplete::parse(body).unwrap().tag, "SELECT 3");

        // The three parts, for the extended protocol, write the same bytes.
        let mut parts = BytesMut::new();
        result.write_row_description(&mut parts).unwrap();
        result.write_data_rows(&mut parts).unwrap();
        result.write_command_complete(&mut parts).unwrap();
        assert_eq!(&parts[..], &out[4..]);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        // The RowDescription encodes; the row has more values than a
        // DataRow can count.
        let result = ShowResult {
            columns: vec!["a"],
            rows: vec![vec![Some(String::new())], vec![None; 40_000]],
        };
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(result.write(&mut out).is_err());
        assert_eq!(&out[..], b"kept");
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(None), "");
        assert_eq!(timestamp(Some(at(0))), "1970-01-01 00:00:00");
        assert_eq!(timestamp(Some(at(951_782_400))), "2000-02-29 00:00:00");
        assert_eq!(timestamp(Some(at(1_234_567_890))), "2009-02-13 23:31:30");
        assert_eq!(timestamp(Some(at(1_709_210_096))), "2024-02-29 12:34:56");
        assert_eq!(timestamp(Some(at(4_102_444_799))), "2099-12-31 23:59:59");
        assert_eq!(timestamp(Some(UNIX_EPOCH - Duration::from_secs(1))), "");
    }
}
