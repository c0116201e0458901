//! Function volatility from the primary's pg_proc, for the router: with
//! both of pgpool's function lists empty, a call to a function pg_proc
//! marks stable or immutable may be balanced, a volatile one may not
//! (`router::functions`).
//!
//! One task reads pg_proc in every database that accepts connections, as
//! the primary's health-check user, and hands the router the whole answer: at start
//! (retried every second until the primary is known and answers), every
//! minute, and soon after a session's DDL committed (`refresh`). Until a
//! function is known its statements go to the primary, so a read just
//! after CREATE FUNCTION is safe, only not balanced yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::cluster::ClusterView;
use crate::router::{CatalogVolatility, Volatility, merge_volatility};

use super::probe::open;
use super::settings::{MonitorSettings, NodeCheck};

/// How often pg_proc is read when nothing asks sooner.
const PERIOD: Duration = Duration::from_secs(60);
/// How soon to try again while it cannot be read.
const RETRY: Duration = Duration::from_secs(1);

const DATABASES: &str = "SELECT datname FROM pg_catalog.pg_database \
                         WHERE datallowconn AND NOT datistemplate ORDER BY datname";
/// One row per name: its most volatile overload ('v' > 's' > 'i').
const FUNCTIONS: &str = "SELECT n.nspname::text, p.proname::text, max(p.provolatile::text) \
                         FROM pg_catalog.pg_proc p \
                         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                         GROUP BY 1, 2";

/// The running task; dropping this handle stops it.
pub struct CatalogLoader {
    refresh: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for CatalogLoader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CatalogLoader {
    /// Starts the task. Needs a tokio runtime.
    pub fn start(
        settings: watch::Receiver<Arc<MonitorSettings>>,
        cluster: ClusterView,
        target: Arc<CatalogVolatility>,
        shutdown: watch::Receiver<bool>,
    ) -> CatalogLoader {
        let refresh = Arc::new(Notify::new());
        let task = tokio::spawn(run(settings, cluster, target, refresh.clone(), shutdown));
        CatalogLoader { refresh, task }
    }

    /// A handle that asks for a read of pg_proc now (after DDL).
    pub fn refresher(&self) -> Arc<Notify> {
        self.refresh.clone()
    }
}

async fn run(
    settings: watch::Receiver<Arc<MonitorSettings>>,
    cluster: ClusterView,
    target: Arc<CatalogVolatility>,
    refresh: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = Duration::ZERO;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh.notified() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        let settings = settings.borrow().clone();
        let node = cluster.snapshot().primary;
        let Some(node) = node
            .and_then(|id| settings.node(id.index()))
            .filter(|n| n.enabled())
        else {
            // No monitor, or no primary known yet.
            wait = RETRY;
            continue;
        };
        // Each connection and query within a check's timeout, the whole
        // read within a few of them.
        let limit = node.schedule.timeout.saturating_mul(4);
        match tokio::time::timeout(limit, read_functions(node)).await {
            Ok(Ok(functions)) => {
                tracing::debug!(functions = functions.len(), node = %node.target.name, "pg_proc read");
                target.replace(functions);
                last_error.clear();
                wait = PERIOD;
            }
            Ok(Err(e)) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(node = %node.target.name, "cannot read function volatility from pg_proc: {text}");
                    last_error = text;
                }
                wait = RETRY.max(node.schedule.period);
            }
            Err(_) => {
                tracing::warn!(node = %node.target.name, "reading pg_proc took longer than {limit:?}");
                wait = RETRY.max(node.schedule.period);
            }
        }
    }
}

/// Every database's functions, merged.
async fn read_functions(
    node: &NodeCheck,
) -> Result<HashMap<String, Volatility>, tokio_postgres::Error> {
    let (client, _driver) = open(node, &node.login.database).await?;
    let databases: Vec<String> = client
        .query(DATABASES, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut functions = HashMap::new();
    read_database(&client, &mut functions).await?;
    for database in databases.iter().filter(|d| **d != node.login.database) {
        match open(node, database).await {
            Ok((client, _driver)) => read_database(&client, &mut functions).await?,
            // Not allowed in (CONNECT revoked): its functions stay unknown,
            // so their statements go to the primary.
            Err(e) => tracing::debug!(%database, "pg_proc not read: {e}"),
        }
    }
    Ok(functions)
}

async fn read_database(
    client: &tokio_postgres::Client,
    functions: &mut HashMap<String, Volatility>,
) -> Result<(), tokio_postgres::Error> {
    for row in client.query(FUNCTIONS, &[]).await? {
        let schema: String = row.get(0);
        let name: String = row.get(1);
        let volatility = match row.get::<_, Option<String>>(2).as_deref() {
            Some("i") => Volatility::Immutable,
            Some("s") => Volatility::Stable,
            _ => Volatility::Volatile,
        };
        merge_volatility(functions, &schema, &name, volatility);
    }
    Ok(())
}
