//! `envkit build` and `envkit solve`: the pipeline from a build file (or Definition bytes) to
//! an exported image, through `crate::compile` and `crate::engine`. Every build goes frontend → IR → lower → Definition bytes → `llb::load` →
//! solver; the engine never sees the IR.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{BuildArgs, Cli, EngineArgs, SolveArgs, SourceArgs};
use crate::backend::{Backend, Embedded, ImageConfig, Job, RemoteBackend, RemoteOptions};
use crate::compile;
use crate::config;
use crate::engine::Engine;
use crate::export::{self, Output};
use crate::lower;
use crate::progress::{Plain, RawJson, Reporter, Tty};
use crate::snapshot::SnapRef;

/// What `-p`, `-f`, `--platform` and `--use-proxy` ask to compile.
pub(super) fn source_request(
    source: &SourceArgs,
    target: lower::Target,
) -> anyhow::Result<compile::Request> {
    let mut req = compile::request(&source.path, &source.from, target);
    if let Some(p) = target_platform(source)? {
        req.platform = p;
    }
    if source.use_proxy {
        req.proxy_env = proxy_env();
    }
    req.resolve = source.resolve_mode();
    Ok(req)
}

/// `--use-proxy`: this shell's proxy variables (upper case, else lower case), by name.
fn proxy_vars() -> Vec<(&'static str, String)> {
    ["HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"]
        .into_iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .or_else(|| std::env::var(k.to_ascii_lowercase()).ok())
                .filter(|v| !v.is_empty())
                .map(|v| (k, v))
        })
        .collect()
}

/// [`proxy_vars`] as an exec's proxy variables (`None` when the shell has none).
fn proxy_env() -> Option<crate::pb::ProxyEnv> {
    let vars = proxy_vars();
    if vars.is_empty() {
        eprintln!("--use-proxy: none of HTTPS_PROXY, HTTP_PROXY, NO_PROXY is set here");
        return None;
    }
    let mut p = crate::pb::ProxyEnv::default();
    for (k, v) in vars {
        match k {
            "HTTPS_PROXY" => p.https_proxy = v,
            "HTTP_PROXY" => p.http_proxy = v,
            _ => p.no_proxy = v,
        }
    }
    Some(p)
}

/// `--platform`, where it names one platform (several: refused by the commands that build
/// one).
fn target_platform(source: &SourceArgs) -> anyhow::Result<Option<crate::platform::Platform>> {
    match &target_platforms(source)?[..] {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => bail!(
            "--platform {}: this command takes one platform (`envkit build` takes a list)",
            source.platform.as_deref().unwrap_or_default()
        ),
    }
}

/// The platforms `--platform` names, in its order without repeats (none: this machine's).
fn target_platforms(source: &SourceArgs) -> anyhow::Result<Vec<crate::platform::Platform>> {
    let Some(spec) = &source.platform else {
        return Ok(Vec::new());
    };
    let mut out: Vec<crate::platform::Platform> = Vec::new();
    for one in spec.split(',') {
        let p = crate::platform::Platform::parse(one.trim()).with_context(|| {
            format!("--platform {spec}: expected os/arch[/variant], e.g. linux/arm64")
        })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// A tag as a full reference (`app:dev` → `docker.io/library/app:dev`), like envd and docker.
pub(super) fn full_name(tag: &str) -> anyhow::Result<String> {
    Ok(compile::full_name(tag)?)
}

/// `--ssh ID[=SOCKET]` (buildctl's syntax): an agent socket for ssh mounts with that id;
/// without a socket, `$SSH_AUTH_SOCK`.
fn load_ssh(specs: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = BTreeMap::new();
    for spec in specs {
        let (id, path) = match spec.split_once('=') {
            Some((id, p)) => (id.to_string(), PathBuf::from(p)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").with_context(|| {
                    format!("--ssh {spec}: $SSH_AUTH_SOCK is not set (start ssh-agent, or give {spec}=SOCKET)")
                })?;
                (spec.clone(), PathBuf::from(sock))
            }
        };
        if id.is_empty() {
            bail!("--ssh {spec:?}: the id is empty");
        }
        if path.to_string_lossy().contains(',') {
            bail!("--ssh {spec:?}: envkit forwards one agent socket per id");
        }
        let md =
            std::fs::metadata(&path).with_context(|| format!("--ssh {id}: {}", path.display()))?;
        if !md.file_type().is_socket() {
            bail!(
                "--ssh {id}: {} is not an agent socket (envkit forwards a running agent: \
                 `eval $(ssh-agent)`, `ssh-add KEY`, then --ssh {id})",
                path.display()
            );
        }
        out.insert(id, path);
    }
    Ok(out)
}

