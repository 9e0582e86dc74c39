//! The engine and its ops on a fake executor: Definitions solved end to end in this process,
//! without a user namespace (the real helper is covered by the tests under `tests/`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Engine, Options};
use crate::config::{Config, StepNetwork};
use crate::llb::{self, Constraints, MarshalOptions, Mount, Run};
use crate::progress::{Event, Reporter};
use crate::snapshot::SnapRef;
use crate::worker::Executor;

/// Namespace work done in this process, as far as these tests need it: an exec writes its
/// argv to `out` in its upper dir (and to `out` in each output mount's dir), prints it, and
/// exits with N when its last argument is `exit=N`; a removal deletes the tree; anything
/// else is refused.
#[derive(Default)]
struct InProcess {
    /// The argv of each exec, in order.
    execs: Mutex<Vec<String>>,
    /// The requests other than execs, by kind.
    others: Mutex<Vec<String>>,
}

impl InProcess {
    fn take_execs(&self) -> Vec<String> {
        std::mem::take(&mut *self.execs.lock().unwrap())
    }
}

impl Executor for InProcess {
    fn run(
        &self,
        req: &rootless::Request,
        on_output: &mut dyn FnMut(&[u8]),
        _cancel: &rootless::Cancel,
    ) -> Result<rootless::Response, rootless::RootlessError> {
        let io = |e: std::io::Error| rootless::RootlessError::Helper(e.to_string());
        match req {
            rootless::Request::Exec(e) => {
                let argv = e.args.join(" ");
                self.execs.lock().unwrap().push(argv.clone());
                std::fs::write(e.upper.join("out"), &argv).map_err(io)?;
                for m in &e.mounts {
                    if let rootless::MountKind::Layers {
                        keep: Some((fs, _)),
                        ..
                    } = &m.kind
                    {
                        std::fs::write(fs.join("out"), format!("mount {}", m.target))
                            .map_err(io)?;
                    }
                }
                on_output(format!("ran {argv}\n").as_bytes());
                let code = e
                    .args
                    .last()
                    .and_then(|a| a.strip_prefix("exit="))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                Ok(rootless::Response::Exited(rootless::ExitStatus::Code(code)))
            }
            rootless::Request::RemoveAll { path } => {
                self.others.lock().unwrap().push("remove".into());
                match std::fs::remove_dir_all(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                    _ => Ok(rootless::Response::Done),
                }
            }
            other => Err(rootless::RootlessError::Helper(format!(
                "the fake executor does not do {other:?}"
            ))),
        }
    }
}

/// Which vertices completed, and whether from the cache.
#[derive(Default)]
struct Record(Mutex<Vec<(String, bool)>>);

impl Reporter for Record {
    fn event(&self, e: Event) {
        let mut v = self.0.lock().unwrap();
        match e {
            Event::Started { vertex, name, .. } => {
                v.push((format!("{vertex} {name}"), false));
            }
            Event::Completed { vertex, cached, .. } => {
                if let Some(s) = v
                    .iter_mut()
                    .find(|(n, _)| n.starts_with(&format!("{vertex} ")))
                {
                    s.1 = cached;
                }
            }
            _ => {}
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    exec: Arc<InProcess>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            root: dir.path().join("store"),
            _dir: dir,
            exec: Arc::new(InProcess::default()),
        }
    }

    async fn engine(&self, no_cache: bool, reporter: Arc<dyn Reporter>) -> Engine {
        let mut config = Config::default();
        // No slirp4netns probe: the fake runs nothing.
        config.worker.network = StepNetwork::Host;
        let o = Options {
            root: self.root.clone(),
            config,
            ca_bundle: None,
            parallelism: Some(2),
            no_cache,
            entitlements: Default::default(),
            secrets: BTreeMap::new(),
            ssh: BTreeMap::new(),
            reporter,
        };
        Engine::with_executor(o, self.exec.clone()).await.unwrap()
    }

    async fn solve(&self, state: &llb::State, no_cache: bool) -> (SnapRef, Vec<(String, bool)>) {
        let rec = Arc::new(Record::default());
        let engine = self.engine(no_cache, rec.clone()).await;
        let def = state.marshal(&MarshalOptions::default()).unwrap();
        let snap = engine
            .solve(&def.to_bytes(), BTreeMap::new())
            .await
            .unwrap();
        let seen = rec.0.lock().unwrap().clone();
        (snap, seen)
    }

    fn file(&self, snap: &SnapRef, layer: usize, name: &str) -> String {
        let fs = self
            .root
            .join("snapshots")
            .join(&snap.chain[layer])
            .join("fs");
        std::fs::read_to_string(fs.join(name)).unwrap_or_default()
    }

    /// Temporary entries of the snapshot dir (uncommitted drafts, trees on their way out).
    fn leftovers(&self) -> Vec<String> {
        leftovers(&self.root.join("snapshots"))
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            n.starts_with("tmp-").then_some(n)
        })
        .collect()
}

fn chain() -> llb::State {
    llb::scratch()
        .run(Run::args(["step-a"]))
        .root()
        .run(Run::args(["step-b"]))
        .root()
}

