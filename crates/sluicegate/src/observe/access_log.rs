//! The access log: one JSON object per request.
//!
//! The request path formats its line into its worker's batch ([`Batcher`]): the part known on
//! arrival (time, id, client, method, host, path) when the request comes in, the rest when it
//! ends, so nothing per request is allocated or shared between threads. A full batch, or every
//! flush interval, is written out:
//! - to a file, by the worker itself with one `write` on a file opened for appending (as nginx
//!   does with a log buffer): appends of a whole batch do not interleave, and a write to the
//!   page cache costs less than waking another thread for it — handing batches to a writer
//!   thread cost a futex wake, a context switch and often an inter-processor interrupt each;
//! - to stdout, through a writer thread and a bounded queue (`try_send`), since a pipe's reader
//!   may stall: there a full queue drops the batch and counts it rather than stall requests.
//!
//! Batching matters either way: handing over each line alone cost more CPU than the rest of the
//! log.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::time::rfc3339_millis;
use crate::config::AccessLogTarget;

/// Batches waiting for the writer; beyond this the newest are dropped (and counted).
const QUEUE_CAPACITY: usize = 512;
/// Bytes of lines a worker collects before handing them to the writer.
const BATCH_BYTES: usize = 32 * 1024;
/// Line buffers a worker keeps for reuse (one per request in flight, up to this many).
const SPARE_LINES: usize = 256;
/// How often workers hand over their batch however small (see `Batcher::flush`).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered lines reach the file at least this often even when traffic is light.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// What a log line says that is known when the request arrives.
pub struct LineStart<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    /// The client's address as text.
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// The request's trace id and the gateway's span id, when `[tracing]` is on.
    pub trace: Option<([u8; 16], [u8; 8])>,
}

/// What a log line says that is known when the request ends.
pub struct LineEnd<'a> {
    pub status: u16,
    pub route: Option<&'a str>,
    pub service: Option<&'a str>,
    /// The endpoint's address as text.
    pub endpoint: Option<&'a str>,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Each policy step's decision, as `"step": "decision"` (`"rate_limit": "allowed"`).
    pub decisions: &'a [(&'static str, &'static str)],
    /// The authenticated consumer, on routes with auth.
    pub consumer: Option<&'a str>,
}

/// Appends the first part of a JSON line: from `{` to the path. Written by hand rather than
/// through serde: it runs once per request, and the fields are few and fixed.
fn write_start(out: &mut Vec<u8>, s: &LineStart<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    write_time(out, s.time);
    out.extend_from_slice(b"\",\"request_id\":");
    json_string(out, s.request_id);
    out.extend_from_slice(b",\"client\":");
    json_string(out, s.client);
    out.extend_from_slice(b",\"method\":");
    json_string(out, s.method);
    out.extend_from_slice(b",\"host\":");
    json_string(out, s.host);
    out.extend_from_slice(b",\"path\":");
    json_string(out, s.path);
    if let Some((trace_id, span_id)) = &s.trace {
        let mut hex = [0u8; 32];
        out.extend_from_slice(b",\"trace_id\":\"");
        crate::observe::trace::context::hex_into(trace_id, &mut hex);
        out.extend_from_slice(&hex);
        out.extend_from_slice(b"\",\"span_id\":\"");
        crate::observe::trace::context::hex_into(span_id, &mut hex[..16]);
        out.extend_from_slice(&hex[..16]);
        out.push(b'"');
    }
}

/// Appends the rest of the line after [`write_start`], up to the closing `}`.
fn write_end(out: &mut Vec<u8>, e: &LineEnd<'_>) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(n.format(e.status).as_bytes());
    out.extend_from_slice(b",\"route\":");
    json_optional(out, e.route);
    out.extend_from_slice(b",\"service\":");
    json_optional(out, e.service);
    out.extend_from_slice(b",\"endpoint\":");
    json_optional(out, e.endpoint);
    // Milliseconds with microsecond precision, as a JSON number.
    let micros = e.duration.as_micros();
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
    out.extend_from_slice(n.format(e.bytes_in).as_bytes());
    out.extend_from_slice(b",\"bytes_out\":");
    out.extend_from_slice(n.format(e.bytes_out).as_bytes());
    for (step, decision) in e.decisions {
        out.push(b',');
        json_string(out, step);
        out.push(b':');
        json_string(out, decision);
    }
    if let Some(consumer) = e.consumer {
        out.extend_from_slice(b",\"consumer\":");
        json_string(out, consumer);
    }
    out.push(b'}');
}

/// Bytes a JSON string cannot hold as they are: control characters, `"` and `\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `text` as a JSON string (quotes, backslashes and control characters escaped).
fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    // Most values need no escaping: one scan, one copy.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
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

