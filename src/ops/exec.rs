//! ExecOp: one process in a container whose root is an overlay of the input chain; the
//! overlay's upper dir becomes the output snapshot.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::progress::LogTail;
use crate::snapshot::SnapRef;
use crate::solver::Outcome;
use crate::worker::CacheSharing;
use crate::worker::OutputSink;

/// `pb::MountType` values.
const MOUNT_BIND: i32 = 0;
const MOUNT_SECRET: i32 = 1;
const MOUNT_SSH: i32 = 2;
const MOUNT_CACHE: i32 = 3;
const MOUNT_TMPFS: i32 = 4;
/// `pb::NetMode` values.
const NET_HOST: i32 = 1;
const NET_NONE: i32 = 2;

/// `pb::SecurityMode::Insecure`.
const SECURITY_INSECURE: i32 = 1;

/// Whether a step with LLB's default network gets a sandbox of its own (`[worker] network`):
/// where slirp4netns cannot run, `sandbox` is an error that says why and what to do, `auto`
/// says so once and uses the host's network.
fn sandbox(cfg: &crate::config::Config) -> Result<bool, OpsError> {
    use crate::config::StepNetwork;
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    static SAID: std::sync::Once = std::sync::Once::new();
    if cfg.worker.network == StepNetwork::Host {
        return Ok(false);
    }
    match (
        PROBE.get_or_init(rootless::slirp::available),
        cfg.worker.network,
    ) {
        (Ok(()), _) => Ok(true),
        (Err(why), StepNetwork::Auto) => {
            SAID.call_once(|| {
                tracing::warn!(
                    "build steps run on the host's network: a network of their own needs \
                     slirp4netns, and {why}"
                );
                eprintln!(
                    "envkit: build steps run on the host's network here ([worker] network = \
                     \"auto\"): {why}"
                );
            });
            Ok(false)
        }
        (Err(why), _) => Err(OpsError::Invalid(format!(
            "build steps run in a network namespace of their own (BuildKit's sandbox), which \
             needs slirp4netns here: {why}. Fix that, or set `[worker] network = \"host\"` \
             (or \"auto\": the sandbox where it can run) in envkit's config.toml"
        ))),
    }
}

/// How many lines of output a failed step shows.
const TAIL_LINES: usize = 20;

pub(super) async fn run(
    ctx: &Ctx,
    exec: &pb::ExecOp,
    inputs: &[Res],
) -> Result<Outcome<Res>, OpsError> {
    let Checked {
        meta,
        emulator,
        network_none,
        sandbox_net,
        rlimits,
    } = check(ctx, exec)?;
    let MountPlan {
        root,
        mut mounts,
        readonly_rootfs,
        ssh_mounts,
        caches,
        outs,
    } = plan_mounts(ctx, exec, inputs)?;
    let base = root
        .map(|r| r.snap.clone())
        .unwrap_or_else(SnapRef::scratch);
    let env = process_env(ctx, exec, meta, &mut mounts)?;
    let key = ctx.cache_key(inputs, &[]);
    // Output 0 is the root's upper dir; each further output is a mount's, keyed apart.
    let mut keys = vec![key.clone()];
    keys.extend(
        outs.iter()
            .map(|(_, n, _)| super::cache_key(&key, &[], &[&format!("output {n}")])),
    );
    let (key, key_list, outs_ref) = (&key, &keys.clone(), &outs);
    let resolved = ctx
        .resolve(keys, |drafts| async move {
            let outs = outs_ref;
            let mut drafts = drafts.into_iter();
            let prepared = drafts
                .next()
                .ok_or(super::OutputCount { built: 0, keys: 1 })?;
            // Each output mount keeps its upper dir in its own draft.
            for ((i, _, _), p) in outs.iter().zip(drafts) {
                if let rootless::MountKind::Layers { keep, .. } = &mut mounts[*i].kind {
                    *keep = Some((p.fs.clone(), p.work.clone()));
                }
            }
            let held = hold_resources(ctx, &mut mounts, caches, ssh_mounts).await?;
            let w = &ctx.worker;
            let req = rootless::Request::Exec(rootless::ExecRequest {
                lowers: w.snapshots.lowers(&base),
                upper: prepared.fs.clone(),
                work: prepared.work.clone(),
                args: meta.args.clone(),
                env,
                cwd: if meta.cwd.is_empty() {
                    "/".into()
                } else {
                    meta.cwd.clone()
                },
                user: meta.user.clone(),
                mounts,
                hostname: meta.hostname.clone(),
                ca_bundle: w.ca_bundle.clone(),
                readonly_rootfs,
                network_none,
                sandbox_net,
                insecure: exec.security == SECURITY_INSECURE,
                no_new_privs: w.config.worker.no_new_privileges,
                rlimits,
                emulator,
            });
            if exec.security == SECURITY_INSECURE {
                // The progress says so (the entitlement was granted for the build).
                ctx.reporter.event(crate::progress::Event::Log {
                    vertex: ctx.vertex,
                    data: b"envkit: security.insecure: this step runs unconfined (every capability of \
its user namespace, no seccomp filter, an unmasked /proc)\n"
                        .to_vec(),
                });
            }
            run_step(w, req, ctx, meta).await?;
            drop(held);
            // The records: the root's on top of its base, each mount's on top of its input.
            let mut chain = base.chain.clone();
            chain.push(key.clone());
            let mut snaps = vec![SnapRef {
                chain,
                base: base.base.clone(),
            }];
            for ((_, _, over), k) in outs.iter().zip(&key_list[1..]) {
                let mut chain = over.chain.clone();
                chain.push(k.clone());
                snaps.push(SnapRef {
                    chain,
                    base: over.base.clone(),
                });
            }
            Ok(snaps)
        })
        .await?;
    let mut values = resolved.values.into_iter();
    let snap = values
        .next()
        .ok_or(super::OutputCount { built: 0, keys: 1 })?;
    let mut res = Res::new(snap, key);
    for (((_, n, _), v), k) in outs.iter().zip(values).zip(&key_list[1..]) {
        res.more.insert(*n, (v, k.clone()));
    }
    Ok(Outcome {
        value: res,
        cached: resolved.cached,
    })
}

