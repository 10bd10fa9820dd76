//! Load shedding (`[load_shedding]`, SPEC 2.5): the gateway admits at most a limit of requests
//! to the upstreams at once, serves the higher classes first when more arrive, and refuses at
//! once — 503 `overloaded` with `Retry-After` — what it could not serve within
//! `target_queue_delay`, lowest class first.
//!
//! A request counts against the limit from its admission until its upstream's response head
//! arrives (or the exchange ends without one): that is the time an upstream spends on it, and a
//! long download or a server-sent event stream does not hold a place for its whole length.
//!
//! Classes are strict: a request waits only while nobody of a higher class waits. One that must
//! wait refuses, at once, the waiters of lower classes (they would be served after it only),
//! and a request that arrives while a higher class waits is refused at once. So under overload
//! the lower classes get 503 in about the time it takes to say so, and the higher ones every
//! place that frees.
//!
//! The limit is `max_in_flight`, or (0) one adapted to the upstreams' latency (`adaptive.rs`).
//! CPU and memory pressure (`pressure.rs`) shed `low`, or everything but `critical`, before the
//! limit is looked at.
//!
//! Admission is one atomic update while there is room and nobody waits; the queue's lock is
//! taken only when a request must wait or a finished one hands its place to a waiter.

mod adaptive;
mod pressure;
mod queue;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use crate::config::{LoadSheddingConfig, Priority};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

use adaptive::Latency;
use pressure::Pressure;
use queue::{Grant, Queue};

/// The step's name in the access log (`"load_shed": "admitted"`).
pub const STEP: &str = "load_shed";

/// Why a request was shed, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The CPU is busier than `cpu_threshold` (`low` requests).
    Cpu,
    /// Memory is fuller than `memory_threshold` (all but `critical`).
    Memory,
    /// The queue holds what can be served within the target.
    QueueFull,
    /// Requests of a higher class were waiting for a place already.
    HigherClassWaiting,
    /// A request of a higher class had to wait: lower classes waiting were refused.
    Displaced,
    /// The upstreams slowed while it waited: not served within twice the longer of the target
    /// and the typical latency.
    WaitedTooLong,
}

impl ShedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Cpu => "shed_cpu",
            ShedReason::Memory => "shed_memory",
            ShedReason::QueueFull => "shed_queue_full",
            ShedReason::HigherClassWaiting => "shed_higher_class_waiting",
            ShedReason::Displaced => "shed_displaced",
            ShedReason::WaitedTooLong => "shed_wait",
        }
    }
}

/// What admission decided.
pub enum Admission {
    /// Admitted at once.
    Admitted(Permit),
    /// Admitted after waiting for a place.
    Queued(Permit),
    Shed(ShedReason),
}

/// The gateway's one admission controller, shared by every worker and kept across reloads (the
/// requests in flight under the previous config still count).
pub struct Shedder {
    /// Admitted requests whose upstream has not answered yet.
    in_flight: AtomicUsize,
    /// Requests admitted at once, at most.
    limit: AtomicUsize,
    /// Requests in the queue; read without the lock to keep the way in lock-free.
    waiting: AtomicUsize,
    queue: Mutex<Queue>,
    /// `max_in_flight = 0`.
    adaptive: AtomicBool,
    target: AtomicU64,
    latency: Latency,
    pressure: Arc<Pressure>,
    /// `sluicegate_load_shed_total` by class, while a config has `[load_shedding]`.
    shed: ArcSwapOption<[Counter; 3]>,
    /// Held while the limit changes hands between a reload and the adaptive limit, so that an
    /// adaptive step computed before a reload never overwrites the fixed limit it set.
    mode: Mutex<()>,
}

impl Default for Shedder {
    fn default() -> Self {
        Shedder {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(adaptive::INITIAL_LIMIT),
            waiting: AtomicUsize::new(0),
            queue: Mutex::new(Queue::default()),
            adaptive: AtomicBool::new(true),
            target: AtomicU64::new(50_000),
            latency: Latency::new(Instant::now()),
            pressure: Arc::new(Pressure::default()),
            shed: ArcSwapOption::empty(),
            mode: Mutex::new(()),
        }
    }
}

