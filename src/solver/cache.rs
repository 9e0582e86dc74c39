//! The cache protocol, in one place for every op.
//!
//! An op says what its cache map is (the keys of its outputs, and whether it ignores the
//! cache) and how to build its outputs into drafts; [`resolve`] does the rest:
//!
//! 1. every output key found committed → a cache hit, nothing runs;
//! 2. else take the main key's lock (other builds on the same store wait there), and look
//!    again: whoever held the lock may have committed it meanwhile;
//! 3. else prepare one draft per output, build into them, and commit the further outputs
//!    first and the main one last (a committed main output then implies the others); a
//!    failed build discards every draft and commits nothing.
//!
//! The store behind it is a [`CacheStore`]: the snapshot store for real builds
//! (`worker::Worker`), a map in the tests.

use std::future::Future;

/// What an op asks of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMap {
    /// The key of output 0 first, then those of the op's further outputs.
    pub keys: Vec<String>,
    /// Never take a result from the cache (`OpMetadata.ignore_cache`, `--no-cache`): the op
    /// runs, still under the key's lock, and its result is committed as usual.
    pub ignore_cache: bool,
}

impl CacheMap {
    /// A map for an op with one output.
    pub fn one(key: String, ignore_cache: bool) -> Self {
        CacheMap {
            keys: vec![key],
            ignore_cache,
        }
    }
}

/// Where results are kept by cache key, and built before they are kept.
pub trait CacheStore: Send + Sync {
    /// A committed result.
    type Value: Clone + Send;
    /// A result being built. The protocol keeps it and hands the builder a copy.
    type Draft: Clone + Send;
    /// Held while one build owns a key.
    type Lock: Send;
    type Error: std::error::Error + Send + Sync + 'static;

    /// The committed result for `key`, if any.
    fn lookup(&self, key: &str) -> Result<Option<Self::Value>, Self::Error>;
    /// Waits for the exclusive right to build `key`.
    fn lock(&self, key: &str) -> impl Future<Output = Result<Self::Lock, Self::Error>> + Send;
    /// A fresh, empty draft.
    fn prepare(&self) -> Result<Self::Draft, Self::Error>;
    /// Makes `draft` the result for `key`, recording `value`. Where another build committed
    /// `key` first, its result wins and is returned (the draft is dropped).
    fn commit(
        &self,
        draft: Self::Draft,
        key: &str,
        value: Self::Value,
    ) -> impl Future<Output = Result<Self::Value, Self::Error>> + Send;
    /// Drops a draft that will not be committed. Best effort: failures are only logged.
    fn discard(&self, draft: Self::Draft) -> impl Future<Output = ()> + Send;
}

/// An op built another number of outputs than its cache map has keys (a bug of the op).
#[derive(Debug, thiserror::Error)]
#[error("an op built {built} outputs where its cache map names {keys}")]
pub struct OutputCount {
    pub built: usize,
    pub keys: usize,
}

/// What [`resolve`] produced: one value per key of the map, in the map's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<V> {
    pub values: Vec<V>,
    /// Every value came from the cache; nothing was built.
    pub cached: bool,
}

/// Looks `map` up in `store`, or builds it: see the module's documentation. `build` gets one
/// draft per key and returns the value to record for each, in the same order.
pub async fn resolve<S, E, F, Fut>(
    store: &S,
    map: &CacheMap,
    build: F,
) -> Result<Resolved<S::Value>, E>
where
    S: CacheStore,
    E: From<S::Error> + From<OutputCount>,
    F: FnOnce(Vec<S::Draft>) -> Fut,
    Fut: Future<Output = Result<Vec<S::Value>, E>>,
{
    let Some(main) = map.keys.first() else {
        return Ok(Resolved {
            values: Vec::new(),
            cached: false,
        });
    };
    if let Some(values) = lookup_all(store, map)? {
        return Ok(hit(values));
    }
    let _lock = store.lock(main).await?;
    if let Some(values) = lookup_all(store, map)? {
        return Ok(hit(values));
    }
    let mut drafts = Vec::with_capacity(map.keys.len());
    for _ in &map.keys {
        match store.prepare() {
            Ok(d) => drafts.push(d),
            Err(e) => {
                discard_all(store, drafts).await;
                return Err(e.into());
            }
        }
    }
    let built = match build(drafts.clone()).await {
        Ok(v) if v.len() == drafts.len() => v,
        Ok(v) => {
            // A bug of the op, not the user's: the store stays clean all the same.
            let keys = drafts.len();
            discard_all(store, drafts).await;
            return Err(OutputCount {
                built: v.len(),
                keys,
            }
            .into());
        }
        Err(e) => {
            discard_all(store, drafts).await;
            return Err(e);
        }
    };
    // Further outputs first, the main output last.
    let mut pairs: Vec<_> = drafts.into_iter().zip(built).zip(&map.keys).collect();
    let first = pairs.remove(0);
    let mut values = Vec::with_capacity(map.keys.len());
    let mut left = pairs.into_iter();
    for ((draft, value), key) in left.by_ref() {
        match store.commit(draft, key, value).await {
            Ok(v) => values.push(v),
            Err(e) => {
                let rest = left.map(|((d, _), _)| d).chain([first.0.0]).collect();
                discard_all(store, rest).await;
                return Err(e.into());
            }
        }
    }
    let ((draft, value), key) = first;
    values.insert(0, store.commit(draft, key, value).await?);
    Ok(Resolved {
        values,
        cached: false,
    })
}

