//! Spreading client connections evenly over the workers.
//!
//! Each worker accepts on its own SO_REUSEPORT socket, and the kernel picks the socket by a hash
//! of the connection's addresses: 64 connections land 32/32 only on average, 40/24 is common. The
//! busier worker then queues its requests behind each other while the other idles, which shows as
//! tail latency (measured: p99 twice HAProxy's, whose threads share connections evenly). So a
//! worker that accepts while holding at least [`SLACK`] more connections than the least loaded
//! worker hands the new connection to that worker instead. Long-lived connections move once, at
//! accept; a balanced gateway moves none.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::mpsc::UnboundedSender;

/// How many more open connections than the least loaded worker a worker may hold before it
/// hands new ones over.
const SLACK: usize = 2;

/// Every worker's open connection count and command channel.
pub struct Peers<C> {
    loads: Box<[Slot]>,
    senders: Vec<UnboundedSender<C>>,
}

/// One worker's count on a cache line of its own: each worker writes its own per connection.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicUsize);

impl<C> Peers<C> {
    pub fn new(senders: Vec<UnboundedSender<C>>) -> Peers<C> {
        Peers {
            loads: senders.iter().map(|_| Slot::default()).collect(),
            senders,
        }
    }

    /// A connection opened (or was handed) to worker `index`.
    pub fn opened(&self, index: usize) {
        if let Some(slot) = self.loads.get(index) {
            slot.0.fetch_add(1, Relaxed);
        }
    }

    /// A connection of worker `index` closed.
    pub fn closed(&self, index: usize) {
        if let Some(slot) = self.loads.get(index) {
            slot.0.fetch_sub(1, Relaxed);
        }
    }

    pub fn load(&self, index: usize) -> usize {
        self.loads.get(index).map_or(0, |s| s.0.load(Relaxed))
    }

    /// The worker a connection just accepted by worker `me` should go to, when not `me`.
    pub fn less_loaded(&self, me: usize) -> Option<usize> {
        let mine = self.load(me);
        let (least, load) = (0..self.loads.len())
            .map(|i| (i, self.load(i)))
            .min_by_key(|&(_, load)| load)?;
        (least != me && load + SLACK <= mine).then_some(least)
    }

    /// Sends `command` to worker `index`, counting the connection it carries there at once (so
    /// a burst of accepts does not all pick the same worker). Gives the command back if that
    /// worker is gone.
    pub fn hand_over(&self, index: usize, command: C) -> Result<(), C> {
        let Some(sender) = self.senders.get(index) else {
            return Err(command);
        };
        self.opened(index);
        sender.send(command).map_err(|e| {
            self.closed(index);
            e.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> (Peers<u32>, Vec<tokio::sync::mpsc::UnboundedReceiver<u32>>) {
        let (senders, receivers) = (0..n)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        (Peers::new(senders), receivers)
    }

    #[test]
    fn only_a_worker_ahead_by_the_slack_hands_over() {
        let (p, _rx) = peers(3);
        assert_eq!(p.less_loaded(0), None, "all equal");
        p.opened(0);
        p.opened(0);
        assert_eq!(p.less_loaded(0), Some(1), "two ahead of the least loaded");
        assert_eq!(p.less_loaded(1), None, "the least loaded keeps its own");
        p.opened(1);
        p.opened(2);
        assert_eq!(p.less_loaded(0), None, "one ahead is within the slack");
    }

    #[test]
    fn hand_over_counts_at_once_and_a_burst_spreads() {
        let (p, mut rx) = peers(2);
        // Worker 0 accepts a burst of 64: it keeps some and hands the rest over as it goes.
        let mut kept = 0;
        for n in 0..64 {
            match p.less_loaded(0) {
                Some(target) => p.hand_over(target, n).unwrap(),
                None => {
                    p.opened(0);
                    kept += 1;
                }
            }
        }
        let handed = std::iter::from_fn(|| rx[1].try_recv().ok()).count();
        assert_eq!((kept, handed), (33, 31));
        assert_eq!((p.load(0), p.load(1)), (33, 31));
        drop(rx);
        assert_eq!(
            p.hand_over(1, 99),
            Err(99),
            "a gone worker gives the command back"
        );
        assert_eq!(p.load(1), 31);
    }
}
