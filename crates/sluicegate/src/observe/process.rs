//! The process's own metrics under the names every Prometheus client library exports
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`), so that existing dashboards and alerts work
//! unchanged, and `sluicegate_build_info{version}`.
//!
//! Read from `/proc/self` at scrape time (Linux; elsewhere the series read 0). Each read is a
//! small file, well under a millisecond, and only on a scrape.

use std::sync::Arc;

use super::metrics::Registry;
use super::names;

/// `/proc` counts CPU time in ticks of `USER_HZ`, which Linux fixes at 100 for this interface.
const TICKS_PER_SECOND: f64 = 100.0;

/// Registers the process metrics and the build info in `registry`.
pub fn register(registry: &Registry) {
    registry.gauge_fn(
        names::BUILD_INFO,
        names::BUILD_INFO_HELP,
        &[(names::label::VERSION, env!("CARGO_PKG_VERSION"))],
        Arc::new(|| 1),
    );
    registry.float_counter_fn(
        names::PROCESS_CPU_SECONDS_TOTAL,
        names::PROCESS_CPU_SECONDS_TOTAL_HELP,
        &[],
        Arc::new(|| {
            read("/proc/self/stat")
                .and_then(|s| cpu_ticks(&s))
                .map_or(0.0, |ticks| ticks as f64 / TICKS_PER_SECOND)
        }),
    );
    registry.gauge_fn(
        names::PROCESS_RESIDENT_MEMORY_BYTES,
        names::PROCESS_RESIDENT_MEMORY_BYTES_HELP,
        &[],
        Arc::new(|| {
            read("/proc/self/status")
                .and_then(|s| resident_bytes(&s))
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX))
        }),
    );
    registry.gauge_fn(
        names::PROCESS_OPEN_FDS,
        names::PROCESS_OPEN_FDS_HELP,
        &[],
        Arc::new(|| {
            std::fs::read_dir("/proc/self/fd")
                .map_or(0, |d| i64::try_from(d.count()).unwrap_or(i64::MAX))
        }),
    );
    registry.gauge_fn(
        names::PROCESS_MAX_FDS,
        names::PROCESS_MAX_FDS_HELP,
        &[],
        Arc::new(|| {
            read("/proc/self/limits")
                .and_then(|s| max_fds(&s))
                .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX))
        }),
    );
    // The start time does not change: read once.
    let started = read("/proc/self/stat")
        .zip(read("/proc/stat"))
        .and_then(|(stat, system)| start_time(&stat, &system))
        .unwrap_or(0);
    registry.gauge_fn(
        names::PROCESS_START_TIME_SECONDS,
        names::PROCESS_START_TIME_SECONDS_HELP,
        &[],
        Arc::new(move || i64::try_from(started).unwrap_or(i64::MAX)),
    );
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses, so the split is at the last `)`): field 3 (`state`) is the first.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// utime + stime (fields 14 and 15), in ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Seconds since the Unix epoch when the process started: boot time (`btime` of `/proc/stat`)
/// plus `starttime` (field 22 of `/proc/self/stat`, ticks since boot).
fn start_time(stat: &str, system: &str) -> Option<u64> {
    let ticks: u64 = stat_fields(stat)?.get(22 - 3)?.parse().ok()?;
    let boot: u64 = system
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + ticks / TICKS_PER_SECOND as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read_as_linux_writes_them() {
        // A command name with a space and a parenthesis.
        let stat = "4242 (sluice gate)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 4 0 123456 2000000 3000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(
            start_time(stat, "cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_001_234)
        );
        let status = "Name:\tsluicegate\nVmRSS:\t   51200 kB\nThreads:\t4\n";
        assert_eq!(resident_bytes(status), Some(51200 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_reads_as_a_live_one() {
        let stat = read("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&stat).is_some());
        assert!(resident_bytes(&read("/proc/self/status").unwrap()).unwrap() > 1024 * 1024);
        assert!(max_fds(&read("/proc/self/limits").unwrap()).unwrap() > 0);
        let started = start_time(&stat, &read("/proc/stat").unwrap()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            started <= now + 1 && started > now - 86_400 * 365,
            "{started} {now}"
        );
    }
}
