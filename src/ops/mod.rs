//! LLB ops on top of the worker: each turns its inputs (snapshot chains) into an output chain.
//!
//! [`LlbRunner`] is the solver's [`OpRunner`] for a loaded Definition. Every op first computes
//! its cache key (op digest + input keys + content checksums of local sources), then hands it
//! with its build to [`Ctx::resolve`]: the solver's cache protocol looks it up, locks it,
//! builds and commits (a committed snapshot with that key is the cached result). Op kinds live
//! in their own files.

pub mod context;
mod exec;
mod file;
mod git;
mod http;
pub mod import;
pub mod manifest;
mod merge;
pub mod prefetch;
mod source;
mod ssh;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::pb;
use crate::progress::Reporter;
use crate::snapshot::Prepared;
use crate::snapshot::{SnapRef, SnapshotError};
use crate::solver::cache::{self, CacheMap, OutputCount, Resolved};
use crate::solver::{BoxFuture, OpError, OpRunner, Outcome};
use crate::worker::{Worker, WorkerError};

#[derive(Debug, Error)]
pub enum OpsError {
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Follow(#[from] crate::registry::follow::FollowError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error("{0} is not supported by envkit's engine yet")]
    Unsupported(String),
    /// A step for a platform this machine cannot run, and what would make it run.
    #[error("{0}")]
    Platform(String),
    #[error("invalid op: {0}")]
    Invalid(String),
    #[error(
        "secret {0:?} was not provided (give it with --secret id={0},src=FILE or id={0},env=VAR)"
    )]
    MissingSecret(String),
    #[error(
        "ssh agent {0:?} was not provided (give it with --ssh {0}[=SOCKET]; without a socket, $SSH_AUTH_SOCK)"
    )]
    MissingSsh(String),
    #[error("the step asks for {0}, which is not allowed (grant it with --allow {0})")]
    Entitlement(String),
    #[error("ssh agent proxy at {path}: {source}")]
    Ssh {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local source {name:?} was not provided to this build (known: {known})")]
    UnknownLocal { name: String, known: String },
    #[error("reading local source {path}: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "process \"{command}\" did not complete successfully: exit code: {code}\n--- last lines of output ---\n{tail}"
    )]
    ExecFailed {
        command: String,
        code: i32,
        tail: String,
    },
    #[error("{what}: {message}")]
    Helper { what: String, message: String },
    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },
    #[error("{what}: {message}")]
    Git { what: String, message: String },
    #[error(transparent)]
    OutputCount(#[from] OutputCount),
    #[error("loading {from}: {message}")]
    Import { from: String, message: String },
}

/// One vertex of a loaded Definition, as the ops need it.
#[derive(Debug, Clone)]
pub struct OpVertex {
    /// `sha256:…` of the op's bytes.
    pub digest: String,
    /// What the op's cache key starts from: its digest, or for an exec with proxy variables
    /// the digest it would have without them (BuildKit leaves `proxy_env` out of its keys,
    /// so a build through a proxy shares its cache with one without).
    pub key_digest: String,
    pub op: pb::Op,
    /// Solver indexes of the op's inputs, in `op.inputs` order.
    pub inputs: Vec<usize>,
    /// `OpMetadata.ignore_cache`.
    pub ignore_cache: bool,
}

/// A vertex's result: the snapshot chain and the cache key that produced it (output 0), and
/// the op's further outputs by index (exec mounts that have an output).
#[derive(Debug, Clone)]
pub struct Res {
    pub snap: SnapRef,
    pub key: String,
    pub more: BTreeMap<i64, (SnapRef, String)>,
}

impl Res {
    fn new(snap: SnapRef, key: &str) -> Res {
        Res {
            snap,
            key: key.to_string(),
            more: BTreeMap::new(),
        }
    }

    /// Output `index` of the op as a result of its own.
    pub fn output(&self, index: i64) -> Option<Res> {
        if index == 0 {
            return Some(Res::new(self.snap.clone(), &self.key));
        }
        self.more
            .get(&index)
            .map(|(snap, key)| Res::new(snap.clone(), key))
    }
}

