//! WebSocket (and any HTTP/1.1 `Upgrade`) through the proxy: the upgrade request is forwarded on a
//! dedicated upstream connection, and once both sides answered `101 Switching Protocols` the two
//! connections are joined and bytes relayed both ways until either side closes or the tunnel sits
//! idle for the listener's `idle_timeout`. The tunnel lives on its own task, so a config reload
//! never tears it down.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;

use super::server::h1::{ClientUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Counts bytes and remembers the last time any moved, for the idle timeout.
struct Watched<T> {
    inner: T,
    last: Rc<Cell<Instant>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    Closed {
        from_client: u64,
        from_upstream: u64,
    },
    Idle,
    Failed(String),
}

/// Waits for both upgrades, then relays bytes until close or `idle` without traffic.
pub async fn relay(client: ClientUpgrade, upstream: OnUpgrade, idle: Duration) -> TunnelEnd {
    let (client, upstream) = tokio::join!(client.ready(), upstream);
    let Some(Upgraded(client)) = client else {
        return TunnelEnd::Failed("the client connection was not handed over".to_string());
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(e) => return TunnelEnd::Failed(e.to_string()),
    };
    let last = Rc::new(Cell::new(Instant::now()));
    let mut a = Watched {
        inner: client,
        last: Rc::clone(&last),
    };
    let mut b = Watched {
        inner: TokioIo::new(upstream),
        last: Rc::clone(&last),
    };
    let watchdog = async {
        loop {
            let deadline = last.get() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => match copied {
            Ok((from_client, from_upstream)) => TunnelEnd::Closed { from_client, from_upstream },
            Err(e) => TunnelEnd::Failed(e.to_string()),
        },
        () = watchdog => TunnelEnd::Idle,
    }
}
