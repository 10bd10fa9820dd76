//! The response cache's shared tier (`[cache] store = "memory+redis"`) through the real binary:
//! two gateway instances and a real `redis-server` (a single server, and a 3-master Redis
//! Cluster). A fill on one instance is a hit on the other; a purge or an unsafe request on one
//! is a miss on both; Redis down leaves each instance its memory tier, with no client errors.

mod support;

use std::time::Duration;

use support::redis::{RedisCluster, RedisServer};
use support::{Backend, Gateway, Toml};

/// A gateway whose route `api` caches in memory and in the Redis of `redis` (a `[redis]`
/// table's body).
fn gateway(b: &Backend, redis: &str) -> Gateway {
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route("api", "app", "cache = { ttl = \"60s\" }")
        .service("app", &[b.addr], "")
        .build();
    Gateway::start(&format!(
        "{toml}\n[cache]\nstore = \"memory+redis\"\n\n[redis]\n{redis}\ntimeout = \"500ms\"\n"
    ))
}

/// A backend and two instances sharing the Redis of `redis` (a single server's URL).
fn two_instances(redis: &RedisServer) -> (Backend, Gateway, Gateway) {
    let b = Backend::start("b");
    let url = format!("url = \"{}\"", redis.url());
    let (one, two) = (gateway(&b, &url), gateway(&b, &url));
    (b, one, two)
}

fn x_cache(r: &support::Response) -> String {
    r.header("x-cache").unwrap_or("").to_string()
}

/// Every request names this `Host`, so that both instances (on their own ports) serve one
/// target.
const HOST: &str = "shop.example";

fn get(gw: &Gateway, path: &str) -> support::Response {
    gw.client().request("GET", path, &[("host", HOST)], b"")
}

/// Whether `gw` holds a response for `path` anywhere (`only-if-cached`: 504 when it does not,
/// without going upstream or storing anything).
fn holds(gw: &Gateway, path: &str) -> bool {
    let r = gw.client().request(
        "GET",
        path,
        &[("host", HOST), ("cache-control", "only-if-cached")],
        b"",
    );
    match r.status {
        200 => true,
        504 => false,
        other => panic!("only-if-cached answered {other}"),
    }
}

fn purge(gw: &Gateway, body: &str) -> (u16, serde_json::Value) {
    let r = gw
        .admin()
        .request("POST", "/api/v1/cache/purge", &[], body.as_bytes());
    (r.status, r.json())
}

/// A fill is written to Redis after the response has gone to the client: waits for it.
fn stored_in_redis(count: impl Fn() -> usize, at_least: usize) {
    support::wait_until("the fill reaches Redis", Duration::from_secs(5), || {
        count() >= at_least
    });
}

#[test]
fn a_fill_on_one_instance_is_a_hit_on_the_other() {
    let redis = RedisServer::start();
    let (b, one, two) = two_instances(&redis);
    let first = get(&one, "/a");
    assert_eq!((first.status, x_cache(&first).as_str()), (200, "MISS"));
    stored_in_redis(|| redis.keys(), 1);
    std::thread::sleep(Duration::from_millis(1100));
    let shared = get(&two, "/a");
    assert_eq!((shared.status, x_cache(&shared).as_str()), (200, "HIT"));
    assert_eq!(shared.text(), "b");
    // Its age counts from the first instance's fetch.
    let age: u64 = shared.header("age").unwrap().parse().unwrap();
    assert!((1..=2).contains(&age), "age {age}");
    assert_eq!(b.hits(), 1, "the second instance did not go upstream");
    // Now in the second instance's memory too.
    assert_eq!(x_cache(&get(&two, "/a")), "HIT");
    // A HEAD is answered from it as well.
    let head = two.client().request("HEAD", "/a", &[("host", HOST)], b"");
    assert_eq!((head.status, x_cache(&head).as_str()), (200, "HIT"));
    assert_eq!(b.hits(), 1);
    // The entry lives in Redis no longer than it can be used (60 s fresh, no validator).
    let ttl: i64 = support::redis::command(redis.port, &["PTTL", &only_key(&redis)])
        .and_then(|r| r.trim_start_matches(':').parse().ok())
        .unwrap();
    assert!((50_000..=60_000).contains(&ttl), "pttl {ttl}");
    for gw in [&one, &two] {
        let log = gw.stderr_text();
        assert!(
            !log.contains("subscription to cache purges was lost"),
            "{log}"
        );
    }
}

