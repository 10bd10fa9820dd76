//! How the gateway reaches a service — its `protocol`, `tls` and `connect_timeout` — holds for
//! every connection made to it: pooled ones, WebSocket tunnels and health checks. Through the
//! real binary.

mod support;

use support::tls::{self, service_tls, Upstream, H2_HTTP1, HTTP1};
use support::{Gateway, Toml};

/// Two services on one TLS upstream address: `right` trusts the upstream's CA, `wrong` trusts
/// another. Requests to `wrong` must fail however many connections `right` has pooled — over
/// HTTP/2 (one shared connection) and HTTP/1.1 (idle connections) alike.
#[test]
fn services_trusting_other_roots_never_share_a_pooled_connection() {
    let right = tls::certs("gw.test");
    let wrong = tls::certs("gw.test");
    for alpn in [H2_HTTP1, HTTP1] {
        let upstream = Upstream::tls("secure", &right, alpn);
        let gw = Gateway::start(
            &Toml::new()
                .listener("public", "")
                .route("right", "right", "match = { path_prefix = \"/right\" }")
                .route("wrong", "wrong", "match = { path_prefix = \"/wrong\" }")
                .service("right", &[upstream.addr], &service_tls(&right, "gw.test"))
                .service("wrong", &[upstream.addr], &service_tls(&wrong, "gw.test"))
                .build(),
        );
        let mut client = gw.client();
        for _ in 0..3 {
            let r = client.get("/right/x");
            assert_eq!((r.status, r.text().as_str()), (200, "secure"), "{alpn:?}");
        }
        assert_eq!(
            upstream.connections(),
            1,
            "{alpn:?}: one pooled connection carried the three requests"
        );
        let r = client.get("/wrong/x");
        assert_eq!(r.status, 502, "{alpn:?}: {}", r.text());
        let r = client.get("/right/x");
        assert_eq!(r.status, 200, "{alpn:?}");
    }
}

/// The same two services, but the pooled connections were made before a reload replaced
/// `right`'s CA with one that does not verify the upstream: they must not be reused.
#[test]
fn connections_made_under_replaced_tls_settings_are_not_reused() {
    let right = tls::certs("gw.test");
    let wrong = tls::certs("gw.test");
    let upstream = Upstream::tls("secure", &right, H2_HTTP1);
    let config = |ca: &tls::Certs| {
        Toml::new()
            .admin()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", &[upstream.addr], &service_tls(ca, "gw.test"))
            .build()
    };
    let gw = Gateway::start(&config(&right));
    let mut client = gw.client();
    assert_eq!(client.get("/").status, 200);
    gw.write_config(&config(&wrong));
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = client.get("/");
    assert_eq!(r.status, 502, "{}", r.text());
}

/// A WebSocket to a `protocol = "https"` service is carried over TLS, verified with the
/// service's CA and server name, asking for HTTP/1.1 by ALPN (the upstream would pick `h2` if
/// offered, and then could not upgrade).
#[test]
fn websocket_to_an_https_service_goes_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let certs = tls::certs("ws.test");
    let echo = Upstream::tls_websocket_echo(&certs);
    let gw = Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("ws", "echo", "")
            .service("echo", &[echo.addr], &service_tls(&certs, "ws.test"))
            .build(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("ws://{}/chat", gw.addr());
        let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(response.status(), 101);
        for i in 0..10 {
            ws.send(Message::text(format!("secret {i}"))).await.unwrap();
            let back = ws.next().await.unwrap().unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), format!("secret {i}"));
        }
        ws.close(None).await.unwrap();
    });
    assert_eq!(echo.alpn(), ["http/1.1"], "one TLS handshake, HTTP/1.1");
}

const CHECKS: &str = r#"
[services.health_check]
path = "/healthz"
interval = "500ms"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 2
"#;

/// `healthy` of `address` in /api/v1/services.
fn healthy(gw: &Gateway, address: std::net::SocketAddr) -> bool {
    let v = gw.admin().get("/api/v1/services").json();
    v["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address.to_string())
        .and_then(|e| e["healthy"].as_bool())
        .expect("endpoint listed")
}

/// `sluicegate_health_checks_total` of one endpoint and result.
fn checks(gw: &Gateway, address: std::net::SocketAddr, result: &str) -> u64 {
    let endpoint = format!("endpoint=\"{address}\"");
    let result = format!("result=\"{result}\"");
    gw.admin()
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("sluicegate_health_checks_total{"))
        .find(|l| l.contains(&endpoint) && l.contains(&result))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Checks `good` and `sick` (whose /healthz answers 503) as endpoints of one service with
/// `service_extra`: `sick` must go unhealthy, while `good` passes its checks and stays healthy.
fn good_passes_and_sick_fails(good: &Upstream, sick: &Upstream, service_extra: &str) {
    sick.set_health(503);
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route("all", "app", "")
            .service(
                "app",
                &[good.addr, sick.addr],
                &format!("{service_extra}\n{CHECKS}"),
            )
            .build(),
    );
    wait_until("the failing endpoint marked unhealthy", || {
        !healthy(&gw, sick.addr)
    });
    wait_until("two passed checks of the good endpoint", || {
        checks(&gw, good.addr, "success") >= 2
    });
    assert!(healthy(&gw, good.addr), "{}", gw.stderr_text());
    assert_eq!(checks(&gw, sick.addr, "success"), 0);
    // The live traffic agrees: only the good endpoint is picked.
    let mut client = gw.client();
    for _ in 0..4 {
        let r = client.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "good"));
    }
}

/// An `https` service's checks go over TLS with its CA and server name, in HTTP/2 or HTTP/1.1
/// as ALPN decides (one endpoint of each).
#[test]
fn health_checks_of_an_https_service_use_its_tls_settings() {
    let certs = tls::certs("gw.test");
    let good = Upstream::tls("good", &certs, H2_HTTP1);
    let sick = Upstream::tls("sick", &certs, HTTP1);
    good_passes_and_sick_fails(&good, &sick, &service_tls(&certs, "gw.test"));
    assert!(good.alpn().iter().all(|p| p == "h2"), "{:?}", good.alpn());
    assert!(
        sick.alpn().iter().all(|p| p == "http/1.1"),
        "{:?}",
        sick.alpn()
    );
}

/// An `http2` service's checks speak HTTP/2 by prior knowledge: its endpoints speak nothing else.
#[test]
fn health_checks_of_an_h2c_service_speak_http2() {
    let good = Upstream::h2c("good");
    let sick = Upstream::h2c("sick");
    good_passes_and_sick_fails(&good, &sick, "protocol = \"http2\"");
}
