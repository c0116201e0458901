//! Finding the PostgreSQL server binaries and checking their version.
//!
//! Order of precedence: `--pg-bin`, then `PG_BIN`, then `pg_config --bindir`,
//! then the newest `/usr/lib/postgresql/*/bin`. A directory the operator named
//! explicitly is never silently replaced by another one.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::LabError;

/// The oldest major version the lab supports: `primary_conninfo` reloads and
/// `wal_keep_size` came in 13.
pub const MIN_MAJOR: u32 = 13;

const REQUIRED: [&str; 5] = [
    "postgres",
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pg_controldata",
];

/// A checked set of PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
    pub major: u32,
    pub version: String,
}

impl PgBin {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Resolves the binaries directory in the documented order and checks it.
    pub fn locate(explicit: Option<&Path>) -> Result<PgBin, LabError> {
        if let Some(dir) = explicit {
            return PgBin::check(dir);
        }
        if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
            return PgBin::check(Path::new(&dir));
        }
        for dir in pg_config_bindir().into_iter().chain(newest_debian_bindir()) {
            if missing_tool(&dir).is_none() {
                return PgBin::check(&dir);
            }
        }
        Err(LabError::PgBinNotFound)
    }

    /// Checks that `dir` holds every tool the lab runs and a new enough server.
    pub fn check(dir: &Path) -> Result<PgBin, LabError> {
        if let Some(missing) = missing_tool(dir) {
            return Err(LabError::PgBinMissing {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        let output = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| LabError::Command {
                what: format!("{}/postgres --version", dir.display()),
                detail: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let version = parse_version(&text).ok_or_else(|| LabError::PgVersionUnknown {
            dir: dir.to_path_buf(),
            output: text.clone(),
        })?;
        let major = major_of(&version).ok_or_else(|| LabError::PgVersionUnknown {
            dir: dir.to_path_buf(),
            output: text.clone(),
        })?;
        if major < MIN_MAJOR {
            return Err(LabError::PgTooOld {
                dir: dir.to_path_buf(),
                found: version,
            });
        }
        Ok(PgBin {
            dir: dir.to_path_buf(),
            major,
            version,
        })
    }
}

fn missing_tool(dir: &Path) -> Option<String> {
    REQUIRED
        .iter()
        .find(|tool| !dir.join(tool).is_file())
        .map(|tool| tool.to_string())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| missing_tool(bin).is_none())
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> `15.18`.
fn parse_version(text: &str) -> Option<String> {
    let rest = text.split("(PostgreSQL)").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

/// `15.18` -> 15, `9.6.24` -> 9, `17beta1` -> 17.
fn major_of(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)").as_deref(),
            Some("15.18")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(parse_version("something else"), None);
        assert_eq!(major_of("15.18"), Some(15));
        assert_eq!(major_of("9.6.24"), Some(9));
        assert_eq!(major_of("17beta1"), Some(17));
        assert_eq!(major_of("beta"), None);
    }
}
