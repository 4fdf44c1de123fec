//! An item's states: [`Entry`] as the queue holds it, either [`Detached`] (inline, owned
//! by whoever holds the entry) or a shared [`Item`] (reachable by a future or the timer,
//! with a QUEUED -> CLAIMED | FINISHED state machine), and the [`JobCell`] that hands its
//! job from owner to owner without a lock.
//!
//! Both are generic over the handler `H` an item links back to (`HandlerCore`, fixed by
//! the aliases `handler::Entry` and `handler::Item`), so that this file names nothing
//! above it; the accounting of a cancel or an expiry is `accounting`'s.
//!
//! May call: `job`, `completion`.

use super::completion::{Completion, Outcome};
use super::job::{fail_job, JobSlot};
use crate::error::Error;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::sync::{Arc, Weak};

pub(super) const QUEUED: u8 = 0;
pub(super) const CLAIMED: u8 = 1;
pub(super) const FINISHED: u8 = 2;

/// An item a future or the timer can reach (queued with a future handle or a
/// deadline), shared by its handler's queue, its future and the timer. `H`: its handler.
// Laid out in the order a worker reads it (`C`).
#[repr(C)]
pub(crate) struct Item<H> {
    /// QUEUED -> CLAIMED (a worker took it) or QUEUED -> FINISHED (cancel, deadline,
    /// shutdown): whoever wins the transition from QUEUED owns the job.
    pub(super) state: AtomicU8,
    pub(super) keep_value: bool,
    pub(super) needs_prepare: bool,
    pub(super) starts_group: bool,
    /// Times as `clock` nanoseconds (8 bytes instead of an `Instant`'s 16).
    pub(super) enqueued_ns: u64,
    pub(super) deadline_ns: Option<std::num::NonZeroU64>,
    pub(super) job: JobCell,
    /// For the accounting of a cancel or an expiry.
    pub(super) handler: Weak<H>,
    /// Where a future reads the outcome; None for an item queued with a deadline but
    /// no future handle (its callbacks are all there is).
    pub(super) completion: Option<Box<Completion>>,
}

/// A queued item as the queue holds it.
pub(crate) enum Entry<H> {
    /// Nothing but the queue can reach it (no future handle, no deadline: the C ABI's
    /// fire-and-forget items, and so the C++ wrapper's `queue_invoke` and
    /// `queue_invoke_future` without a timeout): it lives inline in the queue's blocks,
    /// with no allocation, reference count or state machine of its own, and whoever
    /// holds the entry owns it.
    Detached(Detached),
    /// Queued with a future handle or a deadline.
    Shared(Arc<Item<H>>),
}

pub(crate) struct Detached {
    pub(super) job: JobCell,
    /// `enqueued_ns` in the low 61 bits (73 years), `needs_prepare` in the top one,
    /// `starts_group` in bit 61, and bit 62 always set: never zero, so `Entry` keeps its discriminant in this
    /// word's niche (the job's cell hides the job's), and the entry is 56 bytes instead
    /// of 64. A queue block (31 entries with their state words, 1992 bytes) then takes
    /// mimalloc's 2048-byte size class instead of 2560: 66 bytes per queued item
    /// instead of 83.
    pub(super) stamp: std::num::NonZeroU64,
}

pub(super) const NEEDS_PREPARE_BIT: u64 = 1 << 63;
pub(super) const STAMP_BIT: u64 = 1 << 62;
pub(super) const STARTS_GROUP_BIT: u64 = 1 << 61;
pub(super) const TIME_MASK: u64 = STARTS_GROUP_BIT - 1;

impl Detached {
    pub(super) fn new(job: JobSlot, enqueued_ns: u64, needs_prepare: bool, starts_group: bool) -> Self {
        let flags = if needs_prepare { NEEDS_PREPARE_BIT } else { 0 }
            | if starts_group { STARTS_GROUP_BIT } else { 0 };
        let stamp = (enqueued_ns & TIME_MASK) | STAMP_BIT | flags;
        Detached { job: JobCell::new(job), stamp: std::num::NonZeroU64::new(stamp).expect("bit 62 is set") }
    }

    #[inline]
    pub(super) fn enqueued_ns(&self) -> u64 {
        self.stamp.get() & TIME_MASK
    }

    #[inline]
    pub(super) fn needs_prepare(&self) -> bool {
        self.stamp.get() & NEEDS_PREPARE_BIT != 0
    }

    #[inline]
    pub(super) fn starts_group(&self) -> bool {
        self.stamp.get() & STARTS_GROUP_BIT != 0
    }
}

impl<H> Entry<H> {
    #[inline]
    pub(crate) fn enqueued_ns(&self) -> u64 {
        match self {
            Entry::Detached(d) => d.enqueued_ns(),
            Entry::Shared(item) => item.enqueued_ns,
        }
    }

    #[inline]
    pub(super) fn needs_prepare(&self) -> bool {
        match self {
            Entry::Detached(d) => d.needs_prepare(),
            Entry::Shared(item) => item.needs_prepare,
        }
    }

    #[inline]
    pub(super) fn starts_group(&self) -> bool {
        match self {
            Entry::Detached(d) => d.starts_group(),
            Entry::Shared(item) => item.starts_group,
        }
    }

