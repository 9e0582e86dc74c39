//! `envkit up`, `exec`, `run`, `envs ls|describe`, `destroy`: development environments
//! without a daemon (see `devenv` for what is kept, and `rootless::env` for how they run).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::build::{build_for, open_engine};
use super::{Cli, DestroyArgs, EnvsCommand, ExecArgs, RunArgs, UpArgs};
use crate::backend::{Backend as _, Embedded};
use crate::config::{self, Config};
use crate::devenv::spec::{PlanArgs, Spec};
use crate::devenv::{self, EnvState, Status};
use crate::export;
use crate::worker::Worker;

/// Where the project is mounted (envd's working directory).
fn project_path(env_name: &str) -> String {
    format!("/home/envd/{env_name}")
}

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
        destroy_env(worker, &states, &old).await?;
    }
    let cfg = from.config.config().clone().unwrap_or_default();
    let spec = Spec::from_labels(&cfg.labels().clone().unwrap_or_default())?;
    let mut volumes = Vec::new();
    for v in &args.volume {
        let Some((h, c)) = v.split_once(':') else {
            bail!("-v {v:?}: want HOST:CONTAINER");
        };
        if c.contains(':') || !c.starts_with('/') {
            bail!("-v {v:?}: the container path must be absolute (HOST:CONTAINER)");
        }
        volumes.push((PathBuf::from(h), c.to_string()));
    }
    let cwd = project_path(&from.env_name);
    let gpus = wants_gpus(args, &spec);
    let plan = spec.plan(
        &cfg.env().clone().unwrap_or_default(),
        &cfg.user().clone().unwrap_or_default(),
        &PlanArgs {
            project: from.project.clone(),
            cwd: cwd.clone(),
            volumes,
            home: config::home(),
        },
        gpus,
    );
    for (h, _) in &plan.mounts {
        if !h.exists() {
            bail!("the mount source {} does not exist", h.display());
        }
    }
    let mut binds: Vec<rootless::Mount> = plan
        .mounts
        .iter()
        .map(|(h, c)| rootless::Mount {
            source: h.clone(),
            target: c.clone(),
            kind: rootless::MountKind::Bind { readonly: false },
        })
        .collect();
    if gpus {
        let Some(files) = devenv::nvidia_binds() else {
            bail!(
                "GPUs were asked for (config.gpu or --gpus) but this host has no NVIDIA GPU \
                 (no /dev/nvidia0); use --no-gpu to start without"
            );
        };
        for f in files {
            let target = f.to_string_lossy().into_owned();
            binds.push(rootless::Mount {
                source: f,
                target,
                kind: rootless::MountKind::Bind { readonly: true },
            });
        }
    }
    let shm_mb = args
        .shm_size
        .or(u64::try_from(spec.shm_size).ok().filter(|s| *s > 0))
        .unwrap_or(2048);

    let layer_dir = engine.root.join("envs").join(&name);
    if layer_dir.exists() {
        worker.remove_tree(&layer_dir).await?;
    }
    let (upper, work) = (layer_dir.join("upper"), layer_dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let lowers = worker.snapshots.lowers(&from.snap);
    let user = "0".to_string();
    // As for a build step: `--allow security.insecure` runs the environment unconfined.
    let cfg_no_new_privs = worker.config.worker.no_new_privileges;
    let insecure = args
        .build
        .engine
        .allow
        .iter()
        .any(|a| a == "security.insecure");
    let log_dir = EnvState::log_dir(&states, &name);
    let req = rootless::EnvRequest {
        exec: rootless::ExecRequest {
            lowers: lowers.clone(),
            upper,
            work,
            args: Vec::new(),
            env: plan.env.clone(),
            cwd: cwd.clone(),
            user: user.clone(),
            mounts: binds,
            hostname: name.clone(),
            ca_bundle: None,
            readonly_rootfs: false,
            network_none: false,
            sandbox_net: false,
            insecure,
            no_new_privs: cfg_no_new_privs,
            rlimits: Vec::new(),
        },
        shm_size: shm_mb << 20,
        services: plan.services.clone(),
        log_dir: log_dir.clone(),
    };
    let resp = worker
        .run_helper(rootless::Request::StartEnv(Box::new(req)), None, None)
        .await
        .with_context(|| format!("starting the environment {name}"))?;
    let rootless::Response::EnvStarted { pid } = resp else {
        bail!("the helper answered {resp:?} to starting {name}");
    };
    let state = EnvState {
        name: name.clone(),
        image: from.image,
        manifest_digest: from.manifest_digest,
        pid,
        pid_start: devenv::start_time(pid).unwrap_or(0),
        project: from.project,
        mounts: plan.mounts,
        ports: plan.ports,
        services: plan
            .services
            .into_iter()
            .filter(|s| !s.once)
            .map(|s| (s.name, s.args))
            .collect(),
        env: plan.env,
        user,
        cwd,
        shell: plan.shell,
        commands: spec.commands,
        created: crate::image::unix_now(),
        lowers,
        layer_dir,
        gpus,
        insecure,
        no_new_privs: cfg_no_new_privs,
    };
    state.save(&states)?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "environment {name} is up (pid {pid}); {} is mounted at {}",
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
            log_dir.display()
        )?;
    }
    Ok(state)
}

