//! What the replication monitor needs from the configuration: each
//! node's health check (its schedule and login), with the password
//! resolved (pool_passwd looked up, AES decrypted) so that a bad
//! password setting fails the start or the reload, not every check.

use std::time::Duration;

use crate::config::passwd::{PasswdError, PasswordFile, Secret};
use crate::config::{BackendHost, Config, MissingPassword, PasswordKey, ResolvedPassword};

/// The monitor's settings: how each node is checked. `Debug` hides the
/// passwords.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorSettings {
    /// By node id.
    pub nodes: Vec<NodeCheck>,
}

/// One node's check (pgpool's health_check_* for that node).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeCheck {
    pub target: Target,
    pub schedule: CheckSchedule,
    pub login: Login,
}

/// When a node is checked, and when its failure counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckSchedule {
    /// health_check_period; zero = until the node answers once.
    pub period: Duration,
    /// health_check_timeout: connecting, logging in and answering,
    /// together.
    pub timeout: Duration,
    /// health_check_max_retries.
    pub max_retries: u32,
    /// health_check_retry_delay.
    pub retry_delay: Duration,
}

impl CheckSchedule {
    /// Failed checks in a row that confirm the node down: the first and
    /// its retries.
    pub fn confirmations(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

/// Who a check logs in as.
#[derive(Clone, Debug, PartialEq)]
pub struct Login {
    /// Empty = no checks (validation: then for every node).
    pub user: String,
    pub password: Option<Secret>,
    /// Why there is no password, told with an authentication failure.
    pub missing_password: Option<MissingPassword>,
    /// The key the password comes from, named with that reason.
    pub password_from: PasswordKey,
    pub database: String,
}

/// Where one node listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub host: BackendHost,
    pub port: u16,
}

impl Target {
    /// Every `[[backend]]`, by node id.
    pub fn all(config: &Config) -> Vec<Target> {
        config
            .backends
            .iter()
            .map(|b| Target {
                name: b.name.clone(),
                host: b.host.clone(),
                port: b.port,
            })
            .collect()
    }
}

impl MonitorSettings {
    /// The settings of `config`. `pool_passwd` is the file the daemon has
    /// loaded (ignored when `auth.pool_passwd` is off); the pool key is
    /// read again for an `AES` password.
    pub fn from_config(
        config: &Config,
        pool_passwd: &PasswordFile,
    ) -> Result<MonitorSettings, PasswdError> {
        let nodes = Target::all(config)
            .into_iter()
            .enumerate()
            .filter_map(|(index, target)| Some((target, config.health_check(index)?)))
            .map(|(target, check)| {
                Ok(NodeCheck {
                    target,
                    schedule: CheckSchedule {
                        period: check.period,
                        timeout: check.timeout,
                        max_retries: check.max_retries,
                        retry_delay: check.retry_delay,
                    },
                    login: Login::resolve(config, &check, pool_passwd)?,
                })
            })
            .collect::<Result<_, PasswdError>>()?;
        Ok(MonitorSettings { nodes })
    }

    /// False when no node has a user to check it with.
    pub fn enabled(&self) -> bool {
        self.nodes.iter().any(NodeCheck::enabled)
    }

