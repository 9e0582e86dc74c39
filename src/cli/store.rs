//! The store's commands: `envkit du`, `prune`, `check`.

use std::io::Write;

use anyhow::{Context, bail};

use super::{Cli, PruneArgs};
use crate::config;
use crate::worker::Worker;

pub(super) fn du(cli: &Cli) -> anyhow::Result<()> {
    let root = config::store_root(cli.globals.root.as_deref());
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
    let cfg = cli.globals.load_config()?;
    let root = config::store_root(cli.globals.root.as_deref());
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
