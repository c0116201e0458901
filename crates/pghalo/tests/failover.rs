//! Automatic failover against a real lab: the primary's postmaster killed,
//! exactly one standby promoted, the other following it, writes through
//! pghalo working again; the old primary restarted never routed to; a
//! restarted pghalo taking the same primary.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::time::{Duration, Instant};

use common::{
    TestLab, conninfo, conninfo_db, cut_off_from_wal, failover_section, node_client, pg_connect,
    postmaster_pid, routing_config, signal_postmaster, start_failover_proxy, stop_postmaster,
    trace, wait_for_replay, wait_for_topology,
};
use pghalo::cluster::{NodeId, Role};
use pghalo::coordinator::{Coordinator, Decision};
use pghalo::daemon::Daemon;

/// Tries a write through pghalo until one succeeds or `limit` passes.
async fn write_through(port: u16, password: &str, value: i32, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let attempt = async {
            let client = pg_connect(&conninfo(port, "postgres", password)).await?;
            client
                .execute("INSERT INTO failover_probe VALUES ($1)", &[&value])
                .await
        };
        match attempt.await {
            Ok(1) => return started.elapsed(),
            outcome => {
                assert!(
                    started.elapsed() < limit,
                    "no write through pghalo within {limit:?}: {outcome:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_is_replaced_and_the_other_standby_follows() {
    trace();
    let test_lab = TestLab::build("failover-kill", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    // A short wait for the primary: the end of this test has none.
    let (config, daemon) =
        start_failover_proxy(lab, "failover-kill", "", "wait_for_primary = \"3s\"\n").await;

    let client = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE failover_probe (id int); INSERT INTO failover_probe VALUES (1)",
        )
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    // node1 is cut off from the WAL stream (pointed at a closed port) while
    // the primary writes more: node2 is then the most advanced standby and
    // must be the one promoted, although node1 comes first.
    cut_off_from_wal(lab, "node1").await;
    client
        .batch_execute("INSERT INTO failover_probe SELECT -g FROM generate_series(1, 1000) g")
        .await
        .unwrap();
    let node2 = node_client(lab, "node2", "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node2
        .query_one("SELECT count(*) FROM failover_probe", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 1001
    {
        assert!(Instant::now() < deadline, "node2 does not get the rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let old_postmaster = postmaster_pid(lab, "node0");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_postmaster),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // A new session that writes at once does not fail: pghalo has the
    // primary checked when it cannot reach it, and waits for the failover
    // (wait_for_primary).
    let single = async {
        let client = pg_connect(&conninfo(config.port, "postgres", &password)).await?;
        client
            .execute("INSERT INTO failover_probe VALUES (2)", &[])
            .await
    };
    let written = single.await;
    let first_write = killed.elapsed();
    assert!(
        matches!(written, Ok(1)),
        "a write right after the kill: {written:?}"
    );

    // The session on the dead primary ends with an error, not a hang (its
    // orphaned backend may still run a statement or two before it notices
    // that the postmaster is gone: PostgreSQL's doing).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let write = tokio::time::timeout(
            Duration::from_secs(5),
            client.simple_query("INSERT INTO failover_probe VALUES (-999999)"),
        )
        .await;
        match write {
            Ok(Err(_)) => break,
            Ok(Ok(_)) => assert!(Instant::now() < deadline, "the session never ended"),
            Err(_) => panic!("a write on the killed primary hangs"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = daemon.cluster().snapshot();
    let new = snapshot.primary.unwrap();
    assert_eq!(
        new,
        NodeId(2),
        "the most advanced standby is promoted: {snapshot:#?}"
    );
    eprintln!(
        "primary killed; first write through pghalo {:.2?} later, on node{}",
        first_write,
        new.index()
    );

    // Exactly one standby left recovery.
    let mut writable = Vec::new();
    for name in ["node1", "node2"] {
        let c = node_client(lab, name, "postgres").await;
        let in_recovery: bool = c
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        if !in_recovery {
            writable.push(name);
        }
    }
    assert_eq!(writable, [format!("node{}", new.index())], "promoted nodes");

    // The other standby streams from the new primary and has the write.
    let other = if new == NodeId(1) { "node2" } else { "node1" };
    let new_name = format!("node{}", new.index());
    let on_new = node_client(lab, &new_name, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming: i64 = on_new
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[&other],
            )
            .await
            .unwrap()
            .get(0);
        if streaming == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{other} does not stream from {new_name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_other = node_client(lab, other, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The rows it missed while cut off, and the write after the
        // failover.
        let rows: i64 = on_other
            .query_one(
                "SELECT count(*) FROM failover_probe WHERE id BETWEEN -1000 AND -1 OR id = 2",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if rows == 1001 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{other} never caught up with the new primary: {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The promotion, with its epoch and reason, then the old primary
    // detached (it serves nothing when it comes back until it streams from
    // the new primary).
    let events = daemon.coordinator().events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[1].what,
        Decision::Detach { node: NodeId(0) }.to_string()
    );
    assert_eq!(
        events[0].what,
        Decision::Promote {
            node: new,
            replaces: Some(NodeId(0))
        }
        .to_string()
    );
    assert!(events[0].epoch.is_some());
    assert!(events[0].reason.contains("node0"), "{:?}", events[0].reason);

    // The old primary comes back, still a primary on the old timeline: it
    // is fenced, and no session reaches it. (Its killed postmaster must be
    // reaped and its orphaned children gone before it starts again.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(old_postmaster),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        match lab.start_node("node0").await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "node0 does not start again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fenced = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            matches!(s.nodes[0].role, Role::FalsePrimary(_)) && s.primary == Some(new)
        })
        .await;
    assert!(fenced.is_ok(), "{fenced:#?}");
    for i in 0..20 {
        let c = pg_connect(&conninfo(config.port, "postgres", &password))
            .await
            .unwrap();
        let port: i32 = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(
            port,
            i32::from(lab.node("node0").unwrap().port),
            "session {i} reached the old primary"
        );
    }

    // A restarted pghalo takes the same primary, never the old one.
    daemon.stop();
    drop(daemon);
    let again = restart(&config).await;
    let seen = again
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.primary.is_some() && s.nodes.iter().all(|n| n.last_check.is_some())
        })
        .await
        .unwrap();
    assert_eq!(seen.primary, Some(new), "{seen:#?}");
    assert!(matches!(
        seen.nodes[0].role,
        Role::FalsePrimary(_) | Role::Unknown
    ));
    // The decisions survived the restart (the state file), and new ones
    // would follow on from their epoch.
    let summary = |events: Vec<pghalo::coordinator::Event>| -> Vec<_> {
        events
            .into_iter()
            .map(|e| (e.epoch, e.what, e.reason))
            .collect()
    };
    assert_eq!(summary(again.coordinator().events()), summary(events));
    write_through(config.port, &password, 3, Duration::from_secs(10)).await;
    again.stop();
    drop(again);

    // The new primary stops while pghalo is down, and the state file is
    // lost: node0 (timeline 1) still claims, but node1 follows timeline 2,
    // so node0 is a former primary and gets nothing.
    lab.stop_node("node2", pghalo::lab::StopMode::Fast)
        .await
        .unwrap();
    let state_file = config.path().with_file_name("pghalo.state");
    let kept = std::fs::read(&state_file).unwrap();
    std::fs::remove_file(&state_file).unwrap();
    let (restarted, _) = restart_with_node0_fenced(&config, "without the state file").await;
    assert_no_session_reaches(&config, &password, lab.node("node0").unwrap().port).await;
    restarted.stop();
    drop(restarted);

    // With node1 down too, only the state file knows: it names node2 on
    // timeline 2, so node0 is still kept out.
    lab.stop_node("node1", pghalo::lab::StopMode::Fast)
        .await
        .unwrap();
    std::fs::write(&state_file, kept).unwrap();
    let (restarted, seen) = restart_with_node0_fenced(&config, "with the state file").await;
    assert_eq!(seen.primary, Some(new));
    assert_no_session_reaches(&config, &password, lab.node("node0").unwrap().port).await;
    restarted.stop();
}

/// Starts pghalo again on `config` once the previous instance's listeners
/// have closed.
async fn restart(config: &common::ProxyConfig) -> Daemon {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Daemon::start(&config.path()).await {
            Ok(daemon) => return daemon,
            Err(e) => assert!(
                Instant::now() < deadline,
                "pghalo does not start again: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts pghalo and waits until every node was checked and node0 (a
/// former primary) is seen as a false primary.
async fn restart_with_node0_fenced(
    config: &common::ProxyConfig,
    case: &str,
) -> (Daemon, std::sync::Arc<pghalo::cluster::ClusterSnapshot>) {
    let daemon = restart(config).await;
    let seen = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes.iter().all(|n| n.last_check.is_some())
                && matches!(s.nodes[0].role, Role::FalsePrimary(_))
        })
        .await
        .unwrap_or_else(|s| panic!("{case}: {s:#?}"));
    (daemon, seen)
}

/// No session through pghalo runs on the node at `port`: a few sessions
/// read the port they are on, and either get another node or an error
/// (no primary, no standby up).
async fn assert_no_session_reaches(config: &common::ProxyConfig, password: &str, port: u16) {
    for i in 0..5 {
        let attempt = async {
            let c = pg_connect(&conninfo(config.port, "postgres", password)).await?;
            c.query_one("SELECT inet_server_port()", &[]).await
        };
        if let Ok(row) = attempt.await {
            assert_ne!(
                row.get::<_, i32>(0),
                i32::from(port),
                "session {i} reached it"
            );
        }
    }
}

/// A hung primary (its postmaster stopped with SIGSTOP: connections are
/// accepted by the kernel, never answered) fails over (one check timeout
/// and a promotion after it hangs); a session still attached to it ends with 57P01 instead
/// of writing there; resumed, the old primary is fenced.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_primary_is_replaced_within_the_check_timeout() {
    trace();
    let test_lab = TestLab::build("failover-hang", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let (config, daemon) = start_failover_proxy(lab, "failover-hang", "", "").await;
    let timeout = Duration::from_secs(2); // monitor_section's sr_check_timeout

    let attached = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    attached
        .batch_execute(
            "CREATE TABLE failover_probe (id int); INSERT INTO failover_probe VALUES (1)",
        )
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    let stopped = Instant::now();
    let resume = stop_postmaster(lab, "node0");

    let replaced = daemon
        .cluster()
        .view()
        .wait_for(timeout + Duration::from_secs(10), |s| {
            s.primary.is_some_and(|p| p != NodeId(0))
        })
        .await
        .unwrap();
    let took = stopped.elapsed();
    let first_write = write_through(config.port, &password, 2, Duration::from_secs(10)).await;
    eprintln!(
        "primary hung; node{} primary {took:.1?} later, first write {:.1?} after the hang",
        replaced.primary.unwrap().index(),
        took + first_write
    );
    // How fast is the benchmark's question (bench/failover): here only
    // that it happened, within the wait above.

    // The session whose server connection is on the hung primary (its
    // backend still runs) must not write there: it ends with 57P01.
    let error = attached
        .simple_query("INSERT INTO failover_probe VALUES (-1)")
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("57P01"),
        "{error:?}"
    );

    drop(resume);
    let fenced = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            matches!(s.nodes[0].role, Role::FalsePrimary(_))
        })
        .await;
    assert!(fenced.is_ok(), "{fenced:#?}");
    let old: i64 = node_client(lab, "node0", "postgres")
        .await
        .query_one("SELECT count(*) FROM failover_probe WHERE id <> 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0, "a write reached the hung old primary");
    daemon.stop();
}

/// Where 90 reads of `client` landed, by node (the lab's `ports`);
/// `phase` names the moment in a failure's message.
async fn read_spread(client: &tokio_postgres::Client, ports: &[i32], phase: &str) -> [usize; 3] {
    let mut landed = [0usize; 3];
    for i in 0..90 {
        let port: i32 = match client.query_one("SELECT inet_server_port()", &[]).await {
            Ok(row) => row.get(0),
            Err(e) => panic!("read {i} {phase} failed: {e:?} (landed so far {landed:?})"),
        };
        landed[ports.iter().position(|p| *p == port).unwrap()] += 1;
    }
    landed
}

/// A standby killed: reads go on on the other nodes, nothing is promoted;
/// restarted, it serves reads again (failback).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_standby_loses_its_reads_and_gets_them_back() {
    trace();
    let test_lab = TestLab::build("failover-standby", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let (config, daemon) = start_failover_proxy(
        lab,
        "failover-standby",
        "[load_balance]\nstatement_level_load_balance = true\n\n",
        "slot_grace_period = \"1s\"\n",
    )
    .await;
    let client = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    let ports: Vec<i32> = lab
        .manifest
        .nodes
        .iter()
        .map(|n| i32::from(n.port))
        .collect();
    let before = read_spread(&client, &ports, "before node2 is killed").await;
    assert!(
        before[2] > 0,
        "node2 served no reads to begin with: {before:?}"
    );

    // tokio-postgres closes each statement after its query (Close + Sync,
    // sent in the background): let the last one be answered first. A
    // request in flight to a standby as it dies ends the session
    // (docs/failover.md, "Sessions"), which is not what this test is about.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal_postmaster(lab, "node2", nix::sys::signal::Signal::SIGKILL);
    let down = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes[2].status == pghalo::cluster::Status::Down
        })
        .await;
    assert!(down.is_ok(), "{down:#?}");
    let during = read_spread(&client, &ports, "while node2 is down").await;
    assert_eq!(during[2], 0, "reads reached the dead standby: {during:?}");
    assert!(during[1] > 0, "{during:?}");
    assert_eq!(
        daemon.cluster().snapshot().primary,
        Some(NodeId(0)),
        "a standby's death must not fail the primary over"
    );
    // Confirmed down, it is detached (a decision); after the slot grace
    // period (1 s here) its replication slot on the primary is dropped.
    let detached = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes[2].detached && !s.nodes[2].detached_by_hand
        })
        .await;
    assert!(detached.is_ok(), "{detached:#?}");
    let primary = node_client(lab, "node0", "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::time::timeout(
        Duration::from_secs(10),
        primary.query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'node2'",
            &[],
        ),
    )
    .await
    .expect("pg_replication_slots hangs")
    .unwrap()
    .is_some()
    {
        assert!(Instant::now() < deadline, "node2's slot is never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The WAL written meanwhile is still on the primary (no checkpoint has
    // recycled it), so node2 can catch up once its slot is made again.
    tokio::time::timeout(
        Duration::from_secs(30),
        client.batch_execute("CREATE TABLE written_while_away AS SELECT 1 AS x"),
    )
    .await
    .expect("a write through pghalo hangs while a standby is detached")
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lab.start_node("node2").await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "node2 does not start: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // auto_failback: streaming again (its slot made again), it is
    // attached.
    let back = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| s.nodes[2].is_routable())
        .await;
    assert!(back.is_ok(), "{back:#?}");
    let after = read_spread(&client, &ports, "after node2 is back").await;
    assert!(after[2] > 0, "node2 got no reads back: {after:?}");
    let node2 = node_client(lab, "node2", "postgres").await;
    let caught_up: i64 = node2
        .query_one("SELECT count(*) FROM written_while_away", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(caught_up, 1);
    let events: Vec<String> = daemon
        .coordinator()
        .events()
        .into_iter()
        .map(|e| format!("{} / {}", e.what, e.reason))
        .collect();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(
        events[0].starts_with("detach node 2 / node2 failed"),
        "{events:#?}"
    );
    assert!(
        events[1].starts_with("replication slot node2 of node2 dropped"),
        "{events:#?}"
    );
    assert!(
        events[2].starts_with("attach node 2 / streams from node0 again (auto_failback)"),
        "{events:#?}"
    );

    // Detached by hand, a standby stays detached while it streams.
    let (ok, reply) = ctl_detach(&config, 2).await;
    assert!(ok, "{reply}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshot = daemon.cluster().snapshot();
    assert!(snapshot.nodes[2].detached, "{snapshot:#?}");
    daemon.stop();
}

/// `pghalo ctl detach N` through the control socket.
async fn ctl_detach(config: &common::ProxyConfig, node: usize) -> (bool, String) {
    let socket = config.path().with_file_name("pghalo.ctl");
    let reply = pghalo::admin::ctl::send(&socket, &pghalo::admin::ctl::CtlRequest::Detach { node })
        .await
        .unwrap();
    (reply.ok, reply.text)
}

/// `pghalo ctl attach N` through the control socket.
async fn ctl_attach(config: &common::ProxyConfig, node: usize) -> (bool, String) {
    let socket = config.path().with_file_name("pghalo.ctl");
    let reply = pghalo::admin::ctl::send(&socket, &pghalo::admin::ctl::CtlRequest::Attach { node })
        .await
        .unwrap();
    (reply.ok, reply.text)
}

/// Runs reads (simple protocol: nothing is sent in the background) until
/// one lands on `port`, so the session's server connection is there;
/// returns the pid of the backend that answered.
async fn settle_on(client: &tokio_postgres::Client, port: i32) -> i32 {
    for _ in 0..300 {
        let rows = client
            .simple_query("SELECT inet_server_port(), pg_backend_pid()")
            .await
            .unwrap();
        let Some(row) = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        }) else {
            panic!("no row: {rows:?}");
        };
        let at: i32 = row.get(0).and_then(|v| v.parse().ok()).unwrap();
        if at == port {
            return row.get(1).and_then(|v| v.parse().ok()).unwrap();
        }
    }
    panic!("no read landed on port {port}");
}

/// Attaches node2 again by hand and waits until it takes reads.
async fn attach_node2(config: &common::ProxyConfig, daemon: &Daemon) {
    let (ok, reply) = ctl_attach(config, 2).await;
    assert!(ok, "{reply}");
    let attached = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| s.nodes[2].is_routable())
        .await;
    assert!(attached.is_ok(), "{attached:#?}");
}

/// A session idle on a standby is not held there. Detached by hand, the
/// standby is left quietly and the next request runs elsewhere. Found down
/// while its backend still runs (here the postmaster and that backend
/// hang, as a dying server's backends do until they notice), even a
/// request that runs nothing (a driver's Parse and Describe) goes to a
/// node that is up, instead of waiting there or getting the backend's
/// last words.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_idle_on_a_lost_standby_moves_on() {
    trace();
    let test_lab = TestLab::build("failover-idle-standby", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    // node2 is detached by hand only, never for failing its checks.
    let (config, daemon) = common::start_failover_proxy_with(
        lab,
        "failover-idle-standby",
        "[load_balance]\nstatement_level_load_balance = true\n\n",
        "",
        "health_check_max_retries = 1000\n",
    )
    .await;
    let client = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    let node2 = i32::from(lab.node("node2").unwrap().port);
    let read = "SELECT inet_server_port()";
    let limit = Duration::from_secs(10);

    // The first request after the detach is larger than pghalo's first
    // read of an idle client: it arrives in pieces, and the session waits
    // for the whole of it before moving on. A simple Query is not even
    // attached to node2 again meanwhile: its postmaster hangs, so a
    // connection there would wait.
    let padded = format!("{read} /* {} */", "x".repeat(100_000));
    settle_on(&client, node2).await;
    let (ok, reply) = ctl_detach(&config, 2).await;
    assert!(ok, "{reply}");
    let postmaster = common::stop_process(postmaster_pid(lab, "node2"));
    // Shorter than pghalo's connect_timeout (10 s): a connection attempt
    // to the hung node2 would not give up in time.
    let rows = tokio::time::timeout(Duration::from_secs(5), client.simple_query(&padded))
        .await
        .expect("a Query arriving in pieces waits on node2 after its detach")
        .expect("a Query arriving in pieces after node2 was detached");
    let port = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row: {rows:?}"));
    assert_ne!(port, node2.to_string(), "a read reached the detached node2");
    drop(postmaster);
    attach_node2(&config, &daemon).await;
    settle_on(&client, node2).await;
    let (ok, reply) = ctl_detach(&config, 2).await;
    assert!(ok, "{reply}");
    let port: i32 = tokio::time::timeout(limit, client.query_one(padded.as_str(), &[]))
        .await
        .expect("a request arriving in pieces hangs after node2 was detached")
        .expect("a request arriving in pieces after node2 was detached")
        .get(0);
    assert_ne!(port, node2, "a read reached the detached node2");
    for i in 0..20 {
        let port: i32 = tokio::time::timeout(limit, client.query_one(read, &[]))
            .await
            .expect("a read hangs after node2 was detached")
            .unwrap_or_else(|e| panic!("read {i} after node2 was detached: {e:?}"))
            .get(0);
        assert_ne!(port, node2, "a read reached the detached node2");
    }
    attach_node2(&config, &daemon).await;

    let backend = settle_on(&client, node2).await;
    let postmaster = common::stop_process(postmaster_pid(lab, "node2"));
    let session_backend = common::stop_process(backend);
    let down = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes[2].status == pghalo::cluster::Status::Down
        })
        .await;
    assert!(down.is_ok(), "{down:#?}");
    let statement = tokio::time::timeout(limit, client.prepare(read))
        .await
        .expect("preparing a statement waits on the hung node2")
        .unwrap();
    let port: i32 = tokio::time::timeout(limit, client.query_one(&statement, &[]))
        .await
        .expect("a read hangs while node2 is down")
        .unwrap()
        .get(0);
    assert_ne!(port, node2, "a read reached node2 while it was down");
    drop(session_backend);
    drop(postmaster);
    daemon.stop();
}

