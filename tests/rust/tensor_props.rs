//! Property test of tensor handlers: random signatures (float32/float64/int32/int64/uint8,
//! per-item shapes `()`, `(n)`, `(a, b, c)`, 1-3 inputs, 0-3 outputs), batch sizes 1-16,
//! batch delays, prefetch depths, producer threads, items queued three ways (copied with
//! a future, filled in place with a future, copied with rows into caller memory and a
//! `done` callback), some fills failing, and a Python function (tests/python/
//! tensor_fuzz.py) that, seeded per batch, returns the right outputs (also strided,
//! Fortran-ordered or DLPack-only) or something wrong (wrong leading dimension, dtype or
//! item shape, not a tensor, too few outputs), or raises.
//!
//! Every item resolves exactly once: with its own correct rows, or with a clear error
//! (a Python exception naming what was expected and received, or its fill's error); a
//! failed item's caller memory is untouched. From the function's log of calls: every
//! item that reached Python was in exactly one call, the items of the good calls are
//! exactly the succeeded ones and those of the bad calls the failed ones, and the
//! handler's counters agree.

mod common;

use proptest::prelude::*;
use pyo3::prelude::*;
use pyscheduler::{
    DType, Error, ErrorKind, HandlerOptions, Manager, TensorItemOptions, TensorSignature, TensorSpec,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

fn manager() -> &'static Manager {
    static MANAGER: OnceLock<Manager> = OnceLock::new();
    MANAGER.get_or_init(common::manager)
}

const DTYPES: [DType; 5] = [DType::F32, DType::F64, DType::I32, DType::I64, DType::U8];

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![]),
        (1usize..=6).prop_map(|n| vec![n]),
        (1usize..=3, 1usize..=3, 1usize..=4).prop_map(|(a, b, c)| vec![a, b, c]),
    ]
}

fn tensor_spec() -> impl Strategy<Value = TensorSpec> {
    (0..DTYPES.len(), shape()).prop_map(|(d, s)| TensorSpec::new(DTYPES[d], &s))
}

/// How one item is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `queue`: copied inputs, rows through the future.
    Copy,
    /// `queue_fill`: filled in place without the GIL, rows through the future.
    Fill,
    /// `queue_fill` whose fill fails.
    FillFails,
    /// `queue_into`: copied inputs, rows into caller memory, outcome through `done`.
    Into,
}

fn way() -> impl Strategy<Value = Way> {
    prop_oneof![4 => Just(Way::Copy), 3 => Just(Way::Fill), 1 => Just(Way::FillFails), 4 => Just(Way::Into)]
}

#[derive(Debug, Clone)]
struct Case {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    batch_size: usize,
    prefetch_depth: usize,
    max_batch_delay_us: u64,
    /// Probability that a batch's result is wrong.
    bad_weight: f64,
    seed: u64,
    producers: usize,
    /// Each item: how it is queued, and the seed of its input bytes.
    items: Vec<(Way, u64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(tensor_spec(), 1..=3),
        prop::collection::vec(tensor_spec(), 0..=3),
        1usize..=16,
        1usize..=3,
        prop_oneof![2 => Just(0u64), 1 => 100u64..3000],
        prop_oneof![Just(0.0), Just(0.3), Just(0.7), Just(1.0)],
        any::<u64>(),
        1usize..=3,
        prop::collection::vec((way(), any::<u64>()), 1..=48),
    )
        .prop_map(
            |(
                inputs,
                outputs,
                batch_size,
                prefetch_depth,
                max_batch_delay_us,
                bad_weight,
                seed,
                producers,
                items,
            )| {
                Case {
                    inputs,
                    outputs,
                    batch_size,
                    prefetch_depth,
                    max_batch_delay_us,
                    bad_weight,
                    seed: seed % 1_000_000,
                    producers,
                    items,
                }
            },
        )
}

/// splitmix64: an item's input bytes from its seed.
fn input_bytes(seed: u64, specs: &[TensorSpec]) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as u8
    };
    specs.iter().map(|s| (0..s.item_bytes()).map(|_| next()).collect()).collect()
}