    /// False once a shared item was cancelled or expired (it stays in the queue until
    /// a runner reaches it).
    #[inline]
    pub(super) fn is_queued(&self) -> bool {
        match self {
            Entry::Detached(_) => true,
            Entry::Shared(item) => item.state.load(Acquire) == QUEUED,
        }
    }

    /// Takes the item out of the queue's state machine for a batch; false if a cancel
    /// or deadline finished it first.
    #[inline]
    pub(super) fn claim(&self) -> bool {
        match self {
            Entry::Detached(_) => true,
            Entry::Shared(item) => item.state.compare_exchange(QUEUED, CLAIMED, AcqRel, Acquire).is_ok(),
        }
    }

    #[inline]
    pub(crate) fn job_cell(&self) -> &JobCell {
        match self {
            Entry::Detached(d) => &d.job,
            Entry::Shared(item) => &item.job,
        }
    }

    /// Takes the job. The caller owns the entry (see `JobCell`).
    #[inline]
    pub(crate) fn take_slot(&self) -> Option<JobSlot> {
        self.job_cell().take()
    }

    /// Whether a future reads this item's outcome.
    #[inline]
    pub(crate) fn has_completion(&self) -> bool {
        matches!(self, Entry::Shared(item) if item.completion.is_some())
    }

    #[inline]
    pub(super) fn keep_value(&self) -> bool {
        matches!(self, Entry::Shared(item) if item.keep_value)
    }

    #[inline]
    pub(crate) fn resolve(&self, outcome: Outcome) {
        if let Entry::Shared(item) = self {
            item.resolve(outcome);
        }
    }

    /// Fails an entry refused at submission or left in the queue of a dropped handler
    /// (unless a shared item finished already).
    pub(super) fn fail_unstarted(&self, error: &Error) {
        match self {
            Entry::Detached(d) => fail_job(d.job.take(), error),
            Entry::Shared(item) => {
                item.fail_if_queued(error.clone(), || ());
            }
        }
    }
}

/// An item's job, without a lock: it has one owner at a time, who alone touches it. The
/// creator until the item is queued; then the thread that moves `state` out of QUEUED (a
/// runner claiming the batch, and the pool threads it hands the batch's preparation to,
/// each for its own items and ordered by `PrepareWork`'s counters; or the canceller, the
/// timer, the handler's drop).
pub(crate) struct JobCell(UnsafeCell<Option<JobSlot>>);

// SAFETY: the cell is only accessed by the item's single owner (above); ownership passes
// between threads through the acquire/release operations on `Item::state` and the queues.
unsafe impl Sync for JobCell {}

impl JobCell {
    pub(super) fn new(job: JobSlot) -> Self {
        JobCell(UnsafeCell::new(Some(job)))
    }

    /// Takes the job. The caller owns the item.
    #[inline]
    pub(super) fn take(&self) -> Option<JobSlot> {
        // SAFETY: exclusive access by the owner (the protocol above).
        unsafe { (*self.0.get()).take() }
    }

    /// The job, in place. PRECONDITION: the caller owns the item and holds no other
    /// reference into the cell.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub(crate) unsafe fn get_mut(&self) -> Option<&mut JobSlot> {
        (*self.0.get()).as_mut()
    }
}

impl<H> Item<H> {
    /// Stores the outcome for the future, if the item has one (a detached item's outcome
    /// holds no Python object: it never keeps the value).
    #[inline]
    pub(super) fn resolve(&self, outcome: Outcome) {
        if let Some(completion) = &self.completion {
            completion.resolve(outcome);
        }
    }

    /// The completion slot of an item queued for a future.
    pub(crate) fn completion(&self) -> &Completion {
        self.completion.as_deref().expect("an item with a future has a completion slot")
    }

    /// Takes the job. The caller owns the item (see `JobCell`).
    #[inline]
    pub(super) fn take_slot(&self) -> Option<JobSlot> {
        self.job.take()
    }

    /// Fails the item if it is still queued (whoever moves it out of QUEUED owns it):
    /// its job's `fail`, then `account` (the stats, before the future can see the
    /// outcome), then the future. False if it had already started or finished.
    pub(super) fn fail_if_queued(&self, error: Error, account: impl FnOnce()) -> bool {
        if self.state.compare_exchange(QUEUED, FINISHED, AcqRel, Acquire).is_err() {
            return false;
        }
        fail_job(self.take_slot(), &error);
        account();
        self.resolve(Err(error));
        true
    }
}

#[cfg(test)]
mod tests {
    // The sizes of the types the handler holds (`HandlerCore`'s entries and items).
    use crate::core::handler::{Entry, Item};

    /// A queued fire-and-forget item costs one slot of `Incoming`'s blocks (its entry
    /// plus the slot's state word): keep it within 56 + 8 bytes, so that a block of 31
    /// slots and its next pointer (1992 bytes) stays in mimalloc's 2048-byte size class
    /// (issue 16's peak-RSS row); an item for a future keeps its `ArcInner<Item>` within
    /// the 112-byte allocator bin.
    #[test]
    pub(super) fn entries_stay_small() {
        assert!(std::mem::size_of::<Entry>() <= 56, "Entry is {} bytes", std::mem::size_of::<Entry>());
        let arc_inner = std::mem::size_of::<Item>() + 2 * std::mem::size_of::<usize>();
        assert!(arc_inner <= 112, "ArcInner<Item> is {arc_inner} bytes");
    }
}