/// A fresh lab with pghalo balancing each statement in front of it,
/// trusting a raw client, and such a client logged in; node2's port.
async fn raw_session(
    tag: &str,
) -> (
    TestLab,
    common::ProxyConfig,
    Daemon,
    common::RawClient,
    String,
) {
    trace();
    let test_lab = TestLab::build(tag, |_| {});
    let (config, daemon) = common::trusting_balanced_proxy(&test_lab.lab, tag).await;
    let node2 = test_lab.lab.node("node2").unwrap().port.to_string();
    let client = common::RawClient::login(config.port).await;
    (test_lab, config, daemon, client, node2)
}

/// A session whose next request is still arriving when its idle
/// standby's connection ends (here its backend is terminated) goes on:
/// nothing of the request was sent there, so it runs where it is planned
/// once whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_still_arriving_when_its_standby_connection_ends_moves_on() {
    let (test_lab, _config, daemon, mut client, node2) = raw_session("failover-arriving").await;
    let lab = &test_lab.lab;
    let row = client.read_until(|port| port == node2).await;
    let backend: i32 = row[1].parse().unwrap();

    let request = common::query_message("SELECT inet_server_port(), pg_backend_pid()");
    let (head, rest) = request.split_at(10);
    client.send(head).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let direct = node_client(lab, "node2", "postgres").await;
    let ended: bool = direct
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    // Its FATAL is sent before it exits: once it is gone, pghalo has it.
    let gone = async {
        loop {
            let left: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&backend],
                )
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the terminated backend is still there after 10 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(rest).await;
    // Answered, on any node (node2 itself is up): not by the backend that
    // ended.
    let row = common::first_row(&client.until_ready().await);
    assert!(
        row[0] != node2 || row[1] != backend.to_string(),
        "answered by the terminated backend: {row:?}"
    );
    daemon.stop();
}

