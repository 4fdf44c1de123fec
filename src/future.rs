//! The future of one queued item ([`ItemFuture`]): the public face of an item's
//! completion slot (`core::completion`), with cancel.

pub use crate::core::completion::Outcome;
use crate::core::Item;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The future of one queued item. Dropping it does not cancel the item.
pub struct ItemFuture {
    item: Arc<Item>,
}

impl ItemFuture {
    pub(crate) fn new(item: Arc<Item>) -> Self {
        ItemFuture { item }
    }

    /// Whether the item has finished (with a value or an error). Never blocks.
    pub fn is_ready(&self) -> bool {
        self.item.completion().is_resolved()
    }

    /// Blocks until the item finishes, then returns its outcome. Releases the GIL while
    /// waiting if the caller holds it.
    pub fn wait(self) -> Outcome {
        self.item.completion().wait(None);
        self.item.completion().take()
    }

    /// Blocks until the item finishes or `timeout` passes; `false` on timeout.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        self.item.completion().wait(Some(timeout))
    }

    /// Takes the outcome of a finished item: `NotReady` if it has not finished, an
    /// invalid-argument error if it was already taken.
    pub fn take(&self) -> Outcome {
        self.item.completion().take()
    }

    /// Cancels the item if it has not started: its future fails with `Cancelled` and its
    /// callbacks see that error. Returns false when the item already started or finished
    /// (it then completes normally). Never blocks on Python.
    pub fn cancel(&self) -> bool {
        self.item.cancel()
    }
}

impl std::future::Future for ItemFuture {
    type Output = Outcome;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.item.completion().poll(cx)
    }
}