#[tokio::test]
async fn a_chain_runs_once_and_then_comes_from_the_cache() {
    let f = Fixture::new();
    let (cold, seen) = f.solve(&chain(), false).await;
    assert_eq!(f.exec.take_execs(), ["step-a", "step-b"]);
    assert!(seen.iter().all(|(_, cached)| !cached), "{seen:?}");
    assert_eq!(cold.chain.len(), 2);
    assert_eq!(f.file(&cold, 0, "out"), "step-a");
    assert_eq!(f.file(&cold, 1, "out"), "step-b");

    let (warm, seen) = f.solve(&chain(), false).await;
    assert_eq!(warm, cold);
    assert!(f.exec.take_execs().is_empty(), "a warm solve ran steps");
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, cached)| *cached), "{seen:?}");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[tokio::test]
async fn no_cache_runs_every_step_and_ignore_cache_only_its_own() {
    let f = Fixture::new();
    f.solve(&chain(), false).await;
    f.exec.take_execs();
    let (_, seen) = f.solve(&chain(), true).await;
    assert_eq!(f.exec.take_execs(), ["step-a", "step-b"]);
    assert!(seen.iter().all(|(_, cached)| !cached), "{seen:?}");

    // Only the step that asks for it reruns; what follows it is still found by key.
    let state = llb::scratch()
        .run(Run::args(["step-a"]))
        .root()
        .run(Run::args(["step-b"]).constraints(Constraints::new().ignore_cache()))
        .root();
    f.solve(&state, false).await;
    f.exec.take_execs();
    f.solve(&state, false).await;
    assert_eq!(f.exec.take_execs(), ["step-b"]);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[tokio::test]
async fn a_failed_step_says_its_command_exit_code_and_output_and_commits_nothing() {
    let f = Fixture::new();
    let state = llb::scratch()
        .run(Run::args(["step-a"]))
        .root()
        .run(Run::args(["sh", "exit=3"]))
        .root();
    let rec: Arc<dyn Reporter> = Arc::new(Record::default());
    let engine = f.engine(false, rec).await;
    let def = state.marshal(&MarshalOptions::default()).unwrap();
    let err = engine
        .solve(&def.to_bytes(), BTreeMap::new())
        .await
        .unwrap_err()
        .to_string();
    for want in ["process \"sh ", "exit code: 3", "ran sh exit=3"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // The first step is committed; the failed one left no snapshot, committed or not.
    let snaps: Vec<_> = std::fs::read_dir(f.root.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("ref.json").exists())
        .collect();
    assert_eq!(snaps.len(), 1);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
    // The next try runs only the failed step.
    f.exec.take_execs();
    let _ = engine.solve(&def.to_bytes(), BTreeMap::new()).await;
    assert_eq!(f.exec.take_execs(), ["sh exit=3"]);
}

#[tokio::test]
async fn a_mounts_output_is_its_own_result_and_cached_with_the_step() {
    let f = Fixture::new();
    let base = llb::scratch().run(Run::args(["base"])).root();
    let exec = llb::scratch().run(Run::args(["writer"]).mount(Mount::bind("/out", &base)));
    let out = exec.get_mount("/out").unwrap();
    let (snap, _) = f.solve(&out, false).await;
    assert_eq!(f.exec.take_execs(), ["base", "writer"]);
    // The mount's result: its input's layer, then what the step wrote into the mount.
    assert_eq!(snap.chain.len(), 2);
    assert_eq!(f.file(&snap, 0, "out"), "base");
    assert_eq!(f.file(&snap, 1, "out"), "mount /out");
    let (again, seen) = f.solve(&out, false).await;
    assert_eq!(again, snap);
    assert!(f.exec.take_execs().is_empty());
    assert!(seen.iter().all(|(_, c)| *c), "{seen:?}");
}

#[tokio::test]
async fn a_merge_stacks_its_inputs_and_runs_nothing_itself() {
    let f = Fixture::new();
    let a = llb::scratch().run(Run::args(["a"])).root();
    let b = llb::scratch().run(Run::args(["b"])).root();
    let m = llb::merge(&[a, b], Constraints::new());
    let (snap, _) = f.solve(&m, false).await;
    let mut ran = f.exec.take_execs();
    ran.sort();
    assert_eq!(ran, ["a", "b"]);
    assert_eq!(snap.chain.len(), 2);
    assert_eq!(f.file(&snap, 0, "out"), "a");
    assert_eq!(f.file(&snap, 1, "out"), "b");
    let (again, _) = f.solve(&m, false).await;
    assert_eq!(again, snap);
}

#[tokio::test]
async fn a_changed_context_is_copied_again_linking_what_did_not_change() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::create_dir(ctx.path().join("d")).unwrap();
    std::fs::write(ctx.path().join("d/kept"), "kept").unwrap();
    std::fs::write(ctx.path().join("edited"), "one").unwrap();
    let state = llb::local("ctx", Default::default());
    let solve = || async {
        let engine = f.engine(false, Arc::new(Record::default())).await;
        let def = state.marshal(&MarshalOptions::default()).unwrap();
        let locals = BTreeMap::from([("ctx".to_string(), ctx.path().to_path_buf())]);
        engine.solve(&def.to_bytes(), locals).await.unwrap()
    };
    let first = solve().await;
    std::fs::write(ctx.path().join("edited"), "two").unwrap();
    let second = solve().await;
    assert_ne!(first, second);
    let ino = |s: &SnapRef, p: &str| {
        let fs = f.root.join("snapshots").join(&s.chain[0]).join("fs");
        std::fs::metadata(fs.join(p)).unwrap().ino()
    };
    assert_eq!(ino(&first, "d/kept"), ino(&second, "d/kept"));
    assert_ne!(ino(&first, "edited"), ino(&second, "edited"));
    assert_eq!(f.file(&first, 0, "edited"), "one");
    assert_eq!(f.file(&second, 0, "edited"), "two");
    assert_eq!(f.file(&second, 0, "d/kept"), "kept");
    // Back to the first content: its snapshot again, untouched.
    std::fs::write(ctx.path().join("edited"), "one").unwrap();
    assert_eq!(solve().await, first);
    assert_eq!(f.file(&first, 0, "edited"), "one");
}
