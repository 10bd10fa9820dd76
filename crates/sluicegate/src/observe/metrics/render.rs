//! The Prometheus text exposition format, version 0.0.4: escaping, numbers and sample lines.
//!
//! Runs at scrape time only, on a snapshot the registry took under its lock, so the lock is not
//! held while scrape-time functions run or the text is built.

use std::fmt::Write;
use std::sync::Arc;

use super::histogram::write_decimal;
use super::{Kind, Series};

/// One family as the registry saw it when the scrape began.
pub(super) struct FamilySnapshot {
    pub(super) name: Arc<str>,
    pub(super) help: Arc<str>,
    pub(super) kind: Kind,
    /// Rendered labels (`a="x",b="y"`, without braces) and the series, in a stable order.
    pub(super) series: Vec<(Arc<str>, Series)>,
}

pub(super) fn render(families: &[FamilySnapshot], out: &mut String) {
    for family in families {
        let name = &*family.name;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_help(out, &family.help);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(match family.kind {
            Kind::Counter | Kind::StatusCounters => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        });
        out.push('\n');
        for (labels, series) in &family.series {
            series_lines(out, name, labels, series);
        }
    }
}

fn series_lines(out: &mut String, name: &str, labels: &str, series: &Series) {
    // Writing to a String cannot fail; the `let _` below discard an always-Ok result.
    match series {
        Series::Counter(c) => {
            sample_start(out, name, "", labels, None);
            let _ = writeln!(out, " {}", c.get());
        }
        Series::Gauge(g) => {
            sample_start(out, name, "", labels, None);
            let _ = writeln!(out, " {}", g.get());
        }
        Series::GaugeFn(f) => {
            sample_start(out, name, "", labels, None);
            let _ = writeln!(out, " {}", f());
        }
        Series::CounterFn(f) => {
            sample_start(out, name, "", labels, None);
            let _ = writeln!(out, " {}", f());
        }
        Series::FloatGauge(g) => {
            sample_start(out, name, "", labels, None);
            out.push(' ');
            write_float(out, g.get());
            out.push('\n');
        }
        Series::FloatCounterFn(f) => {
            sample_start(out, name, "", labels, None);
            out.push(' ');
            write_float(out, f());
            out.push('\n');
        }
        Series::StatusCounters(s) => {
            let mut code_text = String::new();
            s.for_each_nonzero(|code, n| {
                code_text.clear();
                match code {
                    Some(code) => {
                        let _ = write!(code_text, "{code}");
                    }
                    None => code_text.push_str("other"),
                }
                sample_start(out, name, "", labels, Some(("code", &code_text)));
                let _ = writeln!(out, " {n}");
            });
        }
        Series::Histogram(h) => {
            let snap = h.snapshot();
            let mut le = String::new();
            for (bound, count) in snap.upper_bounds_nanos.iter().zip(&snap.cumulative) {
                le.clear();
                write_decimal(&mut le, *bound, 9);
                sample_start(out, name, "_bucket", labels, Some(("le", &le)));
                let _ = writeln!(out, " {count}");
            }
            sample_start(out, name, "_bucket", labels, Some(("le", "+Inf")));
            let _ = writeln!(out, " {}", snap.count());
            sample_start(out, name, "_sum", labels, None);
            out.push(' ');
            write_decimal(out, snap.sum_micros, 6);
            out.push('\n');
            sample_start(out, name, "_count", labels, None);
            let _ = writeln!(out, " {}", snap.count());
        }
    }
}

/// `name_suffix{labels,extra="v"}`, or without braces when there are no labels at all. `extra`'s
/// value must need no escaping (it is a status code or a bucket bound).
fn sample_start(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &str,
    extra: Option<(&str, &str)>,
) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    out.push_str(labels);
    if let Some((k, v)) = extra {
        if !labels.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(v);
        out.push('"');
    }
    out.push('}');
}

/// `a="x",b="y"` in the caller's order, values escaped. Done once, when a series is created.
pub(super) fn label_pairs(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(&mut out, v);
        out.push('"');
    }
    out
}

/// Label values escape backslash, double quote and line feed.
pub(super) fn escape_label_value(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(ch),
        }
    }
}

/// `# HELP` text escapes backslash and line feed (a double quote stays as it is).
pub(super) fn escape_help(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            _ => out.push(ch),
        }
    }
}

/// A float as Prometheus parses it: `+Inf`, `-Inf`, `NaN`, else the shortest decimal that reads
/// back as the same value, with an exponent for very large or small magnitudes.
pub(super) fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v != 0.0 && !(1e-6..1e16).contains(&v.abs()) {
        let _ = write!(out, "{v:e}");
    } else {
        let _ = write!(out, "{v}");
    }
}