/// The name of the one key in `redis` (empty when there is none).
fn only_key(redis: &RedisServer) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    stream.write_all(b"KEYS *\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    if line.trim() != "*1" {
        return String::new();
    }
    for _ in 0..2 {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    line.trim().to_string()
}

#[test]
fn a_purge_on_one_instance_is_a_miss_on_both() {
    let redis = RedisServer::start();
    let (_backend, one, two) = two_instances(&redis);
    let users = "/users/1?h=cache-tag:users";
    let orders = "/orders/1";
    for path in [users, orders] {
        assert_eq!(x_cache(&get(&one, path)), "MISS");
    }
    stored_in_redis(|| redis.keys(), 2);
    for path in [users, orders] {
        assert_eq!(x_cache(&get(&two, path)), "HIT", "{path}");
        assert!(holds(&one, path) && holds(&two, path));
    }
    let (status, answer) = purge(&one, r#"{"prefix": "/users"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["purged"].as_u64(), answer["shared"].as_u64()),
        (Some(1), Some(1))
    );
    // The other instance hears of it by pub/sub, at once.
    support::wait_until(
        "the purge reaches the other instance",
        Duration::from_secs(2),
        || !holds(&two, users),
    );
    assert!(!holds(&one, users));
    assert!(
        holds(&one, orders) && holds(&two, orders),
        "a purge takes what it names only"
    );
    // By tag, from the other instance this time.
    let (status, answer) = purge(&two, r#"{"tag": "users"}"#);
    assert_eq!((status, answer["shared"].as_u64()), (200, Some(0)));
    let (_, answer) = purge(&two, &format!(r#"{{"key": "{HOST}{orders}"}}"#));
    assert_eq!(
        (answer["purged"].as_u64(), answer["shared"].as_u64()),
        (Some(1), Some(1)),
        "{answer}"
    );
    support::wait_until(
        "the key purge reaches the other instance",
        Duration::from_secs(2),
        || !holds(&one, orders),
    );
    let again = get(&two, orders);
    assert_eq!(x_cache(&again), "MISS");
}

#[test]
fn an_unsafe_request_on_one_instance_invalidates_the_other() {
    let redis = RedisServer::start();
    let (_backend, one, two) = two_instances(&redis);
    let doc = "/doc";
    assert_eq!(x_cache(&get(&one, doc)), "MISS");
    stored_in_redis(|| redis.keys(), 1);
    assert_eq!(x_cache(&get(&two, doc)), "HIT");
    let r = one.client().request("POST", doc, &[("host", HOST)], b"new");
    assert_eq!((r.status, x_cache(&r).as_str()), (200, "BYPASS"));
    support::wait_until(
        "the invalidation reaches the other instance",
        Duration::from_secs(2),
        || !holds(&two, doc),
    );
    assert!(!holds(&one, doc), "nor is it in Redis any more");
    assert_eq!(x_cache(&get(&two, doc)), "MISS");
}

#[test]
fn redis_down_leaves_each_instance_its_memory_and_clients_no_errors() {
    let mut redis = RedisServer::start();
    let b = Backend::start("b");
    let url = format!("url = \"{}\"", redis.url());
    let one = gateway(&b, &url);
    assert_eq!(x_cache(&get(&one, "/kept")), "MISS");
    stored_in_redis(|| redis.keys(), 1);
    redis.stop();
    // Served from memory, and new misses go upstream and are stored in memory.
    for _ in 0..20 {
        let r = get(&one, "/kept");
        assert_eq!((r.status, x_cache(&r).as_str()), (200, "HIT"));
    }
    let fresh = get(&one, "/new");
    assert_eq!((fresh.status, x_cache(&fresh).as_str()), (200, "MISS"));
    for _ in 0..20 {
        assert_eq!(get(&one, "/new").status, 200);
    }
    let (status, answer) = purge(&one, r#"{"prefix": "/kept"}"#);
    assert_eq!(
        (status, answer["error"].as_str(), answer["purged"].as_u64()),
        (503, Some("cache_store_unavailable"), Some(1)),
        "{answer}"
    );
    let log = one.stderr_text();
    assert_eq!(
        log.matches("Redis is unavailable: the response cache")
            .count(),
        1,
        "logged once per state change: {log}"
    );
    // Back: the subscription is made again (and memory emptied, since purges may have been
    // missed), fills reach Redis again.
    redis.resume();
    support::wait_until(
        "the instance subscribes again",
        Duration::from_secs(10),
        || {
            one.stderr_text()
                .contains("subscribed to cache purges again")
        },
    );
    let two = gateway(&b, &url);
    let mut n = 0;
    support::wait_until("fills reach Redis again", Duration::from_secs(10), || {
        n += 1;
        assert_eq!(get(&one, &format!("/back/{n}")).status, 200);
        std::thread::sleep(Duration::from_millis(50));
        redis.keys() >= 1
    });
    assert_eq!(x_cache(&get(&two, &format!("/back/{n}"))), "HIT");
}

#[test]
fn a_redis_cluster_shares_fills_and_purges() {
    let cluster = RedisCluster::start();
    let b = Backend::start("b");
    let redis = format!("urls = {}\ncluster = true", cluster.urls());
    let (one, two) = (gateway(&b, &redis), gateway(&b, &redis));
    let paths: Vec<String> = (0..12).map(|i| format!("/items/{i}")).collect();
    for path in &paths {
        assert_eq!(x_cache(&get(&one, path)), "MISS");
    }
    stored_in_redis(|| cluster.keys().iter().sum(), paths.len());
    assert!(
        cluster.keys().iter().filter(|n| **n > 0).count() >= 2,
        "the targets spread over the primaries: {:?}",
        cluster.keys()
    );
    for path in &paths {
        assert_eq!(x_cache(&get(&two, path)), "HIT", "{path}");
    }
    let (status, answer) = purge(&two, r#"{"prefix": "/items"}"#);
    assert_eq!(
        (status, answer["shared"].as_u64()),
        (200, Some(12)),
        "{answer}"
    );
    support::wait_until(
        "the purge reaches the other instance",
        Duration::from_secs(2),
        || paths.iter().all(|p| !holds(&one, p)),
    );
    assert!(paths.iter().all(|p| !holds(&two, p)));
    assert_eq!(b.hits(), 12);
}

#[test]
fn a_busy_targets_hash_drops_its_dead_variants() {
    let redis = RedisServer::start();
    let (_backend, one, _two) = two_instances(&redis);
    // One target, 20 variants (by `x-v`), each usable for 3 s.
    let path = "/v?h=vary:x-v&h=cache-control:max-age%3D3";
    let fill = |v: &str| {
        let r = one
            .client()
            .request("GET", path, &[("host", HOST), ("x-v", v)], b"");
        assert_eq!(x_cache(&r), "MISS");
    };
    for v in 0..20 {
        fill(&v.to_string());
    }
    let fields = || {
        support::redis::command(redis.port, &["HLEN", &only_key(&redis)])
            .and_then(|r| r.trim_start_matches(':').parse::<usize>().ok())
            .unwrap_or(0)
    };
    // Past 16 fields the hash is pruned, but none is dead yet: each lives 3 s.
    support::wait_until("the variants reach Redis", Duration::from_secs(5), || {
        fields() > 30
    });
    std::thread::sleep(Duration::from_millis(3100));
    // The next fill finds them dead and drops them.
    fill("new");
    support::wait_until(
        "the dead variants are dropped",
        Duration::from_secs(5),
        || fields() < 10,
    );
}
