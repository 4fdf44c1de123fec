//! One thread that fires batch-delay and per-item deadline events at their time; it
//! sleeps on a condvar until the earliest one (no polling).
//!
//! Generic over the handler type `H` whose events it fires ([`TimerEvents`], implemented
//! by `HandlerCore` in `driver`), so that it names nothing above `item`.
//!
//! May call: `item`, and its handlers' events (`TimerEvents`).

use super::item::Item;
use crate::error::{Error, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Instant;

/// What a handler does when its timer events fire; called on the timer thread.
pub(crate) trait TimerEvents: Sized + Send + Sync + 'static {
    /// The batch delay armed by `Timer::add(at, TimerTarget::Handler(..))` ended.
    fn delay_ended(&self);
    /// The deadline of one of its items passed.
    fn deadline_passed(item: &Arc<Item<Self>>);
}

pub(crate) enum TimerTarget<H> {
    Handler(Weak<H>),
    Item(Weak<Item<H>>),
}

struct TimerEntry<H> {
    at: Instant,
    seq: u64,
    target: TimerTarget<H>,
}

impl<H> PartialEq for TimerEntry<H> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<H> Eq for TimerEntry<H> {}
impl<H> PartialOrd for TimerEntry<H> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<H> Ord for TimerEntry<H> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct TimerState<H> {
    heap: BinaryHeap<Reverse<TimerEntry<H>>>,
    seq: u64,
    stopped: bool,
}

/// One thread that fires batch-delay and deadline events at their time; sleeps on a
/// condvar until the earliest one (no polling).
pub(crate) struct Timer<H> {
    state: Mutex<TimerState<H>>,
    wake: Condvar,
}

impl<H: TimerEvents> Timer<H> {
    pub(super) fn start() -> Result<Arc<Timer<H>>> {
        let state = TimerState { heap: BinaryHeap::new(), seq: 0, stopped: false };
        let timer = Arc::new(Timer { state: Mutex::new(state), wake: Condvar::new() });
        let t = timer.clone();
        std::thread::Builder::new()
            .name("pysched-timer".into())
            .spawn(move || t.run())
            .map_err(|e| Error::internal(format!("cannot start timer thread: {e}")))?;
        Ok(timer)
    }

    pub(crate) fn add(&self, at: Instant, target: TimerTarget<H>) {
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
                                h.delay_ended();
                            }
                        }
                        TimerTarget::Item(i) => {
                            if let Some(i) = i.upgrade() {
                                H::deadline_passed(&i);
                            }
                        }
                    }
                    st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}
