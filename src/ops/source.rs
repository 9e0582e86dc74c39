//! SourceOp: `docker-image://` (pull + unpack in the namespace) and `local://` (the build
//! context and other named dirs, copied into a snapshot and keyed by content).

use super::context;
use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::{BaseImage, SnapRef};
use crate::solver::Outcome;

pub(super) async fn run(ctx: &Ctx, src: &pb::SourceOp) -> Result<Outcome<Res>, OpsError> {
    let id = src.identifier.as_str();
    if id.starts_with("docker-image://") {
        image(ctx, src).await
    } else if id.starts_with("local://") {
        local(ctx, src).await
    } else if id.starts_with("https://") || id.starts_with("http://") {
        super::http::run(ctx, id, src).await
    } else if id.starts_with("git://") {
        super::git::run(ctx, id, src).await
    } else {
        let scheme = id.split("://").next().unwrap_or(id);
        Err(OpsError::Unsupported(format!("source {scheme}://")))
    }
}

/// An image source's cache key (by the manifest its reference resolves to) and what it
/// resolved to, without pulling anything.
pub(super) async fn image_key(
    ctx: &Ctx,
    src: &pb::SourceOp,
) -> Result<(String, crate::registry::Resolved), OpsError> {
    let reference = src
        .identifier
        .strip_prefix("docker-image://")
        .unwrap_or(&src.identifier);
    let w = &ctx.worker;
    let platform = super::op_platform(ctx);
    let mode = crate::registry::ResolveMode::from_attr(
        src.attrs.get("image.resolvemode").map(String::as_str),
    )
    .map_err(OpsError::Invalid)?;
    if src
        .attrs
        .get("image.layerlimit")
        .is_some_and(|v| !v.is_empty())
    {
        return Err(OpsError::Unsupported(
            "image sources with image.layerlimit".into(),
        ));
    }
    // `image.checksum` pins what the reference must be: resolve it by that digest.
    let pinned;
    let reference = match src.attrs.get("image.checksum").filter(|c| !c.is_empty()) {
        Some(ck) => {
            pinned = pin_reference(reference, ck);
            pinned.as_str()
        }
        None => reference,
    };
    let resolved = w.registry.resolve_with(reference, &platform, mode).await?;
    let key = ctx.cache_key(&[], &[resolved.manifest_digest.as_ref()]);
    Ok((key, resolved))
}

async fn image(ctx: &Ctx, src: &pb::SourceOp) -> Result<Outcome<Res>, OpsError> {
    let (key, resolved) = image_key(ctx, src).await?;
    let key = &key;
    ctx.resolve_one(key, |prepared| async move {
        pull_and_unpack(ctx, &resolved, &prepared.fs).await?;
        Ok(SnapRef {
            chain: vec![key.clone()],
            base: Some(BaseImage {
                reference: resolved.reference.clone(),
                manifest_digest: resolved.manifest_digest.to_string(),
                config_digest: resolved.config_digest().to_string(),
                layers: resolved.layers.clone(),
            }),
        })
    })
    .await
}