/// Whether any byte of `bytes` needs escaping. Sixteen bytes at a time, without branching
/// inside a block, so the compiler tests a block with a few vector instructions: a byte-wise
/// table scan cost about 4 instructions a byte, and a line's strings are ~150 bytes.
fn needs_escape(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        let hit = block.iter().fold(false, |hit, &b| {
            hit | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if hit {
            return true;
        }
    }
    blocks
        .remainder()
        .iter()
        .any(|&b| NEEDS_ESCAPE[usize::from(b)])
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

/// Formatted lines on their way to the writer.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// Handle the request path uses; cheap to clone.
#[derive(Clone, Default)]
pub struct AccessLog {
    /// The writer thread's queue (stdout).
    sender: Option<SyncSender<Batch>>,
    /// The file workers append to themselves.
    file: Option<Arc<DirectFile>>,
    dropped: Arc<AtomicU64>,
    /// Set by `reopen()` (SIGUSR1): log rotation moved the file away, and the next write opens
    /// a new one at the configured path.
    reopen: Arc<AtomicBool>,
}

/// A log file written by the workers directly.
struct DirectFile {
    path: PathBuf,
    file: ArcSwap<File>,
}

impl DirectFile {
    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn write(&self, bytes: &[u8], reopen: &AtomicBool) {
        // Whoever writes first after a rotation reopens; the others keep appending to the old
        // file until the new one is in place.
        if reopen.swap(false, Ordering::Relaxed) {
            match DirectFile::open(&self.path) {
                Ok(file) => self.file.store(Arc::new(file)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the access log; still writing to the old file")
                }
            }
        }
        if let Err(e) = (&*self.file.load_full()).write_all(bytes) {
            tracing::error!(error = %e, "access log write failed");
        }
    }
}

impl AccessLog {
    /// Starts the writer thread for `target` (`Off` starts nothing).
    pub fn start(target: &AccessLogTarget) -> io::Result<AccessLog> {
        match target {
            AccessLogTarget::Off => Ok(AccessLog::default()),
            AccessLogTarget::File(path) => {
                let file = DirectFile::open(path)?;
                Ok(AccessLog {
                    file: Some(Arc::new(DirectFile {
                        path: path.clone(),
                        file: ArcSwap::from_pointee(file),
                    })),
                    ..AccessLog::default()
                })
            }
            AccessLogTarget::Stdout => {
                let (sender, receiver) = sync_channel(QUEUE_CAPACITY);
                std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || write_stdout(receiver))?;
                Ok(AccessLog {
                    sender: Some(sender),
                    ..AccessLog::default()
                })
            }
        }
    }

    /// Reopens the file at its path before the next write (after log rotation); stdout is left
    /// as it is.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some() || self.file.is_some()
    }

    /// Writes a batch of lines to the file, or queues it for stdout (never blocking there).
    fn send(&self, batch: Batch) {
        if let Some(file) = &self.file {
            file.write(&batch.bytes, &self.reopen);
            return;
        }
        let Some(sender) = &self.sender else { return };
        let lines = batch.lines;
        match sender.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One request's line while the request is in flight: its first part already formatted.
pub struct PendingLine(Vec<u8>);

/// One worker's pending lines (single-threaded: the worker owns it).
pub struct Batcher {
    log: AccessLog,
    pending: RefCell<Batch>,
    /// Buffers of finished lines, reused by the next requests.
    spare: RefCell<Vec<Vec<u8>>>,
}

impl Batcher {
    pub fn new(log: AccessLog) -> Batcher {
        Batcher {
            log,
            pending: RefCell::new(Batch {
                bytes: Vec::new(),
                lines: 0,
            }),
            spare: RefCell::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.log.enabled()
    }

    /// Starts a request's line with what is known on arrival.
    pub fn begin(&self, start: &LineStart<'_>) -> PendingLine {
        let mut buf = self
            .spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(320));
        write_start(&mut buf, start);
        PendingLine(buf)
    }

    /// Completes a line and adds it to the batch; hands the batch over when it is full.
    pub fn end(&self, line: PendingLine, end: &LineEnd<'_>) {
        let mut buf = line.0;
        write_end(&mut buf, end);
        buf.push(b'\n');
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.bytes.extend_from_slice(&buf);
            pending.lines += 1;
            pending.bytes.len() >= BATCH_BYTES
        };
        buf.clear();
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_LINES {
            spare.push(buf);
        }
        drop(spare);
        if full {
            self.flush();
        }
    }

    /// Hands over whatever is pending; called every [`BATCH_INTERVAL`] by the worker.
    pub fn flush(&self) {
        let batch = {
            let mut pending = self.pending.borrow_mut();
            if pending.lines == 0 {
                return;
            }
            Batch {
                bytes: std::mem::replace(
                    &mut pending.bytes,
                    Vec::with_capacity(BATCH_BYTES + 1024),
                ),
                lines: std::mem::take(&mut pending.lines),
            }
        };
        self.log.send(batch);
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The stdout writer thread: drains what is queued before flushing, so a busy gateway writes in
/// big chunks.
fn write_stdout(receiver: Receiver<Batch>) {
    let mut out = io::stdout();
    loop {
        match receiver.recv_timeout(FLUSH_INTERVAL) {
            Ok(batch) => {
                for batch in std::iter::once(batch).chain(receiver.try_iter()) {
                    if let Err(e) = out.write_all(&batch.bytes) {
                        tracing::error!(error = %e, "access log write failed");
                    }
                }
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line as the request path formats it: [`write_start`] on arrival, [`write_end`] when
    /// the request ends.
    fn line(start: &LineStart<'_>, end: &LineEnd<'_>) -> String {
        let mut out = Vec::new();
        write_start(&mut out, start);
        write_end(&mut out, end);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_line_has_every_field() {
        let text = line(
            &LineStart {
                time: SystemTime::UNIX_EPOCH,
                request_id: "id\"1",
                client: "127.0.0.1",
                method: "GET",
                host: "h",
                path: "/p?q=1",
                trace: Some(([0xab; 16], [0x01; 8])),
            },
            &LineEnd {
                status: 200,
                route: Some("r"),
                service: None,
                endpoint: Some("127.0.0.1:9"),
                duration: Duration::from_micros(1500),
                bytes_in: 1,
                bytes_out: 2,
                decisions: &[("rate_limit", "allowed")],
                consumer: Some("acme"),
            },
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
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
        assert_eq!(v["rate_limit"], "allowed");
        assert_eq!(v["consumer"], "acme");
        assert_eq!(v["endpoint"], "127.0.0.1:9");
        assert!(v["service"].is_null());
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "0101010101010101");
    }

    proptest::proptest! {
        /// The block-wise scan finds exactly the bytes the table names, wherever they sit
        /// (in a block or in the remainder).
        #[test]
        fn block_scan_agrees_with_the_table(
            bytes in proptest::collection::vec(proptest::prop_oneof![
                0x20u8..0x7f, proptest::prelude::Just(b'"'), proptest::prelude::Just(b'\\'),
                0u8..0x20, 0x80u8..=0xff,
            ], 0..70),
            clean in 0usize..70,
        ) {
            // Mostly clean inputs with at most a few bytes to escape, as real values are.
            let bytes: Vec<u8> = bytes.iter().enumerate()
                .map(|(i, &b)| if i < clean { b'a' + b % 26 } else { b })
                .collect();
            let table = bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]);
            proptest::prop_assert_eq!(needs_escape(&bytes), table);
        }

        #[test]
        fn json_lines_parse_and_keep_their_strings(
            id in ".{0,40}", host in ".{0,20}", path in ".{0,60}", micros in 0u64..10_000_000_000,
        ) {
            let text = line(
                &LineStart {
                    time: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
                    request_id: &id,
                    client: "::1",
                    method: "PATCH",
                    host: &host,
                    path: &path,
                    trace: None,
                },
                &LineEnd {
                    status: 503,
                    route: Some("r\"q"),
                    service: Some("s"),
                    endpoint: None,
                    duration: Duration::from_micros(micros),
                    bytes_in: micros,
                    bytes_out: 0,
                    decisions: &[],
                    consumer: None,
                },
            );
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            // Every id survives, not only those valid as a header value.
            proptest::prop_assert_eq!(v["request_id"].as_str(), Some(id.as_str()));
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
        // A worker's batcher, driven as the request path drives it.
        let batcher = Batcher::new(log.clone());
        assert!(batcher.enabled());
        let request = |status: u16| {
            let pending = batcher.begin(&LineStart {
                time: SystemTime::now(),
                request_id: "x",
                client: "127.0.0.1",
                method: "POST",
                host: "",
                path: "/",
                trace: None,
            });
            batcher.end(
                pending,
                &LineEnd {
                    status,
                    route: None,
                    service: None,
                    endpoint: None,
                    duration: Duration::ZERO,
                    bytes_in: 0,
                    bytes_out: 0,
                    decisions: &[],
                    consumer: None,
                },
            );
        };
        // The worker writes the file itself on a flush: the lines are there when it returns.
        let lines = |path: &std::path::Path, n: usize| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            assert_eq!(text.lines().count(), n, "{text:?}");
            text
        };
        request(201);
        request(202);
        batcher.flush();
        assert!(lines(&dir, 2).contains("\"status\":202"));
        // Rotation: the file is moved away, SIGUSR1 asks for a reopen, new lines go to a new
        // file at the configured path.
        let rotated = dir.with_extension("1");
        std::fs::rename(&dir, &rotated).unwrap();
        log.reopen();
        request(203);
        batcher.flush();
        assert!(lines(&dir, 1).contains("\"status\":203"));
        assert_eq!(lines(&rotated, 2).lines().count(), 2);
        drop(batcher);
        drop(log);
        let _ = std::fs::remove_file(&rotated);
        let _ = std::fs::remove_file(&dir);
    }
}
