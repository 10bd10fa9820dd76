//! `discovery = { type = "registry", default_ttl }`: instances register themselves over the
//! admin API (`POST /api/v1/services/{name}/endpoints` with `{address, weight, ttl}`), renew by
//! registering again before their ttl runs out (a heartbeat), and leave with `DELETE` — or by
//! falling silent, when the ttl removes them.
//!
//! Registrations live in the gateway, not in a snapshot: a reload keeps them (those of a
//! service that no longer uses the registry are dropped).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{EndpointConfig, EndpointSource};

/// One registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub address: SocketAddr,
    pub weight: u32,
    pub ttl: Duration,
    /// When it is removed unless renewed.
    pub expires: Instant,
}

/// What a registration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new endpoint: the service's set changed.
    Added,
    /// Its weight changed: the set changed.
    Updated,
    /// Renewed as it was (a heartbeat): only its expiry moved.
    Renewed,
}

/// Every registry-discovered service's registrations.
#[derive(Debug, Default)]
pub struct Registrations {
    services: Mutex<HashMap<String, Vec<Registration>>>,
}

impl Registrations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Registration>>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `address` in `service`, or renews it.
    pub fn register(
        &self,
        service: &str,
        address: SocketAddr,
        weight: u32,
        ttl: Duration,
        now: Instant,
    ) -> Registered {
        let mut services = self.lock();
        let list = services.entry(service.to_string()).or_default();
        let expires = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(86_400));
        match list.iter_mut().find(|r| r.address == address) {
            Some(r) => {
                let changed = r.weight != weight;
                *r = Registration {
                    address,
                    weight,
                    ttl,
                    expires,
                };
                if changed {
                    Registered::Updated
                } else {
                    Registered::Renewed
                }
            }
            None => {
                list.push(Registration {
                    address,
                    weight,
                    ttl,
                    expires,
                });
                Registered::Added
            }
        }
    }

    /// Removes `address` from `service`; whether it was registered.
    pub fn deregister(&self, service: &str, address: SocketAddr) -> bool {
        let mut services = self.lock();
        let Some(list) = services.get_mut(service) else {
            return false;
        };
        let before = list.len();
        list.retain(|r| r.address != address);
        before != list.len()
    }

    /// Removes the registrations not renewed in time; returns them, by service.
    pub fn expire(&self, now: Instant) -> Vec<(String, SocketAddr)> {
        let mut gone = Vec::new();
        for (service, list) in self.lock().iter_mut() {
            list.retain(|r| {
                let alive = r.expires > now;
                if !alive {
                    gone.push((service.clone(), r.address));
                }
                alive
            });
        }
        gone
    }

    /// Drops the registrations of services for which `keep` is false (a reload removed the
    /// service, or its registry).
    pub fn retain_services(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|service, _| keep(service));
    }

    /// `service`'s registrations now.
    pub fn list(&self, service: &str) -> Vec<Registration> {
        self.lock().get(service).cloned().unwrap_or_default()
    }

    /// `service`'s registered endpoints, as config endpoints.
    pub fn endpoints(&self, service: &str) -> Vec<EndpointConfig> {
        self.list(service)
            .into_iter()
            .map(|r| EndpointConfig {
                address: r.address,
                weight: r.weight,
                source: EndpointSource::Registry,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_renew_change_and_expire() {
        let r = Registrations::default();
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let ttl = Duration::from_secs(2);
        assert_eq!(r.register("s", a, 1, ttl, t0), Registered::Added);
        assert_eq!(r.register("s", b, 1, ttl, t0), Registered::Added);
        // A heartbeat moves the expiry only; a new weight changes the set.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.register("s", a, 1, ttl, t1), Registered::Renewed);
        assert_eq!(r.register("s", a, 3, ttl, t1), Registered::Updated);
        // b was not renewed: gone at 2 s; a lives to 3 s.
        let t2 = t0 + Duration::from_millis(2001);
        assert_eq!(r.expire(t2), vec![("s".to_string(), b)]);
        assert_eq!(r.endpoints("s").len(), 1);
        assert_eq!(r.endpoints("s")[0].weight, 3);
        assert!(r.deregister("s", a));
        assert!(!r.deregister("s", a));
        assert!(r.endpoints("s").is_empty());
        r.register("gone", a, 1, ttl, t0);
        r.retain_services(|s| s != "gone");
        assert!(r.list("gone").is_empty());
    }
}
