//! The compile pipeline: a build file → IR (frontend) → the base image's config (registry)
//! → LLB (lower). What comes out, [`Compiled`], is all an engine or a remote BuildKit needs:
//! the Definition, the image spec and the local sources it reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use thiserror::Error;

use crate::config;
use crate::frontend::{self, FrontendError};
use crate::lower::{self, LowerError};
use crate::platform::Platform;
use crate::registry::{Registry, RegistryError, ResolveMode, Resolved};

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("build context {}: {source}", path.display())]
    Context {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("build context {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    // Not transparent: the CLI finds the frontend error in the chain and shows its caret.
    #[error("{0}")]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Lower(#[from] LowerError),
    #[error("{0}")]
    SshKey(String),
    #[error("invalid image name {name:?}: {source}")]
    ImageName { name: String, source: RegistryError },
}

/// What to compile.
#[derive(Debug, Clone)]
pub struct Request {
    /// The build context directory.
    pub context: PathBuf,
    /// The build file and function, `file[:func]`.
    pub from: String,
    pub target: lower::Target,
    /// The path of the CA bundle steps get (`[worker] ca-bundle`), for the lowering.
    pub ca_bundle: Option<String>,
    /// `--use-proxy`: the proxy variables every step gets.
    pub proxy_env: Option<crate::pb::ProxyEnv>,
    pub platform: Platform,
    /// How the base image's tag is resolved (`--pull`): asked of the registry every time
    /// (the default), or taken from the store when it has what the tag named last time.
    pub resolve: ResolveMode,
}

/// A build file compiled to LLB, with what the exporter needs to know.
pub struct Compiled {
    pub context_dir: PathBuf,
    pub env_name: String,
    pub lowered: lower::Lowered,
    pub env: crate::ir::Environment,
    /// The base image's config (what a remote BuildKit's image config starts from).
    pub base_config: ImageConfiguration,
    pub base_layers: Vec<oci_spec::image::Descriptor>,
}

impl Compiled {
    /// The local sources its Definition reads: the build context.
    pub fn locals(&self) -> BTreeMap<String, PathBuf> {
        let mut locals = BTreeMap::new();
        locals.insert(lower::CONTEXT_LOCAL.to_string(), self.context_dir.clone());
        locals
    }

    /// The image's full name: `tag`, else `<env name>:dev` as envd names it.
    pub fn image_name(&self, tag: Option<&String>) -> Result<String, CompileError> {
        full_name(
            &tag.cloned()
                .unwrap_or_else(|| format!("{}:dev", self.env_name)),
        )
    }
}

/// frontend → IR → (base image config from the registry) → lower.
pub async fn compile(req: &Request, registry: &Registry) -> Result<Compiled, CompileError> {
    let context_dir =
        std::fs::canonicalize(&req.context).map_err(|source| CompileError::Context {
            path: req.context.clone(),
            source,
        })?;
    if !context_dir.is_dir() {
        return Err(CompileError::NotADirectory(context_dir));
    }
    let env_name = context_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "envkit".to_string());
    let (file, func) = frontend::parse_from(&req.from)?;
    // The base image this build file named last time is asked for while the file is
    // evaluated (a warm build spends about as long in each); a different base, or none
    // remembered, is resolved afterwards as before.
    let note_key = base_note_key(&context_dir, &file, &func, &req.platform);
    let remembered = registry.note(BASE_NOTES, &note_key);
    // Resolved ahead (see `Registry::speculate`), the base named last time is asked for at
    // once and costs no wait; else it is resolved while the file is evaluated.
    let ahead = registry.speculating() && req.resolve == ResolveMode::Default;
    let guess = match &remembered {
        Some(r) if ahead => {
            registry.ask_ahead(r, &req.platform);
            None
        }
        other => other.clone(),
    };
    let memo = Memo(registry);
    let (env, speculated) = match frontend::recall(&context_dir, &file, &func, &memo) {
        // Nothing the build file read has changed: its environment as last time.
        Some(env) => (env, None),
        None => {
            let (evaluated, speculated) = evaluate_while(&context_dir, &file, &func, async {
                match guess {
                    Some(r) => {
                        let res = registry.resolve_with(&r, &req.platform, req.resolve).await;
                        Some((r, res))
                    }
                    None => None,
                }
            })
            .await;
            (evaluated?.keep(&memo), speculated)
        }
    };
    let base_ref = lower::base_image_ref(&env);
    let base = match speculated {
        Some((r, res)) if r == base_ref => res?,
        _ => {
            registry
                .resolve_with(&base_ref, &req.platform, req.resolve)
                .await?
        }
    };
    let whole = |r: &str| crate::registry::normalize(r).ok().map(|n| n.whole());
    if let Some(r) = remembered.as_deref()
        && whole(r) != whole(&base_ref)
    {
        registry.forget_ahead(r, &req.platform);
    }
    if remembered.as_deref() != Some(base_ref.as_str()) {
        registry.set_note(BASE_NOTES, &note_key, &base_ref);
    }
    let owner = env.owner.unwrap_or_else(|| {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        (uid, gid)
    });
    let mut opts = lower::LowerOptions {
        context_dir: context_dir.clone(),
        env_name: env_name.clone(),
        owner,
        platform: req.platform.clone(),
        target: req.target,
        ssh_public_key: String::new(),
        ssh_public_key_path: String::new(),
        ca_bundle: req.ca_bundle.clone(),
        proxy_env: req.proxy_env.clone(),
        base_resolve: llb_resolve_mode(req.resolve),
    };
    if env.dev {
        let (path, key) = ssh_public_key()?;
        opts.ssh_public_key = key;
        opts.ssh_public_key_path = path.display().to_string();
    }
    let lowered = lower::lower(&env, &base_image(&base), &opts)?;
    Ok(Compiled {
        context_dir,
        env_name,
        lowered,
        env,
        base_config: base.config.clone(),
        base_layers: base.layers.clone(),
    })
}

