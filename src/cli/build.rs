//! `envkit build`, `envkit images`, `envkit debug llb`: the pipeline from a build file to an
//! exported image. Every build goes frontend → IR → lower → Definition bytes → `llb::load` →
//! solver; the engine never sees the IR.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::{BuildArgs, Cli, EngineArgs, LlbArgs, PruneArgs, SolveArgs, SourceArgs};
use crate::compile;
use crate::config::{self, Config};
use crate::engine::Engine;
use crate::export::{self, Output};
use crate::image;
use crate::llb;
use crate::lower;
use crate::meta;
use crate::progress::{Plain, RawJson, Reporter, Tty};
use crate::registry::Registry;
use crate::snapshot::SnapRef;
use crate::worker::Worker;

/// What `-p` and `-f` ask to compile, for this machine's platform.
fn source_request(source: &SourceArgs, target: lower::Target) -> compile::Request {
    compile::request(&source.path, &source.from, target)
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
        root: config::store_root(cli.root.as_deref()),
        config: Config::load(cli.config.as_deref())?,
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

/// `envkit push REF`: pushes an image of envkit's store to the registry its name names.
pub(super) async fn push(cli: &Cli, args: &super::PushArgs) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let root = config::store_root(cli.root.as_deref());
    let name = full_name(&args.image)?;
    let db = meta::Meta::open(&root)?;
    let Some(img) = db.get_image(&name)? else {
        bail!("no image {name} in envkit's store (see `envkit images`)");
    };
    drop(db);
    let worker = Worker::new(&root, cfg, None)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let digest = crate::content::parse_digest(&img.manifest_digest)?;
    let size = worker.content.size(&digest)?;
    let desc =
        oci_spec::image::Descriptor::new(oci_spec::image::MediaType::ImageManifest, size, digest);
    let compression = match &args.compression {
        Some(c) => export::parse_output(&format!("type=image,name=x,push=true,compression={c}"))
            .map(|o| match o {
                Output::Image { compression, .. } => compression,
                _ => export::CompressionOpts::default(),
            })?,
        None => export::CompressionOpts::default(),
    };
    let manifest = export::convert_manifest(&desc, &worker.content, &compression)?;
    let target = match &args.to {
        Some(t) => full_name(t)?,
        None => name.clone(),
    };
    let p = worker
        .registry
        .push(&target, &manifest, &worker.content)
        .await?;
    println!("{}", crate::engine::pushed_note(&p));
    Ok(())
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
        _ => Arc::new(Plain::new(std::io::stderr())),
    }
}

fn parse_output(o: Option<&String>) -> anyhow::Result<Option<Output>> {
    Ok(match o {
        Some(o) => Some(export::parse_output(o)?),
        None => None,
    })
}

pub(super) async fn build(cli: &Cli, args: &BuildArgs) -> anyhow::Result<()> {
    let output = parse_output(args.output.as_ref())?;
    let ctx = super::remote::current(cli)?;
    if let Some(ep) = ctx.endpoint()? {
        let cfg = Config::load(cli.config.as_deref())?;
        let registry = crate::registry::Registry::new(&cfg);
        let remote = super::remote::Remote::connect(ep).await?;
        let target = remote.target();
        // The host CA bundle reaches remote steps as a local source of the session.
        let ca = match args
            .engine
            .ca_bundle
            .clone()
            .or(cfg.worker.ca_bundle.clone())
        {
            Some(p) => {
                let real = std::fs::canonicalize(&p)
                    .with_context(|| format!("the CA bundle {}", p.display()))?;
                match (real.parent(), real.file_name()) {
                    (Some(dir), Some(f)) => {
                        Some((dir.to_path_buf(), f.to_string_lossy().into_owned()))
                    }
                    _ => bail!("the CA bundle {} is not a file", p.display()),
                }
            }
            None => None,
        };
        let req = compile::Request {
            ca_bundle: ca.as_ref().map(|(_, f)| f.clone()),
            ..source_request(&args.source, target)
        };
        let compiled = compile::compile(&req, &registry).await?;
        let mut locals = compiled.locals();
        if let Some((dir, _)) = &ca {
            locals.insert(lower::CA_LOCAL.to_string(), dir.clone());
        }
        let name = compiled.image_name(args.tag.as_ref())?;
        let config = image::assemble(
            &compiled.base_config,
            &compiled.lowered.image,
            &compiled.base_layers,
            &[],
            crate::engine::reproducible_epoch() as u64,
        )?;
        return super::remote::solve_remote(
            &remote,
            &compiled.lowered.definition.to_bytes(),
            output.as_ref(),
            &name,
            Some(config.config_bytes),
            &locals,
            &args.engine.progress,
            &config::store_root(cli.root.as_deref()),
        )
        .await;
    }
    let engine = open_engine(cli, &args.engine).await?;
    let res = build_with(&engine, args, output).await;
    engine.reporter.finish();
    res
}