/// Cache mounts (shared, locked or a private instance) and one ssh agent proxy per ssh
/// mount, held until the step is over.
async fn hold_resources(
    ctx: &Ctx,
    mounts: &mut Vec<rootless::Mount>,
    caches: Vec<(usize, String, CacheSharing)>,
    ssh_mounts: Vec<(PathBuf, String, pb::SshOpt)>,
) -> Result<(Vec<crate::worker::CacheMount>, Vec<super::ssh::AgentProxy>), OpsError> {
    let mut held = Vec::with_capacity(caches.len());
    for (i, id, sharing) in caches {
        let cm = ctx.worker.cache_mount(&id, sharing).await?;
        mounts[i].source = cm.dir.clone();
        held.push(cm);
    }
    let mut proxies = Vec::with_capacity(ssh_mounts.len());
    for (agent, dest, opt) in ssh_mounts {
        let proxy = super::ssh::AgentProxy::start(&agent)?;
        mounts.push(rootless::Mount {
            source: proxy.socket.clone(),
            target: dest,
            kind: rootless::MountKind::Socket {
                uid: opt.uid,
                gid: opt.gid,
                mode: if opt.mode == 0 { 0o600 } else { opt.mode },
            },
        });
        proxies.push(proxy);
    }
    Ok((held, proxies))
}

/// What an exec op may do here, checked before anything is prepared.
struct Checked<'a> {
    meta: &'a pb::Meta,
    /// The emulator that runs a step of another architecture, where no binfmt handler does.
    emulator: Option<Box<rootless::Emulator>>,
    network_none: bool,
    sandbox_net: bool,
    rlimits: Vec<(String, u64, u64)>,
}

/// Checks an exec op against this machine and the build's grants: its platform, network mode
/// and entitlements, devices and ulimits.
/// What must hold for the step whether it runs or comes from a cache: a step for this
/// platform, granted entitlements, the secrets and ssh agents it needs given.
pub(super) fn validate(ctx: &Ctx, exec: &pb::ExecOp) -> Result<(), OpsError> {
    check(ctx, exec)?;
    for m in &exec.mounts {
        if m.mount_type == MOUNT_SECRET {
            let opt = m.secret_opt.clone().unwrap_or_default();
            if !opt.optional && !ctx.secrets.contains_key(&opt.id) {
                return Err(OpsError::MissingSecret(opt.id));
            }
        } else if m.mount_type == MOUNT_SSH {
            let opt = m.ssh_opt.clone().unwrap_or_default();
            let id = if opt.id.is_empty() {
                "default".to_string()
            } else {
                opt.id
            };
            if !opt.optional && !ctx.ssh.contains_key(&id) {
                return Err(OpsError::MissingSsh(id));
            }
        }
    }
    for se in &exec.secretenv {
        if !se.optional && !ctx.secrets.contains_key(&se.id) {
            return Err(OpsError::MissingSecret(se.id.clone()));
        }
    }
    Ok(())
}

