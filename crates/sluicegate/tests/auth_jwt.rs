//! JWT authentication through the real binary, against an identity provider started by the test
//! on loopback: what passes (and what the upstream then sees), every classic way a token is
//! refused, key rotation with single-flight refetches, IdP outages, hostile input, gRPC, the
//! metrics and the log.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::idp::{free_address, now, Idp, Signer};
use support::{wait_until, Backend, Client, Gateway, Toml};

const ISSUER: &str = "https://idp.test/";

/// A config with routes `open` (/open, auth only) and `admin` (/admin, scope "admin") behind
/// policy `users`, whose settings are `policy` plus the usual issuer and audience.
fn config(backend: &Backend, policy: &str) -> String {
    Toml::new()
        .admin()
        .listener("public", "")
        .route(
            "admin",
            "app",
            "match = { path_prefix = \"/admin\" }\nauth = \"users\"\nrequire_scopes = [\"admin\"]",
        )
        .route("open", "app", "match = { path_prefix = \"/\" }\nauth = \"users\"")
        .service("app", &[backend.addr], "")
        .build()
        + &format!(
            "\n[auth.users]\ntype = \"jwt\"\nalgorithms = [\"RS256\", \"ES256\"]\nissuer = \"{ISSUER}\"\naudience = [\"api\", \"other\"]\n{policy}\n"
        )
}

fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": "api",
        "sub": sub,
        "exp": now() + 600,
        "iat": now(),
        "scope": "read write",
        "email": format!("{sub}@example.com"),
    })
}

fn get(c: &mut Client, path: &str, token: &str) -> support::Response {
    let auth = format!("Bearer {token}");
    c.request("GET", path, &[("authorization", &auth)], b"")
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    gw.metric(series)
}

fn decisions(gw: &Gateway, result: &str, reason: &str) -> u64 {
    metric(
        gw,
        &format!(
            "sluicegate_auth_decisions_total{{policy=\"users\",result=\"{result}\",reason=\"{reason}\"}}"
        ),
    )
}

#[test]
fn a_valid_token_reaches_the_upstream_as_its_consumer() {
    let key = Signer::rsa("kid-rsa-sign", "k1");
    let idp = Idp::start(&[&key]);
    let b = Backend::start("b");
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "jwks_url = \"{}\"\nforward_claims = {{ \"x-user-email\" = \"email\", \"x-missing\" = \"nope\" }}\nstrip_credentials = true",
            idp.url()
        ),
    ));
    let mut c = gw.client();
    let token = key.sign(&claims("alice"));
    // The key set is fetched in the background: the first request may come before it.
    wait_until("the key set is loaded", Duration::from_secs(5), || {
        get(&mut c, "/x", &token).status == 200
    });
    let auth = format!("Bearer {token}");
    let r = c.request(
        "GET",
        "/x",
        &[
            ("authorization", &auth),
            ("x-consumer", "mallory"),
            ("x-user-email", "forged@example.com"),
            ("x-missing", "forged"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = b.last_seen();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(all("x-consumer"), ["alice"]);
    assert_eq!(all("x-user-email"), ["alice@example.com"]);
    assert!(
        all("x-missing").is_empty(),
        "a claim the token lacks clears the field"
    );
    assert!(all("authorization").is_empty(), "strip_credentials");

    // The second use of a token is answered from the cache.
    assert_eq!(get(&mut c, "/x", &token).status, 200);
    assert!(decisions(&gw, "success", "cached") >= 1);
    assert!(decisions(&gw, "success", "verified") >= 1);

    // Scopes: "read write" lacks "admin".
    let r = get(&mut c, "/admin", &token);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"users\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"admin\""), "{challenge}");
    let mut admin = claims("root");
    admin["scope"] = json!(["admin"]);
    assert_eq!(get(&mut c, "/admin", &key.sign(&admin)).status, 200);
    assert_eq!(decisions(&gw, "failure", "insufficient_scope"), 1);

    // A client's x-consumer never passes, on any route.
    let status = gw.admin().get("/api/v1/status").json();
    let routes = status["routes"].to_string();
    assert!(routes.contains("auth:users"), "{routes}");
}

