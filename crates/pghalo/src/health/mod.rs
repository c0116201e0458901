//! Health checks and the replication monitor (pgpool's health check and
//! streaming replication check in one), sending observations to
//! `cluster`. Must not touch pools or run failover: it asks, and reports
//! what it heard.
//!
//! # The replication monitor
//! One task per backend, each with connections of its own (tokio-postgres,
//! the control path's client), so a node that hangs holds up only its own
//! task. Every health_check_period a task connects to its node, logs in
//! and asks in one query whether it is in recovery, its timeline and its
//! WAL positions (see `probe.rs`), all under health_check_timeout, and
//! sends the answer or the reason for no answer as an [`Observation`].
//! A failed check is retried health_check_max_retries times,
//! health_check_retry_delay apart; the node's failures in a row are what
//! the failover task counts. Each node has its own settings (pgpool's
//! per-backend health_check_*N).
//! The cluster turns observations into roles and lag; docs/topology.md
//! has the whole story.
//!
//! # Layout
//! - `settings.rs`: [`MonitorSettings`], each node's [`NodeCheck`], from
//!   the configuration.
//! - `probe.rs`: the query, the connection, the sorting of failures.
//! - `mod.rs`: [`ReplicationMonitor`], the tasks and their handle.
//! - `catalog.rs`: [`CatalogLoader`], function volatility read from the
//!   primary's pg_proc for the router, with the primary's check login.
//! - `ping.rs`: [`postmaster_answers`], a sign of life without a login,
//!   to tell a slow server from a hung one after a check timed out.

mod catalog;
mod ping;
mod probe;
mod settings;

pub use catalog::CatalogLoader;
pub use ping::postmaster_answers;
pub use probe::APPLICATION_NAME as MONITOR_APPLICATION_NAME;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::cluster::{NodeId, Observation, Observer};

pub use settings::{CheckSchedule, Login, MonitorSettings, NodeCheck, Target};

/// With health_check_period = 0 a node is asked until it answers once;
/// this is how often while it does not.
const UNANSWERED_RETRY: Duration = Duration::from_secs(1);

/// Asks the monitor's tasks for a check now.
#[derive(Clone, Debug)]
pub struct MonitorWaker(Vec<Arc<Notify>>);

impl MonitorWaker {
    pub fn check_now(&self) {
        for wake in &self.0 {
            // notify_one keeps a permit, so a task in the middle of a check
            // checks again as soon as it is done.
            wake.notify_one();
        }
    }
}

