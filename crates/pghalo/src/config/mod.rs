//! pghalo's configuration: the TOML schema, its validation, and the decision
//! of what a reload may change live. Must not open sockets or spawn tasks:
//! it reads one file and returns a value.
//!
//! Parameter names follow pgpool-II wherever pgpool has the concept, and each
//! field's doc names the pgpool parameter it stands for. A [`Config`] is
//! immutable once loaded; callers share it as `Arc<Config>` and replace it
//! whole on reload, after asking [`reload_plan`] what the change means.
//!
//! # Layout
//! - `mod.rs`: the schema and [`Config::load`].
//! - `units.rs`: durations, byte sizes, file modes.
//! - `types.rs`: listen addresses, backend hosts and flags, modes.
//! - `routing.rs`: `[load_balance]`'s patterns and redirect preferences.
//! - `health_check.rs`: `[health_check]`, its per-backend overrides, and
//!   [`Config::health_check`], one node's check with every key resolved.
//! - `password.rs`: password parameters (`sr_check_password`) in pgpool's
//!   forms, and the password they resolve to.
//! - `validate.rs`: the checks serde cannot express.
//! - `locate.rs`, `error.rs`: finding the line and key of every error.
//! - `reload.rs`: [`reload_plan`] and [`apply_live`].
//! - `hba.rs`, `passwd.rs`: pool_hba.conf and pool_passwd.

pub mod hba;
pub mod passwd;

mod error;
mod health_check;
mod locate;
mod password;
mod reload;
mod routing;
mod types;
mod units;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml_edit::ImDocument;

pub use error::ConfigError;
pub use health_check::{HealthCheckConfig, NodeHealthCheck, PasswordKey};
pub use password::{ConfigPassword, MissingPassword, ResolvedPassword};
pub use reload::{ReloadPlan, apply_live, reload_plan};
pub use routing::{DisableLoadBalanceOnWrite, Pattern, RedirectPreference, RedirectTarget};
pub use types::{
    BackendFlags, BackendHost, BackendTlsMode, ListenAddress, PoolMode, ResetQueryList,
};
pub use units::{ByteSize, ConfigDuration, FileMode, UnitError};

use locate::{KeyPath, line_of, path_at, span_of};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub streaming_replication: StreamingReplicationConfig,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    #[serde(default)]
    pub load_balance: LoadBalanceConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    /// pgpool's backend_*N parameters, one `[[backend]]` per node; a node's
    /// N (its identity in pgpool's tools) is its position in this list.
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

/// Where clients connect.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// pgpool listen_addresses. `"*"` is every IPv4 and IPv6 address; a
    /// comma-separated string as in pgpool.conf is read too.
    #[serde(
        deserialize_with = "types::comma_list",
        serialize_with = "types::serialize_display_seq"
    )]
    pub listen_addresses: Vec<ListenAddress>,
    /// pgpool port.
    #[serde(deserialize_with = "types::port")]
    pub port: u16,
    /// pgpool unix_socket_directories: a socket `.s.PGSQL.<port>` in each.
    /// Resolved against the configuration file's directory.
    #[serde(deserialize_with = "types::comma_list")]
    pub unix_socket_directories: Vec<PathBuf>,
    /// pgpool unix_socket_permissions.
    pub unix_socket_permissions: FileMode,
    /// pgpool num_init_children (the number of concurrent clients it
    /// serves); a client beyond it gets SQLSTATE 53300.
    pub max_client_connections: u32,
    /// pgpool authentication_timeout: startup and authentication must finish
    /// within it. 0 = no limit.
    pub authentication_timeout: ConfigDuration,
    /// pgpool client_idle_limit: a client idle for longer is disconnected.
    /// 0 = no limit.
    pub client_idle_limit: ConfigDuration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            listen_addresses: vec![ListenAddress::Ip(std::net::Ipv4Addr::LOCALHOST.into())],
            port: 9999,
            unix_socket_directories: Vec::new(),
            unix_socket_permissions: FileMode(0o777),
            max_client_connections: 1000,
            authentication_timeout: ConfigDuration::from_secs(60),
            client_idle_limit: ConfigDuration::ZERO,
        }
    }
}

/// Server connections and how clients share them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// When a server connection returns to the pool. pgpool has only
    /// session pooling (its connection_cache).
    pub mode: PoolMode,
    /// Server connections per (backend, database, user) over all clients;
    /// pgpool's max_pool counts per child process instead.
    pub max_pool_size: u32,
    /// Idle server connections kept open per (backend, database, user).
    /// No pgpool equivalent.
    pub min_idle: u32,
    /// A server connection older than this is closed when released.
    /// 0 = no limit. No pgpool equivalent.
    pub max_lifetime: ConfigDuration,
    /// pgpool connection_life_time: an idle pooled server connection older
    /// than this is closed. 0 = never.
    pub idle_timeout: ConfigDuration,
    /// How long a client waits, first come first served, for a server
    /// connection before SQLSTATE 53300. Must be more than 0: a wait is
    /// always bounded. No pgpool equivalent (a pgpool client waits for a
    /// free child process).
    pub checkout_timeout: ConfigDuration,
    /// pgpool connect_timeout: dialling and authenticating to a backend.
    /// 0 = no limit.
    pub connect_timeout: ConfigDuration,
    /// pgpool reset_query_list: run on a server connection before another
    /// client gets it.
    pub reset_query_list: ResetQueryList,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Session,
            max_pool_size: 20,
            min_idle: 0,
            max_lifetime: ConfigDuration::from_secs(3600),
            idle_timeout: ConfigDuration::from_secs(600),
            checkout_timeout: ConfigDuration::from_secs(30),
            connect_timeout: ConfigDuration::from_secs(10),
            reset_query_list: ResetQueryList::default(),
        }
    }
}