/// `--secret id=ID,src=FILE` / `id=ID,env=VAR` (buildctl's syntax; `source=` is `src=`).
fn load_secrets(specs: &[String]) -> anyhow::Result<BTreeMap<String, rootless::SecretBytes>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let mut id = None;
        let mut src = None;
        let mut env = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
                Some(("env", v)) => env = Some(v.to_string()),
                _ => bail!("--secret {spec:?}: want id=ID,src=FILE or id=ID,env=VAR"),
            }
        }
        let Some(id) = id.filter(|i| !i.is_empty()) else {
            bail!("--secret {spec:?}: id= is required");
        };
        let data = match (src, env) {
            (Some(path), None) => std::fs::read(&path)
                .with_context(|| format!("secret {id}: reading {}", path.display()))?,
            (None, Some(var)) => std::env::var_os(&var)
                .with_context(|| format!("secret {id}: ${var} is not set"))?
                .into_encoded_bytes(),
            (None, None) => {
                // buildctl: a bare id reads the environment variable of that name.
                std::env::var_os(&id)
                    .with_context(|| format!("secret {id}: give src=FILE or env=VAR"))?
                    .into_encoded_bytes()
            }
            (Some(_), Some(_)) => bail!("--secret {spec:?}: src= and env= exclude each other"),
        };
        out.insert(id, rootless::SecretBytes(data));
    }
    Ok(out)
}

/// Opens the embedded engine with the command line's engine options (`--secret`, `--ssh`,
/// `--allow`, `--ca-bundle`, `--parallelism`, `--no-cache`, `--progress`).
pub(super) async fn open_engine(cli: &Cli, o: &EngineArgs) -> anyhow::Result<Engine> {
    let options = crate::engine::Options {
        root: config::store_root(cli.globals.root.as_deref()),
        config: cli.globals.load_config()?,
        ca_bundle: o.ca_bundle.clone(),
        parallelism: o.parallelism,
        no_cache: o.no_cache,
        entitlements: o.allow.iter().cloned().collect(),
        secrets: load_secrets(&o.secret)?,
        ssh: load_ssh(&o.ssh)?,
        reporter: reporter(&o.progress),
    };
    Ok(Engine::open(options).await?)
}

/// The renderer `--progress` asks for; `auto` is tty when stderr is a terminal.
pub(super) fn reporter(progress: &str) -> Arc<dyn Reporter> {
    use std::io::IsTerminal;
    match progress {
        "rawjson" => Arc::new(RawJson::new(std::io::stderr())),
        "tty" => Arc::new(Tty::new(
            std::io::stderr(),
            Tty::<std::io::Stderr>::stderr_width(),
        )),
        "auto" if std::io::stderr().is_terminal() => Arc::new(Tty::new(
            std::io::stderr(),
            Tty::<std::io::Stderr>::stderr_width(),
        )),
        // Lines of a burst (a rebuild's cached steps) are written together, within 50 ms.
        _ => Arc::new(match tokio::runtime::Handle::try_current() {
            Ok(rt) => Plain::coalescing(std::io::stderr(), rt, Duration::from_millis(50)),
            Err(_) => Plain::new(std::io::stderr()),
        }),
    }
}

fn parse_output(o: Option<&String>) -> anyhow::Result<Option<Output>> {
    Ok(match o {
        Some(o) => Some(export::parse_output(o)?),
        None => None,
    })
}

/// The backend of the context this command uses: the embedded engine, or a remote BuildKit.
async fn open_backend(cli: &Cli, o: &EngineArgs) -> anyhow::Result<Box<dyn Backend>> {
    let ctx = super::remote::current(cli)?;
    Ok(match ctx.endpoint()? {
        Some(ep) => {
            if !o.secret.is_empty() || !o.ssh.is_empty() {
                bail!(
                    "--secret and --ssh reach build steps on the embedded engine only: envkit's \
                     session with a remote BuildKit does not serve them yet (`--context embedded`)"
                );
            }
            let cfg = cli.globals.load_config()?;
            let root = config::store_root(cli.globals.root.as_deref());
            let options = RemoteOptions {
                no_cache: o.no_cache,
                entitlements: o.allow.clone(),
            };
            Box::new(RemoteBackend::connect(ep, &cfg, reporter(&o.progress), root, options).await?)
        }
        None => Box::new(Embedded::new(open_engine(cli, o).await?)),
    })
}

