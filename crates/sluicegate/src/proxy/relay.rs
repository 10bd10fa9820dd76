//! Relaying bytes both ways between two connections until both directions have ended: the
//! byte path of layer-4 proxying and of WebSocket tunnels.
//!
//! A direction borrows a buffer from the worker ([`spare::RELAY`]) for each read and gives it
//! back once the bytes are written and the next read finds nothing: an idle tunnel or TCP
//! connection holds no buffer, where one buffer per direction for the connection's life cost
//! 128 KiB per idle connection (and `copy_bidirectional`'s 16 KiB per WebSocket tunnel).
//!
//! Half-close is honoured: when one side's reads reach end of stream, the other side's write
//! half is shut down (a FIN, so it sees end of stream too) and the opposite direction keeps
//! flowing until it ends as well. A client may thus send a request, shut down its writes and
//! still read the whole answer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::spare::{self, Buffer};

/// The idle timer wakes this many times per idle timeout. A connection is cut after the
/// timeout's silence plus at most one period, i.e. up to 25% late, never early; in exchange the
/// copy loops never read the clock.
const IDLE_CHECKS_PER_TIMEOUT: u32 = 4;

/// The shortest wake-up period of the idle timer: tokio's timer resolution.
const MIN_IDLE_CHECK: Duration = Duration::from_millis(1);

/// Why a relay ended before both directions did.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No byte moved either way for the idle timeout.
    #[error("no byte moved either way for the idle timeout")]
    Idle,
    /// A read, write, flush or shutdown failed, typically a reset by either peer.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Bytes a finished relay carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Read from the first connection and written to the second.
    pub forward: u64,
    /// Read from the second connection and written to the first.
    pub backward: u64,
}

/// Copies between `a` and `b` in both directions at once until both have ended, or until no
/// byte moved either way for `idle_timeout` (zero disables it; a busy connection is never
/// cut, however long it lives). The connections are left to the caller to drop.
pub async fn both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    idle_timeout: Duration,
) -> Result<Relayed, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let forward = Progress::default();
    let backward = Progress::default();
    let mut there = Direction::default();
    let mut back = Direction::default();
    let copying = poll_fn(|cx| {
        let there_done = there.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), &forward)?;
        let back_done = back.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), &backward)?;
        if there_done.is_ready() && back_done.is_ready() {
            Poll::Ready(Ok::<(), io::Error>(()))
        } else {
            Poll::Pending
        }
    });
    tokio::select! {
        // The copy goes first, so the idle check always sees its latest progress.
        biased;
        done = copying => done?,
        () = idle(idle_timeout, &forward, &backward) => return Err(RelayError::Idle),
    };
    Ok(Relayed {
        forward: forward.read.load(Ordering::Relaxed),
        backward: backward.read.load(Ordering::Relaxed),
    })
}

/// One direction's copy, as a state machine polled by [`both_ways`].
#[derive(Default)]
struct Direction {
    /// Bytes read and not yet all written (`pending[written..]` is left); `None` between
    /// chunks, which is all an idle direction holds.
    pending: Option<Buffer>,
    written: usize,
    /// Bytes were written since the destination was last flushed (a TLS stream may hold them).
    unflushed: bool,
    /// The source reached end of stream; the destination's shutdown is under way.
    ended: bool,
    done: bool,
}