/// Client authentication. The files are read by [`hba`] and [`passwd`], on
/// start and again on every reload.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// pgpool's pool_hba.conf (its `-a`/`--hba-file` option). Resolved
    /// against the configuration file's directory.
    pub pool_hba: PathBuf,
    /// pgpool pool_passwd; `""` = none, as in pgpool. Resolved against the
    /// configuration file's directory.
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub pool_passwd: Option<PathBuf>,
    /// pgpool's .pgpoolkey (its `-k`/`--key-file` option), the key of the
    /// AES-encrypted pool_passwd entries; `""` = none.
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub pool_key_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            pool_hba: PathBuf::from("pool_hba.conf"),
            pool_passwd: Some(PathBuf::from("pool_passwd")),
            pool_key_file: None,
        }
    }
}

/// TLS for clients and to the backends.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// pgpool ssl: accept TLS from clients.
    pub enabled: bool,
    /// pgpool ssl_cert.
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub cert_file: Option<PathBuf>,
    /// pgpool ssl_key.
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub key_file: Option<PathBuf>,
    /// pgpool ssl_ca_cert: verifies client certificates (hba method `cert`).
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub ca_file: Option<PathBuf>,
    /// TLS to the backends. pgpool has no switch for it: it tries TLS to a
    /// backend whenever ssl is on, which is `prefer`.
    pub backend: BackendTlsMode,
    /// CA bundle that backend certificates must chain to; none = the
    /// certificate is not verified (libpq's sslmode=require).
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub backend_ca_file: Option<PathBuf>,
}

/// The daemon process itself.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// pgpool pid_file_name: where `pghalo run` writes its pid, and where
    /// `pghalo reload` and `pghalo stop` find it. `""` = no pid file.
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub pid_file_name: Option<PathBuf>,
    /// pgpool's pgpool_status: the decided topology (the primary, the
    /// detached nodes, the epoch and the events), kept across restarts.
    /// `""` = none (the node table's timeline rules still keep a former
    /// primary out).
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub state_file: Option<PathBuf>,
    /// The Unix socket `pghalo ctl` talks to (mode 0600; only pghalo's own
    /// user, or root, is answered). `""` = no control socket.
    #[serde(
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub ctl_socket: Option<PathBuf>,
    /// Threads that run client sessions, each a single-threaded runtime
    /// with the sessions it was given (PgBouncer is one such thread).
    /// 0 = one per CPU.
    pub worker_threads: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            pid_file_name: None,
            state_file: Some(PathBuf::from("pghalo.state")),
            ctl_socket: Some(PathBuf::from("pghalo.ctl")),
            worker_threads: 0,
        }
    }
}

/// pgpool's streaming replication check: how pghalo watches every node's
/// role, timeline and replication lag (the `health` module's replication
/// monitor), and how much lag a standby may have and still get reads.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingReplicationConfig {
    /// pgpool sr_check_period: how often each node is asked (default 1 s,
    /// not pgpool's 10 s: the check is also pghalo's health check, and a
    /// hung primary is noticed one period plus one timeout after it hangs).
    /// 0 = each node
    /// is asked until it answers once, at start, and then only when the
    /// configuration changes (pgpool still finds the primary at start with
    /// 0; it then measures no lag, and neither does pghalo).
    pub sr_check_period: ConfigDuration,
    /// Connecting to a node and getting the answer must take no longer;
    /// a node that takes longer is down. Must be more than 0. No pgpool
    /// equivalent (pgpool has none for this check).
    pub sr_check_timeout: ConfigDuration,
    /// pgpool sr_check_user: a role with LOGIN on every node, member of
    /// pg_monitor (or a superuser). `""` = the check does not run, and
    /// pghalo knows no node's role except an ALWAYS_PRIMARY one.
    pub sr_check_user: String,
    /// pgpool sr_check_password: `""` = sr_check_user's pool_passwd entry,
    /// if it holds a password (TEXT or AES), else none; `AES...` =
    /// encrypted with auth.pool_key_file; `TEXT...` or anything else = the
    /// password in clear. An md5 hash is refused: the check needs the
    /// password itself.
    pub sr_check_password: ConfigPassword,
    /// pgpool sr_check_database.
    pub sr_check_database: String,
    /// pgpool delay_threshold: a standby more than this many bytes of WAL
    /// behind the primary gets no reads. 0 = no limit.
    pub delay_threshold: ByteSize,
    /// pgpool delay_threshold_by_time: a standby whose replay is this far
    /// behind gets no reads; when more than 0, delay_threshold is ignored,
    /// as in pgpool. A bare number is milliseconds, as in pgpool. 0 = no
    /// limit.
    #[serde(deserialize_with = "units::duration_millis")]
    pub delay_threshold_by_time: ConfigDuration,
    /// pgpool prefer_lower_delay_standby: when the chosen standby is over
    /// the threshold, read from the least delayed standby under it rather
    /// than from the primary.
    pub prefer_lower_delay_standby: bool,
}

