//! Tensor handlers through the Rust API: batch tensors in, rows out, and every item
//! resolved exactly once on every path.

mod common;

use pyscheduler::{DType, ErrorKind, HandlerOptions, TensorItemOptions, TensorSignature, TensorSpec};
use std::time::{Duration, Instant};

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn linear_sig() -> TensorSignature {
    TensorSignature::new(vec![TensorSpec::new(DType::F32, &[64])], vec![TensorSpec::new(DType::F32, &[16])])
}

fn reference(x: &[f32]) -> Vec<f32> {
    (0..16).map(|j| (0..64).map(|i| x[i] * ((((i * 16 + j) % 7) as f32) - 3.0) / 8.0).sum()).collect()
}

fn opts(batch: usize) -> HandlerOptions {
    HandlerOptions { batch_size: batch, ..Default::default() }
}

#[test]
fn linear_rows_come_back_per_item() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let h = m.load_tensor("tensor_testmod", "linear", linear_sig(), opts(32)).unwrap();
    let inputs: Vec<Vec<f32>> =
        (0..200).map(|n| (0..64).map(|i| ((n * 7 + i) % 13) as f32).collect()).collect();
    let futures: Vec<_> =
        inputs.iter().map(|x| h.queue(&[&f32s(x)], TensorItemOptions::default()).unwrap()).collect();
    for (x, f) in inputs.iter().zip(futures) {
        let rows = f.wait().unwrap();
        let got = rows.get::<f32>(0);
        let want = reference(x);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-3, "{got:?} vs {want:?}");
        }
    }
    let s = h.stats();
    assert_eq!(s.completed, 200);
    assert_eq!(s.total_enqueued, 200);
}

#[test]
fn fill_in_place_and_several_inputs_and_outputs() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let sig = TensorSignature::new(
        vec![TensorSpec::new(DType::F64, &[3]), TensorSpec::new(DType::F64, &[3])],
        vec![TensorSpec::new(DType::F64, &[3]), TensorSpec::new(DType::F64, &[])],
    );
    let h = m
        .load_tensor(
            "tensor_testmod",
            "add_and_sum",
            sig,
            HandlerOptions { batch_size: 8, prefetch_depth: 2, ..Default::default() },
        )
        .unwrap();
    let futures: Vec<_> = (0..50)
        .map(|n| {
            h.queue_fill(
                move |rows| {
                    for (k, row) in rows.iter_mut().enumerate() {
                        for (i, chunk) in row.chunks_mut(8).enumerate() {
                            chunk.copy_from_slice(&((n * 10 + k * 100 + i) as f64).to_ne_bytes());
                        }
                    }
                    Ok(())
                },
                TensorItemOptions::default(),
            )
            .unwrap()
        })
        .collect();
    for (n, f) in futures.into_iter().enumerate() {
        let rows = f.wait().unwrap();
        let a: Vec<f64> = (0..3).map(|i| (n * 10 + i) as f64).collect();
        let b: Vec<f64> = (0..3).map(|i| (n * 10 + 100 + i) as f64).collect();
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(rows.get::<f64>(0), sum);
        assert_eq!(rows.get::<f64>(1), vec![a.iter().sum::<f64>()]);
    }
}

#[test]
fn wrong_results_fail_every_item_with_a_clear_error() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let x = f32s(&[1.0; 64]);
    for (function, needle) in [
        ("wrong_rows", "has shape (2, 16); expected shape (1, 16) float32"),
        ("wrong_dtype", "has dtype float64"),
        ("wrong_item_shape", "has shape (1, 15)"),
        ("not_a_tensor", "is a list, not an array or tensor"),
        ("raises", "ValueError: bad batch of 1"),
    ] {
        let h = m.load_tensor("tensor_testmod", function, linear_sig(), opts(1)).unwrap();
        let e = h.queue(&[&x], TensorItemOptions::default()).unwrap().wait().unwrap_err();
        assert!(e.to_string().contains(needle), "{function}: {e}");
        assert_eq!(e.kind(), ErrorKind::PythonException, "{function}");
        // The handler goes on working after a failed batch.
        assert_eq!(h.stats().failed, 1);
    }
}

