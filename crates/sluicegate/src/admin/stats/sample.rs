//! One reading of every route's cumulative counters: what the sampler stores every few seconds
//! and what a query reads live as its newest point.
//!
//! A reading copies numbers and names only. It never keeps a metric handle: the registry prunes
//! the series of removed routes once nothing else holds their handles, and a ring of samples
//! holding them would keep every removed route in `/metrics` for minutes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::observe::metrics::{HistogramSnapshot, StatusCounters};
use crate::proxy::snapshot::{RouteRuntime, Snapshot};

/// Responses counted so far by one status-counter series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// 5xx responses: the gateway's own (502, 503, 504) and the upstream's.
    pub errors: u64,
}

impl Counts {
    fn read(counters: &StatusCounters) -> Counts {
        let mut counts = Counts::default();
        counters.for_each_nonzero(|code, n| {
            counts.requests = counts.requests.saturating_add(n);
            if code.is_some_and(|c| (500..600).contains(&c)) {
                counts.errors = counts.errors.saturating_add(n);
            }
        });
        counts
    }

    /// What this series counted since `old` (`None`: it did not exist then).
    ///
    /// Counters only grow, so a smaller reading means the series restarted (a reload removed
    /// the route and its series was pruned, then a later one added it back): all it holds now
    /// was counted since. That is Prometheus's `increase()` rule; like it, a restart followed by
    /// more counts than before goes unnoticed. Requests and errors live in one series and
    /// restart together, so either one shrinking means both restarted.
    pub fn since(self, old: Option<Counts>) -> Counts {
        match old {
            Some(o) if self.requests >= o.requests && self.errors >= o.errors => Counts {
                requests: self.requests - o.requests,
                errors: self.errors - o.errors,
            },
            _ => self,
        }
    }

    pub fn add(&mut self, other: Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
    }
}

/// One route's counters at one moment.
#[derive(Debug, Clone)]
pub struct RouteReading {
    pub name: Arc<str>,
    pub service: Arc<str>,
    /// Per listener the route serves on: `sluicegate_http_requests_total` is one series per
    /// listener, and each may restart on its own (a listener removed and added back).
    pub listeners: Vec<(Arc<str>, Counts)>,
    /// `sluicegate_http_request_duration_seconds`, one series for all the route's listeners.
    pub latency: HistogramSnapshot,
}

/// Every route's counters at one moment, in the config's order.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub routes: Vec<RouteReading>,
}

impl Sample {
    /// Reads `snapshot`'s routes now: a few hundred relaxed loads per route and listener, on
    /// the admin side, never on the request path.
    pub fn read(snapshot: &Snapshot, at: Instant) -> Sample {
        let mut by_name: HashMap<&str, Vec<(&Arc<str>, &RouteRuntime)>> = HashMap::new();
        for listener in &snapshot.listeners {
            for route in listener.routes.iter() {
                by_name
                    .entry(&route.name)
                    .or_default()
                    .push((&listener.name, route));
            }
        }
        let routes = snapshot
            .config
            .routes
            .iter()
            .filter_map(|r| {
                let runtimes = by_name.get(r.name.as_str())?;
                let (_, first) = runtimes.first()?;
                Some(RouteReading {
                    name: Arc::clone(&first.name),
                    service: Arc::clone(&first.service.name),
                    listeners: runtimes
                        .iter()
                        .map(|(listener, route)| {
                            (Arc::clone(listener), Counts::read(&route.requests))
                        })
                        .collect(),
                    latency: first.duration.snapshot(),
                })
            })
            .collect();
        Sample { at, routes }
    }

    /// The routes by name, to find a route's earlier reading.
    pub fn index(&self) -> HashMap<&str, &RouteReading> {
        self.routes.iter().map(|r| (&*r.name, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_every_code_and_5xx_as_errors() {
        let c = StatusCounters::new();
        c.add(200, 7);
        c.add(404, 2);
        c.add(502, 1);
        c.add(599, 1);
        c.add(999, 4);
        assert_eq!(
            Counts::read(&c),
            Counts {
                requests: 15,
                errors: 2
            }
        );
    }

    #[test]
    fn counts_since_an_older_reading_subtract_or_restart() {
        let now = Counts {
            requests: 10,
            errors: 3,
        };
        let old = Counts {
            requests: 4,
            errors: 1,
        };
        assert_eq!(
            now.since(Some(old)),
            Counts {
                requests: 6,
                errors: 2
            }
        );
        assert_eq!(now.since(None), now);
        // Errors fell: the series restarted even though requests grew.
        let restarted_old = Counts {
            requests: 8,
            errors: 5,
        };
        assert_eq!(now.since(Some(restarted_old)), now);
    }
}
