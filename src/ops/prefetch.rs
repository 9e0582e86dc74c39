//! Image pulls started by a solve's first pass.
//!
//! The first pass only computes keys, and a cold build's longest wait is usually the base
//! image: its key is known as soon as the tag is resolved, long before a large build context
//! has been hashed. An image whose key the store lacks is then pulled and unpacked at once, on
//! a task of its own, through the same cache protocol as any op; the second pass takes the
//! result when the plan runs that vertex. Where the plan does not (a step above it is cached,
//! an imported cache has it), the task is aborted, and so is every task still running when
//! the solve ends: dropping the pull kills its unpacking helper.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinHandle;

use super::{Ctx, OpsError, Res};
use crate::solver::Outcome;

type Pulled = Result<Outcome<Res>, OpsError>;

/// Pulls in flight, by the solver index of their image source.
#[derive(Default)]
pub struct Prefetches {
    tasks: Mutex<HashMap<usize, Task>>,
}

/// A spawned pull, aborted when dropped.
struct Task(JoinHandle<Pulled>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Prefetches {
    /// Runs `ctx`'s op (an image source, which needs no inputs) on a task of its own, unless
    /// one already runs for that vertex.
    pub(super) fn start(&self, ctx: Ctx) {
        let vertex = ctx.vertex;
        self.spawn(vertex, async move { ctx.run(Vec::new()).await });
    }

    fn spawn(&self, vertex: usize, work: impl Future<Output = Pulled> + Send + 'static) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        tasks
            .entry(vertex)
            .or_insert_with(|| Task(tokio::spawn(work)));
    }

    /// Aborts the pulls of the vertices `runs` says the solve will not run.
    pub fn keep_only(&self, runs: impl Fn(usize) -> bool) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|&v, _| runs(v));
        }
    }

    /// The pull started for `vertex`, awaited: `None` where there is none or it did not
    /// finish (aborted, or it panicked), and the op should run as usual.
    pub(super) async fn take(&self, vertex: usize) -> Option<Pulled> {
        let mut task = self.tasks.lock().ok()?.remove(&vertex)?;
        (&mut task.0).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapRef;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts, when dropped, that the work it was part of went away unfinished.
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pulled(key: &str) -> Pulled {
        Ok(Outcome {
            value: Res::new(SnapRef::scratch(), key),
            cached: false,
        })
    }

    /// Work that never ends, and says so when it is dropped.
    fn forever(dropped: &Arc<AtomicUsize>) -> impl Future<Output = Pulled> + Send + 'static {
        let guard = Dropped(dropped.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            pulled("never")
        }
    }

    /// Lets spawned tasks run (and aborted ones be dropped).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_second_pass_takes_what_was_pulled_and_the_rest_is_aborted() {
        let p = Prefetches::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        p.spawn(1, async { pulled("k1") });
        p.spawn(2, forever(&dropped));
        p.spawn(3, async { Err(OpsError::Invalid("no such image".into())) });
        // One task per vertex: a second start for it is ignored.
        p.spawn(1, async { pulled("other") });
        let got = p.take(1).await.unwrap().unwrap();
        assert_eq!((got.value.key.as_str(), got.cached), ("k1", false));
        assert!(p.take(1).await.is_none(), "taken once");
        // A failed pull is the op's failure.
        let e = p.take(3).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("no such image"), "{e}");
        // The plan does not run vertex 2: its pull goes.
        p.keep_only(|v| v != 2);
        settle().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert!(p.take(2).await.is_none());
    }

    #[tokio::test]
    async fn pulls_in_flight_end_with_the_solve() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let p = Prefetches::default();
        p.spawn(5, forever(&dropped));
        p.spawn(6, forever(&dropped));
        settle().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        drop(p);
        settle().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }
}