impl Direction {
    /// Moves what can move now; ready once the source ended and the destination is shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut source: Pin<&mut R>,
        mut destination: Pin<&mut W>,
        progress: &Progress,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(chunk) = &self.pending {
                while self.written < chunk.len() {
                    let n = ready!(destination.as_mut().poll_write(cx, &chunk[self.written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.written += n;
                    progress.add_written(n);
                }
                // Back to the worker before the next read borrows one.
                self.pending = None;
                self.unflushed = true;
            }
            if self.ended {
                // Sends a FIN; the other direction keeps going.
                ready!(destination.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut chunk = Buffer::take(&spare::RELAY);
            match tokio_util::io::poll_read_buf(source.as_mut(), cx, &mut *chunk) {
                Poll::Pending => {
                    // Nothing to read: the buffer goes back (dropped here) and what was
                    // written is pushed out before the direction waits.
                    drop(chunk);
                    if self.unflushed {
                        ready!(destination.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => self.ended = true,
                Poll::Ready(Ok(n)) => {
                    progress.add_read(n);
                    self.pending = Some(chunk);
                    self.written = 0;
                }
            }
        }
    }
}

/// Byte counts of one direction, written only by its copy and read by the idle timer.
///
/// Atomics rather than `Cell`s keep relays `Send`; with one writer a relaxed load and store is
/// a plain move, no locked instruction.
#[derive(Default)]
struct Progress {
    /// Bytes read from the source: the direction's count.
    read: AtomicU64,
    /// Bytes written to the destination. Counted apart so that a large chunk trickling out to a
    /// slow reader still counts as activity for the idle timeout.
    written: AtomicU64,
}

impl Progress {
    fn add(counter: &AtomicU64, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn add_read(&self, n: usize) {
        Progress::add(&self.read, n);
    }

    fn add_written(&self, n: usize) {
        Progress::add(&self.written, n);
    }

    fn total(&self) -> u64 {
        self.read
            .load(Ordering::Relaxed)
            .wrapping_add(self.written.load(Ordering::Relaxed))
    }
}

/// Resolves once neither direction moved a byte for `timeout`; never, when `timeout` is zero.
///
/// Instead of stamping a "last activity" time on every chunk, the timer wakes
/// [`IDLE_CHECKS_PER_TIMEOUT`] times per timeout and compares the byte counts with the previous
/// wake. Only that many consecutive wakes without change mean idle: silence for at least
/// `timeout`, at most one period more.
async fn idle(timeout: Duration, forward: &Progress, backward: &Progress) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    let period = (timeout / IDLE_CHECKS_PER_TIMEOUT).max(MIN_IDLE_CHECK);
    let checks = timeout.as_nanos().div_ceil(period.as_nanos());
    let total = || forward.total().wrapping_add(backward.total());

    let Some(first) = Instant::now().checked_add(period) else {
        // A timeout too far in the future to represent is no timeout.
        return std::future::pending().await;
    };
    let sleep = tokio::time::sleep_until(first);
    tokio::pin!(sleep);
    let mut last_total = total();
    let mut silent_checks = 0;
    loop {
        sleep.as_mut().await;
        let now_total = total();
        if now_total == last_total {
            silent_checks += 1;
            if silent_checks >= checks {
                return;
            }
        } else {
            last_total = now_total;
            silent_checks = 0;
        }
        // From now, not from the last deadline: after a stall of the worker thread, the missed
        // checks must not fire back to back and count silence that was not observed.
        match Instant::now().checked_add(period) {
            Some(next) => sleep.as_mut().reset(next),
            None => return std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Lets the relay task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_idle_relay_holds_no_buffer() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut upstream) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { both_ways(&mut a, &mut b, Duration::ZERO).await });

        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        upstream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        upstream.write_all(b"pong!").await.expect("write");
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong!");
        settle().await;
        assert_eq!(
            spare::lent(&spare::RELAY),
            0,
            "an idle relay holds a buffer"
        );

        drop(client);
        drop(upstream);
        let relayed = relay.await.expect("no panic").expect("relay ended cleanly");
        assert_eq!(
            relayed,
            Relayed {
                forward: 4,
                backward: 5
            }
        );
    }

    #[tokio::test]
    async fn a_slow_reader_holds_one_buffer_until_it_has_read() {
        // The upstream side can take 16 bytes at a time: the relay has to wait with the rest.
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut upstream) = tokio::io::duplex(16);
        let relay = tokio::spawn(async move { both_ways(&mut a, &mut b, Duration::ZERO).await });

        let sent: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.expect("write");
        settle().await;
        assert_eq!(spare::lent(&spare::RELAY), 1);

        let mut got = vec![0u8; sent.len()];
        upstream.read_exact(&mut got).await.expect("read");
        assert_eq!(got, sent);
        settle().await;
        assert_eq!(spare::lent(&spare::RELAY), 0);

        client.shutdown().await.expect("shutdown");
        // The half-close reached the upstream side, and the other direction still works.
        assert_eq!(upstream.read(&mut [0u8; 1]).await.expect("read"), 0);
        upstream.write_all(b"late answer").await.expect("write");
        upstream.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"late answer");
        let relayed = relay.await.expect("no panic").expect("relay ended cleanly");
        assert_eq!(relayed.forward, 1000);
    }
}