/// The unnamed statement lives on the connection that prepared it. A Bind
/// of it whose node was detached meanwhile (the session had moved on) ends
/// the session with 57P01: it must not run on the detached node, and
/// anywhere else it would bind another statement or none.
#[tokio::test(flavor = "multi_thread")]
async fn a_bind_of_an_unnamed_statement_on_a_detached_standby_ends_the_session() {
    let (_test_lab, config, daemon, mut client, node2) = raw_session("failover-unnamed").await;
    client.read_until(|port| port == node2).await;
    // Prepared where the session is (a segment that runs nothing stays).
    client
        .send(&common::prepare_unnamed("SELECT inet_server_port()"))
        .await;
    client.until_ready().await;
    // A read that moves the session off node2 (its connection parked).
    client.read_until(|port| port != node2).await;
    let (ok, reply) = ctl_detach(&config, 2).await;
    assert!(ok, "{reply}");
    // The request queued the decision; the relay reads the published view.
    let detached = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(10), |s| s.nodes[2].detached)
        .await;
    assert!(detached.is_ok(), "{detached:#?}");
    let mut execute = common::frontend_message(b'B', b"\0\0\0\0\0\0\0\0");
    execute.extend(common::frontend_message(b'E', b"\0\0\0\0\0"));
    execute.extend(common::frontend_message(b'S', b""));
    client.send(&execute).await;
    let mut reply = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let _ = client.0.read_to_end(&mut reply).await;
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the session neither ended nor answered");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        reply.first() == Some(&b'E') && text.contains("57P01") && text.contains("unnamed"),
        "{text:?}"
    );
    daemon.stop();
}