#[test]
fn strided_and_dlpack_results_and_returning_the_input() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let h = m.load_tensor("tensor_testmod", "non_contiguous", linear_sig(), opts(4)).unwrap();
    let got = h.queue(&[&f32s(&x)], TensorItemOptions::default()).unwrap().wait().unwrap().get::<f32>(0);
    assert_eq!(got, (0..16).map(|i| (i * 4) as f32).collect::<Vec<_>>());

    let same = TensorSignature::new(
        vec![TensorSpec::new(DType::F32, &[64])],
        vec![TensorSpec::new(DType::F32, &[64])],
    );
    for function in ["echo", "via_dlpack"] {
        let h = m.load_tensor("tensor_testmod", function, same.clone(), opts(4)).unwrap();
        let got = h.queue(&[&f32s(&x)], TensorItemOptions::default()).unwrap().wait().unwrap().get::<f32>(0);
        let factor = if function == "echo" { 1.0 } else { 2.0 };
        assert_eq!(got, x.iter().map(|v| v * factor).collect::<Vec<_>>(), "{function}");
    }
}

#[test]
fn bad_input_sizes_are_refused_at_queueing() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let h = m.load_tensor("tensor_testmod", "linear", linear_sig(), opts(4)).unwrap();
    let e = h.queue(&[&[0u8; 12]], TensorItemOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("input 0 has 12 bytes"), "{e}");
    let e = h.queue(&[], TensorItemOptions::default()).err().unwrap();
    assert!(e.to_string().contains("0 inputs given"), "{e}");
}

#[test]
fn bad_signatures_are_invalid_arguments() {
    let m = common::manager();
    let bad = TensorSignature::new(vec![TensorSpec::new(DType::F32, &[0])], vec![]);
    let e = m.load_tensor("tensor_testmod", "linear", bad, opts(4)).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = m
        .load_tensor(
            "tensor_testmod",
            "linear",
            linear_sig(),
            HandlerOptions { subinterpreters: 2, ..opts(4) },
        )
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[test]
fn a_kept_input_is_never_overwritten_and_the_pool_stays_bounded() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let sig =
        TensorSignature::new(vec![TensorSpec::new(DType::I64, &[4])], vec![TensorSpec::new(DType::I64, &[])]);
    let h = m.load_tensor("tensor_testmod", "keep_input", sig, opts(4)).unwrap();
    for round in 0..20i64 {
        let fs: Vec<_> = (0..4)
            .map(|i| {
                let row: Vec<u8> = (0..4).flat_map(|j| (round * 100 + i * 10 + j).to_ne_bytes()).collect();
                h.queue(&[&row], TensorItemOptions::default()).unwrap()
            })
            .collect();
        for (i, f) in fs.into_iter().enumerate() {
            assert_eq!(f.wait().unwrap().get::<i64>(0), vec![round * 100 + i as i64 * 10]);
        }
    }
    assert!(h.free_buffer_sets() <= 3, "pool kept {} sets", h.free_buffer_sets());
}

#[test]
fn deadlines_and_cancel_resolve_items_exactly_once() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let sig =
        TensorSignature::new(vec![TensorSpec::new(DType::U8, &[2])], vec![TensorSpec::new(DType::I64, &[])]);
    let h = m
        .load_tensor(
            "tensor_testmod",
            "batch_size",
            sig,
            HandlerOptions {
                batch_size: 64,
                max_batch_delay: Duration::from_millis(300),
                ..Default::default()
            },
        )
        .unwrap();
    let past = TensorItemOptions { deadline: Some(Instant::now()) };
    let expired = h.queue(&[&[1, 2]], past).unwrap();
    let cancelled = h.queue(&[&[1, 2]], TensorItemOptions::default()).unwrap();
    assert!(cancelled.cancel());
    let kept = h.queue(&[&[1, 2]], TensorItemOptions::default()).unwrap();
    assert_eq!(expired.wait().unwrap_err().kind(), ErrorKind::TimedOut);
    assert_eq!(cancelled.wait().unwrap_err().kind(), ErrorKind::Cancelled);
    assert_eq!(kept.wait().unwrap().get::<i64>(0), vec![1]);
    let s = h.stats();
    assert_eq!((s.completed, s.cancelled, s.expired), (1, 1, 1));
}