/// What a build made, for `envkit up`.
pub(super) struct Built {
    pub snap: SnapRef,
    pub name: String,
    pub env: crate::ir::Environment,
    pub context_dir: PathBuf,
    pub env_name: String,
}

async fn build_with(
    engine: &Engine,
    args: &BuildArgs,
    output: Option<Output>,
) -> anyhow::Result<()> {
    build_for(engine, args, output).await.map(|_| ())
}

pub(super) async fn build_for(
    engine: &Engine,
    args: &BuildArgs,
    output: Option<Output>,
) -> anyhow::Result<Built> {
    let started = std::time::Instant::now();
    let req = source_request(&args.source, lower::Target::Embedded);
    let compiled = compile::compile(&req, &engine.worker.registry).await?;
    // The engine runs the marshalled bytes, exactly what a remote BuildKit would get.
    let bytes = compiled.lowered.definition.to_bytes();
    let snap = engine.solve(&bytes, compiled.locals()).await?;
    let name = compiled.image_name(args.tag.as_ref())?;
    engine
        .export(&snap, &compiled.lowered.image, &name, output, started)
        .await?;
    Ok(Built {
        snap,
        name,
        env: compiled.env,
        context_dir: compiled.context_dir,
        env_name: compiled.env_name,
    })
}

/// `envkit solve`: runs an LLB Definition made by any client (`buildctl`-style `--local`
/// dirs), and stores the result as an image (config from the base image, if any).
pub(super) async fn solve(cli: &Cli, args: &SolveArgs) -> anyhow::Result<()> {
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
    let mut locals = BTreeMap::new();
    for l in &args.local {
        let Some((name, dir)) = l.split_once('=') else {
            bail!("--local wants NAME=DIR, got {l:?}");
        };
        let dir = std::fs::canonicalize(dir).with_context(|| format!("local dir {dir}"))?;
        locals.insert(name.to_string(), dir);
    }
    let ctx = super::remote::current(cli)?;
    if let Some(ep) = ctx.endpoint()? {
        let remote = super::remote::Remote::connect(ep).await?;
        return super::remote::solve_remote(
            &remote,
            &bytes,
            output.as_ref(),
            &full_name(&args.tag)?,
            None,
            &locals,
            &args.engine.progress,
            &config::store_root(cli.root.as_deref()),
        )
        .await;
    }
    let engine = open_engine(cli, &args.engine).await?;
    let started = std::time::Instant::now();
    let res = async {
        let snap = engine.solve(&bytes, locals).await?;
        let name = full_name(&args.tag)?;
        engine
            .export(&snap, &image::ImageSpec::default(), &name, output, started)
            .await?;
        anyhow::Ok(())
    }
    .await;
    engine.reporter.finish();
    res
}

pub(super) fn du(cli: &Cli) -> anyhow::Result<()> {
    let root = config::store_root(cli.root.as_deref());
    let u = crate::gc::usage(&root);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16} {:>8} {:>10}", "KIND", "COUNT", "SIZE")?;
    let total = u.snapshots.bytes
        + u.content.bytes
        + u.cache_mounts.bytes
        + u.metadata.bytes
        + u.temporary.bytes;
    for (kind, a) in [
        ("build cache", u.snapshots),
        ("blobs", u.content),
        ("cache mounts", u.cache_mounts),
        ("metadata", u.metadata),
        ("temporary", u.temporary),
    ] {
        writeln!(out, "{kind:<16} {:>8} {:>10}", a.count, human_size(a.bytes))?;
    }
    writeln!(out, "{:<16} {:>8} {:>10}", "total", "", human_size(total))?;
    writeln!(out, "store: {}", root.display())?;
    Ok(())
}

/// `10GB`, `512MiB`, `1.5G`; a bare number is MB (envd's `--keep-storage`).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    crate::config::parse_size(s).map_err(|e| anyhow::anyhow!(e))
}

/// `24h`, `7d`, `1h30m`, `90s`.
fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .with_context(|| format!("duration {s:?}: want e.g. 24h, 7d, 1h30m"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            other => bail!("duration {s:?}: unknown unit {other:?}"),
        };
    }
    if !num.is_empty() {
        bail!("duration {s:?}: a number needs a unit (s, m, h, d, w)");
    }
    Ok(std::time::Duration::from_secs(total))
}

