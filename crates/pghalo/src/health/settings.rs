//! What the replication monitor needs from the configuration, with the
//! password resolved (pool_passwd looked up, AES decrypted) so that a bad
//! password setting fails the start or the reload, not every check.

use std::time::Duration;

use crate::config::passwd::{PasswdError, PasswordFile, Secret};
use crate::config::{BackendHost, Config, MissingPassword, ResolvedPassword};

/// The monitor's settings. `Debug` hides the password.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorSettings {
    /// sr_check_period; zero = each node until it answers once.
    pub period: Duration,
    /// sr_check_timeout: connecting and answering, together.
    pub timeout: Duration,
    /// sr_check_user; empty = the monitor does nothing.
    pub user: String,
    pub password: Option<Secret>,
    /// Why there is no password, told with an authentication failure.
    pub missing_password: Option<MissingPassword>,
    /// sr_check_database.
    pub database: String,
    /// The nodes, by id.
    pub targets: Vec<Target>,
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
    /// read again for an `AES` sr_check_password.
    pub fn from_config(
        config: &Config,
        pool_passwd: &PasswordFile,
    ) -> Result<MonitorSettings, PasswdError> {
        let sr = &config.streaming_replication;
        let user = sr.sr_check_user.trim().to_owned();
        let (password, missing_password) = if user.is_empty() {
            (None, None)
        } else {
            let file = config.auth.pool_passwd.as_ref().map(|_| pool_passwd);
            match sr.sr_check_password.resolve(
                "streaming_replication.sr_check_password",
                &user,
                file,
                config.auth.pool_key_file.as_deref(),
            )? {
                ResolvedPassword::Password(secret) => (Some(secret), None),
                ResolvedPassword::Missing(why) => (None, Some(why)),
            }
        };
        Ok(MonitorSettings {
            period: sr.sr_check_period.as_duration(),
            timeout: sr.sr_check_timeout.as_duration(),
            user,
            password,
            missing_password,
            database: sr.sr_check_database.clone(),
            targets: Target::all(config),
        })
    }

    /// False when no sr_check_user is configured.
    pub fn enabled(&self) -> bool {
        !self.user.is_empty()
    }

    /// True if a connection made under `self` logs in as `other` would:
    /// same node, user, password and database.
    pub(super) fn same_login(&self, other: &MonitorSettings, node: usize) -> bool {
        self.user == other.user
            && self.password == other.password
            && self.database == other.database
            && self.targets.get(node) == other.targets.get(node)
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
        assert_eq!(s.period, Duration::from_secs(1));
        assert_eq!(s.targets[0].port, 5432);
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
        assert_eq!(s.password, Some(Secret::new("from-file")));
        assert!(!format!("{s:?}").contains("from-file"));

        let s = MonitorSettings::from_config(
            &config("[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"TEXTinline\""),
            &passwd,
        )
        .unwrap();
        assert_eq!(s.password, Some(Secret::new("inline")));

        let s = MonitorSettings::from_config(
            &config("[streaming_replication]\nsr_check_user = \"scram\""),
            &passwd,
        )
        .unwrap();
        assert_eq!(s.password, None);
        assert_eq!(
            s.missing_password,
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
        assert_eq!(s.missing_password, Some(MissingPassword::NoPoolPasswd));
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
