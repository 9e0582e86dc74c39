//! `envkit info`: what the embedded engine is and does on this machine — version, store,
//! config, snapshotter, the network of build steps, platforms, and the confinement of steps
//! and environments (capabilities, seccomp, masked paths).

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

use super::Cli;
use crate::config::{self, Config, StepNetwork};
use crate::worker::Worker;

#[derive(Serialize)]
struct Info {
    version: &'static str,
    store: String,
    config: Option<String>,
    snapshotter: String,
    network: String,
    platforms: Vec<String>,
    confinement: Confinement,
}

#[derive(Serialize)]
struct Confinement {
    capabilities: Vec<&'static str>,
    seccomp: Option<Seccomp>,
    masked_paths: Vec<&'static str>,
    readonly_paths: Vec<&'static str>,
    no_new_privs: bool,
    lifted_by: &'static str,
}

#[derive(Serialize)]
struct Seccomp {
    profile: &'static str,
    abis: Vec<&'static str>,
    instructions: usize,
}

pub(super) async fn info(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let cfg = cli.globals.load_config()?;
    let root = config::store_root(cli.globals.root.as_deref());
    let snapshotter = snapshotter(cli, &cfg).await;
    let network = match (cfg.worker.network, rootless::slirp::available()) {
        (StepNetwork::Host, _) => "host (`[worker] network = \"host\"`)".to_string(),
        (_, Ok(())) => {
            "sandbox: a network namespace of its own per step, behind slirp4netns".to_string()
        }
        (StepNetwork::Auto, Err(why)) => format!("host (the sandbox cannot run here: {why})"),
        (_, Err(why)) => format!("sandbox, which cannot run here: {why}"),
    };
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        store: root.display().to_string(),
        config: cfg.path.as_ref().map(|p| p.display().to_string()),
        snapshotter,
        network,
        platforms: {
            let dir = tempfile::tempdir().context("a directory for the platform probes")?;
            crate::worker::emulate::platforms(&cfg.worker, dir.path())
        },
        confinement: Confinement {
            capabilities: rootless::confine::DEFAULT_CAP_NAMES.to_vec(),
            seccomp: rootless::seccomp::program_len().map(|n| Seccomp {
                profile: rootless::seccomp::PROFILE,
                abis: rootless::seccomp::abis(),
                instructions: n,
            }),
            masked_paths: rootless::confine::MASKED.to_vec(),
            readonly_paths: rootless::confine::READ_ONLY.to_vec(),
            no_new_privs: cfg.worker.no_new_privileges,
            lifted_by: "security.insecure (--allow security.insecure; `envkit up --allow \
                        security.insecure` for an environment)",
        },
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &info)?;
        writeln!(out)?;
        return Ok(());
    }
    let c = &info.confinement;
    writeln!(out, "envkit {}", info.version)?;
    writeln!(out, "store:        {}", info.store)?;
    writeln!(
        out,
        "config:       {}",
        info.config.as_deref().unwrap_or("(none: defaults)")
    )?;
    writeln!(out, "snapshotter:  {}", info.snapshotter)?;
    writeln!(out, "step network: {}", info.network)?;
    writeln!(out, "platforms:    {}", info.platforms.join(", "))?;
    writeln!(out, "confinement of build steps and environments:")?;
    writeln!(out, "  capabilities: {}", c.capabilities.join(" "))?;
    match &c.seccomp {
        Some(s) => writeln!(
            out,
            "  seccomp:      {}; {} BPF instructions for {}",
            s.profile,
            s.instructions,
            s.abis.join(", ")
        )?,
        None => writeln!(
            out,
            "  seccomp:      none (no profile for {})",
            std::env::consts::ARCH
        )?,
    }
    writeln!(out, "  masked:       {}", c.masked_paths.join(" "))?;
    writeln!(out, "  read-only:    {}", c.readonly_paths.join(" "))?;
    writeln!(
        out,
        "  no_new_privs: {}",
        if c.no_new_privs {
            "on (`[worker] no-new-privileges`: setuid files raise no privileges)"
        } else {
            "off (setuid tools such as sudo work; `[worker] no-new-privileges = true` sets it)"
        }
    )?;
    writeln!(out, "  lifted by:    {}", c.lifted_by)?;
    Ok(())
}

/// The snapshotter the store uses: configured, or (auto) what the helper's probe found.
async fn snapshotter(cli: &Cli, cfg: &Config) -> String {
    use crate::config::Snapshotter;
    match cfg.worker.snapshotter.unwrap_or_default() {
        Snapshotter::Overlay => return "overlay (configured)".into(),
        Snapshotter::Copy => return "copy (configured)".into(),
        Snapshotter::Auto => {}
    }
    let root = config::store_root(cli.globals.root.as_deref());
    let probe = async {
        let worker = Worker::new(&root, cfg.clone(), None).context("opening the store")?;
        worker
            .run_helper(rootless::Request::Probe, None, None)
            .await
            .context("starting the rootless helper")
    };
    match probe.await {
        Ok(rootless::Response::Probe(p)) if p.overlay_userxattr => {
            "overlay (rootless, userxattr)".into()
        }
        Ok(rootless::Response::Probe(p)) => {
            format!("copy (overlay does not work here: {})", p.detail)
        }
        Ok(other) => format!("unknown (the helper answered {other:?})"),
        Err(e) => format!("unknown ({e:#})"),
    }
}
