//! Password parameters (`sr_check_password` now; pgpool's
//! health_check_password and recovery_password share the form): what the
//! operator wrote, and the password it stands for once `pool_passwd` and
//! the pool key have been read.
//!
//! pgpool's rules, checked against its 4.5 documentation: `""` means "look
//! the user up in pool_passwd, else use no password"; `AES` + base64 is
//! the password encrypted with the pool key (`pg_enc`); `TEXT` + password
//! and any other text are the password in clear. pgpool also takes an
//! `md5` hash, which works only against md5 authentication; pghalo refuses
//! it, because its control connections (tokio-postgres) need the password
//! itself, and so does SCRAM. A SCRAM verifier in pool_passwd cannot be
//! used either: a verifier checks a proof but cannot produce one (DESIGN.md,
//! "Facts that bite").

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::passwd::{PasswdError, PasswordEntry, PasswordFile, PoolKey, Secret};

/// A password parameter as written. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum ConfigPassword {
    /// `""`: the user's pool_passwd entry if it holds a password, else none.
    #[default]
    FromPoolPasswd,
    /// `TEXT` + password, or any text without a known prefix.
    Plain(Secret),
    /// `AES` + base64: decrypted with `auth.pool_key_file`.
    Aes(String),
}

/// The password a control connection logs in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedPassword {
    Password(Secret),
    /// No usable password; the connection is tried without one (pgpool's
    /// rule), which works only with `trust` and similar methods. The
    /// reason is worth telling the operator when the server then asks for
    /// a password.
    Missing(MissingPassword),
}

/// Why a password parameter left empty found nothing usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingPassword {
    /// `auth.pool_passwd = ""`.
    NoPoolPasswd,
    /// The user has no entry in pool_passwd.
    NotInPoolPasswd,
    /// The entry is an md5 hash or a SCRAM verifier: neither can answer a
    /// SCRAM challenge, and tokio-postgres takes only a password.
    OnlyAHash(&'static str),
}

impl fmt::Display for MissingPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingPassword::NoPoolPasswd => {
                f.write_str("the password is empty and no pool_passwd is configured")
            }
            MissingPassword::NotInPoolPasswd => {
                f.write_str("the password is empty and pool_passwd has no entry for the user")
            }
            MissingPassword::OnlyAHash(kind) => write!(
                f,
                "the password is empty and pool_passwd holds only a {kind} hash for the user, \
                 which cannot log in (store the password as TEXT or AES, or set it in the configuration)"
            ),
        }
    }
}

const MD5_REFUSED: &str = "an md5 hash cannot be used here: pghalo's control connections need the password itself \
     (write it as TEXT<password>, or AES<base64> made with `pghalo passwd --format aes`, \
     or leave it empty to use pool_passwd)";

impl ConfigPassword {
    pub fn is_empty(&self) -> bool {
        matches!(self, ConfigPassword::FromPoolPasswd)
    }

    pub fn is_aes(&self) -> bool {
        matches!(self, ConfigPassword::Aes(_))
    }

    /// The password for `user`: decrypted with the key in `key_file` when
    /// it is `AES`, looked up in `pool_passwd` when it is empty.
    /// `parameter` names the key in errors.
    pub fn resolve(
        &self,
        parameter: &str,
        user: &str,
        pool_passwd: Option<&PasswordFile>,
        key_file: Option<&Path>,
    ) -> Result<ResolvedPassword, PasswdError> {
        match self {
            ConfigPassword::Plain(secret) => Ok(ResolvedPassword::Password(secret.clone())),
            ConfigPassword::Aes(base64) => {
                // Validation refuses AES without a key file; this is the
                // same answer for a caller that skipped it.
                let path = key_file.ok_or(PasswdError::NeedsKey)?;
                let key = PoolKey::load(path)?;
                let secret =
                    key.decrypt_password(user, base64)
                        .map_err(|kind| PasswdError::Parameter {
                            parameter: parameter.to_owned(),
                            kind,
                        })?;
                Ok(ResolvedPassword::Password(secret))
            }
            ConfigPassword::FromPoolPasswd => {
                let Some(file) = pool_passwd else {
                    return Ok(ResolvedPassword::Missing(MissingPassword::NoPoolPasswd));
                };
                Ok(match file.lookup(user) {
                    Some(PasswordEntry::Plain(secret)) => {
                        ResolvedPassword::Password(secret.clone())
                    }
                    Some(entry) => {
                        ResolvedPassword::Missing(MissingPassword::OnlyAHash(entry.kind()))
                    }
                    None => ResolvedPassword::Missing(MissingPassword::NotInPoolPasswd),
                })
            }
        }
    }
}