/// Runs `args` (the shell when empty) in a running environment, with this terminal; returns
/// its exit code.
fn join(state: &EnvState, args: Vec<String>, tty: rootless::TtyMode) -> anyhow::Result<i32> {
    if state.status() != Status::Running {
        bail!(
            "the environment {} is not running (its processes are gone): `envkit destroy {}` \
             cleans it up, `envkit up` starts it again",
            state.name,
            state.name
        );
    }
    let args = if args.is_empty() {
        vec![state.shell.clone()]
    } else {
        args
    };
    let req = rootless::JoinRequest {
        pid: state.pid,
        args,
        env: state.env.clone(),
        cwd: state.cwd.clone(),
        user: state.user.clone(),
        tty,
        insecure: state.insecure,
        no_new_privs: state.no_new_privs,
    };
    let exe = std::env::current_exe().context("finding the envkit executable")?;
    let mut child = rootless::join_command(&exe, &req)?
        .spawn()
        .context("starting envkit exec")?;
    // The terminal's Ctrl-C and Ctrl-\ are for the command: this process waits them out.
    let _ignore = rootless::IgnoreInterrupts::new();
    let status = child.wait().context("waiting for the command")?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
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

fn states_for(cli: &Cli) -> (PathBuf, PathBuf) {
    let root = config::store_root(cli.root.as_deref());
    let states = devenv::state_root(&root);
    (root, states)
}

fn default_name(name: &Option<String>) -> anyhow::Result<String> {
    match name {
        Some(n) => Ok(n.clone()),
        None => {
            let cwd = std::env::current_dir().context("the current directory")?;
            let base = cwd
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(devenv::normalize_name(&base)?)
        }
    }
}

pub(super) fn exec(cli: &Cli, args: &ExecArgs) -> anyhow::Result<i32> {
    let (_, states) = states_for(cli);
    let name = default_name(&args.name)?;
    devenv::check_name(&name)?;
    let Some(state) = EnvState::load(&states, &name)? else {
        bail!("no environment {name} (see `envkit envs ls`)");
    };
    let argv = match &args.command {
        Some(c) => {
            let Some((_, cmd)) = state.commands.iter().find(|(k, _)| k == c) else {
                let known: Vec<&str> = state.commands.iter().map(|(k, _)| k.as_str()).collect();
                bail!(
                    "the environment {name} has no runtime.command {c:?} (it has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            };
            vec!["sh".into(), "-c".into(), cmd.clone()]
        }
        None => args.args.clone(),
    };
    // `-i` without `-t` is docker's "stdin, no terminal".
    let no_tty = args.no_tty || (args.interactive && !args.tty);
    join(&state, argv, super::tty_mode(args.tty, no_tty))
}

/// Stops the environment's processes and removes what it left (idempotent).
async fn destroy_env(worker: &Worker, states: &Path, s: &EnvState) -> anyhow::Result<()> {
    if s.status() == Status::Running {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(s.pid).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut waited = 0;
        while s.status() == Status::Running && waited < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            waited += 1;
        }
        if s.status() == Status::Running {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            while s.status() == Status::Running && waited < 100 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                waited += 1;
            }
        }
        if s.status() == Status::Running {
            bail!("the environment {} (pid {}) does not stop", s.name, s.pid);
        }
    }
    worker
        .remove_tree(&s.layer_dir)
        .await
        .with_context(|| format!("removing {}", s.layer_dir.display()))?;
    let dir = EnvState::dir(states, &s.name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    Ok(())
}

pub(super) async fn destroy(cli: &Cli, args: &DestroyArgs) -> anyhow::Result<()> {
    let (root, states) = states_for(cli);
    let name = default_name(&args.name.clone().or(args.name_flag.clone()))?;
    devenv::check_name(&name)?;
    let Some(state) = EnvState::load(&states, &name)? else {
        println!("no environment {name}: nothing to destroy");
        return Ok(());
    };
    let cfg = Config::load(cli.config.as_deref())?;
    let worker = Worker::new(&root, cfg, None)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    destroy_env(&worker, &states, &state).await?;
    println!("destroyed {name}");
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
        let cfg = Config::load(cli.config.as_deref())?;
        let worker = Worker::new(&root, cfg, None)?;
        destroy_env(&worker, &states, &state).await?;
    }
    code
}

/// The processes in an environment's PID namespace (pid, command line).
fn processes(s: &EnvState) -> Vec<(u32, String)> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/pid", s.pid)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // The init itself is in the helper's namespace's view; its children are in `ns`.
    let init_ns = std::fs::read_link(format!("/proc/{}/ns/pid_for_children", s.pid)).ok();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(theirs) = std::fs::read_link(e.path().join("ns/pid")) else {
            continue;
        };
        if theirs == ns || Some(&theirs) == init_ns.as_ref() {
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            out.push((pid, cmd));
        }
    }
    out.sort();
    out
}

