//! What ops call: the store (content, snapshots, cache mounts), the registry, and the rootless
//! executor. Namespace work never happens in this (async, multi-threaded) process: every piece
//! of it is a request to a freshly spawned helper process (`envkit __rootless-helper`, see the
//! `rootless` crate), run on a blocking thread.

pub mod emulate;
pub mod probe;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::config::Config;
use crate::content;
use crate::progress::{Event, LogTail, Reporter};
use crate::registry::Registry;
use crate::snapshot::{SnapshotError, Snapshots};

/// The hidden first argument that turns the envkit binary into the rootless helper.
pub const HELPER_ARG: &str = "__rootless-helper";

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Content(#[from] content::ContentError),
    #[error(transparent)]
    Rootless(#[from] rootless::RootlessError),
    #[error("cannot find the envkit executable to start the rootless helper: {0}")]
    SelfExe(std::io::Error),
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the rootless helper thread failed: {0}")]
    Join(String),
    #[error("builds are running on this store")]
    Busy,
    #[error("layer {digest} is {media_type}: envkit unpacks gzip and plain tar layers")]
    LayerType { digest: String, media_type: String },
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// Where step output goes while a helper runs.
pub struct OutputSink {
    pub reporter: Arc<dyn Reporter>,
    pub vertex: usize,
}

/// Cancels a helper when dropped (see [`Worker::run_helper`]).
struct KillOnDrop(Option<Arc<rootless::Cancel>>);

impl KillOnDrop {
    /// The helper has finished: nothing to kill any more.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.cancel();
        }
    }
}

/// Runs one request of namespace work to its end (on a blocking thread): output of the step
/// goes to `on_output`; `cancel` stops it.
pub trait Executor: Send + Sync {
    fn run(
        &self,
        req: &rootless::Request,
        on_output: &mut dyn FnMut(&[u8]),
        cancel: &rootless::Cancel,
    ) -> Result<rootless::Response, rootless::RootlessError>;
}

/// The real executor: a freshly spawned rootless helper process per request.
struct HelperExecutor {
    exe: PathBuf,
    /// The user's subordinate ids, read when the first helper starts (a build whose steps
    /// all come from the cache starts none, and reads neither the user database nor
    /// /etc/subuid and /etc/subgid).
    ids: std::sync::OnceLock<rootless::IdMap>,
    snapshotter: crate::config::Snapshotter,
}

impl HelperExecutor {
    fn ids(&self) -> Result<&rootless::IdMap, rootless::RootlessError> {
        if let Some(ids) = self.ids.get() {
            return Ok(ids);
        }
        let ids = rootless::IdMap::for_current_user()?;
        Ok(self.ids.get_or_init(|| ids))
    }
}

impl Executor for HelperExecutor {
    fn run(
        &self,
        req: &rootless::Request,
        on_output: &mut dyn FnMut(&[u8]),
        cancel: &rootless::Cancel,
    ) -> Result<rootless::Response, rootless::RootlessError> {
        rootless::run_helper_cancellable(
            &self.exe,
            &[HELPER_ARG, self.snapshotter.helper_arg()],
            self.ids()?,
            req,
            on_output,
            cancel,
        )
    }
}

/// Shared by every op of a build (and by concurrent builds in one process).
/// How steps share a cache mount (LLB's `CacheSharingOpt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// A cache mount's directory, held by one step (see [`Worker::cache_mount`]).
pub struct CacheMount {
    pub dir: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

pub struct Worker {
    pub root: PathBuf,
    pub snapshots: Snapshots,
    pub content: content::Store,
    pub registry: Registry,
    pub config: Config,
    /// Host CA bundle that build steps trust (`[worker] ca-bundle`, `--ca-bundle`).
    pub ca_bundle: Option<PathBuf>,
    /// What runs namespace work: the rootless helper, or a fake in tests.
    executor: Arc<dyn Executor>,
    /// The store's GC lock: shared while building, exclusive while pruning.
    _gc: nix::fcntl::Flock<std::fs::File>,
}

impl Worker {
    /// A worker for building: holds the store's GC lock shared, so prune waits for it.
    pub fn new(
        root: &Path,
        config: Config,
        ca_bundle: Option<PathBuf>,
    ) -> Result<Self, WorkerError> {
        Self::open(
            root,
            config,
            ca_bundle,
            nix::fcntl::FlockArg::LockShared,
            None,
        )
    }

