//! pyscheduler from Rust: a synchronous call, then queued items that the shared worker
//! pool batches into few Python calls, each future yielding its own item's result.
//!
//! Python side: examples/python/my_module.py (invoke, square).

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyscheduler::{HandlerOptions, Manager, ManagerOptions};

const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../python");
const ITEMS: i64 = 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = Manager::new(ManagerOptions::default())?;
    manager.add_path(PYTHON_DIR)?;

    // A synchronous call: my_module.invoke(3000, -1234).
    let add = manager.load("my_module", "invoke", HandlerOptions::default())?;
    let sum = add.call(|py| PyTuple::new(py, [3000_i64, -1234]))?;
    let sum: i64 = pyscheduler::runtime::attach(move |py| sum.into_bound(py).extract())?;
    println!("my_module.invoke(3000, -1234) = {sum}");

    // Queued items, up to 32 per Python call: my_module.square([x, ...]).
    let square = manager.load(
        "my_module",
        "square",
        HandlerOptions { batch_size: 32, prefetch_depth: 2, ..HandlerOptions::default() },
    )?;
    let futures: Vec<_> = (0..ITEMS)
        .map(|x| square.queue(move |py| Ok(x.into_pyobject(py)?.into_any().unbind())))
        .collect();
    let mut wrong = 0;
    let mut total = 0_i64;
    for (x, future) in (0..ITEMS).zip(futures) {
        let value = future.wait()?.ok_or("the item's result was not kept")?;
        let value: i64 = pyscheduler::runtime::attach(move |py| value.into_bound(py).extract())?;
        if value != x * x {
            wrong += 1;
        }
        total += value;
    }
    let stats = square.stats();
    println!(
        "sum of squares of 0..{} = {total}, in {} Python calls ({:.1} items per call on average)",
        ITEMS - 1,
        stats.batches,
        stats.execute_batch_size_ema
    );

    if sum != 1766 || wrong != 0 || stats.completed != ITEMS as u64 {
        return Err(format!("unexpected results: sum {sum}, {wrong} wrong squares").into());
    }
    println!("rust example: all results as expected");
    Ok(())
}