#[test]
fn classic_attacks_and_bad_tokens_are_refused_with_401() {
    let key = Signer::rsa("kid-rsa-sign", "k1");
    let attacker = Signer::rsa("RS256_2048", "k1");
    let idp = Idp::start(&[&key]);
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&b, &format!("jwks_url = \"{}\"", idp.url())));
    let mut c = gw.client();
    let good = key.sign(&claims("alice"));
    wait_until("the key set is loaded", Duration::from_secs(5), || {
        get(&mut c, "/x", &good).status == 200
    });

    let with = |change: &dyn Fn(&mut Value)| {
        let mut cl = claims("alice");
        change(&mut cl);
        key.sign(&cl)
    };
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let jwk_text = key.jwk.to_string();
    let n = key.jwk["n"].as_str().unwrap();
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{n}\n-----END PUBLIC KEY-----\n");
    let hs256 = |secret: &[u8]| {
        let header = json!({"alg": "HS256", "kid": "k1"}).to_string();
        let input = format!("{}.{}", b64(&header), b64(&claims("alice").to_string()));
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            input.as_bytes(),
        );
        use base64::Engine as _;
        format!(
            "{input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.as_ref())
        )
    };
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none"}"#),
        b64(&claims("alice").to_string())
    );
    // One signature byte changed (well inside the segment, so the base64url stays canonical).
    let at = good.len() - 10;
    let swapped = if &good[at..at + 1] == "A" { "B" } else { "A" };
    let tampered = format!("{}{swapped}{}", &good[..at], &good[at + 1..]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 120)),
            "expired",
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 120)),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            with(&|c| c["iss"] = json!("https://evil/")),
            "wrong_issuer",
        ),
        (
            "wrong aud",
            with(&|c| c["aud"] = json!("web")),
            "wrong_audience",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing_exp",
        ),
        (
            "huge exp",
            key.sign_raw(
                r#"{"alg":"RS256","kid":"k1"}"#,
                &format!(r#"{{"iss":"{ISSUER}","aud":"api","exp":1e300}}"#),
            ),
            "bad_claims",
        ),
        (
            "duplicate sub",
            key.sign_raw(
                r#"{"alg":"RS256","kid":"k1"}"#,
                &format!(
                    r#"{{"iss":"{ISSUER}","aud":"api","exp":{},"sub":"a","sub":"b"}}"#,
                    now() + 60
                ),
            ),
            "bad_claims",
        ),
        ("bad signature", tampered, "bad_signature"),
        (
            "other key, same kid",
            attacker.sign(&claims("alice")),
            "bad_signature",
        ),
        ("alg none", unsigned, "algorithm"),
        (
            "HS256 with the JWK as secret",
            hs256(jwk_text.as_bytes()),
            "algorithm",
        ),
        (
            "HS256 with the PEM as secret",
            hs256(pem.as_bytes()),
            "algorithm",
        ),
        (
            "unknown kid",
            Signer::ec("elsewhere").sign(&claims("alice")),
            "unknown_key",
        ),
        (
            "embedded jwk",
            attacker.sign_raw(
                &json!({"alg": "RS256", "jwk": attacker.jwk}).to_string(),
                &claims("alice").to_string(),
            ),
            "bad_signature",
        ),
        (
            "jku elsewhere",
            attacker.sign_raw(
                &json!({"alg": "RS256", "kid": "evil", "jku": "http://127.0.0.1:1/jwks.json"})
                    .to_string(),
                &claims("alice").to_string(),
            ),
            "unknown_key",
        ),
        (
            "crit",
            key.sign_raw(
                r#"{"alg":"RS256","kid":"k1","crit":["exp"]}"#,
                &claims("alice").to_string(),
            ),
            "extension",
        ),
        (
            "invalid base64",
            format!("{}.e30.!!!", b64(r#"{"alg":"RS256","kid":"k1"}"#)),
            "malformed",
        ),
        ("two segments", "e30.e30".to_string(), "malformed"),
        (
            "nesting bomb",
            format!(
                "{}.{}.AAAA",
                b64(&format!("{}{}", "[".repeat(5000), "]".repeat(5000))),
                b64("{}")
            ),
            "bad_header",
        ),
        (
            "signed nesting bomb",
            key.sign_raw(
                r#"{"alg":"RS256","kid":"k1"}"#,
                &format!("{{\"a\":{}{}}}", "[".repeat(5000), "]".repeat(5000)),
            ),
            "bad_claims",
        ),
    ];
    for (what, token, reason) in &cases {
        let r = get(&mut c, "/x", token);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(r.json()["error"], "unauthenticated", "{what}");
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        assert!(
            challenge.starts_with("Bearer realm=\"users\""),
            "{what}: {challenge}"
        );
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert!(
            challenge.contains("error_description=\""),
            "{what}: {challenge}"
        );
        assert!(
            !challenge.contains(token.as_str()),
            "{what}: the token is never echoed"
        );
        assert!(
            decisions(&gw, "failure", reason) >= 1,
            "{what}: reason {reason} counted"
        );
    }
    assert_eq!(b.hits(), 1, "no refused request reached the upstream");

    // No credential at all: a challenge without an error code (RFC 6750 section 3.1).
    let r = c.get("/x");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"users\""));
    // Two Authorization fields are ambiguous: 400 invalid_request (RFC 6750 section 3.1).
    let auth = format!("Bearer {good}");
    let r = c.request(
        "GET",
        "/x",
        &[("authorization", &auth), ("authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 400);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_request"));

    // A 1 MiB Authorization header is over the head limit: 431 (if the answer is read before
    // the gateway resets a connection it stopped reading), and the gateway lives on.
    let answer = huge_header(gw.addr(), 1 << 20);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.80}"
    );
    assert_eq!(get(&mut gw.client(), "/x", &good).status, 200);

    // The access log names the reason; the token never appears in the gateway's output.
    let stderr = gw.stderr_text();
    assert!(!stderr.contains(&good), "a token was logged");
}

