//! One thread that fires batch-delay and per-item deadline events at their time; it
//! sleeps on a condvar until the earliest one (no polling).
//!
//! May call: `handler` (`on_delay_timer`), `item` (`finish_unstarted` on a deadline).

use super::handler::{HandlerCore, Item};
use crate::error::{Error, ErrorKind, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Instant;

pub(crate) enum TimerTarget {
    Handler(Weak<HandlerCore>),
    Item(Weak<Item>),
}

struct TimerEntry {
    at: Instant,
    seq: u64,
    target: TimerTarget,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<Reverse<TimerEntry>>,
    seq: u64,
    stopped: bool,
}

/// One thread that fires batch-delay and deadline events at their time; sleeps on a
/// condvar until the earliest one (no polling).
pub(crate) struct Timer {
    state: Mutex<TimerState>,
    wake: Condvar,
}

impl Timer {
    pub(super) fn start() -> Result<Arc<Timer>> {
        let timer = Arc::new(Timer { state: Mutex::new(TimerState::default()), wake: Condvar::new() });
        let t = timer.clone();
        std::thread::Builder::new()
            .name("pysched-timer".into())
            .spawn(move || t.run())
            .map_err(|e| Error::internal(format!("cannot start timer thread: {e}")))?;
        Ok(timer)
    }

    pub(crate) fn add(&self, at: Instant, target: TimerTarget) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seq += 1;
        let seq = st.seq;
        let earliest = st.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        st.heap.push(Reverse(TimerEntry { at, seq, target }));
        if earliest {
            self.wake.notify_one();
        }
    }

    pub(super) fn stop(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stopped = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.stopped {
                return;
            }
            let now = Instant::now();
            match st.heap.peek() {
                None => st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(Reverse(e)) if e.at > now => {
                    let wait = e.at - now;
                    st = self.wake.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner()).0;
                }
                Some(_) => {
                    let Some(Reverse(entry)) = st.heap.pop() else {
                        continue;
                    };
                    drop(st);
                    match entry.target {
                        TimerTarget::Handler(h) => {
                            if let Some(h) = h.upgrade() {
                                h.on_delay_timer();
                            }
                        }
                        TimerTarget::Item(i) => {
                            if let Some(i) = i.upgrade() {
                                let handler = i.handler.upgrade();
                                i.finish_unstarted(ErrorKind::TimedOut, handler.as_deref());
                            }
                        }
                    }
                    st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}