impl Shedder {
    /// Applies a config's `[load_shedding]` (at start and at every reload that has one) and
    /// registers the metrics.
    pub fn configure(self: &Arc<Self>, config: &LoadSheddingConfig, metrics: &metrics::Registry) {
        let adaptive = config.max_in_flight == 0;
        {
            let _mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
            let was_adaptive = self.adaptive.swap(adaptive, Ordering::AcqRel);
            if !adaptive {
                self.limit.store(config.max_in_flight, Ordering::SeqCst);
            } else if !was_adaptive {
                self.limit.store(adaptive::INITIAL_LIMIT, Ordering::SeqCst);
                self.latency.reset(Instant::now());
            }
        }
        self.target.store(
            u64::try_from(config.target_queue_delay.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.pressure
            .configure(config.cpu_threshold, config.memory_threshold);
        self.shed.store(Some(Arc::new(Priority::ALL.map(|p| {
            metrics.counter(
                names::LOAD_SHED_TOTAL,
                names::LOAD_SHED_TOTAL_HELP,
                &[(names::label::PRIORITY, p.as_str())],
            )
        }))));
        let held = Arc::downgrade(self);
        metrics.gauge_fn(
            names::LOAD_SHEDDING_IN_FLIGHT,
            names::LOAD_SHEDDING_IN_FLIGHT_HELP,
            &[],
            Arc::new(move || held.upgrade().map_or(0, |s| gauge(s.in_flight()))),
        );
        let held = Arc::downgrade(self);
        metrics.gauge_fn(
            names::LOAD_SHEDDING_LIMIT,
            names::LOAD_SHEDDING_LIMIT_HELP,
            &[],
            Arc::new(move || held.upgrade().map_or(0, |s| gauge(s.limit()))),
        );
        for class in Priority::ALL {
            let held = Arc::downgrade(self);
            metrics.gauge_fn(
                names::LOAD_SHEDDING_QUEUED,
                names::LOAD_SHEDDING_QUEUED_HELP,
                &[(names::label::PRIORITY, class.as_str())],
                Arc::new(move || held.upgrade().map_or(0, |s| gauge(s.queued(class)))),
            );
        }
        // More requests may be admitted now (a higher fixed limit).
        self.grant_waiters();
    }

    /// Forgets the metrics of a config without `[load_shedding]`, and admits whoever still
    /// waits (the new config admits everything).
    pub fn unconfigure(&self, metrics: &metrics::Registry) {
        metrics.remove_fn(names::LOAD_SHEDDING_IN_FLIGHT, &[]);
        metrics.remove_fn(names::LOAD_SHEDDING_LIMIT, &[]);
        for class in Priority::ALL {
            metrics.remove_fn(
                names::LOAD_SHEDDING_QUEUED,
                &[(names::label::PRIORITY, class.as_str())],
            );
        }
        self.shed.store(None);
        self.pressure.configure(1.0, 1.0);
        let mut queue = self.lock();
        while let Some(waiter) = queue.pop_highest() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if waiter.grant.send(Grant::Admitted).is_err() {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn queued(&self, class: Priority) -> usize {
        self.lock().len_of(class)
    }

    /// The CPU and memory shares last read (for `/api/v1/status`), once a reading exists.
    pub fn readings(&self) -> pressure::Readings {
        self.pressure.readings()
    }

    fn target(&self) -> Duration {
        Duration::from_micros(self.target.load(Ordering::Relaxed))
    }

    /// Why a request of `class` is refused now because of CPU or memory pressure, if it is
    /// (counted as shed).
    pub fn under_pressure(&self, class: Priority) -> Option<ShedReason> {
        let reason = self.pressure.sheds(class)?;
        self.count_shed(class);
        Some(reason)
    }

    /// Admits a request of `class`, at once or after a short wait (`Latency::max_wait`, and at
    /// most half the time left before `deadline`, so an admitted request still has time to be
    /// served), or sheds it.
    pub async fn admit(
        self: &Arc<Self>,
        class: Priority,
        deadline: Option<tokio::time::Instant>,
    ) -> Admission {
        if self.waiting.load(Ordering::SeqCst) == 0 && self.try_take() {
            return Admission::Admitted(self.permit());
        }
        self.latency.saturated();
        self.wait(class, deadline).await
    }

    /// Takes a place if the limit leaves one.
    fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            shedder: Arc::clone(self),
            admitted: Instant::now(),
        }
    }

    async fn wait(
        self: &Arc<Self>,
        class: Priority,
        deadline: Option<tokio::time::Instant>,
    ) -> Admission {
        let (id, rx) = {
            let mut queue = self.lock();
            // Announced before the second look at the count, which a finishing request lowers
            // before it looks at `waiting`: one of the two sees the other.
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if !queue.any_at_or_above(class) && self.try_take() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return Admission::Admitted(self.permit());
            }
            // Requests of a higher class wait already: there is no place to spare for this one.
            if queue.any_above(class) {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                drop(queue);
                self.count_shed(class);
                return Admission::Shed(ShedReason::HigherClassWaiting);
            }
            // This one waits: who waits with a lower class would be served after it only, so
            // is refused now rather than after a wait that ends in a refusal anyway.
            while let Some((evicted, waiter)) = queue.evict_below(class) {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                // Under the lock: a receiver is dropped only under it too.
                let _ = waiter.grant.send(Grant::Shed);
                self.count_shed(evicted);
            }
            let capacity = self.latency.queue_capacity(self.limit(), self.target());
            if queue.len() >= capacity {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                drop(queue);
                self.count_shed(class);
                return Admission::Shed(ShedReason::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            (queue.push(class, tx), rx)
        };
        let mut waiting = Waiting {
            shedder: self,
            class,
            id,
            rx: Some(rx),
        };
        let now = tokio::time::Instant::now();
        let mut until = now + self.latency.max_wait(self.target());
        if let Some(deadline) = deadline {
            until = until.min(now + deadline.saturating_duration_since(now) / 2);
        }
        let granted = match waiting.rx.as_mut() {
            Some(rx) => tokio::time::timeout_at(until, rx).await,
            None => Ok(Ok(Grant::Shed)),
        };
        match granted {
            Ok(Ok(Grant::Admitted)) => {
                waiting.rx = None;
                Admission::Queued(self.permit())
            }
            Ok(Ok(Grant::Shed) | Err(_)) => {
                waiting.rx = None;
                Admission::Shed(ShedReason::Displaced)
            }
            Err(_) => match waiting.give_up() {
                Some(Grant::Admitted) => Admission::Queued(self.permit()),
                Some(Grant::Shed) => Admission::Shed(ShedReason::Displaced),
                None => {
                    self.count_shed(class);
                    Admission::Shed(ShedReason::WaitedTooLong)
                }
            },
        }
    }

    fn count_shed(&self, class: Priority) {
        if let Some(counters) = self.shed.load().as_ref() {
            counters[class.rank()].inc();
        }
    }

    /// A request's place is free: the next waiter, highest class first, takes it.
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.grant_waiters();
        }
    }

    fn grant_waiters(&self) {
        let mut queue = self.lock();
        while queue.len() > 0 && self.try_take() {
            match queue.pop_highest() {
                Some(waiter) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    if waiter.grant.send(Grant::Admitted).is_err() {
                        // Cannot happen (receivers are dropped under the lock, after leaving
                        // the queue); the place is given back all the same.
                        self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                None => {
                    self.in_flight.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }

    /// An upstream's response head arrived `latency` after admission.
    fn answered(&self, latency: Duration) {
        let target = self.target();
        let adaptive = self.adaptive.load(Ordering::Relaxed);
        let in_flight = self.in_flight();
        let now = Instant::now();
        if let Some(limit) =
            self.latency
                .record(latency, in_flight, now, target, adaptive, self.limit())
        {
            let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
            if self.adaptive.load(Ordering::Acquire) {
                self.limit.store(limit, Ordering::SeqCst);
                drop(mode);
                self.grant_waiters();
            }
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A request's place while it waits in the queue; leaving (timed out, or the client gone) takes
/// it out under the lock, or hands on a place granted at the last moment.
struct Waiting<'a> {
    shedder: &'a Arc<Shedder>,
    class: Priority,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Waiting<'_> {
    /// Leaves the queue; what was granted meanwhile, if anything.
    fn give_up(&mut self) -> Option<Grant> {
        let mut rx = self.rx.take()?;
        let mut queue = self.shedder.lock();
        match rx.try_recv() {
            Ok(grant) => Some(grant),
            Err(_) => {
                if queue.remove(self.class, self.id) {
                    self.shedder.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                // Dropped under the lock, so no grant is sent to it after this.
                drop(rx);
                drop(queue);
                None
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(Grant::Admitted) = self.give_up() {
            // The client left as its turn came: the place goes to the next one.
            self.shedder.release();
        }
    }
}

/// An admitted request's place, given back when its upstream answers or the exchange ends.
pub struct Permit {
    shedder: Arc<Shedder>,
    admitted: Instant,
}

impl Permit {
    /// The upstream answered with a response head: how long it took teaches the adaptive limit
    /// (`ok`: not a 5xx, which is often fast and says nothing about queueing).
    pub fn answered(self, ok: bool) {
        if ok {
            self.shedder.answered(self.admitted.elapsed());
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shedder.release();
    }
}

/// The class of a request on a route: the route's, or its `x-priority` field's when the route
/// allows it (`priority_from_header`) and the field names one.
pub fn class_of(route: Priority, from_header: bool, headers: &http::HeaderMap) -> Priority {
    if !from_header {
        return route;
    }
    headers
        .get("x-priority")
        .and_then(|v| Priority::parse(v.as_bytes()))
        .unwrap_or(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll};

    fn fixed(limit: usize, target: Duration) -> Arc<Shedder> {
        let shedder = Arc::new(Shedder::default());
        shedder.configure(
            &LoadSheddingConfig {
                max_in_flight: limit,
                target_queue_delay: target,
                cpu_threshold: 1.0,
                memory_threshold: 1.0,
            },
            &metrics::Registry::new(),
        );
        shedder
    }

    fn admitted(a: Admission) -> Permit {
        match a {
            Admission::Admitted(p) | Admission::Queued(p) => p,
            Admission::Shed(why) => panic!("shed: {why:?}"),
        }
    }

    /// Polls a future once: its result if ready.
    fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_as_places_free() {
        // Limit 1, and a queue of 2 (no latency known yet: two rounds of the limit).
        let s = fixed(1, Duration::from_secs(10));
        let busy = admitted(s.admit(Priority::Critical, None).await);
        let mut first = Box::pin(s.admit(Priority::Critical, None));
        let mut second = Box::pin(s.admit(Priority::Critical, None));
        assert!(poll_once(&mut first).is_none());
        assert!(poll_once(&mut second).is_none());
        // The queue is full: one more is refused at once.
        assert!(matches!(
            s.admit(Priority::Critical, None).await,
            Admission::Shed(ShedReason::QueueFull)
        ));
        drop(busy);
        let one = admitted(first.await);
        assert!(poll_once(&mut second).is_none());
        drop(one);
        let two = admitted(second.await);
        assert_eq!(s.in_flight(), 1);
        drop(two);
        assert_eq!((s.in_flight(), s.waiting.load(Ordering::SeqCst)), (0, 0));
    }

    #[tokio::test]
    async fn a_lower_class_waits_only_while_no_higher_one_does() {
        let s = fixed(1, Duration::from_secs(10));
        let busy = admitted(s.admit(Priority::Normal, None).await);
        let mut low = Box::pin(s.admit(Priority::Low, None));
        assert!(poll_once(&mut low).is_none());
        // A normal request must wait: the low one would be served after it only, so goes now.
        let mut normal = Box::pin(s.admit(Priority::Normal, None));
        assert!(poll_once(&mut normal).is_none());
        assert!(matches!(
            poll_once(&mut low),
            Some(Admission::Shed(ShedReason::Displaced))
        ));
        // While the normal one waits, low requests are refused on arrival.
        assert!(matches!(
            s.admit(Priority::Low, None).await,
            Admission::Shed(ShedReason::HigherClassWaiting)
        ));
        // A critical one displaces the normal waiter in turn.
        let mut critical = Box::pin(s.admit(Priority::Critical, None));
        assert!(poll_once(&mut critical).is_none());
        assert!(matches!(
            poll_once(&mut normal),
            Some(Admission::Shed(ShedReason::Displaced))
        ));
        drop(busy);
        drop(admitted(critical.await));
        assert_eq!((s.in_flight(), s.waiting.load(Ordering::SeqCst)), (0, 0));
        let shed = |p: &str| {
            s.shed.load().as_ref().unwrap()[Priority::parse(p.as_bytes()).unwrap().rank()].get()
        };
        assert_eq!((shed("critical"), shed("normal"), shed("low")), (0, 1, 2));
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_gives_back_its_place_in_the_queue_and_any_granted_to_it() {
        let s = fixed(1, Duration::from_secs(10));
        let busy = admitted(s.admit(Priority::Normal, None).await);
        let mut gone = Box::pin(s.admit(Priority::Normal, None));
        assert!(poll_once(&mut gone).is_none());
        drop(gone);
        assert_eq!(s.waiting.load(Ordering::SeqCst), 0);
        // Granted, but the client went away before it ran: the place is not lost.
        let mut late = Box::pin(s.admit(Priority::Normal, None));
        assert!(poll_once(&mut late).is_none());
        drop(busy);
        assert_eq!(s.in_flight(), 1);
        drop(late);
        assert_eq!(s.in_flight(), 0);
        drop(admitted(s.admit(Priority::Low, None).await));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_waits_past_twice_the_target_or_half_the_time_left() {
        let s = fixed(1, Duration::from_millis(50));
        let _busy = admitted(s.admit(Priority::Normal, None).await);
        let start = tokio::time::Instant::now();
        let waited = s.admit(Priority::Critical, None).await;
        assert!(matches!(waited, Admission::Shed(ShedReason::WaitedTooLong)));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(30);
        let start = tokio::time::Instant::now();
        let waited = s.admit(Priority::Critical, Some(deadline)).await;
        assert!(matches!(waited, Admission::Shed(ShedReason::WaitedTooLong)));
        // Half the time left: an admitted request must still have time to be served.
        assert_eq!(start.elapsed(), Duration::from_millis(15));
        assert_eq!(s.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_class_comes_from_x_priority_only_where_the_route_allows_it() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-priority", http::HeaderValue::from_static("critical"));
        assert_eq!(class_of(Priority::Low, false, &headers), Priority::Low);
        assert_eq!(class_of(Priority::Low, true, &headers), Priority::Critical);
        headers.insert("x-priority", http::HeaderValue::from_static("urgent"));
        assert_eq!(class_of(Priority::Low, true, &headers), Priority::Low);
    }
}
