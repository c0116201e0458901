//! What each `pghalo ctl` command does and prints. Topology changes are
//! asked of the coordinator (attach, detach) or of the failover task
//! (promote); nothing here decides on its own.

use crate::cluster::{ClusterSnapshot, Detachment, NodeId, NodeState, Role, Status};
use crate::coordinator::{Decision, Event};

use super::ctl::{CtlContext, CtlReply, CtlRequest};
use super::show::timestamp;

pub(super) async fn handle(context: &CtlContext, request: CtlRequest) -> CtlReply {
    let outcome = match request {
        CtlRequest::Nodes => Ok(nodes_table(&context.view.snapshot())),
        CtlRequest::Events => Ok(events_list(&context.coordinator.events())),
        CtlRequest::Detach { node } => detach(context, node, true).await,
        CtlRequest::Attach { node } => detach(context, node, false).await,
        CtlRequest::Promote { node } => {
            let snapshot = context.view.snapshot();
            match known(&snapshot, node) {
                Ok(_) => context.failover.promote(NodeId(node)).await,
                Err(e) => Err(e),
            }
        }
    };
    match outcome {
        Ok(text) => CtlReply::ok(text),
        Err(text) => CtlReply::error(text),
    }
}

fn known(snapshot: &ClusterSnapshot, node: usize) -> Result<&NodeState, String> {
    snapshot.node(NodeId(node)).ok_or_else(|| {
        format!(
            "there is no node {node}: the nodes are 0 to {}",
            snapshot.nodes.len().saturating_sub(1)
        )
    })
}

/// `detach N` (`take_out`) or `attach N`.
async fn detach(context: &CtlContext, node: usize, take_out: bool) -> Result<String, String> {
    let snapshot = context.view.snapshot();
    let state = known(&snapshot, node)?;
    let name = &state.name;
    if take_out && state.detached {
        return Err(format!("node {node} ({name}) is already detached"));
    }
    if !take_out && !state.detached {
        return Err(format!("node {node} ({name}) is not detached"));
    }
    if take_out && snapshot.primary == Some(state.id) {
        return Err(format!(
            "node {node} ({name}) is the primary: promote a standby instead (pghalo ctl promote N)"
        ));
    }
    let decision = if take_out {
        Decision::Detach { node: state.id }
    } else {
        Decision::Attach { node: state.id }
    };
    let reason = format!(
        "{} by hand (pghalo ctl)",
        if take_out { "detached" } else { "attached" }
    );
    let coordinator = &context.coordinator;
    let committed = coordinator
        .decide(decision, reason, coordinator.epoch())
        .await
        .map_err(|refused| format!("not decided: {refused}"))?;
    let how = if take_out {
        Detachment::ByHand
    } else {
        Detachment::Attached
    };
    context
        .observer
        .set_detached(state.id, how)
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "node {node} ({name}) {} (epoch {})",
        if take_out {
            "is detached: it gets no queries"
        } else {
            "is attached"
        },
        committed.epoch
    ))
}

/// The node table: what `SHOW POOL_NODES` says, plus what pghalo knows
/// of each node's replication.
fn nodes_table(snapshot: &ClusterSnapshot) -> String {
    let mut rows = vec![
        [
            "id",
            "name",
            "address",
            "status",
            "role",
            "timeline",
            "lag",
            "replication",
            "last error",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for node in &snapshot.nodes {
        let status = match (node.detached, node.detached_by_hand) {
            (true, true) => format!("detached by hand ({})", node.status),
            (true, false) => format!("detached ({})", node.status),
            (false, _) => node.status.to_string(),
        };
        let role = match node.role {
            Role::FalsePrimary(_) => format!("{} - never routed to", node.role),
            role => role.to_string(),
        };
        let lag = match (node.role, node.lag_bytes) {
            (Role::Primary, _) => String::new(),
            (_, Some(bytes)) => format!("{bytes} B"),
            (_, None) => String::new(),
        };
        let replication = node
            .replication
            .as_ref()
            .map(|r| format!("{} {}", r.state, r.sync_state))
            .unwrap_or_default();
        let error = if node.status == Status::Up {
            String::new()
        } else {
            node.last_error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        rows.push(vec![
            node.id.to_string(),
            node.name.clone(),
            format!("{}:{}", node.host, node.port),
            status,
            role,
            node.timeline.map(|t| t.to_string()).unwrap_or_default(),
            lag,
            replication,
            error,
        ]);
    }
    align(&rows)
}

fn events_list(events: &[Event]) -> String {
    if events.is_empty() {
        return "no decisions yet\n".to_owned();
    }
    let mut rows = vec![
        ["time (UTC)", "epoch", "event", "reason"]
            .map(String::from)
            .to_vec(),
    ];
    for event in events {
        rows.push(vec![
            timestamp(Some(event.at)),
            event
                .epoch
                .map_or_else(|| "report".to_owned(), |e| e.to_string()),
            event.what.clone(),
            event.reason.clone(),
        ]);
    }
    align(&rows)
}

/// Columns padded to their widest cell; the last one is not padded.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Epoch;

    #[test]
    fn the_node_table_names_every_node_and_its_state() {
        let mut primary = NodeState::up_for_test(0, Role::Primary);
        primary.lag_bytes = Some(0);
        let mut standby = NodeState::up_for_test(1, Role::Standby);
        standby.lag_bytes = Some(1024);
        standby.detached = true;
        let mut down = NodeState::up_for_test(2, Role::Standby);
        down.status = Status::Down;
        down.last_error = Some(crate::cluster::CheckError::new(
            crate::cluster::CheckErrorKind::Connect,
            "refused",
        ));
        let snapshot = ClusterSnapshot {
            epoch: Epoch(1),
            generation: 1,
            primary: Some(NodeId(0)),
            nodes: vec![primary, standby, down],
        };
        let table = nodes_table(&snapshot);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("id  name "), "{table}");
        assert!(
            lines[1].contains("127.0.0.1:5432") && lines[1].contains("primary"),
            "{table}"
        );
        assert!(
            lines[2].contains("detached (up)") && lines[2].contains("1024 B"),
            "{table}"
        );
        assert!(
            lines[3].contains("down") && lines[3].ends_with("cannot connect: refused"),
            "{table}"
        );
    }

    #[test]
    fn events_show_epochs_and_reports() {
        assert_eq!(events_list(&[]), "no decisions yet\n");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        let text = events_list(&[
            Event {
                epoch: Some(Epoch(1)),
                at,
                what: "promote node 2 in place of node 0".into(),
                reason: "node0 failed 3 checks in a row".into(),
            },
            Event {
                epoch: None,
                at,
                what: "no automatic failover of node2".into(),
                reason: "no standby is up".into(),
            },
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "2024-02-29 12:34:56  1       promote node 2 in place of node 0  node0 failed 3 checks in a row"
        );
        assert!(lines[2].contains("  report  "), "{text}");
    }
}
