//! Wiring: from a validated config to running listeners, workers and the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::observe::access_log::AccessLog;
use crate::proxy::listener::{self, ListenError, Workers};
use crate::proxy::{Shared, Snapshot};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] std::io::Error),
}

/// A started gateway: its bound listeners and its workers.
pub struct Gateway {
    pub listeners: Vec<(String, SocketAddr)>,
    pub shared: Arc<Shared>,
    workers: Workers,
    grace: Duration,
}

impl Gateway {
    /// Binds every listener and starts the workers.
    pub fn start(config: Config) -> Result<Gateway, StartError> {
        let workers = match config.runtime.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let grace = config.runtime.shutdown_grace;
        let access_log =
            AccessLog::start(&config.access_log.target).map_err(StartError::AccessLog)?;
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(listener::bind(&l.name, l.bind, workers)?);
        }
        let listeners = bound
            .iter()
            .map(|b| (b.name.to_string(), b.address))
            .collect();
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::build(config)),
            access_log,
        });
        let workers = Workers::start(Arc::clone(&shared), bound)?;
        Ok(Gateway {
            listeners,
            shared,
            workers,
            grace,
        })
    }

    /// Stops accepting and waits up to `runtime.shutdown_grace` for open requests.
    pub fn shutdown(self) -> bool {
        self.workers.shutdown(self.grace)
    }
}
