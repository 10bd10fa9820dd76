//! The access log: one JSON object per request, written by a dedicated thread.
//!
//! The request path only appends a record to its worker's batch ([`Batcher`]); a full batch, or
//! every flush interval, moves to the writer thread through a bounded queue (`try_send`), where
//! formatting and I/O happen, so a slow disk or a blocked stdout never stalls a request. Batching
//! matters: handing over each record alone woke the writer thread per request, which cost more
//! CPU than the rest of the log. When the queue is full the batch is dropped and counted rather
//! than waited for.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};

use super::time::rfc3339_millis;
use crate::config::AccessLogTarget;

/// Batches waiting for the writer; beyond this the newest are dropped (and counted).
const QUEUE_CAPACITY: usize = 512;
/// Records a worker collects before handing them to the writer.
const BATCH_SIZE: usize = 128;
/// How often workers hand over their batch however small (see `Batcher::flush`).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered lines reach the file at least this often even when traffic is light.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// One request, as the access log shows it.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub time: SystemTime,
    /// The request id as sent upstream (a header value: cloning it shares the bytes).
    pub request_id: HeaderValue,
    pub client: IpAddr,
    pub method: Method,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub endpoint: Option<std::net::SocketAddr>,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl AccessRecord {
    /// The JSON line, without its newline.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the JSON line (without newline) to `out`. Written by hand rather than through
    /// serde: it runs once per request, and the fields are few and fixed.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"time\":\"");
        write_time(out, self.time);
        out.extend_from_slice(b"\",\"request_id\":");
        json_string(out, &String::from_utf8_lossy(self.request_id.as_bytes()));
        out.extend_from_slice(b",\"client\":\"");
        let _ = write!(out, "{}", self.client);
        out.extend_from_slice(b"\",\"method\":");
        json_string(out, self.method.as_str());
        out.extend_from_slice(b",\"host\":");
        json_string(out, &self.host);
        out.extend_from_slice(b",\"path\":");
        json_string(out, &self.path);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(n.format(self.status).as_bytes());
        out.extend_from_slice(b",\"route\":");
        json_optional(out, self.route.as_deref());
        out.extend_from_slice(b",\"service\":");
        json_optional(out, self.service.as_deref());
        out.extend_from_slice(b",\"endpoint\":");
        match self.endpoint {
            Some(e) => {
                out.push(b'"');
                let _ = write!(out, "{e}");
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        // Milliseconds with microsecond precision, as a JSON number.
        let micros = self.duration.as_micros();
        out.extend_from_slice(b",\"duration_ms\":");
        out.extend_from_slice(n.format(micros / 1000).as_bytes());
        out.push(b'.');
        let frac = (micros % 1000) as u16;
        out.extend_from_slice(&[
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        out.extend_from_slice(b",\"bytes_in\":");
        out.extend_from_slice(n.format(self.bytes_in).as_bytes());
        out.extend_from_slice(b",\"bytes_out\":");
        out.extend_from_slice(n.format(self.bytes_out).as_bytes());
        out.push(b'}');
    }
}

/// Appends `text` as a JSON string (quotes, backslashes and control characters escaped).
fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn json_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(t) => json_string(out, t),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `t` as RFC 3339 UTC with milliseconds. The date and time of day are formatted once
/// per second per thread; the writer thread calls this for every line.
fn write_time(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            // "2026-11-29T12:33:05.000Z" without its last 5 characters.
            let full = rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_secs(secs));
            cached.1 = full[..full.len() - 4].to_string();
            cached.0 = secs;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    let millis = since.subsec_millis() as u16;
    out.extend_from_slice(&[
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// Handle the request path uses; cheap to clone.
#[derive(Clone, Default)]
pub struct AccessLog {
    sender: Option<SyncSender<Vec<AccessRecord>>>,
    dropped: Arc<AtomicU64>,
    /// Set by `reopen()` (SIGUSR1), seen by the writer: log rotation moves the file away and
    /// the writer opens a new one at the configured path.
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Starts the writer thread for `target` (`Off` starts nothing).
    pub fn start(target: &AccessLogTarget) -> io::Result<AccessLog> {
        let sink = match target {
            AccessLogTarget::Off => return Ok(AccessLog::default()),
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File(path) => Sink::File(path.clone()),
        };
        let out = sink.open()?;
        let (sender, receiver) = sync_channel(QUEUE_CAPACITY);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            sink,
            out,
            reopen: Arc::clone(&reopen),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(receiver))?;
        Ok(AccessLog {
            sender: Some(sender),
            dropped: Arc::default(),
            reopen,
        })
    }

    /// Asks the writer to reopen its file (after log rotation); stdout is left as it is.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues one record; never blocks. The request path uses a [`Batcher`] instead.
    pub fn log(&self, record: AccessRecord) {
        self.send(vec![record]);
    }

    /// Queues a batch of records; never blocks.
    fn send(&self, batch: Vec<AccessRecord>) {
        let Some(sender) = &self.sender else { return };
        let count = batch.len() as u64;
        match sender.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One worker's pending records (single-threaded: the worker owns it).
pub struct Batcher {
    log: AccessLog,
    pending: std::cell::RefCell<Vec<AccessRecord>>,
}

impl Batcher {
    pub fn new(log: AccessLog) -> Batcher {
        Batcher {
            log,
            pending: std::cell::RefCell::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.log.enabled()
    }

    /// Adds a record; hands the batch over when it is full.
    pub fn push(&self, record: AccessRecord) {
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.push(record);
            pending.len() >= BATCH_SIZE
        };
        if full {
            self.flush();
        }
    }

    /// Hands over whatever is pending; called every [`BATCH_INTERVAL`] by the worker.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.borrow_mut());
        if !batch.is_empty() {
            self.log.send(batch);
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.flush();
    }
}

enum Sink {
    Stdout,
    File(PathBuf),
}

impl Sink {
    fn open(&self) -> io::Result<BufWriter<Box<dyn Write + Send>>> {
        let out: Box<dyn Write + Send> = match self {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        Ok(BufWriter::with_capacity(64 * 1024, out))
    }
}

struct Writer {
    sink: Sink,
    out: BufWriter<Box<dyn Write + Send>>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Vec<AccessRecord>>) {
        loop {
            let received = receiver.recv_timeout(FLUSH_INTERVAL);
            // Checked after waking, so a record queued after `reopen()` lands in the new file.
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.reopen_file();
            }
            match received {
                Ok(batch) => {
                    // Drain what is queued before flushing, so a busy gateway writes in big
                    // chunks.
                    let queued = std::iter::once(batch).chain(receiver.try_iter());
                    let mut line = Vec::with_capacity(512);
                    for record in queued.flatten() {
                        line.clear();
                        record.write_json(&mut line);
                        line.push(b'\n');
                        if let Err(e) = self.out.write_all(&line) {
                            tracing::error!(error = %e, "access log write failed");
                        }
                    }
                    let _ = self.out.flush();
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.out.flush();
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            }
        }
    }

    fn reopen_file(&mut self) {
        if matches!(self.sink, Sink::Stdout) {
            return;
        }
        let _ = self.out.flush();
        match self.sink.open() {
            Ok(out) => self.out = out,
            // Keep writing to the old file rather than losing lines.
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the access log; still writing to the old file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_every_field() {
        let r = AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: HeaderValue::from_static("id\"1"),
            client: "127.0.0.1".parse().unwrap(),
            method: Method::GET,
            host: "h".into(),
            path: "/p?q=1".into(),
            status: 200,
            route: Some("r".into()),
            service: None,
            endpoint: Some("127.0.0.1:9".parse().unwrap()),
            duration: Duration::from_micros(1500),
            bytes_in: 1,
            bytes_out: 2,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "time",
            "request_id",
            "client",
            "method",
            "host",
            "path",
            "status",
            "route",
            "service",
            "endpoint",
            "duration_ms",
            "bytes_in",
            "bytes_out",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["request_id"], "id\"1");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["endpoint"], "127.0.0.1:9");
        assert!(v["service"].is_null());
    }

    proptest::proptest! {
        #[test]
        fn json_lines_parse_and_keep_their_strings(
            id in ".{0,40}", host in ".{0,20}", path in ".{0,60}", micros in 0u64..10_000_000_000,
        ) {
            let r = AccessRecord {
                time: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
                request_id: HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("x")),
                client: "::1".parse().unwrap(),
                method: Method::PATCH,
                host: host.clone(),
                path: path.clone(),
                status: 503,
                route: Some("r\"q".into()),
                service: Some("s".into()),
                endpoint: None,
                duration: Duration::from_micros(micros),
                bytes_in: micros,
                bytes_out: 0,
            };
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            if HeaderValue::from_str(&id).is_ok() {
                proptest::prop_assert_eq!(v["request_id"].as_str(), Some(id.as_str()));
            }
            proptest::prop_assert_eq!(v["host"].as_str(), Some(host.as_str()));
            proptest::prop_assert_eq!(v["path"].as_str(), Some(path.as_str()));
            proptest::prop_assert_eq!(v["route"].as_str(), Some("r\"q"));
            proptest::prop_assert_eq!(v["bytes_in"].as_u64(), Some(micros));
            let ms = v["duration_ms"].as_f64().unwrap();
            proptest::prop_assert!((ms - micros as f64 / 1000.0).abs() < 0.0015);
            proptest::prop_assert_eq!(
                v["time"].as_str().unwrap(),
                rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_micros(micros))
            );
        }
    }

    #[test]
    fn file_target_gets_lines() {
        let dir = std::env::temp_dir().join(format!("sg-al-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let log = AccessLog::start(&AccessLogTarget::File(dir.clone())).unwrap();
        assert!(log.enabled());
        let mut r = AccessRecord {
            time: SystemTime::now(),
            request_id: HeaderValue::from_static("x"),
            client: "127.0.0.1".parse().unwrap(),
            method: Method::POST,
            host: String::new(),
            path: "/".into(),
            status: 201,
            route: None,
            service: None,
            endpoint: None,
            duration: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
        };
        let wait_lines = |path: &std::path::Path, n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if text.lines().count() == n {
                    return text;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "lines never arrived: {text:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        log.log(r.clone());
        r.status = 202;
        log.log(r.clone());
        assert!(wait_lines(&dir, 2).contains("\"status\":202"));
        // Rotation: the file is moved away, SIGUSR1 asks for a reopen, new lines go to a new
        // file at the configured path.
        let rotated = dir.with_extension("1");
        std::fs::rename(&dir, &rotated).unwrap();
        log.reopen();
        r.status = 203;
        log.log(r);
        assert!(wait_lines(&dir, 1).contains("\"status\":203"));
        assert_eq!(wait_lines(&rotated, 2).lines().count(), 2);
        drop(log);
        let _ = std::fs::remove_file(&rotated);
        let _ = std::fs::remove_file(&dir);
    }
}