fn check<'a>(ctx: &Ctx, exec: &'a pb::ExecOp) -> Result<Checked<'a>, OpsError> {
    let meta = exec
        .meta
        .as_ref()
        .ok_or_else(|| OpsError::Invalid("exec op without meta".into()))?;
    if meta.args.is_empty() {
        return Err(OpsError::Invalid("exec op with no arguments".into()));
    }
    let platform = super::op_platform(ctx);
    let emulator = match crate::worker::emulate::emulation_for(&platform, &ctx.worker.config.worker)
    {
        Ok(crate::worker::emulate::Emulation::Emulator(path)) => {
            Some(Box::new(rootless::Emulator {
                path,
                arch: crate::worker::emulate::qemu_arch(&platform.architecture).to_string(),
                binfmt: ctx.worker.config.worker.binfmt != crate::config::Binfmt::Off,
            }))
        }
        Ok(_) => None,
        Err(message) => return Err(OpsError::Platform(message)),
    };
    // Network: none gets a namespace with only loopback, host the host's, and the default a
    // namespace of its own behind slirp4netns (BuildKit's sandbox; `[worker] network`).
    let network_none = exec.network == NET_NONE;
    let sandbox_net =
        exec.network != NET_NONE && exec.network != NET_HOST && sandbox(&ctx.worker.config)?;
    // As in BuildKit, the host's network and insecure mode are entitlements the user grants.
    // Insecure keeps every capability of the user namespace and an unmasked /proc (a step
    // otherwise gets Docker's default capabilities and runc's masked paths); either way it
    // gets no host devices.
    for (asked, ent) in [
        (exec.network == NET_HOST, "network.host"),
        (exec.security == SECURITY_INSECURE, "security.insecure"),
    ] {
        if asked && !ctx.entitlements.contains(ent) {
            return Err(OpsError::Entitlement(ent.to_string()));
        }
    }
    if !exec.cdi_devices.is_empty() {
        return Err(OpsError::Unsupported("CDI devices in build steps".into()));
    }
    let mut rlimits = Vec::with_capacity(meta.ulimit.len());
    for u in &meta.ulimit {
        let (Ok(soft), Ok(hard)) = (u64::try_from(u.soft), u64::try_from(u.hard)) else {
            return Err(OpsError::Invalid(format!(
                "ulimit {}: negative limit {}:{}",
                u.name, u.soft, u.hard
            )));
        };
        rlimits.push((u.name.clone(), soft, hard));
    }
    Ok(Checked {
        meta,
        emulator,
        network_none,
        sandbox_net,
        rlimits,
    })
}

/// What an exec op's mounts ask for, before the step is sure to run.
#[derive(Default)]
struct MountPlan<'a> {
    /// The root mount's input (None: scratch).
    root: Option<&'a Res>,
    mounts: Vec<rootless::Mount>,
    readonly_rootfs: bool,
    /// Agent socket, target and options of each ssh mount.
    ssh_mounts: Vec<(PathBuf, String, pb::SshOpt)>,
    /// Index in `mounts`, id and sharing of each cache mount (its dir is picked later).
    caches: Vec<(usize, String, CacheSharing)>,
    /// Mounts that are outputs: (index in `mounts`, output index, the chain they are over).
    outs: Vec<(usize, i64, SnapRef)>,
}