/// The image op's resolve mode for a registry resolve mode: none for the default, so that a
/// default build's Definition is the one envd's client makes.
pub fn llb_resolve_mode(mode: ResolveMode) -> Option<crate::llb::ResolveMode> {
    match mode {
        ResolveMode::Default => None,
        ResolveMode::Pull => Some(crate::llb::ResolveMode::ForcePull),
        ResolveMode::PreferLocal => Some(crate::llb::ResolveMode::PreferLocal),
    }
}

/// The content store's notes of the base image each build file named.
const BASE_NOTES: &str = "bases";

/// The content store's notes of evaluated build files (the frontend's memo).
const EVALUATION_NOTES: &str = "evaluations";

/// The frontend's memo of evaluations, kept in the registry's content store notes.
struct Memo<'a>(&'a Registry);

impl frontend::MemoStore for Memo<'_> {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.0.note(EVALUATION_NOTES, key).map(String::into_bytes)
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            self.0.set_note(EVALUATION_NOTES, key, text);
        }
    }
}

/// The note of `file:func` in `context_dir` built for `platform`.
fn base_note_key(context_dir: &Path, file: &str, func: &str, platform: &Platform) -> String {
    let mut parts = Vec::new();
    for part in [
        context_dir.as_os_str().as_encoded_bytes(),
        file.as_bytes(),
        func.as_bytes(),
        platform.to_string().as_bytes(),
    ] {
        parts.extend_from_slice(part);
        parts.push(0);
    }
    crate::content::sha256_hex(&parts)
}

