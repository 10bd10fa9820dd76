//! An endpoint as the balancers see it: address, weight and live load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One upstream endpoint of a service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Relative share of traffic, at least 1.
    pub weight: u32,
    /// Live load, shared by every worker and kept across config snapshots by the caller.
    pub load: Arc<EndpointLoad>,
}

impl Endpoint {
    pub fn new(address: SocketAddr, weight: u32) -> Endpoint {
        Endpoint {
            address,
            weight: weight.max(1),
            load: Arc::new(EndpointLoad::default()),
        }
    }
}

/// Requests currently in flight to an endpoint (read by least_connections and
/// power_of_two_choices, reported by the admin API).
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
}

impl EndpointLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.begin();
        InFlightGuard { load: self.clone() }
    }

    /// Counts one request in flight; the caller must [`end`](Self::end) it exactly once. For
    /// holders that already keep the endpoint alive (the request path holds its snapshot), which
    /// saves the guard's reference count.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the in-flight count when the request ends, however it ends.
#[derive(Debug)]
pub struct InFlightGuard {
    load: Arc<EndpointLoad>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.load.end();
    }
}