/// Runs the ops of one Definition.
pub struct LlbRunner {
    pub worker: Arc<Worker>,
    pub vertices: Arc<Vec<OpVertex>>,
    /// Local sources by name (`context` → the build context dir).
    pub locals: BTreeMap<String, PathBuf>,
    /// Secrets by id, for secret mounts and secret env vars. They never enter a cache key,
    /// a snapshot or a log.
    pub secrets: Arc<BTreeMap<String, rootless::SecretBytes>>,
    /// SSH agent sockets by id, for ssh mounts.
    pub ssh: Arc<BTreeMap<String, PathBuf>>,
    /// Entitlements granted with `--allow` (`network.host`, `security.insecure`).
    pub entitlements: Arc<std::collections::BTreeSet<String>>,
    pub reporter: Arc<dyn Reporter>,
    /// What an imported cache gives (`--import-cache`), by vertex.
    pub import: Option<Arc<import::ImportPlan>>,
    /// Every vertex's result, kept for a cache export (`--export-cache`).
    pub results: Option<Arc<std::sync::Mutex<BTreeMap<usize, Res>>>>,
    /// Local sources' checksums, shared by the passes of one solve.
    pub sums: LocalSums,
    /// Image pulls the first pass started, which the second takes over.
    pub prefetch: Option<Arc<prefetch::Prefetches>>,
}

/// A local source's content checksum as a solve computed it.
#[derive(Debug, Clone)]
pub struct LocalSum {
    pub key: String,
    pub dir: PathBuf,
    pub filter: rootless::patterns::Filter,
    pub checksum: String,
    /// The source's stat cache file (its manifests are kept beside it).
    pub stat: PathBuf,
    /// What the checksum covered, entry by entry.
    pub listing: Arc<manifest::Listing>,
    /// The keys of this source by the paths an op reads from it ([`Ctx::selected_key`]), by
    /// that op's vertex and input: both passes of a solve ask, and each answer hashes the
    /// listing's entries under those paths.
    pub selected: SelectedKeys,
}

/// Keys of a local source by the paths an op reads from it, by the op's vertex and input.
pub type SelectedKeys = Arc<std::sync::Mutex<BTreeMap<(usize, usize), Option<String>>>>;

/// Local sources' checksums by vertex: the passes of one solve walk each context once.
pub type LocalSums = Arc<std::sync::Mutex<BTreeMap<usize, LocalSum>>>;

impl OpRunner<Res> for LlbRunner {
    fn run(&self, vertex: usize, inputs: Vec<Res>) -> BoxFuture<Result<Outcome<Res>, OpError>> {
        let ctx = Ctx {
            worker: self.worker.clone(),
            vertices: self.vertices.clone(),
            locals: self.locals.clone(),
            secrets: self.secrets.clone(),
            ssh: self.ssh.clone(),
            entitlements: self.entitlements.clone(),
            reporter: self.reporter.clone(),
            import: self.import.clone(),
            sums: self.sums.clone(),
            prefetch: self.prefetch.clone(),
            vertex,
        };
        let results = self.results.clone();
        Box::pin(async move {
            let out = ctx.run(inputs).await.map_err(|e| Box::new(e) as OpError)?;
            if let Some(r) = results
                && let Ok(mut r) = r.lock()
            {
                r.insert(vertex, out.value.clone());
            }
            Ok(out)
        })
    }
}

/// Everything one op execution needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub worker: Arc<Worker>,
    pub vertices: Arc<Vec<OpVertex>>,
    pub locals: BTreeMap<String, PathBuf>,
    pub secrets: Arc<BTreeMap<String, rootless::SecretBytes>>,
    pub ssh: Arc<BTreeMap<String, PathBuf>>,
    pub entitlements: Arc<std::collections::BTreeSet<String>>,
    pub reporter: Arc<dyn Reporter>,
    pub import: Option<Arc<import::ImportPlan>>,
    pub sums: LocalSums,
    pub prefetch: Option<Arc<prefetch::Prefetches>>,
    pub vertex: usize,
}

/// A cache key: the op's digest (its bytes without metadata), its inputs' cache keys in
/// order, and extra content checksums (of local sources, downloads, commits).
pub fn cache_key(op_digest: &str, input_keys: &[&str], extra: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"envkit-cache-v1\0");
    h.update(op_digest.as_bytes());
    for k in input_keys {
        h.update(b"\0in:");
        h.update(k.as_bytes());
    }
    for e in extra {
        h.update(b"\0x:");
        h.update(e.as_bytes());
    }
    hex::encode(h.finalize())
}