/// The rows tensor_fuzz.right_outputs gives an item with these inputs.
fn expected_rows(inputs: &[Vec<u8>], outputs: &[TensorSpec]) -> Vec<Vec<u8>> {
    let key: u64 = inputs.iter().flatten().map(|&b| b as u64).sum();
    outputs
        .iter()
        .enumerate()
        .map(|(j, spec)| {
            (0..spec.item_elements())
                .flat_map(|e| {
                    let v = (key + 3 * j as u64 + e as u64) % 97;
                    match spec.dtype {
                        DType::F32 => (v as f32).to_ne_bytes().to_vec(),
                        DType::F64 => (v as f64).to_ne_bytes().to_vec(),
                        DType::I32 => (v as i32).to_ne_bytes().to_vec(),
                        DType::I64 => (v as i64).to_ne_bytes().to_vec(),
                        DType::U8 => vec![v as u8],
                        other => panic!("no {other:?} in this test"),
                    }
                })
                .collect()
        })
        .collect()
}

/// What one item ended with, and how many times it was told.
#[derive(Default)]
struct Seen {
    outcomes: AtomicUsize,
    result: Mutex<Option<Result<Vec<Vec<u8>>, Error>>>,
}

const UNTOUCHED: u8 = 0xA5;

fn register(name: &str, case: &Case) {
    pyscheduler::runtime::attach(|py| -> PyResult<()> {
        let outputs: Vec<(&str, Vec<usize>)> =
            case.outputs.iter().map(|s| (s.dtype.name(), s.shape.clone())).collect();
        py.import("tensor_fuzz")?.call_method1("register", (name, outputs, case.seed, case.bad_weight))?;
        Ok(())
    })
    .expect("tensor_fuzz.register");
}

