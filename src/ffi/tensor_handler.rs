//! `pysched_tensor_handler`: a Python function bound with a tensor signature. Items are
//! queued with one host pointer per input (copied before the call returns, or borrowed
//! until the batch is gathered) or a fill callback that writes the item's rows in place
//! without the GIL; their rows of each output are copied to caller memory. One Python
//! call per batch receives one batch tensor per input (DLPack and the buffer protocol).

use super::future::pysched_future;
use super::handler::{handler_options, pysched_drop_fn, pysched_handler_options};
use super::manager::pysched_manager;
use super::{boundary, handle, out_ptr, pysched_error, pysched_status, utf8};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stats::{HandlerStats, LatencySummary};
use crate::tensor::job::{CTensorHooks, Feed, Hooks, Ptrs, Sink, TensorBox, TensorHooks, TensorJob};
use crate::tensor::{CopiedIn, Placement, TensorHandler, TensorItemOptions, TensorSignature, TensorSpec};
use std::ffi::{c_char, c_int, c_void};
use std::time::{Duration, Instant};

/// A tensor handler handle. Single owner; free with `pysched_tensor_handler_free`, which
/// drains its queue first.
pub struct pysched_tensor_handler {
    pub(crate) inner: TensorHandler,
}

/// One input or output of a signature: a `pysched_dtype` value and the shape of ONE item
/// (`ndim` sizes, each >= 1; `ndim` 0 is a scalar per item). Read during the load only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_tensor_spec {
    pub dtype: u32,
    pub ndim: u32,
    /// `ndim` sizes (may be NULL when `ndim` is 0).
    pub shape: *const i64,
}

/// A tensor handler's signature. Read during the load only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_tensor_signature {
    /// `n_inputs` (>= 1) input specs.
    pub inputs: *const pysched_tensor_spec,
    pub n_inputs: u32,
    /// `n_outputs` output specs (may be NULL when `n_outputs` is 0).
    pub outputs: *const pysched_tensor_spec,
    pub n_outputs: u32,
    /// -1: batch tensors in host memory; >= 0: on that CUDA device (pinned staging, one
    /// upload per input per batch on the handler's own stream).
    pub device: i32,
}

fn spec(s: &pysched_tensor_spec, what: &str) -> Result<TensorSpec> {
    let dtype = DType::from_raw(s.dtype)
        .ok_or_else(|| Error::invalid_argument(format!("{what}.dtype {} is not a pysched_dtype", s.dtype)))?;
    if s.ndim as usize > crate::tensor::MAX_ITEM_NDIM {
        return Err(Error::invalid_argument(format!(
            "{what}.ndim {} exceeds the maximum of {}",
            s.ndim,
            crate::tensor::MAX_ITEM_NDIM
        )));
    }
    if s.ndim > 0 && s.shape.is_null() {
        return Err(Error::invalid_argument(format!("{what}.shape is NULL with ndim {}", s.ndim)));
    }
    let dims: &[i64] = if s.ndim == 0 {
        &[]
    } else {
        // SAFETY: `ndim` readable sizes (documented), checked non-NULL.
        unsafe { std::slice::from_raw_parts(s.shape, s.ndim as usize) }
    };
    let shape = dims
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            usize::try_from(n)
                .map_err(|_| Error::invalid_argument(format!("{what}.shape[{d}] is negative ({n})")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TensorSpec { dtype, shape })
}

fn specs(ptr: *const pysched_tensor_spec, n: u32, what: &str) -> Result<Vec<TensorSpec>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("signature->{what} is NULL with {n} of them")));
    }
    if n as usize > crate::tensor::MAX_TENSORS {
        return Err(Error::invalid_argument(format!(
            "signature has {n} {what}, at most {} are allowed",
            crate::tensor::MAX_TENSORS
        )));
    }
    // SAFETY: `n` readable specs (documented), checked non-NULL.
    let all = unsafe { std::slice::from_raw_parts(ptr, n as usize) };
    all.iter().enumerate().map(|(k, s)| spec(s, &format!("{what}[{k}]"))).collect()
}