#[test]
fn many_producers_every_item_exactly_once() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let h = m.load_tensor("tensor_testmod", "linear", linear_sig(), opts(64)).unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let h = &h;
            let done = &done;
            s.spawn(move || {
                for n in 0..500 {
                    let x: Vec<f32> = (0..64).map(|i| ((t * 1000 + n + i) % 17) as f32).collect();
                    let out = std::sync::Arc::new(std::sync::Mutex::new(vec![0f32; 16]));
                    let dest = out.lock().unwrap().as_mut_ptr() as *mut u8;
                    let (tx, rx) = std::sync::mpsc::channel();
                    // SAFETY: `out` outlives the item (we wait for `done` below).
                    unsafe {
                        h.queue_into(
                            &[&f32s(&x)],
                            &[dest],
                            move |r| tx.send(r).unwrap(),
                            TensorItemOptions::default(),
                        )
                        .unwrap()
                    };
                    rx.recv().unwrap().unwrap();
                    assert!(rx.try_recv().is_err(), "completion ran twice");
                    let got = out.lock().unwrap().clone();
                    let want = reference(&x);
                    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3));
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(done.into_inner(), 2000);
    assert_eq!(h.stats().completed, 2000);
}

/// tensor_testmod.calls: sleep_echo calls started so far.
fn echo_calls() -> i64 {
    use pyo3::prelude::*;
    pyscheduler::runtime::attach(|py| -> PyResult<i64> {
        py.import("tensor_testmod")?.getattr("calls")?.extract()
    })
    .unwrap()
}

/// (int64 scalar) -> (int64 scalar): tensor_testmod.sleep_echo.
fn echo_sig() -> TensorSignature {
    TensorSignature::new(vec![TensorSpec::new(DType::I64, &[])], vec![TensorSpec::new(DType::I64, &[])])
}

/// Queues a sleep_echo item that sleeps `ms` and returns once its call has started.
fn start_blocker(h: &pyscheduler::TensorHandler, ms: i64) -> pyscheduler::TensorFuture {
    let before = echo_calls();
    let f = h.queue(&[&ms.to_ne_bytes()], TensorItemOptions::default()).unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    while echo_calls() == before {
        assert!(Instant::now() < give_up, "the blocker never started");
        std::thread::sleep(Duration::from_micros(500));
    }
    f
}

