//! The embedded engine's fixed costs, without containers: the scheduler's overhead per
//! vertex (chains and wide fans of no-op vertices), computing cache keys, and checksumming a
//! build context of 2,000 small files (cold, and warm through the stat cache).
//!
//! `cargo bench --bench engine` prints medians. The side-by-side comparison with other
//! builders is `benches/side-by-side.sh`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envkit::progress::Silent;
use envkit::solver::{self, BoxFuture, OpError, OpRunner, Outcome, SolveOptions, Vertex};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A vertex that does nothing but hand on a number.
struct Noop;

impl OpRunner<u64> for Noop {
    fn run(&self, vertex: usize, inputs: Vec<u64>) -> BoxFuture<Result<Outcome<u64>, OpError>> {
        Box::pin(async move {
            Ok(Outcome {
                value: inputs.iter().sum::<u64>() + vertex as u64,
                cached: true,
            })
        })
    }
}

fn scheduler(rt: &tokio::runtime::Runtime, name: &str, graph: Vec<Vertex>) {
    let n = graph.len();
    let root = n - 1;
    let opts = SolveOptions { parallelism: 2 };
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let out = rt
            .block_on(solver::solve(
                &graph,
                root,
                Arc::new(Noop),
                Arc::new(Silent),
                &opts,
            ))
            .expect("solve");
        times.push(t.elapsed());
        black_box(out);
    }
    let m = median(times);
    println!(
        "scheduler {name:<26} {n:>6} vertices  median {:>8.3} ms  = {:>6.2} µs per vertex",
        m.as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e6 / n as f64
    );
}

fn vx(i: usize, inputs: Vec<usize>) -> Vertex {
    Vertex {
        id: format!("v{i}"),
        name: format!("v{i}"),
        inputs,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // A chain: each vertex waits for the one before.
    let chain: Vec<Vertex> = (0..2000)
        .map(|i| vx(i, if i == 0 { vec![] } else { vec![i - 1] }))
        .collect();
    scheduler(&rt, "chain", chain);
    // A fan: 2,000 independent vertices joined by one.
    let mut fan: Vec<Vertex> = (0..2000).map(|i| vx(i, vec![])).collect();
    fan.push(vx(2000, (0..2000).collect()));
    scheduler(&rt, "fan-in (2,000 -> 1)", fan);

    // Cache keys: an op digest, two input keys and a content checksum, as a Run step has.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let inputs = ["cd".repeat(32), "ef".repeat(32)];
    let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let n = 100_000;
    let t = Instant::now();
    for i in 0..n {
        black_box(envkit::ops::cache_key(
            black_box(&digest),
            black_box(&ins),
            &[if i % 2 == 0 { "x" } else { "y" }],
        ));
    }
    let e = t.elapsed();
    println!(
        "cache key                              {n:>6} keys      total  {:>8.3} ms  = {:>6.2} µs per key",
        e.as_secs_f64() * 1e3,
        e.as_secs_f64() * 1e6 / n as f64
    );

    // A context of 2,000 files of 4 KiB in 20 dirs.
    let ctx = tempfile::tempdir().expect("temp dir");
    let block = vec![b'x'; 4096];
    for d in 0..20 {
        let dir = ctx.path().join(format!("dir{d:02}"));
        std::fs::create_dir(&dir).expect("mkdir");
        for f in 0..100 {
            let mut data = block.clone();
            data[..8].copy_from_slice(&((d * 100 + f) as u64).to_le_bytes());
            std::fs::write(dir.join(format!("f{f:03}.txt")), data).expect("write");
        }
    }
    // Old enough for the stat cache to keep (it distrusts entries younger than a second).
    std::thread::sleep(Duration::from_millis(1100));
    let cache = tempfile::tempdir().expect("temp dir");
    let mut cold = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        black_box(envkit::ops::context::checksum_dir(ctx.path(), None).expect("checksum"));
        cold.push(t.elapsed());
    }
    envkit::ops::context::checksum_dir(ctx.path(), Some(cache.path())).expect("prime");
    let mut warm = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        black_box(
            envkit::ops::context::checksum_dir(ctx.path(), Some(cache.path())).expect("checksum"),
        );
        warm.push(t.elapsed());
    }
    println!(
        "context checksum, 2,000 x 4 KiB files   cold median {:>8.3} ms   warm (stat cache) median {:>8.3} ms",
        median(cold).as_secs_f64() * 1e3,
        median(warm).as_secs_f64() * 1e3
    );
}