pub(crate) fn signature(s: &pysched_tensor_signature) -> Result<TensorSignature> {
    let placement = match s.device {
        -1 => Placement::Host,
        d if d >= 0 => Placement::Cuda(d),
        d => {
            return Err(Error::invalid_argument(format!(
                "signature->device {d} is neither -1 (host) nor a CUDA ordinal"
            )))
        }
    };
    Ok(TensorSignature {
        inputs: specs(s.inputs, s.n_inputs, "inputs")?,
        outputs: specs(s.outputs, s.n_outputs, "outputs")?,
        placement,
    })
}

/// Loads `module.entry_point` as a tensor handler: it is called once per batch with one
/// batch tensor per input, shape `(B, *item_shape)`, and returns one array or tensor per
/// output (a tuple for several) of shape `(B, *item_shape)` and the declared dtype.
///
/// `options` may be NULL (defaults); `subinterpreters` must be 0. A bad signature
/// (unknown dtype, a size < 1, too large, no input) is PYSCHED_INVALID_ARGUMENT; CUDA
/// placement without a driver or device is PYSCHED_CUDA. `out_handler` receives the
/// handle on success only. `out_error` may be NULL.
/// Thread-safe. Blocks while importing the module (takes the GIL).
#[no_mangle]
pub extern "C" fn pysched_manager_load_tensor(
    manager: *const pysched_manager,
    module: *const c_char,
    entry_point: *const c_char,
    signature: *const pysched_tensor_signature,
    options: *const pysched_handler_options,
    out_handler: *mut *mut pysched_tensor_handler,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let m = handle(manager, "manager")?;
        let out = out_ptr(out_handler, "out_handler")?;
        let module = utf8(module, "module")?;
        let entry_point = utf8(entry_point, "entry_point")?;
        let sig = self::signature(handle(signature, "signature")?)?;
        // SAFETY: NULL or a readable options struct (documented).
        let opts = handler_options(unsafe { options.as_ref() })?;
        let handler = m.inner.load_tensor(module, entry_point, sig, opts)?;
        // SAFETY: `out` was checked non-NULL and points to writable storage (documented).
        unsafe { *out = Box::into_raw(Box::new(pysched_tensor_handler { inner: handler })) };
        Ok(())
    })
}

/// Writes an item's inputs in place: `slots[k]` is its row of input `k` (the input's item
/// bytes, C order). Called once, on a pool thread WITHOUT the GIL, ahead of execution (up
/// to `prefetch_depth` batches; the items of a batch spread over idle workers). Return 0,
/// or non-zero to fail the item with PYSCHED_COMMIT.
pub type pysched_tensor_fill_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, slots: *const *mut c_void) -> c_int>;
/// Hears an item's outcome exactly once: `error` NULL once its rows of every output are
/// in the destinations, else why it failed (borrowed; copy it with
/// `pysched_error_clone`). Called WITHOUT the GIL on the success path (right after the
/// batch's GIL hold) and from any thread on failure, before `drop` and before the
/// item's future (if any) resolves.
pub type pysched_tensor_complete_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, error: *const pysched_error)>;

// An enum rather than a `const`: cbindgen exports no constants to the header.
/// Bits of `pysched_tensor_item.flags`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pysched_tensor_flags {
    /// The input pointers stay valid until the item completes, so they are read when
    /// the batch is gathered instead of copied at queueing.
    PYSCHED_TENSOR_BORROW_INPUTS = 1,
}

const BORROW_INPUTS: u32 = pysched_tensor_flags::PYSCHED_TENSOR_BORROW_INPUTS as u32;

