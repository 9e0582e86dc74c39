//! `envkit up` and `envkit run`: build (or take `--image`), then start a development
//! environment as the image's labels describe it (`devenv::spec`, `devenv::lifecycle`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::build::{build_for, open_engine};
use super::envs::{join, states_for};
use super::{Cli, RunArgs, UpArgs};
use crate::backend::{Backend as _, Embedded};
use crate::config;
use crate::devenv::lifecycle::{self, Start};
use crate::devenv::spec::{PlanArgs, Spec};
use crate::devenv::{self, EnvState, Status};
use crate::export;
use crate::worker::Worker;

/// What an environment is started from: an image as a snapshot, and the project.
struct From {
    image: String,
    manifest_digest: String,
    config: oci_spec::image::ImageConfiguration,
    snap: crate::snapshot::SnapRef,
    project: PathBuf,
    env_name: String,
}

/// Builds the project (or, with `--image`, takes that image from the store or its registry).
async fn from(backend: &Embedded, args: &UpArgs) -> anyhow::Result<From> {
    let engine = &backend.engine;
    let Some(image) = &args.image else {
        let output = match &args.build.output {
            Some(o) => Some(export::parse_output(o)?),
            None => None,
        };
        let built = build_for(backend, &args.build, output).await?;
        let Some(found) = engine.stored_image(&built.name)? else {
            bail!("the image {} is not in the store", built.name);
        };
        return Ok(From {
            image: built.name,
            manifest_digest: found.manifest_digest,
            config: found.config,
            snap: built.snap,
            project: built.context_dir,
            env_name: built.env_name,
        });
    };
    if args.build.output.is_some() || args.build.tag.is_some() {
        bail!("--image starts an image as it is: --output and --tag are for building");
    }
    let project = std::fs::canonicalize(&args.build.source.path)
        .with_context(|| format!("the project {}", args.build.source.path.display()))?;
    let found = engine
        .image_rootfs(image)
        .await
        .with_context(|| format!("the image {image}"))?;
    let env_name = project
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "envkit".to_string());
    Ok(From {
        image: found.name,
        manifest_digest: found.manifest_digest,
        config: found.config,
        snap: found.snap,
        project,
        env_name,
    })
}

/// Whether GPUs are asked for: `--no-gpu` wins, then `--gpus`, then `config.gpu`.
fn wants_gpus(args: &UpArgs, spec: &Spec) -> bool {
    if args.no_gpu {
        return false;
    }
    match &args.gpus {
        Some(g) => g != "0",
        None => spec.num_gpus != 0,
    }
}

/// `-v HOST:CONTAINER`.
fn volumes(args: &UpArgs) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for v in &args.volume {
        let Some((h, c)) = v.split_once(':') else {
            bail!("-v {v:?}: want HOST:CONTAINER");
        };
        if c.contains(':') || !c.starts_with('/') {
            bail!("-v {v:?}: the container path must be absolute (HOST:CONTAINER)");
        }
        out.push((PathBuf::from(h), c.to_string()));
    }
    Ok(out)
}

