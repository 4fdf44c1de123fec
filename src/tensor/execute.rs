//! The batch path of a tensor handler: the batch's rows are staged (gathered into the
//! batch buffers, compacted, uploaded for CUDA placement) without the GIL; then, under one
//! GIL hold, one view per input, one Python call, each output read once and its rows
//! copied to the items' destinations; after the GIL, each item's completion.

use super::job::{Sink, TensorBox};
use super::output::{read_output, split_result, Expect, OutputRows};
use super::{Staged, TensorExec};
use crate::error::{Error, ErrorKind, Result};
use crate::python_err::report_stray;
use crate::scheduler::{clock, Entry, HandlerCore, JobSlot};
use crate::stats::LocalHistogram;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// Runs one claimed batch of a tensor handler. Returns the completed items nobody waits
/// on but their callbacks, for the caller to finalize after the GIL (as the list path).
pub(crate) fn run_batch(core: &HandlerCore, exec: &TensorExec, batch: Vec<Entry>) -> Vec<JobSlot> {
    let mut live: Vec<(Entry, TensorBox)> = Vec::with_capacity(batch.len());
    for entry in batch {
        match entry.take_slot() {
            Some(JobSlot::Tensor(job)) => live.push((entry, job)),
            other => core.fail_started(
                &entry,
                other,
                Error::internal("a tensor handler got an item that is not a tensor item"),
            ),
        }
    }
    if live.is_empty() {
        return Vec::new();
    }
    let staged = exec.stage(live.iter_mut().map(|(_, job)| &mut **job));
    let staged = match staged {
        Ok(staged) => staged,
        Err(error) => return fail_all(core, live, error),
    };
    let n = live.len();
    let gil_asked = clock::now_ns();
    let called = crate::runtime::attach(|py| {
        let start_ns = clock::now_ns();
        core.histograms.gil_wait_ns.record(start_ns.saturating_sub(gil_asked));
        let mut waits = LocalHistogram::default();
        for (entry, _) in &live {
            waits.record(start_ns.saturating_sub(entry.enqueued_ns()));
        }
        core.histograms.queue_wait_ns.merge(&waits);
        report_stray(py, &core.name, "code run earlier on this worker");
        let called = call_and_split(py, core, exec, &staged, &mut live, start_ns);
        // The views, the results and their DLPack capsules were released by now.
        report_stray(py, &core.name, "a destructor run as the batch's tensors were released");
        called
    });
    drop(staged);
    if let Err(error) = called {
        return fail_all(core, live, error);
    }
    // The batch's accounting in one step, before any completion runs (as the list path).
    core.batch_succeeded(n);
    let mut detached = Vec::with_capacity(n);
    for (entry, job) in live {
        if entry.has_completion() {
            // Its completion runs before its future resolves.
            drop(job);
            entry.resolve(Ok(None));
        } else {
            detached.push(JobSlot::Tensor(job));
        }
    }
    detached
}

fn fail_all(core: &HandlerCore, live: Vec<(Entry, TensorBox)>, error: Error) -> Vec<JobSlot> {
    for (entry, job) in live {
        core.fail_started(&entry, Some(JobSlot::Tensor(job)), error.clone());
    }
    Vec::new()
}

/// Under the GIL: the views, the call, the outputs read and split into the items' sinks.
fn call_and_split(
    py: Python<'_>,
    core: &HandlerCore,
    exec: &TensorExec,
    staged: &Staged,
    live: &mut [(Entry, TensorBox)],
    start_ns: u64,
) -> Result<()> {
    let n = live.len();
    let sig = &exec.signature;
    let mut views = Vec::with_capacity(sig.inputs.len());
    for (k, spec) in sig.inputs.iter().enumerate() {
        let view = exec.view(staged, k, spec, n);
        let obj = Bound::new(py, view)
            .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, "creating a batch tensor"))?;
        views.push(obj.into_any());
    }
    let args = PyTuple::new(py, views)
        .map_err(|e| Error::from_pyerr_context(py, &e, ErrorKind::Internal, "building the arguments"))?;
    // The handler's device current on this thread during the call (as torch expects).
    let _context = exec.device.as_ref().map(|d| d.enter()).transpose()?;
    let committed = clock::now_ns();
    let called = core.function.bind(py).call1(args);
    core.record_timings(n, committed.saturating_sub(start_ns), clock::now_ns().saturating_sub(committed), n);
    let result = called.map_err(|e| {
        Error::from_pyerr_context(py, &e, ErrorKind::PythonException, &format!("{} raised", core.name))
    })?;
    let objects = split_result(result, sig.outputs.len(), &core.name)?;
    let rows: Vec<OutputRows> = objects
        .iter()
        .zip(&sig.outputs)
        .enumerate()
        .map(|(k, (obj, spec))| {
            let expect = Expect { name: &core.name, k, spec, rows: n, placement: sig.placement };
            read_output(py, obj, &expect, exec.device.as_ref())
        })
        .collect::<Result<_>>()?;
    for (_, job) in live.iter_mut() {
        // The item's row of the batch (its inputs' row, counted from the batch's first).
        let i = job.row_now().map_or(0, |(_, row)| row - staged.first);
        match &job.sink {
            Sink::Pointers(dests) => {
                for (out, &dest) in rows.iter().zip(dests.as_slice()) {
                    // SAFETY: row i of a checked output of n rows; the destination is the
                    // caller's memory of at least row_bytes, valid until the item's
                    // completion (the queueing contract).
                    unsafe { std::ptr::copy_nonoverlapping(out.row(i), dest as *mut u8, out.row_bytes) };
                }
            }
            Sink::Owned(kept) => {
                let copied: Vec<Vec<u8>> = rows
                    .iter()
                    // SAFETY: row i of a checked output of n rows.
                    .map(|out| unsafe { std::slice::from_raw_parts(out.row(i), out.row_bytes) }.to_vec())
                    .collect();
                *kept.lock().unwrap_or_else(|p| p.into_inner()) = copied;
            }
            Sink::Discard => {}
        }
        job.rows_written();
    }
    Ok(())
}
