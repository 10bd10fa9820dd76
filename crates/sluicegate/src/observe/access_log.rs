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

use http::Method;
use serde::Serialize;

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
    pub request_id: String,
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

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client: String,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    route: Option<&'a str>,
    service: Option<&'a str>,
    endpoint: Option<String>,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
}

impl AccessRecord {
    /// The JSON line, without its newline.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the JSON line (without newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let line = Line {
            time: rfc3339_millis(self.time),
            request_id: &self.request_id,
            client: self.client.to_string(),
            method: self.method.as_str(),
            host: &self.host,
            path: &self.path,
            status: self.status,
            route: self.route.as_deref(),
            service: self.service.as_deref(),
            endpoint: self.endpoint.map(|e| e.to_string()),
            duration_ms: (self.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        };
        // Serialising plain strings and numbers into memory cannot fail.
        let _ = serde_json::to_writer(out, &line);
    }
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
            request_id: "id\"1".into(),
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

    #[test]
    fn file_target_gets_lines() {
        let dir = std::env::temp_dir().join(format!("sg-al-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let log = AccessLog::start(&AccessLogTarget::File(dir.clone())).unwrap();
        assert!(log.enabled());
        let mut r = AccessRecord {
            time: SystemTime::now(),
            request_id: "x".into(),
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
