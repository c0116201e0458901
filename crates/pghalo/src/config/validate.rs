//! The checks that span several keys or that serde's types cannot express.
//! Each failure names the key to fix; the caller turns it into a line.

use std::os::unix::ffi::OsStrExt;

use tracing_subscriber::EnvFilter;

use super::Config;
use super::locate::KeyPath;

/// What is wrong, and the key the operator should look at.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) path: KeyPath,
    pub(super) message: String,
}

fn at(path: KeyPath, message: impl Into<String>) -> Result<(), Problem> {
    Err(Problem {
        path,
        message: message.into(),
    })
}

fn key(section: &str, name: &str) -> KeyPath {
    KeyPath::default().key(section).key(name)
}

fn backend(index: usize) -> KeyPath {
    KeyPath::default().key("backend").index(index)
}

/// sun_path holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

pub(super) fn check(config: &Config) -> Result<(), Problem> {
    check_listen(config)?;
    check_pool(config)?;
    check_auth(config)?;
    check_tls(config)?;
    check_log(config)?;
    check_backends(config)?;
    check_streaming_replication(config)?;
    check_health_check(config)?;
    check_load_balance(config)?;
    check_failover(config)?;
    check_daemon(config)
}

/// More threads than this is a typo, not a machine.
const MAX_WORKER_THREADS: u32 = 1024;

fn check_daemon(config: &Config) -> Result<(), Problem> {
    if config.daemon.worker_threads > MAX_WORKER_THREADS {
        return at(
            key("daemon", "worker_threads"),
            format!(
                "{} is more than {MAX_WORKER_THREADS}; 0 means one per CPU",
                config.daemon.worker_threads
            ),
        );
    }
    Ok(())
}

fn check_failover(config: &Config) -> Result<(), Problem> {
    let f = &config.failover;
    let at_f = |name| key("failover", name);
    if f.recovery_user.trim().is_empty() && !f.recovery_password.is_empty() {
        return at(
            at_f("recovery_password"),
            "is set but failover.recovery_user is empty",
        );
    }
    if f.recovery_password.is_aes() && config.auth.pool_key_file.is_none() {
        return at(
            at_f("recovery_password"),
            "is AES-encrypted but auth.pool_key_file is not set, so it cannot be decrypted",
        );
    }
    if f.promote_timeout.is_zero() || f.follow_primary_timeout.is_zero() {
        return at(
            at_f(if f.promote_timeout.is_zero() {
                "promote_timeout"
            } else {
                "follow_primary_timeout"
            }),
            "must be more than 0",
        );
    }
    Ok(())
}

fn check_listen(config: &Config) -> Result<(), Problem> {
    let listen = &config.listen;
    if listen.listen_addresses.is_empty() && listen.unix_socket_directories.is_empty() {
        return at(
            key("listen", "listen_addresses"),
            "nothing to listen on: listen_addresses and unix_socket_directories are both empty",
        );
    }
    for (index, dir) in listen.unix_socket_directories.iter().enumerate() {
        let socket = dir.join(format!(".s.PGSQL.{}", listen.port));
        let len = socket.as_os_str().as_bytes().len();
        if len > MAX_SOCKET_PATH {
            return at(
                key("listen", "unix_socket_directories").index(index),
                format!(
                    "the socket path {} is {len} bytes long, more than the {MAX_SOCKET_PATH} a Unix socket allows",
                    socket.display()
                ),
            );
        }
    }
    if listen.max_client_connections == 0 {
        return at(
            key("listen", "max_client_connections"),
            "must be at least 1",
        );
    }
    Ok(())
}

fn check_pool(config: &Config) -> Result<(), Problem> {
    let pool = &config.pool;
    if pool.max_pool_size == 0 {
        return at(key("pool", "max_pool_size"), "must be at least 1");
    }
    if pool.min_idle > pool.max_pool_size {
        return at(
            key("pool", "min_idle"),
            format!(
                "{} is more than pool.max_pool_size ({})",
                pool.min_idle, pool.max_pool_size
            ),
        );
    }
    if pool.checkout_timeout.is_zero() {
        return at(
            key("pool", "checkout_timeout"),
            "must be more than 0: a client's wait for a server connection is always bounded",
        );
    }
    Ok(())
}

fn check_auth(config: &Config) -> Result<(), Problem> {
    if config.auth.pool_hba.as_os_str().is_empty() {
        return at(
            key("auth", "pool_hba"),
            "must name a file: without pool_hba.conf no client could be authenticated",
        );
    }
    Ok(())
}

