//! Drain and close: wait until every accepted item has finished, then (on close) refuse
//! new ones. The one wait that a callback of the handler itself may reach.
//!
//! May call: `driver` (`kick`), `crate::runtime` (to release the GIL while waiting).

use super::handler::{HandlerCore, EXECUTING};
use std::sync::atomic::Ordering::SeqCst;

impl HandlerCore {
    /// Waits until every accepted item has finished; later items are refused when
    /// `close` is set. Releases the GIL while waiting. Called from inside one of this
    /// handler's own callbacks it cannot wait for itself: it then only marks the handler.
    pub(crate) fn drain(&self, close: bool) {
        let reentrant = EXECUTING.with(|e| std::ptr::eq(e.get(), self));
        crate::runtime::without_gil(|| {
            let mut pipe = self.lock();
            pipe.draining = true;
            drop(pipe);
            self.kick();
            pipe = self.lock();
            if !reentrant {
                pipe.drain_waiters += 1;
                while self.flow.outstanding() > 0 {
                    pipe = self.drained.wait(pipe).unwrap_or_else(|p| p.into_inner());
                }
                pipe.drain_waiters -= 1;
                pipe.draining = pipe.drain_waiters > 0;
            }
            if close {
                self.flow.closed.store(true, SeqCst);
                self.room.notify_all();
                self.replica_wake.notify_all();
            }
        });
    }
}
