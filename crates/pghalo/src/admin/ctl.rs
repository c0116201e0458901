//! `pghalo ctl`: the daemon's local control socket, and its client.
//!
//! One request per connection: a JSON line in ([`CtlRequest`]), a JSON
//! line out ([`CtlReply`]). A Unix socket, made with mode 0600 and
//! answered only for a peer with the daemon's user id (or root, as
//! SO_PEERCRED reports it): the socket's owner is the only one who can
//! change the topology, as with pgpool's pcp.conf but without a password
//! to keep. PCP on TCP (port 9898, pgpool's pcp_* tools) is the admin
//! issue's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{ClusterView, Observer};
use crate::coordinator::Coordinator;
use crate::failover::FailoverHandle;

use super::ctl_commands;

/// A request line longer than this is refused (they are a few dozen bytes).
const MAX_REQUEST: u64 = 4096;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What `pghalo ctl` asks. Node numbers are pgpool's node ids (the
/// `[[backend]]` order, from 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
#[serde(try_from = "WireRequest")]
pub enum CtlRequest {
    /// The node table.
    Nodes,
    /// The decisions and reports, oldest first.
    Events,
    /// Put a detached node back into routing.
    Attach { node: usize },
    /// Take a node out of routing.
    Detach { node: usize },
    /// Make a standby the primary: a failover if the primary is down, a
    /// switchover if it is up.
    Promote { node: usize },
}

/// A request as it comes off the socket: serde cannot refuse unknown
/// fields of an internally tagged enum's unit variants, so they are read
/// into this first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    command: String,
    node: Option<usize>,
}

impl TryFrom<WireRequest> for CtlRequest {
    type Error = String;

    fn try_from(wire: WireRequest) -> Result<CtlRequest, String> {
        let node = || {
            wire.node
                .ok_or_else(|| format!("{} needs a node number", wire.command))
        };
        let request = match wire.command.as_str() {
            "nodes" => CtlRequest::Nodes,
            "events" => CtlRequest::Events,
            "attach" => CtlRequest::Attach { node: node()? },
            "detach" => CtlRequest::Detach { node: node()? },
            "promote" => CtlRequest::Promote { node: node()? },
            other => return Err(format!("unknown command {other:?}")),
        };
        if wire.node.is_some() && matches!(request, CtlRequest::Nodes | CtlRequest::Events) {
            return Err(format!("{} takes no node number", wire.command));
        }
        Ok(request)
    }
}

/// The daemon's answer: `text` is what to print, or the error sentence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtlReply {
    pub ok: bool,
    pub text: String,
}

impl CtlReply {
    pub fn ok(text: String) -> CtlReply {
        CtlReply { ok: true, text }
    }

    pub fn error(text: String) -> CtlReply {
        CtlReply { ok: false, text }
    }
}

/// What the commands act on.
#[derive(Clone)]
pub struct CtlContext {
    pub view: ClusterView,
    pub observer: Observer,
    pub coordinator: Arc<dyn Coordinator>,
    pub failover: FailoverHandle,
}

/// Why `pghalo ctl` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach pghalo's control socket {}: {source} (is pghalo running with this configuration?)", .path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the control socket {}: {what}", .path.display())]
    Exchange { path: PathBuf, what: String },
}

/// The listening socket; dropping it stops the task and removes the file.
pub struct CtlServer {
    task: JoinHandle<()>,
    path: PathBuf,
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl CtlServer {
    /// Binds `path` (replacing a socket file nothing answers on) with mode
    /// 0600 and serves until `shutdown`.
    pub fn start(
        path: &Path,
        context: CtlContext,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<CtlServer> {
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)?;
        // The peer check below is what keeps other users out; the mode
        // keeps them from even connecting.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let owner = nix::unistd::geteuid().as_raw();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let context = context.clone();
                        tokio::spawn(serve(stream, owner, context));
                    }
                    _ = shutdown.changed() => {
                        if *shutdown.borrow() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(CtlServer {
            task,
            path: path.to_path_buf(),
        })
    }
}

async fn serve(stream: UnixStream, owner: u32, context: CtlContext) {
    let peer = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    // The request is read whoever sent it: a refusal sent before the
    // client has written would break its write, not answer it.
    let mut line = String::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await;
    let reply = if peer.is_none_or(|uid| uid != owner && uid != 0) {
        tracing::warn!(uid = ?peer, "control socket: refused a client of another user");
        CtlReply::error(
            "permission denied: only pghalo's own user (or root) may use the control socket".into(),
        )
    } else {
        match read {
            Ok(Ok(_)) if line.ends_with('\n') => match serde_json::from_str::<CtlRequest>(&line) {
                Ok(request) => {
                    tracing::info!(?request, "control socket");
                    ctl_commands::handle(&context, request).await
                }
                Err(e) => CtlReply::error(format!("not a pghalo ctl request: {e}")),
            },
            Ok(Ok(_)) => CtlReply::error(format!(
                "not a pghalo ctl request: expected one line of JSON of at most {MAX_REQUEST} bytes"
            )),
            Ok(Err(e)) => CtlReply::error(format!("not a pghalo ctl request: {e}")),
            Err(_) => CtlReply::error("no request within 10 s".into()),
        }
    };
    if let Ok(mut text) = serde_json::to_vec(&reply) {
        text.push(b'\n');
        let _ = write.write_all(&text).await;
    }
}

/// Sends one request to the daemon listening on `path`. Promotions wait
/// as long as the daemon takes (its own timeouts bound them).
pub async fn send(path: &Path, request: &CtlRequest) -> Result<CtlReply, CtlError> {
    let exchange = |what: String| CtlError::Exchange {
        path: path.to_path_buf(),
        what,
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| CtlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let mut line = serde_json::to_vec(request).map_err(|e| exchange(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| exchange(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .await
        .map_err(|e| exchange(e.to_string()))?;
    serde_json::from_str(&answer)
        .map_err(|e| exchange(format!("an answer that is not pghalo's ({e}): {answer:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object() {
        let promote = CtlRequest::Promote { node: 2 };
        let text = serde_json::to_string(&promote).unwrap();
        assert_eq!(text, r#"{"command":"promote","node":2}"#);
        assert_eq!(serde_json::from_str::<CtlRequest>(&text).unwrap(), promote);
        assert_eq!(
            serde_json::from_str::<CtlRequest>(r#"{"command":"nodes"}"#).unwrap(),
            CtlRequest::Nodes
        );
        for bad in [
            r#"{"command":"promote"}"#,
            r#"{"command":"promote","node":-1}"#,
            r#"{"command":"drop"}"#,
            r#"{"command":"nodes","extra":1}"#,
            r#"{"command":"nodes","node":1}"#,
            "[]",
            "",
        ] {
            assert!(serde_json::from_str::<CtlRequest>(bad).is_err(), "{bad}");
        }
    }
}