/// The mounts of an exec op: the root, binds of inputs (a selector or several layers as a
/// view), cache, tmpfs, secret and ssh mounts, and which mounts are outputs.
fn plan_mounts<'a>(
    ctx: &Ctx,
    exec: &pb::ExecOp,
    inputs: &'a [Res],
) -> Result<MountPlan<'a>, OpsError> {
    let mut root: Option<&Res> = None;
    let mut mounts = Vec::new();
    let mut readonly_rootfs = false;
    let mut ssh_mounts = Vec::new();
    let mut caches = Vec::new();
    // Mounts that are outputs: (index in `mounts`, output index, the chain they are over).
    let mut outs: Vec<(usize, i64, SnapRef)> = Vec::new();
    for m in &exec.mounts {
        match m.mount_type {
            MOUNT_BIND if m.dest == "/" => {
                if m.output != 0 && m.output != -1 {
                    return Err(OpsError::Unsupported(format!(
                        "root mount with output {}",
                        m.output
                    )));
                }
                if m.input >= 0 {
                    root = Some(ctx.input(inputs, m.input)?);
                }
                readonly_rootfs = m.readonly;
            }
            MOUNT_BIND if m.output == 0 && m.dest != "/" => {
                return Err(OpsError::Unsupported(format!(
                    "output 0 from mount {} rather than the root mount",
                    m.dest
                )));
            }
            MOUNT_BIND if m.output >= 1 && !m.readonly => {
                // A writable mount whose changes are output `m.output` of the op, over its
                // input (or an empty dir for scratch).
                if !m.selector.trim_matches('/').is_empty() {
                    return Err(OpsError::Unsupported(format!(
                        "mount {} with both a selector and an output",
                        m.dest
                    )));
                }
                let over = if m.input < 0 {
                    SnapRef::scratch()
                } else {
                    ctx.input(inputs, m.input)?.snap.clone()
                };
                outs.push((mounts.len(), m.output, over.clone()));
                mounts.push(rootless::Mount {
                    source: PathBuf::new(),
                    target: m.dest.clone(),
                    kind: rootless::MountKind::Layers {
                        lowers: ctx.worker.snapshots.lowers(&over),
                        selector: String::new(),
                        writable: true,
                        keep: None,
                    },
                });
            }
            MOUNT_BIND => {
                let src = ctx.input(inputs, m.input)?;
                let sel = m.selector.trim_start_matches('/');
                if sel.split('/').any(|c| c == "..") {
                    return Err(OpsError::Invalid(format!(
                        "mount selector {:?}",
                        m.selector
                    )));
                }
                match src.snap.chain.as_slice() {
                    // One read-only layer and no selector: bind its directory directly. A
                    // selector is resolved by the helper inside the layer (a symlink in an
                    // image must not lead the bind out of it).
                    [id] if m.readonly && sel.is_empty() => {
                        mounts.push(rootless::Mount {
                            source: ctx.worker.snapshots.fs(id),
                            target: m.dest.clone(),
                            kind: rootless::MountKind::Bind { readonly: true },
                        });
                    }
                    // Several layers, a selector, or writable: a view of the input; a writable
                    // view's changes are discarded (the engine keeps only the root's output).
                    _ => mounts.push(rootless::Mount {
                        source: PathBuf::new(),
                        target: m.dest.clone(),
                        kind: rootless::MountKind::Layers {
                            lowers: ctx.worker.snapshots.lowers(&src.snap),
                            selector: sel.to_string(),
                            writable: !m.readonly,
                            keep: None,
                        },
                    }),
                }
            }
            MOUNT_CACHE => {
                let id = m
                    .cache_opt
                    .as_ref()
                    .map(|c| c.id.clone())
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| m.dest.clone());
                let sharing = match m.cache_opt.as_ref().map(|c| c.sharing).unwrap_or(0) {
                    1 => CacheSharing::Private,
                    2 => CacheSharing::Locked,
                    _ => CacheSharing::Shared,
                };
                // The directory is picked (and held) once the step is sure to run.
                caches.push((mounts.len(), id, sharing));
                mounts.push(rootless::Mount {
                    source: PathBuf::new(),
                    target: m.dest.clone(),
                    kind: rootless::MountKind::Bind { readonly: false },
                });
            }
            MOUNT_TMPFS => mounts.push(rootless::Mount {
                source: PathBuf::from("tmpfs"),
                target: m.dest.clone(),
                kind: rootless::MountKind::Tmpfs {
                    size: m
                        .tmpfs_opt
                        .as_ref()
                        .and_then(|t| u64::try_from(t.size).ok())
                        .filter(|s| *s > 0),
                },
            }),
            MOUNT_SECRET => {
                let opt = m.secret_opt.clone().unwrap_or_default();
                match ctx.secrets.get(&opt.id) {
                    Some(data) => mounts.push(rootless::Mount {
                        source: PathBuf::new(),
                        target: m.dest.clone(),
                        kind: rootless::MountKind::MemFile {
                            data: data.clone(),
                            uid: opt.uid,
                            gid: opt.gid,
                            mode: if opt.mode == 0 { 0o400 } else { opt.mode },
                        },
                    }),
                    None if opt.optional => {}
                    None => return Err(OpsError::MissingSecret(opt.id)),
                }
            }
            MOUNT_SSH => {
                let opt = m.ssh_opt.clone().unwrap_or_default();
                let id = if opt.id.is_empty() {
                    "default".to_string()
                } else {
                    opt.id.clone()
                };
                match ctx.ssh.get(&id) {
                    Some(agent) => ssh_mounts.push((agent.clone(), m.dest.clone(), opt)),
                    None if opt.optional => {}
                    None => return Err(OpsError::MissingSsh(id)),
                }
            }
            other => return Err(OpsError::Invalid(format!("mount type {other}"))),
        }
    }
    Ok(MountPlan {
        root,
        mounts,
        readonly_rootfs,
        ssh_mounts,
        caches,
        outs,
    })
}

