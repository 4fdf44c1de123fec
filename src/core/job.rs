//! The unit of work: the [`Job`] trait a submitter implements, the slot an item keeps
//! its job in ([`JobSlot`]), and the guard every job callback runs under.
//!
//! A leaf of the core: uses `crate::error` and pyo3; stores the job types of the layers
//! that submit (`tensor::job`) but calls nothing of them beyond the `Job` trait.

use crate::error::{pysched_error, Error, ErrorKind, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_int, c_void};

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
/// queued item instead of two, and one cross-thread free less), any other job boxed.
pub(crate) enum JobSlot {
    Callback(CallbackJob),
    Boxed(Box<dyn Job>),
    /// A tensor handler's item (see `tensor::execute`).
    Tensor(crate::tensor::job::TensorBox),
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
            JobSlot::Tensor(job) => &**job,
        }
    }
}

impl std::ops::DerefMut for JobSlot {
    #[inline]
    fn deref_mut(&mut self) -> &mut (dyn Job + 'static) {
        match self {
            JobSlot::Callback(job) => job,
            JobSlot::Boxed(job) => &mut **job,
            JobSlot::Tensor(job) => &mut **job,
        }
    }
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
