//! `envkit up`, `exec`, `run`, `envs ls|describe`, `destroy`: development environments
//! without a daemon (see `devenv` for what is kept, and `rootless::env` for how they run).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::build::{build_for, open_engine};
use super::{Cli, DestroyArgs, EnvsCommand, ExecArgs, RunArgs, UpArgs};
use crate::config::{self, Config};
use crate::devenv::{self, EnvState, Port, Status};
use crate::export;
use crate::meta;
use crate::worker::Worker;

/// Where the project is mounted (envd's working directory).
fn project_path(env_name: &str) -> String {
    format!("/home/envd/{env_name}")
}

/// `~` at the start of a host path is the user's home; in a container path, /home/envd.
fn expand_host(p: &str) -> PathBuf {
    match (p.strip_prefix('~'), config::home()) {
        (Some(rest), Some(home)) => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(p),
    }
}

fn expand_target(p: &str) -> String {
    match p.strip_prefix('~') {
        Some(rest) => format!("/home/envd{rest}"),
        None => p.to_string(),
    }
}

/// The image's config from the store: env, user, working dir.
fn image_config(
    root: &Path,
    store: &crate::content::Store,
    name: &str,
) -> anyhow::Result<(String, oci_spec::image::ImageConfiguration)> {
    let db = meta::Meta::open(root)?;
    let Some(rec) = db.get_image(name)? else {
        bail!("the image {name} is not in the store");
    };
    let d = crate::content::parse_digest(&rec.manifest_digest)?;
    let m: oci_spec::image::ImageManifest = serde_json::from_slice(&store.read_blob(&d)?)
        .with_context(|| format!("the manifest of {name}"))?;
    let c = serde_json::from_slice(&store.read_blob(m.config().digest())?)
        .with_context(|| format!("the config of {name}"))?;
    Ok((rec.manifest_digest, c))
}

/// Whether GPUs are asked for: `--no-gpu` wins, then `--gpus`, then `config.gpu`.
fn wants_gpus(args: &UpArgs, env: &crate::ir::Environment) -> bool {
    if args.no_gpu {
        return false;
    }
    match &args.gpus {
        Some(g) => g != "0",
        None => env.num_gpus != 0,
    }
}