pub(super) fn envs(cli: &Cli, what: &Option<EnvsCommand>) -> anyhow::Result<()> {
    let (_, states) = states_for(cli);
    let mut out = std::io::stdout().lock();
    match what {
        None | Some(EnvsCommand::Ls { .. }) => {
            let json = matches!(what, Some(EnvsCommand::Ls { format: Some(f) }) if f == "json");
            let all = EnvState::list(&states);
            if json {
                let v: Vec<serde_json::Value> = all
                    .iter()
                    .flatten()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name, "image": s.image, "status": s.status().to_string(),
                            "pid": s.pid, "ports": s.ports, "created": crate::image::rfc3339(s.created),
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<24} {:<40} {:<8} {:<16} {:>8}  CREATED",
                "NAME", "IMAGE", "STATUS", "PORTS", "PID"
            )?;
            for s in all {
                match s {
                    Ok(s) => {
                        let ports: Vec<String> =
                            s.ports.iter().map(|p| p.port.to_string()).collect();
                        writeln!(
                            out,
                            "{:<24} {:<40} {:<8} {:<16} {:>8}  {}",
                            s.name,
                            s.image,
                            if s.status() == Status::Running {
                                "running"
                            } else {
                                "stale"
                            },
                            if ports.is_empty() {
                                "-".to_string()
                            } else {
                                ports.join(",")
                            },
                            s.pid,
                            crate::image::rfc3339(s.created)
                        )?;
                    }
                    Err(e) => writeln!(out, "(unreadable: {e})")?,
                }
            }
        }
        Some(EnvsCommand::Describe { name }) => {
            let name = default_name(name)?;
            let Some(s) = EnvState::load(&states, &name)? else {
                bail!("no environment {name} (see `envkit envs ls`)");
            };
            writeln!(out, "name:     {}", s.name)?;
            writeln!(out, "image:    {} ({})", s.image, s.manifest_digest)?;
            writeln!(out, "status:   {} (init pid {})", s.status(), s.pid)?;
            writeln!(out, "project:  {} at {}", s.project.display(), s.cwd)?;
            writeln!(out, "created:  {}", crate::image::rfc3339(s.created))?;
            writeln!(
                out,
                "gpus:     {}",
                if s.gpus { "all NVIDIA devices" } else { "none" }
            )?;
            writeln!(out, "mounts:")?;
            for (h, c) in &s.mounts {
                writeln!(out, "  {} -> {c}", h.display())?;
            }
            writeln!(out, "ports (host network):")?;
            for p in &s.ports {
                writeln!(out, "  {:<12} {}:{}", p.service, p.listen, p.port)?;
            }
            writeln!(out, "daemons:")?;
            for (n, a) in &s.services {
                writeln!(out, "  {n}: {}", a.join(" "))?;
            }
            writeln!(out, "processes:")?;
            for (pid, cmd) in processes(&s) {
                writeln!(out, "  {pid:>8} {cmd}")?;
            }
            writeln!(
                out,
                "logs:     {}",
                EnvState::log_dir(&states, &s.name).display()
            )?;
        }
    }
    Ok(())
}