/// Pulls `resolved`'s layers and unpacks them into `dest`. A layer the store lacks is
/// unpacked while it downloads: a pipe per such layer takes its bytes from the download to
/// the unpacking helper, which reads the layers in order, so later layers download while
/// earlier ones unpack. What the helper reads is checked against the layer's digest as it
/// goes through ([`crate::registry::follow`]); should the download have started again with
/// other bytes, the tree is made again from the verified blobs.
async fn pull_and_unpack(
    ctx: &Ctx,
    resolved: &crate::registry::Resolved,
    dest: &std::path::Path,
) -> Result<(), OpsError> {
    let w = &ctx.worker;
    let (followers, download) = w.registry.pull_followed(resolved, &w.content);
    if followers.iter().all(Option::is_none) {
        download.await?;
        return unpack_blobs(ctx, resolved, dest).await;
    }
    let pipes = w.snapshots.temp_dir()?;
    let mut from = Vec::new();
    let mut feeds = Vec::new();
    for (i, follower) in followers.into_iter().enumerate() {
        let Some(follower) = follower else {
            from.push(None);
            continue;
        };
        let pipe = pipes.path().join(format!("layer-{i}"));
        nix::unistd::mkfifo(
            &pipe,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|e| OpsError::Invalid(format!("making the pipe {}: {e}", pipe.display())))?;
        from.push(Some(pipe.clone()));
        feeds.push(feed(follower, pipe));
    }
    let req = w.unpack_request_from(&resolved.layers, &from, dest)?;
    let unpack = helper_ok(ctx, req, "unpacking image layers");
    let download = async { download.await.map_err(OpsError::from) };
    let feeds = futures_util::future::try_join_all(feeds);
    match tokio::try_join!(download, feeds, unpack) {
        Ok(_) => Ok(()),
        Err(OpsError::Follow(e @ crate::registry::follow::FollowError::Changed { .. })) => {
            tracing::warn!("{e}; unpacking the image again from its verified layers");
            w.registry.pull(resolved, &w.content).await?;
            w.remove_tree(dest).await?;
            std::fs::create_dir(dest)
                .map_err(|e| OpsError::Invalid(format!("making {} again: {e}", dest.display())))?;
            unpack_blobs(ctx, resolved, dest).await
        }
        Err(e) => Err(e),
    }
}

/// Unpacks `resolved`'s layers from their blobs in the store into `dest`.
async fn unpack_blobs(
    ctx: &Ctx,
    resolved: &crate::registry::Resolved,
    dest: &std::path::Path,
) -> Result<(), OpsError> {
    let req = ctx.worker.unpack_request(&resolved.layers, dest)?;
    helper_ok(ctx, req, "unpacking image layers").await?;
    Ok(())
}

/// Copies a followed layer into its pipe once the unpacking helper opens the pipe (it takes
/// the layers in order; until it gets to this one, the pipe has no reader).
async fn feed(
    follower: crate::registry::follow::Follower,
    pipe: std::path::PathBuf,
) -> Result<u64, OpsError> {
    // Looked at again after 1, 2, 4 … up to 16 ms: a layer waiting behind a long one costs
    // few wake-ups, and the helper waits at most that long for the next.
    let mut wait = 1;
    let mut tx = loop {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(&pipe) {
            Ok(tx) => break tx,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                wait = (wait * 2).min(16);
            }
            Err(e) => {
                return Err(OpsError::Invalid(format!(
                    "opening the pipe {}: {e}",
                    pipe.display()
                )));
            }
        }
    };
    Ok(follower.copy_to(&mut tx).await?)
}

