//! Everything that can go wrong in the lab, each variant one plain sentence an
//! operator can act on without reading a backtrace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{} is not empty; `pghalo lab init` only creates a lab in a new or empty directory", .0.display())]
    DirNotEmpty(PathBuf),

    #[error("{} exists and is not a directory", .0.display())]
    DirNotADirectory(PathBuf),

    #[error("cannot create {}: {reason}", .path.display())]
    DirCreate { path: PathBuf, reason: String },

    #[error(
        "the PostgreSQL server user '{user}' has no write access to {} (check the permissions of it and of its parent directories)",
        .path.display()
    )]
    DirNoServerAccess { user: String, path: PathBuf },

    #[error("the lab directory path {} contains characters the lab does not support in shell commands (use letters, digits, '/', '.', '_', '-', '+', '@', ',' or ':')", .0.display())]
    DirUnsupportedPath(PathBuf),

    #[error("{} is not a pghalo lab (no lab.json); nothing was changed", .0.display())]
    NotALab(PathBuf),

    #[error("cannot read the lab description {}: {reason}", .path.display())]
    BadLabFile { path: PathBuf, reason: String },

    #[error(
        "port {0} on 127.0.0.1 is already in use; choose another --base-port or leave it out to let the lab pick free ports"
    )]
    PortInUse(u16),

    #[error("--base-port {base} leaves no room for {count} ports below 65536")]
    PortRange { base: u16, count: usize },

    #[error("no free block of {0} ports was found between 20000 and 32000")]
    NoFreePorts(usize),

    #[error("--proxies must be between 0 and 16, not {0}")]
    ProxyCount(usize),

    #[error("--backends must be between 1 and 16, not {0}")]
    BackendCount(usize),

    #[error("PostgreSQL server binaries not found in {}: {missing} is missing (install the postgresql package or pass --pg-bin)", .dir.display())]
    PgBinMissing { dir: PathBuf, missing: String },

    #[error(
        "no PostgreSQL server binaries found (tried --pg-bin, PG_BIN, pg_config --bindir and /usr/lib/postgresql/*/bin); install the postgresql package or pass --pg-bin"
    )]
    PgBinNotFound,

    #[error("PostgreSQL {found} in {} is too old: the lab needs PostgreSQL 13 or newer", .dir.display())]
    PgTooOld { dir: PathBuf, found: String },

    #[error("cannot tell the PostgreSQL version of {}: `postgres --version` printed {output:?}", .dir.display())]
    PgVersionUnknown { dir: PathBuf, output: String },

    #[error("cannot set up the unprivileged user that runs PostgreSQL: {0}")]
    ServerUser(String),

    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },

    #[error("{what} did not finish within {secs} s")]
    Timeout { what: String, secs: u64 },

    #[error("SQL on {node} failed: {detail}")]
    Sql { node: String, detail: String },

    #[error("{node} did not start: {detail}")]
    StartFailed { node: String, detail: String },

    #[error("replication did not come up within {secs} s: {detail}")]
    ReplicationNotStreaming { secs: u64, detail: String },

    #[error("{what} {}: {reason}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl LabError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        LabError::Io {
            what,
            path: path.into(),
            reason: err.to_string(),
        }
    }
}