/// Builds (or finds the image), then starts the environment as the image's labels describe
/// it; returns its state.
async fn start(cli: &Cli, args: &UpArgs, name_suffix: Option<&str>) -> anyhow::Result<EnvState> {
    // Environments run on this machine, from envkit's own store.
    let ctx = super::remote::current(cli)?;
    if ctx.endpoint()?.is_some() {
        bail!(
            "environments run on this machine with the embedded engine; the context {:?} builds \
             elsewhere: add `--context embedded`",
            ctx.name
        );
    }
    let backend = Embedded::new(open_engine(cli, &args.build.engine).await?);
    let from = from(&backend, args).await;
    backend.finish();
    let from = from?;
    let engine = &backend.engine;
    let worker = &engine.worker;
    let mut name = match &args.name {
        Some(n) => {
            devenv::check_name(n)?;
            n.clone()
        }
        None => devenv::normalize_name(&from.env_name)?,
    };
    if let Some(s) = name_suffix {
        name = format!("{name}-{s}");
    }
    let states = devenv::state_root(&engine.root);
    if let Some(old) = EnvState::load(&states, &name)? {
        if old.status() == Status::Running && !args.force {
            bail!(
                "the environment {name} is already running (pid {}): `envkit exec {name}` enters \
                 it, `envkit destroy {name}` stops it, `--force` replaces it",
                old.pid
            );
        }
        lifecycle::destroy(worker, &states, &old).await?;
    }
    let cfg = from.config.config().clone().unwrap_or_default();
    let spec = Spec::from_labels(&cfg.labels().clone().unwrap_or_default())?;
    // The project at envd's path, /home/envd/<project>.
    let cwd = format!("/home/envd/{}", from.env_name);
    let gpus = wants_gpus(args, &spec);
    let plan = spec.plan(
        &cfg.env().clone().unwrap_or_default(),
        &cfg.user().clone().unwrap_or_default(),
        &PlanArgs {
            project: from.project.clone(),
            cwd: cwd.clone(),
            volumes: volumes(args)?,
            home: config::home(),
            host_mounts: args.image.is_none(),
        },
        gpus,
    );
    for (host, inside) in &plan.refused_mounts {
        eprintln!(
            "envkit: the image asks for the host's {host} at {inside} (runtime.mount); an image \
             from elsewhere does not choose host paths: give `-v HOST:{inside}` to bind it"
        );
    }
    for (h, _) in &plan.mounts {
        if !h.exists() {
            bail!("the mount source {} does not exist", h.display());
        }
    }
    let shm_mb = args
        .shm_size
        .or(u64::try_from(spec.shm_size).ok().filter(|s| *s > 0))
        .unwrap_or(2048);
    // As for a build step: `--allow security.insecure` runs the environment unconfined.
    let insecure = args
        .build
        .engine
        .allow
        .iter()
        .any(|a| a == "security.insecure");
    let start = Start {
        name: name.clone(),
        image: from.image,
        manifest_digest: from.manifest_digest,
        snap: &from.snap,
        project: from.project,
        cwd,
        plan,
        commands: spec.commands,
        gpus,
        shm_mb,
        insecure,
    };
    let state = lifecycle::start(worker, &states, start)
        .await
        .with_context(|| format!("starting the environment {name}"))?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "environment {name} is up (pid {}); {} is mounted at {}",
        state.pid,
        state.project.display(),
        state.cwd
    )?;
    for p in &state.ports {
        writeln!(err, "  {}: http://{}:{}", p.service, p.listen, p.port)?;
    }
    if !state.services.is_empty() {
        writeln!(
            err,
            "  {} daemon(s) supervised; logs in {}",
            state.services.len(),
            EnvState::log_dir(&states, &name).display()
        )?;
    }
    Ok(state)
}

pub(super) async fn up(cli: &Cli, args: &UpArgs) -> anyhow::Result<()> {
    let state = start(cli, args, None).await?;
    if args.detach {
        eprintln!(
            "  `envkit exec {n}` opens a shell in it, `envkit destroy {n}` stops it",
            n = state.name
        );
        return Ok(());
    }
    let code = tokio::task::block_in_place(|| {
        join(&state, Vec::new(), super::tty_mode(args.tty, args.no_tty))
    })?;
    eprintln!(
        "left {n} (the shell said {code}); it keeps running: `envkit exec {n}` to come back, \
         `envkit destroy {n}` to stop it",
        n = state.name
    );
    Ok(())
}

pub(super) async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<i32> {
    if args.args.is_empty() {
        bail!("envkit run needs a command: envkit run [build flags] -- COMMAND [ARGS…]");
    }
    let suffix = format!("run-{}", std::process::id());
    let state = start(cli, &args.up, Some(&suffix)).await?;
    let tty = super::tty_mode(args.up.tty, args.up.no_tty);
    let code = tokio::task::block_in_place(|| join(&state, args.args.clone(), tty));
    if args.keep {
        eprintln!(
            "kept the environment {} (`envkit destroy {}`)",
            state.name, state.name
        );
    } else {
        let (root, states) = states_for(cli);
        let cfg = cli.globals.load_config()?;
        let worker = Worker::new(&root, cfg, None)?;
        lifecycle::destroy(&worker, &states, &state).await?;
    }
    code
}
