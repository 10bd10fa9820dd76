//! Properties every balancer shares, checked through [`build`], and the helpers the per-algorithm
//! tests use (endpoint lists, share counting, the consistency and refusal checks of the
//! consistent hashes).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::*;

/// Endpoints `127.0.0.1:9000+i` with the given weights.
pub(super) fn endpoints(weights: &[u32]) -> Arc<[Endpoint]> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let port = 9000 + u16::try_from(i).expect("test endpoint count fits a port");
            Endpoint::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), w)
        })
        .collect()
}

/// Share of `picks` picks each of `n` endpoints got; pick `p` uses key `key(p)`.
pub(super) fn shares(
    balancer: &dyn Balancer,
    n: usize,
    picks: usize,
    mut key: impl FnMut(usize) -> Option<u64>,
    accept: &dyn Fn(usize) -> bool,
) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    for p in 0..picks {
        let i = balancer
            .pick(key(p), accept)
            .expect("some endpoint accepted");
        counts[i] += 1;
    }
    counts.iter().map(|&c| c as f64 / picks as f64).collect()
}

fn keys(seed: u64, count: usize) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count).map(|_| rng.u64(..)).collect()
}

type Build = fn(&[Endpoint]) -> Box<dyn Balancer>;

const CONSISTENCY_KEYS: usize = 20_000;

/// Allowed moves beyond the changed endpoint's own share, as a fraction of all keys.
const MOVE_TOLERANCE: f64 = 0.03;

/// Fractions of keys that moved when one endpoint was removed, and when it was added back.
#[derive(Debug)]
pub(super) struct Consistency {
    pub removal_moves: f64,
    /// Keys that moved from one surviving endpoint to another.
    pub removal_survivor_moves: f64,
    pub addition_moves: f64,
    /// Keys that moved between endpoints other than the added one.
    pub addition_survivor_moves: f64,
}

/// Removes endpoint `which` from the weighted list, then adds it back, and checks that no more
/// keys move than the changed endpoint's share of the weight (1/N for equal weights) plus
/// `MOVE_TOLERANCE`. Returns the measured moves for finer assertions.
pub(super) fn check_consistency(
    build: Build,
    weights: &[u32],
    which: usize,
    seed: u64,
) -> Result<Consistency, TestCaseError> {
    let all = endpoints(weights);
    let without: Vec<Endpoint> = all
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != which)
        .map(|(_, e)| e.clone())
        .collect();
    let changed = all[which].address;
    let share = f64::from(weights[which]) / f64::from(weights.iter().sum::<u32>());

    // Moves from `before` to `after`, and those among endpoints other than `changed`.
    let moves = |before: &[Endpoint], after: &[Endpoint]| {
        let (b, a) = (build(before), build(after));
        let (mut moved, mut between_others) = (0usize, 0usize);
        for k in keys(seed, CONSISTENCY_KEYS) {
            let from = b.pick(Some(k), &|_| true).map(|i| before[i].address);
            let to = a.pick(Some(k), &|_| true).map(|i| after[i].address);
            if from != to {
                moved += 1;
                if from != Some(changed) && to != Some(changed) {
                    between_others += 1;
                }
            }
        }
        let total = CONSISTENCY_KEYS as f64;
        (moved as f64 / total, between_others as f64 / total)
    };
    let (removal_moves, removal_survivor_moves) = moves(&all, &without);
    let (addition_moves, addition_survivor_moves) = moves(&without, &all);
    let report = Consistency {
        removal_moves,
        removal_survivor_moves,
        addition_moves,
        addition_survivor_moves,
    };
    prop_assert!(
        report.removal_moves <= share + MOVE_TOLERANCE,
        "removing a {share:.3} share: {report:?}"
    );
    prop_assert!(
        report.addition_moves <= share + MOVE_TOLERANCE,
        "adding a {share:.3} share: {report:?}"
    );
    Ok(report)
}

/// Checks that each endpoint's share of 20,000 random keys is within `structural` (relative:
/// 0.1 = ±10%) of its weight share, plus five standard deviations of the sampling noise of 20,000
/// keys (alone ±18% of the share for an endpoint expecting 800 keys; at five deviations a false
/// failure is a one-in-a-million event per endpoint).
pub(super) fn check_shares(
    build: Build,
    weights: &[u32],
    seed: u64,
    structural: f64,
) -> Result<(), TestCaseError> {
    let eps = endpoints(weights);
    let keys = keys(seed, CONSISTENCY_KEYS);
    let got = shares(
        &*build(&eps),
        eps.len(),
        keys.len(),
        |p| Some(keys[p]),
        &|_| true,
    );
    let total = f64::from(weights.iter().sum::<u32>());
    for (i, &w) in weights.iter().enumerate() {
        let want = f64::from(w) / total;
        let sampling = (want * (1.0 - want) / keys.len() as f64).sqrt();
        prop_assert!(
            (got[i] - want).abs() <= structural * want + 5.0 * sampling,
            "endpoint {i}: share {:.4}, weight share {want:.4}",
            got[i]
        );
    }
    Ok(())
}

