//! The replication monitor and the node table against real PostgreSQL:
//! roles found, lag measured, nodes going down and up, a standby promoted
//! behind pghalo's back, a node that never answers. The monitor and the
//! cluster are built in-process from a `Config`, as the daemon builds them.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pghalo::cluster::{
    CheckErrorKind, Cluster, ClusterSnapshot, ClusterView, Epoch, FalsePrimary, LagLimits, Lsn,
    NodeId, Observation, Probe, Role, Status,
};
use pghalo::config::Config;
use pghalo::config::passwd::PasswordFile;
use pghalo::health::{MonitorSettings, ReplicationMonitor};
use pghalo::lab::{Lab, StopMode};
use tokio::sync::watch;

use common::{TestLab, shared_lab};

const SETTLE: Duration = Duration::from_secs(20);

/// A cluster table fed by a replication monitor, as `Daemon::start` wires
/// them; dropping it stops both.
struct Monitored {
    cluster: Cluster,
    _monitor: ReplicationMonitor,
    _shutdown: watch::Sender<bool>,
}

impl Monitored {
    fn view(&self) -> ClusterView {
        self.cluster.view()
    }

    async fn wait_for(
        &self,
        what: &str,
        condition: impl FnMut(&ClusterSnapshot) -> bool,
    ) -> Arc<ClusterSnapshot> {
        match self.cluster.view().wait_for(SETTLE, condition).await {
            Ok(snapshot) => snapshot,
            Err(last) => panic!("{what}: not within {SETTLE:?}; last snapshot: {last:#?}"),
        }
    }
}

/// The lab's nodes (and `extra` backends, as `(name, port)`), checked as
/// the lab's `pghalo` user every 200 ms.
fn config(lab: &Lab, extra: &[(&str, u16)], timeout: &str) -> Config {
    let mut text = format!(
        "[auth]\npool_passwd = \"\"\n\
         [streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"TEXT{}\"\n\
         sr_check_period = \"200ms\"\nsr_check_timeout = \"{timeout}\"\n",
        lab.secrets.pghalo
    );
    let nodes = lab.manifest.nodes.iter().map(|n| (n.name.as_str(), n.port));
    for (name, port) in nodes.chain(extra.iter().copied()) {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n"
        ));
    }
    Config::from_str_with_name(&text, "/cluster-monitor-test/pghalo.toml").expect("test config")
}

fn start(config: &Config) -> Monitored {
    let cluster = Cluster::start(&config.backends);
    let settings =
        MonitorSettings::from_config(config, &PasswordFile::default()).expect("monitor settings");
    let (shutdown, watcher) = watch::channel(false);
    let monitor = ReplicationMonitor::start(settings, cluster.observer(), watcher);
    Monitored {
        cluster,
        _monitor: monitor,
        _shutdown: shutdown,
    }
}