/// The step's environment: the op's, its proxy variables in both cases (as BuildKit's
/// executor adds them; they are not part of its cache key), plus secret env vars (they reach
/// the process only: not the op, the cache key or a layer); extra hosts become a bind over
/// /etc/hosts.
fn process_env(
    ctx: &Ctx,
    exec: &pb::ExecOp,
    meta: &pb::Meta,
    mounts: &mut Vec<rootless::Mount>,
) -> Result<Vec<String>, OpsError> {
    let mut env = meta.env.clone();
    if let Some(p) = &meta.proxy_env {
        for (name, v) in [
            ("HTTP_PROXY", &p.http_proxy),
            ("HTTPS_PROXY", &p.https_proxy),
            ("FTP_PROXY", &p.ftp_proxy),
            ("NO_PROXY", &p.no_proxy),
            ("ALL_PROXY", &p.all_proxy),
        ] {
            if !v.is_empty() {
                env.push(format!("{name}={v}"));
                env.push(format!("{}={v}", name.to_ascii_lowercase()));
            }
        }
    }
    for se in &exec.secretenv {
        match ctx.secrets.get(&se.id) {
            Some(data) => {
                let value = String::from_utf8(data.0.clone()).map_err(|_| {
                    OpsError::Invalid(format!("secret {:?} for ${} is not UTF-8", se.id, se.name))
                })?;
                env.push(format!("{}={value}", se.name));
            }
            None if se.optional => {}
            None => return Err(OpsError::MissingSecret(se.id.clone())),
        }
    }
    // Extra hosts: the host's /etc/hosts plus the op's entries, bound over /etc/hosts.
    if !meta.extra_hosts.is_empty() {
        let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        for h in &meta.extra_hosts {
            hosts.push_str(&format!("{}\t{}\n", h.ip, h.host));
        }
        mounts.push(rootless::Mount {
            source: PathBuf::new(),
            target: "/etc/hosts".into(),
            kind: rootless::MountKind::MemFile {
                data: rootless::SecretBytes(hosts.into_bytes()),
                uid: 0,
                gid: 0,
                mode: 0o644,
            },
        });
    }
    Ok(env)
}

/// Runs the step in the helper; an error when it could not run or exited with a code the op
/// does not accept (the command, the code and the last lines of its output).
async fn run_step(
    w: &crate::worker::Worker,
    req: rootless::Request,
    ctx: &Ctx,
    meta: &pb::Meta,
) -> Result<(), OpsError> {
    let tail = Arc::new(Mutex::new(LogTail::new(TAIL_LINES)));
    let sink = OutputSink {
        reporter: ctx.reporter.clone(),
        vertex: ctx.vertex,
    };
    let ran: Result<i32, OpsError> = match w.run_helper(req, Some(sink), Some(tail.clone())).await {
        Ok(rootless::Response::Exited(rootless::ExitStatus::Code(c))) => Ok(c),
        // Like a shell: death by signal N reads as exit code 128+N.
        Ok(rootless::Response::Exited(rootless::ExitStatus::Signal(s))) => Ok(128 + s),
        Ok(other) => Err(OpsError::Invalid(format!(
            "unexpected helper answer {other:?}"
        ))),
        Err(crate::worker::WorkerError::Rootless(rootless::RootlessError::Helper(message))) => {
            Err(OpsError::Helper {
                what: format!("running {}", command_line(&meta.args)),
                message,
            })
        }
        Err(e) => Err(e.into()),
    };
    match ran {
        Err(e) => Err(e),
        Ok(code) => {
            let valid = if meta.valid_exit_codes.is_empty() {
                code == 0
            } else {
                meta.valid_exit_codes.contains(&code)
            };
            if valid {
                return Ok(());
            }
            Err(OpsError::ExecFailed {
                command: command_line(&meta.args),
                code,
                tail: tail
                    .lock()
                    .map(|t| t.lines().join("\n"))
                    .unwrap_or_default(),
            })
        }
    }
}

/// The argv as a person would type it.
pub fn command_line(args: &[String]) -> String {
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_what_needs_it() {
        let args = vec!["bash".to_string(), "-c".into(), "echo hi > /x".into()];
        assert_eq!(command_line(&args), "bash -c 'echo hi > /x'");
    }
}