impl Default for StreamingReplicationConfig {
    fn default() -> Self {
        StreamingReplicationConfig {
            sr_check_period: ConfigDuration::from_secs(1),
            sr_check_timeout: ConfigDuration::from_secs(10),
            sr_check_user: String::new(),
            sr_check_password: ConfigPassword::FromPoolPasswd,
            sr_check_database: "postgres".to_owned(),
            delay_threshold: ByteSize(0),
            delay_threshold_by_time: ConfigDuration::ZERO,
            prefer_lower_delay_standby: false,
        }
    }
}

/// pgpool's load balancing: which statements may read from a standby and
/// how a standby is chosen. The router applies these; the values are read
/// per session and per statement, so every one of them applies live.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalanceConfig {
    /// pgpool load_balance_mode: spread reads over the nodes by weight.
    /// Off = everything goes to the primary.
    pub load_balance_mode: bool,
    /// pgpool statement_level_load_balance: choose the node for each read
    /// rather than once per session.
    pub statement_level_load_balance: bool,
    /// pgpool disable_load_balance_on_write: "off", "transaction",
    /// "trans_transaction", "always" or "dml_adaptive".
    pub disable_load_balance_on_write: DisableLoadBalanceOnWrite,
    /// pgpool read_only_function_list: functions that do not write
    /// (regular expressions matching the whole name). Only one of the two
    /// lists may be set; with both empty, volatility in pg_proc decides.
    #[serde(
        deserialize_with = "types::comma_list",
        serialize_with = "types::serialize_display_seq"
    )]
    pub read_only_function_list: Vec<Pattern>,
    /// pgpool write_function_list: functions that write.
    #[serde(
        deserialize_with = "types::comma_list",
        serialize_with = "types::serialize_display_seq"
    )]
    pub write_function_list: Vec<Pattern>,
    /// pgpool primary_routing_query_pattern_list: statements matching one
    /// of these go to the primary (whole statement, case ignored; in the
    /// string form `;` separates patterns and `\;` is a `;`).
    #[serde(
        deserialize_with = "routing::query_patterns",
        serialize_with = "routing::serialize_patterns"
    )]
    pub primary_routing_query_pattern_list: Vec<Pattern>,
    /// pgpool user_redirect_preference_list: `user:target(ratio)`, ...
    #[serde(
        deserialize_with = "types::comma_list",
        serialize_with = "types::serialize_display_seq"
    )]
    pub user_redirect_preference_list: Vec<RedirectPreference>,
    /// pgpool database_redirect_preference_list: `database:target(ratio)`,
    /// e.g. `"postgres:primary,mydb[01]:1(0.3),mydb2:standby"`.
    #[serde(
        deserialize_with = "types::comma_list",
        serialize_with = "types::serialize_display_seq"
    )]
    pub database_redirect_preference_list: Vec<RedirectPreference>,
    /// pgpool app_name_redirect_preference_list: `application_name:target(ratio)`,
    /// matched against the application_name of the startup packet. Wins
    /// over the database list, which wins over the user list.
    #[serde(
        deserialize_with = "types::comma_list",
        serialize_with = "types::serialize_display_seq"
    )]
    pub app_name_redirect_preference_list: Vec<RedirectPreference>,
    /// pgpool allow_sql_comments: ignore comments when deciding whether a
    /// statement can be balanced.
    pub allow_sql_comments: bool,
    /// A session that has committed a write reads from a standby only once
    /// that standby has replayed the commit; until then it reads from the
    /// primary. No pgpool equivalent.
    pub read_your_writes: bool,
}

impl Default for LoadBalanceConfig {
    fn default() -> Self {
        LoadBalanceConfig {
            load_balance_mode: true,
            statement_level_load_balance: false,
            disable_load_balance_on_write: DisableLoadBalanceOnWrite::Transaction,
            read_only_function_list: Vec::new(),
            write_function_list: Vec::new(),
            primary_routing_query_pattern_list: Vec::new(),
            user_redirect_preference_list: Vec::new(),
            database_redirect_preference_list: Vec::new(),
            app_name_redirect_preference_list: Vec::new(),
            allow_sql_comments: false,
            read_your_writes: false,
        }
    }
}

