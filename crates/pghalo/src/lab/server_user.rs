//! The operating-system user that runs the lab's PostgreSQL servers.
//!
//! PostgreSQL refuses to run as root. When the lab is driven by root (as CI
//! is), every server-side tool runs as an unprivileged user: `postgres` if the
//! machine has one, else `pghalo-lab`, created on first use. When driven by a
//! normal user, the servers simply run as that user.

use std::path::Path;
use std::process::Stdio;

use nix::unistd::{Gid, Uid, User};
use tokio::process::Command;

use super::error::LabError;

const CREATED_USER: &str = "pghalo-lab";

/// Environment variables that would silently redirect PostgreSQL's client
/// tools away from the connection parameters the lab passes explicitly.
const PG_ENV: [&str; 12] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGDATA",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGAPPNAME",
];

#[derive(Debug, Clone)]
pub struct ServerUser {
    pub name: String,
    uid: Uid,
    gid: Gid,
    /// True when the lab runs as root and must switch to `uid`/`gid` for
    /// every server-side command and hand it the files it needs.
    switch: bool,
}

impl ServerUser {
    /// The user the servers run as for this invocation.
    pub fn resolve() -> Result<ServerUser, LabError> {
        if !Uid::effective().is_root() {
            let uid = Uid::effective();
            let name = User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| uid.to_string());
            return Ok(ServerUser {
                name,
                uid,
                gid: Gid::effective(),
                switch: false,
            });
        }
        let user = match lookup("postgres")? {
            Some(user) => user,
            None => match lookup(CREATED_USER)? {
                Some(user) => user,
                None => create_system_user()?,
            },
        };
        Ok(ServerUser {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            switch: true,
        })
    }

    /// A command that runs as the server user, from a directory it can read,
    /// with no inherited libpq environment.
    pub fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd).stdin(Stdio::null()).kill_on_drop(true);
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C");
        if self.switch {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
        cmd
    }

    /// Hands `path` to the server user (a no-op unless running as root).
    pub fn give(&self, path: &Path) -> Result<(), LabError> {
        if !self.switch {
            return Ok(());
        }
        nix::unistd::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| LabError::io("cannot change the owner of", path, e.into()))
    }

    /// Runs a blocking command as the server user, ignoring its outcome: for
    /// best-effort cleanup from `Drop`, where nothing can be awaited.
    pub fn blocking_run(&self, mut cmd: std::process::Command) {
        use std::os::unix::process::CommandExt;
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.switch {
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
        let _ = cmd.status();
    }

    /// Whether the server user can create files in `dir`, checked by running
    /// `test` as that user so every parent directory's permissions count.
    pub async fn can_write(&self, dir: &Path) -> bool {
        let status = self
            .command(Path::new("/usr/bin/test"), Path::new("/"))
            .arg("-w")
            .arg(dir)
            .arg("-a")
            .arg("-x")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        matches!(status, Ok(s) if s.success())
    }
}

fn lookup(name: &str) -> Result<Option<User>, LabError> {
    User::from_name(name)
        .map_err(|e| LabError::ServerUser(format!("looking up user '{name}': {e}")))
}

fn create_system_user() -> Result<User, LabError> {
    let output = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
        ])
        .args(["--shell", "/usr/sbin/nologin", CREATED_USER])
        .output()
        .map_err(|e| LabError::ServerUser(format!("running useradd: {e}")))?;
    if !output.status.success() {
        return Err(LabError::ServerUser(format!(
            "useradd {CREATED_USER} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    lookup(CREATED_USER)?.ok_or_else(|| {
        LabError::ServerUser(format!("user '{CREATED_USER}' missing right after useradd"))
    })
}