/// The running replication monitor. Its tasks stop when the daemon's
/// shutdown signal turns true, or when this handle is dropped (at their
/// next wait: a check under way finishes first, within its timeout).
pub struct ReplicationMonitor {
    /// The settings every task reads before each check.
    settings: watch::Sender<Arc<MonitorSettings>>,
    /// One per task, to wake it for a check now.
    wake: Vec<Arc<Notify>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ReplicationMonitor {
    /// Starts one task per node of `settings`, reporting to `observer`.
    /// Needs a tokio runtime.
    pub fn start(
        settings: MonitorSettings,
        observer: Observer,
        shutdown: watch::Receiver<bool>,
    ) -> ReplicationMonitor {
        warn_if_disabled(&settings);
        let nodes = settings.nodes.len();
        let (settings, settings_rx) = watch::channel(Arc::new(settings));
        let wake: Vec<Arc<Notify>> = (0..nodes).map(|_| Arc::new(Notify::new())).collect();
        let tasks = wake
            .iter()
            .enumerate()
            .map(|(index, wake)| {
                tokio::spawn(watch_node(
                    NodeId(index),
                    settings_rx.clone(),
                    observer.clone(),
                    wake.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        ReplicationMonitor {
            settings,
            wake,
            tasks,
        }
    }

    /// Takes a reloaded configuration's settings; each task uses them from
    /// its next check, which starts at once. New credentials or a new
    /// database mean new connections.
    pub fn reconfigure(&self, settings: MonitorSettings) {
        if settings.nodes.len() != self.wake.len() {
            // The reload plan keeps the backend list until a restart, so
            // this only guards against a caller that did not apply it.
            tracing::warn!(
                "replication monitor: the number of backends changed; it applies after a restart"
            );
        }
        let was_enabled = self.settings.borrow().enabled();
        if was_enabled && !settings.enabled() {
            warn_if_disabled(&settings);
        }
        self.settings.send_replace(Arc::new(settings));
    }

    /// Asks every node now rather than at the next period (for the
    /// coordinator, which will want confirming probes).
    pub fn check_now(&self) {
        self.waker().check_now();
    }

    /// A handle that asks for checks now, for tasks that outlive a borrow
    /// of the monitor (the failover task's confirming probes).
    pub fn waker(&self) -> MonitorWaker {
        MonitorWaker(self.wake.clone())
    }

    /// The settings in force, as they change (for tasks that log in as the
    /// monitor does).
    pub fn subscribe(&self) -> watch::Receiver<Arc<MonitorSettings>> {
        self.settings.subscribe()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<MonitorSettings> {
        self.settings.borrow().clone()
    }

    /// True once every task has ended.
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }
}

fn warn_if_disabled(settings: &MonitorSettings) {
    if !settings.enabled() {
        tracing::warn!(
            "neither health_check_user nor streaming_replication.sr_check_user is set: pghalo does \
             not check the nodes' health, roles and lag, and knows no primary but an ALWAYS_PRIMARY one"
        );
    }
}

/// One node's task: check, report, wait (for the period, or the retry
/// delay after a failure, or new settings, or a wake-up), again, until
/// shutdown.
async fn watch_node(
    node: NodeId,
    mut settings: watch::Receiver<Arc<MonitorSettings>>,
    observer: Observer,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut answered = false;
    // Failed checks in a row that said the node is down; a refused login
    // neither adds to them nor ends them.
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let current = settings.borrow_and_update().clone();
        // A retry waits out its delay: sessions asking for checks now
        // (every one that cannot reach the node) must not turn
        // health_check_retry_delay into no delay at all.
        let mut retrying = false;
        let wait = match current.node(node.index()).filter(|c| c.enabled()) {
            Some(check) => {
                let schedule = check.schedule;
                let retry = if (1..=schedule.max_retries).contains(&failures) {
                    failures
                } else {
                    0
                };
                let at = SystemTime::now();
                let started = Instant::now();
                let outcome = probe::check(check).await;
                let down = match &outcome {
                    Ok(_) => {
                        failures = 0;
                        false
                    }
                    Err(e) if e.kind.means_down() => {
                        failures = failures.saturating_add(1);
                        true
                    }
                    // A refused login says nothing about the node: no
                    // retry, the next check comes at the period.
                    Err(_) => false,
                };
                answered |= outcome.is_ok();
                let observation = Observation {
                    node,
                    at,
                    elapsed: started.elapsed(),
                    retry,
                    outcome,
                };
                if observer.send(observation).await.is_err() {
                    return; // The cluster is gone: nobody to tell.
                }
                if down && (1..=schedule.max_retries).contains(&failures) {
                    retrying = true;
                    Some(schedule.retry_delay)
                } else if !schedule.period.is_zero() {
                    Some(schedule.period.saturating_sub(started.elapsed()))
                } else if answered {
                    None
                } else {
                    Some(UNANSWERED_RETRY)
                }
            }
            // Not checked, or a node this configuration does not have.
            None => None,
        };
        let sleep = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            changed = settings.changed() => {
                if changed.is_err() {
                    return; // The handle was dropped.
                }
                answered = false;
            }
            () = wake.notified(), if !retrying => {}
            _ = shutdown.changed() => {} // Checked at the top of the loop.
        }
        if shutdown.has_changed().is_err() {
            return; // The daemon is gone.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{CheckErrorKind, Cluster, Status};
    use crate::config::Config;
    use crate::config::passwd::PasswordFile;

    /// A port nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn config(user: &str, port: u16) -> Config {
        Config::from_str_with_name(
            &format!(
                "[streaming_replication]\nsr_check_user = \"{user}\"\nsr_check_password = \"{}\"\n\
                 sr_check_period = \"100ms\"\nsr_check_timeout = \"5s\"\n\
                 [[backend]]\nhost = \"127.0.0.1\"\nport = {port}\n",
                if user.is_empty() { "" } else { "TEXTpw" }
            ),
            "/t.toml",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_down_at_once_and_shutdown_stops_the_tasks() {
        let config = config("monitor", closed_port());
        let cluster = Cluster::start(&config.backends);
        let settings = MonitorSettings::from_config(&config, &PasswordFile::default()).unwrap();
        let (shutdown, watcher) = watch::channel(false);
        let monitor = ReplicationMonitor::start(settings, cluster.observer(), watcher);
        let s = cluster
            .view()
            .wait_for(Duration::from_secs(3), |s| {
                s.nodes[0].status == Status::Down
            })
            .await
            .unwrap();
        let error = s.nodes[0].last_error.clone().unwrap();
        assert_eq!(error.kind, CheckErrorKind::Connect, "{error}");
        assert!(!error.message.contains("TEXTpw") && !error.message.contains("pw\""));

        shutdown.send_replace(true);
        let deadline = Instant::now() + Duration::from_secs(3);
        while !monitor.is_finished() {
            assert!(Instant::now() < deadline, "tasks still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The monitor of the nodes in `text` (a whole configuration), with
    /// its cluster and the sender of its shutdown signal.
    fn monitored(text: &str) -> (Cluster, ReplicationMonitor, watch::Sender<bool>) {
        let config = Config::from_str_with_name(text, "/t.toml").unwrap();
        let cluster = Cluster::start(&config.backends);
        let settings = MonitorSettings::from_config(&config, &PasswordFile::default()).unwrap();
        let (shutdown, watcher) = watch::channel(false);
        let monitor = ReplicationMonitor::start(settings, cluster.observer(), watcher);
        (cluster, monitor, shutdown)
    }

    #[tokio::test]
    async fn a_failed_check_is_retried_max_retries_times_then_waits_for_the_period() {
        let (port, other) = (closed_port(), closed_port());
        let (cluster, _monitor, _shutdown) = monitored(&format!(
            "[streaming_replication]\nsr_check_user = \"monitor\"\nsr_check_password = \"TEXTpw\"\n\
             [health_check]\nhealth_check_period = \"1h\"\nhealth_check_max_retries = 1\n\
             health_check_retry_delay = \"50ms\"\n\
             [[backend]]\nhost = \"127.0.0.1\"\nport = {port}\nhealth_check_max_retries = 3\n\
             [[backend]]\nhost = \"127.0.0.1\"\nport = {other}\n"
        ));
        let s = cluster
            .view()
            .wait_for(Duration::from_secs(5), |s| {
                s.nodes[0].checks.total >= 4 && s.nodes[1].checks.total >= 2
            })
            .await
            .unwrap();
        // Well within the period: no check beyond the retries comes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s2 = cluster.snapshot();
        for (node, retries) in [(0, 3), (1, 1)] {
            let checks = &s2.nodes[node].checks;
            assert_eq!(checks.total, retries + 1, "node {node}: {checks:?}");
            assert_eq!(checks.retries, retries, "node {node}: {checks:?}");
            assert_eq!(checks.max_retry, retries as u32, "node {node}: {checks:?}");
            assert_eq!(checks.consecutive_failures, retries as u32 + 1);
            assert_eq!(s2.nodes[node].status, Status::Down);
        }
        assert_eq!(s2.nodes[0].checks.average_retries(), 3.0);
        assert!(s.nodes[0].checks.fail >= 4);
    }

    #[tokio::test]
    async fn asking_for_checks_now_does_not_cut_the_retry_delay_short() {
        let (cluster, monitor, _shutdown) = monitored(&format!(
            "[streaming_replication]\nsr_check_user = \"monitor\"\nsr_check_password = \"TEXTpw\"\n\
             [health_check]\nhealth_check_period = \"1h\"\nhealth_check_max_retries = 2\n\
             health_check_retry_delay = \"300ms\"\n\
             [[backend]]\nhost = \"127.0.0.1\"\nport = {}\n",
            closed_port()
        ));
        let started = Instant::now();
        // Sessions that cannot reach the node ask for checks all the time.
        let waker = monitor.waker();
        let asking = tokio::spawn(async move {
            loop {
                waker.check_now();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        cluster
            .view()
            .wait_for(Duration::from_secs(5), |s| s.nodes[0].checks.total >= 3)
            .await
            .unwrap();
        let took = started.elapsed();
        asking.abort();
        assert!(
            took >= Duration::from_millis(600),
            "the check and its 2 retries 300 ms apart took {took:?}"
        );
    }

    #[tokio::test]
    async fn disabled_until_a_reload_sets_the_user() {
        let port = closed_port();
        let cluster = Cluster::start(&config("", port).backends);
        let settings =
            MonitorSettings::from_config(&config("", port), &PasswordFile::default()).unwrap();
        let (_shutdown, watcher) = watch::channel(false);
        let monitor = ReplicationMonitor::start(settings, cluster.observer(), watcher);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(cluster.snapshot().nodes[0].status, Status::Waiting);
        assert_eq!(cluster.snapshot().nodes[0].last_check, None);

        let enabled = config("monitor", port);
        monitor
            .reconfigure(MonitorSettings::from_config(&enabled, &PasswordFile::default()).unwrap());
        cluster
            .view()
            .wait_for(Duration::from_secs(3), |s| {
                s.nodes[0].status == Status::Down
            })
            .await
            .unwrap();
        assert!(monitor.settings().enabled());
    }
}
