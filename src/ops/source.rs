//! SourceOp: `docker-image://` (pull + unpack in the namespace) and `local://` (the build
//! context and other named dirs, copied into a snapshot and keyed by content).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::{BaseImage, SnapRef};
use crate::solver::Outcome;
use rootless::patterns::Filter;

pub(super) async fn run(ctx: &Ctx, src: &pb::SourceOp) -> Result<Outcome<Res>, OpsError> {
    let id = src.identifier.as_str();
    if let Some(reference) = id.strip_prefix("docker-image://") {
        image(ctx, reference).await
    } else if let Some(name) = id.strip_prefix("local://") {
        local(ctx, name, src).await
    } else if id.starts_with("https://") || id.starts_with("http://") {
        super::http::run(ctx, id, src).await
    } else if id.starts_with("git://") {
        super::git::run(ctx, id, src).await
    } else {
        let scheme = id.split("://").next().unwrap_or(id);
        Err(OpsError::Unsupported(format!("source {scheme}://")))
    }
}

async fn image(ctx: &Ctx, reference: &str) -> Result<Outcome<Res>, OpsError> {
    let w = &ctx.worker;
    let platform = super::op_platform(ctx);
    let resolved = w.registry.resolve_for(reference, &platform).await?;
    let key = ctx.cache_key(&[], &[resolved.manifest_digest.as_ref()]);
    let _claim = match ctx.claim(&key).await? {
        super::Claim::Cached(hit) => return Ok(hit),
        super::Claim::Mine(lock) => lock,
    };
    w.registry.pull(&resolved, &w.content).await?;
    let mut files = Vec::new();
    for l in &resolved.layers {
        let media_type = l.media_type().to_string();
        let compression = if media_type.ends_with("gzip") {
            rootless::Compression::Gzip
        } else if media_type.ends_with("tar") {
            rootless::Compression::None
        } else {
            return Err(OpsError::Unsupported(format!(
                "layer media type {media_type}"
            )));
        };
        files.push(rootless::LayerFile {
            path: w.content.path(l.digest())?,
            compression,
        });
    }
    let prepared = w.snapshots.prepare()?;
    let req = rootless::Request::Unpack {
        layers: files,
        dest: prepared.fs.clone(),
    };
    if let Err(e) = helper_ok(ctx, req, "unpacking image layers").await {
        ctx.discard(prepared).await;
        return Err(e);
    }
    let snap = SnapRef {
        chain: vec![key.clone()],
        base: Some(BaseImage {
            reference: resolved.reference.clone(),
            manifest_digest: resolved.manifest_digest.to_string(),
            config_digest: resolved.config_digest().to_string(),
            layers: resolved.layers.clone(),
        }),
    };
    ctx.commit(prepared, &key, snap).await
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

async fn local(ctx: &Ctx, name: &str, src: &pb::SourceOp) -> Result<Outcome<Res>, OpsError> {
    let Some(dir) = ctx.locals.get(name).cloned() else {
        return Err(OpsError::UnknownLocal {
            name: name.to_string(),
            known: ctx.locals.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    let filter = {
        let dir = dir.clone();
        let attrs = src.attrs.clone();
        tokio::task::spawn_blocking(move || local_filter(&dir, &attrs))
            .await
            .map_err(|e| OpsError::Invalid(e.to_string()))??
    };
    let checksum = {
        let (dir, filter) = (dir.clone(), filter.clone());
        tokio::task::spawn_blocking(move || tree_checksum(&dir, &filter))
            .await
            .map_err(|e| OpsError::Invalid(e.to_string()))??
    };
    // The checksum covers only what the filter keeps; the filter itself is in the key too,
    // so two filters that happen to keep the same files still share nothing surprising.
    let filter_key = filter.key();
    let key = if filter.is_empty() {
        ctx.cache_key(&[], &[&checksum])
    } else {
        ctx.cache_key(&[], &[&checksum, &filter_key])
    };
    let _claim = match ctx.claim(&key).await? {
        super::Claim::Cached(hit) => return Ok(hit),
        super::Claim::Mine(lock) => lock,
    };
    let prepared = ctx.worker.snapshots.prepare()?;
    let dest = prepared.fs.clone();
    let copied = tokio::task::spawn_blocking(move || copy_tree(&dir, &dest, &filter))
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
    if let Err(e) = copied {
        ctx.discard(prepared).await;
        return Err(e);
    }
    let snap = SnapRef {
        chain: vec![key.clone()],
        base: None,
    };
    ctx.commit(prepared, &key, snap).await
}

/// The filter of a local source: its include and exclude patterns, with the paths of
/// `local.followpaths` resolved through their symlinks (each link and what it points at)
/// added to the includes — so, as in BuildKit, follow paths alone select only themselves.
fn local_filter(
    dir: &Path,
    attrs: &std::collections::BTreeMap<String, String>,
) -> Result<Filter, OpsError> {
    let list = |key: &str| -> Result<Vec<String>, OpsError> {
        match attrs.get(key).map(String::as_str) {
            None | Some("") => Ok(Vec::new()),
            Some(v) => serde_json::from_str(v).map_err(|e| {
                OpsError::Invalid(format!("{key} {v:?}: not a JSON list of strings: {e}"))
            }),
        }
    };
    let mut include = list("local.includepattern")?;
    let follow = list("local.followpaths")?;
    if !follow.is_empty() {
        let mut resolved = std::collections::BTreeSet::new();
        for p in &follow {
            follow_links(dir, p, &mut resolved, 0)?;
        }
        include.extend(resolved);
    }
    Ok(Filter::from_lists(
        &include,
        &list("local.excludepatterns")?,
    ))
}

/// Adds `path` (relative to `root`) to `out`, and for every symlink on the way the link and,
/// recursively, its target with the rest of the path.
fn follow_links(
    root: &Path,
    path: &str,
    out: &mut std::collections::BTreeSet<String>,
    depth: usize,
) -> Result<(), OpsError> {
    if depth > 40 {
        return Err(OpsError::Invalid(format!(
            "local.followpaths: too many levels of symlinks at {path}"
        )));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut current = String::new();
    for (i, part) in parts.iter().enumerate() {
        if !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        let rest = parts[i + 1..].join("/");
        // Links this element names (several for a wildcard), as paths relative to the root.
        let mut targets = Vec::new();
        let parent = current.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let candidates: Vec<String> = if part.contains(['*', '?', '[']) {
            match fs::read_dir(root.join(parent)) {
                Ok(rd) => rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| rootless::patterns::glob(part.as_bytes(), n.as_bytes()))
                    .map(|n| {
                        if parent.is_empty() {
                            n
                        } else {
                            format!("{parent}/{n}")
                        }
                    })
                    .collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![current.clone()]
        };
        for c in candidates {
            let Ok(link) = fs::read_link(root.join(&c)) else {
                continue;
            };
            let dir_of = c.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let target = if link.is_absolute() {
                link.to_string_lossy().into_owned()
            } else {
                format!("{dir_of}/{}", link.to_string_lossy())
            };
            targets.push(normalize(&target));
        }
        if (rest.is_empty() || !targets.is_empty()) && out.contains(&current) {
            return Ok(());
        }
        if !targets.is_empty() {
            out.insert(current.clone());
            for t in targets {
                let next = if rest.is_empty() {
                    t
                } else {
                    format!("{t}/{rest}")
                };
                follow_links(root, &next, out, depth + 1)?;
            }
            return Ok(());
        }
    }
    if !current.is_empty() {
        out.insert(current);
    }
    Ok(())
}

/// `a/./b/../c` → `a/c`, with `..` stopping at the root.
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpsError + '_ {
    move |source| OpsError::Local {
        path: path.to_path_buf(),
        source,
    }
}

/// Sorted relative paths of a tree (the root excluded) that `filter` keeps, without
/// following symlinks; a directory the filter drops is not descended into.
fn walk(root: &Path, filter: &Filter) -> Result<Vec<PathBuf>, OpsError> {
    let mut out = Vec::new();
    let keep = |e: &walkdir::DirEntry| {
        if filter.is_empty() || e.depth() == 0 {
            return true;
        }
        match e.path().strip_prefix(root) {
            Ok(rel) => filter.keeps(&rel.to_string_lossy(), e.file_type().is_dir()),
            Err(_) => true,
        }
    };
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(keep)
    {
        let entry = entry.map_err(|e| OpsError::Local {
            path: e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.to_path_buf()),
            source: e.into(),
        })?;
        if let Ok(rel) = entry.path().strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(out)
}

/// Content checksum of a directory: names, types, modes, file contents and link targets —
/// what a copy out of it can observe. Owners and times are left out, like BuildKit.
/// Only the part of the tree `filter` keeps counts.
fn tree_checksum(root: &Path, filter: &Filter) -> Result<String, OpsError> {
    let mut h = Sha256::new();
    for rel in walk(root, filter)? {
        let path = root.join(&rel);
        let md = fs::symlink_metadata(&path).map_err(local_err(&path))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(md.mode().to_le_bytes());
        if md.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(local_err(&path))?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if md.is_file() {
            let mut f = fs::File::open(&path).map_err(local_err(&path))?;
            let mut fh = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(local_err(&path))?;
                if n == 0 {
                    break;
                }
                fh.update(&buf[..n]);
            }
            h.update(fh.finalize());
        }
        h.update([0xff]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Copies a tree as the host user (inside the namespace the files then belong to uid 0).
pub(super) fn copy_tree(src: &Path, dest: &Path, filter: &Filter) -> Result<(), OpsError> {
    for rel in walk(src, filter)? {
        let from = src.join(&rel);
        let to = dest.join(&rel);
        let md = fs::symlink_metadata(&from).map_err(local_err(&from))?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).map_err(local_err(&to))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(local_err(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(local_err(&to))?;
            continue;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(local_err(&to))?;
        } else {
            // Sockets, fifos and devices have no place in a build context.
            continue;
        }
        fs::set_permissions(&to, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(local_err(&to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_content_and_modes_but_not_times() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), b"1").unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/b"), b"2").unwrap();
        let c1 = tree_checksum(d.path(), &Filter::default()).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(d.path().join("a"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(tree_checksum(d.path(), &Filter::default()).unwrap(), c1);
        fs::write(d.path().join("sub/b"), b"3").unwrap();
        let c2 = tree_checksum(d.path(), &Filter::default()).unwrap();
        assert_ne!(c1, c2);
        fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(tree_checksum(d.path(), &Filter::default()).unwrap(), c2);
    }

    #[test]
    fn copy_tree_keeps_files_links_and_modes() {
        let s = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(s.path().join("dir")).unwrap();
        fs::write(s.path().join("dir/x"), b"x").unwrap();
        fs::set_permissions(s.path().join("dir/x"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("dir/x", s.path().join("link")).unwrap();
        copy_tree(s.path(), d.path(), &Filter::default()).unwrap();
        assert_eq!(fs::read(d.path().join("dir/x")).unwrap(), b"x");
        let mode = fs::metadata(d.path().join("dir/x")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o751);
        assert_eq!(
            fs::read_link(d.path().join("link")).unwrap(),
            Path::new("dir/x")
        );
        assert_eq!(
            tree_checksum(s.path(), &Filter::default()).unwrap(),
            tree_checksum(d.path(), &Filter::default()).unwrap()
        );
    }

    #[test]
    fn filters_apply_to_checksum_and_copy() {
        let s = tempfile::tempdir().unwrap();
        fs::create_dir_all(s.path().join("src/deep")).unwrap();
        fs::create_dir(s.path().join("target")).unwrap();
        fs::write(s.path().join("src/deep/a.rs"), b"a").unwrap();
        fs::write(s.path().join("src/b.tmp"), b"b").unwrap();
        fs::write(s.path().join("target/big"), b"big").unwrap();
        fs::write(s.path().join("Cargo.toml"), b"c").unwrap();
        let filter = Filter::from_lists(&[], &["target".into(), "**/*.tmp".into()]);
        let before = tree_checksum(s.path(), &filter).unwrap();
        fs::write(s.path().join("target/big"), b"changed").unwrap();
        fs::write(s.path().join("src/c.tmp"), b"new").unwrap();
        assert_eq!(
            tree_checksum(s.path(), &filter).unwrap(),
            before,
            "changes under excluded paths do not change the key"
        );
        let d = tempfile::tempdir().unwrap();
        copy_tree(s.path(), d.path(), &filter).unwrap();
        assert!(d.path().join("src/deep/a.rs").is_file());
        assert!(d.path().join("Cargo.toml").is_file());
        assert!(!d.path().join("target").exists());
        assert!(!d.path().join("src/b.tmp").exists());
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("local.includepattern".to_string(), "not json".to_string());
        assert!(local_filter(s.path(), &attrs).is_err());
    }

    #[test]
    fn follow_paths_select_links_and_their_targets() {
        let s = tempfile::tempdir().unwrap();
        fs::create_dir_all(s.path().join("real/dir")).unwrap();
        fs::write(s.path().join("real/dir/Dockerfile"), b"FROM x").unwrap();
        fs::write(s.path().join("other"), b"o").unwrap();
        std::os::unix::fs::symlink("real/dir", s.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/real/dir/Dockerfile", s.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("loop2", s.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", s.path().join("loop2")).unwrap();
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert(
            "local.followpaths".to_string(),
            r#"["link/Dockerfile","abs","loop1"]"#.to_string(),
        );
        let f = local_filter(s.path(), &attrs).unwrap();
        let kept: Vec<String> = walk(s.path(), &f)
            .unwrap()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            kept,
            [
                "abs",
                "link",
                "loop1",
                "loop2",
                "real",
                "real/dir",
                "real/dir/Dockerfile"
            ],
            "only the follow paths, their links and targets"
        );
        assert_eq!(normalize("a/./b/../c"), "a/c");
        assert_eq!(normalize("/../x"), "x");
    }
}