/// One item of a tensor handler. Read during the queue call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pysched_tensor_item {
    /// Passed to every callback; must be usable from any thread.
    pub user_data: *mut c_void,
    /// One host pointer per input, each to one item's bytes (C order): copied before the
    /// queue call returns (unless PYSCHED_TENSOR_BORROW_INPUTS). NULL when `fill` is set.
    pub inputs: *const *const c_void,
    /// Writes the inputs in place instead (NULL: `inputs` are copied).
    pub fill: pysched_tensor_fill_fn,
    /// One destination per output, each valid for one item's bytes of that output until
    /// `complete` runs. May be NULL when the signature has no output.
    pub outputs: *const *mut c_void,
    /// Optional.
    pub complete: pysched_tensor_complete_fn,
    /// Optional; called exactly once, after `complete`, on every path.
    pub drop: pysched_drop_fn,
    /// Fail the item with PYSCHED_TIMED_OUT if it has not started this many microseconds
    /// after queueing; 0 means no deadline.
    pub timeout_us: u64,
    /// PYSCHED_TENSOR_BORROW_INPUTS or 0.
    pub flags: u32,
}

/// Queues one item: its inputs copied (or borrowed, or filled in place later), then, in
/// a batch, one Python call; its rows of each output are copied to `item->outputs`, then
/// `complete`, then `drop`.
///
/// Ownership: once `item` is non-NULL, its callbacks are consumed: `complete` and `drop`
/// (if set) are each called exactly once, also when this function returns an error
/// (then before it returns). `item` itself and the `inputs`/`outputs` arrays are read
/// during the call only.
///
/// `out_future` may be NULL; when not NULL it receives, on success only, a future owned
/// by the caller that resolves after `complete` and `drop`: `pysched_future_take` then
/// gives PYSCHED_OK with a NULL result (no Python value), or the item's error.
/// `out_error` may be NULL.
/// Thread-safe. Never blocks, except on a full bounded queue under PYSCHED_FULL_BLOCK.
#[no_mangle]
pub extern "C" fn pysched_tensor_handler_queue(
    handler: *const pysched_tensor_handler,
    item: *const pysched_tensor_item,
    out_future: *mut *mut pysched_future,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        // SAFETY: NULL or a readable item (documented).
        let Some(item) = (unsafe { item.as_ref() }).copied() else {
            return Err(Error::invalid_argument("item is NULL"));
        };
        // The fn types are the same as the C ABI's (CTensorHooks lives in the tensor module).
        let mut hooks = CTensorHooks {
            user_data: item.user_data,
            fill: item.fill,
            complete: item.complete,
            drop: item.drop,
        };
        let parts = handle(handler, "handler").and_then(|h| read_item(&h.inner, &item).map(|p| (h, p)));
        let (h, (input, sink)) = match parts {
            Ok(p) => p,
            Err(e) => {
                hooks.complete(Some(&e));
                return Err(e);
            }
        };
        let options = TensorItemOptions {
            // A timeout too large for an Instant means no deadline.
            deadline: (item.timeout_us > 0)
                .then(|| Instant::now().checked_add(Duration::from_micros(item.timeout_us)))
                .flatten(),
        };
        let job = input.into_job(sink, Hooks::C(hooks));
        // A refusal (full queue, shut down) has reached the callbacks already.
        let future = h.inner.submit(job, options, !out_future.is_null())?;
        if let Some(future) = future {
            // SAFETY: non-NULL (a future was asked for); writable (documented).
            unsafe { *out_future = Box::into_raw(Box::new(pysched_future { inner: future, tensor: true })) };
        }
        Ok(())
    })
}

