//! The gateway's own HTTP/1.1 upstream client, through the real binary, against scripted
//! upstreams that answer with exact bytes: framings, informational responses, early answers,
//! malformed responses, and pooled connections the upstream closed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use support::{Client, Gateway, Toml};

/// What the scripted upstream does with one request.
enum Reply {
    /// Writes these bytes and keeps the connection for the next request.
    Keep(Vec<u8>),
    /// Writes these bytes, then closes.
    Close(Vec<u8>),
}

/// A request as the scripted upstream read it (head only; a body is read when `read_body`).
struct Seen {
    /// Which connection (0-based, in accept order) and which request on it.
    conn: usize,
    nth: usize,
    head: String,
}

/// An upstream that answers each request with `script(seen)`. Request bodies are read by
/// `Content-Length` unless `read_body` is false.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// The gateway's address on each connection the upstream has closed, in closing order.
    closed: mpsc::Receiver<SocketAddr>,
}

impl Scripted {
    fn start(read_body: bool, script: fn(&Seen) -> Reply) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let (closed_tx, closed) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = counter.fetch_add(1, Ordering::SeqCst);
                let closed_tx = closed_tx.clone();
                std::thread::spawn(move || {
                    let Ok(peer) = stream.peer_addr() else { return };
                    // `serve` owns the stream: it is closed when `serve` returns.
                    serve(stream, conn, read_body, script);
                    let _ = closed_tx.send(peer);
                });
            }
        });
        Scripted {
            addr,
            accepted,
            closed,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the upstream has closed its next connection and the close has reached the
    /// gateway's end: the upstream's socket has left FIN_WAIT1, so the gateway's kernel has
    /// acknowledged the FIN and the gateway's reactor will see it no later than anything sent
    /// to the gateway afterwards.
    fn wait_closed(&self) {
        let gateway = self
            .closed
            .recv_timeout(Duration::from_secs(10))
            .expect("the upstream closed no connection");
        support::wait_until(
            "the gateway's end to acknowledge the upstream's close",
            Duration::from_secs(10),
            || {
                // FIN_WAIT2, TIME_WAIT, or CLOSE/CLOSING if the gateway closed at once.
                support::tcp_socket(self.addr, gateway)
                    .is_some_and(|s| matches!(s.state, 0x05 | 0x06 | 0x07 | 0x0B))
            },
        );
    }
}

fn serve(mut stream: TcpStream, conn: usize, read_body: bool, script: fn(&Seen) -> Reply) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let Some(end) = read_head(&mut stream, &mut buf) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if read_body {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < length {
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..length);
        }
        match script(&Seen { conn, nth, head }) {
            Reply::Keep(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::Close(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
        }
    }
}

/// Reads until a blank line; the head's length including it.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn gateway(upstream: &Scripted) -> Gateway {
    Gateway::start(&Toml::proxy_to(&[upstream.addr]).build())
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn keep_alive_connections_are_reused_across_framings() {
    // Content-Length, chunked with trailers, an empty 204, and a HEAD answer that announces a
    // length but carries no body: each leaves the connection ready for the next exchange.
    let up = Scripted::start(true, |seen| {
        Reply::Keep(match seen.nth % 4 {
            0 => ok("fixed"),
            1 => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nchun\r\n3\r\nked\r\n0\r\nx-sum: 9\r\n\r\n".to_vec(),
            2 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec(),
        })
    });
    let gw = gateway(&up);
    let mut c = gw.client();
    for _ in 0..3 {
        let r = c.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "fixed"));
        let r = c.get("/");
        assert_eq!((r.status, r.text().as_str()), (200, "chunked"));
        assert_eq!(c.get("/").status, 204);
        let r = c.request("HEAD", "/", &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("1000"));
    }
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection carried every exchange"
    );
}

#[test]
fn informational_responses_are_skipped_and_close_delimited_bodies_arrive() {
    let up = Scripted::start(true, |_| {
        Reply::Close(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-kind: until-close\r\n\r\nall of it, until the close"
                .to_vec(),
        )
    });
    let gw = gateway(&up);
    let mut c = gw.client();
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-kind"), Some("until-close"));
    assert_eq!(r.text(), "all of it, until the close");
    // The gateway's client connection stays usable; the upstream one was not reused.
    assert_eq!(c.get("/").status, 200);
    assert_eq!(up.connections(), 2);
}