pub(super) async fn prune(cli: &Cli, args: &PruneArgs) -> anyhow::Result<()> {
    let mut opts = crate::gc::PruneOptions {
        all: args.all,
        ..Default::default()
    };
    if let Some(k) = &args.keep_storage {
        opts.keep_storage = Some(parse_size(k)?);
    }
    for f in &args.filter {
        match f.split_once('=') {
            Some(("until", d)) => opts.until = Some(parse_duration(d)?),
            Some(("type", "exec.cachemount")) => opts.only_cache_mounts = true,
            Some(("type", "regular")) => opts.all = false,
            _ => bail!(
                "unknown filter {f:?} (envkit knows until=DURATION, type=exec.cachemount, type=regular)"
            ),
        }
    }
    let worker = open_exclusive(cli).await?;
    worker.clean_stale().await;
    let r = crate::gc::prune(&worker, &opts).await?;
    println!(
        "removed {} build cache entries ({}), {} blobs ({}), {} cache mounts ({})",
        r.snapshots.count,
        human_size(r.snapshots.bytes),
        r.blobs.count,
        human_size(r.blobs.bytes),
        r.cache_mounts.count,
        human_size(r.cache_mounts.bytes)
    );
    Ok(())
}

/// The store with no build running on it (waiting for running ones, and saying so).
async fn open_exclusive(cli: &Cli) -> anyhow::Result<Worker> {
    let cfg = Config::load(cli.config.as_deref())?;
    let root = config::store_root(cli.root.as_deref());
    match Worker::new_exclusive(&root, cfg.clone(), false) {
        Ok(w) => Ok(w),
        Err(crate::worker::WorkerError::Busy) => {
            eprintln!(
                "waiting for the builds running on {} to finish…",
                root.display()
            );
            Ok(tokio::task::spawn_blocking({
                let root = root.clone();
                move || Worker::new_exclusive(&root, cfg, true)
            })
            .await
            .context("opening the store")??)
        }
        Err(e) => Err(e).context("opening the store"),
    }
}

/// `envkit check [--repair]`: exit code 1 when anything was wrong.
pub(super) async fn check(cli: &Cli, repair: bool) -> anyhow::Result<i32> {
    let worker = open_exclusive(cli).await?;
    let r = crate::gc::check(&worker, repair).await?;
    let mut out = std::io::stdout().lock();
    for p in &r.problems {
        let fix = match &p.fix {
            crate::gc::Fix::RemoveFile(f) | crate::gc::Fix::RemoveTree(f) => {
                format!("remove {}", f.display())
            }
            crate::gc::Fix::RemoveImage(n) => format!("remove the image name {n}"),
        };
        writeln!(out, "{}  [--repair: {fix}]", p.what)?;
    }
    writeln!(
        out,
        "checked {} blobs, {} build cache entries, {} images in {}: {}",
        r.blobs,
        r.snapshots,
        r.images,
        worker.root.display(),
        match (r.problems.len(), repair) {
            (0, _) => "no damage".to_string(),
            (n, false) => format!("{n} problems (`envkit check --repair` removes what is broken)"),
            (n, true) => format!("{n} problems, {} repaired", r.repaired),
        }
    )?;
    Ok(if r.problems.is_empty() { 0 } else { 1 })
}

pub(super) fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Runs Graphviz's `dot -Tsvg` on a graph.
fn render_svg(dot: &str) -> anyhow::Result<Vec<u8>> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("--svg needs Graphviz: `dot` was not found on PATH (apt-get install graphviz)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(dot.as_bytes())?;
    }
    let out = child.wait_with_output().context("running dot")?;
    if !out.status.success() {
        bail!(
            "dot -Tsvg failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

pub(super) async fn debug_llb(cli: &Cli, args: &LlbArgs) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    let registry = Registry::new(&cfg);
    let compiled = compile::compile(&source_request(&args.source, args.target), &registry).await?;
    let bytes = compiled.lowered.definition.to_bytes();
    let mut out = std::io::stdout().lock();
    if args.pb {
        out.write_all(&bytes)?;
        return Ok(());
    }
    let graph = llb::load(&bytes)?;
    if args.dot {
        out.write_all(graph.to_readable_dot().as_bytes())?;
    } else if args.svg {
        out.write_all(&render_svg(&graph.to_readable_dot())?)?;
    } else {
        out.write_all(graph.to_json_lines().as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("1.5").unwrap(), 1_500_000);
        assert!(parse_size("ten").is_err());
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604_800);
        assert!(parse_duration("24").is_err());
    }
}
