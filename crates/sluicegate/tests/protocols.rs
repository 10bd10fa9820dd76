//! TLS, HTTP/2 (both sides), gRPC, WebSocket and layer-4 TCP through the real binary.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::upstream::{certs_for, Certs};
use support::{Backend, Gateway, Toml};

fn certs() -> Certs {
    certs_for(&["gw.test"]).remove(0)
}

/// An https listener `secure` with `tls` in front of `b`.
fn tls_proxy(b: &Backend, tls: &str) -> Gateway {
    Gateway::start(
        &Toml::new()
            .listener("secure", &format!("protocol = \"https\"\ntls = {tls}"))
            .route("all", "app", "")
            .service("app", &[b.addr], "")
            .build(),
    )
}

/// `tls = { cert, key }` for a certificate pair.
fn tls_table(c: &Certs) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        c.cert.display(),
        c.key.display()
    )
}

/// Runs curl and returns (stdout, the HTTP version curl reports).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_version}"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[test]
fn https_listener_serves_http1_and_negotiates_http2() {
    let b = Backend::start("tls-backend");
    let c = certs();
    let gw = tls_proxy(&b, &tls_table(&c));
    let port = gw.addr().port();
    let url = format!("https://gw.test:{port}/hello");
    let resolve = format!("gw.test:{port}:127.0.0.1");
    let ca = c.ca.display().to_string();
    let (body, version) = curl(&["--cacert", &ca, "--resolve", &resolve, "--http1.1", &url]);
    assert_eq!((body.as_str(), version.as_str()), ("tls-backend", "1.1"));
    let (body, version) = curl(&["--cacert", &ca, "--resolve", &resolve, "--http2", &url]);
    assert_eq!((body.as_str(), version.as_str()), ("tls-backend", "2"));
    assert_eq!(b.last_seen().headers["x-forwarded-proto"], "https");
    // Both TLS versions.
    for v in ["--tlsv1.2 --tls-max 1.2", "--tlsv1.3"] {
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend(v.split(' '));
        args.push(&url);
        assert_eq!(curl(&args).0, "tls-backend", "{v}");
    }
}

#[test]
fn cleartext_http2_by_prior_knowledge() {
    let b = Backend::start("h2c");
    let gw = Gateway::start(&Toml::proxy_to(&[b.addr]).build());
    let url = format!("http://{}/x", gw.addr());
    let (body, version) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((body.as_str(), version.as_str()), ("h2c", "2"));
    assert_eq!(b.last_seen().method, "GET");
    let (_, version) = curl(&[&url]);
    assert_eq!(version, "1.1", "plain HTTP/1.1 on the same listener");
}

/// Routes the gRPC health service to an h2c upstream.
fn grpc_gateway(upstream: SocketAddr) -> Gateway {
    Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route(
                "grpc",
                "health",
                "match = { path_prefix = \"/grpc.health.v1.Health\" }",
            )
            .service("health", &[upstream], "protocol = \"http2\"")
            .build(),
    )
}

#[test]
fn grpc_health_through_the_gateway_with_trailers_intact() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tokio::spawn(async move {
            let _reporter = reporter;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        addr
    });
    let gw = grpc_gateway(upstream);
    let url = format!("http://{}", gw.addr());
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let ok = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("SERVING through the gateway");
        assert_eq!(ok.into_inner().status, ServingStatus::Serving as i32);
        let missing = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    });
}

#[test]
fn grpc_errors_made_by_the_gateway_are_grpc_statuses() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = grpc_gateway(dead_addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let e = client
            .check(HealthCheckRequest::default())
            .await
            .expect_err("upstream down");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("upstream_unavailable"), "{e:?}");
    });
    // No route: UNIMPLEMENTED, not a JSON 404.
    let (head, _) = support::curl_h2(
        &format!("http://{}/other.Service/Method", gw.addr()),
        &["-H", "content-type: application/grpc", "-X", "POST"],
    );
    assert!(head.contains("grpc-status: 12"), "{head}");
}

