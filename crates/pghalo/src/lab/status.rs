//! What `lab status` reports: each node's role as the node itself says
//! (pg_is_in_recovery()), its LSNs, and replication as pg_stat_replication
//! reports it on the primary.

use std::fmt::Write as _;

use serde::Serialize;
use tokio_postgres::Client;

use super::Lab;
use super::error::LabError;
use super::layout::{HOST, Manifest, NodeSpec};
use super::process::postmaster_pid;
use super::secrets::{SUPERUSER, Secrets};
use super::sql::{connect, sql_error};

/// A node that accepts connections but does not answer is reported down.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub dir: String,
    pub pg_version: String,
    pub nodes: Vec<NodeStatus>,
    pub proxies: Vec<ProxyStatus>,
}

/// A pghalo instance of the lab.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub pid: Option<i32>,
    /// "up" while its process runs, else "down".
    pub status: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
    Down,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub data_directory: String,
    pub role: Role,
    pub pid: Option<i32>,
    pub timeline: Option<i64>,
    pub current_lsn: Option<String>,
    pub receive_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// For a standby: its row in the primary's pg_stat_replication.
    pub replication: Option<ReplicationRow>,
    /// For a primary: every row of its pg_stat_replication.
    pub replicas: Vec<ReplicationRow>,
    /// Why a running node could not be asked, when it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicationRow {
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sent_lsn: Option<String>,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
}

impl LabStatus {
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn primaries(&self) -> Vec<&NodeStatus> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .collect()
    }

    /// One line per node, for people.
    pub fn table(&self) -> String {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
        let mut rows = vec![
            [
                "node",
                "role",
                "port",
                "pid",
                "tli",
                "current_lsn",
                "receive_lsn",
                "replay_lsn",
                "replication",
            ]
            .map(String::from),
        ];
        for n in &self.nodes {
            let replication = match (&n.replication, n.role) {
                (Some(r), _) => format!("{} ({})", dash(&r.state), dash(&r.sync_state)),
                (None, Role::Primary) => format!("{} standby(s)", n.replicas.len()),
                (None, Role::Standby) => "not connected".to_string(),
                (None, Role::Down) => n.error.clone().unwrap_or_else(|| "-".to_string()),
            };
            rows.push([
                n.name.clone(),
                n.role.as_str().to_string(),
                n.port.to_string(),
                n.pid.map_or("-".to_string(), |p| p.to_string()),
                n.timeline.map_or("-".to_string(), |t| t.to_string()),
                dash(&n.current_lsn),
                dash(&n.receive_lsn),
                dash(&n.replay_lsn),
                replication,
            ]);
        }
        for p in &self.proxies {
            let mut row: [String; 9] = Default::default();
            row[0] = p.name.clone();
            row[1] = "pghalo".to_string();
            row[2] = p.port.to_string();
            row[3] = p.pid.map_or("-".to_string(), |pid| pid.to_string());
            row[8] = p.status.to_string();
            for cell in &mut row[4..8] {
                *cell = "-".to_string();
            }
            rows.push(row);
        }
        let mut widths = [0usize; 9];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }
}

pub(super) async fn collect(lab: &Lab) -> Result<LabStatus, LabError> {
    let Manifest {
        nodes, pg_version, ..
    } = &lab.manifest;
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        out.push(node_status(lab, node, &lab.secrets).await);
    }
    // A standby's replication state is what its primary reports about it.
    let rows: Vec<ReplicationRow> = out
        .iter()
        .filter(|n| n.role == Role::Primary)
        .flat_map(|n| n.replicas.clone())
        .collect();
    for node in out.iter_mut().filter(|n| n.role == Role::Standby) {
        node.replication = rows
            .iter()
            .find(|r| r.application_name == node.name)
            .cloned();
    }
    let proxies = lab
        .manifest
        .proxies
        .iter()
        .map(|p| {
            let pid = lab.proxy_pid(p);
            ProxyStatus {
                name: p.name.clone(),
                host: HOST.to_string(),
                port: p.port,
                pid,
                status: if pid.is_some() { "up" } else { "down" },
            }
        })
        .collect();
    Ok(LabStatus {
        proxies,
        dir: lab.layout.dir.display().to_string(),
        pg_version: pg_version.clone(),
        nodes: out,
    })
}

async fn node_status(lab: &Lab, node: &NodeSpec, secrets: &Secrets) -> NodeStatus {
    let data_dir = lab.layout.data_dir(&node.name);
    let mut status = NodeStatus {
        name: node.name.clone(),
        host: HOST.to_string(),
        port: node.port,
        data_directory: data_dir.display().to_string(),
        role: Role::Down,
        pid: postmaster_pid(&data_dir),
        timeline: None,
        current_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        replication: None,
        replicas: Vec::new(),
        error: None,
    };
    if status.pid.is_none() {
        return status;
    }
    let asked = tokio::time::timeout(STATUS_TIMEOUT, async {
        let client = connect(&node.name, node.port, SUPERUSER, &secrets.postgres).await?;
        let mut answer = status.clone();
        ask(&client, &node.name, &mut answer).await.map(|()| answer)
    })
    .await;
    let result = match asked {
        Ok(Ok(answer)) => {
            status = answer;
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LabError::Timeout {
            what: format!("asking {} for its status", node.name),
            secs: STATUS_TIMEOUT.as_secs(),
        }),
    };
    if let Err(e) = result {
        status.role = Role::Down;
        status.error = Some(e.to_string());
    }
    status
}

async fn ask(client: &Client, node: &str, status: &mut NodeStatus) -> Result<(), LabError> {
    let err = sql_error(node);
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT timeline_id::int8 FROM pg_control_checkpoint())",
            &[],
        )
        .await
        .map_err(&err)?;
    let in_recovery: bool = row.get(0);
    status.timeline = row.get(1);
    if in_recovery {
        status.role = Role::Standby;
        let row = client
            .query_one(
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
                &[],
            )
            .await
            .map_err(&err)?;
        status.receive_lsn = row.get(0);
        status.replay_lsn = row.get(1);
    } else {
        status.role = Role::Primary;
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(&err)?;
        status.current_lsn = row.get(0);
        let rows = client
            .query(
                "SELECT application_name, client_addr::text, state, sync_state, sent_lsn::text, \
                 write_lsn::text, flush_lsn::text, replay_lsn::text \
                 FROM pg_stat_replication ORDER BY application_name",
                &[],
            )
            .await
            .map_err(&err)?;
        status.replicas = rows
            .iter()
            .map(|r| ReplicationRow {
                application_name: r.get(0),
                client_addr: r.get(1),
                state: r.get(2),
                sync_state: r.get(3),
                sent_lsn: r.get(4),
                write_lsn: r.get(5),
                flush_lsn: r.get(6),
                replay_lsn: r.get(7),
            })
            .collect();
    }
    Ok(())
}