/// The Dockerfile `source` names, if it names one (see `SourceArgs::from`).
pub(super) fn dockerfile_of(source: &SourceArgs) -> Option<PathBuf> {
    if source.frontend == "envd" {
        return None;
    }
    let default_from = source.from == "build.envd:build";
    let file = if crate::dockerfile::is_dockerfile(&source.from) || source.frontend == "dockerfile"
    {
        if default_from {
            "Dockerfile".to_string()
        } else {
            source.from.clone()
        }
    } else if default_from && !source.path.join("build.envd").exists() {
        ["Dockerfile", "Containerfile"]
            .into_iter()
            .find(|f| source.path.join(f).is_file())?
            .to_string()
    } else {
        return None;
    };
    let here = PathBuf::from(&file);
    Some(if here.is_file() || here.is_absolute() {
        here
    } else {
        source.path.join(file)
    })
}

/// `--build-arg KEY=VALUE` (a bare `KEY` takes `$KEY`, as docker does).
fn build_args(source: &SourceArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if source.use_proxy {
        // As envd passes them; a --build-arg of the same name wins.
        let vars = proxy_vars();
        if vars.is_empty() {
            eprintln!("--use-proxy: none of HTTPS_PROXY, HTTP_PROXY, NO_PROXY is set here");
        }
        for (k, v) in vars {
            out.insert(k.to_string(), v);
        }
    }
    for a in &source.build_arg {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("--build-arg {a:?}: the name is empty"),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// A Dockerfile compiled with the command line's arguments.
pub(super) async fn compile_dockerfile(
    source: &SourceArgs,
    file: PathBuf,
    registry: &crate::registry::Registry,
    multi_platform: bool,
    build_platform: crate::platform::Platform,
) -> anyhow::Result<crate::dockerfile::Compiled> {
    let req = crate::dockerfile::Request {
        context: source.path.clone(),
        file,
        target: source.stage.clone(),
        build_args: build_args(source)?,
        platform: build_platform,
        target_platform: target_platform(source)?,
        multi_platform,
        resolve: source.resolve_mode(),
    };
    Ok(crate::dockerfile::compile(&req, registry).await?)
}

/// A Dockerfile build for `backend`.
async fn dockerfile_job(
    backend: &dyn Backend,
    args: &BuildArgs,
    file: PathBuf,
    output: Option<Output>,
    multi_platform: bool,
) -> anyhow::Result<Job> {
    let started = std::time::Instant::now();
    let build_platform = backend.default_platform();
    let wanted = target_platform(&args.source)?.unwrap_or_else(|| build_platform.clone());
    backend.check_platforms(std::slice::from_ref(&wanted))?;
    let compiled = compile_dockerfile(
        &args.source,
        file,
        backend.registry(),
        multi_platform,
        build_platform,
    )
    .await?;
    let default_name = format!(
        "{}:latest",
        compiled
            .context_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_else(|| "dockerfile".into())
    );
    let name = full_name(args.tag.as_deref().unwrap_or(&default_name))?;
    Ok(Job {
        definition: compiled.definition,
        locals: compiled.locals,
        cache: cache_specs(&args.engine, &name)?,
        name,
        output,
        image: ImageConfig::Full {
            spec: Box::new(compiled.spec),
            config: compiled.config,
        },
        started,
    })
}

/// A build file compiled for `backend`: the job, and what was compiled.
async fn compile_job(
    backend: &dyn Backend,
    args: &BuildArgs,
    output: Option<Output>,
) -> anyhow::Result<(Job, compile::Compiled)> {
    let started = std::time::Instant::now();
    let ca = backend.ca_bundle_local(args.engine.ca_bundle.as_deref())?;
    let mut req = compile::Request {
        ca_bundle: ca.as_ref().map(|(_, f)| f.clone()),
        ..source_request(&args.source, backend.target())?
    };
    if args.source.platform.is_none() {
        req.platform = backend.default_platform();
    }
    backend.check_platforms(std::slice::from_ref(&req.platform))?;
    let compiled = compile::compile(&req, backend.registry()).await?;
    let mut locals = compiled.locals();
    if let Some((dir, _)) = ca {
        locals.insert(lower::CA_LOCAL.to_string(), dir);
    }
    let name = compiled.image_name(args.tag.as_ref())?;
    let job = Job {
        // The engine runs the marshalled bytes, exactly what a remote BuildKit would get.
        definition: compiled.lowered.definition.to_bytes(),
        locals,
        cache: cache_specs(&args.engine, &name)?,
        name,
        output,
        image: ImageConfig::Spec {
            spec: Box::new(compiled.lowered.image.clone()),
            base_config: Box::new(compiled.base_config.clone()),
            base_layers: compiled.base_layers.clone(),
        },
        started,
    };
    Ok((job, compiled))
}

/// `--import-cache` and `--export-cache`, checked before anything is built.
/// The `[cache]` imports and exports of config.toml, for a build command whose command line
/// names none in that direction (`--no-cache-defaults`: none at all).
pub(super) fn apply_cache_defaults(cli: &mut Cli) -> anyhow::Result<()> {
    use super::Command;
    let globals = &cli.globals;
    let engine = match &mut cli.command {
        Command::Build(a) => &mut a.args.engine,
        Command::Solve(a) => &mut a.engine,
        Command::Up(a) => &mut a.build.engine,
        Command::Run(a) => &mut a.up.build.engine,
        _ => return Ok(()),
    };
    if engine.no_cache_defaults
        || (!engine.import_cache.is_empty() && !engine.export_cache.is_empty())
    {
        return Ok(());
    }
    let defaults = globals.load_config()?.cache;
    if engine.import_cache.is_empty() {
        engine.import_cache = defaults.import;
    }
    if engine.export_cache.is_empty() {
        engine.export_cache = defaults.export;
    }
    Ok(())
}

/// `target` is the image name the graph is remembered under for `--explain-cache`.
fn cache_specs(e: &EngineArgs, target: &str) -> anyhow::Result<crate::bkcache::spec::CacheSpecs> {
    let mut specs = crate::bkcache::spec::CacheSpecs::parse(&e.import_cache, &e.export_cache)?;
    specs.explain = e.explain_cache;
    specs.target = Some(target.to_string());
    Ok(specs)
}

pub(super) async fn build(cli: &Cli, args: &BuildArgs) -> anyhow::Result<()> {
    let platforms = target_platforms(&args.source)?;
    if platforms.len() > 1 {
        return build_platforms(cli, args, &platforms).await;
    }
    build_one(cli, args, "").await
}

/// A build for one platform (or this machine's); `suffix` is appended to the image's tag.
async fn build_one(cli: &Cli, args: &BuildArgs, suffix: &str) -> anyhow::Result<()> {
    let output = parse_output(args.output.as_ref())?;
    let backend = open_backend(cli, &args.engine).await?;
    let backend = backend.as_ref();
    resolving_ahead(backend, async || {
        let mut job = match job_for(backend, args, output.clone(), false).await {
            Ok(job) => job,
            Err(e) => {
                backend.finish();
                return Err(e);
            }
        };
        if !suffix.is_empty() {
            job.name = full_name(&format!("{}{suffix}", job.name))?;
            job.cache.target = Some(job.name.clone());
        }
        Ok(backend.run(job).await?)
    })
    .await
}

/// Runs `attempt` (a compile and a run) with image tags resolved ahead where `backend` can
/// (`Registry::speculate`); when one named another image by the time the registry answered,
/// says so and runs it again, asking the registry first.
async fn resolving_ahead<T>(
    backend: &dyn Backend,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut ahead = backend.resolves_ahead();
    loop {
        backend.registry().speculate(ahead);
        match attempt().await {
            Err(e) if ahead && backend.registry().moved() => {
                backend.note(e.to_string());
                ahead = false;
            }
            res => return res,
        }
    }
}

/// The job of a build file or a Dockerfile (`multi_platform`: one of several platforms of one
/// image).
async fn job_for(
    backend: &dyn Backend,
    args: &BuildArgs,
    output: Option<Output>,
    multi_platform: bool,
) -> anyhow::Result<Job> {
    match dockerfile_of(&args.source) {
        Some(file) => dockerfile_job(backend, args, file, output, multi_platform).await,
        None => Ok(compile_job(backend, args, output).await?.0),
    }
}

/// `--platform a,b,…`: one image index of every platform's image, or with `--platform-tags`
/// one image per platform built in turn, tagged `TAG-os-arch` as envd does.
async fn build_platforms(
    cli: &Cli,
    args: &BuildArgs,
    platforms: &[crate::platform::Platform],
) -> anyhow::Result<()> {
    let for_platform = |p: &crate::platform::Platform| {
        let mut one = args.clone();
        one.source.platform = Some(p.to_string());
        one
    };
    if args.platform_tags {
        for p in platforms {
            let suffix = crate::image::index::tag_suffix(p);
            build_one(cli, &for_platform(p), &suffix).await?;
        }
        return Ok(());
    }
    let output = parse_output(args.output.as_ref())?;
    let backend = open_backend(cli, &args.engine).await?;
    let mut jobs = Vec::with_capacity(platforms.len());
    for p in platforms {
        match job_for(backend.as_ref(), &for_platform(p), output.clone(), true).await {
            Ok(mut job) => {
                // Each platform's graph is remembered apart for --explain-cache.
                job.cache.target = Some(format!("{} {p}", job.name));
                jobs.push(job);
            }
            Err(e) => {
                backend.finish();
                return Err(e.context(format!("compiling for {p}")));
            }
        }
    }
    Ok(backend.run_platforms(jobs).await?)
}

/// What a build made, for `envkit up`.
pub(super) struct Built {
    pub snap: SnapRef,
    pub name: String,
    pub context_dir: PathBuf,
    pub env_name: String,
}

/// Builds on the embedded engine, for `envkit up` (the progress is left open).
pub(super) async fn build_for(
    backend: &Embedded,
    args: &BuildArgs,
    output: Option<Output>,
) -> anyhow::Result<Built> {
    resolving_ahead(backend, async || {
        let (job, compiled) = compile_job(backend, args, output.clone()).await?;
        let name = job.name.clone();
        let snap = backend.build(job).await?;
        Ok(Built {
            snap,
            name,
            context_dir: compiled.context_dir,
            env_name: compiled.env_name,
        })
    })
    .await
}

/// `envkit solve`: runs an LLB Definition made by any client (`buildctl`-style `--local`
/// dirs), and stores the result as an image (config from the base image, if any).
pub(super) async fn solve(cli: &Cli, args: &SolveArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let output = parse_output(args.output.as_ref())?;
    let bytes = match args.input.as_ref().or(args.file.as_ref()) {
        Some(f) if f.as_os_str() != "-" => {
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?
        }
        _ => {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                .context("reading the Definition from stdin")?;
            b
        }
    };
    let backend = open_backend(cli, &args.engine).await?;
    // `--pull missing`: image sources that name no resolve mode prefer the local image. The
    // embedded engine's registry is told so; a remote BuildKit gets ops that say so, as
    // BuildKit's Go client writes them (`image.resolvemode=local`).
    let bytes = match args.pull.as_str() {
        "missing" if backend.resolves_sources() => {
            backend.registry().prefer_local(true);
            bytes
        }
        "missing" => {
            match crate::llb::Definition::from_bytes(&bytes)?.with_local_images_preferred()? {
                Some(preferred) => preferred.to_bytes(),
                None => bytes,
            }
        }
        _ => bytes,
    };
    let mut locals = BTreeMap::new();
    for l in &args.local {
        let Some((name, dir)) = l.split_once('=') else {
            bail!("--local wants NAME=DIR, got {l:?}");
        };
        let dir = std::fs::canonicalize(dir).with_context(|| format!("local dir {dir}"))?;
        locals.insert(name.to_string(), dir);
    }
    let name = full_name(&args.tag)?;
    let job = Job {
        definition: bytes,
        locals,
        cache: cache_specs(&args.engine, &name)?,
        name,
        output,
        image: ImageConfig::Base,
        started,
    };
    // The Definition's image tags are resolved ahead, as a build's are.
    resolving_ahead(backend.as_ref(), async || {
        Ok(backend.run(job.clone()).await?)
    })
    .await
}
