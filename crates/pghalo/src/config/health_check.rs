//! pgpool's health_check_* family: the `[health_check]` section, the same
//! keys on a `[[backend]]` (pgpool's health_check_period0 and so on), and
//! the settings that result for one node.
//!
//! pghalo checks a node with one query that answers pgpool's health check
//! and its streaming replication check together, so a key left unset in
//! both places takes its `[streaming_replication]` counterpart
//! (sr_check_period, sr_check_timeout, sr_check_user, sr_check_password,
//! sr_check_database): a configuration that sets only those keeps working.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BackendConfig, Config, ConfigDuration, ConfigPassword};

/// `[health_check]`. Each key applies to every node without its own.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// pgpool health_check_period: how often a node is checked. Unset =
    /// sr_check_period. 0 = only until it answers once, and again when a
    /// session finds it failing (pgpool's 0 turns the check off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_period: Option<ConfigDuration>,
    /// pgpool health_check_timeout: connecting, logging in and answering
    /// must take no longer. Unset = sr_check_timeout. Must be more than 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_timeout: Option<ConfigDuration>,
    /// pgpool health_check_user: needs pg_monitor (or superuser), as the
    /// same query reads the replication state. Unset = sr_check_user.
    /// Every node is checked or none: pghalo knows the primary only once
    /// it has heard from every node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_user: Option<String>,
    /// pgpool health_check_password, in the forms of sr_check_password.
    /// Unset = the pool_passwd entry of a health_check_user set at the same
    /// level, else sr_check_password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_password: Option<ConfigPassword>,
    /// pgpool health_check_database. Unset = sr_check_database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_database: Option<String>,
    /// pgpool health_check_max_retries: a failed check is tried again this
    /// many times, health_check_retry_delay apart, before the node is
    /// confirmed down (a primary then fails over, a standby is detached).
    /// The node takes no new sessions from its first failed check. A
    /// refused login is a configuration error and neither fails nor
    /// retries.
    pub health_check_max_retries: u32,
    /// pgpool health_check_retry_delay (pgpool's default is 1 s; pghalo's
    /// retries are what stands between a dead primary and its failover).
    pub health_check_retry_delay: ConfigDuration,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            health_check_period: None,
            health_check_timeout: None,
            health_check_user: None,
            health_check_password: None,
            health_check_database: None,
            health_check_max_retries: 2,
            health_check_retry_delay: ConfigDuration::from_millis(100),
        }
    }
}

/// The health check of one node, every key resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeHealthCheck<'a> {
    pub period: Duration,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_delay: Duration,
    /// Trimmed; empty = no checks (then for every node).
    pub user: &'a str,
    pub password: &'a ConfigPassword,
    /// The key the password comes from, for errors.
    pub password_from: PasswordKey,
    pub database: &'a str,
}

/// Where a node's health-check password is set (or would be).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordKey {
    Backend(usize),
    HealthCheck,
    StreamingReplication,
}

impl std::fmt::Display for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordKey::Backend(index) => write!(f, "backend[{index}].health_check_password"),
            PasswordKey::HealthCheck => f.write_str("health_check.health_check_password"),
            PasswordKey::StreamingReplication => {
                f.write_str("streaming_replication.sr_check_password")
            }
        }
    }
}

impl Config {
    /// The health check of node `index` (its `[[backend]]` keys, then
    /// `[health_check]`'s, then `[streaming_replication]`'s). None for a
    /// node the configuration does not have.
    pub fn health_check(&self, index: usize) -> Option<NodeHealthCheck<'_>> {
        let node = self.backends.get(index)?;
        let section = &self.health_check;
        let sr = &self.streaming_replication;
        let (user, password, password_from) = login(index, node, section, self);
        Some(NodeHealthCheck {
            period: node
                .health_check_period
                .or(section.health_check_period)
                .unwrap_or(sr.sr_check_period)
                .as_duration(),
            timeout: node
                .health_check_timeout
                .or(section.health_check_timeout)
                .unwrap_or(sr.sr_check_timeout)
                .as_duration(),
            max_retries: node
                .health_check_max_retries
                .unwrap_or(section.health_check_max_retries),
            retry_delay: node
                .health_check_retry_delay
                .unwrap_or(section.health_check_retry_delay)
                .as_duration(),
            user: user.trim(),
            password,
            password_from,
            database: node
                .health_check_database
                .as_deref()
                .or(section.health_check_database.as_deref())
                .unwrap_or(&sr.sr_check_database),
        })
    }
}

impl Config {
    /// True when pghalo checks its nodes: a health-check user is set
    /// (validation makes it every node or none).
    pub fn checks_nodes(&self) -> bool {
        (0..self.backends.len())
            .any(|index| self.health_check(index).is_some_and(|c| !c.user.is_empty()))
    }
}