/// Sends a request whose Authorization field is `size` bytes; returns what came back.
fn huge_header(addr: std::net::SocketAddr, size: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        "a".repeat(size)
    );
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
    });
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let _ = sender.join();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_rotated_key_is_fetched_once_for_many_concurrent_requests() {
    let old = Signer::rsa("kid-rsa-sign", "old");
    let idp = Idp::start(&[&old]);
    let b = Backend::start("b");
    let gw = Gateway::start(&config(
        &b,
        &format!("jwks_url = \"{}\"\njwks_min_refresh = \"30s\"", idp.url()),
    ));
    let mut c = gw.client();
    let token = old.sign(&claims("alice"));
    wait_until("the key set is loaded", Duration::from_secs(5), || {
        get(&mut c, "/x", &token).status == 200
    });
    assert_eq!(idp.fetches(), 1);

    // The IdP rotates: it publishes a new key and signs with it.
    let new = Signer::ec("new");
    idp.publish(&[&old, &new]);
    let addr = gw.addr();
    let new = Arc::new(new);
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let new = Arc::clone(&new);
            std::thread::spawn(move || {
                let token = new.sign(&claims(&format!("user{i}")));
                get(&mut Client::connect(addr), "/x", &token).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(idp.fetches(), 2, "exactly one refetch for the new kid");

    // Another unknown kid within jwks_min_refresh does not make the IdP fetch again.
    let stranger = Signer::ec("stranger");
    let r = get(&mut c, "/x", &stranger.sign(&claims("eve")));
    assert_eq!(r.status, 401);
    assert_eq!(idp.fetches(), 2);
    assert_eq!(metric(&gw, "sluicegate_jwks_keys{policy=\"users\"}"), 2);
    assert_eq!(
        metric(
            &gw,
            "sluicegate_jwks_fetches_total{policy=\"users\",result=\"success\"}"
        ),
        2
    );
}

#[test]
fn the_last_good_key_set_outlives_an_idp_outage_and_a_reload() {
    let key = Signer::ec("k1");
    let idp = Idp::start(&[&key]);
    let b = Backend::start("b");
    let toml = config(
        &b,
        &format!(
            "jwks_url = \"{}\"\njwks_min_refresh = \"1s\"\njwks_max_refresh = \"1s\"",
            idp.url()
        ),
    );
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    wait_until("the key set is loaded", Duration::from_secs(5), || {
        get(&mut c, "/x", &key.sign(&claims("a"))).status == 200
    });
    idp.stop();
    let fetches = idp.fetches();
    // Refreshes fail for a few seconds; fresh tokens (not cached) still verify.
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let r = get(&mut c, "/x", &key.sign(&claims(&format!("u{i}"))));
        assert_eq!(r.status, 200, "during the outage");
    }
    // A reload with the same policy keeps the set.
    gw.write_config(&(toml.clone() + "\n"));
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&mut c, "/x", &key.sign(&claims("after"))).status, 200);
    // So does one that changes the refresh bounds: the new source starts from the old set.
    gw.write_config(&toml.replace("jwks_max_refresh = \"1s\"", "jwks_max_refresh = \"2s\""));
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&mut c, "/x", &key.sign(&claims("bounds"))).status, 200);
    assert_eq!(idp.fetches(), fetches, "the stopped IdP served nothing");
    let failures = metric(
        &gw,
        "sluicegate_jwks_fetches_total{policy=\"users\",result=\"failure\"}",
    );
    assert!(failures >= 2, "refreshes were attempted: {failures}");
    let stderr = gw.stderr_text();
    // Logged once per source: the one the bounds change started logs its own first failure.
    let logged = stderr
        .matches("the last good key set stays in force")
        .count();
    assert!(
        (1..=2).contains(&logged),
        "the outage is logged once per source:\n{stderr}"
    );
    idp.resume();
    wait_until("the IdP is back", Duration::from_secs(5), || {
        gw.stderr_text()
            .contains("key set fetched again after failures")
    });
}

