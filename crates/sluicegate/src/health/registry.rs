//! [`Registry`]: the health state of every endpoint, keyed by service name and address, so that
//! it outlives config snapshots.
//!
//! A reload builds a new snapshot whose endpoints fetch their state here: an endpoint present in
//! both configs gets the same [`EndpointHealth`] (verdict, ejection, streaks), a new one starts
//! fresh, and [`Registry::retain`] forgets the ones that left. Snapshots hold the `Arc`s they
//! fetched, so requests in flight on an old snapshot keep working on state that is still live.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::EndpointHealth;

/// Endpoint health by `(service, address)`.
///
/// A std `Mutex` is fine here (DESIGN.md bans global locks on the request path, and this is not
/// one): the registry is touched only while a config snapshot is built or an endpoint set changes,
/// never per request and never across an `.await`; requests use the `Arc`s handed out.
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<EndpointHealth>>>,
}

impl Registry {
    /// The state of `address` in `service`, created healthy on first use.
    pub fn get_or_create(&self, service: &str, address: SocketAddr) -> Arc<EndpointHealth> {
        self.lock()
            .entry((service.to_string(), address))
            .or_default()
            .clone()
    }

    /// The state of `address` in `service`; created with `healthy` as its first verdict when
    /// it is new (a discovered endpoint that must pass its checks first starts unhealthy).
    pub fn get_or_create_as(
        &self,
        service: &str,
        address: SocketAddr,
        healthy: bool,
    ) -> Arc<EndpointHealth> {
        self.lock()
            .entry((service.to_string(), address))
            .or_insert_with(|| {
                let state = EndpointHealth::new();
                state.set_healthy(healthy);
                Arc::new(state)
            })
            .clone()
    }

    /// The state of `address` in `service`, if it exists (for the admin API).
    pub fn get(&self, service: &str, address: SocketAddr) -> Option<Arc<EndpointHealth>> {
        self.lock().get(&(service.to_string(), address)).cloned()
    }

    /// Forgets every endpoint for which `keep(service, address)` is false: called after a reload
    /// or a discovery update with the endpoints that are still configured.
    pub fn retain(&self, keep: impl Fn(&str, SocketAddr) -> bool) {
        self.lock()
            .retain(|(service, address), _| keep(service, *address));
    }

    /// How many endpoints have state.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The map, even if a thread panicked while holding the lock: every update here is a single
    /// map operation, so a poisoned map is still consistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, SocketAddr), Arc<EndpointHealth>>> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn same_key_same_state() {
        let registry = Registry::default();
        let a = registry.get_or_create("users", addr(9001));
        let b = registry.get_or_create("users", addr(9001));
        assert!(Arc::ptr_eq(&a, &b));
        a.set_healthy(false);
        assert!(!b.is_healthy());
        assert!(Arc::ptr_eq(&registry.get("users", addr(9001)).unwrap(), &a));
    }

    #[test]
    fn service_and_address_both_make_the_key() {
        let registry = Registry::default();
        let a = registry.get_or_create("users", addr(9001));
        assert!(!Arc::ptr_eq(
            &a,
            &registry.get_or_create("users", addr(9002))
        ));
        assert!(!Arc::ptr_eq(
            &a,
            &registry.get_or_create("orders", addr(9001))
        ));
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.get("billing", addr(9001)).map(|_| ()), None);
    }

    #[test]
    fn retain_forgets_endpoints_that_left() {
        let registry = Registry::default();
        let kept = registry.get_or_create("users", addr(9001));
        kept.set_healthy(false);
        let _ = registry.get_or_create("users", addr(9002));
        let _ = registry.get_or_create("orders", addr(9001));

        registry.retain(|service, address| service == "users" && address.port() == 9001);
        assert_eq!(registry.len(), 1);
        assert!(Arc::ptr_eq(
            &registry.get_or_create("users", addr(9001)),
            &kept
        ));
        // A forgotten endpoint that comes back starts afresh.
        assert!(registry.get("users", addr(9002)).is_none());
        assert!(registry.get_or_create("users", addr(9002)).is_healthy());

        registry.retain(|_, _| false);
        assert!(registry.is_empty());
    }
}