/// Copied items go straight into rows of a set of batch buffers (host placement), and a
/// batch never spans two sets: then each batch runs on the rows its items were copied to
/// (no gather), which the addresses Python sees show. Through a future (shared items)
/// and through `queue_into` (detached ones).
#[test]
fn copied_items_run_where_they_were_copied_and_batches_line_up_with_the_sets() {
    if common::skip_without_numpy() {
        return;
    }
    use std::sync::mpsc;
    let m = common::manager();
    let sig = TensorSignature::new(
        vec![TensorSpec::new(DType::I64, &[])],
        vec![TensorSpec::new(DType::I64, &[]), TensorSpec::new(DType::I64, &[])],
    );
    for detached in [false, true] {
        let h = m.load_tensor("tensor_testmod", "sleep_size_base", sig.clone(), opts(4)).unwrap();
        // The blocker takes row 0 of a fresh set and runs alone while the others queue.
        let blocker = {
            let before = echo_calls();
            let f = h.queue(&[&150i64.to_ne_bytes()], TensorItemOptions::default()).unwrap();
            while echo_calls() == before {
                std::thread::sleep(Duration::from_micros(200));
            }
            f
        };
        let (tx, rx) = mpsc::channel();
        let mut outs = [[0i64; 2]; 10];
        let mut futures = Vec::new();
        for (i, out) in outs.iter_mut().enumerate() {
            if detached {
                let tx = tx.clone();
                let dests = [out.as_mut_ptr().cast::<u8>(), out[1..].as_mut_ptr().cast::<u8>()];
                // SAFETY: `outs` outlives every item (all are received below).
                unsafe {
                    h.queue_into(
                        &[&0i64.to_ne_bytes()],
                        &dests,
                        move |r| tx.send((i, r)).unwrap(),
                        Default::default(),
                    )
                }
                .unwrap();
            } else {
                futures.push(h.queue(&[&0i64.to_ne_bytes()], TensorItemOptions::default()).unwrap());
            }
        }
        let b = blocker.wait().unwrap();
        let base0 = b.get::<i64>(1)[0];
        assert_eq!(b.get::<i64>(0), vec![1]);
        let got: Vec<(i64, i64)> = if detached {
            for _ in 0..10 {
                rx.recv_timeout(Duration::from_secs(10)).unwrap().1.unwrap();
            }
            outs.iter().map(|o| (o[0], o[1])).collect()
        } else {
            futures
                .into_iter()
                .map(|f| f.wait().unwrap())
                .map(|r| (r.get::<i64>(0)[0], r.get::<i64>(1)[0]))
                .collect()
        };
        let sizes: Vec<i64> = got.iter().map(|g| g.0).collect();
        assert_eq!(sizes, [3, 3, 3, 4, 4, 4, 4, 3, 3, 3], "detached {detached}");
        // Rows 1-3 of the blocker's set, where they were copied: one row (8 bytes) on.
        assert!(got[..3].iter().all(|g| g.1 == base0 + 8), "detached {detached}: {got:?} vs {base0:#x}");
        assert!(got[3..7].iter().all(|g| g.1 == got[3].1) && got[7..].iter().all(|g| g.1 == got[7].1));
    }
}

#[test]
fn float16_rows_go_through_as_numpy_half() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let sig = TensorSignature::new(
        vec![TensorSpec::new(DType::F16, &[4])],
        vec![TensorSpec::new(DType::F16, &[4])],
    );
    let h = m.load_tensor("tensor_testmod", "half", sig, opts(4)).unwrap();
    // IEEE half bit patterns: 1, 2, 3, -2 -> 0.5, 1, 1.5, -1.
    let x: Vec<u8> = [0x3C00u16, 0x4000, 0x4200, 0xC000].iter().flat_map(|v| v.to_ne_bytes()).collect();
    let want: Vec<u8> = [0x3800u16, 0x3C00, 0x3E00, 0xBC00].iter().flat_map(|v| v.to_ne_bytes()).collect();
    let fs: Vec<_> = (0..10).map(|_| h.queue(&[&x], TensorItemOptions::default()).unwrap()).collect();
    for f in fs {
        assert_eq!(f.wait().unwrap().0, vec![want.clone()]);
    }
    // A float32 result for a float16 output is refused, naming both.
    let h = m
        .load_tensor(
            "tensor_testmod",
            "linear",
            TensorSignature::new(
                vec![TensorSpec::new(DType::F32, &[64])],
                vec![TensorSpec::new(DType::F16, &[16])],
            ),
            opts(1),
        )
        .unwrap();
    let e = h.queue(&[&f32s(&[0.0; 64])], TensorItemOptions::default()).unwrap().wait().unwrap_err();
    assert!(e.to_string().contains("has dtype float32; expected shape (1, 16) float16"), "{e}");
}

/// (uint8[2]) -> (int64 scalar): each item gets the size of its batch.
fn batch_size_handler(options: HandlerOptions) -> (pyscheduler::Manager, pyscheduler::TensorHandler) {
    let m = common::manager();
    let sig =
        TensorSignature::new(vec![TensorSpec::new(DType::U8, &[2])], vec![TensorSpec::new(DType::I64, &[])]);
    let h = m.load_tensor("tensor_testmod", "batch_size", sig, options).unwrap();
    (m, h)
}

