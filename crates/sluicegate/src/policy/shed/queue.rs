//! The requests waiting for admission: one FIFO per class, served highest class first.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use crate::config::Priority;

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A place was taken for it: go on.
    Admitted,
    /// A higher class needed its place in the queue.
    Shed,
}

pub struct Waiter {
    id: u64,
    pub grant: oneshot::Sender<Grant>,
}

#[derive(Default)]
pub struct Queue {
    classes: [VecDeque<Waiter>; 3],
    next_id: u64,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.classes.iter().map(VecDeque::len).sum()
    }

    pub fn len_of(&self, class: Priority) -> usize {
        self.classes[class.rank()].len()
    }

    /// Whether anyone of `class` or a higher class waits (who would be served first).
    pub fn any_at_or_above(&self, class: Priority) -> bool {
        self.classes[..=class.rank()].iter().any(|q| !q.is_empty())
    }

    /// Whether anyone of a higher class than `class` waits.
    pub fn any_above(&self, class: Priority) -> bool {
        self.classes[..class.rank()].iter().any(|q| !q.is_empty())
    }

    /// Queues a waiter at the back of its class; its id, to leave by.
    pub fn push(&mut self, class: Priority, grant: oneshot::Sender<Grant>) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.classes[class.rank()].push_back(Waiter { id, grant });
        id
    }

    /// The longest-waiting request of the highest class.
    pub fn pop_highest(&mut self) -> Option<Waiter> {
        self.classes.iter_mut().find_map(VecDeque::pop_front)
    }

    /// Takes out the newest waiter of the lowest class below `class` (the one that would be
    /// served last), to make room for a request of `class`.
    pub fn evict_below(&mut self, class: Priority) -> Option<(Priority, Waiter)> {
        Priority::ALL
            .into_iter()
            .rev()
            .take_while(|p| *p > class)
            .find_map(|p| self.classes[p.rank()].pop_back().map(|w| (p, w)))
    }

    /// Takes a waiter out by id; false if it is no longer queued (granted or evicted).
    pub fn remove(&mut self, class: Priority, id: u64) -> bool {
        let waiters = &mut self.classes[class.rank()];
        match waiters.iter().position(|w| w.id == id) {
            Some(at) => {
                waiters.remove(at);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(q: &mut Queue, class: Priority) -> (u64, oneshot::Receiver<Grant>) {
        let (tx, rx) = oneshot::channel();
        (q.push(class, tx), rx)
    }

    #[test]
    fn serves_the_highest_class_first_and_each_class_in_arrival_order() {
        let mut q = Queue::default();
        let (low, _l) = waiter(&mut q, Priority::Low);
        let (normal1, _n1) = waiter(&mut q, Priority::Normal);
        let (critical, _c) = waiter(&mut q, Priority::Critical);
        let (normal2, _n2) = waiter(&mut q, Priority::Normal);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_highest().map(|w| w.id)).collect();
        assert_eq!(order, [critical, normal1, normal2, low]);
    }

    #[test]
    fn evicts_the_newest_of_the_lowest_class_and_never_an_equal_or_higher_one() {
        let mut q = Queue::default();
        let (_low1, _a) = waiter(&mut q, Priority::Low);
        let (low2, _b) = waiter(&mut q, Priority::Low);
        let (normal, _c) = waiter(&mut q, Priority::Normal);
        let (class, evicted) = q.evict_below(Priority::Critical).unwrap();
        assert_eq!((class, evicted.id), (Priority::Low, low2));
        assert!(q.evict_below(Priority::Low).is_none());
        q.evict_below(Priority::Normal).unwrap();
        assert!(q.evict_below(Priority::Normal).is_none());
        let (class, evicted) = q.evict_below(Priority::Critical).unwrap();
        assert_eq!((class, evicted.id), (Priority::Normal, normal));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_waiter_leaves_by_id_once() {
        let mut q = Queue::default();
        let (a, _a) = waiter(&mut q, Priority::Normal);
        let (_b, _b_rx) = waiter(&mut q, Priority::Normal);
        assert!(q.remove(Priority::Normal, a));
        assert!(!q.remove(Priority::Normal, a));
        assert_eq!(q.len_of(Priority::Normal), 1);
    }
}
