//! The generic DAG engine.
//!
//! The solver knows vertices only as ids with inputs; what a vertex *does* is an [`OpRunner`]'s
//! business (the `ops` module for LLB, fake ops in the tests). It runs every vertex the root
//! depends on, each once, in dependency order, independent vertices concurrently up to a limit;
//! the first failure cancels the rest. What a vertex's result is keyed by, and how it is looked
//! up, locked and committed, is [`cache`]'s protocol, which every op goes through.

pub mod cache;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::task::JoinSet;

use crate::progress::{Event, Reporter};

/// One vertex as the solver sees it.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// Stable identity (the op digest for LLB).
    pub id: String,
    /// What a person sees in progress output.
    pub name: String,
    /// Indexes of the vertices whose results this one consumes, in input order.
    pub inputs: Vec<usize>,
}

/// What running one vertex produced.
#[derive(Debug, Clone)]
pub struct Outcome<R> {
    pub value: R,
    /// The result came from the cache; nothing was executed.
    pub cached: bool,
}

/// A boxed future, as the runner returns it.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Error type of a runner: anything displayable.
pub type OpError = Box<dyn std::error::Error + Send + Sync>;

/// Runs one vertex, given the results of its inputs.
pub trait OpRunner<R>: Send + Sync + 'static {
    fn run(&self, vertex: usize, inputs: Vec<R>) -> BoxFuture<Result<Outcome<R>, OpError>>;
}

#[derive(Debug, Error)]
pub enum SolveError {
    #[error("{name}: {source}")]
    Vertex {
        vertex: usize,
        name: String,
        #[source]
        source: OpError,
    },
    #[error("vertex {vertex} has input {input}, which is not in the graph")]
    BadInput { vertex: usize, input: usize },
    #[error("the build graph has a cycle through vertex {0}")]
    Cycle(usize),
    #[error("the root vertex {0} is not in the graph")]
    BadRoot(usize),
    #[error("a build step panicked or was cancelled: {0}")]
    Join(String),
}

/// The scheduler's options.
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// How many vertices may run at once (at least 1).
    pub parallelism: usize,
}

/// Steps at once unless told otherwise. Not the core count: most steps wait (on the network,
/// on a `sleep`, on a child), and BuildKit sets no limit at all. A bound all the same, so a
/// graph thousands of steps wide does not start thousands of containers on a shared host.
pub const DEFAULT_PARALLELISM: usize = 64;

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            parallelism: DEFAULT_PARALLELISM,
        }
    }
}

