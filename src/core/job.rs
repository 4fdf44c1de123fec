//! The unit of work: the [`Job`] trait a submitter implements, the slot an item keeps
//! its job in ([`JobSlot`]; a job in storage its submitter owns is a [`PlacedJob`]), and
//! the guard every job callback runs under.
//!
//! A leaf of the core: uses `crate::error` and pyo3. It names no submitter's job type:
//! a layer that places its jobs (`tensor`) hands them over type-erased.

use crate::error::{pysched_error, Error, ErrorKind, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

/// The work of one queued item, supplied by the submitter. Exactly one of `complete`
/// or `fail` is called, then the job is dropped (its `Drop` is the finalizer).
pub trait Job: Send + 'static {
    /// Whether [`Job::prepare`] has work to do; such items are prepared ahead of
    /// execution, up to `prefetch_depth` batches, on pool threads without the GIL.
    fn needs_prepare(&self) -> bool {
        false
    }

    /// Whether the item opens a new group of rows (a tensor item copied into row 0 of a
    /// fresh set of batch buffers): a batch ends before it, so that batches line up with
    /// the sets and run on their rows without a gather.
    #[doc(hidden)]
    fn starts_group(&self) -> bool {
        false
    }
    /// GIL-free staging (decoding, GPU uploads). Runs on a pool thread WITHOUT the GIL.
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }
    /// Builds the item's Python object. Runs with the GIL held, just before the call.
    fn commit(&mut self, py: Python<'_>) -> Result<Py<PyAny>>;
    /// Receives the item's element of the function's result. GIL held. An error fails
    /// the item (its future gets it); other items are unaffected.
    fn complete(&mut self, py: Python<'_>, result: &Bound<'_, PyAny>) -> Result<()>;
    /// Receives the item's failure (its own commit, its batch's Python error, cancel,
    /// deadline, rejection or shutdown). Any thread; the GIL may or may not be held.
    fn fail(&mut self, error: &Error);

    /// Whether the job can run in an own-GIL sub-interpreter replica, which only raw
    /// C-API callbacks can (pyo3's safe API caches objects per process).
    fn supports_raw(&self) -> bool {
        false
    }
    /// Raw commit for sub-interpreter replicas: the replica's interpreter is current and
    /// its GIL held. Returns a new reference, or NULL with a Python exception set.
    fn commit_raw(&mut self) -> *mut ffi::PyObject {
        std::ptr::null_mut()
    }
    /// Raw completion for sub-interpreter replicas: `result` is borrowed, the replica's
    /// interpreter is current and its GIL held. An error fails the item.
    fn complete_raw(&mut self, result: *mut ffi::PyObject) -> Result<()> {
        let _ = result;
        Ok(())
    }
}

/// An item's job, kept inside the item: C callbacks inline (one allocation per
/// queued item instead of two), a job in its submitter's storage by pointer, any other
/// job boxed.
pub(crate) enum JobSlot {
    Callback(CallbackJob),
    Boxed(Box<dyn Job>),
    /// A job its submitter placed (a tensor handler's item: see `tensor::job::TensorBox`).
    Placed(PlacedJob),
}

impl JobSlot {
    /// `Job::needs_prepare`, without a dynamic call for inline and placed jobs (the
    /// producer asks it once per item).
    #[inline]
    pub(crate) fn needs_prepare(&self) -> bool {
        match self {
            JobSlot::Callback(job) => job.needs_prepare(),
            JobSlot::Boxed(job) => job.needs_prepare(),
            JobSlot::Placed(job) => job.needs_prepare,
        }
    }

    /// `Job::starts_group`, as `needs_prepare`.
    #[inline]
    pub(crate) fn starts_group(&self) -> bool {
        match self {
            JobSlot::Callback(job) => job.starts_group(),
            JobSlot::Boxed(job) => job.starts_group(),
            JobSlot::Placed(job) => job.starts_group,
        }
    }
}

impl From<Box<dyn Job>> for JobSlot {
    fn from(job: Box<dyn Job>) -> Self {
        JobSlot::Boxed(job)
    }
}

impl std::ops::Deref for JobSlot {
    type Target = dyn Job;
    #[inline]
    fn deref(&self) -> &(dyn Job + 'static) {
        match self {
            JobSlot::Callback(job) => job,
            JobSlot::Boxed(job) => &**job,
            // SAFETY: a placed job is live and owned by its slot until the slot drops.
            JobSlot::Placed(job) => unsafe { job.job.as_ref() },
        }
    }
}