/// pgpool's failover_command and follow_primary_command: placeholders
/// expanded; a command that fails (exit 3, garbage printed) changes
/// nothing and is reported, and the failover is tried again; pghalo then
/// confirms the promotion and the streaming itself.
#[tokio::test(flavor = "multi_thread")]
async fn failover_commands_run_with_pgpools_placeholders() {
    trace();
    let test_lab = TestLab::build("failover-command", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    // In the lab's directory: removed with it.
    let scripts = lab.dir().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let pgpass = lab.dir().join("pgpass");
    let psql = format!(
        "PGPASSFILE={} psql -U postgres -d postgres -Atq",
        pgpass.display()
    );
    let promote = scripts.join("promote.sh");
    common::write_file(
        &promote,
        &format!(
            "n=$(cat {dir}/calls 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dir}/calls\n\
             if [ $n -eq 1 ]; then printf 'garbage \\001\\377\\n'; exit 3; fi\n\
             echo \"$@\" > {dir}/promote.args\n\
             {psql} -h \"$5\" -p \"$6\" -c 'SELECT pg_promote()'\n",
            dir = scripts.display()
        ),
    );
    let follow = scripts.join("follow.sh");
    common::write_file(
        &follow,
        &format!(
            "echo \"$@\" >> {dir}/follow.args\n\
             slot=$({psql} -h \"$2\" -p \"$3\" -c 'SHOW primary_slot_name')\n\
             {psql} -h \"$4\" -p \"$5\" -c \"SELECT pg_create_physical_replication_slot('$slot')\"\n\
             conn=$({psql} -h \"$2\" -p \"$3\" -c 'SHOW primary_conninfo' | sed \"s/port=[0-9]*/port=$5/\")\n\
             echo \"ALTER SYSTEM SET primary_conninfo = :'conn'\" | {psql} -h \"$2\" -p \"$3\" -v conn=\"$conn\"\n\
             {psql} -h \"$2\" -p \"$3\" -c 'SELECT pg_reload_conf()'\n",
            dir = scripts.display()
        ),
    );
    let commands = format!(
        "failover_command = \"sh {} %d %h %p %m %H %r %P %N %S %%\"\nfollow_primary_command = \"sh {} %d %h %p %H %r\"\n",
        promote.display(),
        follow.display()
    );
    let (config, daemon) = start_failover_proxy(lab, "failover-command", "", &commands).await;
    pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap()
        .batch_execute("CREATE TABLE failover_probe (id int)")
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    signal_postmaster(lab, "node0", nix::sys::signal::Signal::SIGKILL);
    // The first run fails: reported, nothing promoted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = daemon.coordinator().events();
        if let Some(report) = events.iter().find(|e| e.epoch.is_none()) {
            assert!(
                report.reason.contains("exited with status 3") && report.reason.contains("garbage"),
                "{report:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report of the failed command: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in ["node1", "node2"] {
        let in_recovery: bool = node_client(lab, name, "postgres")
            .await
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            in_recovery,
            "{name} was promoted although the command failed"
        );
    }
    // Tried again (after a pause): node1 (equally advanced: the lowest id)
    // is promoted by the command, node2 follows it by the other.
    let promoted = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| s.primary == Some(NodeId(1)))
        .await;
    assert!(promoted.is_ok(), "{promoted:#?}");
    let port = |name: &str| lab.node(name).unwrap().port;
    let args = std::fs::read_to_string(scripts.join("promote.args")).unwrap();
    assert_eq!(
        args.trim(),
        format!(
            "0 127.0.0.1 {} 1 127.0.0.1 {} 0 127.0.0.1 {} %",
            port("node0"),
            port("node1"),
            port("node0")
        )
    );
    let streaming = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.nodes[2]
                .replication
                .as_ref()
                .is_some_and(|r| r.state == "streaming")
        })
        .await;
    assert!(streaming.is_ok(), "{streaming:#?}");
    let follow_args = std::fs::read_to_string(scripts.join("follow.args")).unwrap();
    assert_eq!(
        follow_args.trim(),
        format!("2 127.0.0.1 {} 127.0.0.1 {}", port("node2"), port("node1"))
    );
    assert!(!daemon.cluster().snapshot().nodes[2].detached);
    write_through(config.port, &password, 7, Duration::from_secs(10)).await;
    daemon.stop();
}