/// [`OpVertex::key_digest`] of an op whose digest is `digest`, given its inputs' key
/// digests (in `op.inputs` order). It is the digest itself unless the op carries what caches
/// leave out of keys (an exec's proxy variables, an image's resolve mode) or an input's key
/// digest differs from its digest: then it is the digest of the op without those, with its
/// inputs named by their key digests (so that everything built on such an op keys alike too).
pub fn key_digest(op: &pb::Op, digest: &str, input_keys: &[&str]) -> String {
    let proxied = match &op.op {
        Some(pb::op::Op::Exec(e)) => e.meta.as_ref().is_some_and(|m| m.proxy_env.is_some()),
        _ => false,
    };
    // An image's resolve mode says how its reference is looked up, not what it is: the key
    // has the manifest it resolved to, so `--pull missing` reuses a default build's results
    // (BuildKit's image keys leave the mode out too).
    let resolve_mode = match &op.op {
        Some(pb::op::Op::Source(s)) => {
            s.identifier.starts_with("docker-image://") && s.attrs.contains_key("image.resolvemode")
        }
        _ => false,
    };
    let renamed = op
        .inputs
        .iter()
        .zip(input_keys)
        .any(|(i, k)| i.digest != *k);
    if !proxied && !resolve_mode && !renamed {
        return digest.to_string();
    }
    let mut plain = op.clone();
    for (i, k) in plain.inputs.iter_mut().zip(input_keys) {
        i.digest = (*k).to_string();
    }
    match &mut plain.op {
        Some(pb::op::Op::Exec(e)) => {
            if let Some(m) = &mut e.meta {
                m.proxy_env = None;
            }
        }
        Some(pb::op::Op::Source(s)) if resolve_mode => {
            s.attrs.remove("image.resolvemode");
        }
        _ => {}
    }
    let bytes = crate::llb::encode_op(&plain);
    format!("sha256:{}", crate::content::sha256_hex(&bytes))
}

/// The platform an op is for: its own, else this machine's.
pub(crate) fn op_platform(ctx: &Ctx) -> crate::platform::Platform {
    crate::platform::Platform::of_op(ctx.me().op.platform.as_ref())
}

impl Ctx {
    fn me(&self) -> &OpVertex {
        &self.vertices[self.vertex]
    }

    /// This vertex's context for a task of its own that runs the op as the second pass
    /// would (no plan, no progress, no prefetches of its own).
    fn detached(&self) -> Ctx {
        Ctx {
            reporter: Arc::new(crate::progress::Silent),
            import: None,
            prefetch: None,
            ..self.clone()
        }
    }

    async fn run(&self, inputs: Vec<Res>) -> Result<Outcome<Res>, OpsError> {
        let v = self.me();
        // Each input is the output of its op that the Definition names.
        let mut picked = Vec::with_capacity(inputs.len());
        for (inp, res) in v.op.inputs.iter().zip(&inputs) {
            picked.push(res.output(inp.index).ok_or_else(|| {
                OpsError::Invalid(format!(
                    "input {} names output {} of an op that has no such output",
                    inp.digest, inp.index
                ))
            })?);
        }
        let inputs = picked;
        if let Some(done) = import::by_role(self, &inputs).await? {
            return Ok(done);
        }
        if let Some(p) = &self.prefetch
            && let Some(pulled) = p.take(self.vertex).await
        {
            return pulled;
        }
        match &v.op.op {
            Some(pb::op::Op::Source(src)) => source::run(self, src).await,
            Some(pb::op::Op::Exec(exec)) => exec::run(self, exec, &inputs).await,
            Some(pb::op::Op::File(file)) => file::run(self, file, &inputs).await,
            Some(pb::op::Op::Merge(m)) => merge::merge(self, m, &inputs).await,
            Some(pb::op::Op::Diff(d)) => merge::diff(self, d, &inputs).await,
            Some(pb::op::Op::Build(_)) => Err(OpsError::Unsupported("BuildOp".into())),
            Some(pb::op::Op::Passthrough(_)) => Err(OpsError::Unsupported("PassthroughOp".into())),
            None => Err(OpsError::Invalid(format!(
                "op {} has no operation",
                v.digest
            ))),
        }
    }