#[test]
fn malformed_responses_are_502_and_not_reused() {
    let up = Scripted::start(true, |seen| match seen.head.lines().next().unwrap_or("") {
        l if l.contains("/garbage") => Reply::Keep(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()),
        l if l.contains("/conflict") => Reply::Keep(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
        ),
        l if l.contains("/badchunk") => {
            Reply::Keep(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec())
        }
        _ => Reply::Keep(ok("fine")),
    });
    let gw = gateway(&up);
    for path in ["/garbage", "/conflict"] {
        let r = gw.client().get(path);
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.json()["error"], "upstream_unavailable");
    }
    // A body that breaks after the head was given to the client side cannot become a 502: the
    // client connection is cut, so the client sees no complete response, never a truncated one
    // that looks whole.
    let mut c = gw.client();
    c.send_raw(b"GET /badchunk HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut raw = Vec::new();
    let _ = c.read_to_end_raw(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    // (hyper may cut it before the head went out: then nothing arrives at all.)
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(!text.ends_with("0\r\n\r\n"), "no clean end: {text:?}");
    assert_eq!(gw.client().get("/fine").text(), "fine");
}

#[test]
fn a_pooled_connection_closed_by_the_upstream_is_retried_for_idempotent_requests() {
    // The upstream answers the first request on each connection, then closes the connection as
    // soon as the next request arrives on it — the race of an idle timeout expiring just as the
    // gateway reuses the connection.
    let up = Scripted::start(true, |seen| {
        if seen.nth == 0 {
            Reply::Keep(ok(&format!("conn{}", seen.conn)))
        } else {
            Reply::Close(Vec::new())
        }
    });
    let gw = gateway(&up);
    let mut c = gw.client();
    assert_eq!(c.get("/").text(), "conn0");
    // GET: the gateway sees the pooled connection close before any response byte, and sends the
    // request again on a new connection.
    let r = c.get("/");
    assert_eq!((r.status, r.text().as_str()), (200, "conn1"));
    // POST is not idempotent: the upstream may have acted on it, so it is not repeated.
    let r = c.request("POST", "/", &[], b"payload");
    assert_eq!(r.status, 502);
    assert_eq!(up.connections(), 2);
}

#[test]
fn an_early_answer_stops_the_upload() {
    // The upstream refuses on seeing the head, without reading the 16 MiB body, and closes.
    let up = Scripted::start(false, |_| {
        Reply::Close(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!"
                .to_vec(),
        )
    });
    let gw = gateway(&up);
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body_len = 16 << 20;
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let upload = std::thread::spawn(move || {
        let chunk = vec![b'x'; 65536];
        for _ in 0..body_len / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(8).any(|w| w == b"too big!") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("too big!"), "{text}");
    drop(stream);
    let _ = upload.join();
    // And the gateway goes on serving.
    let mut c = Client::connect(gw.addr());
    assert_eq!(c.request("POST", "/", &[], b"small").status, 413);
}

#[test]
fn a_pooled_connection_the_upstream_closed_while_idle_is_not_reused() {
    // Each connection answers one request as if it stayed open, then closes. Once the close
    // has reached the gateway, the pooled connection must be set aside before a request is
    // written on it: a POST, which is never retried, still gets its answer.
    let up = Scripted::start(true, |seen| Reply::Close(ok(&format!("conn{}", seen.conn))));
    let gw = gateway(&up);
    let mut c = gw.client();
    assert_eq!(c.get("/").text(), "conn0");
    up.wait_closed();
    let r = c.request("POST", "/", &[], b"payload");
    assert_eq!((r.status, r.text().as_str()), (200, "conn1"));
    up.wait_closed();
    let r = c.request("POST", "/", &[], b"payload");
    assert_eq!((r.status, r.text().as_str()), (200, "conn2"));
    assert_eq!(up.connections(), 3);
}
