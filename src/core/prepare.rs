//! Preparation: the GIL-free `Job::prepare` step of a claimed batch, spread over idle
//! pool workers ([`PrepareWork`]), or run serially (replicas, single items). A handler
//! with its own batch step (`BatchExec`) is called before and after (a tensor handler's
//! batch first gets its rows of the batch buffers, then is staged).
//!
//! May call: `item`, `job`, `batch_exec`, `accounting` (a failed preparation finishes
//! its item), `pool` (`submit_prepare`).

use super::handler::{Entry, HandlerCore};
use super::job::guarded;
use crate::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering::AcqRel, Ordering::Acquire};
use std::sync::{Arc, Mutex};

/// A batch whose items several workers prepare at once.
pub(crate) struct PrepareWork {
    /// Each item with whether its preparation succeeded, locked by whoever prepares it
    /// (the lock is uncontended: each index is taken once) and at the end by the runner
    /// that collects them, while a helper that started late may still hold the `Arc`.
    items: Vec<Mutex<(Option<Entry>, bool)>>,
    /// Index of the next item to take.
    next: AtomicUsize,
    /// Items whose preparation has finished.
    done: AtomicUsize,
}

impl HandlerCore {
    /// Runs the GIL-free preparation of a batch's items, spread over idle pool workers
    /// (each takes the next unprepared item until none is left), and returns the items
    /// that are ready to commit. A failed preparation finishes its item at once.
    pub(super) fn prepare_batch(self: &Arc<Self>, batch: Vec<Entry>) -> Vec<Entry> {
        let Some(exec) = &self.batch_exec else {
            return self.prepare_entries(batch);
        };
        // A tensor batch's fills write straight into its rows of the batch buffers.
        if let Err(error) = exec.before_prepare(&batch) {
            for entry in batch {
                let job = entry.take_slot();
                self.fail_started(&entry, job, error.clone());
                self.finish_items(1);
            }
            return Vec::new();
        }
        let batch = self.prepare_entries(batch);
        exec.after_prepare(&batch);
        batch
    }

    pub(super) fn prepare_entries(self: &Arc<Self>, batch: Vec<Entry>) -> Vec<Entry> {
        let needing = batch.iter().filter(|e| e.needs_prepare()).count();
        if needing <= 1 || self.pool.threads() <= 1 {
            return self.prepare_serial(batch);
        }
        let work = Arc::new(PrepareWork {
            items: batch.into_iter().map(|entry| Mutex::new((Some(entry), false))).collect(),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        });
        // As many helpers as there are items beyond the one this thread starts on.
        let helpers = (needing - 1).min(self.pool.threads() - 1);
        for _ in 0..helpers {
            self.pool.submit_prepare(self.clone(), work.clone());
        }
        self.prepare_some(&work);
        // Helpers finish the items they took; each takes one item's preparation time.
        while work.done.load(Acquire) < work.items.len() {
            std::thread::yield_now();
        }
        work.items
            .iter()
            .filter_map(|slot| {
                let (entry, ok) = &mut *slot.lock().unwrap_or_else(|p| p.into_inner());
                entry.take().filter(|_| *ok)
            })
            .collect()
    }

    /// Prepares a batch on this thread alone (replicas, single items).
    pub(super) fn prepare_serial(&self, batch: Vec<Entry>) -> Vec<Entry> {
        batch.into_iter().filter(|entry| self.prepare_one(entry)).collect()
    }

    /// Prepares items of `work` until none is left to take.
    pub(super) fn prepare_some(&self, work: &PrepareWork) {
        loop {
            let i = work.next.fetch_add(1, AcqRel);
            let Some(slot) = work.items.get(i) else { return };
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.1 = slot.0.as_ref().is_some_and(|entry| self.prepare_one(entry));
            drop(slot);
            work.done.fetch_add(1, AcqRel);
        }
    }

    /// Prepares one item; on failure finishes it and returns false.
    pub(super) fn prepare_one(&self, entry: &Entry) -> bool {
        if !entry.needs_prepare() {
            return true;
        }
        // SAFETY: this thread owns the claimed item for its preparation (JobCell).
        let result = match unsafe { entry.job_cell().get_mut() } {
            Some(job) => guarded("prepare", || job.prepare()),
            None => Err(Error::internal("item has no job")),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                let job = entry.take_slot();
                self.fail_started(entry, job, e);
                self.finish_items(1);
                false
            }
        }
    }
}
