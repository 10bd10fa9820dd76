//! Metrics: lock-free handles for the request path, and the registry that names and renders them.
//!
//! Owns the handle types ([`Counter`], [`Gauge`], [`FloatGauge`], [`StatusCounters`],
//! [`Histogram`]), scrape-time functions ([`GaugeFn`], [`CounterFn`]), the [`Registry`] that
//! hands them out by name and labels, and the Prometheus text format (0.0.4) served at
//! `GET /metrics`. Metric and label names live in [`super::names`]; the admin API serves
//! [`Registry::render`] with [`CONTENT_TYPE`]; the steps that count things own their handles.
//!
//! The split between build time and request time is the point of this module:
//!
//! - **Build time** (startup, config reload): code asks the registry for a handle, e.g.
//!   `registry.counter(names::UPSTREAM_REQUESTS_TOTAL, names::UPSTREAM_REQUESTS_TOTAL_HELP,
//!   &[("service", "users"), ("endpoint", "127.0.0.1:9001"), ("outcome", "success")])`, and keeps
//!   it in the step or endpoint it builds. The same name and labels give back the same handle
//!   (the same atomics), so counts carry over a reload.
//! - **Request time**: `counter.inc()`, `status.inc(200)`, `histogram.observe(secs)`: one or two
//!   relaxed atomic adds, no lock, no allocation, no label string in sight.
//! - **Scrape time**: [`Registry::render`] takes the registry's lock just long enough to clone the
//!   handles, then reads the atomics and writes the text without it.
//! - **After a reload, and at each scrape of the admin API**: [`Registry::prune_unused`] drops
//!   the series whose handles only the registry still holds (routes and endpoints the new config
//!   removed, once the last request and worker holding the old snapshot let go), so they leave
//!   `/metrics`. A scrape-time function is held by nobody but the registry, so pruning never
//!   drops it; remove it with [`Registry::remove_fn`] or [`Registry::retain_fns`].
//!
//! Mistakes in names are programming errors, but none of them panics: an invalid metric or label
//! name, a name registered with two types, or a label the registry reserves (`le` for histograms,
//! `code` for status counters) is logged with `tracing::warn!` and answered with a working handle
//! that belongs to no registry and never shows in `/metrics`.
//!
//! The request path does not sum per-worker shards: one shared atomic per series, its cache line
//! padded, is what the handles use. Should contention on a hot series show up in measurements,
//! sharding can go behind the same `inc`/`get` API.

mod handles;
mod histogram;
mod render;
#[cfg(test)]
mod tests;

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use handles::{Counter, CounterFn, FloatCounterFn, FloatGauge, Gauge, GaugeFn, StatusCounters};
pub use histogram::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};

/// `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric series of the process, by family name and label set.
///
/// `Send + Sync`; share it as `Arc<Registry>`. Its one mutex is taken when a handle is made,
/// pruned or rendered, never on the request path, so a plain `std::sync::Mutex` is enough. A
/// poisoned lock is recovered rather than propagated: every change under it is a single map
/// insert or removal, so a panic elsewhere cannot have left it half-done.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<Arc<str>, Family>>,
}

struct Family {
    help: Arc<str>,
    kind: Kind,
    /// Keyed by the labels sorted by name, so the order callers pass them in does not matter and
    /// series render in a stable order.
    series: BTreeMap<LabelKey, Entry>,
}

/// Label pairs sorted by name.
type LabelKey = Box<[(Box<str>, Box<str>)]>;

struct Entry {
    /// `a="x",b="y"`, escaped, in the order of the first registration.
    rendered: Arc<str>,
    series: Series,
}

/// What a family's `# TYPE` says and which handles it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// [`Counter`] and [`CounterFn`] series may share a counter family.
    Counter,
    StatusCounters,
    /// [`Gauge`], [`FloatGauge`] and [`GaugeFn`] series may share a gauge family.
    Gauge,
    Histogram,
}

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    FloatGauge(FloatGauge),
    GaugeFn(GaugeFn),
    CounterFn(CounterFn),
    FloatCounterFn(FloatCounterFn),
    StatusCounters(StatusCounters),
    Histogram(Histogram),
}

