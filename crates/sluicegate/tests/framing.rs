//! Message framing corrections (RFC 9112 6–7), through the real binary, against an upstream
//! that records the exact bytes it receives and answers with exact bytes: what frames a body
//! on one side must frame it the same way on the other, and what the gateway cannot forward
//! faithfully it refuses.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{raw_exchange, Gateway, Toml};

/// An upstream that answers every request with the same bytes and keeps, per request, the raw
/// bytes it read (head and body, trailers included).
struct Recorder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start(reply: &'static [u8]) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    while let Some(request) = read_request(&mut reader) {
                        log.lock().unwrap().push(request);
                        if writer.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

fn line(reader: &mut BufReader<TcpStream>, out: &mut Vec<u8>) -> Option<String> {
    let mut l = String::new();
    match reader.read_line(&mut l) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            out.extend_from_slice(l.as_bytes());
            Some(l.trim_end().to_string())
        }
    }
}

/// One whole request as bytes: head, then a body by Content-Length or chunked.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let l = line(reader, &mut raw)?;
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        loop {
            let size = line(reader, &mut raw)?;
            let n = usize::from_str_radix(size.split(';').next()?, 16).ok()?;
            if n == 0 {
                while !line(reader, &mut raw)?.is_empty() {}
                break;
            }
            let mut data = vec![0; n + 2];
            reader.read_exact(&mut data).ok()?;
            raw.extend_from_slice(&data);
        }
    } else {
        let mut data = vec![0; length];
        reader.read_exact(&mut data).ok()?;
        raw.extend_from_slice(&data);
    }
    Some(raw)
}

fn gateway(upstream: SocketAddr) -> Gateway {
    Gateway::start(&Toml::proxy_to(&[upstream]).build())
}

fn status(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// The body of a response read until the gateway closed, de-chunked when chunked.
fn body(text: &str) -> String {
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let n = usize::from_str_radix(size, 16).expect("hex");
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

const GET: &str = "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[test]
fn content_length_beside_transfer_encoding_never_frames_the_clients_response() {
    // The length would announce 62 bytes where the chunked body has none.
    let up = Recorder::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 62\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    let text = raw_exchange(gateway(up.addr).addr(), GET.as_bytes());
    assert_eq!(status(&text), 200, "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("content-length: 62"),
        "{text}"
    );
    assert_eq!(body(&text), "");

    // And 4 where it has 57.
    let up = Recorder::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n39\r\n123456789012345678901234567890123456789012345678901234567\r\n0\r\n\r\n",
    );
    let text = raw_exchange(gateway(up.addr).addr(), GET.as_bytes());
    assert!(
        !text.to_ascii_lowercase().contains("content-length: 4"),
        "{text}"
    );
    assert_eq!(body(&text).len(), 57, "{text}");
}

#[test]
fn transfer_codings_other_than_chunked_are_refused_both_ways() {
    let up = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let gw = gateway(up.addr);
    for (te, code, error) in [
        ("gzip, chunked", 501, "not_implemented"),
        ("gzip\r\nTransfer-Encoding: chunked", 501, "not_implemented"),
        ("chunked, gzip", 400, "bad_request"),
        ("chunked, chunked", 400, "bad_request"),
    ] {
        let text = raw_exchange(
            gw.addr(),
            format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes(),
        );
        assert_eq!(status(&text), code, "{te}: {text}");
        assert!(text.contains(&format!("\"error\":\"{error}\"")), "{text}");
    }
    assert!(up.requests().is_empty(), "nothing reached the upstream");

    let up = Recorder::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let text = raw_exchange(gateway(up.addr).addr(), GET.as_bytes());
    assert_eq!(status(&text), 502, "{text}");
    assert!(
        text.contains("\"error\":\"upstream_unavailable\""),
        "{text}"
    );
}

#[test]
fn trailers_end_the_body_keep_the_pipeline_and_lose_forbidden_fields() {
    let up = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let gw = gateway(up.addr);
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"POST /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 5\r\nHost: evil.test\r\nContent-Length: 99\r\nAuthorization: Bearer x\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("POST /first "), "{}", seen[0]);
    let trailers = seen[0]
        .rsplit_once("0\r\n")
        .expect("last chunk")
        .1
        .to_ascii_lowercase();
    assert!(trailers.contains("x-checksum: 5"), "{trailers}");
    for forbidden in ["host", "content-length", "authorization"] {
        assert!(!trailers.contains(forbidden), "{forbidden} in {trailers}");
    }
    assert!(seen[1].starts_with("GET /second "), "{}", seen[1]);
}

#[test]
fn connection_cannot_unframe_an_upload() {
    // `Connection: content-length` once dropped the field the upload was framed by.
    let up = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let text = raw_exchange(
        gateway(up.addr).addr(),
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close, content-length\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status(&text), 200, "{text}");
    let seen = up.requests();
    let lower = seen[0].to_ascii_lowercase();
    assert!(lower.contains("content-length: 5\r\n"), "{lower}");
    assert!(lower.ends_with("\r\n\r\nhello"), "{lower}");
}

#[test]
fn a_slow_head_is_closed_at_the_listeners_deadline() {
    let up = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let toml = Toml::new()
        .listener("public", "request_header_timeout = \"1s\"")
        .route("all", "app", "")
        .service("app", &[up.addr], "")
        .build();
    let gw = Gateway::start(&toml);
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    // Far longer than the deadline: the test fails by this timeout if the gateway never closes.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the gateway closed the connection: {closed:?}"
    );
    assert!(up.requests().is_empty());
}

#[test]
fn the_header_deadline_starts_again_with_each_wait_on_a_keep_alive_connection() {
    // The deadline timer is armed once per connection and moved only when it fires: a keep-alive
    // connection whose requests come closer together than the deadline, but whose life is longer
    // than it, must not be closed at a deadline left from an earlier wait.
    let up = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let toml = Toml::new()
        .listener("public", "request_header_timeout = \"2s\"")
        .route("all", "app", "")
        .service("app", &[up.addr], "")
        .build();
    let gw = Gateway::start(&toml);
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1200));
        }
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut answer = [0u8; 256];
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let n = stream.read(&mut answer).unwrap();
            assert!(
                n > 0,
                "round {round}: closed: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&answer[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "round {round}");
    }
    // Then idle: closed by the deadline (the read would time out after 30 s otherwise).
    let mut rest = Vec::new();
    assert!(stream.read_to_end(&mut rest).is_ok() && rest.is_empty());
    assert_eq!(up.requests().len(), 3);
}

#[test]
fn a_declared_length_over_the_limit_is_refused_however_it_is_spelled() {
    let up = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let toml = Toml::new()
        .listener("public", "max_request_body_bytes = \"1KiB\"")
        .route("all", "app", "")
        .service("app", &[up.addr], "")
        .build();
    let gw = Gateway::start(&toml);
    for length in ["2000", "2000, 2000", "2000,2000"] {
        let text = raw_exchange(
            gw.addr(),
            format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n").as_bytes(),
        );
        assert_eq!(status(&text), 413, "{length}: {text}");
    }
    assert!(up.requests().is_empty(), "refused before the upstream");
}
