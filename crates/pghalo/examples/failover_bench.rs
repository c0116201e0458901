//! Failover times, measured: a fresh 3-node lab per run with pghalo (in
//! process, its default check settings unless BENCH_SR_CHECK_PERIOD /
//! BENCH_SR_CHECK_TIMEOUT say otherwise) in front, a client writing through
//! pghalo all the time, then the primary's postmaster killed (SIGKILL) or
//! hung (SIGSTOP). Per run: time to detect (the failover decision
//! committed), to promote (the node table takes the new primary), and to
//! the first acknowledged write through pghalo; then median and worst.
//! The same runs through pgpool-II (Debian's pgpool2, when installed) with
//! the reference settings: health_check_period 5, timeout 30, max_retries
//! 3, retry_delay 1, failover_on_backend_error on (its default), and a
//! failover_command that promotes the new primary locally with pg_ctl; for
//! pgpool only the promotion (seen on the nodes) and the first write are
//! measured. Run by bench/failover; everything on 127.0.0.1, every lab
//! removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pghalo::cluster::NodeId;
use pghalo::coordinator::Coordinator;
use pghalo::daemon::Daemon;
use pghalo::lab::{InitOptions, Lab, StopMode};

#[derive(Clone, Copy, PartialEq)]
enum Proxy {
    Pghalo,
    Pgpool,
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Hang,
}

struct Run {
    /// None where it cannot be seen from outside (pgpool).
    detect: Option<Duration>,
    promote: Duration,
    write: Duration,
}

fn env_secs(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A pghalo configuration in front of `lab`: trust for 127.0.0.1 clients,
/// the lab's superuser password to log in to the servers and to act.
fn write_config(lab: &Lab, dir: &std::path::Path) -> std::io::Result<(PathBuf, u16)> {
    let port = free_port()?;
    let mut checks = String::new();
    if let Some(period) = env_secs("BENCH_SR_CHECK_PERIOD") {
        checks.push_str(&format!("sr_check_period = \"{period}\"\n"));
    }
    if let Some(timeout) = env_secs("BENCH_SR_CHECK_TIMEOUT") {
        checks.push_str(&format!("sr_check_timeout = \"{timeout}\"\n"));
    }
    let mut text = format!(
        "[listen]\nlisten_addresses = [\"127.0.0.1\"]\nport = {port}\n\n\
         [auth]\npool_hba = \"pool_hba.conf\"\npool_passwd = \"pool_passwd\"\n\n\
         [streaming_replication]\nsr_check_user = \"pghalo\"\nsr_check_password = \"TEXT{}\"\n{checks}\n\
         [failover]\nrecovery_user = \"postgres\"\nrecovery_password = \"TEXT{}\"\n",
        lab.secrets.pghalo, lab.secrets.postgres
    );
    for node in &lab.manifest.nodes {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            node.name, node.port
        ));
    }
    std::fs::write(dir.join("pghalo.toml"), text)?;
    std::fs::write(
        dir.join("pool_hba.conf"),
        "host all all 127.0.0.1/32 trust\n",
    )?;
    std::fs::write(
        dir.join("pool_passwd"),
        format!("postgres:TEXT{}\n", lab.secrets.postgres),
    )?;
    Ok((dir.join("pghalo.toml"), port))
}

async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=30"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn one_run(proxy: Proxy, fault: Fault, index: usize) -> Result<Run, String> {
    let base = std::env::temp_dir().join(format!(
        "pghalo-failover-bench-{}-{index}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&base);
    let lab_dir = base.join("lab");
    let conf_dir = base.join("pghalo");
    std::fs::create_dir_all(&conf_dir).map_err(|e| e.to_string())?;
    let mut options = InitOptions::new(&lab_dir);
    options.proxies = 0;
    let lab = Lab::init(&options).await.map_err(|e| e.to_string())?;
    let outcome = match proxy {
        Proxy::Pghalo => measure(&lab, &conf_dir, fault).await,
        Proxy::Pgpool => measure_pgpool(&lab, &conf_dir, fault).await,
    };
    let _ = lab.stop(StopMode::Immediate).await;
    if let Ok(pid) = postmaster_pid(&lab, "node0") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = lab.destroy().await;
    let _ = std::fs::remove_dir_all(&base);
    outcome
}

fn postmaster_pid(lab: &Lab, node: &str) -> Result<i32, String> {
    let text = std::fs::read_to_string(lab.dir().join(node).join("postmaster.pid"))
        .map_err(|e| e.to_string())?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| "no pid in postmaster.pid".to_owned())
}