/// Builds, then starts the environment; returns its state (and the exec to attach with).
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
    let output = match &args.build.output {
        Some(o) => Some(export::parse_output(o)?),
        None => None,
    };
    let engine = open_engine(cli, &args.build.engine).await?;
    let built = build_for(&engine, &args.build, output).await;
    engine.reporter.finish();
    let built = built?;
    let worker = &engine.worker;
    let mut name = match &args.name {
        Some(n) => {
            devenv::check_name(n)?;
            n.clone()
        }
        None => devenv::normalize_name(&built.env_name)?,
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
    let (digest, config) = image_config(&engine.root, &worker.content, &built.name)?;
    let cfg = config.config().clone().unwrap_or_default();
    let env_ir = &built.env;

    // The environment of every process: the image's, runtime.environ over it, extra PATH.
    let mut env: Vec<String> = cfg.env().clone().unwrap_or_default();
    for (k, v) in &env_ir.environ {
        env.retain(|kv| kv.split_once('=').map(|(a, _)| a) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    if !env_ir.extra_path.is_empty() {
        let base = env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH=").map(str::to_string))
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
        env.retain(|kv| !kv.starts_with("PATH="));
        env.push(format!("PATH={base}:{}", env_ir.extra_path.join(":")));
    }
    let image_user = cfg.user().clone().unwrap_or_default();
    if image_user == "envd" && !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push("HOME=/home/envd".into());
    }
    let shell = env
        .iter()
        .find_map(|kv| kv.strip_prefix("SHELL=").map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bash".into());

    // Mounts: the project, runtime.mount, -v.
    let cwd = project_path(&built.env_name);
    let mut mounts: Vec<(PathBuf, String)> = vec![(built.context_dir.clone(), cwd.clone())];
    for m in &env_ir.mounts {
        mounts.push((expand_host(&m.host_path), expand_target(&m.envd_path)));
    }
    for v in &args.volume {
        let Some((h, c)) = v.split_once(':') else {
            bail!("-v {v:?}: want HOST:CONTAINER");
        };
        if c.contains(':') || !c.starts_with('/') {
            bail!("-v {v:?}: the container path must be absolute (HOST:CONTAINER)");
        }
        mounts.push((PathBuf::from(h), c.to_string()));
    }
    for (h, _) in &mounts {
        if !h.exists() {
            bail!("the mount source {} does not exist", h.display());
        }
    }
    let gpus = wants_gpus(args, env_ir);
    let mut binds: Vec<rootless::Mount> = mounts
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
    let mut ports = Vec::new();
    for e in &env_ir.runtime_expose {
        ports.push(Port {
            service: if e.service.is_empty() {
                format!("port-{}", e.envd_port)
            } else {
                e.service.clone()
            },
            port: e.envd_port,
            listen: e.listen_addr.clone(),
        });
    }
    if env_ir.jupyter.is_some() {
        ports.push(Port {
            service: "jupyter".into(),
            port: 8888,
            listen: "127.0.0.1".into(),
        });
    }
    // runtime.init groups run once, in order, before the daemons (each group one shell).
    let mut services: Vec<rootless::Service> = env_ir
        .runtime_init
        .iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .map(|(i, g)| rootless::Service {
            name: format!("init-{i}"),
            args: vec!["sh".into(), "-c".into(), g.join("\n")],
            once: true,
        })
        .collect();
    if gpus {
        // The driver's libraries were bound in: tell the dynamic linker (what the NVIDIA
        // container toolkit does with its ldconfig hook).
        services.insert(
            0,
            rootless::Service {
                name: "gpu-ldconfig".into(),
                args: vec!["sh".into(), "-c".into(), "ldconfig || true".into()],
                once: true,
            },
        );
    }
    services.extend(
        env_ir
            .runtime_daemon
            .iter()
            .enumerate()
            .map(|(i, args)| rootless::Service {
                name: format!("daemon-{i}"),
                args: args.clone(),
                once: false,
            }),
    );
    if let (true, Some(j)) = (env_ir.dev, &env_ir.jupyter) {
        // What envd's horust service runs; as namespace root it needs --allow-root, and it
        // listens on the loopback only (host network).
        let port = if j.port > 0 {
            j.port.to_string()
        } else {
            "8888".into()
        };
        services.push(rootless::Service {
            name: "jupyter".into(),
            args: [
                "python3",
                "-m",
                "notebook",
                "--allow-root",
                "--ip",
                "127.0.0.1",
                "--notebook-dir",
                &cwd,
                "--NotebookApp.token",
                &j.token,
                "--port",
                &port,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            once: false,
        });
        if let Some(p) = ports.iter_mut().find(|p| p.service == "jupyter") {
            p.port = port.parse().unwrap_or(8888);
        }
    }
    let shm_mb = args
        .shm_size
        .or(u64::try_from(env_ir.shm_size).ok().filter(|s| *s > 0))
        .unwrap_or(2048);

    let layer_dir = engine.root.join("envs").join(&name);
    if layer_dir.exists() {
        worker.remove_tree(&layer_dir).await?;
    }
    let (upper, work) = (layer_dir.join("upper"), layer_dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let lowers = worker.snapshots.lowers(&built.snap);
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
            env: env.clone(),
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
        services: services.clone(),
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
        image: built.name.clone(),
        manifest_digest: digest,
        pid,
        pid_start: devenv::start_time(pid).unwrap_or(0),
        project: built.context_dir.clone(),
        mounts,
        ports,
        services: services
            .into_iter()
            .filter(|s| !s.once)
            .map(|s| (s.name, s.args))
            .collect(),
        env,
        user,
        cwd,
        shell,
        commands: env_ir
            .runtime_commands
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
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
