//! `https://` and `http://` sources (envd's `io.http`): one file, downloaded by envkit itself
//! (not inside a container), verified against `http.checksum` when given, named
//! `http.filename` (else the URL's last path segment), with `http.perm` (default 0600) and
//! `http.uid`/`http.gid`.
//!
//! With a checksum the cache key is known before downloading, so a warm build does not touch
//! the network; without one the file is fetched and keyed by its content, so later steps are
//! still cached when it did not change.

use std::io::Write;

use sha2::{Digest as _, Sha256};

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::SnapRef;
use crate::solver::Outcome;

/// What the op asks for.
struct Want {
    url: String,
    checksum: Option<String>,
    filename: String,
    perm: u32,
    uid: u32,
    gid: u32,
}

fn want(url: &str, src: &pb::SourceOp) -> Result<Want, OpsError> {
    let attr = |k: &str| src.attrs.get(k).filter(|v| !v.is_empty()).cloned();
    let num = |k: &str, default: u32, radix: u32| -> Result<u32, OpsError> {
        match attr(k) {
            None => Ok(default),
            Some(v) => u32::from_str_radix(&v, radix)
                .map_err(|_| OpsError::Invalid(format!("{k} {v:?} of {url}"))),
        }
    };
    let filename = match attr("http.filename") {
        Some(f) => f,
        None => url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("index")
            .to_string(),
    };
    if filename.contains('/') || filename == "." || filename == ".." {
        return Err(OpsError::Invalid(format!("http.filename {filename:?}")));
    }
    if let Some(k) = src
        .attrs
        .keys()
        .find(|k| k.starts_with("http.header.") || *k == "http.authheadersecret")
    {
        return Err(OpsError::Unsupported(format!("http source attribute {k}")));
    }
    Ok(Want {
        url: url.to_string(),
        checksum: attr("http.checksum"),
        filename,
        perm: num("http.perm", 0o600, 8)?,
        uid: num("http.uid", 0, 10)?,
        gid: num("http.gid", 0, 10)?,
    })
}

pub(super) async fn run(
    ctx: &Ctx,
    url: &str,
    src: &pb::SourceOp,
) -> Result<Outcome<Res>, OpsError> {
    let w = want(url, src)?;
    let extra = |content: &str| {
        vec![
            content.to_string(),
            w.filename.clone(),
            format!("{:o}", w.perm),
            format!("{}:{}", w.uid, w.gid),
        ]
    };
    if let Some(ck) = &w.checksum {
        let parts = extra(ck);
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        if let Some(hit) = ctx.peek(&ctx.cache_key(&[], &refs))? {
            return Ok(hit);
        }
    }
    let dl = ctx.worker.snapshots.temp_dir()?;
    let path = dl.path().join(&w.filename);
    let digest = download(&w.url, &path).await?;
    if let Some(ck) = &w.checksum
        && ck != &digest
    {
        return Err(OpsError::Download {
            url: w.url.clone(),
            message: format!("checksum mismatch: want {ck}, got {digest}"),
        });
    }
    let parts = extra(&digest);
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    // Keyed by the checksum the op gave, else by what was downloaded.
    let key = match &w.checksum {
        Some(ck) => {
            let p = extra(ck);
            let r: Vec<&str> = p.iter().map(String::as_str).collect();
            ctx.cache_key(&[], &r)
        }
        None => ctx.cache_key(&[], &refs),
    };
    let key = &key;
    ctx.resolve_one(key, |prepared| async move {
        // The helper writes the file into the snapshot, so owner and mode are the container's.
        let req = rootless::Request::FileActions {
            lowers: Vec::new(),
            upper: prepared.fs.clone(),
            work: prepared.work.clone(),
            actions: vec![rootless::FileAction::Copy(Box::new(rootless::CopyAction {
                src_root: rootless::CopySource::Dir(dl.path().to_path_buf()),
                src: format!("/{}", w.filename),
                dest: format!("/{}", w.filename),
                owner: Some(rootless::Chown::ids(w.uid, w.gid)),
                mode: Some(w.perm),
                create_dest_path: true,
                ..rootless::CopyAction::default()
            }))],
        };
        super::source::helper_ok(ctx, req, "storing a download").await?;
        Ok(SnapRef {
            chain: vec![key.clone()],
            base: None,
        })
    })
    .await
}

/// Streams `url` into `dest`; returns the `sha256:<hex>` of what was written.
async fn download(url: &str, dest: &std::path::Path) -> Result<String, OpsError> {
    let err = |message: String| OpsError::Download {
        url: url.to_string(),
        message,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| err(format!("{e}")))?;
    if !resp.status().is_success() {
        return Err(err(format!("server answered {}", resp.status())));
    }
    let mut file = std::fs::File::create(dest).map_err(|e| err(e.to_string()))?;
    let mut h = Sha256::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| err(e.to_string()))? {
        h.update(&chunk);
        file.write_all(&chunk).map_err(|e| err(e.to_string()))?;
    }
    file.sync_all().map_err(|e| err(e.to_string()))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}