impl FromStr for ConfigPassword {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            Ok(ConfigPassword::FromPoolPasswd)
        } else if let Some(base64) = text.strip_prefix("AES") {
            if base64.trim().is_empty() {
                return Err("the AES form has nothing after the prefix".to_owned());
            }
            Ok(ConfigPassword::Aes(base64.to_owned()))
        } else if text.starts_with("md5") {
            Err(MD5_REFUSED.to_owned())
        } else {
            let plain = text.strip_prefix("TEXT").unwrap_or(text);
            if plain.is_empty() {
                return Err("TEXT with nothing after it is an empty password; write \"\" to use pool_passwd".to_owned());
            }
            Ok(ConfigPassword::Plain(Secret::new(plain)))
        }
    }
}

impl fmt::Debug for ConfigPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigPassword::FromPoolPasswd => f.write_str("FromPoolPasswd"),
            ConfigPassword::Plain(_) => f.write_str("Plain(<redacted>)"),
            // Only the key protects it: as sensitive as the password.
            ConfigPassword::Aes(_) => f.write_str("Aes(<redacted>)"),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigPassword {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for ConfigPassword {
    /// The form it was read from, with `TEXT` made explicit so that a
    /// clear password starting with `AES` or `md5` reads back the same.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ConfigPassword::FromPoolPasswd => serializer.serialize_str(""),
            ConfigPassword::Plain(secret) => {
                serializer.collect_str(&format_args!("TEXT{}", secret.expose()))
            }
            ConfigPassword::Aes(base64) => serializer.collect_str(&format_args!("AES{base64}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(tag: &str, key: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("pghalo-pw-{tag}-{}", std::process::id()));
        std::fs::write(&path, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn forms() {
        assert_eq!(
            "".parse::<ConfigPassword>().unwrap(),
            ConfigPassword::FromPoolPasswd
        );
        assert_eq!(
            "TEXTsecret".parse::<ConfigPassword>().unwrap(),
            ConfigPassword::Plain(Secret::new("secret"))
        );
        assert_eq!(
            "secret".parse::<ConfigPassword>().unwrap(),
            ConfigPassword::Plain(Secret::new("secret"))
        );
        assert_eq!(
            "TEXTmd5abc".parse::<ConfigPassword>().unwrap(),
            ConfigPassword::Plain(Secret::new("md5abc"))
        );
        assert!("AESxyz==".parse::<ConfigPassword>().unwrap().is_aes());
        let err = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .parse::<ConfigPassword>()
            .unwrap_err();
        assert!(err.contains("md5 hash cannot be used"), "{err}");
        assert!("TEXT".parse::<ConfigPassword>().is_err());
        assert!("AES".parse::<ConfigPassword>().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let p = "TEXTsecret".parse::<ConfigPassword>().unwrap();
        assert!(!format!("{p:?}").contains("secret"));
        let p = "AESc2VjcmV0".parse::<ConfigPassword>().unwrap();
        assert!(!format!("{p:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn resolves_from_pool_passwd() {
        let file = PasswordFile::parse(
            "alice:TEXTwonderland\nbob:md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
            "pool_passwd",
            None,
        )
        .unwrap();
        let empty = ConfigPassword::FromPoolPasswd;
        assert_eq!(
            empty.resolve("p", "alice", Some(&file), None).unwrap(),
            ResolvedPassword::Password(Secret::new("wonderland"))
        );
        assert_eq!(
            empty.resolve("p", "bob", Some(&file), None).unwrap(),
            ResolvedPassword::Missing(MissingPassword::OnlyAHash("md5"))
        );
        assert_eq!(
            empty.resolve("p", "carol", Some(&file), None).unwrap(),
            ResolvedPassword::Missing(MissingPassword::NotInPoolPasswd)
        );
        assert_eq!(
            empty.resolve("p", "alice", None, None).unwrap(),
            ResolvedPassword::Missing(MissingPassword::NoPoolPasswd)
        );
        // A password in the configuration wins over pool_passwd.
        let plain: ConfigPassword = "TEXTother".parse().unwrap();
        assert_eq!(
            plain.resolve("p", "alice", Some(&file), None).unwrap(),
            ResolvedPassword::Password(Secret::new("other"))
        );
    }

    #[test]
    fn resolves_aes_with_the_key() {
        let path = key_file("aes", "the key");
        let key = PoolKey::new("the key").unwrap();
        let aes: ConfigPassword = format!("AES{}", key.encrypt("s3cret")).parse().unwrap();
        assert_eq!(
            aes.resolve("p", "pghalo", None, Some(&path)).unwrap(),
            ResolvedPassword::Password(Secret::new("s3cret"))
        );
        let other = key_file("aes-other", "another key");
        let err = aes
            .resolve("p", "pghalo", None, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be decrypted"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        assert!(matches!(
            aes.resolve("p", "pghalo", None, None),
            Err(PasswdError::NeedsKey)
        ));
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(other);
    }

    #[test]
    fn serialises_back_to_a_form_that_reads_the_same() {
        for text in ["", "TEXTAESlooks-like-aes", "AESc2VjcmV0", "TEXTplain"] {
            let p: ConfigPassword = text.parse().unwrap();
            let shown = toml::Value::try_from(&p).unwrap();
            let back: ConfigPassword = shown.as_str().unwrap().parse().unwrap();
            assert_eq!(back, p, "{text}");
        }
    }
}
