//! The worker's spare buffers: a connection borrows one while bytes move through it and gives
//! it back when they have, so an idle connection holds none (as in HAProxy and nginx, whose
//! buffers also live only while bytes move).
//!
//! Per worker thread: a worker runs one task at a time, so borrowing and returning a buffer is
//! a thread-local pop and push, no lock. Each pool is capped in count and in the size of what
//! it keeps, so a burst does not leave its buffers behind for good, and the worker's periodic
//! sweep ([`release`]) trims what a burst left.

use std::cell::{Cell, RefCell};
use std::thread::LocalKey;

/// One kind of buffer a worker keeps spares of.
pub struct Pool {
    spare: RefCell<Vec<Vec<u8>>>,
    /// What a new buffer starts with.
    initial: usize,
    /// Buffers kept: about as many as the worker's connections use at the same instant.
    kept: usize,
    /// Buffers on loan now.
    lent: Cell<usize>,
}

impl Pool {
    const fn new(initial: usize, kept: usize) -> Pool {
        Pool {
            spare: RefCell::new(Vec::new()),
            initial,
            kept,
            lent: Cell::new(0),
        }
    }
}

thread_local! {
    /// HTTP/1.1 response writing: a typical head and a small body fit without growing.
    pub static WRITES: Pool = const { Pool::new(4 * 1024, 64) };
    /// Relayed bytes (layer 4, WebSocket tunnels): 64 KiB is the largest chunk loopback and
    /// typical socket buffers hand over in one read, so a bulk transfer costs one read and one
    /// write per 64 KiB.
    pub static RELAY: Pool = const { Pool::new(64 * 1024, 16) };
}

/// A buffer grown past this is freed rather than kept.
const KEPT_CAPACITY: usize = 64 * 1024;

/// A buffer on loan from a worker's pool, empty when lent; it goes back when dropped.
pub struct Buffer {
    buf: Vec<u8>,
    pool: &'static LocalKey<Pool>,
}

impl Buffer {
    pub fn take(pool: &'static LocalKey<Pool>) -> Buffer {
        let buf = pool
            .try_with(|p| {
                p.lent.set(p.lent.get() + 1);
                p.spare
                    .borrow_mut()
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(p.initial))
            })
            .unwrap_or_default();
        Buffer { buf, pool }
    }
}

impl std::ops::Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // `try_with`: a connection dropped while its thread exits finds the pool gone.
        let _ = self.pool.try_with(|p| {
            p.lent.set(p.lent.get().saturating_sub(1));
            let mut spare = p.spare.borrow_mut();
            if spare.len() < p.kept && (1..=KEPT_CAPACITY).contains(&buf.capacity()) {
                spare.push(buf);
            }
        });
    }
}

/// Buffers of `pool` on loan on this thread now (what connections hold).
pub fn lent(pool: &'static LocalKey<Pool>) -> usize {
    pool.try_with(|p| p.lent.get()).unwrap_or(0)
}

/// Frees most spare buffers: the worker's periodic memory release, so that RSS comes back
/// after a burst.
pub fn release() {
    for pool in [&WRITES, &RELAY] {
        let _ = pool.try_with(|p| {
            let mut spare = p.spare.borrow_mut();
            spare.truncate(p.kept / 8);
            spare.shrink_to_fit();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(pool: &'static LocalKey<Pool>) -> usize {
        pool.with(|p| p.spare.borrow().len())
    }

    #[test]
    fn a_returned_buffer_is_lent_again_empty() {
        let mut first = Buffer::take(&WRITES);
        first.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let at = first.as_ptr();
        drop(first);
        let second = Buffer::take(&WRITES);
        assert!(second.is_empty());
        assert_eq!(second.as_ptr(), at);
    }

    #[test]
    fn an_oversized_buffer_is_not_kept() {
        let mut big = Buffer::take(&WRITES);
        big.reserve(KEPT_CAPACITY * 2);
        drop(big);
        assert_eq!(spare(&WRITES), 0);
        drop(Buffer::take(&WRITES));
        assert_eq!(spare(&WRITES), 1);
    }

    #[test]
    fn a_pool_keeps_at_most_its_count_and_release_trims_it() {
        let loans: Vec<Buffer> = (0..20).map(|_| Buffer::take(&RELAY)).collect();
        assert_eq!(lent(&RELAY), 20);
        drop(loans);
        assert_eq!(lent(&RELAY), 0);
        assert_eq!(spare(&RELAY), 16);
        release();
        assert_eq!(spare(&RELAY), 2);
    }
}