#[test]
fn started_while_the_idp_is_down_it_answers_503_then_verifies_once_it_is_up() {
    let key = Signer::ec("k1");
    let addr = free_address();
    let b = Backend::start("b");
    let gw = Gateway::start(&config(
        &b,
        &format!("jwks_url = \"http://{addr}/jwks.json\""),
    ));
    let mut c = gw.client();
    let token = key.sign(&claims("alice"));
    let r = get(&mut c, "/x", &token);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert_eq!(r.header("retry-after"), Some("5"));
    // Without a credential it is still a 401: the client did something wrong there.
    assert_eq!(c.get("/x").status, 401);
    let _idp = Idp::start_on(addr, &[&key]);
    wait_until("the key set is loaded", Duration::from_secs(8), || {
        get(&mut c, "/x", &token).status == 200
    });
    assert!(decisions(&gw, "failure", "unavailable") >= 1);
}

#[test]
fn grpc_clients_get_grpc_statuses() {
    let key = Signer::ec("k1");
    let idp = Idp::start(&[&key]);
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&b, &format!("jwks_url = \"{}\"", idp.url())));
    let token = key.sign(&claims("alice"));
    wait_until("the key set is loaded", Duration::from_secs(5), || {
        get(&mut gw.client(), "/x", &token).status == 200
    });
    let curl = |path: &str, auth: Option<&str>| {
        let bearer = auth.map(|token| format!("authorization: Bearer {token}"));
        let mut extra = vec!["-X", "POST", "-H", "content-type: application/grpc"];
        if let Some(bearer) = &bearer {
            extra.extend(["-H", bearer.as_str()]);
        }
        support::curl_h2(&format!("http://{}{path}", gw.addr()), &extra).0
    };
    let head = curl("/svc.Api/Call", None);
    assert!(head.contains("grpc-status: 16"), "{head}");
    let head = curl("/admin/svc.Api/Call", Some(&token));
    assert!(head.contains("grpc-status: 7"), "{head}");
}

