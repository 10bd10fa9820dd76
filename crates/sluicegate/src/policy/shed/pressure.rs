//! CPU and memory pressure for load shedding, read every 500 ms by a thread of its own. CPU: the
//! process's cgroup v2 `usage_usec` (`cpu.stat`) against its quota (`cpu.max`), or against the
//! machine's CPUs when it sets none; without a cgroup v2, the machine's busy time in
//! `/proc/stat`. Memory: the cgroup's working set against `memory.max` when it sets one, else
//! the machine's `/proc/meminfo`. That is what a container is limited by. The request path reads
//! one atomic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::ShedReason;
use crate::config::Priority;

const INTERVAL: Duration = Duration::from_millis(500);
const CPU_HIGH: u8 = 1;
const MEMORY_HIGH: u8 = 2;

/// The shares in use last read (0.0–1.0), for `/api/v1/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings {
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
}

#[derive(Default)]
pub struct Pressure {
    /// `CPU_HIGH` | `MEMORY_HIGH`.
    high: AtomicU8,
    cpu_threshold: AtomicU64,
    memory_threshold: AtomicU64,
    readings: Mutex<Readings>,
    /// The sampling thread, once started.
    started: Mutex<bool>,
}

impl Pressure {
    /// Sets the thresholds (1.0 = never shed for that resource) and starts sampling if either
    /// can be crossed. Memory is read at once, so a config that starts under memory pressure
    /// sheds from its first request.
    pub fn configure(self: &Arc<Self>, cpu: f64, memory: f64) {
        self.cpu_threshold.store(cpu.to_bits(), Ordering::Relaxed);
        self.memory_threshold
            .store(memory.to_bits(), Ordering::Relaxed);
        if cpu >= 1.0 && memory >= 1.0 {
            self.high.store(0, Ordering::Relaxed);
            return;
        }
        let source = Source::find();
        self.update(self.readings().cpu, source.memory());
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if !*started {
            *started = true;
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("sluicegate-pressure".into())
                .spawn(move || sample(weak, source));
            if let Err(e) = spawned {
                *started = false;
                tracing::warn!(error = %e, "load shedding: cannot start the CPU and memory sampler; thresholds are not applied");
            }
        }
    }

    /// Why a request of `class` is shed now, if the CPU or memory says so.
    pub fn sheds(&self, class: Priority) -> Option<ShedReason> {
        let high = self.high.load(Ordering::Relaxed);
        if high == 0 {
            return None;
        }
        if high & MEMORY_HIGH != 0 && class != Priority::Critical {
            return Some(ShedReason::Memory);
        }
        if high & CPU_HIGH != 0 && class == Priority::Low {
            return Some(ShedReason::Cpu);
        }
        None
    }

    pub fn readings(&self) -> Readings {
        *self.readings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, cpu: Option<f64>, memory: Option<f64>) {
        let over = |reading: Option<f64>, threshold: &AtomicU64| {
            reading.is_some_and(|r| r > f64::from_bits(threshold.load(Ordering::Relaxed)))
        };
        let mut readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        // A reading that cannot be taken any more is unknown, not its last value.
        *readings = Readings { cpu, memory };
        let mut high = 0;
        if over(readings.cpu, &self.cpu_threshold) {
            high |= CPU_HIGH;
        }
        if over(readings.memory, &self.memory_threshold) {
            high |= MEMORY_HIGH;
        }
        let before = self.high.swap(high, Ordering::Relaxed);
        if before != high {
            tracing::warn!(
                cpu = readings.cpu.unwrap_or(0.0),
                memory = readings.memory.unwrap_or(0.0),
                shedding_low = high & CPU_HIGH != 0,
                shedding_all_but_critical = high & MEMORY_HIGH != 0,
                "load shedding: resource pressure changed"
            );
        }
    }
}

/// The sampler's loop: ends when the gateway's shedder is gone.
fn sample(pressure: Weak<Pressure>, source: Source) {
    let mut last = source.cpu_time().map(|t| (Instant::now(), t));
    loop {
        std::thread::sleep(INTERVAL);
        let Some(pressure) = pressure.upgrade() else {
            return;
        };
        let now = source.cpu_time().map(|t| (Instant::now(), t));
        let cpu = match (last, now) {
            (Some((then, busy_then)), Some((at, busy_now))) => {
                let wall = at.duration_since(then).as_secs_f64() * source.cpus();
                (wall > 0.0).then(|| ((busy_now - busy_then).max(0.0) / wall).clamp(0.0, 1.0))
            }
            _ => None,
        };
        last = now;
        pressure.update(cpu, source.memory());
    }
}

/// Where the readings come from.
struct Source {
    /// The process's cgroup v2 directory, when there is one.
    cgroup: Option<PathBuf>,
}