impl std::ops::DerefMut for JobSlot {
    #[inline]
    fn deref_mut(&mut self) -> &mut (dyn Job + 'static) {
        match self {
            JobSlot::Callback(job) => job,
            JobSlot::Boxed(job) => &mut **job,
            // SAFETY: as in deref; the slot is the job's only owner.
            JobSlot::Placed(job) => unsafe { job.job.as_mut() },
        }
    }
}

/// A job owned through a pointer into storage its submitter chose: a box, or memory the
/// job itself keeps alive (a tensor item's job lives in the record of its batch-buffer
/// row, and its hold on the row keeps the record). Owned like a `Box`: dropping it ends
/// the job through a plain function chosen at construction, no dynamic call and no
/// reference count. What the producer path asks of the job (`needs_prepare`,
/// `starts_group`) is read once, before the type is erased.
pub(crate) struct PlacedJob {
    job: NonNull<dyn Job>,
    /// Moves the job out of its storage and drops it (`drop_read`), or frees its box
    /// (`drop_boxed`); called once, by `Drop`.
    release: unsafe fn(NonNull<()>),
    needs_prepare: bool,
    starts_group: bool,
}

// SAFETY: a placed job owns its job exclusively (like a Box), and `Job: Send`.
unsafe impl Send for PlacedJob {}

impl PlacedJob {
    /// A job on the heap.
    #[inline]
    pub(crate) fn boxed<J: Job>(job: Box<J>) -> PlacedJob {
        let (needs_prepare, starts_group) = (job.needs_prepare(), job.starts_group());
        let job = NonNull::from(Box::leak(job));
        PlacedJob { job, release: drop_boxed::<J>, needs_prepare, starts_group }
    }

    /// A job written in place, which the placed job owns from here on.
    ///
    /// # Safety
    /// `job` points to an initialized `J` that nothing else reads, writes or drops from
    /// now on, in memory that stays valid while the `J` lives (for instance because the
    /// `J` itself holds what keeps that memory). Dropping the placed job moves the `J` out
    /// with `ptr::read` before dropping it, so the `J` may let its own storage go.
    #[inline]
    pub(crate) unsafe fn in_place<J: Job>(job: NonNull<J>) -> PlacedJob {
        // SAFETY: initialized and ours (the caller's promise).
        let j = unsafe { job.as_ref() };
        let (needs_prepare, starts_group) = (j.needs_prepare(), j.starts_group());
        PlacedJob { job, release: drop_read::<J>, needs_prepare, starts_group }
    }

    /// The job, for the submitter that placed it and knows its type.
    #[inline]
    pub(crate) fn as_ptr(&self) -> NonNull<dyn Job> {
        self.job
    }
}

impl Drop for PlacedJob {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `release` matches how the job was placed; called once (here).
        unsafe { (self.release)(self.job.cast()) }
    }
}

/// # Safety
/// `job` came from `Box::<J>::leak` and is freed once.
unsafe fn drop_boxed<J>(job: NonNull<()>) {
    // SAFETY: the caller's promise.
    drop(unsafe { Box::from_raw(job.cast::<J>().as_ptr()) });
}

/// # Safety
/// `job` points to an initialized `J` owned by the caller, moved out exactly once (here).
unsafe fn drop_read<J>(job: NonNull<()>) {
    // SAFETY: the caller's promise. Out of its storage first: dropping the job may let
    // that storage go (a tensor job's row hold may release its set, record included).
    drop(unsafe { job.cast::<J>().as_ptr().read() });
}

/// A job made of C callbacks sharing one `user_data`: what the C ABI's `pysched_item`
/// becomes (`ffi::handler` builds it; the callbacks' contracts are documented there).
/// The item's state machine calls commit/prepare at most once and exactly one of
/// complete/fail, then drops it (calling `drop`). Kept inline in the queue (`JobSlot`).
pub(crate) struct CallbackJob {
    user_data: *mut c_void,
    commit: CommitFn,
    prepare: PrepareFn,
    complete: CompleteFn,
    drop: DropFn,
}

/// The callbacks' C signatures (`pysched_commit_fn` and the others in `ffi::handler`).
pub(crate) type CommitFn = Option<unsafe extern "C" fn(*mut c_void) -> *mut ffi::PyObject>;
pub(crate) type PrepareFn = Option<unsafe extern "C" fn(*mut c_void) -> c_int>;
pub(crate) type CompleteFn =
    Option<unsafe extern "C" fn(*mut c_void, *mut ffi::PyObject, *const pysched_error) -> c_int>;