/// Runs a helper request that produces no step output; a failure becomes an error.
pub(super) async fn helper_ok(
    ctx: &Ctx,
    req: rootless::Request,
    what: &str,
) -> Result<rootless::Response, OpsError> {
    match ctx.worker.run_helper(req, None, None).await {
        Ok(resp) => Ok(resp),
        Err(crate::worker::WorkerError::Rootless(rootless::RootlessError::Helper(message))) => {
            Err(OpsError::Helper {
                what: what.to_string(),
                message,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A local source's directory, filter and cache key (the checksum of what the filter keeps),
/// without copying anything; computed once per solve (the passes share it).
pub(super) async fn local_key(
    ctx: &Ctx,
    src: &pb::SourceOp,
) -> Result<(String, std::path::PathBuf, rootless::patterns::Filter), OpsError> {
    if let Ok(sums) = ctx.sums.lock()
        && let Some(s) = sums.get(&ctx.vertex)
    {
        return Ok((s.key.clone(), s.dir.clone(), s.filter.clone()));
    }
    let name = src
        .identifier
        .strip_prefix("local://")
        .unwrap_or(&src.identifier);
    let Some(dir) = ctx.locals.get(name).cloned() else {
        return Err(OpsError::UnknownLocal {
            name: name.to_string(),
            known: ctx.locals.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    // One trip to a blocking thread: the filter (it may read a .dockerignore), then the walk.
    let cache_root = ctx.worker.root.join("local-checksums");
    let (filter, stat, checksum, listing) = {
        let (dir, attrs) = (dir.clone(), src.attrs.clone());
        tokio::task::spawn_blocking(move || -> Result<_, OpsError> {
            let filter = context::local_filter(&dir, &attrs)?;
            let stat = context::StatCache::path_for(&cache_root, &dir, &filter);
            let mut listing = super::manifest::Listing::default();
            let sum = context::tree_checksum_at(&dir, &filter, &stat, Some(&mut listing))?;
            super::manifest::remember(&stat, &sum, &listing);
            Ok((filter, stat, sum, listing))
        })
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))??
    };
    let key = local_key_of(ctx, &checksum, &filter);
    if let Ok(mut sums) = ctx.sums.lock() {
        sums.insert(
            ctx.vertex,
            super::LocalSum {
                key: key.clone(),
                dir: dir.clone(),
                filter: filter.clone(),
                checksum,
                stat,
                listing: std::sync::Arc::new(listing),
                selected: Default::default(),
            },
        );
    }
    Ok((key, dir, filter))
}

/// The cache key of a local source's content `checksum` seen through `filter`. The checksum
/// covers only what the filter keeps; the filter itself is in the key too, so two filters that
/// happen to keep the same files still share nothing surprising.
fn local_key_of(ctx: &Ctx, checksum: &str, filter: &rootless::patterns::Filter) -> String {
    if filter.is_empty() {
        ctx.cache_key(&[], &[checksum])
    } else {
        ctx.cache_key(&[], &[checksum, &filter.key()])
    }
}

/// An earlier copy of this source still in the store, and the files of the new content it
/// holds unchanged (same path, mode and content hash), which the new copy links instead of
/// copying. Committed snapshots are never written again, so the two copies may share them.
fn reusable_copy(ctx: &Ctx) -> Option<context::Reuse> {
    let sum = ctx.sums.lock().ok()?.get(&ctx.vertex).cloned()?;
    let now: std::collections::HashMap<&[u8], (u32, &[u8])> = sum
        .listing
        .iter()
        .filter(|e| e.mode & 0o170000 == 0o100000)
        .map(|e| (e.path, (e.mode, e.what)))
        .collect();
    super::manifest::others(&sum.stat, &sum.checksum)
        .into_iter()
        .find_map(|(checksum, entries)| {
            let key = local_key_of(ctx, &checksum, &sum.filter);
            ctx.worker.snapshots.lookup_quiet(&key).ok()??;
            let files: std::collections::HashSet<Vec<u8>> = entries
                .iter()
                .filter(|e| now.get(e.path) == Some(&(e.mode, e.what)))
                .map(|e| e.path.to_vec())
                .collect();
            (!files.is_empty()).then(|| context::Reuse {
                from: ctx.worker.snapshots.fs(&key),
                files,
            })
        })
}

async fn local(ctx: &Ctx, src: &pb::SourceOp) -> Result<Outcome<Res>, OpsError> {
    let (key, dir, filter) = local_key(ctx, src).await?;
    let key = &key;
    ctx.resolve_one(key, |prepared| async move {
        let dest = prepared.fs.clone();
        let reuse = reusable_copy(ctx);
        tokio::task::spawn_blocking(move || {
            context::copy_tree_reusing(&dir, &dest, &filter, reuse.as_ref())
        })
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))??;
        Ok(SnapRef {
            chain: vec![key.clone()],
            base: None,
        })
    })
    .await
}

/// `reference` (tag or digest) named by `digest` instead: `host:port/repo:tag` →
/// `host:port/repo@digest`.
fn pin_reference(reference: &str, digest: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    let name = match name.rsplit_once(':') {
        Some((n, tag)) if !tag.contains('/') => n,
        _ => name,
    };
    format!("{name}@{digest}")
}

#[cfg(test)]
mod tests {
    use super::pin_reference;

    #[test]
    fn checksums_pin_references() {
        let d = "sha256:abc";
        assert_eq!(
            pin_reference("127.0.0.1:5000/library/busybox:latest", d),
            "127.0.0.1:5000/library/busybox@sha256:abc"
        );
        assert_eq!(
            pin_reference("127.0.0.1:5000/library/busybox", d),
            "127.0.0.1:5000/library/busybox@sha256:abc"
        );
        assert_eq!(
            pin_reference("docker.io/library/debian@sha256:old", d),
            "docker.io/library/debian@sha256:abc"
        );
    }
}
