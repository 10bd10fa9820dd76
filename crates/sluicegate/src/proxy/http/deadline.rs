//! Deadlines on futures, with a timer a connection keeps across its requests.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

/// A deadline timer a connection keeps across its requests.
pub type DeadlineTimer = Option<Pin<Box<tokio::time::Sleep>>>;

/// Runs `future` until `deadline` (`None`: no deadline); `None` when the deadline came first.
/// The future is taken pinned where it lies: wrapping it by value, as `tokio::time::timeout_at`
/// does, copied the whole upstream exchange's state a few more times per request. `reuse` is a
/// timer to move to `deadline` rather than registering a new one.
pub async fn before<F: Future>(
    deadline: Option<tokio::time::Instant>,
    mut future: Pin<&mut F>,
    reuse: Option<&mut DeadlineTimer>,
) -> Option<F::Output> {
    let Some(at) = deadline else {
        return Some(future.await);
    };
    let mut own = None;
    let slot = reuse.unwrap_or(&mut own);
    let sleep = match slot {
        Some(sleep) => {
            sleep.as_mut().reset(at);
            sleep
        }
        None => slot.insert(Box::pin(tokio::time::sleep_until(at))),
    };
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}