pub(crate) type DropFn = Option<unsafe extern "C" fn(*mut c_void)>;

impl CallbackJob {
    /// Whether dropping it calls a `drop` callback (else it is free to drop anywhere).
    pub(crate) fn has_finalizer(&self) -> bool {
        self.drop.is_some()
    }

    pub(crate) fn new(
        user_data: *mut c_void,
        commit: CommitFn,
        prepare: PrepareFn,
        complete: CompleteFn,
        drop: DropFn,
    ) -> Self {
        CallbackJob { user_data, commit, prepare, complete, drop }
    }
}

// SAFETY: whoever builds it guarantees (the C ABI documents it on pysched_item) that
// user_data and the callbacks may be used from any thread.
unsafe impl Send for CallbackJob {}

impl Job for CallbackJob {
    fn needs_prepare(&self) -> bool {
        self.prepare.is_some()
    }

    fn prepare(&mut self) -> Result<()> {
        let Some(prepare) = self.prepare else {
            return Ok(());
        };
        // SAFETY: a C callback supplied with this user_data; called once, without the GIL.
        match unsafe { prepare(self.user_data) } {
            0 => Ok(()),
            rc => Err(Error::new(ErrorKind::Commit, format!("prepare callback failed (returned {rc})"))),
        }
    }

    fn commit(&mut self, py: Python<'_>) -> Result<Py<PyAny>> {
        let Some(commit) = self.commit else {
            return Err(Error::invalid_argument("item has no commit callback"));
        };
        // SAFETY: a C callback supplied with this user_data; called once with the GIL
        // held. It returns a new reference or NULL with an exception set.
        let obj = unsafe { commit(self.user_data) };
        if obj.is_null() {
            if pyo3::PyErr::occurred(py) {
                return Err(Error::fetch(py, ErrorKind::Commit, "commit callback failed"));
            }
            return Err(Error::new(
                ErrorKind::Commit,
                "commit callback failed: it returned NULL without setting a Python exception",
            ));
        }
        // SAFETY: obj is a new reference (the commit contract), owned from here on.
        Ok(unsafe { Bound::from_owned_ptr(py, obj) }.unbind())
    }

    fn complete(&mut self, _py: Python<'_>, result: &Bound<'_, PyAny>) -> Result<()> {
        let Some(complete) = self.complete.take() else {
            return Ok(());
        };
        // SAFETY: called once, GIL held; result is borrowed for the duration of the call.
        match unsafe { complete(self.user_data, result.as_ptr(), std::ptr::null()) } {
            0 => Ok(()),
            rc => Err(Error::new(ErrorKind::Callback, format!("completion callback failed (returned {rc})"))),
        }
    }

    fn supports_raw(&self) -> bool {
        true
    }

    fn commit_raw(&mut self) -> *mut ffi::PyObject {
        match self.commit {
            // SAFETY: as in `commit`; the replica's interpreter is current with its GIL.
            Some(commit) => unsafe { commit(self.user_data) },
            None => std::ptr::null_mut(),
        }
    }

    fn complete_raw(&mut self, result: *mut ffi::PyObject) -> Result<()> {
        let Some(complete) = self.complete.take() else {
            return Ok(());
        };
        // SAFETY: called once with the replica's GIL held; result is borrowed.
        match unsafe { complete(self.user_data, result, std::ptr::null()) } {
            0 => Ok(()),
            rc => Err(Error::new(ErrorKind::Callback, format!("completion callback failed (returned {rc})"))),
        }
    }

    fn fail(&mut self, e: &Error) {
        let Some(complete) = self.complete.take() else {
            return;
        };
        let err = pysched_error::new(e.clone());
        // SAFETY: called once; the error object lives until after the call.
        unsafe { complete(self.user_data, std::ptr::null_mut(), &err) };
    }
}

impl Drop for CallbackJob {
    fn drop(&mut self) {
        if let Some(drop_fn) = self.drop.take() {
            // SAFETY: the finalizer of user_data, called exactly once (CallbackJob is dropped once).
            unsafe { drop_fn(self.user_data) };
        }
    }
}

#[inline]
pub(super) fn fail_job(job: Option<JobSlot>, error: &Error) {
    if let Some(mut job) = job {
        // A panicking callback must not take the worker (and every later item) with it.
        let _ = guarded("fail", || {
            job.fail(error);
            Ok(())
        });
    }
}

/// Runs one job callback, turning a panic into an internal error of that item.
#[inline]
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::internal(format!("the item's {what} callback panicked"))))
}
