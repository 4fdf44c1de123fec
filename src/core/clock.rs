//! Item timestamps: nanoseconds since a process-wide epoch (the first reading), from the
//! TSC where it is reliable. A leaf: calls nothing of the crate.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Epoch {
    at: Instant,
    /// The TSC where it is reliable (quanta checks and calibrates it; else the OS
    /// clock): ~10 ns a reading on the development VM against ~25 for `Instant::now`,
    /// and producers read it once per item.
    clock: quanta::Clock,
    raw: u64,
}

static EPOCH: OnceLock<Epoch> = OnceLock::new();

#[inline]
fn epoch() -> &'static Epoch {
    EPOCH.get_or_init(|| {
        let clock = quanta::Clock::new();
        let raw = clock.raw();
        Epoch { at: Instant::now(), clock, raw }
    })
}

/// Now, from the fast clock: queue waits, batch delays, batch timings.
#[inline]
pub(crate) fn now_ns() -> u64 {
    let e = epoch();
    e.clock.delta_as_nanos(e.raw, e.clock.raw())
}

/// An `Instant` on the same scale (deadlines, compared with `Instant::now()` as the
/// timer thread does).
#[inline]
pub(crate) fn ns(t: Instant) -> u64 {
    nanos(t.saturating_duration_since(epoch().at))
}

/// A deadline as a non-zero timestamp (one before the epoch reads as 1 ns: passed).
#[inline]
pub(crate) fn deadline_ns(t: Instant) -> NonZeroU64 {
    NonZeroU64::new(ns(t)).unwrap_or(NonZeroU64::MIN)
}

#[inline]
pub(crate) fn instant(ns: u64) -> Instant {
    epoch().at + Duration::from_nanos(ns)
}

/// A duration in whole nanoseconds, saturating.
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