impl Series {
    /// How many owners the series' state has, the registry included; `None` for a scrape-time
    /// function, which only the registry ever holds.
    fn holders(&self) -> Option<usize> {
        match self {
            Series::Counter(c) => Some(c.holders()),
            Series::Gauge(g) => Some(g.holders()),
            Series::FloatGauge(g) => Some(g.holders()),
            Series::StatusCounters(s) => Some(s.holders()),
            Series::Histogram(h) => Some(h.holders()),
            Series::GaugeFn(_) | Series::CounterFn(_) | Series::FloatCounterFn(_) => None,
        }
    }

    fn is_fn(&self) -> bool {
        matches!(
            self,
            Series::GaugeFn(_) | Series::CounterFn(_) | Series::FloatCounterFn(_)
        )
    }
}

/// The labels of a series, as [`Registry::retain_fns`] shows them.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a>(&'a [(Box<str>, Box<str>)]);

impl<'a> Labels<'a> {
    /// The value of label `name`, if the series has it.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
    }

    /// All pairs, sorted by label name.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created at zero on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        self.get_or_create(
            name,
            help,
            labels,
            Kind::Counter,
            || Series::Counter(Counter::new()),
            |s| match s {
                Series::Counter(c) => Some(c.clone()),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// The integer gauge `name{labels}`, created at zero on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        self.get_or_create(
            name,
            help,
            labels,
            Kind::Gauge,
            || Series::Gauge(Gauge::new()),
            |s| match s {
                Series::Gauge(g) => Some(g.clone()),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// The float gauge `name{labels}` (fractions, ratios), created at zero on first use.
    pub fn float_gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> FloatGauge {
        self.get_or_create(
            name,
            help,
            labels,
            Kind::Gauge,
            || Series::FloatGauge(FloatGauge::new()),
            |s| match s {
                Series::FloatGauge(g) => Some(g.clone()),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// Per-status-code counters for `name{labels}`; the `code` label is added when rendering, one
    /// line per code seen, so `labels` must not contain `code`.
    pub fn status_counters(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> StatusCounters {
        self.get_or_create(
            name,
            help,
            labels,
            Kind::StatusCounters,
            || Series::StatusCounters(StatusCounters::new()),
            |s| match s {
                Series::StatusCounters(c) => Some(c.clone()),
                _ => None,
            },
        )
        .unwrap_or_default()
    }

    /// The histogram `name{labels}`, created with `upper_bounds` (seconds; see [`Histogram::new`])
    /// on first use. An existing histogram keeps the bounds it was created with.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        upper_bounds: &[f64],
    ) -> Histogram {
        self.get_or_create(
            name,
            help,
            labels,
            Kind::Histogram,
            || Series::Histogram(Histogram::new(upper_bounds)),
            |s| match s {
                Series::Histogram(h) => Some(h.clone()),
                _ => None,
            },
        )
        .unwrap_or_else(|| Histogram::new(upper_bounds))
    }

    /// Registers `f` as the gauge `name{labels}`, read at every scrape (in-flight counts, health).
    /// Replaces an earlier function with the same name and labels; refused (with a warning) where
    /// a [`Gauge`] or [`FloatGauge`] handle already has them, since its holders would go on
    /// updating a series nobody renders.
    ///
    /// The registry holds `f` until [`remove_fn`](Self::remove_fn) or
    /// [`retain_fns`](Self::retain_fns) drops it; [`prune_unused`](Self::prune_unused) leaves it
    /// alone. If `f` captures an `Arc` to live state, that state stays alive as long.
    pub fn gauge_fn(&self, name: &str, help: &str, labels: &[(&str, &str)], f: GaugeFn) {
        self.register_fn(name, help, labels, Kind::Gauge, Series::GaugeFn(f));
    }

    /// Registers `f` as the counter `name{labels}`, read at every scrape: for a count some other
    /// part keeps in its own atomic (the access log's dropped records). `f` must never decrease.
    /// Same rules as [`gauge_fn`](Self::gauge_fn).
    pub fn counter_fn(&self, name: &str, help: &str, labels: &[(&str, &str)], f: CounterFn) {
        self.register_fn(name, help, labels, Kind::Counter, Series::CounterFn(f));
    }

    /// [`counter_fn`](Self::counter_fn) in fractional units.
    pub fn float_counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        f: FloatCounterFn,
    ) {
        self.register_fn(name, help, labels, Kind::Counter, Series::FloatCounterFn(f));
    }

    /// Drops the scrape-time function (`gauge_fn` or `counter_fn`) `name{labels}`; true if there
    /// was one. Handles are never removed this way: [`prune_unused`](Self::prune_unused) does that.
    pub fn remove_fn(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let key = label_key(labels);
        let mut families = self.lock();
        let Some(family) = families.get_mut(name) else {
            return false;
        };
        let removed = match family.series.get(&key) {
            Some(entry) if entry.series.is_fn() => family.series.remove(&key).is_some(),
            _ => false,
        };
        if family.series.is_empty() {
            families.remove(name);
        }
        removed
    }

    /// Keeps the scrape-time functions for which `keep(name, labels)` is true and drops the rest;
    /// handles are left alone. After a reload, for instance:
    ///
    /// ```ignore
    /// registry.retain_fns(|name, labels| match (labels.get("service"), labels.get("endpoint")) {
    ///     (Some(service), Some(endpoint)) => still_configured(service, endpoint),
    ///     _ => true,
    /// });
    /// ```
    ///
    /// Runs under the registry's lock: `keep` must not call the registry.
    pub fn retain_fns(&self, mut keep: impl FnMut(&str, Labels<'_>) -> bool) {
        let mut families = self.lock();
        families.retain(|name, family| {
            family
                .series
                .retain(|key, entry| !entry.series.is_fn() || keep(name, Labels(key)));
            !family.series.is_empty()
        });
    }

    /// Drops every series whose handles nobody holds but the registry (the routes, endpoints and
    /// listeners a reload removed), and every family left empty; returns how many series went.
    /// A dropped series that is asked for again starts from zero, which Prometheus reads as a
    /// counter reset.
    ///
    /// Call it after the old snapshot is gone: a series still held by requests in flight on the
    /// old snapshot is kept, and dropped by a later call. The check is race-free: under the lock,
    /// a handle only the registry holds cannot be cloned by anyone else.
    pub fn prune_unused(&self) -> usize {
        let mut pruned = 0;
        let mut families = self.lock();
        families.retain(|_, family| {
            family.series.retain(|_, entry| {
                let keep = entry.series.holders().is_none_or(|n| n > 1);
                pruned += usize::from(!keep);
                keep
            });
            !family.series.is_empty()
        });
        pruned
    }

    /// How many series (label sets) the registry holds.
    pub fn series_count(&self) -> usize {
        self.lock().values().map(|f| f.series.len()).sum()
    }

    /// Every family in the Prometheus text format 0.0.4 (serve with [`CONTENT_TYPE`]): families
    /// sorted by name, `# HELP` and `# TYPE` once each, series sorted by their labels.
    pub fn render(&self) -> String {
        let snapshot: Vec<render::FamilySnapshot> = self
            .lock()
            .iter()
            .map(|(name, family)| render::FamilySnapshot {
                name: name.clone(),
                help: family.help.clone(),
                kind: family.kind,
                series: family
                    .series
                    .values()
                    .map(|e| (e.rendered.clone(), e.series.clone()))
                    .collect(),
            })
            .collect();
        // The lock is released here: gauge functions run and the text is built without it.
        let mut out = String::with_capacity(4096);
        render::render(&snapshot, &mut out);
        out
    }

    fn register_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        series: Series,
    ) {
        if let Err(problem) = check(name, labels, None) {
            tracing::warn!(metric = name, "metric not registered: {problem}");
            return;
        }
        let mut families = self.lock();
        let family = family_entry(&mut families, name, help, kind);
        if family.kind != kind {
            warn_kind(name, family.kind, kind);
            return;
        }
        match family.series.entry(label_key(labels)) {
            MapEntry::Occupied(mut e) if e.get().series.is_fn() => e.get_mut().series = series,
            MapEntry::Occupied(_) => tracing::warn!(
                metric = name,
                "function not registered: a handle already has these labels"
            ),
            MapEntry::Vacant(e) => {
                e.insert(Entry {
                    rendered: render::label_pairs(labels).into(),
                    series,
                });
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Family>> {
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The series `name{labels}`, made by `make` if new; `None` (after a warning) if the name or
    /// labels are invalid or the family or series holds another kind.
    fn get_or_create<T>(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        kind: Kind,
        make: impl FnOnce() -> Series,
        pick: impl Fn(&Series) -> Option<T>,
    ) -> Option<T> {
        let reserved = match kind {
            Kind::Histogram => Some("le"),
            Kind::StatusCounters => Some("code"),
            Kind::Counter | Kind::Gauge => None,
        };
        if let Err(problem) = check(name, labels, reserved) {
            tracing::warn!(metric = name, "metric not registered: {problem}");
            return None;
        }
        let mut families = self.lock();
        let family = family_entry(&mut families, name, help, kind);
        if family.kind != kind {
            warn_kind(name, family.kind, kind);
            return None;
        }
        match family.series.entry(label_key(labels)) {
            MapEntry::Occupied(e) => {
                let found = pick(&e.get().series);
                if found.is_none() {
                    tracing::warn!(
                        metric = name,
                        "metric not registered: another kind of series has these labels"
                    );
                }
                found
            }
            MapEntry::Vacant(e) => {
                let series = make();
                let handle = pick(&series);
                e.insert(Entry {
                    rendered: render::label_pairs(labels).into(),
                    series,
                });
                handle
            }
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let families = self.lock();
        f.debug_struct("Registry")
            .field("families", &families.len())
            .field(
                "series",
                &families.values().map(|f| f.series.len()).sum::<usize>(),
            )
            .finish()
    }
}

/// The family `name`, created empty with `help` and `kind` if new. The first registration's help
/// text wins.
fn family_entry<'m>(
    families: &'m mut BTreeMap<Arc<str>, Family>,
    name: &str,
    help: &str,
    kind: Kind,
) -> &'m mut Family {
    // Build time only, so the key's allocation on every call does not matter.
    families.entry(Arc::from(name)).or_insert_with(|| Family {
        help: Arc::from(help),
        kind,
        series: BTreeMap::new(),
    })
}

fn warn_kind(name: &str, has: Kind, asked: Kind) {
    tracing::warn!(
        metric = name,
        "metric not registered: the family is a {has:?}, not a {asked:?}"
    );
}

fn label_key(labels: &[(&str, &str)]) -> LabelKey {
    let mut key: Vec<(Box<str>, Box<str>)> = labels
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    key.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    key.into_boxed_slice()
}

/// Checks the metric name, label names (valid, not `__`-prefixed, no duplicates) and `reserved`.
fn check(name: &str, labels: &[(&str, &str)], reserved: Option<&str>) -> Result<(), String> {
    if !is_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    for (i, (k, _)) in labels.iter().enumerate() {
        if !is_label_name(k) || k.starts_with("__") {
            return Err(format!("invalid label name {k:?}"));
        }
        if Some(*k) == reserved {
            return Err(format!("label {k:?} is added by the registry"));
        }
        if labels[..i].iter().any(|(prev, _)| prev == k) {
            return Err(format!("label {k:?} given twice"));
        }
    }
    Ok(())
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