impl Source {
    fn find() -> Source {
        // In a container with a cgroup namespace the process's own cgroup is the root of what
        // it sees; without one, /proc/self/cgroup names a host path that may not be mounted
        // here, and the mount's root is then the container's cgroup.
        let named = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| cgroup_dir(&text));
        let cgroup = named
            .into_iter()
            .chain([PathBuf::from("/sys/fs/cgroup")])
            .find(|dir| dir.join("cpu.stat").exists());
        Source { cgroup }
    }

    /// CPUs the busy time is measured against: the cgroup's quota, else the machine's.
    fn cpus(&self) -> f64 {
        let quota = self
            .cgroup
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.join("cpu.max")).ok())
            .and_then(|text| cpu_quota(&text));
        quota
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64))
    }

    /// CPU time used, in seconds: the cgroup's, else the whole machine's busy time.
    fn cpu_time(&self) -> Option<f64> {
        if let Some(dir) = &self.cgroup {
            if let Some(us) = read(&dir.join("cpu.stat")).and_then(|t| usage_usec(&t)) {
                return Some(us as f64 / 1e6);
            }
        }
        read(Path::new("/proc/stat")).and_then(|t| proc_stat_busy(&t))
    }

    /// The share of memory in use: the cgroup's working set (`memory.current` less the page
    /// cache it could drop, `inactive_file`, as the kubelet counts it) against its `memory.max`
    /// when it sets one, else the machine's (`MemAvailable` counts as free).
    fn memory(&self) -> Option<f64> {
        if let Some(dir) = &self.cgroup {
            let max = read(&dir.join("memory.max")).and_then(|t| t.trim().parse::<u64>().ok());
            let current =
                read(&dir.join("memory.current")).and_then(|t| t.trim().parse::<u64>().ok());
            let inactive = read(&dir.join("memory.stat"))
                .and_then(|t| stat_field(&t, "inactive_file"))
                .unwrap_or(0);
            if let (Some(max), Some(current)) = (max, current) {
                if max > 0 {
                    let working = current.saturating_sub(inactive);
                    return Some((working as f64 / max as f64).min(1.0));
                }
            }
        }
        read(Path::new("/proc/meminfo")).and_then(|t| meminfo_used(&t))
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The cgroup v2 directory from `/proc/self/cgroup`'s `0::/path` line.
fn cgroup_dir(text: &str) -> Option<PathBuf> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

/// `cpu.max`: "QUOTA PERIOD" in CPUs, or `None` for "max" (no limit).
fn cpu_quota(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota: f64 = words.next()?.parse().ok()?;
    let period: f64 = words.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

fn usage_usec(cpu_stat: &str) -> Option<u64> {
    stat_field(cpu_stat, "usage_usec")
}

/// A `NAME VALUE` line of a cgroup `*.stat` file.
fn stat_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Seconds the machine's CPUs were busy (all but idle and iowait), from `/proc/stat`'s first
/// line (in USER_HZ ticks: 100 per second on Linux).
fn proc_stat_busy(text: &str) -> Option<f64> {
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if ticks.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks[3] + ticks[4];
    Some(total.saturating_sub(idle) as f64 / 100.0)
}

fn meminfo_used(text: &str) -> Option<f64> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0).then(|| total.saturating_sub(available) as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_and_proc_files() {
        assert_eq!(
            cgroup_dir("0::/system.slice/gw.service\n"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/gw.service"))
        );
        assert_eq!(cgroup_dir("1:name=systemd:/\n"), None);
        assert_eq!(cpu_quota("max 100000\n"), None);
        assert_eq!(cpu_quota("150000 100000\n"), Some(1.5));
        assert_eq!(
            usage_usec("usage_usec 2500000\nuser_usec 1\n"),
            Some(2_500_000)
        );
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(proc_stat_busy(stat), Some(1.5));
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(meminfo_used(meminfo), Some(0.75));
    }

    #[test]
    fn memory_pressure_sheds_all_but_critical_and_cpu_pressure_sheds_low() {
        let p = Pressure::default();
        p.cpu_threshold.store(0.8f64.to_bits(), Ordering::Relaxed);
        p.memory_threshold
            .store(0.9f64.to_bits(), Ordering::Relaxed);
        p.update(Some(0.5), Some(0.5));
        assert!(Priority::ALL.iter().all(|c| p.sheds(*c).is_none()));
        p.update(Some(0.85), None);
        assert_eq!(p.sheds(Priority::Low), Some(ShedReason::Cpu));
        assert_eq!(p.sheds(Priority::Normal), None);
        p.update(Some(0.1), Some(0.95));
        assert_eq!(p.sheds(Priority::Low), Some(ShedReason::Memory));
        assert_eq!(p.sheds(Priority::Normal), Some(ShedReason::Memory));
        assert_eq!(p.sheds(Priority::Critical), None);
    }
}