fn check_tls(config: &Config) -> Result<(), Problem> {
    let tls = &config.tls;
    if tls.enabled {
        for (name, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if file.is_none() {
                return at(
                    key("tls", "enabled"),
                    format!("TLS is enabled but tls.{name} is not set"),
                );
            }
        }
    }
    Ok(())
}

fn check_log(config: &Config) -> Result<(), Problem> {
    // Parsing the filter builds nothing global; it only proves the daemon
    // will not fail on it after the listeners are up.
    match EnvFilter::builder().parse(&config.log.level) {
        Ok(_) => Ok(()),
        Err(e) => at(
            key("log", "level"),
            format!("invalid filter {:?}: {e}", config.log.level),
        ),
    }
}

fn check_backends(config: &Config) -> Result<(), Problem> {
    if config.backends.is_empty() {
        return at(
            KeyPath::default().key("backend"),
            "at least one [[backend]] is required",
        );
    }
    for (index, b) in config.backends.iter().enumerate() {
        let earlier = &config.backends[..index];
        if let Some(first) = earlier.iter().position(|o| o.name == b.name) {
            return at(
                backend(index).key("name"),
                format!(
                    "duplicate backend name '{}' (backend[{first}] has it too)",
                    b.name
                ),
            );
        }
        if let Some(first) = earlier
            .iter()
            .position(|o| o.host == b.host && o.port == b.port)
        {
            return at(
                backend(index).key("host"),
                format!(
                    "{}:{} is already backend[{first}]; one server cannot be two nodes",
                    b.host, b.port
                ),
            );
        }
        if !(b.weight.is_finite() && b.weight >= 0.0) {
            return at(
                backend(index).key("weight"),
                format!("must be a finite number of 0 or more, not {}", b.weight),
            );
        }
        if b.flags.always_primary
            && let Some(first) = earlier.iter().position(|o| o.flags.always_primary)
        {
            return at(
                backend(index).key("flags"),
                format!(
                    "ALWAYS_PRIMARY is already set on backend[{first}]; only one node can always be the primary"
                ),
            );
        }
    }
    Ok(())
}

fn check_streaming_replication(config: &Config) -> Result<(), Problem> {
    let sr = &config.streaming_replication;
    let at_sr = |name| key("streaming_replication", name);
    if sr.sr_check_timeout.is_zero() {
        return at(
            at_sr("sr_check_timeout"),
            "must be more than 0: a node that never answers must not hold its check forever",
        );
    }
    if sr.sr_check_user.trim().is_empty() {
        if !sr.sr_check_password.is_empty() {
            return at(
                at_sr("sr_check_password"),
                "is set but streaming_replication.sr_check_user is empty",
            );
        }
        return Ok(());
    }
    if sr.sr_check_database.trim().is_empty() {
        return at(
            at_sr("sr_check_database"),
            "must name a database when sr_check_user is set",
        );
    }
    if sr.sr_check_password.is_aes() && config.auth.pool_key_file.is_none() {
        return at(
            at_sr("sr_check_password"),
            "is AES-encrypted but auth.pool_key_file is not set, so it cannot be decrypted",
        );
    }
    Ok(())
}