/// failover_on_backend_shutdown: the primary shut down (fast) under an
/// idle session is noticed through that session's FATAL 57P01 and checked
/// at once, long before the next regular check (30 s here); the failure is
/// still confirmed before anything is promoted.
#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_seen_by_a_session_is_checked_at_once() {
    trace();
    let test_lab = TestLab::build("failover-shutdown", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let sections = format!(
        "[streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"{}\"\nsr_check_period = \"30s\"\nsr_check_timeout = \"2s\"\n\n{}",
        lab.secrets.pghalo,
        failover_section(lab, "")
    );
    let config = routing_config(lab, "failover-shutdown", &sections, &[]);
    let daemon = Daemon::start(&config.path()).await.unwrap();
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    // A session idle on the primary.
    let idle = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    idle.batch_execute("CREATE TABLE shutdown_probe (id int)")
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    let stopped = Instant::now();
    lab.stop_node("node0", pghalo::lab::StopMode::Fast)
        .await
        .unwrap();
    let promoted = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(15), |s| {
            s.primary.is_some_and(|p| p != NodeId(0))
        })
        .await;
    assert!(
        promoted.is_ok(),
        "no failover 15 s after the shutdown, with the next regular check 30 s away: {promoted:#?}"
    );
    eprintln!(
        "primary shut down; a new primary {:.2?} later",
        stopped.elapsed()
    );
    let events = daemon.coordinator().events();
    assert!(
        events[0].reason.contains("failed 3 checks in a row"),
        "{events:?}"
    );
    daemon.stop();
}