#[test]
fn tokens_from_a_cookie_and_keys_from_a_watched_file() {
    let key = Signer::ec("k1");
    let next = Signer::ec("k2");
    let b = Backend::start("b");
    let dir = support::TempDir::new("jwks");
    let file = dir.write("jwks.json", &json!({"keys": [key.jwk.clone()]}).to_string());
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "keys_file = \"{}\"\ncookie = \"session\"\nstrip_credentials = true",
            file.display()
        ),
    ));
    let mut c = gw.client();
    let cookie = |t: &str| format!("theme=dark; session={t}");
    let r = c.request(
        "GET",
        "/x",
        &[("cookie", &cookie(&key.sign(&claims("a"))))],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = b.last_seen();
    assert_eq!(
        seen.headers["cookie"], "theme=dark",
        "the session cookie is stripped"
    );
    assert_eq!(seen.headers["x-consumer"], "a");
    // The file changes (written by rename): the new key is used within about a second.
    let token = next.sign(&claims("b"));
    assert_eq!(
        c.request("GET", "/x", &[("cookie", &cookie(&token))], b"")
            .status,
        401
    );
    dir.write("jwks.tmp", &json!({"keys": [next.jwk.clone()]}).to_string());
    std::fs::rename(dir.0.join("jwks.tmp"), &file).unwrap();
    wait_until("the new key file is read", Duration::from_secs(5), || {
        c.request("GET", "/x", &[("cookie", &cookie(&token))], b"")
            .status
            == 200
    });
    // An invalid edit keeps the keys in force.
    std::fs::write(&file, "{ not json").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        c.request("GET", "/x", &[("cookie", &cookie(&token))], b"")
            .status,
        200
    );
    assert!(gw.stderr_text().contains("key set file not applied"));
}

#[test]
fn a_key_set_over_https_is_trusted_only_through_the_configured_ca() {
    let key = Signer::ec("k1");
    let certs = support::upstream::certs("idp.test");
    let idp = Idp::start_tls(&[&key], &certs);
    let b = Backend::start("b");
    let trusted = Gateway::start(&config(
        &b,
        &format!(
            "jwks_url = \"{}\"\nca = \"{}\"",
            idp.url(),
            certs.ca.display()
        ),
    ));
    let token = key.sign(&claims("alice"));
    let mut c = trusted.client();
    wait_until(
        "the key set is loaded over TLS",
        Duration::from_secs(5),
        || get(&mut c, "/x", &token).status == 200,
    );
    // The system's roots do not know the test CA: no key set, 503, and the log says why.
    let untrusted = Gateway::start(&config(&b, &format!("jwks_url = \"{}\"", idp.url())));
    wait_until("the failed fetch is logged", Duration::from_secs(5), || {
        untrusted.stderr_text().contains("no key set loaded yet")
    });
    assert_eq!(get(&mut untrusted.client(), "/x", &token).status, 503);
    let stderr = untrusted.stderr_text();
    assert!(stderr.contains("TLS with"), "{stderr}");
}

#[test]
fn hs256_tokens_verify_with_the_policys_secret_and_a_short_one_is_warned_about() {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let b = Backend::start("b");
    let secret = "test-secret";
    let toml = Toml::new()
        .listener("public", "")
        .route("all", "app", "auth = \"hs\"")
        .service("app", &[b.addr], "")
        .build()
        + &format!(
            "\n[auth.hs]\ntype = \"jwt\"\nalgorithms = [\"HS256\"]\nsecret = \"{secret}\"\n"
        );
    let gw = Gateway::start(&toml);
    assert!(gw.stderr_text().contains("RFC 7518 section 3.2"));
    let sign = |key: &[u8], header: &str| {
        let claims = json!({"sub": "alice", "exp": now() + 60}).to_string();
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            input.as_bytes(),
        );
        format!("{input}.{}", b64(tag.as_ref()))
    };
    let mut c = gw.client();
    let good = sign(secret.as_bytes(), r#"{"alg":"HS256","typ":"JWT"}"#);
    assert_eq!(get(&mut c, "/", &good).status, 200);
    assert_eq!(b.last_seen().headers["x-consumer"], "alice");
    // A kid is a hint: the secret has none and still verifies the token.
    let with_kid = sign(secret.as_bytes(), r#"{"alg":"HS256","kid":"any"}"#);
    assert_eq!(get(&mut c, "/", &with_kid).status, 200);
    let forged = sign(b"another-secret", r#"{"alg":"HS256"}"#);
    assert_eq!(get(&mut c, "/", &forged).status, 401);
    let other_alg = sign(secret.as_bytes(), r#"{"alg":"HS512"}"#);
    assert_eq!(get(&mut c, "/", &other_alg).status, 401);
}