/// Automatic failover: what pghalo does when the primary stops answering
/// (the `failover` module). pgpool runs a failover_command script; pghalo
/// promotes the best standby itself and points the others at it, over SQL,
/// as `recovery_user`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Promote a standby when the primary is down. Needs recovery_user;
    /// without it pghalo only reports the failure.
    pub auto_failover: bool,
    /// pgpool recovery_user: a superuser (pg_promote, ALTER SYSTEM, creating
    /// replication slots) on every node. `""` = no automatic failover.
    pub recovery_user: String,
    /// pgpool recovery_password, in the forms of sr_check_password.
    pub recovery_password: ConfigPassword,
    /// A standby further behind the primary than this (bytes of WAL not
    /// received, by the last check) is not promoted. 0 = no limit.
    pub max_lag_on_failover: ByteSize,
    /// How long a promotion may take before it counts as failed.
    pub promote_timeout: ConfigDuration,
    /// How long a standby may take to stream from the new primary before
    /// it is reported as unable to follow.
    pub follow_primary_timeout: ConfigDuration,
    /// How long a new session or transaction that needs the primary waits
    /// while the primary is down (for a failover, or for it to come back)
    /// before it gets an error. 0 = no wait.
    pub wait_for_primary: ConfigDuration,
    /// pgpool auto_failback: a standby pghalo detached (it failed, or
    /// could not follow) is attached again once the primary shows it
    /// streaming on the primary's timeline. One the operator detached
    /// stays detached. On by default (pgpool: off, because it cannot tell
    /// the two apart).
    pub auto_failback: bool,
    /// How long a detached standby's replication slot is kept on the
    /// primary, so that it can catch up when it comes back; then it is
    /// dropped so that WAL does not pile up. 0 = never dropped.
    pub slot_grace_period: ConfigDuration,
    /// pgpool failover_command, with its placeholders: promotes the new
    /// primary instead of pg_promote(). Its exit status is checked (0 =
    /// done) and it gets promote_timeout; then pghalo waits until the node
    /// is out of recovery. `""` = built in.
    pub failover_command: String,
    /// pgpool follow_primary_command: run once per standby that is up,
    /// instead of the built-in follow; exit status checked, within
    /// follow_primary_timeout, then the standby must be seen streaming
    /// from the new primary. `""` = built in.
    pub follow_primary_command: String,
    /// pgpool failover_on_backend_error: a session that cannot reach a node,
    /// or loses it mid-request, has every node checked at once. Unlike
    /// pgpool this never fails over by itself: only confirmed failure does
    /// (health_check_max_retries). Off: the next regular check notices.
    pub failover_on_backend_error: bool,
    /// pgpool failover_on_backend_shutdown: likewise when a server ends a
    /// session with admin or crash shutdown (SQLSTATE 57P01, 57P02).
    pub failover_on_backend_shutdown: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            auto_failover: true,
            recovery_user: String::new(),
            recovery_password: ConfigPassword::FromPoolPasswd,
            max_lag_on_failover: ByteSize(0),
            promote_timeout: ConfigDuration::from_secs(60),
            follow_primary_timeout: ConfigDuration::from_secs(30),
            wait_for_primary: ConfigDuration::from_secs(10),
            auto_failback: true,
            slot_grace_period: ConfigDuration::from_secs(30 * 60),
            failover_command: String::new(),
            follow_primary_command: String::new(),
            failover_on_backend_error: true,
            failover_on_backend_shutdown: true,
        }
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`"info"`, `"pghalo::pool=debug,info"`); plays the
    /// part of pgpool's log_min_messages.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

/// One PostgreSQL node: pgpool's backend_*N family.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// How logs, metrics and ctl name the node; `node<N>` when not given.
    /// No pgpool equivalent (pgpool says "node N").
    #[serde(default)]
    pub name: String,
    /// pgpool backend_hostnameN: a hostname, an IP address, or the
    /// directory of the server's Unix socket (starting with '/').
    #[serde(
        deserialize_with = "types::from_str",
        serialize_with = "types::serialize_display"
    )]
    pub host: BackendHost,
    /// pgpool backend_portN.
    #[serde(deserialize_with = "types::port")]
    pub port: u16,
    /// pgpool backend_weightN: this node's share of the reads, relative to
    /// the others.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// pgpool backend_data_directoryN: the data directory on the node's own
    /// host, for failover and recovery commands; never resolved locally.
    #[serde(
        default,
        deserialize_with = "types::optional_path",
        serialize_with = "serialize_optional_path"
    )]
    pub data_directory: Option<PathBuf>,
    /// pgpool backend_flagN; a `|`-separated string as in pgpool.conf is
    /// read too.
    #[serde(default)]
    pub flags: BackendFlags,
    /// pgpool backend_application_nameN: the name this node streams under
    /// (the primary's pg_stat_replication.application_name); the node's
    /// name when not given.
    #[serde(default)]
    pub application_name: String,
    /// Among standbys equally advanced, the higher is promoted first; 0 =
    /// never promoted automatically (`pghalo ctl promote` still can). No
    /// pgpool equivalent.
    #[serde(default = "default_promotion_priority")]
    pub promotion_priority: u32,
    /// pgpool health_check_periodN; unset = `[health_check]`'s. The
    /// health_check_* keys below override `[health_check]` likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_period: Option<ConfigDuration>,
    /// pgpool health_check_timeoutN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_timeout: Option<ConfigDuration>,
    /// pgpool health_check_userN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_user: Option<String>,
    /// pgpool health_check_passwordN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_password: Option<ConfigPassword>,
    /// pgpool health_check_databaseN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_database: Option<String>,
    /// pgpool health_check_max_retriesN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_max_retries: Option<u32>,
    /// pgpool health_check_retry_delayN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_retry_delay: Option<ConfigDuration>,
}

