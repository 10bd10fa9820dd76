//! W3C Trace Context (https://www.w3.org/TR/trace-context/): reading a client's `traceparent`,
//! deciding whether a request is sampled, and writing the `traceparent` the upstream gets.
//!
//! Client bytes: a malformed `traceparent` is never repaired. The specification (§3.2.2.x, "If
//! the vendor failed to parse traceparent, it MUST NOT attempt to parse tracestate") makes the
//! gateway start a new trace instead, and its `tracestate` is dropped with it.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent` (§3.2).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (§3.3).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `trace-flags` bit 0 (§3.2.2.5): the caller may have recorded this request.
const SAMPLED: u8 = 0x01;

/// A trace's id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span's id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// What a valid `traceparent` says of the caller's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// The request's place in a trace, as the gateway continues or starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    /// The gateway's span for this request (the upstream's parent).
    pub span_id: SpanId,
    /// The caller's span, when a valid `traceparent` came with the request.
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

impl SpanContext {
    /// The `traceparent` sent upstream: this trace, the gateway's span as the parent, and the
    /// gateway's sampling decision (version 00, whose only flag is `sampled`).
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        // Lowercase hex digits and dashes: always a valid field value.
        HeaderValue::from_bytes(&out).expect("hex digits and dashes")
    }
}

/// How a request is sampled when tracing is on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Share of new traces recorded, 0.0 to 1.0.
    pub ratio: f64,
    /// A caller's `sampled` flag decides for its traces (`parent_based`).
    pub parent_based: bool,
}

impl Sampler {
    /// Continues the caller's trace when its `traceparent` is valid (and the only one),
    /// otherwise starts one; the gateway's span id is new either way.
    pub fn start(&self, headers: &HeaderMap) -> SpanContext {
        let parent = caller(headers);
        let span_id = new_span_id();
        match parent {
            Some(p) => SpanContext {
                trace_id: p.trace_id,
                span_id,
                parent: Some(p.span_id),
                // Not parent-based: the caller chose this trace id, so the ratio is decided at
                // random rather than from it (a client could pick ids that always sample).
                sampled: if self.parent_based {
                    p.sampled
                } else {
                    self.ratio >= 1.0 || (self.ratio > 0.0 && fastrand::f64() < self.ratio)
                },
            },
            None => {
                let trace_id = new_trace_id();
                SpanContext {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: self.samples(&trace_id),
                }
            }
        }
    }

    /// The ratio decision, from the trace id alone (as OpenTelemetry's `TraceIdRatioBased`
    /// makes it: the low 8 bytes, shifted to 63 bits, under `ratio` × 2⁶³), so every gateway
    /// instance with the same ratio decides the same for a trace.
    fn samples(&self, trace_id: &TraceId) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        let x = u64::from_be_bytes(low) >> 1;
        (x as f64) < self.ratio * (1u64 << 63) as f64
    }
}

/// The caller's span from the request's `traceparent`: `None` when there is none, more than
/// one (two parents cannot both be right), or it does not parse.
pub fn caller(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_traceparent(value.as_bytes())
}

/// Parses a `traceparent` value (§3.2.2, and §3.2.4 for versions after 00):
/// `version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex only. Version `ff` is
/// invalid; version 00 is exactly 55 characters; a later version may carry more after a `-`
/// (read as version 00's fields, the rest ignored). An all-zero trace id or parent id is invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(value[0], value[1])?;
    if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if version == 0 && value.len() != 55 {
        return None;
    }
    if version != 0 && value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_from(&value[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    hex_from(&value[36..52], &mut span_id)?;
    let flags = hex_byte(value[53], value[54])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & SAMPLED != 0,
    })
}

/// A new random trace id (never zero: §3.2.2.3).
pub fn new_trace_id() -> TraceId {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A new random span id (never zero: §3.2.2.4).
pub fn new_span_id() -> SpanId {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (twice as long).
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Reads lowercase hex (`HEXDIGLC`; uppercase is invalid in `traceparent`) into `out`.
fn hex_from(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, pair) in text.chunks_exact(2).enumerate() {
        *out.get_mut(i)? = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

fn hex_byte(high: u8, low: u8) -> Option<u8> {
    Some(hex_digit(high)? << 4 | hex_digit(low)?)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_specifications_example() {
        let p = parse_traceparent(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            p.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        let unsampled = EXAMPLE.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
    }

    #[test]
    fn refuses_what_the_specification_calls_invalid() {
        let cases = [
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // version ff
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero trace id, parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version 00 with more after it
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // short, wrong separators, non-hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // a later version whose extra part does not start with a dash
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "",
        ];
        for case in cases {
            assert_eq!(parse_traceparent(case.as_bytes()), None, "{case}");
        }
    }

    #[test]
    fn reads_later_versions_by_version_00s_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-adds";
        assert!(parse_traceparent(later.as_bytes()).is_some());
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(parse_traceparent(exact.as_bytes()).is_some());
    }

    #[test]
    fn two_traceparent_fields_start_a_new_trace() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert!(caller(&headers).is_some());
        headers.append(TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert_eq!(caller(&headers), None);
    }

    #[test]
    fn a_valid_caller_is_continued_and_its_sampled_flag_decides() {
        let sampler = Sampler {
            ratio: 0.0,
            parent_based: true,
        };
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        let cx = sampler.start(&headers);
        let p = parse_traceparent(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(cx.trace_id, p.trace_id);
        assert_eq!(cx.parent, Some(p.span_id));
        assert_ne!(cx.span_id, p.span_id);
        assert!(cx.sampled, "parent-based: the caller sampled it");
        let not_parent_based = Sampler {
            parent_based: false,
            ..sampler
        };
        assert!(!not_parent_based.start(&headers).sampled);
        // The upstream's traceparent names the gateway's span as its parent.
        let sent = cx.traceparent();
        let q = parse_traceparent(sent.as_bytes()).unwrap();
        assert_eq!(
            (q.trace_id, q.span_id, q.sampled),
            (p.trace_id, cx.span_id, true)
        );
    }

    #[test]
    fn the_ratio_samples_about_its_share_of_new_traces() {
        let sampler = Sampler {
            ratio: 0.25,
            parent_based: true,
        };
        let headers = HeaderMap::new();
        let n = 40_000;
        let sampled = (0..n).filter(|_| sampler.start(&headers).sampled).count();
        let share = sampled as f64 / n as f64;
        assert!((0.23..0.27).contains(&share), "{share}");
        let never = Sampler {
            ratio: 0.0,
            ..sampler
        };
        assert!((0..1000).all(|_| !never.start(&headers).sampled));
        let always = Sampler {
            ratio: 1.0,
            ..sampler
        };
        assert!((0..1000).all(|_| always.start(&headers).sampled));
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(p) = parse_traceparent(&bytes) {
                let cx = SpanContext { trace_id: p.trace_id, span_id: p.span_id, parent: None, sampled: p.sampled };
                prop_assert_eq!(parse_traceparent(cx.traceparent().as_bytes()), Some(p));
            }
        }

        #[test]
        fn every_formatted_context_parses_back(trace in any::<u128>(), span in any::<u64>(), sampled in any::<bool>()) {
            let cx = SpanContext { trace_id: trace.max(1).to_be_bytes(), span_id: span.max(1).to_be_bytes(), parent: None, sampled };
            let p = parse_traceparent(cx.traceparent().as_bytes()).unwrap();
            prop_assert_eq!((p.trace_id, p.span_id, p.sampled), (cx.trace_id, cx.span_id, sampled));
        }
    }
}
