//! A numpy model served from Rust through a tensor handler (`Manager::load_tensor`):
//! threads queue items of 8 float32 features; each batch reaches Python as ONE (B, 8)
//! float32 tensor in ONE call, and each item's rows of the two outputs (3 float32
//! scores, one int64 class) come back through its future, without a Python object per
//! item. Every item is checked against the same model computed here in Rust.
//!
//! Python side: examples/python/tensor_model.py (classify).
//!   PYO3_PYTHON=/path/to/python3 cargo run --release --bin tensor_model

use pyscheduler::{
    DType, HandlerOptions, Manager, ManagerOptions, TensorItemOptions, TensorSignature, TensorSpec,
};

const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../python");
const FEATURES: usize = 8;
const HIDDEN: usize = 16;
const CLASSES: usize = 3;
const THREADS: usize = 4;
const PER_THREAD: usize = 500;

fn features(thread: usize, item: usize) -> [f32; FEATURES] {
    std::array::from_fn(|f| ((thread * 31 + item * 7 + f * 3) % 17) as f32 / 4.0 - 2.0)
}

/// examples/python/tensor_model.py, in Rust.
fn reference(x: &[f32; FEATURES]) -> [f32; CLASSES] {
    let hidden: [f32; HIDDEN] = std::array::from_fn(|j| {
        let bias = ((j % 4) as f32 - 1.5) / 4.0;
        let sum: f32 = (0..FEATURES).map(|i| x[i] * (((i * 5 + j * 3) % 11) as f32 - 5.0) / 10.0).sum();
        (bias + sum).max(0.0)
    });
    let b2 = [0.25f32, -0.5, 0.125];
    std::array::from_fn(|k| {
        b2[k] + (0..HIDDEN).map(|j| hidden[j] * (((j * 7 + k * 2) % 9) as f32 - 4.0) / 8.0).sum::<f32>()
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = Manager::new(ManagerOptions::default())?;
    manager.add_path(PYTHON_DIR)?;

    // classify: (float32[8]) -> (float32[3], int64 scalar), batch tensors in host memory.
    let signature = TensorSignature::new(
        vec![TensorSpec::new(DType::F32, &[FEATURES])],
        vec![TensorSpec::new(DType::F32, &[CLASSES]), TensorSpec::new(DType::I64, &[])],
    );
    let model = manager.load_tensor(
        "tensor_model",
        "classify",
        signature,
        HandlerOptions { batch_size: 64, ..HandlerOptions::default() },
    )?;

    let wrong: usize = std::thread::scope(|scope| {
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let model = &model;
                scope.spawn(move || -> pyscheduler::Result<usize> {
                    // Queue everything first (the inputs are copied at once), then wait.
                    let items: Vec<_> = (0..PER_THREAD)
                        .map(|i| {
                            let x = features(t, i);
                            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_ne_bytes()).collect();
                            model.queue(&[&bytes], TensorItemOptions::default()).map(|f| (x, f))
                        })
                        .collect::<pyscheduler::Result<_>>()?;
                    let mut wrong = 0;
                    for (x, future) in items {
                        let rows = future.wait()?;
                        let (scores, class) = (rows.get::<f32>(0), rows.get::<i64>(1)[0]);
                        let want = reference(&x);
                        let best = (0..CLASSES).fold(0, |b, k| if scores[k] > scores[b] { k } else { b });
                        if scores.iter().zip(&want).any(|(s, w)| (s - w).abs() > 1e-4) || class != best as i64
                        {
                            wrong += 1;
                        }
                    }
                    Ok(wrong)
                })
            })
            .collect();
        producers
            .into_iter()
            .map(|p| p.join().expect("producer panicked"))
            .sum::<pyscheduler::Result<usize>>()
    })?;

    let stats = model.stats();
    println!(
        "{} items from {THREADS} threads in {} Python calls ({:.1} items per call); {wrong} wrong",
        THREADS * PER_THREAD,
        stats.batches,
        stats.completed as f64 / stats.batches.max(1) as f64
    );
    if wrong != 0 || stats.completed != (THREADS * PER_THREAD) as u64 {
        return Err(format!("unexpected results: {wrong} wrong, {} completed", stats.completed).into());
    }
    println!("rust tensor example: all results as expected");
    Ok(())
}