    /// The cache key of this op given its inputs' keys and any extra content checksums. An
    /// input that is a local source, read by this op only at definite paths (copies of a
    /// path, mounts with a selector), counts by the content of those paths: a change
    /// elsewhere in the context does not run the op again, as BuildKit's content-hash
    /// selectors do.
    pub fn cache_key(&self, inputs: &[Res], extra: &[&str]) -> String {
        let mut keys: Vec<String> = inputs.iter().map(|i| i.key.clone()).collect();
        for (i, k) in keys.iter_mut().enumerate() {
            if let Some(sel) = self.selected_key(i) {
                *k = sel;
            }
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        cache_key(&self.me().key_digest, &keys, extra)
    }

    /// The key of input `i` by the content of the paths this op reads from it, when the input
    /// is a local source whose file list this solve has and every use of it names a path.
    fn selected_key(&self, i: usize) -> Option<String> {
        let &from = self.me().inputs.get(i)?;
        let sum = self.sums.lock().ok()?.get(&from).cloned()?;
        if let Ok(known) = sum.selected.lock()
            && let Some(key) = known.get(&(self.vertex, i))
        {
            return key.clone();
        }
        let key = self.selected_key_of(i, &sum);
        if let Ok(mut known) = sum.selected.lock() {
            known.insert((self.vertex, i), key.clone());
        }
        key
    }

    /// [`Ctx::selected_key`] of input `i`, computed from the source's listing.
    fn selected_key_of(&self, i: usize, sum: &LocalSum) -> Option<String> {
        let v = self.me();
        let idx = i as i64;
        let mut paths: Vec<String> = Vec::new();
        match &v.op.op {
            Some(pb::op::Op::File(f)) => {
                for a in &f.actions {
                    if a.input == idx {
                        return None; // the context itself is changed: all of it counts
                    }
                    if a.secondary_input == idx {
                        match &a.action {
                            Some(pb::file_action::Action::Copy(c)) => paths.push(c.src.clone()),
                            _ => return None,
                        }
                    }
                }
            }
            Some(pb::op::Op::Exec(e)) => {
                for m in e.mounts.iter().filter(|m| m.input == idx) {
                    if m.selector.is_empty() || m.dest == "/" {
                        return None;
                    }
                    paths.push(m.selector.clone());
                }
            }
            _ => return None,
        }
        if paths.is_empty() {
            return None;
        }
        paths.sort();
        paths.dedup();
        let mut rels = Vec::with_capacity(paths.len());
        for p in &paths {
            let rel = p.trim_start_matches('/').trim_end_matches('/');
            if rel.is_empty()
                || rel == "."
                || rel.contains(['*', '?', '[', '\\'])
                || rel.contains("..")
            {
                return None;
            }
            rels.push(rel);
        }
        // Computed before for this content (a rebuild): kept beside the stat cache.
        let mut id = Sha256::new();
        id.update(b"envkit-local-paths-memo-v1\0");
        id.update(sum.filter.key().as_bytes());
        for rel in &rels {
            id.update(b"\0");
            id.update(rel.as_bytes());
        }
        let id = hex::encode(id.finalize());
        if let Some(key) = manifest::selected_recall(&sum.stat, &sum.checksum, &id) {
            return Some(key);
        }
        let mut h = Sha256::new();
        h.update(b"envkit-local-paths-v1\0");
        for rel in rels {
            let prefix = format!("{rel}/");
            let mut found = false;
            for e in sum.listing.iter() {
                let path = String::from_utf8_lossy(e.path);
                if path == rel {
                    if e.mode & 0o170000 == 0o120000 {
                        return None; // a link the copy follows: its target counts
                    }
                    found = true;
                } else if !path.starts_with(&prefix) {
                    continue;
                }
                h.update(e.path);
                h.update([0]);
                h.update(e.mode.to_le_bytes());
                h.update(e.what);
                h.update([0xff]);
            }
            if !found {
                return None;
            }
            h.update(b"\0path:");
            h.update(rel.as_bytes());
        }
        // The source's own selection (its filter) is part of what the paths mean.
        h.update(sum.filter.key().as_bytes());
        let key = format!("paths:{}", hex::encode(h.finalize()));
        manifest::selected_remember(&sum.stat, &sum.checksum, &id, &key);
        Some(key)
    }

    /// This op's results for `keys` (output 0 first): from the cache, or built by `build`
    /// into one prepared snapshot per key and committed (the protocol is the solver's:
    /// [`crate::solver::cache`]). `build` returns the record of each output, in order.
    pub async fn resolve<F, Fut>(
        &self,
        keys: Vec<String>,
        build: F,
    ) -> Result<Resolved<SnapRef>, OpsError>
    where
        F: FnOnce(Vec<Prepared>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<SnapRef>, OpsError>>,
    {
        let map = CacheMap {
            keys,
            ignore_cache: self.me().ignore_cache,
        };
        cache::resolve(&*self.worker, &map, build).await
    }

    /// [`Ctx::resolve`] for an op with one output.
    pub async fn resolve_one<F, Fut>(&self, key: &str, build: F) -> Result<Outcome<Res>, OpsError>
    where
        F: FnOnce(Prepared) -> Fut,
        Fut: std::future::Future<Output = Result<SnapRef, OpsError>>,
    {
        let out = self
            .resolve(vec![key.to_string()], |mut drafts| async move {
                match drafts.pop() {
                    Some(p) => Ok(vec![build(p).await?]),
                    None => Ok(Vec::new()),
                }
            })
            .await?;
        let snap = out
            .values
            .into_iter()
            .next()
            .ok_or(OutputCount { built: 0, keys: 1 })?;
        Ok(Outcome {
            value: Res::new(snap, key),
            cached: out.cached,
        })
    }

    /// The committed result for `key`, without taking its lock or building it (none where the
    /// op ignores the cache).
    pub fn peek(&self, key: &str) -> Result<Option<Outcome<Res>>, OpsError> {
        if self.me().ignore_cache {
            return Ok(None);
        }
        Ok(self.worker.snapshots.lookup(key)?.map(|snap| Outcome {
            value: Res::new(snap, key),
            cached: true,
        }))
    }

    /// The result for the op input `i`.
    pub fn input<'a>(&self, inputs: &'a [Res], i: i64) -> Result<&'a Res, OpsError> {
        usize::try_from(i)
            .ok()
            .and_then(|i| inputs.get(i))
            .ok_or_else(|| OpsError::Invalid(format!("input index {i} out of range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An op's digest, as a loaded Definition names it.
    fn digest(op: &pb::Op) -> String {
        format!(
            "sha256:{}",
            crate::content::sha256_hex(&crate::llb::encode_op(op))
        )
    }

    /// `true` run on the ops `inputs` name (output 0 of each).
    fn exec_on(inputs: &[&str]) -> pb::Op {
        pb::Op {
            inputs: inputs
                .iter()
                .map(|d| pb::Input {
                    digest: d.to_string(),
                    index: 0,
                })
                .collect(),
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: vec!["true".into()],
                    cwd: "/".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// An exec with proxy variables is keyed as the same exec without them; any other op by
    /// its own digest.
    #[test]
    fn proxy_variables_stay_out_of_an_execs_key() {
        let plain = exec_on(&[]);
        let mut proxied = plain.clone();
        if let Some(pb::op::Op::Exec(e)) = &mut proxied.op
            && let Some(m) = &mut e.meta
        {
            m.proxy_env = Some(pb::ProxyEnv {
                http_proxy: "http://proxy.invalid:3128".into(),
                ..Default::default()
            });
        }
        let (d_plain, d_proxied) = (digest(&plain), digest(&proxied));
        assert_ne!(d_plain, d_proxied);
        assert_eq!(key_digest(&plain, &d_plain, &[]), d_plain);
        assert_eq!(key_digest(&proxied, &d_proxied, &[]), d_plain);
    }

    #[test]
    fn an_images_resolve_mode_is_left_out_of_its_key_and_of_every_key_built_on_it() {
        let image = |mode: Option<&str>| pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: "docker-image://docker.io/library/debian:bookworm".into(),
                attrs: mode
                    .map(|m| [("image.resolvemode".to_string(), m.to_string())].into())
                    .unwrap_or_default(),
            })),
            ..Default::default()
        };
        let on = |input: &str| exec_on(&[input]);
        let (plain, local) = (image(None), image(Some("local")));
        let (d_plain, d_local) = (digest(&plain), digest(&local));
        assert_ne!(d_plain, d_local);
        let k_local = key_digest(&local, &d_local, &[]);
        assert_eq!(k_local, d_plain);
        // The step on it: another digest (its input's), the same key digest.
        let (run_plain, run_local) = (on(&d_plain), on(&d_local));
        let d_run_plain = digest(&run_plain);
        assert_eq!(
            key_digest(&run_plain, &d_run_plain, &[&d_plain]),
            d_run_plain
        );
        assert_eq!(
            key_digest(&run_local, &digest(&run_local), &[&k_local]),
            d_run_plain
        );
        // Other attributes still count.
        let mut pinned = image(Some("local"));
        if let Some(pb::op::Op::Source(s)) = &mut pinned.op {
            s.attrs.insert("image.checksum".into(), "sha256:00".into());
        }
        assert_ne!(key_digest(&pinned, &digest(&pinned), &[]), d_plain);
    }
}
