//! Pool and client limits: min_idle, idle_timeout, client_idle_limit, and a
//! reload that changes what it can without dropping anyone.

#![allow(clippy::unwrap_used)] // tests may panic on what they did not expect

mod common;

use std::time::Duration;

use common::{ProxyConfig, conninfo, eventually, pg_connect, shared_lab};
use pghalo::daemon::Daemon;

const SCRAM_ALL: &str = "host all all 127.0.0.1/32 scram-sha-256\n";

fn password() -> String {
    shared_lab().lab.secrets.postgres.clone()
}

/// Server connections of this test's pool, by application_name marker.
async fn server_connections(marker: &str) -> i64 {
    let primary = shared_lab().lab.connect("node0").await.unwrap();
    primary
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = $1",
            &[&marker],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn min_idle_opens_connections_and_idle_timeout_closes_them() {
    let lab = &shared_lab().lab;
    // A database of its own, so counting its connections counts this pool.
    let primary = lab.connect("node0").await.unwrap();
    primary
        .batch_execute("CREATE DATABASE limits_minidle")
        .await
        .unwrap();
    let config = ProxyConfig::write(
        lab,
        "minidle",
        "",
        "min_idle = 3\nmax_pool_size = 5\nidle_timeout = \"3s\"",
        SCRAM_ALL,
        None,
    );
    let _daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &password())
        .replace("dbname=postgres", "dbname=limits_minidle");
    let client = pg_connect(&info).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);
    let mut seen = 0;
    let filled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            seen = server_connections("limits_minidle").await;
            if seen == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        filled.is_ok(),
        "min_idle = 3 should keep 3 server connections open, saw {seen}"
    );
    // idle_timeout closes idle connections, and min_idle opens fresh ones:
    // the count stays at 3 but the server processes change.
    let pids = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    };
    let before = pids(
        primary
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'limits_minidle' ORDER BY pid",
                &[],
            )
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = pids(
        primary
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'limits_minidle' ORDER BY pid",
                &[],
            )
            .await
            .unwrap(),
    );
    assert_eq!(after.len(), 3);
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "idle connections past idle_timeout must be replaced: {before:?} {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_idle_limit_disconnects_idle_clients_only() {
    let lab = &shared_lab().lab;
    let config = ProxyConfig::write(
        lab,
        "idlelimit",
        "client_idle_limit = \"1s\"",
        "",
        SCRAM_ALL,
        None,
    );
    let _daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &password());
    let busy = pg_connect(&info).await.unwrap();
    // A statement running longer than the limit is not idleness.
    busy.batch_execute("SELECT pg_sleep(1.5)").await.unwrap();
    let idle = pg_connect(&info).await.unwrap();
    idle.batch_execute("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        idle.batch_execute("SELECT 1").await.is_err(),
        "an idle client past client_idle_limit is disconnected"
    );
    assert!(eventually(Duration::from_secs(5), || idle.is_closed()));
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_new_files_without_dropping_clients() {
    let lab = &shared_lab().lab;
    let config = ProxyConfig::write(lab, "reload", "", "max_pool_size = 2", SCRAM_ALL, None);
    let mut daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &password());
    let staying = pg_connect(&info).await.unwrap();
    staying.batch_execute("BEGIN; CREATE TABLE IF NOT EXISTS reload_probe (x int); INSERT INTO reload_probe VALUES (1)").await.unwrap();

    // The hba now rejects postgres; the pool grows; the port changes (which
    // needs a restart, so it is reported and not applied).
    std::fs::write(
        config.dir.join("pool_hba.conf"),
        "host all postgres 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(config.path()).unwrap();
    let text = text
        .replace("max_pool_size = 2", "max_pool_size = 4")
        .replace(&format!("port = {}", config.port), "port = 1");
    std::fs::write(config.path(), text).unwrap();
    let plan = daemon.reload().unwrap();
    assert!(
        plan.live.iter().any(|c| c.contains("max_pool_size")),
        "{plan:?}"
    );
    assert!(
        plan.restart_required.iter().any(|c| c.contains("port")),
        "{plan:?}"
    );

    // The connected client's transaction goes on untouched.
    staying
        .batch_execute("INSERT INTO reload_probe VALUES (2); COMMIT")
        .await
        .unwrap();
    let n: i64 = staying
        .query_one("SELECT count(*) FROM reload_probe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // New clients meet the new hba, on the old port.
    let refused = pg_connect(&info).await.err().unwrap();
    assert_eq!(refused.code().unwrap().code(), "28000");

    // A broken file is refused whole and nothing changes.
    std::fs::write(
        config.dir.join("pool_hba.conf"),
        "host all all nonsense trust\n",
    )
    .unwrap();
    assert!(daemon.reload().is_err());
    let still_refused = pg_connect(&info).await.err().unwrap();
    assert_eq!(still_refused.code().unwrap().code(), "28000");
}

/// `pghalo reload` and `pghalo stop`, pgpool's commands, against a real
/// daemon process found through its pid file.
#[tokio::test(flavor = "multi_thread")]
async fn reload_and_stop_commands_reach_the_running_daemon() {
    let lab = shared_lab();
    let proxy = lab.lab.proxy("pghalo0").unwrap();
    let dir = lab.dir().join("pghalo0");
    let config = dir.join("pghalo.toml");
    let info = conninfo(proxy.port, "pghalo", &lab.lab.secrets.pghalo);
    let before = pg_connect(&info).await.unwrap();
    before.batch_execute("SELECT 1").await.unwrap();

    std::fs::write(
        dir.join("pool_hba.conf"),
        "host all pghalo 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = common::pghalo(&["reload", "-c", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("asked pghalo"), "{stdout}");
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match pg_connect(&info).await {
                Err(e) if e.code().map(|c| c.code()) == Some("28000") => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the reloaded hba must reject the pghalo user"
    );
    before
        .batch_execute("SELECT 1")
        .await
        .expect("a reload must not drop connected clients");

    let pid: i32 = std::fs::read_to_string(dir.join("pghalo.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (ok, stdout, stderr) = common::pghalo(&["stop", "-c", config.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("stopped"), "{stdout}");
    assert!(!common::process_alive(pid));
    let (ok, _, stderr) = common::pghalo(&["reload", "-c", config.to_str().unwrap()]);
    assert!(!ok && stderr.contains("no pghalo is running"), "{stderr}");
}

/// Sessions run on several single-threaded workers; a server connection
/// opened on one and checked out on another moves its socket there, and
/// goes on working (the same server process answers).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_moves_to_the_worker_that_checks_it_out() {
    use pghalo::backend::{BackendCredentials, BackendTls, ServerAddr};
    use pghalo::pool::{PoolKey, PoolSettings, Pools};
    use pghalo::proxy::workers::SessionWorkers;
    use std::sync::Arc;

    let lab = &shared_lab().lab;
    let pools = Arc::new(Pools::new(PoolSettings::default()));
    let workers = SessionWorkers::start(2).unwrap();
    let key = PoolKey {
        node: 0,
        database: "postgres".into(),
        user: "postgres".into(),
    };
    let addr = ServerAddr {
        host: "127.0.0.1".into(),
        port: lab.node("node0").unwrap().port,
        tls: BackendTls::Disable,
    };
    let credentials = BackendCredentials::Password(password().into_bytes());
    // On worker `index`: check out, ask the server its pid, give it back.
    let use_on = |index: usize| {
        let (pools, key, addr, credentials) = (
            pools.clone(),
            key.clone(),
            addr.clone(),
            credentials.clone(),
        );
        let (done, result) = tokio::sync::oneshot::channel();
        workers.spawn_session(index, async move {
            let outcome = async {
                let mut pooled = pools.checkout(&key, &addr, &credentials).await?;
                let conn = pooled.get().ok_or("no connection")?;
                let home = conn.is_home();
                let pid = conn.query_value("SELECT pg_backend_pid()").await?;
                pooled.release(false).await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((home, pid))
            }
            .await
            .map_err(|e| e.to_string());
            let _ = done.send(outcome);
        });
        result
    };
    let (home, first) = use_on(0).await.unwrap().unwrap();
    assert!(
        home,
        "a new connection belongs to the worker that opened it"
    );
    assert_eq!(pools.counts(&key).0, 1, "one idle connection");
    let (home, second) = use_on(1).await.unwrap().unwrap();
    assert!(
        home,
        "the idle connection was not moved to the other worker"
    );
    assert_eq!(first, second, "the idle connection was not the one reused");
    let (home, third) = use_on(0).await.unwrap().unwrap();
    assert!(home && third == first, "and it moves back");
}

/// With several session workers, clients accepted by one worker are handed
/// to the others (their sockets move there) and are served as well as the
/// ones it keeps.
#[tokio::test(flavor = "multi_thread")]
async fn clients_spread_over_the_session_workers_are_all_served() {
    let lab = &shared_lab().lab;
    // listen_extra ends the [listen] section: a [daemon] one follows.
    let config = ProxyConfig::write(
        lab,
        "workers",
        "[daemon]\nworker_threads = 3",
        "max_pool_size = 8",
        SCRAM_ALL,
        None,
    );
    let _daemon = Daemon::start(&config.path()).await.unwrap();
    let info = conninfo(config.port, "postgres", &password());
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(pg_connect(&info).await.unwrap());
    }
    let runs = clients.iter().enumerate().map(|(i, client)| async move {
        for n in 0..20 {
            let row = client
                .query_one("SELECT $1::int + $2::int", &[&(i as i32), &n])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), i as i32 + n);
        }
    });
    futures_util::future::join_all(runs).await;
}