/// Runs every vertex `root` depends on (and `root`), returning root's result.
pub async fn solve<R: Clone + Send + 'static>(
    vertices: &[Vertex],
    root: usize,
    runner: Arc<dyn OpRunner<R>>,
    reporter: Arc<dyn Reporter>,
    opts: &SolveOptions,
) -> Result<R, SolveError> {
    if root >= vertices.len() {
        return Err(SolveError::BadRoot(root));
    }
    // The vertices the root needs, and who consumes whom.
    let mut needed = vec![false; vertices.len()];
    let mut stack = vec![root];
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut needed[v], true) {
            continue;
        }
        for &i in &vertices[v].inputs {
            if i >= vertices.len() {
                return Err(SolveError::BadInput {
                    vertex: v,
                    input: i,
                });
            }
            stack.push(i);
        }
    }
    let mut pending = vec![0usize; vertices.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); vertices.len()];
    for (v, vx) in vertices.iter().enumerate().filter(|(v, _)| needed[*v]) {
        let mut seen: Vec<usize> = Vec::new();
        for &i in &vx.inputs {
            if !seen.contains(&i) {
                seen.push(i);
                pending[v] += 1;
                consumers[i].push(v);
            }
        }
    }
    let mut ready: Vec<usize> = (0..vertices.len())
        .filter(|v| needed[*v] && pending[*v] == 0)
        .collect();
    ready.reverse(); // pop() then takes the lowest index first: stable, readable progress
    let mut results: Vec<Option<R>> = vec![None; vertices.len()];
    let mut running: JoinSet<(usize, Duration, Result<Outcome<R>, OpError>)> = JoinSet::new();
    let limit = opts.parallelism.max(1);
    let total = needed.iter().filter(|n| **n).count();
    let mut done = 0usize;
    // Vertices that finished when first polled, not yet handled.
    let mut finished: std::collections::VecDeque<(usize, Duration, Result<Outcome<R>, OpError>)> =
        std::collections::VecDeque::new();

    while done < total {
        while running.len() < limit {
            let Some(v) = ready.pop() else { break };
            let mut inputs = Vec::with_capacity(vertices[v].inputs.len());
            for &i in &vertices[v].inputs {
                match &results[i] {
                    Some(r) => inputs.push(r.clone()),
                    None => return Err(SolveError::Cycle(v)),
                }
            }
            reporter.event(Event::Started {
                vertex: v,
                digest: vertices[v].id.clone(),
                inputs: vertices[v]
                    .inputs
                    .iter()
                    .map(|&i| vertices[i].id.clone())
                    .collect(),
                name: vertices[v].name.clone(),
            });
            let mut fut = runner.run(v, inputs);
            let start = Instant::now();
            // Polled here once first: a cached step (and every step of a keys-only pass)
            // finishes without waiting, and then costs no hand-over to a worker thread and
            // back (a warm chain of 20 steps spent milliseconds in them). A step that waits
            // is spawned as before and polled again there, with a real waker.
            // A panic there is the solve's error, as a spawned task's panic is.
            let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                futures_util::FutureExt::now_or_never(&mut fut)
            }));
            match first {
                Err(_) => {
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    return Err(SolveError::Join(format!("{} panicked", vertices[v].name)));
                }
                Ok(Some(res)) => finished.push_back((v, start.elapsed(), res)),
                Ok(None) => {
                    running.spawn(async move {
                        let res = fut.await;
                        (v, start.elapsed(), res)
                    });
                }
            }
        }
        let (v, elapsed, res) = match finished.pop_front() {
            Some(f) => f,
            None => {
                let Some(joined) = running.join_next().await else {
                    // Nothing runs and nothing is ready, yet vertices remain: a cycle.
                    let stuck = (0..vertices.len())
                        .find(|v| needed[*v] && results[*v].is_none())
                        .unwrap_or(root);
                    return Err(SolveError::Cycle(stuck));
                };
                match joined {
                    Ok(x) => x,
                    Err(e) => {
                        running.abort_all();
                        return Err(SolveError::Join(e.to_string()));
                    }
                }
            }
        };
        match res {
            Ok(out) => {
                reporter.event(Event::Completed {
                    vertex: v,
                    cached: out.cached,
                    elapsed,
                });
                results[v] = Some(out.value);
                done += 1;
                for &c in &consumers[v] {
                    pending[c] -= 1;
                    if pending[c] == 0 {
                        ready.push(c);
                    }
                }
            }
            Err(source) => {
                reporter.event(Event::Failed {
                    vertex: v,
                    error: source.to_string(),
                });
                // Dropping the tasks cancels them; ops kill their processes on drop.
                running.abort_all();
                while running.join_next().await.is_some() {}
                return Err(SolveError::Vertex {
                    vertex: v,
                    name: vertices[v].name.clone(),
                    source,
                });
            }
        }
    }
    results[root].take().ok_or(SolveError::Cycle(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fake op: concatenates its inputs' strings with its own id, records the order it ran
    /// in and how many ran at once, and fails where told to.
    struct Fake {
        ids: Vec<String>,
        log: Mutex<Vec<usize>>,
        active: AtomicUsize,
        max_active: AtomicUsize,
        fail: Option<usize>,
        delay: Duration,
    }

    impl Fake {
        fn new(ids: &[&str], delay_ms: u64, fail: Option<usize>) -> Arc<Self> {
            Arc::new(Fake {
                ids: ids.iter().map(|s| s.to_string()).collect(),
                log: Mutex::new(Vec::new()),
                active: AtomicUsize::new(0),
                max_active: AtomicUsize::new(0),
                fail,
                delay: Duration::from_millis(delay_ms),
            })
        }
    }

    struct Runner(Arc<Fake>);

    impl OpRunner<String> for Runner {
        fn run(
            &self,
            vertex: usize,
            inputs: Vec<String>,
        ) -> BoxFuture<Result<Outcome<String>, OpError>> {
            let f = self.0.clone();
            Box::pin(async move {
                let now = f.active.fetch_add(1, Ordering::SeqCst) + 1;
                f.max_active.fetch_max(now, Ordering::SeqCst);
                // No delay: done when first polled (a cached step's way).
                if !f.delay.is_zero() {
                    tokio::time::sleep(f.delay).await;
                }
                f.active.fetch_sub(1, Ordering::SeqCst);
                f.log.lock().map_err(|e| e.to_string())?.push(vertex);
                if f.fail == Some(vertex) {
                    return Err("boom".into());
                }
                Ok(Outcome {
                    value: format!("{}({})", f.ids[vertex], inputs.join(",")),
                    cached: false,
                })
            })
        }
    }

    fn vx(id: &str, inputs: &[usize]) -> Vertex {
        Vertex {
            id: id.into(),
            name: id.into(),
            inputs: inputs.to_vec(),
        }
    }

    fn opts(n: usize) -> SolveOptions {
        SolveOptions { parallelism: n }
    }

    #[tokio::test]
    async fn runs_in_dependency_order_and_passes_inputs() {
        let g = vec![vx("a", &[]), vx("b", &[0]), vx("c", &[1, 0])];
        let f = Fake::new(&["a", "b", "c"], 0, None);
        let out = solve(
            &g,
            2,
            Arc::new(Runner(f.clone())),
            Arc::new(Silent),
            &opts(4),
        )
        .await
        .unwrap();
        assert_eq!(out, "c(b(a()),a())");
        assert_eq!(*f.log.lock().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn shared_inputs_run_once_and_unneeded_vertices_not_at_all() {
        // d is not reachable from the root.
        let g = vec![
            vx("a", &[]),
            vx("b", &[0]),
            vx("c", &[0]),
            vx("d", &[]),
            vx("e", &[1, 2]),
        ];
        let f = Fake::new(&["a", "b", "c", "d", "e"], 0, None);
        solve(
            &g,
            4,
            Arc::new(Runner(f.clone())),
            Arc::new(Silent),
            &opts(4),
        )
        .await
        .unwrap();
        let mut log = f.log.lock().unwrap().clone();
        assert_eq!(log.iter().filter(|v| **v == 0).count(), 1);
        log.sort();
        assert_eq!(log, vec![0, 1, 2, 4]);
    }

    #[tokio::test]
    async fn independent_vertices_run_concurrently_up_to_the_limit() {
        let g = vec![
            vx("a", &[]),
            vx("b", &[]),
            vx("c", &[]),
            vx("d", &[]),
            vx("e", &[0, 1, 2, 3]),
        ];
        let f = Fake::new(&["a", "b", "c", "d", "e"], 50, None);
        solve(
            &g,
            4,
            Arc::new(Runner(f.clone())),
            Arc::new(Silent),
            &opts(2),
        )
        .await
        .unwrap();
        assert_eq!(f.max_active.load(Ordering::SeqCst), 2);

        let f = Fake::new(&["a", "b", "c", "d", "e"], 50, None);
        solve(
            &g,
            4,
            Arc::new(Runner(f.clone())),
            Arc::new(Silent),
            &opts(1),
        )
        .await
        .unwrap();
        assert_eq!(f.max_active.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_names_the_vertex_and_stops_its_consumers() {
        let g = vec![vx("a", &[]), vx("b", &[0]), vx("c", &[1])];
        let f = Fake::new(&["a", "b", "c"], 0, Some(1));
        let err = solve(
            &g,
            2,
            Arc::new(Runner(f.clone())),
            Arc::new(Silent),
            &opts(2),
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "b: boom");
        assert!(!f.log.lock().unwrap().contains(&2));
    }

    /// Sets its flag when dropped: shows that a running vertex's future was cancelled.
    struct DropFlag(Arc<AtomicUsize>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How [`FailFast`]'s failing vertex fails.
    #[derive(Clone, Copy, Debug)]
    enum How {
        /// After 20 ms (it was spawned).
        Soon,
        /// When first polled.
        AtOnce,
        /// By panicking when first polled.
        Panics,
    }

    /// Vertex `failing` fails as `how` says; every other vertex would take an hour.
    struct FailFast {
        dropped: Arc<AtomicUsize>,
        failing: usize,
        how: How,
    }

    impl OpRunner<String> for FailFast {
        fn run(
            &self,
            vertex: usize,
            _inputs: Vec<String>,
        ) -> BoxFuture<Result<Outcome<String>, OpError>> {
            let flag = DropFlag(self.dropped.clone());
            let (failing, how) = (vertex == self.failing, self.how);
            Box::pin(async move {
                let _flag = flag;
                match how {
                    _ if !failing => {}
                    How::Soon => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return Err("boom".into());
                    }
                    How::AtOnce => return Err("boom".into()),
                    How::Panics => panic!("a bug in an op"),
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Outcome {
                    value: String::new(),
                    cached: false,
                })
            })
        }
    }

    #[tokio::test]
    async fn a_failure_cancels_running_siblings() {
        // The failing vertex waits first (spawned), or fails when first polled (in place).
        for how in [How::Soon, How::AtOnce] {
            let g = vec![vx("a", &[]), vx("b", &[]), vx("c", &[0, 1])];
            let dropped = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let runner = FailFast {
                dropped: dropped.clone(),
                failing: 0,
                how,
            };
            let err = solve(&g, 2, Arc::new(runner), Arc::new(Silent), &opts(4))
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), "a: boom");
            // Both futures are gone: the failed one and the cancelled sibling.
            assert_eq!(dropped.load(Ordering::SeqCst), 2, "{how:?}");
            assert!(started.elapsed() < Duration::from_secs(60));
        }
    }

    #[tokio::test]
    async fn a_step_that_panics_when_first_polled_fails_the_solve() {
        // b panics once a is already spawned.
        let g = vec![vx("a", &[]), vx("b", &[]), vx("c", &[0, 1])];
        let dropped = Arc::new(AtomicUsize::new(0));
        let runner = FailFast {
            dropped: dropped.clone(),
            failing: 1,
            how: How::Panics,
        };
        let err = solve(&g, 2, Arc::new(runner), Arc::new(Silent), &opts(4))
            .await
            .unwrap_err();
        assert!(matches!(err, SolveError::Join(_)), "{err}");
        assert!(err.to_string().contains("b panicked"), "{err}");
        // The sibling that was waiting is cancelled, the panicked one dropped.
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }

    /// Keeps the events of a solve.
    #[derive(Default)]
    struct Events(Mutex<Vec<Event>>);

    impl Reporter for Events {
        fn event(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[tokio::test]
    async fn steps_done_when_first_polled_report_in_order() {
        // A diamond whose steps never wait (a cached build): every step starts after its
        // inputs completed, and completes once.
        let g = vec![vx("a", &[]), vx("b", &[0]), vx("c", &[0]), vx("d", &[1, 2])];
        let f = Fake::new(&["a", "b", "c", "d"], 0, None);
        let events = Arc::new(Events::default());
        let out = solve(&g, 3, Arc::new(Runner(f.clone())), events.clone(), &opts(1))
            .await
            .unwrap();
        assert_eq!(out, "d(b(a()),c(a()))");
        let order: Vec<(bool, usize)> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Started { vertex, .. } => Some((true, *vertex)),
                Event::Completed { vertex, .. } => Some((false, *vertex)),
                _ => None,
            })
            .collect();
        let at = |e: (bool, usize)| order.iter().position(|x| *x == e).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        for (v, inputs) in [(1, vec![0]), (2, vec![0]), (3, vec![1, 2])] {
            for i in inputs {
                assert!(at((false, i)) < at((true, v)), "{order:?}");
            }
        }
        for v in 0..4 {
            assert!(at((true, v)) < at((false, v)), "{order:?}");
        }
    }

    /// A fake op that goes through the cache protocol: its key is its id and its inputs'
    /// values; a hit returns the committed value without "executing" (nothing is logged).
    struct Cached {
        fake: Arc<Fake>,
        cache: Arc<cache::fake::MapStore>,
    }

    impl OpRunner<String> for Cached {
        fn run(
            &self,
            vertex: usize,
            inputs: Vec<String>,
        ) -> BoxFuture<Result<Outcome<String>, OpError>> {
            let key = format!("{}<{}>", self.fake.ids[vertex], inputs.join(","));
            let cache = self.cache.clone();
            let inner = Runner(self.fake.clone());
            Box::pin(async move {
                let map = cache::CacheMap::one(key, false);
                let out = cache::resolve(&*cache, &map, |_drafts| async move {
                    let out = inner
                        .run(vertex, inputs)
                        .await
                        .map_err(|e| cache::fake::FakeError(e.to_string()))?;
                    Ok::<_, cache::fake::FakeError>(vec![out.value])
                })
                .await?;
                Ok(Outcome {
                    value: out.values.into_iter().next().unwrap_or_default(),
                    cached: out.cached,
                })
            })
        }
    }

    /// Records which vertices completed as cached.
    #[derive(Default)]
    struct Record(Mutex<Vec<(usize, bool)>>);

    impl Reporter for Record {
        fn event(&self, e: Event) {
            if let Event::Completed { vertex, cached, .. } = e
                && let Ok(mut v) = self.0.lock()
            {
                v.push((vertex, cached));
            }
        }
    }

    #[tokio::test]
    async fn a_warm_solve_is_all_cache_hits_and_a_change_reruns_only_its_dependents() {
        let g = vec![vx("a", &[]), vx("b", &[0]), vx("c", &[]), vx("d", &[1, 2])];
        let cache = Arc::new(cache::fake::MapStore::default());
        let run = |ids: &[&str]| {
            let fake = Fake::new(ids, 0, None);
            let rec = Arc::new(Record::default());
            let runner = Arc::new(Cached {
                fake: fake.clone(),
                cache: cache.clone(),
            });
            (fake, rec, runner)
        };
        let (fake, rec, runner) = run(&["a", "b", "c", "d"]);
        let cold = solve(&g, 3, runner, rec.clone(), &opts(4)).await.unwrap();
        assert_eq!(fake.log.lock().unwrap().len(), 4);
        let (fake, rec, runner) = run(&["a", "b", "c", "d"]);
        let warm = solve(&g, 3, runner, rec.clone(), &opts(4)).await.unwrap();
        assert_eq!(warm, cold);
        assert!(fake.log.lock().unwrap().is_empty(), "a warm solve ran ops");
        let mut seen = rec.0.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, vec![(0, true), (1, true), (2, true), (3, true)]);
        // `c` changes: c and d run again, a and b stay cached.
        let (fake, _rec, runner) = run(&["a", "b", "c2", "d"]);
        let out = solve(&g, 3, runner, Arc::new(Silent), &opts(4))
            .await
            .unwrap();
        assert_eq!(out, "d(b(a()),c2())");
        let mut ran = fake.log.lock().unwrap().clone();
        ran.sort();
        assert_eq!(ran, vec![2, 3]);
    }

    #[tokio::test]
    async fn bad_graphs_are_errors() {
        let f = Fake::new(&["a", "b"], 0, None);
        let cyc = vec![vx("a", &[1]), vx("b", &[0])];
        let err = solve(
            &cyc,
            1,
            Arc::new(Runner(f.clone())),
            Arc::new(Silent),
            &opts(1),
        )
        .await;
        assert!(matches!(err, Err(SolveError::Cycle(_))));
        let dangling = vec![vx("a", &[7])];
        let err = solve(
            &dangling,
            0,
            Arc::new(Runner(f)),
            Arc::new(Silent),
            &opts(1),
        )
        .await;
        assert!(matches!(err, Err(SolveError::BadInput { .. })));
    }
}