fn hit<V>(values: Vec<V>) -> Resolved<V> {
    Resolved {
        values,
        cached: true,
    }
}

/// Every key's committed value, or `None` if one is missing (or the map ignores the cache).
fn lookup_all<S: CacheStore>(store: &S, map: &CacheMap) -> Result<Option<Vec<S::Value>>, S::Error> {
    if map.ignore_cache {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(map.keys.len());
    for key in &map.keys {
        match store.lookup(key)? {
            Some(v) => values.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(values))
}

async fn discard_all<S: CacheStore>(store: &S, drafts: Vec<S::Draft>) {
    for d in drafts {
        store.discard(d).await;
    }
}

/// A [`CacheStore`] in memory, for tests of the protocol and of whatever runs on it: values
/// are strings, a draft is a shared buffer the builder writes into.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::CacheStore;

    #[derive(Debug, thiserror::Error)]
    #[error("fake cache: {0}")]
    pub struct FakeError(pub String);

    impl From<super::OutputCount> for FakeError {
        fn from(e: super::OutputCount) -> Self {
            FakeError(e.to_string())
        }
    }

    /// A draft: what the builder wrote.
    pub type Draft = Arc<Mutex<String>>;

    #[derive(Default)]
    pub struct MapStore {
        committed: Mutex<HashMap<String, String>>,
        locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
        /// Every operation, in order: `lookup k`, `lock k`, `prepare`, `commit k`, `discard`.
        pub log: Mutex<Vec<String>>,
        /// Commits of these keys fail.
        pub fail_commit: Mutex<Vec<String>>,
    }

    impl MapStore {
        fn note(&self, what: String) {
            if let Ok(mut l) = self.log.lock() {
                l.push(what);
            }
        }

        /// The operations so far, and a fresh log.
        pub fn take_log(&self) -> Vec<String> {
            self.log
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default()
        }

        /// What is committed under `key`.
        pub fn get(&self, key: &str) -> Option<String> {
            self.committed.lock().ok()?.get(key).cloned()
        }

        /// Commits `value` under `key` directly, as another build would.
        pub fn put(&self, key: &str, value: &str) {
            if let Ok(mut c) = self.committed.lock() {
                c.insert(key.to_string(), value.to_string());
            }
        }
    }

    fn poisoned<T>(_: T) -> FakeError {
        FakeError("a lock was poisoned".into())
    }

    impl CacheStore for MapStore {
        type Value = String;
        type Draft = Draft;
        type Lock = tokio::sync::OwnedMutexGuard<()>;
        type Error = FakeError;

        fn lookup(&self, key: &str) -> Result<Option<String>, FakeError> {
            self.note(format!("lookup {key}"));
            Ok(self.committed.lock().map_err(poisoned)?.get(key).cloned())
        }

        async fn lock(&self, key: &str) -> Result<Self::Lock, FakeError> {
            self.note(format!("lock {key}"));
            let m = self
                .locks
                .lock()
                .map_err(poisoned)?
                .entry(key.to_string())
                .or_default()
                .clone();
            Ok(m.lock_owned().await)
        }

        fn prepare(&self) -> Result<Draft, FakeError> {
            self.note("prepare".into());
            Ok(Draft::default())
        }

        async fn commit(
            &self,
            draft: Draft,
            key: &str,
            value: String,
        ) -> Result<String, FakeError> {
            self.note(format!("commit {key}"));
            if self
                .fail_commit
                .lock()
                .map_err(poisoned)?
                .iter()
                .any(|k| k == key)
            {
                return Err(FakeError(format!("cannot commit {key}")));
            }
            let written = draft.lock().map_err(poisoned)?.clone();
            let mut c = self.committed.lock().map_err(poisoned)?;
            Ok(c.entry(key.to_string())
                .or_insert(format!("{value}{written}"))
                .clone())
        }

        async fn discard(&self, _draft: Draft) {
            self.note("discard".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::fake::{FakeError, MapStore};
    use super::*;

    fn map(keys: &[&str], ignore_cache: bool) -> CacheMap {
        CacheMap {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ignore_cache,
        }
    }

    /// Builds "v:<key>" into each draft, counting runs.
    async fn build(
        store: &MapStore,
        m: &CacheMap,
        runs: &AtomicUsize,
    ) -> Result<Resolved<String>, FakeError> {
        resolve(store, m, |drafts| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (d, k) in drafts.iter().zip(&m.keys) {
                d.lock()
                    .map_err(|_| FakeError("poisoned".into()))?
                    .push_str(k);
            }
            Ok(m.keys.iter().map(|_| "v:".to_string()).collect())
        })
        .await
    }

    #[tokio::test]
    async fn a_miss_builds_and_commits_then_a_second_resolve_is_a_hit() {
        let store = MapStore::default();
        let runs = AtomicUsize::new(0);
        let m = map(&["a"], false);
        let first = build(&store, &m, &runs).await.unwrap();
        assert_eq!(
            first,
            Resolved {
                values: vec!["v:a".into()],
                cached: false
            }
        );
        assert_eq!(
            store.take_log(),
            ["lookup a", "lock a", "lookup a", "prepare", "commit a"]
        );
        let second = build(&store, &m, &runs).await.unwrap();
        assert_eq!(
            second,
            Resolved {
                values: vec!["v:a".into()],
                cached: true
            }
        );
        assert_eq!(store.take_log(), ["lookup a"]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn ignore_cache_runs_the_op_under_the_lock_and_keeps_the_first_commit() {
        let store = MapStore::default();
        store.put("a", "old");
        let runs = AtomicUsize::new(0);
        let out = build(&store, &map(&["a"], true), &runs).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!out.cached);
        // No lookup at all; the committed result stays the first one (like a snapshot
        // rename onto an existing one).
        assert_eq!(store.take_log(), ["lock a", "prepare", "commit a"]);
        assert_eq!(out.values, ["old"]);
    }

    #[tokio::test]
    async fn further_outputs_are_committed_before_the_main_one() {
        let store = MapStore::default();
        let runs = AtomicUsize::new(0);
        let out = build(&store, &map(&["m", "o1", "o2"], false), &runs)
            .await
            .unwrap();
        assert_eq!(out.values, ["v:m", "v:o1", "v:o2"]);
        let commits: Vec<_> = store
            .take_log()
            .into_iter()
            .filter(|l| l.starts_with("commit"))
            .collect();
        assert_eq!(commits, ["commit o1", "commit o2", "commit m"]);
    }

    #[tokio::test]
    async fn a_main_hit_with_a_missing_output_is_built_again() {
        let store = MapStore::default();
        store.put("m", "old-m");
        let runs = AtomicUsize::new(0);
        let out = build(&store, &map(&["m", "o1"], false), &runs)
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(out.values, ["old-m", "v:o1"]);
        assert!(!out.cached);
    }

    #[tokio::test]
    async fn a_failed_build_discards_every_draft_and_releases_the_key() {
        let store = MapStore::default();
        let m = map(&["m", "o1"], false);
        let err = resolve(&store, &m, |_drafts| async {
            Err::<Vec<String>, _>(FakeError("step failed".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "fake cache: step failed");
        let log = store.take_log();
        assert_eq!(log.iter().filter(|l| *l == "discard").count(), 2);
        assert!(!log.iter().any(|l| l.starts_with("commit")));
        assert_eq!(store.get("m"), None);
        // The lock was released: the next resolve builds.
        let runs = AtomicUsize::new(0);
        build(&store, &m, &runs).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_commit_discards_the_uncommitted_drafts() {
        let store = MapStore::default();
        store.fail_commit.lock().unwrap().push("o1".into());
        let runs = AtomicUsize::new(0);
        let err = build(&store, &map(&["m", "o1", "o2"], false), &runs)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "fake cache: cannot commit o1");
        let log = store.take_log();
        // o2 and m were never committed: both drafts discarded, the main key absent.
        assert_eq!(log.iter().filter(|l| *l == "discard").count(), 2);
        assert_eq!(store.get("m"), None);
    }

    #[tokio::test]
    async fn concurrent_resolves_of_one_key_build_it_once() {
        let store = Arc::new(MapStore::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, runs) = (store.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                build(&store, &map(&["k"], false), &runs).await
            }));
        }
        let mut cached = 0;
        for t in tasks {
            let out = t.await.unwrap().unwrap();
            assert_eq!(out.values, ["v:k"]);
            cached += usize::from(out.cached);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(cached, 3);
    }

    #[tokio::test]
    async fn a_builder_with_too_few_outputs_commits_nothing() {
        let store = MapStore::default();
        let err = resolve(&store, &map(&["m", "o1"], false), |_d| async {
            Ok::<_, FakeError>(vec!["only one".to_string()])
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("built 1 outputs"), "{err}");
        assert_eq!(store.get("m"), None);
        assert_eq!(
            store.take_log().iter().filter(|l| *l == "discard").count(),
            2
        );
    }

    #[tokio::test]
    async fn an_empty_map_builds_nothing() {
        let store = MapStore::default();
        let out = resolve(&store, &map(&[], false), |_d| async {
            Err::<Vec<String>, FakeError>(FakeError("must not run".into()))
        })
        .await
        .unwrap();
        assert!(out.values.is_empty());
        assert!(store.take_log().is_empty());
    }
}
