//! The command line (SPEC 1): `run`, `check`, `demo`, `version`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluicegate::admin::{self, AdminState, Readiness};
use sluicegate::config::{self, Config, LoadError};
use sluicegate::demo;
use sluicegate::gateway::Gateway;

#[derive(Parser)]
#[command(
    name = "sluicegate",
    about = "L4/L7 load balancer and API gateway",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve with the config file.
    Run {
        #[arg(short, long, default_value = "sluicegate.toml")]
        config: PathBuf,
    },
    /// Validate the config file: exit 0 when valid, 1 with every problem listed otherwise.
    Check {
        #[arg(short, long, default_value = "sluicegate.toml")]
        config: PathBuf,
    },
    /// The gateway in front of three in-process demo backends.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Print the version.
    Version,
}

/// What the process exits with.
pub enum Outcome {
    Ok,
    /// The config is invalid (exit 1); the problems were printed.
    InvalidConfig,
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Version => {
            println!("sluicegate {}", env!("CARGO_PKG_VERSION"));
            Ok(Outcome::Ok)
        }
        Command::Check { config } => match load(&config)? {
            Some(_) => {
                println!("{}: configuration is valid", config.display());
                Ok(Outcome::Ok)
            }
            None => Ok(Outcome::InvalidConfig),
        },
        Command::Run { config: path } => {
            init_logging();
            match load(&path)? {
                Some((loaded, hash)) => serve(loaded, hash, Some(path), None).map(|()| Outcome::Ok),
                None => Ok(Outcome::InvalidConfig),
            }
        }
        Command::Demo { port, admin_port } => {
            init_logging();
            let runtime = control_runtime()?;
            let backends = runtime.block_on(async {
                let mut addresses = Vec::new();
                for name in demo::BACKENDS {
                    addresses.push(demo::start_backend(name).await?);
                }
                std::io::Result::Ok(addresses)
            })?;
            let (config, hash) = demo::config(port, admin_port, &backends)
                .map_err(|d| anyhow::anyhow!("demo config is invalid:\n{d}"))?;
            serve(config, hash, None, Some((runtime, backends)))?;
            Ok(Outcome::Ok)
        }
    }
}

/// Loads a config and its hash; prints its problems to stderr and returns `None` when invalid.
fn load(path: &Path) -> anyhow::Result<Option<(Config, String)>> {
    match config::load_hashed(path) {
        Ok(c) => Ok(Some(c)),
        Err(LoadError::Invalid(diagnostics)) => {
            for line in diagnostics.lines() {
                eprintln!("{line}");
            }
            eprintln!(
                "{}: {} problem(s) found; nothing was started",
                path.display(),
                diagnostics.problems.len()
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")
}

/// Serves until SIGTERM or SIGINT, then drains for up to `runtime.shutdown_grace`.
fn serve(
    config: Config,
    config_hash: String,
    config_path: Option<PathBuf>,
    demo: Option<(tokio::runtime::Runtime, Vec<std::net::SocketAddr>)>,
) -> anyhow::Result<()> {
    let (runtime, demo_backends) = match demo {
        Some((rt, backends)) => (rt, Some(backends)),
        None => (control_runtime()?, None),
    };
    runtime.block_on(async move {
        let readiness = Arc::new(Readiness::default());
        let admin_bind = config.admin.as_ref().map(|a| a.bind);
        let gateway = Gateway::start(config, config_hash, config_path)?;
        let admin = match admin_bind {
            Some(bind) => {
                let state = AdminState {
                    gateway: Arc::clone(&gateway),
                    readiness: Arc::clone(&readiness),
                };
                let address = admin::serve(bind, state)
                    .await
                    .with_context(|| format!("cannot bind the admin API on {bind}"))?;
                tracing::info!(%address, "admin API listening");
                Some(address)
            }
            None => None,
        };
        readiness.set_ready();
        if let Some(backends) = &demo_backends {
            print_demo_banner(&gateway, admin, backends);
        }
        wait_for_signal(&gateway).await?;
        readiness.start_draining();
        tracing::info!("signal received: draining");
        let stopping = Arc::clone(&gateway);
        let drained = tokio::task::spawn_blocking(move || stopping.shutdown()).await?;
        if drained {
            tracing::info!("all connections finished; exiting");
        } else {
            tracing::warn!("shutdown grace expired with requests still running; exiting");
        }
        // The last requests' spans go to the collector before the process ends.
        gateway
            .shared
            .registries
            .tracing
            .flush(std::time::Duration::from_secs(2))
            .await;
        anyhow::Ok(())
    })
}

/// Waits for SIGTERM or SIGINT; meanwhile SIGHUP reloads the config and SIGUSR1 reopens the
/// access log file (rotation).
async fn wait_for_signal(gateway: &Arc<Gateway>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            result = tokio::signal::ctrl_c() => return result.context("cannot watch SIGINT"),
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                gateway.shared.access_log.reopen();
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let gateway = Arc::clone(gateway);
                // The outcome is logged and counted by `reload` itself.
                let _ = tokio::task::spawn_blocking(move || gateway.reload()).await;
            }
        }
    }
}

fn print_demo_banner(
    gateway: &Gateway,
    admin: Option<std::net::SocketAddr>,
    backends: &[std::net::SocketAddr],
) {
    let Some(address) = gateway.listeners().first().map(|l| l.bound) else {
        return;
    };
    let url = format!("http://localhost:{}", address.port());
    eprintln!();
    eprintln!("Sluicegate demo: the gateway at {url}/ balances round robin over three backends:");
    for (name, backend) in demo::BACKENDS.iter().zip(backends) {
        eprintln!("  {name:<8} http://{backend}/");
    }
    if let Some(admin) = admin {
        eprintln!(
            "Dashboard: http://localhost:{0}/   admin API: http://localhost:{0}/api/v1/services",
            admin.port()
        );
    }
    eprintln!();
    eprintln!("Try:");
    eprintln!("  curl -i {url}/");
    eprintln!("  for i in 1 2 3 4 5 6; do curl -s {url}/hello; done");
    eprintln!("  curl -s -H 'x-request-id: my-id-1' -D - {url}/ -o /dev/null");
    eprintln!("Access log lines (JSON) go to stdout. Stop with Ctrl-C.");
    eprintln!();
}
