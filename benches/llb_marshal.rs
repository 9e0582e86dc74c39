//! Marshalling speed of envkit's LLB builder, on the workloads the golden vectors' README
//! measured for BuildKit's Go client (v0.32.2, same kind of machine): an envd-like graph, a
//! chain of 10,000 sequential runs (quadratic in the Go client: ~8.6 s), and 10,000 `mkfile`
//! states merged as 100 merges of 100 (~200 ms).
//!
//! `cargo bench --bench llb_marshal` prints the median of several runs per workload.

use std::hint::black_box;
use std::time::{Duration, Instant};

use envkit::llb::{
    self, CacheSharing, Constraints, FileAction, MarshalOptions, MkfileOptions, Mount, Run, State,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(name: &str, runs: usize, build: impl Fn() -> State) {
    let opts = MarshalOptions::default();
    let mut times = Vec::with_capacity(runs);
    let mut ops = 0;
    let mut bytes = 0;
    for _ in 0..runs {
        let state = build();
        let t = Instant::now();
        let def = state.marshal(&opts).expect("marshal");
        times.push(t.elapsed());
        ops = def.def.len();
        bytes = def.to_bytes().len();
        black_box(def);
    }
    println!(
        "{name:<28} {ops:>6} ops {:>9} bytes   median {:>10.3} ms  ({runs} runs)",
        bytes,
        median(times).as_secs_f64() * 1e3
    );
}

/// The shape of an envd Python environment: apt with cache mounts, pip groups, config files,
/// copies from the context, run steps.
fn envd_like() -> State {
    let mut s = llb::image("python:3.11-slim")
        .add_env("DEBIAN_FRONTEND", "noninteractive")
        .add_env("LANG", "C.UTF-8");
    s = s
        .run(
            Run::shlex("bash -c \"apt-get update && apt-get install -y curl git\"")
                .mount(Mount::cache(
                    "/var/cache/apt",
                    "/var/cache/apt/x-cpu",
                    CacheSharing::Shared,
                ))
                .mount(Mount::cache(
                    "/var/lib/apt",
                    "/var/lib/apt/x-cpu",
                    CacheSharing::Shared,
                )),
        )
        .root();
    let ctx = llb::local("context", Default::default());
    for i in 0..12 {
        s = s
            .run(
                Run::shlex(&format!("python -m pip install pkg{i}")).mount(Mount::cache(
                    "/root/.cache/pip",
                    "/root/.cache/pip/x-cpu",
                    CacheSharing::Shared,
                )),
            )
            .root();
        s = s.file(
            FileAction::new().copy(
                &ctx,
                &format!("f{i}"),
                &format!("/opt/f{i}"),
                Default::default(),
            ),
            Constraints::new(),
        );
        s = s
            .dir("/home/envd/x")
            .run(Run::shlex(&format!("bash -c 'step {i}'")))
            .root();
    }
    s
}

fn chain(n: usize) -> State {
    let mut s = llb::image("busybox");
    for i in 0..n {
        s = s.run(Run::args(["sh", "-c", &format!("echo {i}")])).root();
    }
    s
}

fn merges(groups: usize, per: usize) -> State {
    let mut outer = Vec::with_capacity(groups);
    for g in 0..groups {
        let inner: Vec<State> = (0..per)
            .map(|i| {
                llb::scratch().file(
                    FileAction::new().mkfile(
                        &format!("/f-{g}-{i}"),
                        0o644,
                        b"x",
                        MkfileOptions::default(),
                    ),
                    Constraints::new(),
                )
            })
            .collect();
        outer.push(llb::merge(&inner, Constraints::new()));
    }
    llb::merge(&outer, Constraints::new())
}

fn main() {
    time("envd-like graph", 21, envd_like);
    time("chain of 1,250 runs", 7, || chain(1_250));
    time("chain of 2,500 runs", 7, || chain(2_500));
    time("chain of 10,000 runs", 7, || chain(10_000));
    time("100 merges of 100 mkfiles", 7, || merges(100, 100));
}
