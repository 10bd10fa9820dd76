//! 1 GiB up and 1 GiB down through the proxy with bounded gateway memory: bodies stream.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use support::{Backend, Gateway, Toml};

const GIB: u64 = 1 << 30;
const RSS_LIMIT: u64 = 64 << 20;

fn gateway(b: &Backend) -> Gateway {
    Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("all", "app", "timeout = \"0\"")
            .service("app", &[b.addr], "")
            .build(),
    )
}

/// Reads a response head; returns (status, content-length if any).
fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Option<u64>) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            return (status, length);
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
    }
}

#[test]
fn one_gib_upload_and_download_with_bounded_memory() {
    let b = Backend::start("big");
    let gw = gateway(&b);

    // Upload: 1 GiB written in 256 KiB pieces; the backend answers with the count it read.
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n"
    )
    .unwrap();
    let piece = vec![b'u'; 256 * 1024];
    let mut sent = 0;
    while sent < GIB {
        stream.write_all(&piece).unwrap();
        sent += piece.len() as u64;
    }
    let (status, length) = read_head(&mut reader);
    assert_eq!(status, 200);
    let mut body = vec![0; length.unwrap() as usize];
    reader.read_exact(&mut body).unwrap();
    assert_eq!(String::from_utf8(body).unwrap(), GIB.to_string());

    // Download: 1 GiB read and counted, never held.
    write!(stream, "GET /bytes/{GIB} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, length) = read_head(&mut reader);
    assert_eq!(status, 200);
    assert_eq!(length, Some(GIB));
    let mut left = GIB;
    let mut buf = vec![0; 256 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = reader.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "connection closed with {left} bytes left");
        left -= n as u64;
    }

    let peak = gw.peak_rss();
    eprintln!(
        "gateway peak RSS after 1 GiB up and down: {} KiB",
        peak / 1024
    );
    assert!(peak < RSS_LIMIT, "peak RSS {} MiB", peak >> 20);
}
