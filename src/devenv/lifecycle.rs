//! Starting an environment from a plan, stopping one, and what runs in it.

use std::path::{Path, PathBuf};

use super::spec::Plan;
use super::{EnvError, EnvState, Status};
use crate::snapshot::SnapRef;
use crate::worker::Worker;

/// What [`start`] needs besides the plan.
pub struct Start<'a> {
    pub name: String,
    /// The image, by name and manifest digest (for `envs ls|describe`).
    pub image: String,
    pub manifest_digest: String,
    /// The image's snapshots: the lowers of the environment's writable layer.
    pub snap: &'a SnapRef,
    pub project: PathBuf,
    pub cwd: String,
    pub plan: Plan,
    pub commands: Vec<(String, String)>,
    /// Every NVIDIA device and the driver's files bound in.
    pub gpus: bool,
    pub shm_mb: u64,
    /// `--allow security.insecure`: unconfined.
    pub insecure: bool,
}

/// Starts the environment `s` describes on `worker`'s store (its writable layer under
/// `<store>/envs/<name>`, its state under `states`), and records it.
pub async fn start(worker: &Worker, states: &Path, s: Start<'_>) -> Result<EnvState, EnvError> {
    let mut binds: Vec<rootless::Mount> = s
        .plan
        .mounts
        .iter()
        .map(|(h, c)| rootless::Mount {
            source: h.clone(),
            target: c.clone(),
            kind: rootless::MountKind::Bind { readonly: false },
        })
        .collect();
    if s.gpus {
        let files = super::nvidia_binds().ok_or(EnvError::NoGpu)?;
        for f in files {
            let target = f.to_string_lossy().into_owned();
            binds.push(rootless::Mount {
                source: f,
                target,
                kind: rootless::MountKind::Bind { readonly: true },
            });
        }
    }
    let layer_dir = worker.root.join("envs").join(&s.name);
    if layer_dir.exists() {
        worker.remove_tree(&layer_dir).await?;
    }
    let (upper, work) = (layer_dir.join("upper"), layer_dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(super::io_err(d))?;
    }
    let lowers = worker.snapshots.lowers(s.snap);
    let user = "0".to_string();
    let no_new_privs = worker.config.worker.no_new_privileges;
    let log_dir = EnvState::log_dir(states, &s.name);
    let req = rootless::EnvRequest {
        exec: rootless::ExecRequest {
            lowers: lowers.clone(),
            upper,
            work,
            args: Vec::new(),
            env: s.plan.env.clone(),
            cwd: s.cwd.clone(),
            user: user.clone(),
            mounts: binds,
            hostname: s.name.clone(),
            ca_bundle: None,
            readonly_rootfs: false,
            network_none: false,
            sandbox_net: false,
            insecure: s.insecure,
            no_new_privs,
            rlimits: Vec::new(),
            emulator: None,
        },
        shm_size: s.shm_mb << 20,
        services: s.plan.services.clone(),
        log_dir,
    };
    let resp = worker
        .run_helper(rootless::Request::StartEnv(Box::new(req)), None, None)
        .await
        .map_err(|e| EnvError::Start {
            name: s.name.clone(),
            message: e.to_string(),
        })?;
    let rootless::Response::EnvStarted { pid } = resp else {
        return Err(EnvError::Start {
            name: s.name,
            message: format!("the helper answered {resp:?}"),
        });
    };
    let state = EnvState {
        name: s.name,
        image: s.image,
        manifest_digest: s.manifest_digest,
        pid,
        pid_start: super::start_time(pid).unwrap_or(0),
        project: s.project,
        mounts: s.plan.mounts,
        ports: s.plan.ports,
        services: s
            .plan
            .services
            .into_iter()
            .filter(|svc| !svc.once)
            .map(|svc| (svc.name, svc.args))
            .collect(),
        env: s.plan.env,
        user,
        cwd: s.cwd,
        shell: s.plan.shell,
        commands: s.commands,
        created: crate::image::unix_now(),
        lowers,
        layer_dir,
        gpus: s.gpus,
        insecure: s.insecure,
        no_new_privs,
    };
    state.save(states)?;
    Ok(state)
}

/// Stops the environment's processes (SIGTERM, then SIGKILL) and removes its writable layer
/// and state (idempotent).
pub async fn destroy(worker: &Worker, states: &Path, s: &EnvState) -> Result<(), EnvError> {
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
            return Err(EnvError::DoesNotStop {
                name: s.name.clone(),
                pid: s.pid,
            });
        }
    }
    worker.remove_tree(&s.layer_dir).await?;
    let dir = EnvState::dir(states, &s.name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(super::io_err(&dir)(e)),
    }
}

/// The processes in an environment's PID namespace (pid, command line).
pub fn processes(s: &EnvState) -> Vec<(u32, String)> {
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