/// The keys as written, in `[health_check]` and on every backend (a bad
/// value is reported where it is, even on a level another overrides);
/// then each node's resolved login.
fn check_health_check(config: &Config) -> Result<(), Problem> {
    use super::{ConfigPassword, PasswordKey};
    let hc = &config.health_check;
    let section = |name| key("health_check", name);
    let keys = std::iter::once((
        &hc.health_check_timeout,
        &hc.health_check_database,
        &hc.health_check_password,
        None,
    ))
    .chain(config.backends.iter().enumerate().map(|(index, b)| {
        (
            &b.health_check_timeout,
            &b.health_check_database,
            &b.health_check_password,
            Some(index),
        )
    }));
    for (timeout, database, password, index) in keys {
        let path = |name| index.map_or_else(|| section(name), |i| backend(i).key(name));
        if timeout.is_some_and(|t| t.is_zero()) {
            return at(
                path("health_check_timeout"),
                "must be more than 0: a node that never answers must not hold its check forever",
            );
        }
        if database.as_ref().is_some_and(|d| d.trim().is_empty()) {
            return at(
                path("health_check_database"),
                "must name a database (leave it out to use sr_check_database)",
            );
        }
        if password.as_ref().is_some_and(ConfigPassword::is_aes)
            && config.auth.pool_key_file.is_none()
        {
            return at(
                path("health_check_password"),
                "is AES-encrypted but auth.pool_key_file is not set, so it cannot be decrypted",
            );
        }
    }
    let checked = config.checks_nodes();
    for index in 0..config.backends.len() {
        let Some(check) = config.health_check(index) else {
            continue;
        };
        if checked && check.user.is_empty() {
            // The node table decides the primary only once every node
            // has been heard from: one node never checked would leave
            // pghalo without a primary.
            return at(
                backend(index).key("health_check_user"),
                "is empty while the other nodes are checked: pghalo must check every node to know \
                 which is the primary (leave it out to use [health_check]'s or sr_check_user)",
            );
        }
        if checked && check.database.trim().is_empty() {
            return at(
                key("streaming_replication", "sr_check_database"),
                format!(
                    "is empty, and backend[{index}] is checked with it: name a database here or in health_check_database"
                ),
            );
        }
        if check.user.is_empty() && !check.password.is_empty() {
            let path = match check.password_from {
                PasswordKey::Backend(i) => backend(i).key("health_check_password"),
                PasswordKey::HealthCheck => key("health_check", "health_check_password"),
                PasswordKey::StreamingReplication => {
                    key("streaming_replication", "sr_check_password")
                }
            };
            return at(
                path,
                format!("is set but backend[{index}] has no health_check_user (nor sr_check_user)"),
            );
        }
    }
    Ok(())
}

