//! The admin API (SPEC 3) on `admin.bind`: probes, metrics, status, services, reload, per-route
//! statistics over the last minutes, and a dashboard page at `/`.
//! Handlers are thin reads of the gateway's snapshot and registries; errors use the JSON body of
//! SPEC 5.

mod api;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// Whether the gateway is serving or draining, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub readiness: Arc<Readiness>,
}

/// Binds the admin address now (so a bad one fails at start) and serves it on the current
/// runtime until the process exits.
pub async fn serve(bind: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let address = listener.local_addr()?;
    let loopback = address.ip().is_loopback();
    if !loopback
        && state
            .gateway
            .shared
            .snapshot
            .load()
            .config
            .admin
            .as_ref()
            .is_none_or(|a| a.token.is_none())
    {
        tracing::warn!(%address, "the admin API is bound to a non-loopback address without [admin] token: its write endpoints (reload, purge, registry) answer 403");
    }
    // The first sample now, before the admin address is announced: whoever reads the stats has
    // a reading from before the requests they sent, however young the gateway.
    let route_stats = Arc::new(stats::RouteStats::default());
    route_stats.record(stats::read(&state.gateway));
    tokio::spawn(stats::run_sampler(
        Arc::clone(&route_stats),
        Arc::downgrade(&state.gateway),
    ));
    let app = api::router(state, route_stats, loopback);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(address)
}