async fn measure(lab: &Lab, conf_dir: &std::path::Path, fault: Fault) -> Result<Run, String> {
    lab.start().await.map_err(|e| e.to_string())?;
    let (config, port) = write_config(lab, conf_dir).map_err(|e| e.to_string())?;
    let daemon = Daemon::start(&config).await.map_err(|e| e.to_string())?;
    daemon
        .cluster()
        .view()
        .wait_for(Duration::from_secs(60), |s| {
            s.primary == Some(NodeId(0)) && s.nodes.iter().all(|n| n.is_routable())
        })
        .await
        .map_err(|_| "the lab's topology was never seen".to_owned())?;
    let setup = connect(port).await.map_err(|e| e.to_string())?;
    setup
        .batch_execute("CREATE TABLE bench_writes (at timestamptz DEFAULT now())")
        .await
        .map_err(|e| e.to_string())?;
    lab.wait_for_replication(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;

    let faulted: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(lab, port, faulted.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pid = postmaster_pid(lab, "node0")?;
    let at = fault_primary(fault, pid, &faulted)?;

    let limit = Duration::from_secs(120);
    let promoted = daemon
        .cluster()
        .view()
        .wait_for(limit, |s| s.primary.is_some_and(|p| p != NodeId(0)))
        .await;
    let promote = at.elapsed();
    let result = async {
        promoted.map_err(|_| format!("no new primary within {limit:?}"))?;
        let write = first_write(writer, limit).await?;
        let decided = daemon
            .coordinator()
            .events()
            .first()
            .map(|e| e.at)
            .ok_or_else(|| "no decision".to_owned())?;
        // Decision times are wall-clock; the fault's too, taken now.
        let fault_wall = std::time::SystemTime::now() - at.elapsed();
        let detect = decided.duration_since(fault_wall).unwrap_or_default();
        Ok(Run {
            detect: Some(detect),
            promote,
            write,
        })
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    resume(fault, pid);
    daemon.stop();
    result
}

/// The writer: one insert after another through `port`, a new connection
/// after any failure. Returns how long after the fault the first write
/// that began after it was acknowledged by another node than the old
/// primary (a hung postmaster's backends still answer: a write there does
/// not count).
fn spawn_writer(
    lab: &Lab,
    port: u16,
    faulted: Arc<std::sync::Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Option<Duration>> {
    let old_port = i32::from(lab.manifest.nodes[0].port);
    {
        tokio::spawn(async move {
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = connect(port).await.ok();
                }
                let Some(c) = client.as_ref() else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let started = Instant::now();
                match c
                    .query_one(
                        "INSERT INTO bench_writes DEFAULT VALUES RETURNING inet_server_port()",
                        &[],
                    )
                    .await
                {
                    Ok(row) if row.get::<_, Option<i32>>(0) != Some(old_port) => {
                        let at = *faulted.lock().unwrap_or_else(|p| p.into_inner());
                        // A write that began after the fault and succeeded.
                        if let Some(at) = at
                            && started > at
                        {
                            return Some(Instant::now() - at);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => client = None,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    }
}

/// Kills or stops the primary's postmaster; the moment it happened.
fn fault_primary(
    fault: Fault,
    pid: i32,
    faulted: &std::sync::Mutex<Option<Instant>>,
) -> Result<Instant, String> {
    let signal = match fault {
        Fault::Kill => nix::sys::signal::Signal::SIGKILL,
        Fault::Hang => nix::sys::signal::Signal::SIGSTOP,
    };
    let at = Instant::now();
    *faulted.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|e| e.to_string())?;
    Ok(at)
}

fn resume(fault: Fault, pid: i32) {
    if fault == Fault::Hang {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

async fn first_write(
    writer: tokio::task::JoinHandle<Option<Duration>>,
    limit: Duration,
) -> Result<Duration, String> {
    tokio::time::timeout(limit, writer)
        .await
        .map_err(|_| format!("no write within {limit:?} of the promotion"))?
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the writer stopped".to_owned())
}

const PGPOOL: &str = "/usr/sbin/pgpool";

/// pgpool-II with the reference failover settings in front of `lab`.
async fn measure_pgpool(lab: &Lab, dir: &std::path::Path, fault: Fault) -> Result<Run, String> {
    lab.start().await.map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    for sub in ["sock", "pcp", "oiddir"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let d = dir.display();
    let mut backends = String::new();
    for (i, node) in lab.manifest.nodes.iter().enumerate() {
        backends.push_str(&format!(
            "backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {}\nbackend_weight{i} = 1\n\
             backend_data_directory{i} = '{}'\nbackend_flag{i} = 'ALLOW_TO_FAILOVER'\n\
             backend_application_name{i} = '{}'\n",
            node.port,
            lab.dir().join(&node.name).display(),
            node.name
        ));
    }
    // %R: the new primary's data directory; the servers' owner promotes.
    let promote = format!(
        "runuser -u {} -- {}/pg_ctl promote -D %R",
        lab.manifest.server_user,
        lab.manifest.pg_bin.display()
    );
    let conf = format!(
        "backend_clustering_mode = 'streaming_replication'\n\
         listen_addresses = '127.0.0.1'\nport = {port}\nsocket_dir = '{d}/sock'\n\
         pcp_listen_addresses = ''\npcp_port = {port}\npcp_socket_dir = '{d}/pcp'\n\
         wd_ipc_socket_dir = '{d}/sock'\n{backends}\
         enable_pool_hba = on\npool_passwd = 'pool_passwd'\n\
         num_init_children = 8\nmax_pool = 1\nreserved_connections = 0\n\
         load_balance_mode = off\n\
         sr_check_period = 1\nsr_check_user = 'postgres'\nsr_check_password = ''\n\
         health_check_period = 5\nhealth_check_timeout = 30\nhealth_check_max_retries = 3\n\
         health_check_retry_delay = 1\nhealth_check_user = 'postgres'\nhealth_check_password = ''\n\
         failover_on_backend_error = on\nfailover_command = '{promote}'\n\
         use_watchdog = off\nmemory_cache_enabled = off\nmemqcache_oiddir = '{d}/oiddir'\n\
         log_destination = 'stderr'\nlogging_collector = off\nlog_min_messages = warning\n\
         pid_file_name = '{d}/pgpool.pid'\nlogdir = '{d}'\n"
    );
    std::fs::write(dir.join("pgpool.conf"), conf).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("pool_passwd"),
        format!("postgres:TEXT{}\n", lab.secrets.postgres),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("pcp.conf"), "").map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("pool_hba.conf"),
        "host all all 127.0.0.1/32 trust\n",
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("pgpool.log")).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(PGPOOL)
        .args(["-n", "-D", "-f"])
        .arg(dir.join("pgpool.conf"))
        .arg("-F")
        .arg(dir.join("pcp.conf"))
        .arg("-a")
        .arg(dir.join("pool_hba.conf"))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start pgpool: {e}"))?;
    let outcome = async {
        // Up when a write goes through.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(c) = connect(port).await
                && c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS bench_writes (at timestamptz DEFAULT now())",
                )
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("pgpool never served".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lab.wait_for_replication(Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        let faulted: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(lab, port, faulted.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = postmaster_pid(lab, "node0")?;
        let at = fault_primary(fault, pid, &faulted)?;
        // A hung primary: 4 health checks of 30 s and their retry delays
        // to the promotion. Then pgpool 4.3's search for the new primary
        // blocks on the stopped postmaster: in every run here it served
        // its first write only once the bench resumed the old primary, at
        // the limit. The limit is long enough to tell that from a slow
        // search (search_primary_node_timeout is 300 s).
        let limit = Duration::from_secs(match fault {
            Fault::Kill => 60,
            Fault::Hang => 480,
        });
        let promote = async {
            loop {
                for node in &lab.manifest.nodes[1..] {
                    if let Ok(c) = lab.connect(&node.name).await
                        && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
                        && !row.get::<_, bool>(0)
                    {
                        return at.elapsed();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let promote = tokio::time::timeout(limit, promote)
            .await
            .map_err(|_| format!("no standby promoted within {limit:?}"))?;
        let write = first_write(writer, limit).await.map_err(|e| {
            format!(
                "{e} (a standby was promoted {:.2}s after the fault)",
                promote.as_secs_f64()
            )
        });
        stop.store(true, Ordering::Relaxed);
        resume(fault, pid);
        Ok(Run {
            detect: None,
            promote,
            write: write?,
        })
    }
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    if outcome.is_err() {
        // pgpool's own account of a run that failed, for the report.
        let log = std::fs::read_to_string(dir.join("pgpool.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("pgpool.log, last lines:");
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }
    outcome
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() -> std::process::ExitCode {
    // pghalo's own log, for a run that needs explaining.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("failover bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    // BENCH_ONLY=pghalo or BENCH_ONLY=pgpool runs one side.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let mut proxies = Vec::new();
    if only != "pgpool" {
        proxies.push((Proxy::Pghalo, "pghalo"));
    }
    if only != "pghalo" {
        if std::path::Path::new(PGPOOL).exists() && std::env::var("BENCH_SKIP_PGPOOL").is_err() {
            proxies.push((Proxy::Pgpool, "pgpool-II"));
        } else {
            println!("pgpool-II: not installed ({PGPOOL}) or BENCH_SKIP_PGPOOL set: not compared");
        }
    }
    let cases = proxies.iter().flat_map(|&(proxy, who)| {
        [(Fault::Kill, "SIGKILL"), (Fault::Hang, "SIGSTOP")]
            .into_iter()
            .map(move |(fault, name)| (proxy, who, fault, name))
    });
    // pgpool-II 4.3 takes minutes per hung-primary run (see measure_pgpool).
    let pgpool_hang_runs: usize = std::env::var("BENCH_PGPOOL_HANG_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(runs.min(3));
    for (proxy, who, fault, name) in cases {
        let runs = if proxy == Proxy::Pgpool && fault == Fault::Hang {
            pgpool_hang_runs
        } else {
            runs
        };
        println!("{who}: {name} of the primary's postmaster, {runs} runs:");
        println!("  run   detect   promote  first write");
        let mut all = Vec::new();
        for index in 0..runs {
            match runtime.block_on(one_run(proxy, fault, index)) {
                Ok(run) => {
                    println!(
                        "  {:>3} {:>8} {:>8.2}s {:>10.2}s",
                        index + 1,
                        run.detect
                            .map_or_else(|| "-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64())),
                        run.promote.as_secs_f64(),
                        run.write.as_secs_f64()
                    );
                    all.push(run);
                }
                Err(e) => {
                    println!("  {:>3} failed: {e}", index + 1);
                    failed = true;
                }
            }
        }
        if all.is_empty() {
            continue;
        }
        for (what, pick) in [
            (
                "detect",
                (|r: &Run| r.detect) as fn(&Run) -> Option<Duration>,
            ),
            ("promote", |r: &Run| Some(r.promote)),
            ("first write", |r: &Run| Some(r.write)),
        ] {
            let mut values: Vec<Duration> = all.iter().filter_map(pick).collect();
            if values.is_empty() {
                continue;
            }
            let worst = values.iter().max().copied().unwrap_or_default();
            println!(
                "  {what:<12} median {:.2}s, worst {:.2}s",
                median(&mut values).as_secs_f64(),
                worst.as_secs_f64()
            );
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
