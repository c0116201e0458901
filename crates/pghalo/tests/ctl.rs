//! `pghalo ctl` against a running pghalo in front of a real lab: the node
//! table, detach and attach, a switchover that loses no acknowledged write
//! (`promote` with the primary up), the events, and every refusal the
//! issue lists (a node that does not exist, the current primary, a node
//! that is down) changing nothing.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    PGHALO, TestLab, conninfo, node_client, pg_connect, start_failover_proxy, trace,
    wait_for_topology,
};
use pghalo::cluster::{NodeId, Role, Status};
use pghalo::coordinator::Coordinator;

/// Runs `pghalo ctl -c CONFIG ARGS...`: (success, stdout, stderr).
async fn ctl(config: &common::ProxyConfig, args: &[&str]) -> (bool, String, String) {
    let path = config.path();
    let output = tokio::process::Command::new(PGHALO)
        .arg("ctl")
        .arg("-c")
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The ports 20 new sessions through pghalo read from.
async fn read_ports(port: u16, password: &str) -> HashSet<i32> {
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let c = pg_connect(&conninfo(port, "postgres", password))
            .await
            .unwrap();
        let row = c.query_one("SELECT inet_server_port()", &[]).await.unwrap();
        seen.insert(row.get::<_, i32>(0));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_shows_detaches_attaches_and_switches_over() {
    trace();
    let test_lab = TestLab::build("ctl", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let (config, daemon) = start_failover_proxy(
        lab,
        "ctl",
        "[load_balance]\nstatement_level_load_balance = true\n\n",
        "",
    )
    .await;
    let port = |name: &str| i32::from(lab.node(name).unwrap().port);

    // The socket is private to pghalo's user.
    use std::os::unix::fs::PermissionsExt;
    let socket = config.path().with_file_name("pghalo.ctl");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // Another user is refused by the peer check even where the socket's
    // mode would let it connect. (The lab runs as root, so the test can
    // switch to nobody.)
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PGHALO])
        .args(["ctl", "--socket"])
        .arg(&socket)
        .args(["detach", "1"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "{stderr}");
    assert!(
        stderr.contains("permission denied: only pghalo's own user (or root)"),
        "{stderr}"
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (ok, out, err) = ctl(&config, &["nodes"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].contains("node0") && lines[1].contains(" primary "),
        "{out}"
    );
    for line in &lines[2..] {
        assert!(
            line.contains(" standby ") && line.contains("streaming"),
            "{out}"
        );
    }

    // Refusals: clear errors, nothing decided.
    let stopped = lab.stop_node("node2", pghalo::lab::StopMode::Fast);
    stopped.await.unwrap();
    daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes[2].status == Status::Down
        })
        .await
        .unwrap();
    for (args, expected) in [
        (
            vec!["promote", "7"],
            "there is no node 7: the nodes are 0 to 2",
        ),
        (
            vec!["promote", "0"],
            "node 0 (node0) is already the primary",
        ),
        (vec!["promote", "2"], "node 2 (node2) is down"),
        (vec!["detach", "0"], "node 0 (node0) is the primary"),
        (vec!["attach", "1"], "node 1 (node1) is not detached"),
        (vec!["detach", "9"], "there is no node 9"),
    ] {
        let (ok, out, err) = ctl(&config, &args).await;
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let (ok, _, err) = ctl(&config, &["promote", "x"]).await;
    assert!(!ok && err.contains("invalid value"), "{err}");
    assert!(daemon.coordinator().events().is_empty());
    let (ok, out, _) = ctl(&config, &["events"]).await;
    assert!(ok && out.contains("no decisions yet"), "{out}");
    lab.start_node("node2").await.unwrap();
    wait_for_topology(&daemon, Duration::from_secs(30)).await;

    // A request that is not one: an error reply, and the socket still works.
    let reply = async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        stream.write_all(b"\xff{garbage\n").await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .unwrap();
        line
    }
    .await;
    assert!(
        reply.contains("\"ok\":false") && reply.contains("not a pghalo ctl request"),
        "{reply}"
    );

    // Detach takes a standby out of the reads; attach brings it back.
    let (ok, out, err) = ctl(&config, &["detach", "1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("node 1 (node1) is detached"), "{out}");
    let seen = read_ports(config.port, &password).await;
    assert!(!seen.contains(&port("node1")), "{seen:?}");
    let (ok, out, _) = ctl(&config, &["nodes"]).await;
    assert!(
        ok && out
            .lines()
            .nth(2)
            .unwrap()
            .contains("detached by hand (up)"),
        "{out}"
    );
    let (ok, _, err) = ctl(&config, &["attach", "1"]).await;
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_ports(config.port, &password)
        .await
        .contains(&port("node1"))
    {
        assert!(
            Instant::now() < deadline,
            "node1 gets no reads once attached"
        );
    }

    // A switchover under load: every acknowledged write is on the new
    // primary afterwards.
    let setup = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    setup
        .batch_execute("CREATE TABLE switched (id int PRIMARY KEY)")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, password, port) = (stop.clone(), password.clone(), config.port);
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(c) = pg_connect(&conninfo(port, "postgres", &password)).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
                    id += 1;
                    match c.execute("INSERT INTO switched VALUES ($1)", &[&id]).await {
                        Ok(_) => acked.push(id),
                        Err(_) => break,
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out, err) = ctl(&config, &["promote", "1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("node1 is the primary"), "{out}");
    assert!(
        out.contains("node0 still runs as a primary, detached"),
        "{out}"
    );
    let snapshot = daemon.cluster().snapshot();
    assert_eq!(snapshot.primary, Some(NodeId(1)), "{snapshot:#?}");
    // Writes go on, on node1.
    let after = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    let written: i32 = after
        .query_one(
            "INSERT INTO switched VALUES (-1) RETURNING inet_server_port()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, port("node1"));
    let on_new = node_client(lab, "node1", "postgres").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let rows: HashSet<i32> = on_new
        .query("SELECT id FROM switched", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&i32> = acked.iter().filter(|id| !rows.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());

    // node2 follows node1; node0 runs as a primary but gets nothing.
    let node2 = node_client(lab, "node2", "postgres").await;
    let sender: Option<i32> = node2
        .query_opt(
            "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert_eq!(sender, Some(port("node1")));
    let fenced = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes[0].detached && matches!(s.nodes[0].role, Role::FalsePrimary(_))
        })
        .await;
    assert!(fenced.is_ok(), "{fenced:#?}");
    let seen = read_ports(config.port, &password).await;
    assert!(!seen.contains(&port("node0")), "{seen:?}");

    // The events: the detach and attach by hand, the switchover's detach
    // and promotion with rising epochs, and the report on node0.
    let (ok, out, _) = ctl(&config, &["events"]).await;
    assert!(ok, "{out}");
    let events = daemon.coordinator().events();
    let decided: Vec<u64> = events.iter().filter_map(|e| e.epoch.map(|e| e.0)).collect();
    assert_eq!(decided, [1, 2, 3, 4], "{out}");
    assert!(out.contains("promote node 1 in place of node 0"), "{out}");
    assert!(
        out.contains("report") && out.contains("rebuild it as a standby"),
        "{out}"
    );
    daemon.stop();
}