    pub fn node(&self, index: usize) -> Option<&NodeCheck> {
        self.nodes.get(index)
    }
}

impl NodeCheck {
    pub fn enabled(&self) -> bool {
        !self.login.user.is_empty()
    }
}

impl Login {
    fn resolve(
        config: &Config,
        check: &crate::config::NodeHealthCheck<'_>,
        pool_passwd: &PasswordFile,
    ) -> Result<Login, PasswdError> {
        let user = check.user.to_owned();
        let (password, missing_password) = if user.is_empty() {
            (None, None)
        } else {
            let file = config.auth.pool_passwd.as_ref().map(|_| pool_passwd);
            match check.password.resolve(
                &check.password_from.to_string(),
                &user,
                file,
                config.auth.pool_key_file.as_deref(),
            )? {
                ResolvedPassword::Password(secret) => (Some(secret), None),
                ResolvedPassword::Missing(why) => (None, Some(why)),
            }
        };
        Ok(Login {
            user,
            password,
            missing_password,
            password_from: check.password_from,
            database: check.database.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_str_with_name(
            &format!("{extra}\n[[backend]]\nhost = \"127.0.0.1\"\nport = 5432\n"),
            "/etc/pghalo/pghalo.toml",
        )
        .unwrap()
    }

    #[test]
    fn disabled_without_a_user() {
        let s = MonitorSettings::from_config(&config(""), &PasswordFile::default()).unwrap();
        assert!(!s.enabled());
        assert_eq!(s.nodes[0].schedule.period, Duration::from_secs(1));
        assert_eq!(s.nodes[0].schedule.confirmations(), 3);
        assert_eq!(s.nodes[0].target.port, 5432);
    }

    #[test]
    fn password_from_the_configuration_or_pool_passwd() {
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let passwd = PasswordFile::parse(
            &format!("pghalo:TEXTfrom-file\nscram:{verifier}\n"),
            "pool_passwd",
            None,
        )
        .unwrap();
        let s = MonitorSettings::from_config(
            &config("[streaming_replication]\nsr_check_user = \"pghalo\""),
            &passwd,
        )
        .unwrap();
        assert_eq!(s.nodes[0].login.password, Some(Secret::new("from-file")));
        assert!(!format!("{s:?}").contains("from-file"));

        let s = MonitorSettings::from_config(
            &config("[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"TEXTinline\""),
            &passwd,
        )
        .unwrap();
        assert_eq!(s.nodes[0].login.password, Some(Secret::new("inline")));

        let s = MonitorSettings::from_config(
            &config("[streaming_replication]\nsr_check_user = \"scram\""),
            &passwd,
        )
        .unwrap();
        assert_eq!(s.nodes[0].login.password, None);
        assert_eq!(
            s.nodes[0].login.missing_password,
            Some(MissingPassword::OnlyAHash("SCRAM-SHA-256"))
        );

        // pool_passwd switched off: the file is not consulted.
        let s = MonitorSettings::from_config(
            &config(
                "[auth]\npool_passwd = \"\"\n[streaming_replication]\nsr_check_user = \"pghalo\"",
            ),
            &passwd,
        )
        .unwrap();
        assert_eq!(
            s.nodes[0].login.missing_password,
            Some(MissingPassword::NoPoolPasswd)
        );
    }

    #[test]
    fn each_node_logs_in_as_its_own_health_check_says() {
        let passwd = PasswordFile::parse("checker:TEXTfrom-file\n", "pool_passwd", None).unwrap();
        let c = Config::from_str_with_name(
            "[streaming_replication]\nsr_check_user = \"monitor\"\nsr_check_password = \"TEXTsr\"\n\
             [health_check]\nhealth_check_timeout = \"3s\"\n\
             [[backend]]\nhost = \"a\"\nport = 1\n\
             [[backend]]\nhost = \"b\"\nport = 2\nhealth_check_user = \"checker\"\n\
             health_check_database = \"hc\"\nhealth_check_max_retries = 0\n\
             [[backend]]\nhost = \"c\"\nport = 3\nhealth_check_user = \"third\"\n",
            "/etc/pghalo/pghalo.toml",
        )
        .unwrap();
        let s = MonitorSettings::from_config(&c, &passwd).unwrap();
        let [first, second, third] = &s.nodes[..] else {
            panic!("{s:?}")
        };
        assert_eq!(first.login.user, "monitor");
        assert_eq!(first.login.password, Some(Secret::new("sr")));
        assert_eq!(first.login.database, "postgres");
        assert_eq!(first.schedule.timeout, Duration::from_secs(3));
        assert_eq!(second.login.user, "checker");
        assert_eq!(second.login.password, Some(Secret::new("from-file")));
        assert_eq!(second.login.database, "hc");
        assert_eq!(second.schedule.confirmations(), 1);
        assert_eq!(second.target.port, 2);
        // Its own user without a password: that user's pool_passwd entry
        // (none here), not sr_check_password.
        assert_eq!(third.login.user, "third");
        assert_eq!(third.login.password, None);
        assert!(third.enabled() && s.enabled());
    }

    #[test]
    fn a_wrong_pool_key_fails_the_settings() {
        let dir = std::env::temp_dir().join(format!("pghalo-monitor-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_path = dir.join("key");
        std::fs::write(&key_path, "right key\n").unwrap();
        let encrypted = crate::config::passwd::PoolKey::new("wrong key")
            .unwrap()
            .encrypt("pw");
        let c = Config::from_str_with_name(
            &format!(
                "[auth]\npool_key_file = \"key\"\n[streaming_replication]\nsr_check_user = \"pghalo\"\n\
                 sr_check_password = \"AES{encrypted}\"\n[[backend]]\nhost = \"a\"\nport = 1\n"
            ),
            &dir.join("pghalo.toml").display().to_string(),
        )
        .unwrap();
        let err = MonitorSettings::from_config(&c, &PasswordFile::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("streaming_replication.sr_check_password: the AES entry of user \"pghalo\" cannot be decrypted"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
