//! Load balancing: choosing one endpoint of a service for each request (or TCP connection).
//!
//! This module owns the algorithms of SPEC 2.1, one file each, behind the [`Balancer`] trait. It
//! knows nothing of health checks, breakers or the HTTP request: the caller extracts the hash key
//! (see [`HashOn`]) and passes an `accept` predicate through which health, outlier ejection and
//! breakers refuse endpoints, so `balance` never imports `health`. A balancer is built once per
//! config snapshot, off the hot path, and `pick` is called per request from every worker thread;
//! its state is atomics only, never a lock.

mod endpoint;
mod hash;
mod hash_on;
mod least_connections;
mod maglev;
mod p2c;
mod random;
mod ring_hash;
mod round_robin;
pub mod sticky;
#[cfg(test)]
mod tests;
mod weighted_round_robin;

use std::fmt;
use std::sync::Arc;

pub use endpoint::{Endpoint, EndpointLoad, InFlightGuard};
pub use hash_on::{HashOn, HashOnError};
pub use maglev::DEFAULT_TABLE_SIZE as MAGLEV_DEFAULT_TABLE_SIZE;
pub use maglev::MAX_TABLE_SIZE as MAGLEV_MAX_TABLE_SIZE;
pub use sticky::Sticky;

/// Chooses an endpoint index (into the endpoint slice the balancer was built with).
pub trait Balancer: Send + Sync + fmt::Debug {
    /// Picks an endpoint for a request whose hashed key is `key` ([`HashOn::key_hash`]; `None` when
    /// the service does not hash, or the request lacks the key: hashing algorithms then fall back
    /// to round robin).
    ///
    /// `accept(i)` says whether endpoint `i` may take the request now; a refused endpoint is
    /// skipped without disturbing the balancer's own state (hash keys fall to the next endpoint in
    /// their order, and come back when it is accepted again). `None` when no endpoint is accepted.
    fn pick(&self, key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// The balancing algorithms of SPEC 2.1, by their config names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    Random,
    PowerOfTwoChoices,
    Hash,
    RingHash,
    Maglev,
}

impl Algorithm {
    /// Every algorithm with its config name, in the order SPEC 2 lists them.
    pub const ALL: [(&'static str, Algorithm); 8] = [
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_connections", Algorithm::LeastConnections),
        ("random", Algorithm::Random),
        ("power_of_two_choices", Algorithm::PowerOfTwoChoices),
        ("hash", Algorithm::Hash),
        ("ring_hash", Algorithm::RingHash),
        ("maglev", Algorithm::Maglev),
    ];

    /// Parses a config name such as `"ring_hash"`.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("round_robin")
    }

    /// Whether the algorithm needs `hash_on` (hash, ring_hash, maglev).
    pub fn hashes(self) -> bool {
        matches!(
            self,
            Algorithm::Hash | Algorithm::RingHash | Algorithm::Maglev
        )
    }
}

/// Options that only some algorithms read.
#[derive(Clone, Copy, Debug)]
pub struct BuildOptions {
    /// Maglev lookup table size; must be prime and larger than the endpoint count.
    pub maglev_table_size: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            maglev_table_size: MAGLEV_DEFAULT_TABLE_SIZE,
        }
    }
}

/// Builds the balancer for `algorithm` over `endpoints` (none: a discovered service with no
/// endpoint yet, whose every pick is `None`).
pub fn build(
    algorithm: Algorithm,
    endpoints: Arc<[Endpoint]>,
    options: BuildOptions,
) -> Box<dyn Balancer> {
    if endpoints.is_empty() {
        return Box::new(NoEndpoint);
    }
    match algorithm {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(endpoints.len())),
        Algorithm::WeightedRoundRobin => {
            Box::new(weighted_round_robin::WeightedRoundRobin::new(&endpoints))
        }
        Algorithm::LeastConnections => {
            Box::new(least_connections::LeastConnections::new(endpoints))
        }
        Algorithm::Random => Box::new(random::Random::new(&endpoints)),
        Algorithm::PowerOfTwoChoices => Box::new(p2c::PowerOfTwoChoices::new(endpoints)),
        Algorithm::Hash => Box::new(hash::Hash::new(&endpoints)),
        Algorithm::RingHash => Box::new(ring_hash::RingHash::new(&endpoints)),
        Algorithm::Maglev => Box::new(maglev::Maglev::new(&endpoints, options.maglev_table_size)),
    }
}

/// The balancer of a service that has no endpoint now.
#[derive(Debug)]
struct NoEndpoint;

impl Balancer for NoEndpoint {
    fn pick(&self, _: Option<u64>, _: &dyn Fn(usize) -> bool) -> Option<usize> {
        None
    }
}

/// Slots a consistent-hash lookup walks past a refused key before falling back to a scan of the
/// endpoints; bounds `accept` calls when most endpoints are refused.
const WALK_LIMIT: usize = 64;

/// The first accepted owner at or after slot `first` of a consistent-hash lookup table (Maglev's
/// table, a hash ring's owners), shared by `maglev` and `ring_hash`: walking the table keeps a
/// refused endpoint's keys spread by weight over the others, and other keys in place. After
/// `WALK_LIMIT + 2n` slots it scans the `n` endpoints from the key's own owner instead.
fn walk_table(
    owners: &[u32],
    first: usize,
    n: usize,
    accept: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let len = owners.len();
    let limit = WALK_LIMIT + 2 * n;
    for step in 0..len.min(limit) {
        let owner = owners[(first + step) % len] as usize;
        if accept(owner) {
            return Some(owner);
        }
    }
    if len <= limit || n == 0 {
        // The whole table, so every endpoint, was refused.
        return None;
    }
    let start = owners[first] as usize;
    (1..=n).map(|s| (start + s) % n).find(|&i| accept(i))
}

/// Whether `n` is prime (for validating a Maglev table size).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}