/// Evaluates the build file on a thread of its own (with the stack the main thread has)
/// while `meanwhile` runs here. A failed evaluation is returned at once, without waiting
/// for `meanwhile`, which is dropped.
async fn evaluate_while<T>(
    context_dir: &Path,
    file: &str,
    func: &str,
    meanwhile: impl std::future::Future<Output = Option<T>>,
) -> (Result<frontend::Evaluation, FrontendError>, Option<T>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (dir, f, entry) = (
        context_dir.to_path_buf(),
        file.to_string(),
        func.to_string(),
    );
    let thread = std::thread::Builder::new()
        .name("envkit-eval".into())
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(frontend::evaluate_traced(&dir, &f, &entry));
        });
    let meanwhile = std::pin::pin!(meanwhile);
    let mut meanwhile = futures_util::FutureExt::fuse(meanwhile);
    let mut other = None;
    let env = match thread {
        // No thread to be had: evaluate here, then do the rest.
        Err(_) => frontend::evaluate_traced(context_dir, file, func),
        Ok(thread) => {
            let mut rx = rx;
            let got = loop {
                tokio::select! {
                    got = &mut rx => break got,
                    o = &mut meanwhile, if other.is_none() => other = Some(o),
                }
            };
            match got {
                Ok(env) => env,
                // The sender went away without a result: the evaluation panicked, and so
                // does this (as it did when the evaluation ran here).
                Err(_) => match thread.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => frontend::evaluate_traced(context_dir, file, func),
                },
            }
        }
    };
    let other = match (&env, other) {
        (Ok(_), None) => meanwhile.await,
        (_, other) => other.flatten(),
    };
    (env, other)
}

