//! Completion of one queued item: a slot resolved exactly once by whichever party finishes
//! the item (worker, cancel, deadline, shutdown), waited on by blocking calls or polled as
//! a `std::future::Future` (through `crate::future::ItemFuture`).
//!
//! A leaf of the core: may call `crate::runtime` (to release the GIL while waiting, and
//! to release an untaken Python result).

use crate::error::{Error, ErrorKind, Result};
use pyo3::prelude::*;
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What an item ended with: the Python result (kept only when the submitter asked for
/// it), or an error.
pub type Outcome = Result<Option<Py<PyAny>>>;

/// An item's result as the slot keeps it: the error boxed, so that the slot (inside every
/// queued item) stays small while errors stay rich.
enum Slot {
    Pending,
    Value(Option<Py<PyAny>>),
    Failed(Box<Error>),
    /// Handed out by `take` or `poll`.
    Taken,
}

impl Slot {
    fn is_resolved(&self) -> bool {
        !matches!(self, Slot::Pending)
    }

    /// Hands the outcome out, leaving `Taken`; errors if there is none to hand out.
    fn take(&mut self) -> Outcome {
        match std::mem::replace(self, Slot::Taken) {
            Slot::Value(value) => Ok(value),
            Slot::Failed(error) => Err(*error),
            Slot::Taken => Err(Error::invalid_argument("the future's result was already taken")),
            Slot::Pending => {
                *self = Slot::Pending;
                Err(Error::new(ErrorKind::NotReady, "the future is not ready"))
            }
        }
    }
}

/// Guarded by its own mutex; written once by the party that finishes the item.
struct SlotState {
    slot: Slot,
    waker: Option<Waker>,
    /// Threads blocked in `wait`; `resolve` signals the condvar only when there are any
    /// (a condvar signal is a syscall even with nobody waiting).
    waiters: u32,
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState { slot: Slot::Pending, waker: None, waiters: 0 }
    }
}

/// The resolution slot shared by an item and its future.
#[derive(Default)]
pub(crate) struct Completion {
    state: Mutex<SlotState>,
    resolved: Condvar,
}

impl Completion {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the outcome and wakes every waiter. Returns false (and drops `outcome`) if
    /// the slot was already resolved, which the scheduler's state machine rules out.
    pub(crate) fn resolve(&self, outcome: Outcome) -> bool {
        let (waker, waiters) = {
            let mut st = self.lock();
            if st.slot.is_resolved() {
                drop(st);
                drop_outcome(outcome);
                return false;
            }
            st.slot = match outcome {
                Ok(value) => Slot::Value(value),
                Err(error) => Slot::Failed(Box::new(error)),
            };
            (st.waker.take(), st.waiters)
        };
        if waiters > 0 {
            self.resolved.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    pub(crate) fn is_resolved(&self) -> bool {
        self.lock().slot.is_resolved()
    }

    /// Blocks until resolved or `timeout` passes; true when resolved.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> bool {
        // A timeout too large to represent as an instant (Duration::MAX) means no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        crate::runtime::without_gil(|| {
            let mut st = self.lock();
            st.waiters += 1;
            let resolved = loop {
                if st.slot.is_resolved() {
                    break true;
                }
                match deadline {
                    None => st = self.resolved.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            break false;
                        }
                        st = self.resolved.wait_timeout(st, d - now).unwrap_or_else(|p| p.into_inner()).0;
                    }
                }
            };
            st.waiters -= 1;
            resolved
        })
    }

    pub(crate) fn take(&self) -> Outcome {
        self.lock().slot.take()
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut st = self.lock();
        if st.slot.is_resolved() {
            return Poll::Ready(st.slot.take());
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Slot::Value(Some(obj)) = std::mem::replace(&mut st.slot, Slot::Taken) {
            drop_outcome(Ok(Some(obj)));
        }
    }
}

/// Releases a Python result that nobody took; takes the GIL only when there is one.
fn drop_outcome(outcome: Outcome) {
    if let Ok(Some(obj)) = outcome {
        crate::runtime::attach(|_py| drop(obj));
    }
}
