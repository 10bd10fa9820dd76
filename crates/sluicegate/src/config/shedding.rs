//! `[load_shedding]` and a route's `priority`, as read from the file.

use super::model::{LoadSheddingConfig, Priority};
use super::raw::{Reader, Table};

/// `[load_shedding]` (SPEC 2.5).
pub fn load_shedding(r: &mut Reader<'_>, t: &Table<'_, '_>) -> LoadSheddingConfig {
    r.check_keys(
        t,
        &[
            "max_in_flight",
            "target_queue_delay",
            "cpu_threshold",
            "memory_threshold",
        ],
        &[],
    );
    let defaults = LoadSheddingConfig::default();
    let target_queue_delay = match r.duration(t, "target_queue_delay") {
        Some(d) if d.is_zero() || d > std::time::Duration::from_secs(60) => {
            let span = t
                .get("target_queue_delay")
                .map_or(t.span.clone(), |v| v.span());
            r.report(
                span,
                format!(
                    "{}: expected a duration above 0 and at most 60s (how long a request may wait for admission)",
                    t.key_path("target_queue_delay")
                ),
            );
            defaults.target_queue_delay
        }
        Some(d) => d,
        None => defaults.target_queue_delay,
    };
    LoadSheddingConfig {
        max_in_flight: r
            .integer(t, "max_in_flight", 0, 10_000_000)
            .map_or(defaults.max_in_flight, |(n, _)| n as usize),
        target_queue_delay,
        cpu_threshold: r
            .number(t, "cpu_threshold", 0.0, false, 1.0)
            .unwrap_or(defaults.cpu_threshold),
        memory_threshold: r
            .number(t, "memory_threshold", 0.0, false, 1.0)
            .unwrap_or(defaults.memory_threshold),
    }
}

/// A route's `priority`: "critical", "normal" (the default) or "low".
pub fn priority(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Priority {
    let Some((text, span)) = r.string(t, "priority") else {
        return Priority::default();
    };
    Priority::parse(text.as_bytes()).unwrap_or_else(|| {
        r.report(
            span,
            format!(
                "{}: unknown priority \"{text}\"; expected \"critical\", \"normal\" or \"low\"",
                t.key_path("priority")
            ),
        );
        Priority::default()
    })
}
