//! One upstream HTTP/1.1 connection: its stream (TCP or TLS) and the buffers kept across
//! exchanges.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Read buffer reserved before a read: a small response arrives in one read of this size.
const READ_MIN: usize = 8 * 1024;
/// Reads grow up to this while they keep filling the buffer (large bodies, fewer syscalls).
const READ_MAX: usize = 256 * 1024;

/// Which pool a connection belongs to: the endpoint's address and the identity of the
/// transport it was made with (`client::Transport::identity`); connections are only shared
/// within one key.
pub type PoolKey = (std::net::SocketAddr, u64);

/// The byte stream under a connection.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream connection between exchanges, or during one.
pub struct Conn {
    pub(super) io: Io,
    /// Bytes read and not yet consumed: the response head, then body bytes.
    pub(super) read_buf: BytesMut,
    /// The request head being written (kept for its capacity).
    pub(super) write_buf: Vec<u8>,
    /// How much the next read asks for; grows while reads fill it.
    read_size: usize,
    /// Whether an exchange already completed on this connection: a reused connection may have
    /// been closed by the upstream while idle, which makes a failed send safe to retry.
    pub(super) reused: bool,
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            read_size: READ_MIN,
            reused: false,
        }
    }

    /// Reads more into the read buffer; `Ok(0)` at the end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < self.read_size {
            self.read_buf.reserve(self.read_size);
        }
        let asked = self.read_buf.capacity() - self.read_buf.len();
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read_buf
        ))?;
        // A read that filled what was asked suggests more is waiting: ask for more next time.
        if n == asked && self.read_size < READ_MAX {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Gives back a large read buffer before the connection idles: after a big body it may have
    /// grown to [`READ_MAX`], and a pool of idle connections each holding that much would be
    /// memory spent on nothing.
    pub(crate) fn shrink_for_idle(&mut self) {
        self.read_size = READ_MIN;
        if self.read_buf.is_empty() && self.read_buf.capacity() > 2 * READ_MIN {
            self.read_buf = BytesMut::new();
        }
    }

    /// Whether the connection can carry a new exchange: nothing arrived while it was idle —
    /// neither the upstream's close nor stray bytes. Costs no system call unless the reactor saw
    /// the socket become readable.
    pub fn is_usable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        // The reactor's readiness answers for plain TCP without touching the read buffer: not
        // readable means nothing (no bytes, no close) arrived. TLS may hold decrypted bytes.
        if let Io::Tcp(stream) = &self.io {
            if stream.poll_read_ready(&mut cx).is_pending() {
                return true;
            }
        }
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_give_back_large_buffers_and_keep_small_ones() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = Conn::new(Io::Tcp(stream));
        conn.read_buf.reserve(READ_MIN);
        conn.shrink_for_idle();
        assert!(
            conn.read_buf.capacity() >= READ_MIN,
            "a small buffer is kept for reuse"
        );
        conn.read_buf.reserve(READ_MAX);
        conn.read_size = READ_MAX;
        conn.shrink_for_idle();
        assert_eq!(conn.read_buf.capacity(), 0);
        assert_eq!(conn.read_size, READ_MIN);
    }
}
