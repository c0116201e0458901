//! The lab's generated passwords. They live only in files of mode 0600 and
//! are never printed: `Debug` is redacted so a stray `{:?}` cannot leak them.

use std::fmt;

use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};

use super::error::LabError;
use super::layout::{HOST, LabLayout, write_atomically};

/// The superuser, as in the seed setup and in pgpool_setup.
pub const SUPERUSER: &str = "postgres";
/// Streaming replication and pg_basebackup.
pub const REPLICATION_USER: &str = "repl";
/// Health checks and the replication monitor (member of pg_monitor).
pub const HEALTH_USER: &str = "pghalo";

#[derive(Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub postgres: String,
    pub repl: String,
    pub pghalo: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    pub fn generate() -> Secrets {
        Secrets {
            postgres: password(),
            repl: password(),
            pghalo: password(),
        }
    }

    pub fn users(&self) -> [(&'static str, &str); 3] {
        [
            (SUPERUSER, &self.postgres),
            (REPLICATION_USER, &self.repl),
            (HEALTH_USER, &self.pghalo),
        ]
    }

    pub fn read(layout: &LabLayout) -> Result<Secrets, LabError> {
        let path = layout.secrets();
        let text =
            std::fs::read_to_string(&path).map_err(|e| LabError::io("cannot read", &path, e))?;
        serde_json::from_str(&text).map_err(|e| LabError::BadLabFile {
            path,
            reason: e.to_string(),
        })
    }

    pub fn write(&self, layout: &LabLayout) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::BadLabFile {
            path: layout.secrets(),
            reason: e.to_string(),
        })?;
        write_atomically(&layout.secrets(), text.as_bytes(), 0o600)
    }

    /// Writes DIR/pgpass so that `PGPASSFILE=DIR/pgpass psql -h 127.0.0.1 -p
    /// PORT -U USER` works against every listed port, replication included.
    pub fn write_pgpass(&self, layout: &LabLayout, ports: &[u16]) -> Result<(), LabError> {
        let mut text = String::new();
        for port in ports {
            for host in [HOST, "localhost"] {
                for (user, password) in self.users() {
                    text.push_str(&format!(
                        "{host}:{port}:*:{user}:{}\n",
                        pgpass_escape(password)
                    ));
                }
            }
        }
        write_atomically(&layout.pgpass(), text.as_bytes(), 0o600)
    }
}

/// 24 alphanumeric characters: 142 bits, and nothing that needs quoting in
/// pgpass, conninfo strings or SQL.
fn password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

fn pgpass_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let secrets = Secrets::generate();
        let shown = format!("{secrets:?}");
        assert!(!shown.contains(&secrets.postgres));
        assert_eq!(secrets.postgres.len(), 24);
        assert_ne!(secrets.postgres, secrets.repl);
    }

    #[test]
    fn pgpass_fields_are_escaped() {
        assert_eq!(pgpass_escape(r"a:b\c"), r"a\:b\\c");
    }
}
