//! No acknowledged commit is lost when the primary of a synchronous lab
//! dies under load (issue 5): concurrent clients insert unique ids through
//! pghalo and keep each acknowledged one; the primary is killed mid-load;
//! after the failover every acknowledged id is on the new primary, and no
//! write was acknowledged by the old primary after one was acknowledged by
//! the new (never two primaries at once). One standby is cut off from the
//! WAL stream beforehand, so the two are unequally advanced: the other,
//! the most advanced, must be promoted. The cut-off standby alternates
//! between runs so that the lowest-id tie rule cannot pass for the right
//! choice. `PGHALO_ZERO_LOSS_RUNS` sets the number of runs (default 10).

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    TestLab, conninfo, cut_off_from_wal, node_client, pg_connect, signal_postmaster,
    start_failover_proxy, trace,
};
use pghalo::cluster::NodeId;

const WRITERS: i64 = 6;

/// One acknowledged insert.
#[derive(Clone, Copy, Debug)]
struct Ack {
    id: i64,
    /// The port of the server that acknowledged it.
    port: i32,
    at: Instant,
}

/// Inserts ids `base + 1, base + 2, ...` through pghalo until `stop`,
/// reconnecting after any error; returns every acknowledged one. A write
/// whose outcome is unknown (an error) is not counted, and never retried
/// with the same id.
async fn writer(
    port: u16,
    password: String,
    base: i64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut next = base;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match pg_connect(&conninfo(port, "postgres", &password)).await {
                Ok(c) => client = Some(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        next += 1;
        let id = next;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = c.query_one("INSERT INTO acked (id) VALUES ($1) RETURNING port", &params);
        match tokio::time::timeout(Duration::from_secs(30), insert).await {
            Ok(Ok(row)) => {
                acks.push(Ack {
                    id: next,
                    port: row.get(0),
                    at: Instant::now(),
                });
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => panic!("an insert through pghalo hangs for 30 s"),
        }
    }
    acks
}

#[tokio::test(flavor = "multi_thread")]
async fn no_acknowledged_commit_is_lost_when_the_primary_dies() {
    trace();
    let runs: usize = std::env::var("PGHALO_ZERO_LOSS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut times = Vec::new();
    for run in 0..runs {
        times.push(one_run(run).await);
    }
    eprintln!(
        "zero loss held in {runs} runs; first write on the new primary after the kill: {:?}",
        times
    );
}

async fn one_run(run: usize) -> Duration {
    let test_lab = TestLab::build(&format!("zero-loss-{run}"), |opts| opts.sync = true);
    let lab = &test_lab.lab;
    let password = lab.secrets.postgres.clone();
    let (config, daemon) = start_failover_proxy(lab, &format!("zero-loss-{run}"), "", "").await;
    let port_of = |name: &str| i32::from(lab.node(name).unwrap().port);

    let setup = pg_connect(&conninfo(config.port, "postgres", &password))
        .await
        .unwrap();
    setup
        .batch_execute(
            "CREATE TABLE acked (id bigint PRIMARY KEY, \
             port int NOT NULL DEFAULT current_setting('port')::int)",
        )
        .await
        .unwrap();
    drop(setup);

    // Every commit is acknowledged by the standby left streaming alone.
    let (cut, expected) = if run.is_multiple_of(2) {
        ("node1", NodeId(2))
    } else {
        ("node2", NodeId(1))
    };
    cut_off_from_wal(lab, cut).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                config.port,
                password.clone(),
                w * 1_000_000_000,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    // Mid-load: commits acknowledged since the cut (so the standby left
    // streaming is strictly ahead), more in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < 50 {
        assert!(
            Instant::now() < deadline,
            "run {run}: no load through pghalo"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    signal_postmaster(lab, "node0", nix::sys::signal::Signal::SIGKILL);

    // Load goes on until the new primary has acknowledged writes.
    let promoted = daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(30), |s| {
            s.primary.is_some_and(|p| p != NodeId(0))
        })
        .await
        .unwrap_or_else(|s| panic!("run {run}: no failover: {s:#?}"));
    let new = promoted.primary.unwrap();
    assert_eq!(
        new, expected,
        "run {run}: the most advanced standby is promoted ({cut} was cut off)"
    );
    let new_name = format!("node{}", new.index());
    let new_probe = node_client(lab, &new_name, "postgres").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_new: i64 = new_probe
            .query_one(
                "SELECT count(*) FROM acked WHERE port = $1",
                &[&port_of(&new_name)],
            )
            .await
            .unwrap()
            .get(0);
        if on_new >= 3 * WRITERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run {run}: the new primary took {on_new} writes in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.await.unwrap());
    }

    let on_new_primary: HashSet<i64> = new_probe
        .query("SELECT id FROM acked", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&Ack> = acks
        .iter()
        .filter(|a| !on_new_primary.contains(&a.id))
        .collect();
    assert!(
        lost.is_empty(),
        "run {run}: {} acknowledged commits are not on the new primary: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let by_old: Vec<&Ack> = acks.iter().filter(|a| a.port == port_of("node0")).collect();
    let by_new: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.port == port_of(&new_name))
        .collect();
    assert!(
        !by_old.is_empty() && !by_new.is_empty(),
        "run {run}: {} acknowledged by the old primary, {} by the new",
        by_old.len(),
        by_new.len()
    );
    assert_eq!(
        by_old.len() + by_new.len(),
        acks.len(),
        "run {run}: a write was acknowledged by neither primary"
    );
    let last_old = by_old.iter().map(|a| a.at).max().unwrap();
    let first_new = by_new.iter().map(|a| a.at).min().unwrap();
    assert!(
        last_old < first_new,
        "run {run}: the old primary acknowledged a write after the new one had"
    );
    // Exactly one node left recovery.
    let other = if new == NodeId(1) { "node2" } else { "node1" };
    let in_recovery: bool = node_client(lab, other, "postgres")
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "run {run}: {other} is writable too");
    eprintln!(
        "run {run}: {} acknowledged ({} by node0, {} by {new_name}), none lost; first write on {new_name} {:.2?} after the kill",
        acks.len(),
        by_old.len(),
        by_new.len(),
        first_new.duration_since(killed)
    );
    daemon.stop();
    first_new.duration_since(killed)
}
