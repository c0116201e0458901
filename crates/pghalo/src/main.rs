//! The `pghalo` binary: argument parsing and dispatch into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pghalo::lab::{InitOptions, Lab, LabError, StopMode};

#[derive(Parser)]
#[command(
    name = "pghalo",
    version,
    about = "PostgreSQL high-availability middleware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon: the proxy on the configured listeners until SIGINT
    /// or SIGTERM; SIGHUP reloads the configuration.
    Run {
        /// The configuration file.
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Adds or updates a user's entry in a pool_passwd file (pgpool's
    /// pg_md5 / pg_enc); the password is read from standard input or asked
    /// for on the terminal, never taken from the command line.
    Passwd(pghalo::config::passwd::PasswdArgs),
    /// Makes the running pghalo re-read its configuration (SIGHUP through
    /// the pid file), like `pgpool reload`.
    Reload {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Stops the running pghalo (SIGTERM through the pid file) and waits
    /// for it to exit, like `pgpool stop`.
    Stop {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Checks a configuration file (and the hba and password files it
    /// names) without starting anything.
    CheckConfig {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
    /// Asks the running pghalo (through its control socket): the node
    /// table, the events, attach / detach / promote a node.
    Ctl {
        /// The configuration the daemon runs with (for daemon.ctl_socket).
        #[arg(short = 'c', long = "config", required_unless_present = "socket")]
        config: Option<PathBuf>,
        /// The control socket itself, instead of --config.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Local clusters of real PostgreSQL for demos, tests and benchmarks.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Brings up a replicated lab cluster, prints how to reach it, and serves
    /// until Ctrl-C, then removes it.
    Demo {
        /// Where to build the lab (default: a new directory under $TMPDIR).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        backends: usize,
        #[arg(long)]
        pg_bin: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every node: status, role, timeline, lag, replication, last error.
    Nodes,
    /// The decisions (with their epochs and reasons) and the reports.
    Events,
    /// Puts a detached node back into routing (pgpool's pcp_attach_node).
    Attach { node: usize },
    /// Takes a standby out of routing (pgpool's pcp_detach_node).
    Detach { node: usize },
    /// Makes standby N the primary: a failover when the primary is down, a
    /// switchover without loss when it is up (pgpool's pcp_promote_node).
    Promote { node: usize },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Creates a primary and streaming standbys in a new or empty directory.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// Number of PostgreSQL nodes (node0 is the primary).
        #[arg(long, default_value_t = 3)]
        backends: usize,
        /// Synchronous replication: synchronous_standby_names = 'ANY 1 (standbys)'.
        #[arg(long)]
        sync: bool,
        /// First port to use (P, P+1, ...); free ports are picked if absent.
        #[arg(long)]
        base_port: Option<u16>,
        /// Directory of the PostgreSQL server binaries (else PG_BIN, pg_config, /usr/lib/postgresql/*/bin).
        #[arg(long)]
        pg_bin: Option<PathBuf>,
        /// Number of pghalo instances in front of the nodes.
        #[arg(long, default_value_t = 1)]
        proxies: usize,
    },
    /// Starts every node that is not running.
    Start(DirArg),
    /// Stops every node that is running.
    Stop(DirArg),
    /// Prints each node's role, LSNs and replication state.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stops every node and removes the lab directory.
    Destroy(DirArg),
}

#[derive(Args)]
struct DirArg {
    /// The lab directory.
    #[arg(long)]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGHALO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The control path (health checks, failover, ctl, pool upkeep) and the
    // commands other than `run`: sessions have threads of their own
    // (`[daemon] worker_threads`), so a host with many CPUs need not get
    // as many idle threads here.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pghalo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pghalo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let daemon = pghalo::daemon::Daemon::start(&config).await?;
            daemon.run_until_signalled().await?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            let summary = pghalo::daemon::check_config(&config)?;
            println!("{summary}");
            Ok(())
        }
        Command::Reload { config } => {
            let pid =
                pghalo::daemon::signal_running(&config, nix::sys::signal::Signal::SIGHUP).await?;
            println!(
                "asked pghalo (pid {pid}) to reload {}; its log says what changed",
                config.display()
            );
            Ok(())
        }
        Command::Stop { config } => {
            let pid =
                pghalo::daemon::signal_running(&config, nix::sys::signal::Signal::SIGTERM).await?;
            println!("pghalo (pid {pid}) stopped");
            Ok(())
        }
        Command::Passwd(args) => {
            println!("{}", pghalo::config::passwd::passwd_command(args)?);
            Ok(())
        }
        Command::Ctl {
            config,
            socket,
            command,
        } => ctl(config, socket, command).await,
        Command::Lab { command } => Ok(lab(command).await?),
        Command::Demo {
            dir,
            backends,
            pg_bin,
        } => {
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("pghalo-demo-{}", std::process::id()))
            });
            Ok(pghalo::lab::demo::run(InitOptions {
                backends,
                pg_bin,
                ..InitOptions::new(dir)
            })
            .await?)
        }
    }
}

async fn ctl(
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    command: CtlCommand,
) -> anyhow::Result<()> {
    use pghalo::admin::ctl::{CtlRequest, send};
    let socket = match (socket, config) {
        (Some(socket), _) => socket,
        (None, Some(config)) => pghalo::config::Config::load(&config)?
            .daemon
            .ctl_socket
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} sets daemon.ctl_socket = \"\": the daemon has no control socket",
                    config.display()
                )
            })?,
        (None, None) => anyhow::bail!("give --config or --socket"),
    };
    let request = match command {
        CtlCommand::Nodes => CtlRequest::Nodes,
        CtlCommand::Events => CtlRequest::Events,
        CtlCommand::Attach { node } => CtlRequest::Attach { node },
        CtlCommand::Detach { node } => CtlRequest::Detach { node },
        CtlCommand::Promote { node } => CtlRequest::Promote { node },
    };
    let reply = send(&socket, &request).await?;
    if reply.ok {
        print!("{}", reply.text);
        if !reply.text.ends_with('\n') {
            println!();
        }
        Ok(())
    } else {
        anyhow::bail!("{}", reply.text)
    }
}

async fn lab(command: LabCommand) -> Result<(), LabError> {
    match command {
        LabCommand::Init {
            dir,
            backends,
            sync,
            base_port,
            pg_bin,
            proxies,
        } => {
            let lab = Lab::init(&InitOptions {
                dir: dir.dir,
                backends,
                sync,
                base_port,
                pg_bin,
                proxies,
            })
            .await?;
            println!(
                "lab initialised in {}; start it with: pghalo lab start --dir {}",
                lab.dir().display(),
                lab.dir().display()
            );
            Ok(())
        }
        LabCommand::Start(dir) => Lab::open(&dir.dir)?.start().await,
        LabCommand::Stop(dir) => Lab::open(&dir.dir)?.stop(StopMode::Fast).await,
        LabCommand::Status { dir, json } => {
            let status = Lab::open(&dir.dir)?.status().await?;
            if json {
                let text =
                    serde_json::to_string_pretty(&status).map_err(|e| LabError::Command {
                        what: "rendering JSON".into(),
                        detail: e.to_string(),
                    })?;
                println!("{text}");
            } else {
                print!("{}", status.table());
            }
            Ok(())
        }
        LabCommand::Destroy(dir) => Lab::open(&dir.dir)?.destroy().await,
    }
}
