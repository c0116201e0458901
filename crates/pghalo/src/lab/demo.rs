//! `pghalo demo`: the README's main job. It brings up a replicated lab
//! with pghalo in front, prints its status and how to connect, and serves
//! until Ctrl-C (or SIGTERM), then removes the lab.

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{InitOptions, Lab, LabError, SUPERUSER};

pub async fn run(opts: InitOptions) -> Result<(), LabError> {
    // Installed before anything else: a Ctrl-C at any moment, even during
    // init, must end in a clean-up rather than kill the demo mid-way.
    let install = |kind| {
        signal(kind).map_err(|e| LabError::Command {
            what: "installing a signal handler".into(),
            detail: e.to_string(),
        })
    };
    let mut stop = Stop {
        interrupt: install(SignalKind::interrupt())?,
        term: install(SignalKind::terminate())?,
    };
    let lab = Lab::init(&opts).await?;
    let result = serve(&lab, &mut stop).await;
    let destroyed = lab.destroy().await;
    result.and(destroyed)
}

struct Stop {
    interrupt: Signal,
    term: Signal,
}

async fn serve(lab: &Lab, stop: &mut Stop) -> Result<(), LabError> {
    lab.start().await?;
    let status = lab.status().await?;
    let pgpass = lab.pgpass();
    let mut text = format!(
        "pghalo demo: a {}-node PostgreSQL {} cluster with streaming replication, pghalo in front\n\n{}\nConnect through pghalo, or to any node directly (passwords are in {}):\n",
        status.nodes.len(),
        status.pg_version,
        status.table(),
        pgpass.display()
    );
    for proxy in &status.proxies {
        text.push_str(&format!(
            "  PGPASSFILE={} psql -h {} -p {} -U {SUPERUSER} postgres    # {} (pghalo)\n",
            pgpass.display(),
            proxy.host,
            proxy.port,
            proxy.name
        ));
    }
    for node in &status.nodes {
        text.push_str(&format!(
            "  PGPASSFILE={} psql -h {} -p {} -U {SUPERUSER} postgres    # {} ({})\n",
            pgpass.display(),
            node.host,
            node.port,
            node.name,
            node.role.as_str()
        ));
    }
    text.push_str(&format!(
        "\nServing until Ctrl-C; the lab in {} is removed on exit.\n",
        lab.dir().display()
    ));
    say(&text);
    tokio::select! {
        _ = stop.interrupt.recv() => {}
        _ = stop.term.recv() => {}
    }
    say("pghalo demo: stopping\n");
    Ok(())
}

/// Whoever reads our output may be gone (a closed pipe): that must not stop
/// the demo from cleaning up its lab.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