/// The rows of SHOW POOL_HEALTH_CHECK_STATS through pghalo, by column name.
async fn health_check_stats(
    client: &tokio_postgres::Client,
) -> Vec<std::collections::HashMap<String, String>> {
    client
        .simple_query("SHOW POOL_HEALTH_CHECK_STATS")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// pgpool's health_check_* family: wrong check credentials (a reload with
/// a bad health_check_password) are a configuration error that changes
/// nothing; a standby's own health_check_max_retries and retry delay decide
/// when it is detached, and SHOW POOL_HEALTH_CHECK_STATS counts the
/// retries.
#[tokio::test(flavor = "multi_thread")]
async fn health_checks_follow_pgpools_parameters_per_backend() {
    trace();
    let test_lab = TestLab::build("failover-health-check", |o| o.backends = 2);
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let (config, mut daemon) = common::start_failover_proxy_with(
        lab,
        "failover-health-check",
        "",
        "",
        "health_check_max_retries = 4\nhealth_check_retry_delay = \"300ms\"\n",
    )
    .await;
    let client = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE failover_probe (id int)")
        .await
        .unwrap();

    // Every check now refused at login: reported, and nothing else.
    let good = std::fs::read_to_string(config.path()).unwrap();
    std::fs::write(
        config.path(),
        format!("{good}\n[health_check]\nhealth_check_password = \"TEXTwrong\"\n"),
    )
    .unwrap();
    let plan = daemon.reload().unwrap();
    assert!(!plan.needs_restart(), "{plan:?}");
    let refused = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(10), |s| {
            s.nodes.iter().all(|n| {
                n.last_error
                    .as_ref()
                    .is_some_and(|e| e.kind == pghalo::cluster::CheckErrorKind::Config)
            })
        })
        .await;
    assert!(refused.is_ok(), "{refused:#?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = daemon.cluster().snapshot();
    assert_eq!(snapshot.primary, Some(NodeId(0)), "{snapshot:#?}");
    for node in &snapshot.nodes {
        assert_eq!(node.status, pghalo::cluster::Status::Up, "{node:#?}");
        assert!(!node.detached, "{node:#?}");
        assert_eq!(node.checks.consecutive_failures, 0, "{node:#?}");
    }
    assert!(
        daemon.coordinator().events().is_empty(),
        "{:?}",
        daemon.coordinator().events()
    );
    write_through(config.port, &password, 1, Duration::from_secs(5)).await;

    std::fs::write(config.path(), &good).unwrap();
    daemon.reload().unwrap();
    let answering = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(10), |s| {
            s.nodes.iter().all(|n| n.last_error.is_none())
        })
        .await;
    assert!(answering.is_ok(), "{answering:#?}");

    // node1 has 4 retries 300 ms apart (the default is 2): it is detached
    // after its fifth failed check in a row, not its third.
    let killed = Instant::now();
    signal_postmaster(lab, "node1", nix::sys::signal::Signal::SIGKILL);
    let detached = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| s.nodes[1].detached)
        .await;
    assert!(detached.is_ok(), "{detached:#?}");
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(4 * 300),
        "detached {took:?} after the kill, before its 4 retries could run"
    );
    let events = daemon.coordinator().events();
    let failed: u32 = events[0]
        .reason
        .strip_prefix("node1 failed ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!(failed >= 5, "{events:?}");
    let stats = health_check_stats(&client).await;
    assert_eq!(stats[1]["max_retry_count"], "4", "{stats:?}");
    assert!(
        stats[1]["retry_count"].parse::<u64>().unwrap() >= 4,
        "{stats:?}"
    );
    assert!(
        stats[1]["fail_count"].parse::<u64>().unwrap() >= 5,
        "{stats:?}"
    );
    assert_eq!(stats[0]["retry_count"], "0", "{stats:?}");
    assert_eq!(daemon.cluster().snapshot().primary, Some(NodeId(0)));
    daemon.stop();
}

