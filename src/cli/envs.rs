//! `envkit exec`, `envs ls|describe`, `destroy`: the development environments `up` started
//! (`up.rs`; see `devenv` for what is kept, and `rootless::env` for how they run).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::{Cli, DestroyArgs, EnvsCommand, ExecArgs};
use crate::config;
use crate::devenv::lifecycle;
use crate::devenv::{self, EnvState, Status};
use crate::worker::Worker;

/// Runs `args` (the shell when empty) in a running environment, with this terminal; returns
/// its exit code.
pub(super) fn join(
    state: &EnvState,
    args: Vec<String>,
    tty: rootless::TtyMode,
) -> anyhow::Result<i32> {
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

pub(super) fn states_for(cli: &Cli) -> (PathBuf, PathBuf) {
    let root = config::store_root(cli.globals.root.as_deref());
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

pub(super) async fn destroy(cli: &Cli, args: &DestroyArgs) -> anyhow::Result<()> {
    let (root, states) = states_for(cli);
    let name = default_name(&args.name.clone().or(args.name_flag.clone()))?;
    devenv::check_name(&name)?;
    let Some(state) = EnvState::load(&states, &name)? else {
        println!("no environment {name}: nothing to destroy");
        return Ok(());
    };
    let cfg = cli.globals.load_config()?;
    let worker = Worker::new(&root, cfg, None)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    lifecycle::destroy(&worker, &states, &state).await?;
    println!("destroyed {name}");
    Ok(())
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
            for (pid, cmd) in lifecycle::processes(&s) {
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