fn node<'a>(s: &'a ClusterSnapshot, name: &str) -> &'a pghalo::cluster::NodeState {
    s.node_named(name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// node0 primary, every other node a standby, all up.
fn settled(s: &ClusterSnapshot) -> bool {
    s.primary == Some(NodeId(0))
        && s.nodes.iter().all(|n| n.status == Status::Up)
        && s.nodes.iter().skip(1).all(|n| n.role == Role::Standby)
}

/// Every snapshot a view publishes (those published in quick succession
/// may be seen as one, which the checks allow).
fn record(view: ClusterView) -> Arc<Mutex<Vec<Arc<ClusterSnapshot>>>> {
    let history = Arc::new(Mutex::new(Vec::new()));
    let sink = history.clone();
    tokio::spawn(async move {
        let mut view = view;
        loop {
            let snapshot = view.snapshot();
            {
                let mut seen = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // A publication between the subscription and the first
                // read is announced once more: keep each generation once.
                if seen.last().is_none_or(|last: &Arc<ClusterSnapshot>| {
                    last.generation != snapshot.generation
                }) {
                    seen.push(snapshot);
                }
            }
            if !view.changed().await {
                break;
            }
        }
    });
    history
}

/// The invariants of a run: never two primaries; `primary` names the one
/// node whose role is primary; the epoch never goes back, rises with every
/// change of roles and only then.
fn check_history(history: &[Arc<ClusterSnapshot>]) {
    assert!(!history.is_empty());
    for s in history {
        let primaries: Vec<NodeId> = s
            .nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .map(|n| n.id)
            .collect();
        assert!(primaries.len() <= 1, "two primaries: {s:#?}");
        assert_eq!(primaries.first().copied(), s.primary, "{s:#?}");
    }
    for pair in history.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.generation > a.generation);
        let roles = |s: &ClusterSnapshot| s.nodes.iter().map(|n| n.role).collect::<Vec<_>>();
        if roles(a) == roles(b) {
            assert_eq!(a.epoch, b.epoch, "epoch changed without a role change");
        } else {
            assert!(
                b.epoch > a.epoch,
                "roles changed without a new epoch: {a:#?} -> {b:#?}"
            );
            for n in &b.nodes {
                if a.nodes[n.id.index()].role != n.role {
                    // The recorder may miss publications between a and b:
                    // the change happened at one of their epochs.
                    assert!(
                        n.role_epoch > a.epoch && n.role_epoch <= b.epoch,
                        "node {} changed role at epoch {} outside ({}, {}]",
                        n.id,
                        n.role_epoch,
                        a.epoch,
                        b.epoch
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_the_primary_and_the_standbys() {
    let lab = &shared_lab().lab;
    let m = start(&config(lab, &[], "5s"));
    let s = m
        .wait_for("node0 primary, node1 and node2 standbys", settled)
        .await;
    assert!(s.epoch > Epoch::ZERO);
    let primary = node(&s, "node0");
    assert_eq!(primary.in_recovery, Some(false));
    assert_eq!(primary.timeline, Some(1));
    assert!(primary.lsn.current.is_some());
    assert_eq!(primary.lag_bytes, Some(0));
    assert!(primary.server_version.is_some_and(|v| v >= 130_000));
    assert!(primary.last_error.is_none() && primary.last_check.is_some());
    for name in ["node1", "node2"] {
        let standby = node(&s, name);
        assert_eq!(standby.in_recovery, Some(true));
        assert_eq!(standby.timeline, Some(1), "{standby:#?}");
        assert!(standby.lsn.receive.is_some() && standby.lsn.replay.is_some());
        assert!(standby.lag_bytes.is_some() && standby.lag_time.is_some());
        assert!(standby.is_routable());
    }
    check_history(&[s]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_makes_lag_grow_and_resuming_brings_it_back() {
    const THRESHOLD: u64 = 4 << 20;
    let lab = &shared_lab().lab;
    let m = start(&config(lab, &[], "5s"));
    m.wait_for("settled", settled).await;
    let primary = lab.connect("node0").await.unwrap();
    let standby = lab.connect("node1").await.unwrap();
    // A commit replayed before the pause, so the standby has a last
    // replayed transaction to measure its delay from.
    primary
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cluster_monitor_lag (id int, pad text); \
             INSERT INTO cluster_monitor_lag VALUES (0, 'before')",
        )
        .await
        .unwrap();
    let commit: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let commit: Lsn = commit.parse().unwrap();
    m.wait_for("node1 replayed the commit", |s| {
        node(s, "node1").lsn.replay.is_some_and(|r| r >= commit)
    })
    .await;

    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    // Only panics of the assertions are caught, to resume replay first.
    let body = std::panic::AssertUnwindSafe(async {
        primary
            .batch_execute(
                "INSERT INTO cluster_monitor_lag \
                 SELECT g, repeat('x', 200) FROM generate_series(1, 60000) g",
            )
            .await
            .unwrap();
        let limits = LagLimits {
            bytes: Some(THRESHOLD),
            time: None,
        };
        // Both lags grow, once the standby has received WAL it does not
        // replay (an answer from before the WAL arrived shows the bytes the
        // primary wrote but no delay yet, rightly).
        let s = m
            .wait_for("node1 past the threshold", |s| {
                let n = node(s, "node1");
                n.is_behind(&limits) && n.lag_time.is_some_and(|t| t > Duration::ZERO)
            })
            .await;
        let lagging = node(&s, "node1");
        assert!(lagging.lag_bytes.unwrap() > THRESHOLD, "{lagging:#?}");
        assert!(lagging.lsn.receive > lagging.lsn.replay, "{lagging:#?}");
        // node2 replays as usual.
        m.wait_for("node2 under the threshold", |s| {
            !node(s, "node2").is_behind(&limits)
        })
        .await;
        assert!(s.nodes.iter().all(|n| n.status == Status::Up));
    })
    .catch_unwind()
    .await;
    // Resumed whatever happened, so the shared lab's other tests get a
    // standby that replays.
    standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    if let Err(panic) = body {
        std::panic::resume_unwind(panic);
    }
    let s = m
        .wait_for("node1 caught up again", |s| {
            let n = node(s, "node1");
            n.lag_bytes.is_some_and(|lag| lag < 64 * 1024) && n.lag_time == Some(Duration::ZERO)
        })
        .await;
    assert!(!node(&s, "node1").is_behind(&LagLimits {
        bytes: Some(THRESHOLD),
        time: Some(Duration::from_secs(1)),
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_down_and_up_again() {
    let test_lab = TestLab::build("cluster-stop", |o| o.proxies = 0);
    let lab = &test_lab.lab;
    let m = start(&config(lab, &[], "5s"));
    let history = record(m.view());
    let before = m.wait_for("settled", settled).await;

    lab.stop_node("node2", StopMode::Fast).await.unwrap();
    let s = m
        .wait_for("node2 down", |s| node(s, "node2").status == Status::Down)
        .await;
    let down = node(&s, "node2");
    let error = down.last_error.as_ref().expect("a reason");
    assert!(
        matches!(
            error.kind,
            CheckErrorKind::Connect | CheckErrorKind::Closed | CheckErrorKind::Unavailable
        ),
        "{error}"
    );
    // Down is a status, not a role: the node stays a standby, its lag is
    // no longer known, and the others are untouched.
    assert_eq!(down.role, Role::Standby);
    assert_eq!(down.lag_bytes, None);
    assert!(!down.is_routable());
    assert_eq!(s.primary, Some(NodeId(0)));
    assert_eq!(node(&s, "node1").status, Status::Up);

    lab.start_node("node2").await.unwrap();
    let s = m.wait_for("node2 up again", settled).await;
    assert!(node(&s, "node2").last_error.is_none());
    assert_eq!(s.epoch, before.epoch, "no role changed");
    check_history(&history.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_promoted_out_from_under_pghalo_never_makes_two_primaries() {
    let test_lab = TestLab::build("cluster-promote", |o| {
        o.backends = 2;
        o.proxies = 0;
    });
    let lab = &test_lab.lab;
    let m = start(&config(lab, &[], "5s"));
    let history = record(m.view());
    m.wait_for("settled", settled).await;

    // Someone promotes node1 while node0 still runs: two servers now
    // accept writes. pghalo keeps the primary it knew.
    let node1 = lab.connect("node1").await.unwrap();
    node1.batch_execute("SELECT pg_promote()").await.unwrap();
    let s = m
        .wait_for("node1 a false primary", |s| {
            matches!(node(s, "node1").role, Role::FalsePrimary(_))
        })
        .await;
    assert_eq!(s.primary, Some(NodeId(0)));
    let false_primary = node(&s, "node1");
    assert_eq!(
        false_primary.role,
        Role::FalsePrimary(FalsePrimary::OtherPrimary(NodeId(0)))
    );
    assert_eq!(false_primary.in_recovery, Some(false));
    assert_eq!(false_primary.timeline, Some(2));
    assert!(!false_primary.is_routable());
    // It stays so while node0 answers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = m.cluster.snapshot();
    assert_eq!(s.primary, Some(NodeId(0)));
    assert!(matches!(node(&s, "node1").role, Role::FalsePrimary(_)));

    // The old primary goes away: the node promoted after it (timeline 2)
    // is the primary now, and node0's role is no longer known.
    lab.stop_node("node0", StopMode::Fast).await.unwrap();
    let s = m
        .wait_for("node1 the primary", |s| s.primary == Some(NodeId(1)))
        .await;
    assert_eq!(node(&s, "node1").role, Role::Primary);
    assert_eq!(node(&s, "node0").role, Role::Unknown);
    assert_eq!(node(&s, "node0").status, Status::Down);

    // node0 comes back, still a primary on timeline 1: fenced off as a
    // false primary, never routed to.
    lab.start_node("node0").await.unwrap();
    let s = m
        .wait_for("node0 a false primary", |s| {
            node(s, "node0").status == Status::Up
                && matches!(node(s, "node0").role, Role::FalsePrimary(_))
        })
        .await;
    assert_eq!(s.primary, Some(NodeId(1)));
    assert_eq!(
        node(&s, "node0").role,
        Role::FalsePrimary(FalsePrimary::OtherPrimary(NodeId(1)))
    );
    assert_eq!(node(&s, "node0").timeline, Some(1));

    let history = history.lock().unwrap().clone();
    check_history(&history);
    // Four role changes at least: found, node1 false, node1 primary,
    // node0 false.
    assert!(s.epoch >= Epoch(4), "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_strictly_increase_on_every_role_change() {
    // The table's rules, driven through the public seam with made-up
    // answers: start, a promotion behind a live primary, the old primary
    // down, back, then rewound into a standby.
    let config = Config::from_str_with_name(
        "[[backend]]\nhost = \"10.0.0.1\"\nport = 5432\n[[backend]]\nhost = \"10.0.0.2\"\nport = 5432\n",
        "/t.toml",
    )
    .unwrap();
    let cluster = Cluster::start(&config.backends);
    let history = record(cluster.view());
    let observer = cluster.observer();
    let answer = |node: usize, in_recovery: bool, timeline: u32| Observation {
        node: NodeId(node),
        at: std::time::SystemTime::now(),
        elapsed: Duration::ZERO,
        retry: 0,
        outcome: Ok(Probe {
            in_recovery,
            timeline: Some(timeline),
            ..Probe::default()
        }),
    };
    let down = |node: usize| Observation {
        node: NodeId(node),
        at: std::time::SystemTime::now(),
        elapsed: Duration::ZERO,
        retry: 0,
        outcome: Err(pghalo::cluster::CheckError::new(
            CheckErrorKind::Connect,
            "refused",
        )),
    };
    let steps: Vec<(Vec<Observation>, Option<usize>, u64)> = vec![
        (vec![answer(0, false, 1), answer(1, true, 1)], Some(0), 1),
        (vec![answer(1, false, 2)], Some(0), 2),
        (vec![answer(0, false, 1)], Some(0), 2),
        (vec![down(0)], Some(1), 3),
        (vec![answer(0, false, 1)], Some(1), 4),
        (vec![answer(0, true, 2)], Some(1), 5),
    ];
    let view = cluster.view();
    for (observations, primary, epoch) in steps {
        for observation in observations {
            observer.send(observation).await.unwrap();
        }
        let s = view
            .wait_for(SETTLE, |s| {
                s.primary == primary.map(NodeId) && s.epoch == Epoch(epoch)
            })
            .await
            .unwrap_or_else(|last| panic!("expected epoch {epoch}: {last:#?}"));
        assert!(s.nodes.iter().filter(|n| n.role == Role::Primary).count() <= 1);
    }
    // Let the recorder see the last publication.
    tokio::time::sleep(Duration::from_millis(100)).await;
    check_history(&history.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_down_without_delaying_the_others() {
    let lab = &shared_lab().lab;
    // Accepts TCP (the kernel completes the handshake) but never reads.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let m = start(&config(lab, &[("hung", port)], "2s"));

    // Well before the hung node's timeout, the others are up and checked
    // several times over.
    let s = m
        .wait_for("the standbys up", |s| {
            node(s, "node1").status == Status::Up && node(s, "node2").status == Status::Up
        })
        .await;
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    assert_eq!(node(&s, "hung").status, Status::Waiting);
    // The primary waits until every node has been heard of once.
    assert_eq!(s.primary, None);

    let s = m
        .wait_for("the hung node down", |s| {
            node(s, "hung").status == Status::Down
        })
        .await;
    let hung_node = node(&s, "hung");
    let error = hung_node.last_error.as_ref().unwrap();
    assert_eq!(error.kind, CheckErrorKind::Timeout, "{error}");
    let took = hung_node.last_check_duration.unwrap();
    assert!(took >= timeout && took < timeout * 2, "{took:?}");
    assert_eq!(s.primary, Some(NodeId(0)));

    // While the hung node holds each of its checks for 2 s, node0 is
    // checked every 200 ms.
    let mut seen = std::collections::BTreeSet::new();
    let window = Instant::now();
    while window.elapsed() < timeout {
        let s = m.cluster.snapshot();
        seen.extend(node(&s, "node0").last_check);
        assert_eq!(node(&s, "node0").status, Status::Up);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.len() >= 6, "node0 checked {} times in 2 s", seen.len());
    drop(hung);
}