/// The item's inputs and output destinations, checked against the signature.
fn read_item(h: &TensorHandler, item: &pysched_tensor_item) -> Result<(Input, Sink)> {
    let sig = h.signature();
    let n_in = sig.inputs.len();
    let n_out = sig.outputs.len();
    if item.flags & !BORROW_INPUTS != 0 {
        return Err(Error::invalid_argument(format!("item->flags {:#x} has unknown bits", item.flags)));
    }
    let input = match (item.fill.is_some(), item.inputs.is_null()) {
        (true, true) => Input::Feed(Feed::Fill),
        (true, false) => return Err(Error::invalid_argument("item has both inputs and a fill callback")),
        (false, true) => {
            return Err(Error::invalid_argument("item->inputs is NULL and it has no fill callback"))
        }
        (false, false) => {
            // SAFETY: one readable pointer per input (documented), checked non-NULL.
            let ptrs = unsafe { std::slice::from_raw_parts(item.inputs, n_in) };
            if let Some(k) = ptrs.iter().position(|p| p.is_null()) {
                return Err(Error::invalid_argument(format!("item->inputs[{k}] is NULL")));
            }
            if item.flags & BORROW_INPUTS != 0 {
                Input::Feed(Feed::Borrowed(Ptrs::new(ptrs.iter().map(|&p| p as usize))))
            } else {
                // SAFETY: each input points to one item's bytes of its spec (documented).
                Input::Copied(unsafe { h.copy_in_raw(ptrs.iter().map(|p| p.cast::<u8>()))? })
            }
        }
    };
    let sink = if n_out == 0 {
        Sink::Discard
    } else if item.outputs.is_null() {
        return Err(Error::invalid_argument(format!(
            "item->outputs is NULL; the signature has {n_out} outputs"
        )));
    } else {
        // SAFETY: one readable destination per output (documented), checked non-NULL.
        let dests = unsafe { std::slice::from_raw_parts(item.outputs, n_out) };
        if let Some(k) = dests.iter().position(|p| p.is_null()) {
            return Err(Error::invalid_argument(format!("item->outputs[{k}] is NULL")));
        }
        Sink::Pointers(Ptrs::new(dests.iter().map(|&p| p as usize)))
    };
    Ok((input, sink))
}

/// Where a C item's inputs come from.
enum Input {
    Feed(Feed),
    /// Copied at queueing (into a row of a batch set, or a buffer of its own).
    Copied(CopiedIn),
}

impl Input {
    #[inline]
    fn into_job(self, sink: Sink, hooks: Hooks) -> TensorBox {
        match self {
            Input::Feed(feed) => TensorBox::heap(TensorJob::new(feed, sink, hooks)),
            Input::Copied(copied) => copied.into_job(sink, hooks),
        }
    }
}

/// Writes the handler's stats to `out_stats` (as `pysched_handler_stats`).
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_tensor_handler_stats(
    handler: *const pysched_tensor_handler,
    out_stats: *mut HandlerStats,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let out = out_ptr(out_stats, "out_stats")?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = h.inner.stats() };
        Ok(())
    })
}

/// Writes the handler's latency and batch-size quantiles (as `pysched_handler_latency`).
/// Thread-safe. Never blocks on Python.
#[no_mangle]
pub extern "C" fn pysched_tensor_handler_latency(
    handler: *const pysched_tensor_handler,
    out_latency: *mut LatencySummary,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        let h = handle(handler, "handler")?;
        let out = out_ptr(out_latency, "out_latency")?;
        // SAFETY: checked non-NULL; writable (documented).
        unsafe { *out = h.inner.latency_summary() };
        Ok(())
    })
}

/// Blocks until every item queued so far has finished (each completion ran).
/// Thread-safe. Blocks; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_tensor_handler_drain(
    handler: *const pysched_tensor_handler,
    out_error: *mut *mut pysched_error,
) -> pysched_status {
    boundary(out_error, || {
        handle(handler, "handler")?.inner.drain();
        Ok(())
    })
}

/// Drains the handler, then releases it. NULL is a no-op.
/// Blocks until drained; releases the GIL while waiting if the caller holds it.
#[no_mangle]
pub extern "C" fn pysched_tensor_handler_free(handler: *mut pysched_tensor_handler) {
    if !handler.is_null() {
        super::boundary_value((), || {
            // SAFETY: created by pysched_manager_load_tensor (Box) and freed exactly once.
            drop(unsafe { Box::from_raw(handler) })
        });
    }
}
