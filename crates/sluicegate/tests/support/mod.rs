//! Test support: the real `sluicegate` binary, real HTTP backends and a small blocking client,
//! all on 127.0.0.1 with ports chosen by the kernel.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod client;
pub mod dns;
pub mod idp;
pub mod load;
pub mod redis;
pub mod toml;
pub mod upstream;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use backend::Backend;
pub use client::{Client, Response};
pub use toml::Toml;

/// A one-thread runtime for a test server or client, and a listener on 127.0.0.1:0 bound on it
/// when `bind` (servers).
pub fn small_runtime(
    what: &str,
    bind: bool,
) -> (tokio::runtime::Runtime, Option<tokio::net::TcpListener>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{what} runtime: {e}"));
    let listener = bind.then(|| {
        runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("bind {what}: {e}"))
    });
    (runtime, listener)
}

/// curl over HTTP/2 by prior knowledge; returns the response head (lower-case) and body.
pub fn curl_h2(url: &str, extra: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-D", "-"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_lowercase(), body.to_string())
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-test-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sluicegate")
}

/// Runs `sluicegate check` on a config text; returns (exit code, stdout, stderr).
pub fn check(toml: &str) -> (i32, String, String) {
    let dir = TempDir::new("check");
    let path = dir.write("sluicegate.toml", toml);
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run sluicegate check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "sluicegate.toml"),
    )
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub dir: TempDir,
    /// Listener name → bound address, read from the "listening" log lines.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin API's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
    events: mpsc::Receiver<(String, SocketAddr)>,
}

impl Gateway {
    /// Starts `sluicegate run` with `toml` (listeners may bind port 0) and waits until every
    /// listener reports its address.
    pub fn start(toml: &str) -> Gateway {
        let dir = TempDir::new("gw");
        let path = dir.write("sluicegate.toml", toml);
        let expected =
            toml.matches("[[listeners]]").count() + usize::from(toml.contains("[admin]"));
        let mut child = Command::new(binary())
            .args(["run", "-c"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("SLUICEGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluicegate");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(found) = parse_listening(&line) {
                        let _ = tx.send(found);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut listeners = Vec::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while listeners.len() + usize::from(admin.is_some()) < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, addr)) if name == "<admin>" => admin = Some(addr),
                Ok(found) => listeners.push(found),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "gateway did not start; stderr:\n{}",
                        lines.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Gateway {
            child,
            dir,
            listeners,
            admin,
            config_path: path,
            stderr: lines,
            events: rx,
        }
    }

    /// Waits for the next `listening` line (a listener added by a reload).
    pub fn next_listening(&self, timeout: Duration) -> Option<(String, SocketAddr)> {
        self.events.recv_timeout(timeout).ok()
    }

    /// A client of the admin API.
    pub fn admin(&self) -> Client {
        Client::connect(self.admin.expect("config has no [admin]"))
    }

    /// Rewrites the config file (for reloads).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, toml).expect("write config");
        // Rename, so a reload never reads a half-written file.
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Peak resident memory of the gateway process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM value");
        kib * 1024
    }

    /// The value of one metric series (`name{labels}` exactly as `/metrics` prints it); 0 when
    /// it is not there.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.admin().get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway stderr ---\n{}", self.stderr_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `... listening listener=NAME address=ADDR` (and the admin API's line, as the
/// listener `<admin>`) from the gateway's log.
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if line.contains("admin API listening") {
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))?;
        return Some(("<admin>".to_string(), addr.parse().ok()?));
    }
    if !line.contains(" listening ") {
        return None;
    }
    let mut name = None;
    let mut addr = None;
    for word in line.split_whitespace() {
        if let Some(v) = word.strip_prefix("listener=") {
            name = Some(v.to_string());
        }
        if let Some(v) = word.strip_prefix("address=") {
            addr = v.parse().ok();
        }
    }
    Some((name?, addr?))
}

/// Writes raw bytes on a fresh connection and reads until the peer closes (or 5 s pass).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `done` every few milliseconds until it holds, for states no event announces; fails the
/// test, naming `what`, if it does not hold within `timeout`. The timeout only guards against a
/// hang: it is no claim about how long anything takes, so make it generous.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TCP socket as the kernel lists it in `/proc/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// The kernel's state number: 0x01 ESTABLISHED, 0x04 FIN_WAIT1, 0x05 FIN_WAIT2,
    /// 0x06 TIME_WAIT, 0x08 CLOSE_WAIT...
    pub state: u8,
    /// Bytes sent that the peer has not acknowledged yet.
    pub unacked: u32,
    /// Bytes received that the socket's owner has not read yet.
    pub unread: u32,
}

/// The kernel's view of the IPv4 TCP socket at `local` connected to `remote`: lets a test wait
/// until a process has read what was sent to it, or until a close reached it, where the process
/// itself announces neither.
pub fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> Option<TcpSocket> {
    // As the kernel prints them: the address's bytes as a native-endian word, the port as is.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 only: {a}"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let (unacked, unread) = f.get(4)?.split_once(':')?;
        Some(TcpSocket {
            state: u8::from_str_radix(f.get(3)?, 16).ok()?,
            unacked: u32::from_str_radix(unacked, 16).ok()?,
            unread: u32::from_str_radix(unread, 16).ok()?,
        })
    })
}