/// A primary with no connection slot left for the health check
/// (too_many_connections, 53300) is busy, not down: pgpool-II fails it
/// over, which leaves a second writable primary since the full one keeps
/// its sessions. pghalo keeps it, and writes go on once slots free up.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_out_of_connection_slots_is_not_failed_over() {
    trace();
    let test_lab = TestLab::build("failover-full", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let (config, daemon) = start_failover_proxy(lab, "failover-full", "", "").await;
    node_client(lab, "node0", "postgres")
        .await
        .batch_execute("CREATE TABLE failover_probe (id int)")
        .await
        .unwrap();
    let port = lab.node("node0").unwrap().port;
    let check_user = format!(
        "host=127.0.0.1 port={port} user=pghalo password={} dbname=postgres",
        lab.secrets.pghalo
    );
    // Superusers may take the reserved slots: fill the others with them,
    // until the check's (non-superuser) login is refused.
    let mut fillers = Vec::new();
    loop {
        match pg_connect(&check_user).await {
            Err(e)
                if e.as_db_error()
                    .is_some_and(|db| db.code().code() == "53300") =>
            {
                break;
            }
            Err(e) => panic!("the check user's login failed otherwise: {e}"),
            Ok(_) => {}
        }
        assert!(fillers.len() < 200, "max_connections never reached");
        fillers.push(node_client(lab, "node0", "postgres").await);
    }
    // Backends of refused or closed logins may still be leaving: two more
    // (in the superuser-reserved slots) keep the others full meanwhile.
    for _ in 0..2 {
        let info = conninfo_db(port, "postgres", &password, "postgres");
        if let Ok(client) = pg_connect(&info).await {
            fillers.push(client);
        }
    }
    let busy = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(10), |s| {
            s.nodes[0]
                .last_error
                .as_ref()
                .is_some_and(|e| e.kind == pghalo::cluster::CheckErrorKind::Busy)
        })
        .await;
    assert!(busy.is_ok(), "the checks never saw 53300: {busy:#?}");
    // Checks every 200 ms with 2 retries: a failover would have come by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshot = daemon.cluster().snapshot();
    assert_eq!(snapshot.primary, Some(NodeId(0)), "{snapshot:#?}");
    for name in ["node1", "node2"] {
        let in_recovery: bool = node_client(lab, name, "postgres")
            .await
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(in_recovery, "{name} was promoted beside a busy primary");
    }
    drop(fillers);
    write_through(config.port, &password, 1, Duration::from_secs(20)).await;
    assert_eq!(daemon.cluster().snapshot().primary, Some(NodeId(0)));
    daemon.stop();
}