/// The password goes with the user named at the same level: a node that
/// names its own user without a password uses that user's pool_passwd
/// entry, never the password of a user set elsewhere.
fn login<'a>(
    index: usize,
    node: &'a BackendConfig,
    section: &'a HealthCheckConfig,
    config: &'a Config,
) -> (&'a str, &'a ConfigPassword, PasswordKey) {
    static FROM_POOL_PASSWD: ConfigPassword = ConfigPassword::FromPoolPasswd;
    let sr = &config.streaming_replication;
    let user = node
        .health_check_user
        .as_deref()
        .or(section.health_check_user.as_deref())
        .unwrap_or(&sr.sr_check_user);
    let levels = [
        (
            node.health_check_user.is_some(),
            &node.health_check_password,
            PasswordKey::Backend(index),
        ),
        (
            section.health_check_user.is_some(),
            &section.health_check_password,
            PasswordKey::HealthCheck,
        ),
    ];
    for (names_user, password, key) in levels {
        match password {
            Some(password) => return (user, password, key),
            None if names_user => return (user, &FROM_POOL_PASSWD, key),
            None => {}
        }
    }
    (
        user,
        &sr.sr_check_password,
        PasswordKey::StreamingReplication,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_str_with_name(text, "/etc/pghalo/pghalo.toml").unwrap()
    }

    fn pw(text: &str) -> ConfigPassword {
        text.parse().unwrap()
    }

    const BACKENDS: &str = "[[backend]]\nhost = \"a\"\nport = 1\n\
                            [[backend]]\nhost = \"b\"\nport = 2\n";

    #[test]
    fn unset_keys_take_the_replication_checks() {
        let c = config(&format!(
            "[streaming_replication]\nsr_check_user = \"monitor\"\nsr_check_password = \"TEXTpw\"\n\
             sr_check_period = \"3s\"\nsr_check_timeout = \"4s\"\nsr_check_database = \"db\"\n{BACKENDS}"
        ));
        let h = c.health_check(1).unwrap();
        assert_eq!(h.period, Duration::from_secs(3));
        assert_eq!(h.timeout, Duration::from_secs(4));
        assert_eq!(h.max_retries, 2);
        assert_eq!(h.retry_delay, Duration::from_millis(100));
        assert_eq!(h.user, "monitor");
        assert_eq!(h.password, &pw("TEXTpw"));
        assert_eq!(h.password_from, PasswordKey::StreamingReplication);
        assert_eq!(h.database, "db");
        assert_eq!(c.health_check(2), None);
    }

    #[test]
    fn a_backend_overrides_the_section_which_overrides_the_replication_checks() {
        let c = config(
            "[streaming_replication]\nsr_check_user = \"monitor\"\nsr_check_password = \"TEXTpw\"\n\
             [health_check]\nhealth_check_period = 5\nhealth_check_timeout = \"20s\"\n\
             health_check_max_retries = 3\nhealth_check_retry_delay = 1\n\
             health_check_database = \"hc\"\n\
             [[backend]]\nhost = \"a\"\nport = 1\n\
             [[backend]]\nhost = \"b\"\nport = 2\nhealth_check_period = \"500ms\"\n\
             health_check_timeout = \"2s\"\nhealth_check_max_retries = 0\n\
             health_check_retry_delay = \"50ms\"\nhealth_check_database = \"postgres\"\n",
        );
        let first = c.health_check(0).unwrap();
        assert_eq!(
            (
                first.period,
                first.timeout,
                first.max_retries,
                first.retry_delay
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(20),
                3,
                Duration::from_secs(1)
            )
        );
        assert_eq!(first.database, "hc");
        let second = c.health_check(1).unwrap();
        assert_eq!(
            (
                second.period,
                second.timeout,
                second.max_retries,
                second.retry_delay
            ),
            (
                Duration::from_millis(500),
                Duration::from_secs(2),
                0,
                Duration::from_millis(50)
            )
        );
        assert_eq!(second.database, "postgres");
    }

    #[test]
    fn a_password_goes_with_the_user_of_its_level() {
        let c = config(
            "[streaming_replication]\nsr_check_user = \"monitor\"\nsr_check_password = \"TEXTsr\"\n\
             [health_check]\nhealth_check_user = \"checker\"\n\
             [[backend]]\nhost = \"a\"\nport = 1\n\
             [[backend]]\nhost = \"b\"\nport = 2\nhealth_check_user = \" own \"\nhealth_check_password = \"TEXTown\"\n\
             [[backend]]\nhost = \"c\"\nport = 3\nhealth_check_password = \"TEXTnode\"\n",
        );
        // The section's user without a password: its pool_passwd entry,
        // not sr_check_user's password.
        let first = c.health_check(0).unwrap();
        assert_eq!(first.user, "checker");
        assert_eq!(first.password, &ConfigPassword::FromPoolPasswd);
        assert_eq!(first.password_from, PasswordKey::HealthCheck);
        let second = c.health_check(1).unwrap();
        assert_eq!(second.user, "own");
        assert_eq!(second.password, &pw("TEXTown"));
        assert_eq!(second.password_from, PasswordKey::Backend(1));
        assert_eq!(
            second.password_from.to_string(),
            "backend[1].health_check_password"
        );
        // A node's password alone applies to the user in force.
        let third = c.health_check(2).unwrap();
        assert_eq!(third.user, "checker");
        assert_eq!(third.password, &pw("TEXTnode"));
    }

    #[test]
    fn a_serialised_configuration_reads_back_the_same() {
        let c = config(&format!(
            "[streaming_replication]\nsr_check_user = \"m\"\n\
             [health_check]\nhealth_check_period = \"2s\"\nhealth_check_password = \"\"\n{BACKENDS}\
             health_check_max_retries = 1\nhealth_check_user = \"x\"\n"
        ));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(
            Config::from_str_with_name(&text, "/etc/pghalo/pghalo.toml").unwrap(),
            c,
            "{text}"
        );
    }
}