fn default_weight() -> f64 {
    1.0
}

fn default_promotion_priority() -> u32 {
    1
}

fn serialize_optional_path<S: serde::Serializer>(
    path: &Option<PathBuf>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    // "" rather than an absent key, so that a serialised Config reads back
    // as the same Config even where the default is a path.
    match path {
        Some(path) => serializer.collect_str(&path.display()),
        None => serializer.serialize_str(""),
    }
}

impl Config {
    /// Reads and checks the file at `path`. Relative paths inside it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string(), path.parent())
    }

    /// Parses `text` as if read from a file called `name`, which errors
    /// name and against whose directory relative paths are resolved.
    pub fn from_str_with_name(text: &str, name: &str) -> Result<Config, ConfigError> {
        Config::parse(text, name, Path::new(name).parent())
    }

    fn parse(text: &str, file: &str, base: Option<&Path>) -> Result<Config, ConfigError> {
        let invalid = |line: usize, (key, message): (String, String)| ConfigError::Invalid {
            file: file.to_owned(),
            line,
            key,
            message,
        };
        let doc = ImDocument::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            invalid(line, error::describe_syntax(text, line, e.message()))
        })?;
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, path) = match e.span() {
                Some(span) => (line_of(text, span.start), path_at(&doc, span.start)),
                None => (1, KeyPath::default()),
            };
            invalid(line, error::describe_serde(&path, e.message()))
        })?;
        config.fill_defaults();
        config.resolve_paths(base.unwrap_or(Path::new("")));
        validate::check(&config).map_err(|problem| {
            let line = span_of(&doc, &problem.path).map_or(1, |s| line_of(text, s.start));
            let key = problem.path.to_string();
            let message = if key.is_empty() {
                problem.message
            } else {
                format!("{key}: {}", problem.message)
            };
            invalid(line, (key, message))
        })?;
        Ok(config)
    }

    /// Defaults that depend on other values, which serde's per-field
    /// defaults cannot express.
    fn fill_defaults(&mut self) {
        for (index, backend) in self.backends.iter_mut().enumerate() {
            if backend.name.trim().is_empty() {
                backend.name = format!("node{index}");
            }
            if backend.application_name.is_empty() {
                backend.application_name = backend.name.clone();
            }
        }
    }

    /// Relative paths mean "next to the configuration file", so that the
    /// daemon's working directory never changes which file is read.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        };
        self.listen
            .unix_socket_directories
            .iter_mut()
            .for_each(resolve);
        resolve(&mut self.auth.pool_hba);
        for path in [
            &mut self.auth.pool_passwd,
            &mut self.auth.pool_key_file,
            &mut self.tls.cert_file,
            &mut self.tls.key_file,
            &mut self.tls.ca_file,
            &mut self.tls.backend_ca_file,
            &mut self.daemon.pid_file_name,
            &mut self.daemon.state_file,
            &mut self.daemon.ctl_socket,
        ]
        .into_iter()
        .flatten()
        {
            resolve(path);
        }
    }

    /// The backend with this name.
    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// A complete, commented configuration with every default spelled out.
