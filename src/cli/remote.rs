//! `envkit context …`: the builders a build can go to (the embedded engine, a buildkitd, or
//! the BuildKit inside a dockerd). Building on them is `crate::backend`'s.

use anyhow::Context as _;

use super::{Cli, ContextCommand};
use crate::remote;
use crate::remote::context::{Builder, Context, Contexts};

fn store_path() -> anyhow::Result<std::path::PathBuf> {
    Contexts::path().context("no config directory (set HOME or XDG_CONFIG_HOME)")
}

/// The context this command uses: `--context`/`ENVKIT_CONTEXT`, else the current one.
pub(super) fn current(cli: &Cli) -> anyhow::Result<Context> {
    let all = Contexts::load_from(&store_path()?)?;
    let name = cli
        .globals
        .context
        .clone()
        .unwrap_or_else(|| all.current_name());
    Ok(all.get(&name)?)
}

pub(super) fn context_cmd(what: &ContextCommand) -> anyhow::Result<()> {
    let path = store_path()?;
    let mut all = Contexts::load_from(&path)?;
    match what {
        ContextCommand::Create {
            name,
            builder,
            endpoint,
            use_,
            tlscacert,
            tlscert,
            tlskey,
            tlsservername,
        } => {
            let abs = |p: &Option<std::path::PathBuf>| -> anyhow::Result<_> {
                p.as_ref()
                    .map(|p| std::fs::canonicalize(p).with_context(|| format!("{}", p.display())))
                    .transpose()
            };
            let tls = remote::Tls {
                ca: abs(tlscacert)?,
                cert: abs(tlscert)?,
                key: abs(tlskey)?,
                server_name: tlsservername.clone(),
            };
            let builder: Builder = builder.parse()?;
            let endpoint = match (builder, endpoint) {
                (Builder::Embedded, _) => String::new(),
                (_, Some(e)) => e.clone(),
                (Builder::Dockerd, None) => match std::env::var("DOCKER_HOST") {
                    Ok(h) if !h.is_empty() => h,
                    _ => "unix:///var/run/docker.sock".into(),
                },
                (Builder::Buildkitd, None) => "unix:///run/buildkit/buildkitd.sock".into(),
            };
            all.create(Context {
                name: name.clone(),
                builder,
                endpoint,
                tls,
            })?;
            if *use_ {
                all.use_(name)?;
            }
            all.save_to(&path)?;
            println!(
                "created context {name}{}",
                if *use_ { " (in use)" } else { "" }
            );
        }
        ContextCommand::Ls => {
            let cur = all.current_name();
            println!("{:<3}{:<20} {:<10} ENDPOINT", "", "NAME", "BUILDER");
            for c in all.all() {
                let b = match c.builder {
                    Builder::Embedded => "embedded",
                    Builder::Buildkitd => "buildkitd",
                    Builder::Dockerd => "dockerd",
                };
                let mark = if c.name == cur { "*" } else { "" };
                let tls = if c.tls.is_empty() { "" } else { " (TLS)" };
                println!("{mark:<3}{:<20} {b:<10} {}{tls}", c.name, c.endpoint);
            }
        }
        ContextCommand::Use { name } => {
            all.use_(name)?;
            all.save_to(&path)?;
            println!("using context {name}");
        }
        ContextCommand::Rm { name } => {
            all.remove(name)?;
            all.save_to(&path)?;
            println!("removed context {name}");
        }
    }
    Ok(())
}