/// Refuses endpoint `refused` and checks: its keys go elsewhere (the same place each time, over
/// more than one endpoint when there are several), other keys stay, and its keys come back once
/// it is accepted again.
pub(super) fn check_refusal(
    build: Build,
    weights: &[u32],
    refused: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let eps = endpoints(weights);
    let b = build(&eps);
    let all = |_: usize| true;
    let some = |i: usize| i != refused;
    let mut lent_to = vec![false; eps.len()];
    for k in keys(seed, 4_000) {
        let home = b.pick(Some(k), &all);
        let away = b.pick(Some(k), &some);
        prop_assert!(home.is_some() && away.is_some());
        prop_assert_eq!(
            away,
            b.pick(Some(k), &some),
            "refused pick is deterministic"
        );
        if home == Some(refused) {
            prop_assert_ne!(away, Some(refused));
            if let Some(i) = away {
                lent_to[i] = true;
            }
        } else {
            prop_assert_eq!(away, home, "a key of an accepted endpoint moved");
        }
        prop_assert_eq!(b.pick(Some(k), &all), home, "key came back");
    }
    if eps.len() >= 3 {
        prop_assert!(lent_to.iter().filter(|&&l| l).count() >= 2, "{:?}", lent_to);
    }
    Ok(())
}

fn build_default(algorithm: Algorithm, weights: &[u32]) -> Box<dyn Balancer> {
    build(algorithm, endpoints(weights), BuildOptions::default())
}

#[test]
fn algorithm_names_round_trip() {
    for (name, algorithm) in Algorithm::ALL {
        assert_eq!(Algorithm::from_name(name), Some(algorithm));
        assert_eq!(algorithm.name(), name);
    }
}

#[test]
fn one_endpoint_always_works() {
    for (name, algorithm) in Algorithm::ALL {
        let b = build_default(algorithm, &[7]);
        for key in [None, Some(0), Some(u64::MAX), Some(12345)] {
            assert_eq!(b.pick(key, &|_| true), Some(0), "{name}");
            assert_eq!(b.pick(key, &|_| false), None, "{name}");
        }
    }
}

#[test]
fn hashing_algorithms_round_robin_without_a_key() {
    for (name, algorithm) in Algorithm::ALL {
        if !algorithm.hashes() {
            continue;
        }
        let b = build_default(algorithm, &[1, 5, 2]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(None, &|_| true)).collect();
        let expected: Vec<_> = [0, 1, 2, 0, 1, 2].into_iter().map(Some).collect();
        assert_eq!(picks, expected, "{name}");
        assert_eq!(b.pick(None, &|i| i == 1), Some(1), "{name}");
    }
}

#[test]
fn concurrent_picks_share_one_rotation() {
    let b: Arc<dyn Balancer> = build_default(Algorithm::RoundRobin, &[1; 4]).into();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut counts = [0usize; 4];
                for _ in 0..10_000 {
                    counts[b.pick(None, &|_| true).unwrap()] += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = [0usize; 4];
    for t in threads {
        for (sum, c) in total.iter_mut().zip(t.join().unwrap()) {
            *sum += c;
        }
    }
    assert_eq!(total, [10_000; 4]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever the weights, keys and refusals: never a panic, never an index out of range or
    /// refused, and `None` exactly when every endpoint is refused.
    #[test]
    fn every_algorithm_picks_an_accepted_endpoint_or_none(
        weights in prop::collection::vec(1u32..=50, 1..=12),
        refused in prop::collection::vec(prop::bool::weighted(0.4), 12),
        keys in prop::collection::vec(prop::option::weighted(0.8, any::<u64>()), 20),
    ) {
        let n = weights.len();
        let accept = |i: usize| !refused[i];
        let any_accepted = (0..n).any(accept);
        for (name, algorithm) in Algorithm::ALL {
            let b = build_default(algorithm, &weights);
            for &key in &keys {
                match b.pick(key, &accept) {
                    Some(i) => prop_assert!(i < n && accept(i), "{}: picked {}", name, i),
                    None => prop_assert!(!any_accepted, "{}: None with endpoints accepted", name),
                }
                prop_assert_eq!(b.pick(key, &|_| false), None, "{}", name);
            }
        }
    }
}

#[test]
fn extreme_weights_build_bounded_structures() {
    for (name, algorithm) in Algorithm::ALL {
        let b = build_default(algorithm, &[u32::MAX, 1, u32::MAX - 1]);
        for key in [None, Some(0), Some(u64::MAX)] {
            assert!(b.pick(key, &|_| true).is_some_and(|i| i < 3), "{name}");
            assert_eq!(b.pick(key, &|i| i == 1), Some(1), "{name}");
        }
    }
}