/// The public key dev environments authorise for envd-sshd: envd's own key
/// (`~/.config/envd/id_rsa_envd.pub`) when the user has one, else envkit's
/// (`$XDG_CONFIG_HOME/envkit/id_envkit.pub`), made with `ssh-keygen` the first time.
fn ssh_public_key() -> Result<(PathBuf, String), CompileError> {
    if let Some(h) = config::home() {
        let envd = h.join(".config/envd/id_rsa_envd.pub");
        if let Ok(key) = std::fs::read_to_string(&envd) {
            return Ok((envd, key));
        }
    }
    let fail = |m: String| CompileError::SshKey(m);
    let dir = config::config_dir()
        .ok_or_else(|| fail("finding envkit's config directory: no HOME".into()))?;
    let private = dir.join("id_envkit");
    let public = dir.join("id_envkit.pub");
    if let Ok(key) = std::fs::read_to_string(&public) {
        return Ok((public, key));
    }
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "envkit", "-f"])
        .arg(&private)
        .output()
        .map_err(|e| {
            fail(format!(
                "a dev environment needs an SSH key pair and `ssh-keygen` could not be run \
                 (install openssh-client, or create ~/.config/envd/id_rsa_envd.pub): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(fail(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let key = std::fs::read_to_string(&public)
        .map_err(|e| fail(format!("reading {}: {e}", public.display())))?;
    Ok((public, key))
}

/// A tag as a full reference (`app:dev` → `docker.io/library/app:dev`), like envd and docker.
pub fn full_name(tag: &str) -> Result<String, CompileError> {
    let r = crate::registry::normalize(&tag.to_ascii_lowercase()).map_err(|source| {
        CompileError::ImageName {
            name: tag.to_string(),
            source,
        }
    })?;
    Ok(r.to_string())
}

/// The parts of the base image's config that lowering needs.
fn base_image(r: &Resolved) -> lower::BaseImage {
    let cfg = r.config.config().as_ref();
    lower::BaseImage {
        env: cfg.and_then(|c| c.env().clone()).unwrap_or_default(),
        entrypoint: cfg.and_then(|c| c.entrypoint().clone()),
        cmd: cfg.and_then(|c| c.cmd().clone()),
        user: cfg.and_then(|c| c.user().clone()).filter(|u| !u.is_empty()),
        working_dir: cfg
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty()),
    }
}

/// A [`Request`] for `context` and `from` with this machine's platform.
pub fn request(context: &Path, from: &str, target: lower::Target) -> Request {
    Request {
        context: context.to_path_buf(),
        from: from.to_string(),
        target,
        ca_bundle: None,
        proxy_env: None,
        platform: Platform::host(),
        resolve: ResolveMode::Default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_http::{ok, read_head};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// A registry stand-in with repositories `a` and `b` (tag `1`; their configs set
    /// `WHICH=a` / `WHICH=b`), counting manifest requests per repository; requests for `slow`
    /// are read and never answered.
    async fn registry() -> (String, Arc<[AtomicUsize; 2]>) {
        let p = Platform::host();
        let mut images = Vec::new();
        for name in ["a", "b"] {
            let config = format!(
                r#"{{"architecture":"{}","os":"linux","config":{{"Env":["WHICH={name}"]}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
                p.architecture
            );
            let digest = crate::content::sha256_digest(config.as_bytes());
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":{}}},"layers":[]}}"#,
                config.len()
            );
            images.push((name, manifest, digest.to_string(), config));
        }
        let counts: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (seen, images) = (counts.clone(), Arc::new(images));
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (seen, images) = (seen.clone(), images.clone());
                tokio::spawn(async move {
                    while let Some(req) = read_head(&mut c).await {
                        let req = String::from_utf8_lossy(&req);
                        if req.starts_with("GET /v2/slow/") {
                            std::future::pending::<()>().await;
                        }
                        let mut answer = None;
                        for (i, (name, manifest, digest, config)) in images.iter().enumerate() {
                            if req.starts_with(&format!("GET /v2/{name}/manifests/1 ")) {
                                seen[i].fetch_add(1, Ordering::SeqCst);
                                answer = Some((OCI_MANIFEST, manifest.clone()));
                            } else if req.contains(digest.as_str()) {
                                answer = Some(("application/octet-stream", config.clone()));
                            }
                        }
                        let (ty, body) = answer.unwrap_or(("application/json", "{}".into()));
                        if !ok(&mut c, ty, &body).await {
                            return;
                        }
                    }
                });
            }
        });
        (addr, counts)
    }

    /// A compile in a new process as `envkit build` on this machine's engine makes it: tags
    /// may be resolved ahead, and what was is waited for before anything would be recorded.
    async fn compile_as_built(
        req: &Request,
        cfg: &config::Config,
        store: &crate::content::Store,
    ) -> Result<Compiled, CompileError> {
        let registry = Registry::new(cfg).with_store(store.clone());
        registry.speculate(true);
        let compiled = compile(req, &registry).await;
        registry.confirm_tags().await.unwrap();
        compiled
    }

    /// A content store in a new directory (kept while the first value lives) and a config
    /// that reaches the stand-in registry at `addr` over plain HTTP.
    fn store_and_config(addr: &str) -> (tempfile::TempDir, crate::content::Store, config::Config) {
        let root = tempfile::tempdir().unwrap();
        let store = crate::content::Store::open(root.path()).unwrap();
        let cfg = config::Config::parse(
            &format!("[registry.\"{addr}\"]\nhttp = true\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        (root, store, cfg)
    }

    fn which(c: &Compiled) -> Vec<String> {
        c.base_config
            .config()
            .as_ref()
            .and_then(|c| c.env().clone())
            .unwrap_or_default()
    }

    /// The base a build file named last time is resolved while the file is evaluated: the
    /// same base costs one manifest request, a changed base is still the one built on, and
    /// an evaluation error does not wait for a registry that does not answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_base_is_resolved_during_evaluation_and_only_used_when_it_is_still_the_base() {
        let (addr, counts) = registry().await;
        let n = |i: usize| counts[i].load(Ordering::SeqCst);
        let (_root, store, cfg) = store_and_config(&addr);
        let ctx = tempfile::tempdir().unwrap();
        let write = |image: &str| {
            std::fs::write(
                ctx.path().join("build.envd"),
                format!("# syntax=v1\ndef build():\n    base(image=\"{image}\", dev=False)\n"),
            )
            .unwrap();
        };
        let req = request(ctx.path(), "build.envd:build", lower::Target::Embedded);
        // As a build for a remote BuildKit makes it (tags are not resolved ahead).
        let compile_new = || {
            let registry = Registry::new(&cfg).with_store(store.clone());
            let req = req.clone();
            async move { compile(&req, &registry).await }
        };

        write(&format!("{addr}/a:1"));
        let first = compile_new().await.unwrap();
        assert_eq!(which(&first), ["WHICH=a"]);
        assert_eq!((n(0), n(1)), (1, 0));
        // Again, as a new process would: the remembered base is the base, asked for once.
        let again = compile_new().await.unwrap();
        assert_eq!(which(&again), ["WHICH=a"]);
        assert_eq!((n(0), n(1)), (2, 0));

        // The file now names another base: the guess is asked for in vain, the new base is
        // resolved and built on, and remembered.
        write(&format!("{addr}/b:1"));
        let changed = compile_new().await.unwrap();
        assert_eq!(which(&changed), ["WHICH=b"]);
        assert_eq!((n(0), n(1)), (3, 1));
        let settled = compile_new().await.unwrap();
        assert_eq!(which(&settled), ["WHICH=b"]);
        assert_eq!((n(0), n(1)), (3, 2));

        // A remembered base whose registry never answers does not hold up a file's error.
        let registry = Registry::new(&cfg).with_store(store.clone());
        let dir = std::fs::canonicalize(ctx.path()).unwrap();
        let key = base_note_key(&dir, "build.envd", "build", &req.platform);
        registry.set_note(BASE_NOTES, &key, &format!("{addr}/slow:1"));
        std::fs::write(ctx.path().join("build.envd"), "# syntax=v1\ndef build(:\n").unwrap();
        let failed =
            tokio::time::timeout(std::time::Duration::from_secs(60), compile(&req, &registry))
                .await
                .expect("the syntax error is reported without waiting for the registry");
        assert!(
            matches!(failed, Err(CompileError::Frontend(_))),
            "{:?}",
            failed.err()
        );
    }

    /// `--pull missing`: once the store has the image a tag named, a build asks the registry
    /// nothing, and its base image op says `local` (for a remote BuildKit too).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pull_missing_takes_the_tag_from_the_store_once_it_has_the_image() {
        let (addr, counts) = registry().await;
        let n = || counts[0].load(Ordering::SeqCst);
        let (_root, store, cfg) = store_and_config(&addr);
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(
            ctx.path().join("build.envd"),
            format!("# syntax=v1\ndef build():\n    base(image=\"{addr}/a:1\", dev=False)\n"),
        )
        .unwrap();
        let mut req = request(ctx.path(), "build.envd:build", lower::Target::Embedded);
        req.resolve = ResolveMode::PreferLocal;
        let compile_new = || compile_as_built(&req, &cfg, &store);
        let mode = |c: &Compiled| {
            let graph = crate::llb::load(&c.lowered.definition.to_bytes()).unwrap();
            graph
                .vertices
                .iter()
                .find_map(|v| match &v.op.op {
                    Some(crate::pb::op::Op::Source(s))
                        if s.identifier.starts_with("docker-image://") =>
                    {
                        Some(s.attrs.get("image.resolvemode").cloned())
                    }
                    _ => None,
                })
                .flatten()
        };
        let first = compile_new().await.unwrap();
        assert_eq!(n(), 1, "nothing in the store: the registry is asked");
        assert_eq!(mode(&first).as_deref(), Some("local"));
        let again = compile_new().await.unwrap();
        assert_eq!(n(), 1, "the store has it: no request");
        assert_eq!(which(&again), ["WHICH=a"]);
        // The default still asks every time, and its Definition is envd's (no mode).
        req.resolve = ResolveMode::Default;
        let registry = Registry::new(&cfg).with_store(store.clone());
        let default = compile(&req, &registry).await.unwrap();
        assert_eq!(n(), 2);
        assert_eq!(mode(&default), None);
    }
}
