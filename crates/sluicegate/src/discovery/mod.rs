//! Endpoints from elsewhere than the config file's `endpoints` (SPEC 2 `discovery`): the
//! services' discovered sets, and how they join the static ones.
//!
//! Every change of a set goes the one way a reload goes: the config in force (the file's, as
//! last loaded) with the discovered endpoints added to their services becomes a new snapshot
//! (`Gateway::discovery_changed`). So the balancers are rebuilt as on a reload (ring_hash and
//! maglev move only the changed keys), endpoints that stay keep their health, outlier and
//! breaker state (kept by service and address), a new one starts as `initial_health` says, and
//! a removed one finishes the requests it has: they hold the snapshot they started on.
//!
//! - `registry.rs`: endpoints registered over the admin API, expiring without a heartbeat.

pub mod registry;

use crate::config::{Config, DiscoveryConfig, EndpointConfig};
pub use registry::{Registration, Registrations};

/// `file` with each discovering service's discovered endpoints added after its static ones
/// (an address that is also static stays static, once).
pub fn effective(file: &Config, registrations: &Registrations) -> Config {
    let mut config = file.clone();
    for service in &mut config.services {
        let discovered: Vec<EndpointConfig> = match &service.discovery {
            Some(DiscoveryConfig::Registry { .. }) => registrations.endpoints(&service.name),
            None => continue,
        };
        for e in discovered {
            if !service.endpoints.iter().any(|s| s.address == e.address) {
                service.endpoints.push(e);
            }
        }
    }
    config
}
