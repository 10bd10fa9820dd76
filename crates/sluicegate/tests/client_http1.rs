//! The gateway's own HTTP/1.1 server side, through the real binary: pipelining, HTTP/1.0
//! persistence, `100 Continue`, clients that leave mid-request, and the answers to broken heads.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use support::{raw_exchange, wait_until, Backend, Gateway, Toml};

fn gateway(b: &Backend) -> Gateway {
    Gateway::start(&Toml::proxy_to(&[b.addr]).build())
}

fn connect(gw: &Gateway) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// Reads one response with a Content-Length body: (status line, head, body).
fn read_one(r: &mut BufReader<TcpStream>) -> (String, String, String) {
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).expect("body");
    (
        status.trim_end().to_string(),
        head,
        String::from_utf8(body).unwrap(),
    )
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let (mut s, mut r) = connect(&gw);
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert!(read_one(&mut r).0.starts_with("HTTP/1.1 201"));
    let (status, _, body) = read_one(&mut r);
    assert!(status.starts_with("HTTP/1.1 200"));
    assert_eq!(body, "3");
    let (status, head, _) = read_one(&mut r);
    assert!(status.starts_with("HTTP/1.1 202"));
    assert!(head.contains("date: "), "responses carry a Date: {head}");
    assert_eq!(b.hits(), 3);
}

#[test]
fn http10_clients_close_unless_they_ask_to_keep_alive() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let text = raw_exchange(gw.addr(), b"GET / HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with('b'),
        "the connection closed after the body: {text}"
    );

    let (mut s, mut r) = connect(&gw);
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (status, head, body) = read_one(&mut r);
        assert!(status.starts_with("HTTP/1.1 200"));
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert_eq!(body, "b");
    }
}

#[test]
fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let (mut s, mut r) = connect(&gw);
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut interim = String::new();
    r.read_line(&mut interim).unwrap();
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n");
    let mut blank = String::new();
    r.read_line(&mut blank).unwrap();
    assert_eq!(blank, "\r\n");
    s.write_all(b"hello").unwrap();
    let (status, _, body) = read_one(&mut r);
    assert!(status.starts_with("HTTP/1.1 200"));
    assert_eq!(body, "5");
    // The upstream never saw the Expect: the gateway answered it.
    assert!(b.last_seen().headers.get("expect").is_none());
}

/// An upstream that takes one connection, reports each request head it reads, and never
/// answers.
fn silent_upstream() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut r = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => {
                    let _ = heads.send(std::mem::take(&mut head));
                }
                Ok(_) => head.push_str(&line),
            }
        }
    });
    (addr, received)
}

#[test]
fn a_client_leaving_mid_request_is_logged_as_499() {
    // The upstream never answers and the route has no deadline: nothing but the client leaving
    // can end the request.
    let (upstream, heads) = silent_upstream();
    let dir = support::TempDir::new("leave");
    let log = dir.0.join("access.log");
    let gw = Gateway::start(
        &Toml::new()
            .access_log(&log.display().to_string())
            .listener("public", "")
            .route("all", "app", "timeout = \"0s\"")
            .service("app", &[upstream], "")
            .build(),
    );
    let (mut s, r) = connect(&gw);
    s.write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\nX-Request-Id: leaver\r\n\r\n")
        .unwrap();
    // Leave once the request is mid-exchange: forwarded, and waiting for the upstream.
    let head = heads
        .recv_timeout(Duration::from_secs(10))
        .expect("the request never reached the upstream");
    assert!(head.contains("leaver"), "{head}");
    drop(s);
    drop(r);
    let mut line = String::new();
    wait_until("the access log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match text.lines().find(|l| l.contains("leaver")) {
            Some(l) => {
                line = l.to_string();
                true
            }
            None => false,
        }
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    // Logged when the client left: the upstream has not answered, and never does.
    assert_eq!(v["status"], 499, "{line}");
}