#[test]
fn batch_size_one_is_one_call_per_item() {
    if common::skip_without_numpy() {
        return;
    }
    let (_m, h) = batch_size_handler(opts(1));
    let fs: Vec<_> = (0..40).map(|_| h.queue(&[&[1, 2]], TensorItemOptions::default()).unwrap()).collect();
    for f in fs {
        assert_eq!(f.wait().unwrap().get::<i64>(0), vec![1]);
    }
    let s = h.stats();
    assert_eq!((s.batches, s.completed), (40, 40));
    assert_eq!(h.latency_summary().batch_size_p50, 1);
}

#[test]
fn partial_batches_and_max_batch_delay() {
    if common::skip_without_numpy() {
        return;
    }
    // Full batches go at once; the rest waits for the delay, then goes as a partial batch
    // of its real size (no padding).
    let delay = Duration::from_millis(400);
    let (_m, h) =
        batch_size_handler(HandlerOptions { batch_size: 8, max_batch_delay: delay, ..Default::default() });
    let t0 = Instant::now();
    let fs: Vec<_> = (0..21).map(|_| h.queue(&[&[1, 2]], TensorItemOptions::default()).unwrap()).collect();
    let sizes: Vec<i64> = fs.into_iter().map(|f| f.wait().unwrap().get::<i64>(0)[0]).collect();
    let waited = t0.elapsed();
    assert_eq!(sizes.iter().filter(|&&b| b == 8).count(), 16, "{sizes:?}");
    assert_eq!(sizes.iter().filter(|&&b| b == 5).count(), 5, "{sizes:?}");
    assert!(waited >= delay - Duration::from_millis(20), "the partial batch went after {waited:?}");
    assert_eq!(h.stats().batches, 3);

    // One lone item waits for the delay, then goes alone.
    let t0 = Instant::now();
    let f = h.queue(&[&[1, 2]], TensorItemOptions::default()).unwrap();
    assert_eq!(f.wait().unwrap().get::<i64>(0), vec![1]);
    assert!(t0.elapsed() >= delay - Duration::from_millis(20), "went after {:?}", t0.elapsed());

    // Without a delay a lone item does not wait for company.
    let (_m, h) = batch_size_handler(opts(8));
    let t0 = Instant::now();
    h.queue(&[&[1, 2]], TensorItemOptions::default()).unwrap().wait().unwrap();
    assert!(t0.elapsed() < delay, "took {:?}", t0.elapsed());
}

#[test]
fn drain_waits_for_every_completion_and_the_counters_add_up() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let h = m.load_tensor("tensor_testmod", "sleep_echo", echo_sig(), opts(4)).unwrap();
    let n = 40usize;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outs: Vec<Box<i64>> = (0..n).map(|_| Box::new(-1)).collect();
    for (i, out) in outs.iter().enumerate() {
        let done = done.clone();
        let v: i64 = if i % 10 == 0 { 20 } else { -(i as i64) };
        // SAFETY: `outs` outlives the drain below.
        unsafe {
            h.queue_into(
                &[&v.to_ne_bytes()],
                &[&**out as *const i64 as *mut u8],
                move |r| {
                    r.unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
                TensorItemOptions::default(),
            )
            .unwrap()
        };
    }
    h.drain();
    assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), n);
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(**out, if i % 10 == 0 { 20 } else { -(i as i64) });
    }
    // Failures of every kind, then the counters.
    let blocker = start_blocker(&h, 300);
    let expired =
        h.queue(&[&0i64.to_ne_bytes()], TensorItemOptions { deadline: Some(Instant::now()) }).unwrap();
    let cancelled = h.queue(&[&0i64.to_ne_bytes()], TensorItemOptions::default()).unwrap();
    assert!(cancelled.cancel());
    h.drain();
    assert!(blocker.is_ready() && expired.is_ready() && cancelled.is_ready());
    blocker.wait().unwrap();
    let s = h.stats();
    assert_eq!(s.total_enqueued, n as u64 + 3);
    assert_eq!((s.completed, s.failed, s.cancelled, s.expired, s.rejected), (n as u64 + 1, 0, 1, 1, 0));
    assert_eq!((s.commit_queue_size, s.execute_queue_size), (0, 0));
    assert!(s.batches > (n / 4) as u64 && s.batches <= n as u64 + 1, "{} batches", s.batches);
    let l = h.latency_summary();
    assert!(l.batch_size_p50 >= 1 && l.execute_ns_p99 > 0);
    let text = h.prometheus_text();
    assert!(text.contains("tensor_testmod.sleep_echo"), "{text}");
}