pub fn example() -> &'static str {
    include_str!("pghalo.example.toml")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const FILE: &str = "/etc/pghalo/pghalo.toml";
    const MINIMAL: &str = "[[backend]]\nhost = \"10.0.0.1\"\nport = 5432\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_with_name(text, FILE)
    }

    /// The error's line, key and whole text, for asserting all three.
    fn fail(text: &str) -> (usize, String, String) {
        match parse(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(e) => (
                e.line().unwrap(),
                e.key().unwrap().to_owned(),
                e.to_string(),
            ),
        }
    }

    #[test]
    fn defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, ListenConfig::default());
        assert_eq!(c.listen.port, 9999);
        assert_eq!(c.listen.listen_addresses[0].to_string(), "127.0.0.1");
        assert_eq!(c.listen.unix_socket_permissions, FileMode(0o777));
        assert_eq!(c.listen.max_client_connections, 1000);
        assert_eq!(
            c.listen.authentication_timeout.as_duration(),
            Duration::from_secs(60)
        );
        assert_eq!(c.listen.client_idle_limit.limit(), None);
        assert_eq!(c.pool, PoolConfig::default());
        assert_eq!(c.pool.mode, PoolMode::Session);
        assert_eq!(c.pool.max_pool_size, 20);
        assert_eq!(c.pool.max_lifetime, ConfigDuration::from_secs(3600));
        assert_eq!(c.pool.idle_timeout, ConfigDuration::from_secs(600));
        assert_eq!(c.pool.checkout_timeout, ConfigDuration::from_secs(30));
        assert_eq!(c.pool.connect_timeout, ConfigDuration::from_secs(10));
        assert_eq!(c.pool.reset_query_list.queries(), ["DISCARD ALL"]);
        assert_eq!(c.auth.pool_hba, Path::new("/etc/pghalo/pool_hba.conf"));
        assert_eq!(
            c.auth.pool_passwd.as_deref(),
            Some(Path::new("/etc/pghalo/pool_passwd"))
        );
        assert_eq!(c.auth.pool_key_file, None);
        assert_eq!(c.tls, TlsConfig::default());
        assert_eq!(c.log.level, "info");
        let b = &c.backends[0];
        assert_eq!(b.name, "node0");
        assert_eq!(b.application_name, "node0");
        assert_eq!(b.host, BackendHost::Tcp("10.0.0.1".into()));
        assert_eq!(b.weight, 1.0);
        assert_eq!(b.data_directory, None);
        assert!(b.flags.allows_failover() && !b.flags.always_primary);
        let sr = &c.streaming_replication;
        assert_eq!(sr.sr_check_period, ConfigDuration::from_secs(1));
        assert_eq!(sr.sr_check_timeout, ConfigDuration::from_secs(10));
        assert_eq!(sr.sr_check_user, "");
        assert!(sr.sr_check_password.is_empty());
        assert_eq!(sr.sr_check_database, "postgres");
        assert_eq!(sr.delay_threshold, ByteSize(0));
        assert!(sr.delay_threshold_by_time.is_zero());
        assert!(!sr.prefer_lower_delay_standby);
        let lb = &c.load_balance;
        assert!(lb.load_balance_mode && !lb.statement_level_load_balance);
        assert_eq!(
            lb.disable_load_balance_on_write,
            DisableLoadBalanceOnWrite::Transaction
        );
        assert!(lb.read_only_function_list.is_empty() && lb.write_function_list.is_empty());
        assert!(lb.primary_routing_query_pattern_list.is_empty());
        assert!(lb.database_redirect_preference_list.is_empty());
        assert!(!lb.allow_sql_comments && !lb.read_your_writes);
    }

    #[test]
    fn replication_and_load_balance_in_pgpool_spellings() {
        let c = parse(&format!(
            "[auth]\npool_key_file = \"key\"\n\
             [streaming_replication]\nsr_check_period = 5\nsr_check_user = \"pghalo\"\n\
             sr_check_password = \"AESabc=\"\ndelay_threshold = 10000000\n\
             delay_threshold_by_time = 500\n\
             [load_balance]\nread_only_function_list = \"get_.*,select_.*\"\n\
             primary_routing_query_pattern_list = \"SELECT \\\\* FROM t1\\\\;;.*t3.*\"\n\
             database_redirect_preference_list = \"postgres:primary,mydb[01]:0(0.3),mydb2:standby\"\n\
             app_name_redirect_preference_list = [\"psql:primary\", \"myapp:standby(0.5)\"]\n\
             disable_load_balance_on_write = \"dml_adaptive\"\n{MINIMAL}"
        ))
        .unwrap();
        let sr = &c.streaming_replication;
        assert_eq!(sr.sr_check_period, ConfigDuration::from_secs(5));
        assert_eq!(sr.delay_threshold, ByteSize(10_000_000));
        // pgpool's unit for this one is the millisecond.
        assert_eq!(sr.delay_threshold_by_time, ConfigDuration::from_millis(500));
        assert!(sr.sr_check_password.is_aes());
        let lb = &c.load_balance;
        let names: Vec<&str> = lb
            .read_only_function_list
            .iter()
            .map(Pattern::as_str)
            .collect();
        assert_eq!(names, ["get_.*", "select_.*"]);
        let patterns = &lb.primary_routing_query_pattern_list;
        assert_eq!(patterns.len(), 2);
        assert!(patterns[0].is_match("select * from T1;"));
        assert!(patterns[1].is_match("UPDATE t3 SET a = 1"));
        let db = &lb.database_redirect_preference_list;
        assert_eq!(db.len(), 3);
        assert_eq!(db[1].target, RedirectTarget::Node(0));
        assert_eq!(db[1].ratio, 0.3);
        assert_eq!(db[2].target, RedirectTarget::Standby);
        let app = &lb.app_name_redirect_preference_list;
        assert_eq!(app[1].to_string(), "myapp:standby(0.5)");
        assert_eq!(
            lb.disable_load_balance_on_write,
            DisableLoadBalanceOnWrite::DmlAdaptive
        );
        let text = toml::to_string(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c);
    }

    #[test]
    fn example_is_accepted_and_spells_out_the_defaults() {
        let c = Config::from_str_with_name(example(), FILE).unwrap();
        let d = parse(MINIMAL).unwrap();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.pool, d.pool);
        assert_eq!(c.auth, d.auth);
        assert_eq!(c.tls, d.tls);
        assert_eq!(c.log, d.log);
        assert_eq!(c.streaming_replication, d.streaming_replication);
        assert_eq!(c.health_check, d.health_check);
        assert_eq!(c.load_balance, d.load_balance);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].name, "node1");
        assert_eq!(c.backends[1].port, 5433);
    }

    #[test]
    fn load_reads_the_file_and_resolves_paths_next_to_it() {
        let dir = std::env::temp_dir().join(format!("pghalo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pghalo.toml");
        std::fs::write(
            &path,
            format!(
                "[auth]\npool_hba = \"hba/pool_hba.conf\"\npool_key_file = \"/abs/key\"\n\
                 [tls]\nenabled = true\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
                 [listen]\nunix_socket_directories = [\"run\", \"/tmp\"]\n{MINIMAL}"
            ),
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.auth.pool_hba, dir.join("hba/pool_hba.conf"));
        assert_eq!(c.auth.pool_passwd, Some(dir.join("pool_passwd")));
        assert_eq!(c.auth.pool_key_file, Some(PathBuf::from("/abs/key")));
        assert_eq!(c.tls.cert_file, Some(dir.join("c.pem")));
        assert_eq!(c.tls.key_file, Some(dir.join("k.pem")));
        assert_eq!(
            c.listen.unix_socket_directories,
            [dir.join("run"), PathBuf::from("/tmp")]
        );

        std::fs::write(&path, "[pool]\nmax_pool = 3\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}:2: unknown key 'max_pool' in [pool]",
                path.display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let err = Config::load(&dir.join("missing.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn pgpool_spellings() {
        let c = parse(
            "[listen]\nlisten_addresses = \"*\"\nunix_socket_directories = \"/tmp,/var/run/pghalo\"\n\
             unix_socket_permissions = 0o700\n\
             [pool]\nreset_query_list = \"ABORT; DISCARD ALL\"\n\
             [[backend]]\nhost = \"/var/run/postgresql\"\nport = 5432\n\
             flags = \"DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY\"\nweight = 2\n",
        )
        .unwrap();
        assert_eq!(c.listen.listen_addresses, [ListenAddress::Any]);
        assert_eq!(c.listen.unix_socket_directories.len(), 2);
        assert_eq!(c.listen.unix_socket_permissions, FileMode(0o700));
        assert_eq!(c.pool.reset_query_list.queries(), ["ABORT", "DISCARD ALL"]);
        let b = &c.backends[0];
        assert!(b.host.is_unix());
        assert!(!b.flags.allows_failover() && b.flags.always_primary);
        assert_eq!(b.weight, 2.0);
    }

    #[test]
    fn durations_in_every_form() {
        let c = parse(&format!(
            "[listen]\nauthentication_timeout = 5\nclient_idle_limit = \"2min\"\n\
             [pool]\nmax_lifetime = \"1d\"\nidle_timeout = \"2m\"\ncheckout_timeout = \"500ms\"\n\
             connect_timeout = \"1h\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            c.listen.authentication_timeout,
            ConfigDuration::from_secs(5)
        );
        assert_eq!(c.listen.client_idle_limit, ConfigDuration::from_secs(120));
        assert_eq!(c.pool.max_lifetime, ConfigDuration::from_secs(86_400));
        assert_eq!(c.pool.idle_timeout, ConfigDuration::from_secs(120));
        assert_eq!(c.pool.checkout_timeout, ConfigDuration::from_millis(500));
        assert_eq!(c.pool.connect_timeout, ConfigDuration::from_secs(3600));
    }

    #[test]
    fn names_and_application_names() {
        let c = parse(
            "[[backend]]\nhost = \"a\"\nport = 1\n\
             [[backend]]\nname = \"east\"\nhost = \"b\"\nport = 1\n\
             [[backend]]\nhost = \"c\"\nport = 1\napplication_name = \"walrcv\"\n",
        )
        .unwrap();
        let names: Vec<_> = c.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["node0", "east", "node2"]);
        assert_eq!(c.backends[1].application_name, "east");
        assert_eq!(c.backends[2].application_name, "walrcv");
        assert_eq!(c.backend("east").map(|b| b.port), Some(1));
        assert!(c.backend("west").is_none());
    }

    #[test]
    fn inline_backends_work_too() {
        let c =
            parse("backend = [{ host = \"a\", port = 1 }, { host = \"b\", port = 2 }]\n").unwrap();
        assert_eq!(c.backends.len(), 2);
        let (line, key, msg) =
            fail("backend = [\n  { host = \"a\", port = 1 },\n  { host = \"b\", port = 0 },\n]\n");
        assert_eq!((line, key.as_str()), (3, "backend[1].port"));
        assert!(msg.contains("invalid port 0"), "{msg}");
    }

    #[test]
    fn serialised_config_reads_back_the_same() {
        let c = Config::from_str_with_name(example(), FILE).unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::from_str_with_name(&text, FILE).unwrap(), c);
    }

    #[test]
    fn unknown_keys() {
        let (line, key, msg) = fail(&format!(
            "[pool]\nmode = \"session\"\nmax_pool = 4\n{MINIMAL}"
        ));
        assert_eq!(line, 3);
        assert_eq!(key, "pool.max_pool");
        assert!(
            msg.starts_with(&format!(
                "{FILE}:3: unknown key 'max_pool' in [pool] (expected one of: mode, max_pool_size, min_idle"
            )),
            "{msg}"
        );
        let (line, key, msg) = fail(&format!("{MINIMAL}hostname = \"x\"\n"));
        assert_eq!((line, key.as_str()), (4, "backend[0].hostname"));
        assert!(
            msg.contains("unknown key 'hostname' in backend[0] (expected one of: name, host, port"),
            "{msg}"
        );
        let (line, key, msg) = fail(&format!("verbose = true\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (1, "verbose"));
        assert!(
            msg.contains("unknown key 'verbose' at the top level (expected one of: listen, pool, auth, tls, log, daemon, streaming_replication, health_check, load_balance, failover, backend)"),
            "{msg}"
        );
        let (line, key, _) = fail(&format!("[pool]\n\n[tls]\nssl = true\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (4, "tls.ssl"));
        let (line, key, _) = fail(&format!("{MINIMAL}[logging]\nlevel = \"x\"\n"));
        assert_eq!((line, key.as_str()), (4, "logging"));
        // A dotted key reaches into a section without a header.
        let (line, key, _) = fail(&format!("pool.max_pool = 1\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (1, "pool.max_pool"));
    }

    #[test]
    fn wrong_types() {
        let (line, key, msg) = fail(&format!("[pool]\n\nmax_pool_size = \"many\"\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (3, "pool.max_pool_size"));
        assert!(
            msg.starts_with(&format!(
                "{FILE}:3: pool.max_pool_size: invalid type: string \"many\""
            )),
            "{msg}"
        );
        let (line, key, msg) = fail(&format!("[tls]\nenabled = \"yes\"\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "tls.enabled"));
        assert!(msg.contains("expected a boolean"), "{msg}");
        let (line, key, msg) = fail(&format!("pool = 3\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (1, "pool"));
        assert!(msg.contains("expected a table"), "{msg}");
        let (line, key, msg) = fail(&format!("[pool]\nmode = \"statement\"\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "pool.mode"));
        assert!(
            msg.ends_with(
                "pool.mode: invalid value 'statement' (expected one of: session, transaction)"
            ),
            "{msg}"
        );
        let (line, key, msg) = fail(&format!("[tls]\nbackend = \"verify-full\"\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "tls.backend"));
        assert!(msg.contains("disable, prefer, require"), "{msg}");
        let (line, key, _) = fail(&format!(
            "[listen]\nlisten_addresses = [\"*\", 5]\n{MINIMAL}"
        ));
        assert_eq!((line, key.as_str()), (2, "listen.listen_addresses[1]"));
        let (line, key, msg) = fail(&format!("[listen]\nmax_client_connections = -1\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "listen.max_client_connections"));
        assert!(msg.contains("0 or more"), "{msg}");
    }

    #[test]
    fn bad_units() {
        let (line, key, msg) = fail(&format!(
            "{MINIMAL}[pool]\n\n\ncheckout_timeout = \"5 parsecs\"\n"
        ));
        assert_eq!((line, key.as_str()), (7, "pool.checkout_timeout"));
        assert_eq!(
            msg,
            format!(
                "{FILE}:7: pool.checkout_timeout: invalid duration \"5 parsecs\" (use ms, s, min, h, d; a bare number means seconds)"
            )
        );
        let (line, key, msg) = fail(&format!("[listen]\nclient_idle_limit = -3\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "listen.client_idle_limit"));
        assert!(msg.contains("must not be negative"), "{msg}");
        let (line, key, msg) = fail(&format!(
            "[listen]\nunix_socket_permissions = \"0999\"\n{MINIMAL}"
        ));
        assert_eq!((line, key.as_str()), (2, "listen.unix_socket_permissions"));
        assert!(msg.contains("octal"), "{msg}");
    }

    #[test]
    fn missing_required_keys() {
        let (line, key, msg) = fail("[pool]\nmin_idle = 1\n\n[[backend]]\nport = 5432\n");
        assert_eq!((line, key.as_str()), (4, "backend[0].host"));
        assert_eq!(
            msg,
            format!("{FILE}:4: missing required key 'host' in backend[0]")
        );
        let (line, key, msg) = fail(&format!("{MINIMAL}\n[[backend]]\nhost = \"b\"\n"));
        assert_eq!((line, key.as_str()), (5, "backend[1].port"));
        assert!(
            msg.contains("missing required key 'port' in backend[1]"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors() {
        let (line, key, msg) = fail(&format!("[pool]\nmax_pool_size = 2x\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "pool.max_pool_size"));
        assert!(
            msg.starts_with(&format!(
                "{FILE}:2: pool.max_pool_size: TOML syntax error: "
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        let (line, _, msg) = fail(&format!("{MINIMAL}port = 1\n"));
        assert_eq!(line, 4, "{msg}");
        assert!(msg.contains("duplicate key"), "{msg}");
        let (line, _, _) = fail("[pool\nmode = 1\n");
        assert_eq!(line, 1);
    }

    #[test]
    fn no_panic_on_odd_input() {
        for text in [
            "",
            "\u{feff}",
            "[[backend]]",
            "backend = 1",
            "backend = [1]",
            "backend = [[]]",
            "[backend]\nhost = \"a\"\nport = 1",
            "[[backend]]\nhost = \"é\"\nport = 99999999999999999999",
            "[[backend]]\nhost = \"a\"\nport = 1\nweight = nan",
            "[listen]\nport = 1.5",
            "listen = { port = \"x\" }",
            "\"\" = 1",
            "a.b.c.d = 1",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.line().is_some(), "{text:?}: {err}");
            assert!(err.to_string().starts_with(FILE), "{text:?}: {err}");
        }
    }
}