#[test]
fn broken_heads_get_json_errors_and_the_connection_closes() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let text = raw_exchange(gw.addr(), b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n");
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(v["error"], "bad_request");
    // Request smuggling shapes are refused, not guessed at.
    let text = raw_exchange(
        gw.addr(),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(b.hits(), 0);
}

#[test]
fn a_head_arriving_in_pieces_is_served() {
    let b = Backend::start("b");
    let gw = gateway(&b);
    let (mut s, mut r) = connect(&gw);
    s.set_nodelay(true).unwrap();
    let (client, server) = (s.local_addr().unwrap(), gw.addr());
    for piece in [
        &b"GET /status/2"[..],
        b"03 HTTP/1.1\r\nHo",
        b"st: x\r\n",
        b"\r",
        b"\n",
    ] {
        s.write_all(piece).unwrap();
        // Each piece is read by the gateway before the next is sent: it reached the gateway's
        // socket (acknowledged), then left it (read).
        wait_until(
            "the piece to reach the gateway",
            Duration::from_secs(10),
            || support::tcp_socket(client, server).is_some_and(|t| t.unacked == 0),
        );
        wait_until(
            "the gateway to read the piece",
            Duration::from_secs(10),
            || support::tcp_socket(server, client).is_some_and(|t| t.unread == 0),
        );
    }
    assert!(read_one(&mut r).0.starts_with("HTTP/1.1 203"));
}

#[test]
fn a_refused_upload_still_gets_its_answer_before_the_close() {
    let b = Backend::start("b");
    let gw = Gateway::start(
        &Toml::new()
            .listener("public", "max_request_body_bytes = \"1KiB\"")
            .service("app", &[b.addr], "")
            .route("all", "app", "match = { path_prefix = \"/\" }")
            .build(),
    );
    let (mut s, mut r) = connect(&gw);
    // 4 MiB declared and sent: the gateway answers 413 without reading it, and must not reset
    // the connection (unread data at close) before the client has read that answer.
    let sender = std::thread::spawn(move || {
        let _ = s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n");
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (status, head, _) = read_one(&mut r);
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(head.contains("connection: close"), "{head}");
    sender.join().unwrap();
    assert_eq!(b.hits(), 0);
}

#[test]
fn a_request_with_a_pipelined_successor_is_not_taken_for_a_leaving_client() {
    // The client half-closes after pipelining two requests. The first is answered: bytes of
    // the next request wait in the buffer, so the end of stream is not looked for yet. The
    // last one then counts as abandoned, as nginx counts it (499), since the client can no
    // longer be told apart from one that went away.
    let b = Backend::start("b");
    let gw = gateway(&b);
    let (mut s, mut r) = connect(&gw);
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_one(&mut r).0.starts_with("HTTP/1.1 201"));
}

#[test]
fn workers_appending_to_one_log_file_never_split_a_line() {
    let b = Backend::start("b");
    let dir = support::TempDir::new("lines");
    let log = dir.0.join("access.log");
    let toml = format!(
        "[runtime]\nworker_threads = 2\n{}",
        Toml::proxy_to(&[b.addr])
            .access_log(&log.display().to_string())
            .build()
    );
    let gw = Gateway::start(&toml);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut c = gw.client();
            std::thread::spawn(move || {
                for i in 0..300 {
                    assert_eq!(
                        c.get(&format!("/lines/{i}?pad={}", "p".repeat(i))).status,
                        200
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let mut text = String::new();
    wait_until("1200 access log lines", Duration::from_secs(10), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 1200
    });
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {line}"));
        assert_eq!(v["status"], 200);
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn connections_held_open_at_once_over_two_workers_are_all_served() {
    // 48 connections opened together land unevenly on the two workers' sockets; the busier
    // worker hands some to the other before registering them. Each must be served, twice.
    let b = Backend::start("b");
    let toml = format!(
        "[runtime]\nworker_threads = 2\n{}",
        Toml::proxy_to(&[b.addr]).build()
    );
    let gw = Gateway::start(&toml);
    let mut conns: Vec<_> = (0..48).map(|_| connect(&gw)).collect();
    for round in 0..2 {
        for (s, _) in &mut conns {
            s.write_all(b"GET /spread HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
        }
        for (i, (_, r)) in conns.iter_mut().enumerate() {
            let (status, _, _) = read_one(r);
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "connection {i}, round {round}: {status}"
            );
        }
    }
}
