//! How the gateway reaches a service — its `protocol`, `tls` and `connect_timeout` — holds for
//! every connection made to it: pooled ones, WebSocket tunnels and health checks. Through the
//! real binary.

mod support;

use support::upstream::{self, service_tls, Upstream, H2_HTTP1, HTTP1};
use support::{Gateway, Toml};

/// Two services on one TLS upstream address: `right` trusts the upstream's CA, `wrong` trusts
/// another. Requests to `wrong` must fail however many connections `right` has pooled — over
/// HTTP/2 (one shared connection) and HTTP/1.1 (idle connections) alike.
#[test]
fn services_trusting_other_roots_never_share_a_pooled_connection() {
    let right = upstream::certs("gw.test");
    let wrong = upstream::certs("gw.test");
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
    let right = upstream::certs("gw.test");
    let wrong = upstream::certs("gw.test");
    let upstream = Upstream::tls("secure", &right, H2_HTTP1);
    let config = |ca: &upstream::Certs| {
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

    let certs = upstream::certs("ws.test");
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
    let certs = upstream::certs("gw.test");
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

/// `sluicegate_connections_active` of the listener `public`.
fn connections_active(gw: &Gateway) -> Option<u64> {
    gw.admin()
        .get("/metrics")
        .text()
        .lines()
        .find(|l| l.starts_with("sluicegate_connections_active{listener=\"public\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Sends `request` on a new connection and reads what comes back until the gateway closes; a
/// connection refused by `max_connections` gets nothing (a write or read error counts as nothing:
/// the gateway may close before the request is written).
fn exchange_on_new_connection(gw: &Gateway, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(gw.addr()).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An open WebSocket tunnel holds its listener's connection: with `max_connections = 1` a new
/// connection is closed at once while the tunnel is open, and served once it has closed.
#[test]
fn websocket_tunnels_count_against_max_connections() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let echo = Upstream::websocket_echo();
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "max_connections = 1")
            .route("ws", "echo", "")
            .service("echo", &[echo.addr], "")
            .build(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut ws = rt.block_on(async {
        let url = format!("ws://{}/chat", gw.addr());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        // A round trip: the tunnel is relaying.
        ws.send(Message::text("hi")).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), "hi");
        ws
    });
    let request = b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    assert_eq!(
        exchange_on_new_connection(&gw, request),
        "",
        "a second connection was served while the tunnel held the only one"
    );
    assert_eq!(connections_active(&gw), Some(1), "the tunnel counts");
    rt.block_on(async {
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    });
    drop(ws);
    wait_until("the tunnel to close", || connections_active(&gw) == Some(0));
    let answer = exchange_on_new_connection(&gw, request);
    assert!(answer.starts_with("HTTP/1.1 "), "not served: {answer:?}");
}

/// A route's `timeout` bounds an upgrade request until the upstream answers it: an upstream that
/// never answers gets the client a 504, not a hang.
#[test]
fn the_route_timeout_bounds_an_upgrade_until_the_101() {
    let silent = Upstream::silent();
    let gw = Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("ws", "silent", "timeout = \"300ms\"")
            .service("silent", &[silent.addr], "")
            .build(),
    );
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = gw.client().request("GET", "/chat", &upgrade, b"");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("upstream_timeout"), "{}", r.text());
}

/// `connect_timeout = "0"` means no connect deadline of the gateway's own, at layer 7 and at
/// layer 4 alike (it used to fail every layer-7 connect at once).
#[test]
fn a_zero_connect_timeout_means_none_at_layer_7_and_layer_4() {
    let b = support::Backend::start("patient");
    let gw = Gateway::start(
        &Toml::new()
            .listener("public", "")
            .listener("l4", "protocol = \"tcp\"\nservice = \"raw\"")
            .route("all", "app", "")
            .service("app", &[b.addr], "connect_timeout = \"0\"")
            .service(
                "raw",
                &[b.addr],
                "protocol = \"tcp\"\nconnect_timeout = \"0\"",
            )
            .build(),
    );
    let r = gw.client().get("/l7");
    assert_eq!((r.status, r.text().as_str()), (200, "patient"));
    // Through the layer-4 listener the backend's HTTP arrives as bytes.
    let r = support::Client::connect(gw.listener("l4")).get("/l4");
    assert_eq!((r.status, r.text().as_str()), (200, "patient"));
    assert_eq!(b.last_seen().uri, "/l4");
}