    /// A worker for building whose namespace work `executor` does (a fake, in tests).
    pub fn with_executor(
        root: &Path,
        config: Config,
        ca_bundle: Option<PathBuf>,
        executor: Arc<dyn Executor>,
    ) -> Result<Self, WorkerError> {
        Self::open(
            root,
            config,
            ca_bundle,
            nix::fcntl::FlockArg::LockShared,
            Some(executor),
        )
    }

    /// A worker for pruning: waits until no build runs on the store (with `wait`; else
    /// [`WorkerError::Busy`]), and keeps new builds waiting until it is dropped.
    pub fn new_exclusive(root: &Path, config: Config, wait: bool) -> Result<Self, WorkerError> {
        let how = if wait {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockExclusiveNonblock
        };
        Self::open(root, config, None, how, None)
    }

    fn open(
        root: &Path,
        config: Config,
        ca_bundle: Option<PathBuf>,
        gc: nix::fcntl::FlockArg,
        executor: Option<Arc<dyn Executor>>,
    ) -> Result<Self, WorkerError> {
        content::private_root(root).map_err(|source| WorkerError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let gc_path = root.join("gc.lock");
        let gc_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&gc_path)
            .map_err(|source| WorkerError::Io {
                path: gc_path.clone(),
                source,
            })?;
        let gc_lock = nix::fcntl::Flock::lock(gc_file, gc).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                WorkerError::Busy
            } else {
                WorkerError::Io {
                    path: gc_path,
                    source: std::io::Error::from(e),
                }
            }
        })?;
        let snapshots = Snapshots::open(root)?;
        let content = content::Store::open(root)?;
        let registry = Registry::new(&config).with_store(content.clone());
        let executor: Arc<dyn Executor> = match executor {
            Some(e) => e,
            None => Arc::new(HelperExecutor {
                exe: std::env::current_exe().map_err(WorkerError::SelfExe)?,
                ids: std::sync::OnceLock::new(),
                snapshotter: config.worker.snapshotter.unwrap_or_default(),
            }),
        };
        Ok(Worker {
            root: root.to_path_buf(),
            snapshots,
            content,
            registry,
            config,
            ca_bundle,
            executor,
            _gc: gc_lock,
        })
    }

    /// Runs one request in a rootless helper process. Step output is streamed to `sink` and
    /// its last lines are kept in `tail`.
    pub async fn run_helper(
        &self,
        req: rootless::Request,
        sink: Option<OutputSink>,
        tail: Option<Arc<std::sync::Mutex<LogTail>>>,
    ) -> Result<rootless::Response, WorkerError> {
        let executor = self.executor.clone();
        // Dropping this future (the build failed elsewhere, or was interrupted) kills the
        // helper, and with it every process of the step.
        let cancel = Arc::new(rootless::Cancel::new());
        let guard = KillOnDrop(Some(cancel.clone()));
        let job = tokio::task::spawn_blocking(move || {
            let mut on_output = |data: &[u8]| {
                if let Some(t) = &tail
                    && let Ok(mut t) = t.lock()
                {
                    t.push(data);
                }
                if let Some(s) = &sink {
                    s.reporter.event(Event::Log {
                        vertex: s.vertex,
                        data: data.to_vec(),
                    });
                }
            };
            executor.run(&req, &mut on_output, &cancel)
        });
        let res = job.await;
        guard.disarm();
        match res {
            Ok(res) => Ok(res?),
            Err(e) => Err(WorkerError::Join(e.to_string())),
        }
    }

    /// The helper's request to unpack `layers` (blobs of the content store, gzip or plain
    /// tar) into `dest`, each bounded by `[worker] max-layer-size`.
    pub fn unpack_request(
        &self,
        layers: &[oci_spec::image::Descriptor],
        dest: &Path,
    ) -> Result<rootless::Request, WorkerError> {
        self.unpack_request_from(layers, &[], dest)
    }

    /// Like [`Worker::unpack_request`], where `from[i]`, when there is one, is the file layer
    /// `i`'s bytes are read from instead of its blob (a pipe its download feeds).
    pub fn unpack_request_from(
        &self,
        layers: &[oci_spec::image::Descriptor],
        from: &[Option<PathBuf>],
        dest: &Path,
    ) -> Result<rootless::Request, WorkerError> {
        let files = layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut f = self.layer_file(l)?;
                if let Some(Some(path)) = from.get(i) {
                    f.path = path.clone();
                }
                Ok(f)
            })
            .collect::<Result<Vec<_>, WorkerError>>()?;
        Ok(rootless::Request::Unpack {
            layers: files,
            dest: dest.to_path_buf(),
            max_layer_bytes: Some(self.config.worker.max_layer_size()),
        })
    }

    /// The helper's request to unpack one layer (a blob of the content store, gzip or plain
    /// tar) into the empty dir `dest` as an overlay upper dir of that layer (whiteouts and
    /// opaque markers recorded, not applied: a snapshot like a step's), bounded by
    /// `[worker] max-layer-size`.
    pub fn unpack_upper_request(
        &self,
        layer: &oci_spec::image::Descriptor,
        dest: &Path,
    ) -> Result<rootless::Request, WorkerError> {
        Ok(rootless::Request::UnpackUpper {
            layer: self.layer_file(layer)?,
            dest: dest.to_path_buf(),
            max_layer_bytes: Some(self.config.worker.max_layer_size()),
        })
    }

    /// A layer blob of the content store and its compression (by media type; gzip or none).
    fn layer_file(
        &self,
        l: &oci_spec::image::Descriptor,
    ) -> Result<rootless::LayerFile, WorkerError> {
        let media_type = l.media_type().to_string();
        let compression = if media_type.ends_with("gzip") {
            rootless::Compression::Gzip
        } else if media_type.ends_with("tar") {
            rootless::Compression::None
        } else {
            return Err(WorkerError::LayerType {
                digest: l.digest().to_string(),
                media_type,
            });
        };
        Ok(rootless::LayerFile {
            path: self.content.path(l.digest())?,
            compression,
        })
    }

    /// Deletes a tree that may hold files of subordinate ids (only the namespace can). The
    /// tree is first renamed into the snapshot dir under a temporary name (one atomic step:
    /// whatever stood for it is gone at once), then deleted there; a crash in between leaves
    /// a stale temporary dir that the next run removes.
    pub async fn remove_tree(&self, path: &Path) -> Result<(), WorkerError> {
        let trash = self.snapshots.trash_path();
        let path = match std::fs::rename(path, &trash) {
            Ok(()) => trash,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // Another file system (a store root with mounts in it): delete where it is.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => path.to_path_buf(),
            Err(source) => {
                return Err(WorkerError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        self.run_helper(rootless::Request::RemoveAll { path }, None, None)
            .await?;
        Ok(())
    }

    /// Deletes what interrupted builds left behind (uncommitted snapshots). Best effort.
    pub async fn clean_stale(&self) {
        if let Ok(stale) = self.snapshots.stale() {
            for dir in stale {
                if let Err(e) = self.remove_tree(&dir).await {
                    tracing::warn!("cannot remove {}: {e}", dir.display());
                }
            }
        }
    }

    /// The persistent directory of a cache mount (`--mount=type=cache,id=…`).
    /// A cache mount for one step, held until the returned guard is dropped. `shared` mounts
    /// are used by any number of steps at once; a `locked` one waits until no other step
    /// holds it; a `private` one that is busy gives the step another instance of the cache
    /// (`<name>-p1`, `-p2`, …), as BuildKit's sharing modes do.
    pub async fn cache_mount(
        &self,
        id: &str,
        sharing: CacheSharing,
    ) -> Result<CacheMount, WorkerError> {
        use nix::fcntl::FlockArg;
        let mut instance = 0;
        loop {
            let dir = self.cache_mount_dir_instance(id, instance)?;
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let locks = self.root.join("locks");
            std::fs::create_dir_all(&locks).map_err(|source| WorkerError::Io {
                path: locks.clone(),
                source,
            })?;
            let path = locks.join(format!("cache-{name}.lock"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|source| WorkerError::Io {
                    path: path.clone(),
                    source,
                })?;
            let how = match sharing {
                CacheSharing::Shared => FlockArg::LockShared,
                CacheSharing::Locked => FlockArg::LockExclusive,
                CacheSharing::Private => FlockArg::LockExclusiveNonblock,
            };
            let taken = tokio::task::spawn_blocking(move || nix::fcntl::Flock::lock(file, how))
                .await
                .map_err(|e| WorkerError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            match taken {
                Ok(lock) => return Ok(CacheMount { dir, _lock: lock }),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if sharing == CacheSharing::Private => {
                    instance += 1;
                }
                Err((_, e)) => {
                    return Err(WorkerError::Io {
                        path,
                        source: std::io::Error::from(e),
                    });
                }
            }
        }
    }

    fn cache_mount_dir_instance(&self, id: &str, instance: usize) -> Result<PathBuf, WorkerError> {
        let dir = self.cache_mount_dir(id)?;
        if instance == 0 {
            return Ok(dir);
        }
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(format!("-p{instance}"));
        let dir = dir.with_file_name(name);
        std::fs::create_dir_all(&dir).map_err(|source| WorkerError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    pub fn cache_mount_dir(&self, id: &str) -> Result<PathBuf, WorkerError> {
        // Ids are free text (envd uses paths): hash them into a safe name, keep a readable hint.
        let hint: String = id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        let name = format!(
            "{}-{}",
            &crate::content::sha256_hex(id.as_bytes())[..16],
            hint
        );
        let dir = self.root.join("cache-mounts").join(name);
        std::fs::create_dir_all(&dir).map_err(|source| WorkerError::Io {
            path: dir.clone(),
            source,
        })?;
        // Marks it used (prune --all --filter until=… goes by this).
        if let Ok(f) = std::fs::File::open(&dir) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        Ok(dir)
    }
}

/// The snapshot store as the solver's cache: a committed snapshot is the cache entry for its
/// key, a draft is a prepared snapshot directory, a key's lock is shared by every process on
/// the store.
impl crate::solver::cache::CacheStore for Worker {
    type Value = crate::snapshot::SnapRef;
    type Draft = crate::snapshot::Prepared;
    type Lock = crate::snapshot::KeyLock;
    type Error = WorkerError;

    fn lookup(&self, key: &str) -> Result<Option<Self::Value>, WorkerError> {
        Ok(self.snapshots.lookup(key)?)
    }

    async fn lock(&self, key: &str) -> Result<Self::Lock, WorkerError> {
        // Nothing is built on a tag resolved ahead until the registry has said it still
        // names that image.
        self.registry.confirm_tags().await?;
        Ok(self.snapshots.lock_key(key).await?)
    }

    fn prepare(&self) -> Result<Self::Draft, WorkerError> {
        Ok(self.snapshots.prepare()?)
    }

    async fn commit(
        &self,
        draft: Self::Draft,
        key: &str,
        value: Self::Value,
    ) -> Result<Self::Value, WorkerError> {
        let (snap, loser) = self.snapshots.commit(draft, key, &value)?;
        if let Some(dir) = loser {
            self.remove_tree(&dir).await?;
        }
        Ok(snap)
    }

    async fn discard(&self, draft: Self::Draft) {
        if let Err(e) = self.remove_tree(&draft.dir).await {
            tracing::warn!("cannot remove {}: {e}", draft.dir.display());
        }
    }
}