#[test]
fn websocket_echo_of_1000_messages_survives_a_reload() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() || m.is_binary() {
                            ws.send(m).await.unwrap();
                        }
                    }
                });
            }
        });
        addr
    });
    let config = |weight: u32| {
        Toml::new()
            .admin()
            .listener("public", "")
            .route("ws", "echo", "")
            .weighted_service("echo", &[(echo, weight)], "")
            .build()
    };
    let gw = Gateway::start(&config(1));
    let url = format!("ws://{}/chat", gw.addr());
    rt.block_on(async {
        let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(response.status(), 101);
        assert!(response.headers().contains_key("x-request-id"));
        for i in 0..1000 {
            if i == 500 {
                gw.write_config(&config(2));
                let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
                assert_eq!(r.status, 200);
            }
            ws.send(Message::text(format!("message {i}")))
                .await
                .unwrap();
            let back = ws.next().await.unwrap().unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), format!("message {i}"));
        }
        ws.close(None).await.unwrap();
    });
    let metrics = gw.admin().get("/metrics").text();
    assert!(
        metrics.contains("sluicegate_websocket_upgrades_total 1"),
        "{metrics}"
    );
}

/// A TCP echo server: echoes until the client half-closes, then closes.
fn tcp_echo() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

fn tcp_gateway(upstream: SocketAddr) -> Gateway {
    Gateway::start(
        &Toml::new()
            .listener(
                "l4",
                "protocol = \"tcp\"\nservice = \"echo\"\nidle_timeout = \"30s\"",
            )
            .service("echo", &[upstream], "protocol = \"tcp\"")
            .build(),
    )
}

#[test]
fn tcp_listener_echoes_100_mib_byte_exact() {
    let gw = tcp_gateway(tcp_echo());
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    let mut reader = stream.try_clone().unwrap();
    const TOTAL: usize = 100 << 20;
    let writer = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut seed = 7u64;
        let mut sum = 0u64;
        let mut sent = 0;
        while sent < TOTAL {
            for b in chunk.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (seed >> 56) as u8;
                sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
            }
            stream.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        sum
    });
    let mut got = 0usize;
    let mut sum = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
        }
        got += n;
    }
    assert_eq!(got, TOTAL);
    assert_eq!(sum, writer.join().unwrap(), "bytes differ");
}

#[test]
fn tcp_half_close_still_delivers_the_rest_of_the_echo() {
    let gw = tcp_gateway(tcp_echo());
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"last words").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    stream.read_to_string(&mut back).unwrap();
    assert_eq!(back, "last words");
}

#[test]
fn sni_chooses_the_certificate_by_name() {
    let b = Backend::start("sni");
    let c = certs_for(&["a.test", "b.test"]);
    let gw = tls_proxy(
        &b,
        &format!(
            "{{ cert = \"{}\", key = \"{}\", certificates = [{}] }}",
            c[0].cert.display(),
            c[0].key.display(),
            tls_table(&c[1])
        ),
    );
    let port = gw.addr().port();
    let ca = c[0].ca.display().to_string();
    // curl verifies the name: each succeeds only if the matching certificate was chosen.
    for name in ["a.test", "b.test"] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/");
        assert_eq!(
            curl(&["--cacert", &ca, "--resolve", &resolve, &url]).0,
            "sni"
        );
    }
}

