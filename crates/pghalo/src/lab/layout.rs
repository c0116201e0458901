//! Where a lab keeps things inside its directory, and the manifest
//! (`lab.json`) that describes it.
//!
//! ```text
//! DIR/lab.json       the manifest: nodes, ports, binaries, server user
//! DIR/secrets.json   generated passwords (mode 0600, owner = who ran init)
//! DIR/pgpass         libpq password file for every node (mode 0600)
//! DIR/archive/       WAL archive (archive_command copies here)
//! DIR/log/NODE.log   server logs
//! DIR/NODE/          data directories
//! DIR/PROXY/         a pghalo's configuration and pid file
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::LabError;

pub const MANIFEST: &str = "lab.json";
pub const SECRETS: &str = "secrets.json";
pub const PGPASS: &str = "pgpass";
pub const HOST: &str = "127.0.0.1";

#[derive(Debug, Clone)]
pub struct LabLayout {
    pub dir: PathBuf,
}

impl LabLayout {
    pub fn new(dir: &Path) -> LabLayout {
        LabLayout {
            dir: dir.to_path_buf(),
        }
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }
    pub fn secrets(&self) -> PathBuf {
        self.dir.join(SECRETS)
    }
    pub fn pgpass(&self) -> PathBuf {
        self.dir.join(PGPASS)
    }
    pub fn archive(&self) -> PathBuf {
        self.dir.join("archive")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn log_file(&self, node: &str) -> PathBuf {
        self.log_dir().join(format!("{node}.log"))
    }
    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }
    /// A proxy's configuration directory (pghalo.toml, pool_hba.conf,
    /// pool_passwd, pghalo.pid).
    pub fn proxy_dir(&self, proxy: &str) -> PathBuf {
        self.dir.join(proxy)
    }

    pub fn read_manifest(&self) -> Result<Manifest, LabError> {
        let path = self.manifest();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::NotALab(self.dir.clone())
            } else {
                LabError::io("cannot read", &path, e)
            }
        })?;
        serde_json::from_str(&text).map_err(|e| LabError::BadLabFile {
            path,
            reason: e.to_string(),
        })
    }

    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), LabError> {
        let path = self.manifest();
        let text = serde_json::to_string_pretty(manifest).map_err(|e| LabError::BadLabFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&path, text.as_bytes(), 0o644)
    }
}

/// What `lab init` decided, read back by every later lab command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub pg_bin: PathBuf,
    pub pg_version: String,
    pub server_user: String,
    pub sync: bool,
    pub nodes: Vec<NodeSpec>,
    /// pghalo instances in front of the nodes (`--proxies`).
    #[serde(default)]
    pub proxies: Vec<ProxySpec>,
}

impl Manifest {
    /// Every port the lab holds: nodes first, then proxies.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .map(|n| n.port)
            .chain(self.proxies.iter().map(|p| p.port))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxySpec {
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub port: u16,
}

/// Writes through a temporary file and a rename, so a crash never leaves a
/// half-written file where a later command expects a whole one.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| LabError::io("cannot write", &tmp, e))?;
    file.write_all(contents)
        .map_err(|e| LabError::io("cannot write", &tmp, e))?;
    file.sync_all()
        .map_err(|e| LabError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LabError::io("cannot write", path, e))
}
