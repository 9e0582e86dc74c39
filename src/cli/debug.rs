//! `envkit debug llb`: the Definition a build file compiles to, as JSON lines, DOT, SVG or
//! the protobuf bytes.

use std::io::Write;

use anyhow::{Context, bail};

use super::build::source_request;
use super::{Cli, LlbArgs};
use crate::compile;
use crate::llb;
use crate::registry::Registry;

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
    let cfg = cli.globals.load_config()?;
    let registry = Registry::new(&cfg);
    let bytes = match super::build::dockerfile_of(&args.source) {
        Some(file) => {
            super::build::compile_dockerfile(
                &args.source,
                file,
                &registry,
                false,
                crate::platform::Platform::host(),
            )
            .await?
            .definition
        }
        None => compile::compile(&source_request(&args.source, args.target)?, &registry)
            .await?
            .lowered
            .definition
            .to_bytes(),
    };
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