#[test]
fn https_upstream_is_verified_against_its_ca() {
    let b = Backend::start("behind-tls");
    let c = certs();
    // A second gateway is the TLS upstream: https listener in front of a plain backend.
    let tls_upstream = tls_proxy(&b, &tls_table(&c));
    let front = |tls: &str| {
        Gateway::start(
            &Toml::new()
                .listener("public", "")
                .route("all", "secure", "")
                .service(
                    "secure",
                    &[tls_upstream.addr()],
                    &format!("protocol = \"https\"\n[services.tls]\n{tls}"),
                )
                .build(),
        )
    };
    let verified = front(&format!(
        "ca = \"{}\"\nserver_name = \"gw.test\"",
        c.ca.display()
    ));
    let mut client = verified.client();
    let r = client.get("/through");
    assert_eq!((r.status, r.text().as_str()), (200, "behind-tls"));
    // HTTP/2 was negotiated with the upstream by ALPN; the request still arrives whole.
    assert_eq!(b.last_seen().uri, "/through");
    // An upstream whose certificate the system roots do not know: refused, 502.
    let unverified = front("server_name = \"gw.test\"");
    let r = unverified.client().get("/");
    assert_eq!(r.status, 502);
    // The explicit lab switch accepts it.
    let insecure = front("insecure_skip_verify = true");
    assert_eq!(insecure.client().get("/").status, 200);
}

#[test]
fn tcp_upstream_receives_the_proxy_protocol_header_and_limits_hold() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let gw = Gateway::start(
        &Toml::new()
            .listener(
                "l4",
                "protocol = \"tcp\"\nservice = \"pp\"\nmax_connections = 1",
            )
            .service(
                "pp",
                &[upstream],
                "protocol = \"tcp\"\nsend_proxy_protocol = \"v1\"",
            )
            .build(),
    );
    let mut client = TcpStream::connect(gw.addr()).unwrap();
    client.write_all(b"hello").unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"hello") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let client_port = client.local_addr().unwrap().port();
    let expected = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nhello",
        gw.addr().port()
    );
    assert_eq!(text, expected);
    // max_connections = 1: a second connection is closed at once.
    let mut second = TcpStream::connect(gw.addr()).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut one = [0u8; 1];
    assert_eq!(
        second.read(&mut one).unwrap_or(0),
        0,
        "second connection served"
    );
    drop(client);
}

#[test]
fn http1_clients_reach_http2_upstreams() {
    let b = Backend::start("deep");
    // The h2c upstream is a second gateway: its http listener speaks HTTP/2 by prior knowledge.
    let h2_upstream = Gateway::start(
        &Toml::new()
            .listener("public", "trusted_proxies = [\"127.0.0.1\"]")
            .route("all", "app", "")
            .service("app", &[b.addr], "")
            .build(),
    );
    let front = Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("all", "inner", "")
            .service("inner", &[h2_upstream.addr()], "protocol = \"http2\"")
            .build(),
    );
    let mut c = front.client();
    for i in 0..5 {
        let r = c.request("POST", &format!("/upload?i={i}"), &[], b"0123456789");
        assert_eq!((r.status, r.text().as_str()), (200, "10"));
    }
    let seen = b.last_seen();
    assert_eq!(seen.uri, "/upload?i=4");
    // Two hops appended their client addresses (the inner one trusts the outer one).
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1, 127.0.0.1");
}

/// An upstream that speaks HTTP/1.1 over TLS only (ALPN `http/1.1`): answers every request on a
/// connection with `body`, keeping the connection; counts connections.
fn tls_http1_upstream(
    c: &Certs,
    body: &'static str,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pair = sluicegate::tls::CertPair {
        cert: c.cert.clone(),
        key: c.key.clone(),
    };
    let config = sluicegate::tls::server_config(&pair, &[], &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&connections);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 4096];
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    (addr, connections)
}

#[test]
fn https_upstream_speaking_http1_keeps_its_connection() {
    let c = certs();
    let (upstream, connections) = tls_http1_upstream(&c, "tls-h1");
    let gw = Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("all", "secure", "")
            .service(
                "secure",
                &[upstream],
                &format!(
                    "protocol = \"https\"\n[services.tls]\nca = \"{}\"\nserver_name = \"gw.test\"",
                    c.ca.display()
                ),
            )
            .build(),
    );
    let mut client = gw.client();
    for _ in 0..5 {
        let r = client.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "tls-h1"));
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one TLS connection carried all five exchanges"
    );
}