#[test]
fn a_full_bounded_queue_rejects_and_reports_once() {
    if common::skip_without_numpy() {
        return;
    }
    let m = common::manager();
    let options = HandlerOptions { max_queue: 2, full_policy: pyscheduler::FullPolicy::Reject, ..opts(4) };
    let h = m.load_tensor("tensor_testmod", "sleep_echo", echo_sig(), options).unwrap();
    let blocker = start_blocker(&h, 300);
    let a = h.queue(&[&1i64.to_ne_bytes()], TensorItemOptions::default()).unwrap();
    let b = h.queue(&[&2i64.to_ne_bytes()], TensorItemOptions::default()).unwrap();
    let t0 = Instant::now();
    let e = h.queue(&[&3i64.to_ne_bytes()], TensorItemOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::QueueFull, "{e}");
    // The callback form hears the refusal exactly once, before the call returns.
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = -1i64;
    let sink = heard.clone();
    // SAFETY: `out` outlives the item (it is refused at once).
    let e = unsafe {
        h.queue_into(
            &[&4i64.to_ne_bytes()],
            &[&mut out as *mut i64 as *mut u8],
            move |r| sink.lock().unwrap().push(r.map_err(|e| e.kind())),
            TensorItemOptions::default(),
        )
    }
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::QueueFull);
    assert_eq!(*heard.lock().unwrap(), vec![Err(ErrorKind::QueueFull)]);
    assert_eq!(out, -1);
    assert!(t0.elapsed() < Duration::from_millis(250), "a reject waited {:?}", t0.elapsed());
    assert!(!blocker.is_ready());
    assert_eq!(a.wait().unwrap().get::<i64>(0), vec![1]);
    assert_eq!(b.wait().unwrap().get::<i64>(0), vec![2]);
    blocker.wait().unwrap();
    h.drain();
    let s = h.stats();
    assert_eq!((s.total_enqueued, s.completed, s.rejected), (5, 3, 2));
    // Room again: accepted.
    assert_eq!(
        h.queue(&[&5i64.to_ne_bytes()], TensorItemOptions::default()).unwrap().wait().unwrap().get::<i64>(0),
        vec![5]
    );
}

