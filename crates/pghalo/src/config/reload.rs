//! What a reload (SIGHUP, `ctl reload`) may change while pghalo runs, and
//! what waits for a restart.
//!
//! A value is live when every place that reads it reads it again for each new
//! client, server connection or handshake; it needs a restart when it is
//! baked into something long-lived: a bound socket, the pools' shape, or a
//! node's identity in the cluster table.

use std::fmt::Display;
use std::path::PathBuf;

use super::{BackendConfig, Config, ConfigPassword, HealthCheckConfig};

/// The differences between two configurations, each as
/// `"pool.max_pool_size: 20 -> 40"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changes that take effect when the new configuration is published.
    pub live: Vec<String>,
    /// Changes that are ignored until pghalo restarts.
    pub restart_required: Vec<String>,
}

impl ReloadPlan {
    /// No difference at all.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart_required.is_empty()
    }

    pub fn needs_restart(&self) -> bool {
        !self.restart_required.is_empty()
    }
}

#[derive(Clone, Copy)]
enum Applies {
    Live,
    Restart,
}

struct Diff {
    plan: ReloadPlan,
}

impl Diff {
    fn note(&mut self, applies: Applies, entry: String) {
        match applies {
            Applies::Live => self.plan.live.push(entry),
            Applies::Restart => self.plan.restart_required.push(entry),
        }
    }

    fn field<T: PartialEq + Display>(&mut self, applies: Applies, key: &str, old: &T, new: &T) {
        if old != new {
            self.note(applies, format!("{key}: {old} -> {new}"));
        }
    }

    fn list<T: PartialEq + Display>(&mut self, applies: Applies, key: &str, old: &[T], new: &[T]) {
        if old != new {
            self.note(applies, format!("{key}: {} -> {}", list(old), list(new)));
        }
    }

    /// A secret changed: said, never shown (invariant 7).
    fn secret<T: PartialEq>(&mut self, applies: Applies, key: &str, old: &T, new: &T) {
        if old != new {
            self.note(applies, format!("{key}: changed"));
        }
    }

    fn path(&mut self, applies: Applies, key: &str, old: &Option<PathBuf>, new: &Option<PathBuf>) {
        if old != new {
            self.note(applies, format!("{key}: {} -> {}", path(old), path(new)));
        }
    }
}

fn list<T: Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

fn path(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None => "(none)".to_owned(),
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// An optional key as the plan shows it.
fn unset<T: Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(unset)".to_owned(), ToString::to_string)
}

fn unset_quoted(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "(unset)".to_owned(), quoted)
}

fn describe(backend: &BackendConfig) -> String {
    format!("{} at {}:{}", backend.name, backend.host, backend.port)
}

