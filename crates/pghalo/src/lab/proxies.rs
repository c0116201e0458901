//! The pghalo instances a lab runs in front of its nodes, as pgpool_setup
//! sets up pgpool: a ready configuration per proxy (every node, an hba that
//! requires SCRAM over TCP, the lab's users in pool_passwd, the replication
//! check as the `pghalo` user), started and stopped with the lab.
//!
//! The replication check needs `pghalo`'s password itself: a SCRAM
//! verifier cannot log in. It is written the way pgpool recommends, as
//! `sr_check_password = "AES..."` encrypted with a pool key that only the
//! proxy's own key file (`pool_key`, mode 0600) holds. So pghalo.toml can
//! stay readable (0644) and pool_passwd keeps only the servers' verifiers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Lab;
use super::error::LabError;
use super::layout::{HOST, ProxySpec, write_atomically};
use super::process::is_alive;
use super::secrets::{HEALTH_USER, REPLICATION_USER, SUPERUSER};
use crate::config::passwd::PoolKey;

const START_WAIT: Duration = Duration::from_secs(30);

impl Lab {
    /// Writes each proxy's configuration. `verifiers` are the lab users'
    /// SCRAM verifiers exactly as pg_authid holds them: pghalo checks
    /// clients against them and, because they match the servers', can log
    /// in to the servers with the keys the client's own exchange reveals.
    /// No plain password is written.
    pub(super) fn write_proxy_configs(
        &self,
        verifiers: &[(String, String)],
    ) -> Result<(), LabError> {
        for proxy in &self.manifest.proxies {
            let dir = self.layout.proxy_dir(&proxy.name);
            std::fs::create_dir(&dir).map_err(|e| LabError::io("cannot create", &dir, e))?;
            let key = pool_key();
            let sr_check_password = PoolKey::new(key.as_bytes())
                .map(|k| format!("AES{}", k.encrypt(&self.secrets.pghalo)))
                .ok_or_else(|| LabError::Command {
                    what: "writing the proxy configuration".into(),
                    detail: "the generated pool key is empty".into(),
                })?;
            let mut config = format!(
                "# pghalo configuration written by `pghalo lab init` for {name}.\n\
                 [listen]\n\
                 listen_addresses = [\"{HOST}\"]\n\
                 port = {port}\n\n\
                 [pool]\n\
                 mode = \"session\"\n\n\
                 [auth]\n\
                 pool_hba = \"pool_hba.conf\"\n\
                 pool_passwd = \"pool_passwd\"\n\
                 pool_key_file = \"pool_key\"\n\n\
                 [daemon]\n\
                 pid_file_name = \"pghalo.pid\"\n\n\
                 [streaming_replication]\n\
                 sr_check_user = \"{HEALTH_USER}\"\n\
                 # The password, AES-encrypted with the key in pool_key (0600).\n\
                 sr_check_password = \"{sr_check_password}\"\n\
                 sr_check_period = \"1s\"\n\n\
                 [load_balance]\n\
                 # Reads spread over the nodes by weight; a session that wrote\n\
                 # reads from a standby only once it has replayed the write.\n\
                 load_balance_mode = true\n\
                 read_your_writes = true\n",
                name = proxy.name,
                port = proxy.port,
            );
            for node in &self.manifest.nodes {
                config.push_str(&format!(
                    "\n[[backend]]\nname = \"{}\"\nhost = \"{HOST}\"\nport = {}\ndata_directory = \"{}\"\n",
                    node.name,
                    node.port,
                    self.layout.data_dir(&node.name).display()
                ));
            }
            write_atomically(&dir.join("pool_key"), format!("{key}\n").as_bytes(), 0o600)?;
            write_atomically(&dir.join("pghalo.toml"), config.as_bytes(), 0o644)?;
            write_atomically(&dir.join("pool_hba.conf"), PROXY_HBA.as_bytes(), 0o644)?;
            let passwd: String = verifiers
                .iter()
                .map(|(user, verifier)| format!("{user}:{verifier}\n"))
                .collect();
            write_atomically(&dir.join("pool_passwd"), passwd.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// The pghalo binary proxies run: set by `with_pghalo_bin`, else
    /// `PGHALO_BIN`, else this very program when it is pghalo.
    fn pghalo_bin(&self) -> Result<PathBuf, LabError> {
        if let Some(bin) = &self.pghalo_bin {
            return Ok(bin.clone());
        }
        if let Some(bin) = std::env::var_os("PGHALO_BIN").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(bin));
        }
        let exe = std::env::current_exe()
            .map_err(|e| LabError::io("cannot locate", "the pghalo binary", e))?;
        if exe.file_name().is_some_and(|n| n == "pghalo") {
            Ok(exe)
        } else {
            Err(LabError::Command {
                what: "starting a proxy".into(),
                detail: "cannot tell where the pghalo binary is; set PGHALO_BIN".into(),
            })
        }
    }

    fn proxy_pid_file(&self, proxy: &ProxySpec) -> PathBuf {
        self.layout.proxy_dir(&proxy.name).join("pghalo.pid")
    }

    /// The pid of a running proxy.
    pub fn proxy_pid(&self, proxy: &ProxySpec) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.proxy_pid_file(proxy))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_alive(pid).then_some(pid)
    }

    /// Starts every proxy that is not running and waits until it accepts
    /// connections.
    pub async fn start_proxies(&self) -> Result<(), LabError> {
        for proxy in &self.manifest.proxies {
            if self.proxy_pid(proxy).is_some() {
                continue;
            }
            tracing::info!(proxy = %proxy.name, port = proxy.port, "starting");
            let bin = self.pghalo_bin()?;
            let config = self.layout.proxy_dir(&proxy.name).join("pghalo.toml");
            let log_path = self
                .layout
                .dir
                .join("log")
                .join(format!("{}.log", proxy.name));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| LabError::io("cannot open", &log_path, e))?;
            let err_log = log
                .try_clone()
                .map_err(|e| LabError::io("cannot open", &log_path, e))?;
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("run")
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err_log);
            // Its own session: a Ctrl-C meant for whoever started the lab
            // must not take the proxy down with it.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().map_err(|e| LabError::Command {
                what: format!("starting {}", bin.display()),
                detail: e.to_string(),
            })?;
            let pid = child.id() as i32;
            write_atomically(
                &self.proxy_pid_file(proxy),
                format!("{pid}\n").as_bytes(),
                0o644,
            )?;
            // The child is reaped by whoever outlives it; we only watch it.
            std::mem::forget(child);
            wait_listening(proxy, pid, &log_path).await?;
        }
        Ok(())
    }

    /// Stops every running proxy: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop_proxies(&self) {
        for proxy in &self.manifest.proxies {
            let Some(pid) = self.proxy_pid(proxy) else {
                continue;
            };
            tracing::info!(proxy = %proxy.name, "stopping");
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if is_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(self.proxy_pid_file(proxy));
        }
    }
}

async fn wait_listening(proxy: &ProxySpec, pid: i32, log: &Path) -> Result<(), LabError> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if tokio::net::TcpStream::connect((HOST, proxy.port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if !is_alive(pid) || Instant::now() >= deadline {
            let tail = std::fs::read_to_string(log)
                .map(|t| super::process::last_lines(&t, 3))
                .unwrap_or_default();
            return Err(LabError::StartFailed {
                node: proxy.name.clone(),
                detail: tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new pool key: 32 random alphanumerics (190 bits), nothing that a key
/// file's first line could cut short (a newline or a NUL).
fn pool_key() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// SCRAM over TCP for everyone, as the lab's servers require.
const PROXY_HBA: &str = "\
# pool_hba.conf written by `pghalo lab init`: SCRAM-SHA-256 for every client.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
";

/// The lab users whose verifiers go into pool_passwd.
pub(super) const PROXY_USERS: [&str; 3] = [SUPERUSER, HEALTH_USER, REPLICATION_USER];