/// A standby that accepts connections but never logs anyone in (its
/// postmaster stopped) while it still counts as up does not hold the
/// failover: it is passed over once the control connection's timeout runs
/// out, and the other standby is promoted.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_that_hangs_at_login_does_not_hold_the_failover() {
    trace();
    let test_lab = TestLab::build("failover-hung-standby", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    // node2 is checked once, then not for ten minutes: it stays "up".
    let (config, daemon) = common::start_failover_proxy_with(
        lab,
        "failover-hung-standby",
        "",
        "",
        "health_check_period = \"600s\"\n",
    )
    .await;
    node_client(lab, "node0", "postgres")
        .await
        .batch_execute("CREATE TABLE failover_probe (id int)")
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    let resume = stop_postmaster(lab, "node2");
    signal_postmaster(lab, "node0", nix::sys::signal::Signal::SIGKILL);

    let promoted = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| s.primary == Some(NodeId(1)))
        .await;
    assert!(
        promoted.is_ok(),
        "no failover past the hung standby: {promoted:#?}"
    );
    write_through(config.port, &password, 1, Duration::from_secs(10)).await;
    drop(resume);
    daemon.stop();
}

/// A promotion that outlives promote_timeout (here a failover_command
/// that promotes three seconds later, in the background) is not lost: a
/// retry never promotes a second standby beside it, and once the node is
/// out of recovery the other standby is pointed at it.
#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_that_finishes_late_is_carried_through() {
    trace();
    let test_lab = TestLab::build("failover-late", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    // In the lab's directory: removed with it.
    let scripts = lab.dir().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let promote = scripts.join("promote.sh");
    common::write_file(
        &promote,
        &format!(
            "( sleep 3; PGPASSFILE={} psql -U postgres -d postgres -Atq -h \"$1\" -p \"$2\" -c 'SELECT pg_promote()' ) >/dev/null 2>&1 &\n",
            lab.dir().join("pgpass").display()
        ),
    );
    let commands = format!(
        "failover_command = \"sh {} %H %r\"\npromote_timeout = \"1s\"\n",
        promote.display()
    );
    let (config, daemon) = start_failover_proxy(lab, "failover-late", "", &commands).await;
    node_client(lab, "node0", "postgres")
        .await
        .batch_execute("CREATE TABLE failover_probe (id int)")
        .await
        .unwrap();
    wait_for_replay(lab, Duration::from_secs(30)).await;

    signal_postmaster(lab, "node0", nix::sys::signal::Signal::SIGKILL);
    let node1_port = i32::from(lab.node("node1").unwrap().port);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let node2 = node_client(lab, "node2", "postgres").await;
        let in_recovery: bool = node2
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(in_recovery, "node2 was promoted beside node1");
        let source = node2
            .query_opt(
                "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                &[],
            )
            .await
            .unwrap()
            .and_then(|r| r.get::<_, Option<i32>>(0));
        if source == Some(node1_port) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node2 never followed node1: {:#?}",
            daemon.cluster().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(daemon.cluster().snapshot().primary, Some(NodeId(1)));
    let retired = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(10), |s| s.nodes[0].detached)
        .await;
    assert!(
        retired.is_ok(),
        "the failed primary is not detached: {retired:#?}"
    );
    write_through(config.port, &password, 1, Duration::from_secs(10)).await;
    daemon.stop();
}

/// failover_on_backend_error = false: a read planned for a standby that
/// refuses connections, while the checks still count it up, goes to the
/// primary at once instead of being planned for that standby again and
/// again until its next regular check (here a minute away).
#[tokio::test(flavor = "multi_thread")]
async fn without_checks_on_errors_a_lost_standbys_read_goes_to_the_primary() {
    trace();
    let test_lab = TestLab::build("failover-no-error-checks", |_| {});
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let sections = format!(
        "[load_balance]\nstatement_level_load_balance = true\n\n{}\n{}",
        common::monitor_section(lab, ""),
        failover_section(lab, "failover_on_backend_error = false\n")
    );
    let config = routing_config(lab, "failover-no-error-checks", &sections, &[0.0, 0.0, 1.0]);
    let text = std::fs::read_to_string(config.path()).unwrap();
    common::write_file(
        &config.path(),
        &format!("{text}health_check_period = \"60s\"\n"),
    );
    let daemon = Daemon::start(&config.path()).await.unwrap();
    wait_for_topology(&daemon, Duration::from_secs(30)).await;
    let info = conninfo(config.port, "postgres", &password);
    let port = |name: &str| i32::from(lab.node(name).unwrap().port);
    let read = "SELECT inet_server_port()";
    let before = pg_connect(&info).await.unwrap();
    let first: i32 = before.query_one(read, &[]).await.unwrap().get(0);
    assert_eq!(first, port("node2"), "reads go to node2 by weight");
    drop(before);

    signal_postmaster(lab, "node2", nix::sys::signal::Signal::SIGKILL);
    // Its backends leave as they see the postmaster gone; its pooled
    // connections with them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = pg_connect(&info).await.unwrap();
    for _ in 0..3 {
        let served = tokio::time::timeout(Duration::from_secs(10), client.query_one(read, &[]))
            .await
            .expect("the read was sent back to the lost standby over and over")
            .unwrap();
        assert_eq!(served.get::<_, i32>(0), port("node0"));
    }
    daemon.stop();
}