/// (mode, B) of every call of `name`, in order.
fn calls(name: &str) -> Vec<(String, bool, usize)> {
    pyscheduler::runtime::attach(|py| -> PyResult<Vec<(String, bool, usize)>> {
        let m = py.import("tensor_fuzz")?;
        let good: Vec<String> = m.getattr("GOOD")?.extract()?;
        let log: Vec<(String, u64, String, usize)> = m.getattr("log")?.extract()?;
        Ok(log
            .into_iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, _, mode, b)| {
                let ok = good.contains(&mode);
                (mode, ok, b)
            })
            .collect())
    })
    .expect("tensor_fuzz.log")
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    static CASES: AtomicUsize = AtomicUsize::new(0);
    let name = format!("case_{}", CASES.fetch_add(1, Ordering::Relaxed));
    let manager = manager(); // starts Python (and puts tests/python on sys.path)
    register(&name, case);
    let sig = TensorSignature::new(case.inputs.clone(), case.outputs.clone());
    let options = HandlerOptions {
        batch_size: case.batch_size,
        prefetch_depth: case.prefetch_depth,
        max_batch_delay: Duration::from_micros(case.max_batch_delay_us),
        ..Default::default()
    };
    let h = manager.load_tensor("tensor_fuzz", &name, sig.clone(), options).expect("load_tensor");
    let ctx = || format!("{name}: {} {case:?}", sig.describe());

    let inputs: Vec<Vec<Vec<u8>>> = case.items.iter().map(|&(_, s)| input_bytes(s, &case.inputs)).collect();
    let seen: Vec<Arc<Seen>> = case.items.iter().map(|_| Arc::new(Seen::default())).collect();
    // Caller memory of the `Into` items: one buffer per output, freed after the drain.
    let dests: Vec<Vec<Mutex<Vec<u8>>>> = case
        .items
        .iter()
        .map(|_| case.outputs.iter().map(|s| Mutex::new(vec![UNTOUCHED; s.item_bytes()])).collect())
        .collect();

    std::thread::scope(|scope| {
        for p in 0..case.producers {
            let (h, inputs, seen, dests) = (&h, &inputs, &seen, &dests);
            scope.spawn(move || {
                let mut futures = Vec::new();
                for i in (p..case.items.len()).step_by(case.producers) {
                    let slices: Vec<&[u8]> = inputs[i].iter().map(Vec::as_slice).collect();
                    let opts = TensorItemOptions::default();
                    let future = match case.items[i].0 {
                        Way::Copy => Some(h.queue(&slices, opts).expect("queue")),
                        Way::Fill | Way::FillFails => {
                            let rows = inputs[i].clone();
                            let fails = case.items[i].0 == Way::FillFails;
                            Some(
                                h.queue_fill(
                                    move |slots| {
                                        if fails {
                                            return Err(Error::new(ErrorKind::Commit, "fuzz fill refused"));
                                        }
                                        for (slot, row) in slots.iter_mut().zip(&rows) {
                                            slot.copy_from_slice(row);
                                        }
                                        Ok(())
                                    },
                                    opts,
                                )
                                .expect("queue_fill"),
                            )
                        }
                        Way::Into => {
                            let ptrs: Vec<*mut u8> =
                                dests[i].iter().map(|d| d.lock().unwrap().as_mut_ptr()).collect();
                            let s = seen[i].clone();
                            // SAFETY: `dests` outlives the drain below, after which no
                            // item writes any more; nothing else touches the buffers.
                            unsafe {
                                h.queue_into(
                                    &slices,
                                    &ptrs,
                                    move |r| {
                                        s.outcomes.fetch_add(1, Ordering::SeqCst);
                                        *s.result.lock().unwrap() = Some(r.map(|()| Vec::new()));
                                    },
                                    opts,
                                )
                                .expect("queue_into")
                            };
                            None
                        }
                    };
                    if let Some(f) = future {
                        futures.push((i, f));
                    }
                }
                for (i, f) in futures {
                    let r = f.wait();
                    seen[i].outcomes.fetch_add(1, Ordering::SeqCst);
                    *seen[i].result.lock().unwrap() = Some(r.map(|rows| rows.0));
                }
            });
        }
    });
    h.drain();

    let (mut ok, mut failed_in_python, mut failed_fills) = (0usize, 0usize, 0usize);
    for (i, (&(way, _), s)) in case.items.iter().zip(&seen).enumerate() {
        prop_assert_eq!(s.outcomes.load(Ordering::SeqCst), 1, "item {} ({:?}) outcomes; {}", i, way, ctx());
        let result = s.result.lock().unwrap().take().expect("an outcome");
        let want = expected_rows(&inputs[i], &case.outputs);
        match result {
            Ok(rows) => {
                prop_assert!(way != Way::FillFails, "item {} succeeded without its fill; {}", i, ctx());
                let got: Vec<Vec<u8>> = if way == Way::Into {
                    dests[i].iter().map(|d| d.lock().unwrap().clone()).collect()
                } else {
                    rows
                };
                prop_assert_eq!(&got, &want, "item {} ({:?}) rows; {}", i, way, ctx());
                ok += 1;
            }
            Err(e) => {
                let message = e.to_string();
                if way == Way::FillFails {
                    prop_assert!(message.contains("fuzz fill refused"), "item {}: {}; {}", i, message, ctx());
                    failed_fills += 1;
                } else {
                    prop_assert_eq!(
                        e.kind(),
                        ErrorKind::PythonException,
                        "item {}: {}; {}",
                        i,
                        message,
                        ctx()
                    );
                    let clear = message.contains(&format!("tensor_fuzz.{name}"))
                        && (message.contains("FuzzError: fuzz batch")
                            || (message.contains("; expected shape (") && message.contains(" items of "))
                            || message.contains("must return a tuple of"));
                    prop_assert!(clear, "item {}: unclear error {:?}; {}", i, message, ctx());
                    failed_in_python += 1;
                }
                if way == Way::Into {
                    for d in &dests[i] {
                        prop_assert!(
                            d.lock().unwrap().iter().all(|&b| b == UNTOUCHED),
                            "item {} written; {}",
                            i,
                            ctx()
                        );
                    }
                }
            }
        }
    }

    let log = calls(&name);
    let good: usize = log.iter().filter(|c| c.1).map(|c| c.2).sum();
    let bad: usize = log.iter().filter(|c| !c.1).map(|c| c.2).sum();
    prop_assert!(log.iter().all(|c| c.2 >= 1 && c.2 <= case.batch_size), "batch sizes {:?}; {}", log, ctx());
    prop_assert_eq!(good, ok, "items of good calls vs succeeded items; {:?}; {}", log, ctx());
    prop_assert_eq!(bad, failed_in_python, "items of bad calls vs failed items; {:?}; {}", log, ctx());
    prop_assert_eq!(ok + failed_in_python + failed_fills, case.items.len());

    let s = h.stats();
    prop_assert_eq!(s.total_enqueued, case.items.len() as u64);
    prop_assert_eq!(s.completed, ok as u64);
    prop_assert_eq!(s.failed, (failed_in_python + failed_fills) as u64);
    prop_assert_eq!(s.batches, log.len() as u64);
    prop_assert_eq!((s.commit_queue_size, s.execute_queue_size), (0, 0));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PYSCHED_TENSOR_PROP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_item_resolves_once_with_its_rows_or_a_clear_error(case in case()) {
        if common::skip_without_numpy() {
            return Ok(());
        }
        run_case(&case)?;
    }
}