/// Compares `old` with `new`, field by field.
pub fn reload_plan(old: &Config, new: &Config) -> ReloadPlan {
    use Applies::{Live, Restart};
    let mut d = Diff {
        plan: ReloadPlan::default(),
    };

    let (o, n) = (&old.listen, &new.listen);
    // Bound sockets: re-binding on reload could drop the address clients
    // are using, so it waits for a restart.
    d.list(
        Restart,
        "listen.listen_addresses",
        &o.listen_addresses,
        &n.listen_addresses,
    );
    d.field(Restart, "listen.port", &o.port, &n.port);
    let dirs = |dirs: &[PathBuf]| {
        dirs.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    d.list(
        Restart,
        "listen.unix_socket_directories",
        &dirs(&o.unix_socket_directories),
        &dirs(&n.unix_socket_directories),
    );
    d.field(
        Restart,
        "listen.unix_socket_permissions",
        &o.unix_socket_permissions,
        &n.unix_socket_permissions,
    );
    d.field(
        Live,
        "listen.max_client_connections",
        &o.max_client_connections,
        &n.max_client_connections,
    );
    d.field(
        Live,
        "listen.authentication_timeout",
        &o.authentication_timeout,
        &n.authentication_timeout,
    );
    d.field(
        Live,
        "listen.client_idle_limit",
        &o.client_idle_limit,
        &n.client_idle_limit,
    );

    let (o, n) = (&old.pool, &new.pool);
    // Sessions in flight were admitted under the old mode's rules.
    d.field(Restart, "pool.mode", &o.mode, &n.mode);
    d.field(
        Live,
        "pool.max_pool_size",
        &o.max_pool_size,
        &n.max_pool_size,
    );
    d.field(Live, "pool.min_idle", &o.min_idle, &n.min_idle);
    d.field(Live, "pool.max_lifetime", &o.max_lifetime, &n.max_lifetime);
    d.field(Live, "pool.idle_timeout", &o.idle_timeout, &n.idle_timeout);
    d.field(
        Live,
        "pool.checkout_timeout",
        &o.checkout_timeout,
        &n.checkout_timeout,
    );
    d.field(
        Live,
        "pool.connect_timeout",
        &o.connect_timeout,
        &n.connect_timeout,
    );
    d.list(
        Live,
        "pool.reset_query_list",
        o.reset_query_list.queries(),
        n.reset_query_list.queries(),
    );

    // Both files are read again on every reload, whatever their names.
    let (o, n) = (&old.auth, &new.auth);
    d.path(
        Live,
        "auth.pool_hba",
        &Some(o.pool_hba.clone()),
        &Some(n.pool_hba.clone()),
    );
    d.path(Live, "auth.pool_passwd", &o.pool_passwd, &n.pool_passwd);
    d.path(
        Live,
        "auth.pool_key_file",
        &o.pool_key_file,
        &n.pool_key_file,
    );

    let (o, n) = (&old.tls, &new.tls);
    // Whether SSLRequest is answered 'S' is decided by the listener set up
    // at start; the files are read at start and on each reload, and new
    // handshakes use what was read last.
    d.field(Restart, "tls.enabled", &o.enabled, &n.enabled);
    // Removing a file while TLS stays on until the restart cannot apply:
    // handshakes would have nothing to use.
    let file = |new: &Option<PathBuf>| {
        if o.enabled && new.is_none() {
            Restart
        } else {
            Live
        }
    };
    d.path(
        file(&n.cert_file),
        "tls.cert_file",
        &o.cert_file,
        &n.cert_file,
    );
    d.path(file(&n.key_file), "tls.key_file", &o.key_file, &n.key_file);
    d.path(Live, "tls.ca_file", &o.ca_file, &n.ca_file);
    d.field(Live, "tls.backend", &o.backend, &n.backend);
    d.path(
        Live,
        "tls.backend_ca_file",
        &o.backend_ca_file,
        &n.backend_ca_file,
    );

    d.field(
        Live,
        "log.level",
        &quoted(&old.log.level),
        &quoted(&new.log.level),
    );

    d.path(
        Restart,
        "daemon.pid_file_name",
        &old.daemon.pid_file_name,
        &new.daemon.pid_file_name,
    );
    d.path(
        Restart,
        "daemon.state_file",
        &old.daemon.state_file,
        &new.daemon.state_file,
    );
    d.path(
        Restart,
        "daemon.ctl_socket",
        &old.daemon.ctl_socket,
        &new.daemon.ctl_socket,
    );
    d.field(
        Restart,
        "daemon.worker_threads",
        &old.daemon.worker_threads,
        &new.daemon.worker_threads,
    );

    diff_streaming_replication(&mut d, old, new);
    diff_health_check(&mut d, old, new);
    diff_load_balance(&mut d, old, new);
    diff_failover(&mut d, old, new);
    diff_backends(&mut d, &old.backends, &new.backends);
    d.plan
}

/// Restart-only for now (the failover task reads its settings once), but
/// what sessions read: wait_for_primary, failover_on_backend_error and
/// failover_on_backend_shutdown.
fn diff_failover(d: &mut Diff, old: &Config, new: &Config) {
    use Applies::{Live, Restart};
    let (o, n) = (&old.failover, &new.failover);
    let key = |name: &str| format!("failover.{name}");
    d.field(
        Restart,
        &key("auto_failover"),
        &o.auto_failover,
        &n.auto_failover,
    );
    d.field(
        Restart,
        &key("recovery_user"),
        &quoted(&o.recovery_user),
        &quoted(&n.recovery_user),
    );
    d.secret(
        Restart,
        &key("recovery_password"),
        &o.recovery_password,
        &n.recovery_password,
    );
    d.field(
        Restart,
        &key("max_lag_on_failover"),
        &o.max_lag_on_failover,
        &n.max_lag_on_failover,
    );
    d.field(
        Restart,
        &key("promote_timeout"),
        &o.promote_timeout,
        &n.promote_timeout,
    );
    d.field(
        Restart,
        &key("follow_primary_timeout"),
        &o.follow_primary_timeout,
        &n.follow_primary_timeout,
    );
    d.field(
        Live,
        &key("wait_for_primary"),
        &o.wait_for_primary,
        &n.wait_for_primary,
    );
    d.field(
        Restart,
        &key("auto_failback"),
        &o.auto_failback,
        &n.auto_failback,
    );
    d.field(
        Restart,
        &key("slot_grace_period"),
        &o.slot_grace_period,
        &n.slot_grace_period,
    );
    d.field(
        Live,
        &key("failover_on_backend_error"),
        &o.failover_on_backend_error,
        &n.failover_on_backend_error,
    );
    d.field(
        Live,
        &key("failover_on_backend_shutdown"),
        &o.failover_on_backend_shutdown,
        &n.failover_on_backend_shutdown,
    );
    d.field(
        Restart,
        &key("failover_command"),
        &quoted(&o.failover_command),
        &quoted(&n.failover_command),
    );
    d.field(
        Restart,
        &key("follow_primary_command"),
        &quoted(&o.follow_primary_command),
        &quoted(&n.follow_primary_command),
    );
}

/// All live, as in pgpool: the replication monitor is handed its new
/// settings on reload and uses them from its next check (new credentials
/// mean new connections); the thresholds are read by the router at each
/// choice of a node.
fn diff_streaming_replication(d: &mut Diff, old: &Config, new: &Config) {
    use Applies::Live;
    let (o, n) = (&old.streaming_replication, &new.streaming_replication);
    let key = |name: &str| format!("streaming_replication.{name}");
    d.field(
        Live,
        &key("sr_check_period"),
        &o.sr_check_period,
        &n.sr_check_period,
    );
    d.field(
        Live,
        &key("sr_check_timeout"),
        &o.sr_check_timeout,
        &n.sr_check_timeout,
    );
    d.field(
        Live,
        &key("sr_check_user"),
        &quoted(&o.sr_check_user),
        &quoted(&n.sr_check_user),
    );
    d.secret(
        Live,
        &key("sr_check_password"),
        &o.sr_check_password,
        &n.sr_check_password,
    );
    d.field(
        Live,
        &key("sr_check_database"),
        &quoted(&o.sr_check_database),
        &quoted(&n.sr_check_database),
    );
    d.field(
        Live,
        &key("delay_threshold"),
        &o.delay_threshold,
        &n.delay_threshold,
    );
    d.field(
        Live,
        &key("delay_threshold_by_time"),
        &o.delay_threshold_by_time,
        &n.delay_threshold_by_time,
    );
    d.field(
        Live,
        &key("prefer_lower_delay_standby"),
        &o.prefer_lower_delay_standby,
        &n.prefer_lower_delay_standby,
    );
}

/// All live: the monitor's tasks take the new values at their next check.
fn diff_health_check(d: &mut Diff, old: &Config, new: &Config) {
    let key = |name: &str| format!("health_check.{name}");
    diff_health_check_keys(
        d,
        Applies::Live,
        key,
        HealthCheckKeys::section(&old.health_check),
        HealthCheckKeys::section(&new.health_check),
    );
}

/// A node's own health_check_* keys: live like `[health_check]`'s.
fn diff_backend_health_check(
    d: &mut Diff,
    applies: Applies,
    index: usize,
    o: &BackendConfig,
    n: &BackendConfig,
) {
    let key = |field: &str| format!("backend[{index}].{field}");
    diff_health_check_keys(
        d,
        applies,
        key,
        HealthCheckKeys::backend(o),
        HealthCheckKeys::backend(n),
    );
}

/// One level's health_check_* keys as the plan shows them, the password
/// apart (never shown).
struct HealthCheckKeys<'a> {
    shown: [(&'static str, String); 6],
    password: &'a Option<ConfigPassword>,
}

impl<'a> HealthCheckKeys<'a> {
    fn section(hc: &'a HealthCheckConfig) -> HealthCheckKeys<'a> {
        HealthCheckKeys {
            shown: [
                ("health_check_period", unset(&hc.health_check_period)),
                ("health_check_timeout", unset(&hc.health_check_timeout)),
                ("health_check_user", unset_quoted(&hc.health_check_user)),
                (
                    "health_check_database",
                    unset_quoted(&hc.health_check_database),
                ),
                (
                    "health_check_max_retries",
                    hc.health_check_max_retries.to_string(),
                ),
                (
                    "health_check_retry_delay",
                    hc.health_check_retry_delay.to_string(),
                ),
            ],
            password: &hc.health_check_password,
        }
    }

    fn backend(b: &'a BackendConfig) -> HealthCheckKeys<'a> {
        HealthCheckKeys {
            shown: [
                ("health_check_period", unset(&b.health_check_period)),
                ("health_check_timeout", unset(&b.health_check_timeout)),
                ("health_check_user", unset_quoted(&b.health_check_user)),
                (
                    "health_check_database",
                    unset_quoted(&b.health_check_database),
                ),
                (
                    "health_check_max_retries",
                    unset(&b.health_check_max_retries),
                ),
                (
                    "health_check_retry_delay",
                    unset(&b.health_check_retry_delay),
                ),
            ],
            password: &b.health_check_password,
        }
    }
}

fn diff_health_check_keys(
    d: &mut Diff,
    applies: Applies,
    key: impl Fn(&str) -> String,
    old: HealthCheckKeys<'_>,
    new: HealthCheckKeys<'_>,
) {
    for ((name, o), (_, n)) in old.shown.iter().zip(&new.shown) {
        d.field(applies, &key(name), o, n);
    }
    d.secret(
        applies,
        &key("health_check_password"),
        old.password,
        new.password,
    );
}

/// All live. pgpool needs a restart for load_balance_mode because each of
/// its child processes fixes its load-balancing node at start; pghalo's
/// router reads the configuration when it chooses a node (per session or
/// per statement), so a change reaches new sessions at once. A session
/// already reading from a standby keeps it until it ends, which is never
/// unsafe: a standby only ever gets reads.
fn diff_load_balance(d: &mut Diff, old: &Config, new: &Config) {
    use Applies::Live;
    let (o, n) = (&old.load_balance, &new.load_balance);
    let key = |name: &str| format!("load_balance.{name}");
    d.field(
        Live,
        &key("load_balance_mode"),
        &o.load_balance_mode,
        &n.load_balance_mode,
    );
    d.field(
        Live,
        &key("statement_level_load_balance"),
        &o.statement_level_load_balance,
        &n.statement_level_load_balance,
    );
    d.field(
        Live,
        &key("disable_load_balance_on_write"),
        &o.disable_load_balance_on_write,
        &n.disable_load_balance_on_write,
    );
    d.list(
        Live,
        &key("read_only_function_list"),
        &o.read_only_function_list,
        &n.read_only_function_list,
    );
    d.list(
        Live,
        &key("write_function_list"),
        &o.write_function_list,
        &n.write_function_list,
    );
    d.list(
        Live,
        &key("primary_routing_query_pattern_list"),
        &o.primary_routing_query_pattern_list,
        &n.primary_routing_query_pattern_list,
    );
    d.list(
        Live,
        &key("user_redirect_preference_list"),
        &o.user_redirect_preference_list,
        &n.user_redirect_preference_list,
    );
    d.list(
        Live,
        &key("database_redirect_preference_list"),
        &o.database_redirect_preference_list,
        &n.database_redirect_preference_list,
    );
    d.list(
        Live,
        &key("app_name_redirect_preference_list"),
        &o.app_name_redirect_preference_list,
        &n.app_name_redirect_preference_list,
    );
    d.field(
        Live,
        &key("allow_sql_comments"),
        &o.allow_sql_comments,
        &n.allow_sql_comments,
    );
    d.field(
        Live,
        &key("read_your_writes"),
        &o.read_your_writes,
        &n.read_your_writes,
    );
}

/// Backends are matched by position, which is their identity (pgpool's N):
/// the cluster table, the health checks and every decision in the
/// coordinator's log refer to a node by it.
fn diff_backends(d: &mut Diff, old: &[BackendConfig], new: &[BackendConfig]) {
    use Applies::{Live, Restart};
    for (index, (o, n)) in old.iter().zip(new).enumerate() {
        let key = |field: &str| format!("backend[{index}].{field}");
        // A node whose identity changes is a different node from the
        // restart on; its other settings wait for it.
        let live = if same_node(o, n) { Live } else { Restart };
        d.field(Restart, &key("name"), &o.name, &n.name);
        d.field(Restart, &key("host"), &o.host, &n.host);
        d.field(Restart, &key("port"), &o.port, &n.port);
        d.field(live, &key("weight"), &o.weight, &n.weight);
        d.path(
            live,
            &key("data_directory"),
            &o.data_directory,
            &n.data_directory,
        );
        // Whether a node may be failed over, or is always the primary,
        // shapes decisions the coordinator may already be in the middle of.
        d.field(Restart, &key("flags"), &o.flags, &n.flags);
        d.field(
            live,
            &key("application_name"),
            &quoted(&o.application_name),
            &quoted(&n.application_name),
        );
        d.field(
            live,
            &key("promotion_priority"),
            &o.promotion_priority,
            &n.promotion_priority,
        );
        diff_backend_health_check(d, live, index, o, n);
    }
    for (index, b) in old.iter().enumerate().skip(new.len()) {
        d.note(
            Restart,
            format!("backend[{index}]: removed ({})", describe(b)),
        );
    }
    for (index, b) in new.iter().enumerate().skip(old.len()) {
        d.note(
            Restart,
            format!("backend[{index}]: added ({})", describe(b)),
        );
    }
}

fn same_node(old: &BackendConfig, new: &BackendConfig) -> bool {
    old.name == new.name && old.host == new.host && old.port == new.port
}

/// The configuration to run with after a reload: `new`, except that every
/// value needing a restart keeps its value from `old`, so that what runs is
/// exactly what [`reload_plan`] called live.
pub fn apply_live(old: &Config, new: &Config) -> Config {
    let mut next = new.clone();

    next.listen.listen_addresses = old.listen.listen_addresses.clone();
    next.listen.port = old.listen.port;
    next.listen.unix_socket_directories = old.listen.unix_socket_directories.clone();
    next.listen.unix_socket_permissions = old.listen.unix_socket_permissions;
    next.pool.mode = old.pool.mode;
    next.daemon = old.daemon.clone();

    next.tls.enabled = old.tls.enabled;
    // Keeping TLS on while the new file drops the certificate would leave
    // nothing to handshake with; the old files stay until the restart.
    if next.tls.enabled {
        if next.tls.cert_file.is_none() {
            next.tls.cert_file = old.tls.cert_file.clone();
        }
        if next.tls.key_file.is_none() {
            next.tls.key_file = old.tls.key_file.clone();
        }
    }

    next.backends = old
        .backends
        .iter()
        .enumerate()
        .map(|(index, o)| match new.backends.get(index) {
            Some(n) if same_node(o, n) => BackendConfig {
                weight: n.weight,
                data_directory: n.data_directory.clone(),
                application_name: n.application_name.clone(),
                promotion_priority: n.promotion_priority,
                health_check_period: n.health_check_period,
                health_check_timeout: n.health_check_timeout,
                health_check_user: n.health_check_user.clone(),
                health_check_password: n.health_check_password.clone(),
                health_check_database: n.health_check_database.clone(),
                health_check_max_retries: n.health_check_max_retries,
                health_check_retry_delay: n.health_check_retry_delay,
                ..o.clone()
            },
            _ => o.clone(),
        })
        .collect();
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolMode;

    const BASE: &str = "\
[[backend]]
name = \"a\"
host = \"10.0.0.1\"
port = 5432

[[backend]]
name = \"b\"
host = \"10.0.0.2\"
port = 5432
";

    fn config(extra: &str) -> Config {
        Config::from_str_with_name(&format!("{extra}\n{BASE}"), "/etc/pghalo/pghalo.toml").unwrap()
    }

    fn with_backends(text: &str) -> Config {
        Config::from_str_with_name(text, "/etc/pghalo/pghalo.toml").unwrap()
    }

    #[test]
    fn identical_configs_plan_nothing() {
        let plan = reload_plan(&config(""), &config(""));
        assert!(plan.is_empty() && !plan.needs_restart());
    }

    #[test]
    fn live_changes() {
        let old = config("");
        let new = config(
            "[listen]\nmax_client_connections = 50\nauthentication_timeout = \"5s\"\nclient_idle_limit = \"5min\"\n\
             [pool]\nmax_pool_size = 40\nmin_idle = 2\nmax_lifetime = \"2h\"\nidle_timeout = \"1min\"\n\
             checkout_timeout = \"1s\"\nconnect_timeout = \"3s\"\nreset_query_list = \"ABORT; DISCARD ALL\"\n\
             [auth]\npool_hba = \"other_hba.conf\"\npool_passwd = \"\"\npool_key_file = \"key\"\n\
             [tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nca_file = \"ca.pem\"\nbackend = \"require\"\nbackend_ca_file = \"bca.pem\"\n\
             [log]\nlevel = \"debug\"\n",
        );
        let plan = reload_plan(&old, &new);
        assert_eq!(plan.restart_required, Vec::<String>::new());
        assert_eq!(
            plan.live,
            [
                "listen.max_client_connections: 1000 -> 50",
                "listen.authentication_timeout: 1min -> 5s",
                "listen.client_idle_limit: 0s -> 5min",
                "pool.max_pool_size: 20 -> 40",
                "pool.min_idle: 0 -> 2",
                "pool.max_lifetime: 1h -> 2h",
                "pool.idle_timeout: 10min -> 1min",
                "pool.checkout_timeout: 30s -> 1s",
                "pool.connect_timeout: 10s -> 3s",
                "pool.reset_query_list: [\"DISCARD ALL\"] -> [\"ABORT\", \"DISCARD ALL\"]",
                "auth.pool_hba: /etc/pghalo/pool_hba.conf -> /etc/pghalo/other_hba.conf",
                "auth.pool_passwd: /etc/pghalo/pool_passwd -> (none)",
                "auth.pool_key_file: (none) -> /etc/pghalo/key",
                "tls.cert_file: (none) -> /etc/pghalo/c.pem",
                "tls.key_file: (none) -> /etc/pghalo/k.pem",
                "tls.ca_file: (none) -> /etc/pghalo/ca.pem",
                "tls.backend: disable -> require",
                "tls.backend_ca_file: (none) -> /etc/pghalo/bca.pem",
                "log.level: \"info\" -> \"debug\"",
            ]
        );
        assert_eq!(apply_live(&old, &new), new);
    }

    #[test]
    fn streaming_replication_and_load_balance_apply_live() {
        let old = config("");
        let new = config(
            "[auth]\npool_key_file = \"key\"\n\
             [streaming_replication]\nsr_check_period = \"2s\"\nsr_check_timeout = \"3s\"\n\
             sr_check_user = \"monitor\"\nsr_check_password = \"TEXTtopsecret\"\n\
             sr_check_database = \"pghalo\"\ndelay_threshold = \"16MB\"\n\
             delay_threshold_by_time = 1500\nprefer_lower_delay_standby = true\n\
             [load_balance]\nload_balance_mode = false\nstatement_level_load_balance = true\n\
             disable_load_balance_on_write = \"always\"\nwrite_function_list = \"nextval,setval\"\n\
             primary_routing_query_pattern_list = \"SELECT 1\"\n\
             user_redirect_preference_list = \"postgres:primary\"\n\
             database_redirect_preference_list = \"db:standby(0.5)\"\n\
             app_name_redirect_preference_list = \"psql:1\"\n\
             allow_sql_comments = true\nread_your_writes = true\n",
        );
        let plan = reload_plan(&old, &new);
        assert_eq!(plan.restart_required, Vec::<String>::new());
        assert_eq!(
            plan.live,
            [
                "auth.pool_key_file: (none) -> /etc/pghalo/key",
                "streaming_replication.sr_check_period: 1s -> 2s",
                "streaming_replication.sr_check_timeout: 10s -> 3s",
                "streaming_replication.sr_check_user: \"\" -> \"monitor\"",
                "streaming_replication.sr_check_password: changed",
                "streaming_replication.sr_check_database: \"postgres\" -> \"pghalo\"",
                "streaming_replication.delay_threshold: 0B -> 16MB",
                "streaming_replication.delay_threshold_by_time: 0s -> 1500ms",
                "streaming_replication.prefer_lower_delay_standby: false -> true",
                "load_balance.load_balance_mode: true -> false",
                "load_balance.statement_level_load_balance: false -> true",
                "load_balance.disable_load_balance_on_write: transaction -> always",
                "load_balance.write_function_list: [] -> [\"nextval\", \"setval\"]",
                "load_balance.primary_routing_query_pattern_list: [] -> [\"SELECT 1\"]",
                "load_balance.user_redirect_preference_list: [] -> [\"postgres:primary\"]",
                "load_balance.database_redirect_preference_list: [] -> [\"db:standby(0.5)\"]",
                "load_balance.app_name_redirect_preference_list: [] -> [\"psql:1\"]",
                "load_balance.allow_sql_comments: false -> true",
                "load_balance.read_your_writes: false -> true",
            ]
        );
        assert!(!format!("{plan:?}").contains("topsecret"));
        assert_eq!(apply_live(&old, &new), new);
    }

    #[test]
    fn restart_changes() {
        let old = config("");
        let new = config(
            "[listen]\nlisten_addresses = [\"*\"]\nport = 6432\nunix_socket_directories = [\"/tmp\"]\n\
             unix_socket_permissions = \"0700\"\n[pool]\nmode = \"transaction\"\n\
             [tls]\nenabled = true\ncert_file = \"c\"\nkey_file = \"k\"\n",
        );
        let plan = reload_plan(&old, &new);
        assert_eq!(
            plan.restart_required,
            [
                "listen.listen_addresses: [\"127.0.0.1\"] -> [\"*\"]",
                "listen.port: 9999 -> 6432",
                "listen.unix_socket_directories: [] -> [\"/tmp\"]",
                "listen.unix_socket_permissions: 0777 -> 0700",
                "pool.mode: session -> transaction",
                "tls.enabled: false -> true",
            ]
        );
        assert!(plan.needs_restart());
        assert_eq!(
            plan.live,
            [
                "tls.cert_file: (none) -> /etc/pghalo/c",
                "tls.key_file: (none) -> /etc/pghalo/k"
            ]
        );
    }

    #[test]
    fn backend_changes() {
        let old = config("");
        let new = with_backends(
            "[[backend]]\nname = \"a\"\nhost = \"10.0.0.1\"\nport = 5432\nweight = 3\n\
             data_directory = \"/pg\"\napplication_name = \"a_wal\"\n\
             [[backend]]\nname = \"bee\"\nhost = \"10.0.0.9\"\nport = 5433\nflags = [\"DISALLOW_TO_FAILOVER\"]\n",
        );
        let plan = reload_plan(&old, &new);
        assert_eq!(
            plan.live,
            [
                "backend[0].weight: 1 -> 3",
                "backend[0].data_directory: (none) -> /pg",
                "backend[0].application_name: \"a\" -> \"a_wal\"",
            ]
        );
        assert_eq!(
            plan.restart_required,
            [
                "backend[1].name: b -> bee",
                "backend[1].host: 10.0.0.2 -> 10.0.0.9",
                "backend[1].port: 5432 -> 5433",
                "backend[1].flags: ALLOW_TO_FAILOVER -> DISALLOW_TO_FAILOVER",
                // The default follows the rename, and waits for it.
                "backend[1].application_name: \"b\" -> \"bee\"",
            ]
        );
        let next = apply_live(&old, &new);
        assert_eq!(next.backends[0], new.backends[0]);
        assert_eq!(next.backends[1], old.backends[1]);
    }

    #[test]
    fn backends_added_and_removed() {
        let old = config("");
        let added = with_backends(&format!(
            "{BASE}\n[[backend]]\nhost = \"10.0.0.3\"\nport = 5432\n"
        ));
        let plan = reload_plan(&old, &added);
        assert_eq!(plan.live, Vec::<String>::new());
        assert_eq!(
            plan.restart_required,
            ["backend[2]: added (node2 at 10.0.0.3:5432)"]
        );
        let plan = reload_plan(&added, &old);
        assert_eq!(
            plan.restart_required,
            ["backend[2]: removed (node2 at 10.0.0.3:5432)"]
        );
        // Swapping two nodes changes both identities.
        let swapped = with_backends(
            "[[backend]]\nname = \"b\"\nhost = \"10.0.0.2\"\nport = 5432\n\
             [[backend]]\nname = \"a\"\nhost = \"10.0.0.1\"\nport = 5432\n",
        );
        let plan = reload_plan(&old, &swapped);
        assert!(
            plan.restart_required
                .contains(&"backend[0].name: a -> b".to_owned())
        );
        assert!(
            plan.restart_required
                .contains(&"backend[1].host: 10.0.0.2 -> 10.0.0.1".to_owned())
        );
    }

    #[test]
    fn health_checks_and_promotion_priorities_apply_live() {
        let old = config("");
        let new = with_backends(
            "[health_check]\nhealth_check_period = \"5s\"\nhealth_check_user = \"hc\"\n\
             health_check_password = \"TEXTsecret\"\nhealth_check_max_retries = 4\n\
             [[backend]]\nname = \"a\"\nhost = \"10.0.0.1\"\nport = 5432\n\
             health_check_timeout = \"3s\"\npromotion_priority = 0\n\
             [[backend]]\nname = \"b\"\nhost = \"10.0.0.2\"\nport = 5432\n\
             health_check_password = \"TEXTnode\"\n",
        );
        let plan = reload_plan(&old, &new);
        assert!(!plan.needs_restart(), "{plan:?}");
        assert_eq!(
            plan.live,
            [
                "health_check.health_check_period: (unset) -> 5s",
                "health_check.health_check_user: (unset) -> \"hc\"",
                "health_check.health_check_max_retries: 2 -> 4",
                "health_check.health_check_password: changed",
                "backend[0].promotion_priority: 1 -> 0",
                "backend[0].health_check_timeout: (unset) -> 3s",
                "backend[1].health_check_password: changed",
            ]
        );
        assert!(!format!("{plan:?}").contains("secret"));
        let next = apply_live(&old, &new);
        assert_eq!(next.backends, new.backends);
        assert_eq!(next.health_check, new.health_check);
    }

    #[test]
    fn apply_live_keeps_restart_only_values() {
        let old = config("[tls]\nenabled = true\ncert_file = \"c\"\nkey_file = \"k\"\n");
        let new = with_backends(
            "[listen]\nport = 1234\n[pool]\nmode = \"transaction\"\nmax_pool_size = 5\n\
             [tls]\nenabled = false\n\
             [[backend]]\nname = \"a\"\nhost = \"10.0.0.1\"\nport = 5432\nweight = 0.5\n\
             [[backend]]\nname = \"z\"\nhost = \"10.0.0.7\"\nport = 5432\nweight = 2\n\
             [[backend]]\nhost = \"10.0.0.8\"\nport = 5432\n",
        );
        let next = apply_live(&old, &new);
        assert_eq!(next.listen.port, 9999);
        assert_eq!(next.pool.mode, PoolMode::Session);
        assert_eq!(next.pool.max_pool_size, 5);
        assert!(next.tls.enabled);
        assert_eq!(next.tls.cert_file, old.tls.cert_file);
        assert_eq!(next.backends.len(), 2);
        assert_eq!(next.backends[0].weight, 0.5);
        // backend[1] is renamed, so its new weight waits for the restart.
        assert_eq!(next.backends[1], old.backends[1]);
        let plan = reload_plan(&old, &new);
        assert!(
            plan.restart_required
                .contains(&"backend[1].weight: 1 -> 2".to_owned())
        );
        assert!(
            plan.restart_required
                .contains(&"tls.cert_file: /etc/pghalo/c -> (none)".to_owned())
        );
        let rest = reload_plan(&old, &next);
        assert!(!rest.needs_restart(), "{rest:?}");
        assert_eq!(rest.live, reload_plan(&old, &new).live);
    }
}
