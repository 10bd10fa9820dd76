//! Small vectored writes sent as one plain `send`.
//!
//! hyper's HTTP/2 server (cleartext) hands frames to the socket as vectored writes: frame
//! headers and payloads separately. (The gateway's own HTTP/1.1 server gathers a small response
//! itself.) On Linux `writev` goes through the VFS layer (iovec import, file
//! position lock, fsnotify), which `send` skips: measured with `perf`, about 0.2 µs per small
//! response — as much as the gateway's whole routing step. Copying a few hundred bytes into one
//! buffer costs far less, so small vectored writes are gathered and sent with one `send`; large
//! ones (bodies) still go as `writev`, without a copy.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Vectored writes up to this size are copied and sent whole.
const GATHER_LIMIT: usize = 16 * 1024;

thread_local! {
    /// One gathering buffer per worker thread, reused by every connection on it.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(GATHER_LIMIT));
}

/// A client stream whose small vectored writes become single writes.
pub struct Coalesce<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut self.get_mut().0;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.iter().filter(|b| !b.is_empty()).count() < 2 || total > GATHER_LIMIT {
            return Pin::new(inner).poll_write_vectored(cx, bufs);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            for b in bufs {
                scratch.extend_from_slice(b);
            }
            // A partial write reports how much of the gathered bytes went, which is exactly
            // how much of `bufs`, in order, went: the caller advances its slices by it.
            Pin::new(inner).poll_write(cx, &scratch)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn gathered_and_large_writes_arrive_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut a = Coalesce(a);
        let big = vec![7u8; GATHER_LIMIT + 1];
        let small: [IoSlice<'_>; 3] = [
            IoSlice::new(b"head "),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        let n = a.write_vectored(&small).await.unwrap();
        assert_eq!(n, 9, "small slices go in one write");
        let large = [IoSlice::new(b"x"), IoSlice::new(&big)];
        let mut sent = 0;
        while sent == 0 {
            sent = a.write_vectored(&large).await.unwrap();
        }
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..9], b"head body");
        assert_eq!(got[9], b'x');
        assert_eq!(got.len(), 9 + sent);
    }
}
