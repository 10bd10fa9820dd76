//! Benchmarks of the pieces every request goes through: route matching, balancer picks, the
//! Maglev table build (on every reload), and header rewriting. `cargo bench --bench hot_paths`.

use std::net::SocketAddr;
use std::sync::Arc;

use divan::{black_box, Bencher};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use sluicegate::balance::{self, Algorithm, BuildOptions, Endpoint, HashOn};
use sluicegate::config::RouteMatch;
use sluicegate::proxy::http::headers::{
    client_value, new_request_id, remove_hop_by_hop, Forwarding,
};
use sluicegate::proxy::http::route::{Matcher, RequestView, RouteTable};

fn main() {
    divan::main();
}

fn endpoints(n: usize) -> Arc<[Endpoint]> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                .parse()
                .expect("address");
            Endpoint::new(addr, 1 + (i % 3) as u32)
        })
        .collect()
}

const ALGORITHMS: &[&str] = &[
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "random",
    "power_of_two_choices",
    "hash",
    "ring_hash",
    "maglev",
];

/// One pick among 100 endpoints, all accepted, with a hash key for the hashing algorithms.
#[divan::bench(args = ALGORITHMS)]
fn pick_of_100(bencher: Bencher, name: &str) {
    let algorithm = Algorithm::from_name(name).expect("algorithm");
    let balancer = balance::build(algorithm, endpoints(100), BuildOptions::default());
    let hash_on = HashOn::parse("header:x-user").expect("hash_on");
    let uri: http::Uri = "/".parse().expect("uri");
    let mut keys = Vec::new();
    for i in 0..1024 {
        let mut h = HeaderMap::new();
        h.insert(
            "x-user",
            HeaderValue::from_str(&format!("user-{i}")).expect("value"),
        );
        keys.push(hash_on.key_hash("127.0.0.1".parse().expect("ip"), &uri, &h));
    }
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & 1023;
        black_box(balancer.pick(black_box(keys[i]), &|_| true))
    });
}

/// Building a Maglev table of the default size (65537) over 100 endpoints: done on every
/// reload that touches the service.
#[divan::bench(sample_count = 20)]
fn maglev_build_100(bencher: Bencher) {
    let eps = endpoints(100);
    bencher.bench_local(|| {
        black_box(balance::build(
            Algorithm::Maglev,
            Arc::clone(&eps),
            BuildOptions::default(),
        ))
    });
}

fn route_table(n: usize) -> RouteTable<usize> {
    let routes = (0..n)
        .map(|i| {
            let m = RouteMatch {
                host: (i % 2 == 0).then(|| format!("svc{}.example.com", i % 50)),
                path_prefix: Some(format!("/api/v{}/resource{i}", i % 5)),
                methods: if i % 3 == 0 {
                    vec![Method::GET, Method::POST]
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            (Matcher::new(m), i)
        })
        .collect();
    RouteTable::new(routes)
}

/// Matching a request against 1,000 routes: one that matches late, and one that matches none.
#[divan::bench(args = ["late_match", "no_match"])]
fn route_match_1000(bencher: Bencher, case: &str) {
    let table = route_table(1000);
    let headers = HeaderMap::new();
    let path = match case {
        "late_match" => "/api/v4/resource999/items/7",
        _ => "/nothing/here",
    };
    bencher.bench_local(|| {
        let view = RequestView {
            method: &Method::GET,
            host: Some("svc49.example.com"),
            path: black_box(path),
            headers: &headers,
        };
        black_box(table.find(&view).map(|(_, r)| *r))
    });
}

/// Matching against 1,000 virtual hosts that each route every path (`path_prefix = "/"`), the
/// shape of a multi-tenant gateway: the request names the last host.
#[divan::bench]
fn route_match_1000_hosts(bencher: Bencher) {
    let routes = (0..1000)
        .map(|i| {
            let m = RouteMatch {
                host: Some(format!("tenant{i}.example.com")),
                path_prefix: Some("/".to_string()),
                ..Default::default()
            };
            (Matcher::new(m), i)
        })
        .collect();
    let table = RouteTable::new(routes);
    let headers = HeaderMap::new();
    bencher.bench_local(|| {
        let view = RequestView {
            method: &Method::GET,
            host: Some(black_box("Tenant999.example.com")),
            path: black_box("/orders/7"),
            headers: &headers,
        };
        black_box(table.find(&view).map(|(_, r)| *r))
    });
}

/// The request-side header work of the pipeline: hop-by-hop removal, X-Forwarded-*, request id.
#[divan::bench]
fn rewrite_request_headers(bencher: Bencher) {
    let mut base = HeaderMap::new();
    for (n, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.7"),
        ("cookie", "session=abc; theme=dark"),
        ("content-type", "application/json"),
    ] {
        base.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    let client = client_value("127.0.0.1".parse().expect("ip"));
    bencher
        .with_inputs(|| base.clone())
        .bench_local_values(|mut headers| {
            remove_hop_by_hop(&mut headers);
            Forwarding {
                client: &client,
                proto: "http",
                trusted: false,
                host: None,
            }
            .add_to(&mut headers);
            headers.insert("x-request-id", new_request_id());
            headers
        });
}

/// What a JWT's first use costs (`jwt` policy, before its verified-token cache): the compact
/// JWS split and decoded, an RS256 signature checked with a 2048-bit key, the claims read and
/// checked. Signed with a Project Wycheproof RSA key (`../shared/vectors/`).
#[divan::bench]
fn jwt_rs256_first_use(bencher: Bencher) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use sluicegate::jose::claims::{Claims, Rules};
    use sluicegate::jose::jwk::{Key, KeySet, Secrets};
    use sluicegate::jose::{jws, Algorithm};

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/vectors/wycheproof/json_web_signature_test.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json");
    let jwk = doc["testGroups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g.get("private"))
        .find(|k| k["kid"] == "kid-rsa-sign")
        .expect("RSA key")
        .clone();
    let part = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().expect("member"))
            .expect("base64")
    };
    let pair = ring::signature::RsaKeyPair::from_components(&ring::rsa::KeyPairComponents {
        public_key: ring::rsa::PublicKeyComponents {
            n: part("n"),
            e: part("e"),
        },
        d: part("d"),
        p: part("p"),
        q: part("q"),
        dP: part("dp"),
        dQ: part("dq"),
        qInv: part("qi"),
    })
    .expect("key pair");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"kid-rsa-sign"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        br#"{"iss":"https://idp/","aud":"api","sub":"alice","exp":4000000000,"scope":"read write"}"#,
    );
    let input = format!("{header}.{claims}");
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .expect("sign");
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature));
    let mut public = jwk.clone();
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        public.as_object_mut().expect("object").remove(private);
    }
    let keys = KeySet::single(Key::from_jwk(&public, Secrets::Refuse).expect("public key"));
    let rules = Rules {
        issuer: Some("https://idp/".into()),
        audiences: vec!["api".into()],
        leeway: std::time::Duration::from_secs(30),
        require_exp: true,
    };
    bencher.bench_local(|| {
        let parsed = jws::parse(black_box(token.as_bytes()), &[Algorithm::RS256]).expect("parse");
        parsed.verify(&keys).expect("verify");
        let claims = Claims::parse(parsed.payload()).expect("claims");
        claims.check(&rules, 1_800_000_000.0).expect("check")
    });
}