static C_DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe extern "C" fn c_complete_ok(
    _user_data: *mut std::ffi::c_void,
    error: *const pyscheduler::ffi::pysched_error,
) {
    assert!(error.is_null(), "a C ABI item failed");
    C_DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn c_abi_copies_each_input_at_queueing_and_writes_each_output_row() {
    if common::skip_without_numpy() {
        return;
    }
    use pyscheduler::ffi::error::{pysched_error_free, pysched_error_message};
    use pyscheduler::ffi::handler::pysched_handler_options_default;
    use pyscheduler::ffi::manager::{pysched_manager_add_path, pysched_manager_new};
    use pyscheduler::ffi::pysched_status::{PYSCHED_INVALID_ARGUMENT, PYSCHED_OK};
    use pyscheduler::ffi::tensor_handler::*;
    use std::ffi::{c_void, CStr, CString};
    use std::ptr::{null, null_mut};

    let mut m = null_mut();
    assert_eq!(pysched_manager_new(null(), &mut m, null_mut()), PYSCHED_OK);
    let dir = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python")).unwrap();
    assert_eq!(pysched_manager_add_path(m, dir.as_ptr(), null_mut()), PYSCHED_OK);
    // add_and_sum: two (3,) f64 inputs, outputs a+b (3,) and the row sum of a ().
    let three = [3i64];
    let f64_3 = pysched_tensor_spec { dtype: DType::F64 as u32, ndim: 1, shape: three.as_ptr() };
    let f64_scalar = pysched_tensor_spec { dtype: DType::F64 as u32, ndim: 0, shape: null() };
    let inputs = [f64_3, f64_3];
    let outputs = [f64_3, f64_scalar];
    let sig = pysched_tensor_signature {
        inputs: inputs.as_ptr(),
        n_inputs: 2,
        outputs: outputs.as_ptr(),
        n_outputs: 2,
        device: -1,
    };
    let mut options = pysched_handler_options_default();
    options.batch_size = 8;
    let mut h = null_mut();
    let (module, entry) = (CString::new("tensor_testmod").unwrap(), CString::new("add_and_sum").unwrap());
    assert_eq!(
        pysched_manager_load_tensor(m, module.as_ptr(), entry.as_ptr(), &sig, &options, &mut h, null_mut()),
        PYSCHED_OK
    );
    const N: usize = 50;
    let mut sums = vec![[f64::NAN; 3]; N];
    let mut totals = vec![f64::NAN; N];
    let (sums_at, totals_at) = (sums.as_mut_ptr(), totals.as_mut_ptr());
    for n in 0..N {
        let mut a: [f64; 3] = std::array::from_fn(|i| (n * 10 + i) as f64);
        let mut b: [f64; 3] = std::array::from_fn(|i| (n * 10 + 100 + i) as f64);
        let ins = [a.as_ptr().cast::<c_void>(), b.as_ptr().cast::<c_void>()];
        // SAFETY: within the two vectors, which outlive the drain below.
        let outs = unsafe { [sums_at.add(n).cast::<c_void>(), totals_at.add(n).cast::<c_void>()] };
        let item = pysched_tensor_item {
            user_data: null_mut(),
            inputs: ins.as_ptr(),
            fill: None,
            outputs: outs.as_ptr(),
            complete: Some(c_complete_ok),
            drop: None,
            timeout_us: 0,
            flags: 0,
        };
        assert_eq!(pysched_tensor_handler_queue(h, &item, null_mut(), null_mut()), PYSCHED_OK);
        // Copied at queueing: what the caller does with its buffers afterwards is its own.
        a.fill(f64::NAN);
        b.fill(f64::NAN);
        std::hint::black_box((&a, &b));
    }
    assert_eq!(pysched_tensor_handler_drain(h, null_mut()), PYSCHED_OK);
    assert_eq!(C_DONE.load(std::sync::atomic::Ordering::SeqCst), N);
    for n in 0..N {
        let a: Vec<f64> = (0..3).map(|i| (n * 10 + i) as f64).collect();
        let want: Vec<f64> = (0..3).map(|i| a[i] + (n * 10 + 100 + i) as f64).collect();
        assert_eq!(sums[n].to_vec(), want, "item {n}");
        assert_eq!(totals[n], a.iter().sum::<f64>(), "item {n}");
    }
    // A NULL destination is refused, naming it; nothing is queued.
    let (a, b) = ([1.0f64; 3], [2.0f64; 3]);
    let ins = [a.as_ptr().cast::<c_void>(), b.as_ptr().cast::<c_void>()];
    let outs = [sums_at.cast::<c_void>(), null_mut()];
    let item = pysched_tensor_item {
        user_data: null_mut(),
        inputs: ins.as_ptr(),
        fill: None,
        outputs: outs.as_ptr(),
        complete: None,
        drop: None,
        timeout_us: 0,
        flags: 0,
    };
    let mut err = null_mut();
    assert_eq!(pysched_tensor_handler_queue(h, &item, null_mut(), &mut err), PYSCHED_INVALID_ARGUMENT);
    // SAFETY: an error object handed out with the status, freed once.
    let message = unsafe { CStr::from_ptr(pysched_error_message(err)) }.to_string_lossy().into_owned();
    pysched_error_free(err);
    assert!(message.contains("item->outputs[1] is NULL"), "{message}");
    pysched_tensor_handler_free(h);
}