fn check_load_balance(config: &Config) -> Result<(), Problem> {
    let lb = &config.load_balance;
    if !lb.read_only_function_list.is_empty() && !lb.write_function_list.is_empty() {
        // pgpool's rule: one list says which functions are special, the
        // others follow the opposite default; with both, a function in
        // neither has no meaning.
        return at(
            key("load_balance", "write_function_list"),
            "read_only_function_list and write_function_list cannot both be set",
        );
    }
    for (name, list) in [
        (
            "user_redirect_preference_list",
            &lb.user_redirect_preference_list,
        ),
        (
            "database_redirect_preference_list",
            &lb.database_redirect_preference_list,
        ),
        (
            "app_name_redirect_preference_list",
            &lb.app_name_redirect_preference_list,
        ),
    ] {
        for preference in list {
            if let crate::config::RedirectTarget::Node(id) = preference.target
                && id >= config.backends.len()
            {
                return at(
                    key("load_balance", name),
                    format!(
                        "{preference} names node {id}, but only {} backends are configured (ids 0 to {})",
                        config.backends.len(),
                        config.backends.len().saturating_sub(1)
                    ),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const FILE: &str = "/etc/pghalo.toml";
    const BACKEND: &str = "[[backend]]\nhost = \"10.0.0.1\"\nport = 5432\n";

    /// Asserts that `text` fails at `line` on `key`, with a message that
    /// contains `words`, and that the whole error reads `FILE:line: key: ...`.
    #[track_caller]
    fn rejects(text: &str, line: usize, key: &str, words: &str) {
        let err = Config::from_str_with_name(text, FILE).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.line(), Some(line), "{shown}");
        assert_eq!(err.key(), Some(key), "{shown}");
        assert!(
            shown.starts_with(&format!("{FILE}:{line}: {key}: ")),
            "{shown}"
        );
        assert!(shown.contains(words), "{shown}");
    }

    #[test]
    fn at_least_one_backend() {
        rejects("", 1, "backend", "at least one [[backend]]");
        rejects("[pool]\nmode = \"session\"\n", 1, "backend", "at least one");
        rejects("\nbackend = []\n", 2, "backend", "at least one");
    }

    #[test]
    fn backend_names_unique() {
        let text = format!("{BACKEND}name = \"a\"\n\n{BACKEND}name = \"a\"\n");
        rejects(&text, 9, "backend[1].name", "duplicate backend name 'a'");
        // A default name can collide with an explicit one; the default has
        // no line of its own, so its [[backend]] header is named.
        let text = format!("{BACKEND}name = \"node1\"\n[[backend]]\nhost = \"b\"\nport = 1\n");
        rejects(
            &text,
            5,
            "backend[1].name",
            "duplicate backend name 'node1'",
        );
    }

    #[test]
    fn same_server_twice() {
        let text = format!("{BACKEND}{BACKEND}");
        rejects(
            &text,
            5,
            "backend[1].host",
            "10.0.0.1:5432 is already backend[0]",
        );
    }

    #[test]
    fn weights() {
        rejects(
            &format!("{BACKEND}weight = -0.5\n"),
            4,
            "backend[0].weight",
            "0 or more",
        );
        rejects(
            &format!("{BACKEND}weight = inf\n"),
            4,
            "backend[0].weight",
            "finite",
        );
        rejects(
            &format!("{BACKEND}weight = nan\n"),
            4,
            "backend[0].weight",
            "finite",
        );
        let ok = Config::from_str_with_name(&format!("{BACKEND}weight = 0\n"), FILE).unwrap();
        assert_eq!(ok.backends[0].weight, 0.0);
    }

    #[test]
    fn ports() {
        rejects(
            "[[backend]]\nhost = \"a\"\nport = 0\n",
            3,
            "backend[0].port",
            "invalid port 0 (use 1 to 65535)",
        );
        rejects(
            "[[backend]]\nhost = \"a\"\nport = 65536\n",
            3,
            "backend[0].port",
            "invalid port 65536",
        );
        rejects(
            &format!("[listen]\nport = -1\n{BACKEND}"),
            2,
            "listen.port",
            "invalid port -1",
        );
        let ok =
            Config::from_str_with_name("[[backend]]\nhost = \"a\"\nport = 65535\n", FILE).unwrap();
        assert_eq!(ok.backends[0].port, 65535);
    }

    #[test]
    fn worker_threads_are_bounded() {
        rejects(
            &format!("[daemon]\nworker_threads = 5000\n{BACKEND}"),
            2,
            "daemon.worker_threads",
            "5000 is more than 1024",
        );
        rejects(
            &format!("[daemon]\nworker_threads = -1\n{BACKEND}"),
            2,
            "daemon.worker_threads",
            "",
        );
        let ok =
            Config::from_str_with_name(&format!("[daemon]\nworker_threads = 3\n{BACKEND}"), FILE)
                .unwrap();
        assert_eq!(ok.daemon.worker_threads, 3);
    }

    #[test]
    fn pool_sizes() {
        rejects(
            &format!("[pool]\nmax_pool_size = 0\n{BACKEND}"),
            2,
            "pool.max_pool_size",
            "at least 1",
        );
        rejects(
            &format!("[pool]\nmax_pool_size = 4\nmin_idle = 5\n{BACKEND}"),
            3,
            "pool.min_idle",
            "5 is more than pool.max_pool_size (4)",
        );
        // min_idle is checked against the default when max_pool_size is not written.
        rejects(
            &format!("[pool]\nmin_idle = 21\n{BACKEND}"),
            2,
            "pool.min_idle",
            "(20)",
        );
        rejects(
            &format!("[pool]\ncheckout_timeout = 0\n{BACKEND}"),
            2,
            "pool.checkout_timeout",
            "more than 0",
        );
    }

    #[test]
    fn max_client_connections() {
        rejects(
            &format!("[listen]\nmax_client_connections = 0\n{BACKEND}"),
            2,
            "listen.max_client_connections",
            "at least 1",
        );
    }

    #[test]
    fn listeners() {
        rejects(
            &format!("[listen]\nlisten_addresses = []\n{BACKEND}"),
            2,
            "listen.listen_addresses",
            "nothing to listen on",
        );
        let ok = Config::from_str_with_name(
            &format!(
                "[listen]\nlisten_addresses = []\nunix_socket_directories = [\"/tmp\"]\n{BACKEND}"
            ),
            FILE,
        )
        .unwrap();
        assert!(ok.listen.listen_addresses.is_empty());
        let long = format!("/{}", "d".repeat(100));
        rejects(
            &format!("[listen]\nunix_socket_directories = [\"/tmp\",\n  \"{long}\"]\n{BACKEND}"),
            3,
            "listen.unix_socket_directories[1]",
            "more than the 107",
        );
        rejects(
            &format!("[listen]\nlisten_addresses = [\"10.0.0.300\"]\n{BACKEND}"),
            2,
            "listen.listen_addresses",
            "invalid listen address \"10.0.0.300\"",
        );
    }

    #[test]
    fn tls_needs_cert_and_key() {
        rejects(
            &format!("[tls]\nenabled = true\nkey_file = \"k\"\n{BACKEND}"),
            2,
            "tls.enabled",
            "tls.cert_file is not set",
        );
        rejects(
            &format!("[tls]\nenabled = true\ncert_file = \"c\"\n{BACKEND}"),
            2,
            "tls.enabled",
            "tls.key_file is not set",
        );
        rejects(
            &format!("[tls]\nenabled = true\ncert_file = \"\"\nkey_file = \"k\"\n{BACKEND}"),
            2,
            "tls.enabled",
            "cert_file",
        );
        let ok = Config::from_str_with_name(
            &format!("[tls]\nenabled = true\ncert_file = \"c\"\nkey_file = \"k\"\n{BACKEND}"),
            FILE,
        )
        .unwrap();
        assert!(ok.tls.enabled);
    }

    #[test]
    fn flags() {
        rejects(
            &format!("{BACKEND}flags = [\"ALLOW_TO_FAILOVER\", \"NO_LOAD_BALANCE\"]\n"),
            4,
            "backend[0].flags",
            "unknown backend flag \"NO_LOAD_BALANCE\" (expected ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER or ALWAYS_PRIMARY)",
        );
        rejects(
            &format!("{BACKEND}flags = \"ALLOW_TO_FAILOVER|DISALLOW_TO_FAILOVER\"\n"),
            4,
            "backend[0].flags",
            "cannot both be set",
        );
        let text = format!(
            "{BACKEND}flags = [\"ALWAYS_PRIMARY\"]\n[[backend]]\nhost = \"b\"\nport = 1\nflags = [\"ALWAYS_PRIMARY\"]\n"
        );
        rejects(
            &text,
            8,
            "backend[1].flags",
            "ALWAYS_PRIMARY is already set on backend[0]",
        );
    }

    #[test]
    fn hosts() {
        rejects(
            "[[backend]]\nhost = \"\"\nport = 1\n",
            2,
            "backend[0].host",
            "invalid host",
        );
        rejects(
            "[[backend]]\nhost = \"db:5432\"\nport = 1\n",
            2,
            "backend[0].host",
            "invalid host \"db:5432\"",
        );
    }

    #[test]
    fn hba_path_required() {
        rejects(
            &format!("[auth]\npool_hba = \"\"\n{BACKEND}"),
            2,
            "auth.pool_hba",
            "must name a file",
        );
        let ok =
            Config::from_str_with_name(&format!("[auth]\npool_passwd = \"\"\n{BACKEND}"), FILE)
                .unwrap();
        assert_eq!(ok.auth.pool_passwd, None);
    }

    #[test]
    fn health_check() {
        rejects(
            &format!("[health_check]\nhealth_check_timeout = \"0s\"\n{BACKEND}"),
            2,
            "health_check.health_check_timeout",
            "must be more than 0",
        );
        rejects(
            &format!("{BACKEND}health_check_timeout = 0\n"),
            4,
            "backend[0].health_check_timeout",
            "must be more than 0",
        );
        rejects(
            &format!("{BACKEND}health_check_database = \" \"\n"),
            4,
            "backend[0].health_check_database",
            "must name a database",
        );
        rejects(
            &format!("[health_check]\nhealth_check_password = \"AESc2VjcmV0\"\n{BACKEND}"),
            2,
            "health_check.health_check_password",
            "auth.pool_key_file is not set",
        );
        rejects(
            &format!("{BACKEND}health_check_password = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n"),
            4,
            "backend[0].health_check_password",
            "md5 hash cannot be used",
        );
        // A password with nobody to log in: no user at that level or any
        // other.
        rejects(
            &format!("{BACKEND}health_check_password = \"TEXTpw\"\n"),
            4,
            "backend[0].health_check_password",
            "no health_check_user",
        );
        rejects(
            &format!("[health_check]\nhealth_check_max_retries = -1\n{BACKEND}"),
            2,
            "health_check.health_check_max_retries",
            "",
        );
        // Every node checked or none: one left out would leave pghalo
        // without a primary.
        rejects(
            &format!(
                "[streaming_replication]\nsr_check_user = \"m\"\n{BACKEND}\
                 [[backend]]\nhost = \"10.0.0.2\"\nport = 5432\nhealth_check_user = \"\"\n"
            ),
            9,
            "backend[1].health_check_user",
            "must check every node",
        );
        rejects(
            &format!(
                "[streaming_replication]\nsr_check_database = \"\"\n\
                 [health_check]\nhealth_check_user = \"hc\"\n{BACKEND}"
            ),
            2,
            "streaming_replication.sr_check_database",
            "backend[0] is checked with it",
        );
        let ok = Config::from_str_with_name(
            &format!(
                "[streaming_replication]\nsr_check_user = \"m\"\n{BACKEND}health_check_password = \"TEXTpw\"\n"
            ),
            FILE,
        )
        .unwrap();
        assert_eq!(ok.health_check(0).unwrap().user, "m");
    }

    #[test]
    fn streaming_replication() {
        rejects(
            &format!("[streaming_replication]\nsr_check_timeout = 0\n{BACKEND}"),
            2,
            "streaming_replication.sr_check_timeout",
            "more than 0",
        );
        rejects(
            &format!("[streaming_replication]\nsr_check_password = \"TEXTx\"\n{BACKEND}"),
            2,
            "streaming_replication.sr_check_password",
            "sr_check_user is empty",
        );
        rejects(
            &format!(
                "[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_database = \"\"\n{BACKEND}"
            ),
            3,
            "streaming_replication.sr_check_database",
            "must name a database",
        );
        rejects(
            &format!(
                "[streaming_replication]\nsr_check_user = \"pghalo\"\n\nsr_check_password = \"AESc2VjcmV0\"\n{BACKEND}"
            ),
            4,
            "streaming_replication.sr_check_password",
            "auth.pool_key_file is not set",
        );
        rejects(
            &format!(
                "[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n{BACKEND}"
            ),
            3,
            "streaming_replication.sr_check_password",
            "md5 hash cannot be used",
        );
        rejects(
            &format!("[streaming_replication]\ndelay_threshold = \"10 mb\"\n{BACKEND}"),
            2,
            "streaming_replication.delay_threshold",
            "invalid size",
        );
        rejects(
            &format!("[streaming_replication]\ndelay_threshold_by_time = -5\n{BACKEND}"),
            2,
            "streaming_replication.delay_threshold_by_time",
            "must not be negative",
        );
        let ok = Config::from_str_with_name(
            &format!(
                "[auth]\npool_key_file = \"key\"\n[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"AESc2VjcmV0\"\n{BACKEND}"
            ),
            FILE,
        )
        .unwrap();
        assert!(ok.streaming_replication.sr_check_password.is_aes());
    }

    #[test]
    fn load_balance() {
        rejects(
            &format!(
                "[load_balance]\nread_only_function_list = \"get_.*\"\nwrite_function_list = \"nextval\"\n{BACKEND}"
            ),
            3,
            "load_balance.write_function_list",
            "cannot both be set",
        );
        rejects(
            &format!("[load_balance]\nwrite_function_list = \"nextval,set(val\"\n{BACKEND}"),
            2,
            "load_balance.write_function_list",
            "invalid regular expression \"set(val\"",
        );
        rejects(
            &format!(
                "[load_balance]\ndatabase_redirect_preference_list = \"postgres:primary,mydb:1(0.3)\"\n{BACKEND}"
            ),
            2,
            "load_balance.database_redirect_preference_list",
            "mydb:1(0.3) names node 1, but only 1 backends are configured (ids 0 to 0)",
        );
        rejects(
            &format!(
                "[load_balance]\napp_name_redirect_preference_list = [\"psql:replica\"]\n{BACKEND}"
            ),
            2,
            "load_balance.app_name_redirect_preference_list",
            "unknown target \"replica\"",
        );
        rejects(
            &format!("[load_balance]\ndisable_load_balance_on_write = \"sometimes\"\n{BACKEND}"),
            2,
            "load_balance.disable_load_balance_on_write",
            "expected one of: off, transaction, trans_transaction, always, dml_adaptive",
        );
        rejects(
            &format!(
                "[load_balance]\nprimary_routing_query_pattern_list = \"SELECT (;x\"\n{BACKEND}"
            ),
            2,
            "load_balance.primary_routing_query_pattern_list",
            "invalid regular expression",
        );
    }

    #[test]
    fn log_filter() {
        rejects(
            &format!("[log]\nlevel = \"pghalo=loud\"\n{BACKEND}"),
            2,
            "log.level",
            "invalid filter \"pghalo=loud\"",
        );
        let ok = Config::from_str_with_name(
            &format!("[log]\nlevel = \"pghalo::pool=debug,info\"\n{BACKEND}"),
            FILE,
        )
        .unwrap();
        assert_eq!(ok.log.level, "pghalo::pool=debug,info");
    }
}
