//! Every balancing algorithm, shown through the real proxy against real backends.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{Backend, Gateway, Toml};

fn gateway(algorithm: &str, extra: &str, backends: &[(&Backend, u32)]) -> Gateway {
    let endpoints: Vec<_> = backends.iter().map(|(b, w)| (b.addr, *w)).collect();
    Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("all", "app", "")
            .weighted_service(
                "app",
                &endpoints,
                &format!("algorithm = \"{algorithm}\"\n{extra}"),
            )
            .build(),
    )
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::start(&format!("b{i}"))).collect()
}

/// Sends `n` GETs of `path` on one connection and returns the backend names in order.
fn picks(gw: &Gateway, n: usize, path: &str, headers: &[(&str, &str)]) -> Vec<String> {
    let mut c = gw.client();
    (0..n)
        .map(|_| {
            let r = c.request("GET", path, headers, b"");
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-backend").expect("x-backend").to_string()
        })
        .collect()
}

fn counts(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_cycles() {
    let bs = backends(3);
    let gw = gateway("round_robin", "", &[(&bs[0], 1), (&bs[1], 5), (&bs[2], 1)]);
    let seq = picks(&gw, 30, "/", &[]);
    for w in seq.windows(3) {
        assert_ne!(w[0], w[1]);
        assert_ne!(w[0], w[2], "a cycle of three: {seq:?}");
    }
    assert!(
        counts(&seq).values().all(|&c| c == 10),
        "weights ignored: {seq:?}"
    );
}

#[test]
fn weighted_round_robin_is_proportional_and_smooth() {
    let bs = backends(3);
    let gw = gateway(
        "weighted_round_robin",
        "",
        &[(&bs[0], 1), (&bs[1], 2), (&bs[2], 3)],
    );
    let seq = picks(&gw, 60, "/", &[]);
    let c = counts(&seq);
    assert_eq!((c["b0"], c["b1"], c["b2"]), (10, 20, 30), "{seq:?}");
    // Smooth: the heaviest endpoint never gets a burst.
    let longest_run = seq
        .chunk_by(|a, b| a == b)
        .map(|run| run.len())
        .max()
        .unwrap();
    assert!(longest_run <= 2, "burst of {longest_run}: {seq:?}");
}

/// Starts a slow request in the background and waits until a backend holds it.
fn hold_one_request(gw: &Gateway, bs: &[Backend]) -> (std::thread::JoinHandle<String>, usize) {
    let before: Vec<usize> = bs.iter().map(Backend::hits).collect();
    let addr = gw.addr();
    let slow = std::thread::spawn(move || {
        let mut c = support::Client::connect(addr);
        let r = c.get("/sleep/1500");
        r.header("x-backend").unwrap().to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = (0..bs.len()).find(|&i| bs[i].hits() > before[i]) {
            return (slow, i);
        }
        assert!(Instant::now() < deadline, "slow request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn least_connections_avoids_the_busy_endpoint() {
    let bs = backends(2);
    let gw = gateway("least_connections", "", &[(&bs[0], 1), (&bs[1], 1)]);
    let (slow, busy) = hold_one_request(&gw, &bs);
    let seq = picks(&gw, 10, "/", &[]);
    let idle = format!("b{}", 1 - busy);
    assert!(
        seq.iter().all(|n| *n == idle),
        "busy b{busy} still picked: {seq:?}"
    );
    assert_eq!(slow.join().unwrap(), format!("b{busy}"));
    // Idle again: both are used.
    let seq = picks(&gw, 10, "/", &[]);
    assert_eq!(counts(&seq).len(), 2, "{seq:?}");
}

#[test]
fn power_of_two_choices_avoids_the_busy_endpoint() {
    let bs = backends(2);
    let gw = gateway("power_of_two_choices", "", &[(&bs[0], 1), (&bs[1], 1)]);
    let (slow, busy) = hold_one_request(&gw, &bs);
    let seq = picks(&gw, 10, "/", &[]);
    let idle = format!("b{}", 1 - busy);
    assert!(
        seq.iter().all(|n| *n == idle),
        "busy b{busy} still picked: {seq:?}"
    );
    slow.join().unwrap();
}

#[test]
fn random_follows_weights() {
    let bs = backends(2);
    let gw = gateway("random", "", &[(&bs[0], 1), (&bs[1], 3)]);
    let seq = picks(&gw, 400, "/", &[]);
    let heavy = counts(&seq).get("b1").copied().unwrap_or(0) as f64 / 400.0;
    // Expected 0.75; the band is over six standard deviations wide.
    assert!((0.62..=0.88).contains(&heavy), "share {heavy}");
}

#[test]
fn hash_on_header_is_sticky_and_falls_back_to_round_robin() {
    let bs = backends(3);
    let gw = gateway(
        "hash",
        "hash_on = \"header:x-user-id\"",
        &[(&bs[0], 1), (&bs[1], 1), (&bs[2], 1)],
    );
    let mut seen = HashMap::new();
    for user in 0..60 {
        let id = format!("user-{user}");
        let seq = picks(&gw, 3, "/", &[("x-user-id", &id)]);
        assert!(seq.iter().all(|n| *n == seq[0]), "{id} moved: {seq:?}");
        seen.insert(id, seq[0].clone());
    }
    let spread = counts(&seen.values().cloned().collect::<Vec<_>>());
    assert_eq!(
        spread.len(),
        3,
        "keys spread over every endpoint: {spread:?}"
    );
    // No key: round robin.
    let seq = picks(&gw, 6, "/", &[]);
    assert_eq!(
        counts(&seq).values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{seq:?}"
    );
}

#[test]
fn hash_on_cookie_query_path_and_client_ip() {
    let bs = backends(3);
    let all = [(&bs[0], 1), (&bs[1], 1), (&bs[2], 1)];
    for (hash_on, requests) in [
        (
            "cookie:session",
            vec![("/", "session=abc; other=1"), ("/x", "a=b; session=abc")],
        ),
        (
            "query:user",
            vec![("/a?user=42", ""), ("/b?x=1&user=42", "")],
        ),
        ("path", vec![("/same/path", ""), ("/same/path", "")]),
    ] {
        let gw = gateway("hash", &format!("hash_on = \"{hash_on}\""), &all);
        let names: Vec<String> = requests
            .iter()
            .map(|(path, cookie)| {
                let headers: Vec<(&str, &str)> = if cookie.is_empty() {
                    vec![]
                } else {
                    vec![("cookie", cookie)]
                };
                picks(&gw, 1, path, &headers).remove(0)
            })
            .collect();
        assert_eq!(names[0], names[1], "{hash_on}: same key, same endpoint");
    }
    let gw = gateway("hash", "hash_on = \"client_ip\"", &all);
    let seq = picks(&gw, 12, "/", &[]);
    assert_eq!(counts(&seq).len(), 1, "one client, one endpoint: {seq:?}");
}

/// Maps 300 keys through a gateway whose service has `members` of `bs`.
fn key_map(algorithm: &str, bs: &[Backend], members: &[usize]) -> Vec<String> {
    let endpoints: Vec<(&Backend, u32)> = members.iter().map(|&i| (&bs[i], 1)).collect();
    let gw = gateway(algorithm, "hash_on = \"header:x-key\"", &endpoints);
    let mut c = gw.client();
    (0..300)
        .map(|k| {
            let r = c.request("GET", "/", &[("x-key", &format!("key-{k}"))], b"");
            r.header("x-backend").unwrap().to_string()
        })
        .collect()
}

fn consistent_on_removal(algorithm: &str) {
    let bs = backends(5);
    let before = key_map(algorithm, &bs, &[0, 1, 2, 3, 4]);
    let after = key_map(algorithm, &bs, &[0, 1, 3, 4]);
    assert!(after.iter().all(|n| n != "b2"));
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let moved_between_survivors = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && *a != "b2")
        .count();
    // Only the removed endpoint's keys (about 1/5 of them; counted exactly here, as 300 keys
    // are too few to hold the share to 1/5) move, give or take 3% of all keys. The statistical
    // 1/N + 3% bound is checked over 20,000 keys by the balancer's own property tests.
    let on_removed = before.iter().filter(|n| *n == "b2").count();
    let limit = on_removed as f64 + 300.0 * 0.03;
    assert!(
        (moved as f64) <= limit,
        "{algorithm}: {moved} of 300 moved ({on_removed} were on b2)"
    );
    assert!(
        (moved_between_survivors as f64) <= 300.0 * 0.03,
        "{algorithm}: {moved_between_survivors} keys moved between surviving endpoints"
    );
    // Putting it back restores the original mapping.
    assert_eq!(key_map(algorithm, &bs, &[0, 1, 2, 3, 4]), before);
}

#[test]
fn ring_hash_moves_only_the_removed_endpoints_keys() {
    consistent_on_removal("ring_hash");
}

#[test]
fn maglev_moves_only_the_removed_endpoints_keys() {
    consistent_on_removal("maglev");
}
