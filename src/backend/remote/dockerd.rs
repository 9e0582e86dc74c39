//! What dockerd's own API adds to its BuildKit: `docker save` of the built image (for
//! `-o type=docker|oci`) and `docker push` (for `push=true`).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::BackendError;
use crate::export::{ExportError, Output};

fn connect_err(sock: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        what: format!("connecting to {}", sock.display()),
        source,
    }
}

fn talk_err(what: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        what: format!("talking to dockerd ({what})"),
        source,
    }
}

/// `-o type=docker|oci` on a dockerd context: the image is built into dockerd, then dockerd's
/// `docker save` of it (`GET /images/NAME/get`) is the docker tarball, or is read into
/// envkit's store and written out as an OCI layout.
pub(super) async fn fetch_saved(
    sock: &Path,
    output: &Output,
    name: &str,
    root: &Path,
) -> Result<(), BackendError> {
    let (dest, image) = match output {
        Output::Oci { dest, name: n, .. } | Output::Docker { dest, name: n, .. } => {
            (dest.clone(), n.clone().unwrap_or_else(|| name.to_string()))
        }
        _ => return Ok(()),
    };
    let image =
        crate::compile::full_name(&image).map_err(|e| BackendError::Refused(e.to_string()))?;
    let tmp = tempfile::NamedTempFile::new()
        .map_err(BackendError::io("a temporary file for docker save"))?;
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(connect_err(sock))?;
    let req = format!("GET /images/{image}/get HTTP/1.0\r\nHost: docker\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(talk_err("docker save"))?;
    let status = crate::remote::read_status(&mut s)
        .await
        .map_err(talk_err("docker save"))?;
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        return Err(BackendError::Refused(format!(
            "docker save of {image}: {status} {}",
            body.trim()
        )));
    }
    let tmp_path = tmp.path().to_path_buf();
    let file = tmp
        .reopen()
        .map_err(BackendError::io(format!("{}", tmp_path.display())))?;
    let mut f = tokio::fs::File::from_std(file);
    tokio::io::copy(&mut s, &mut f)
        .await
        .map_err(talk_err("docker save"))?;
    f.flush()
        .await
        .map_err(BackendError::io(format!("{}", tmp_path.display())))?;
    drop(f);
    let open = || {
        std::fs::File::open(&tmp_path).map_err(|source| ExportError::Io {
            path: tmp_path.clone(),
            source,
        })
    };
    match output {
        Output::Docker { .. } => {
            crate::export::write_to_dest(&dest, |out| {
                let mut r = open()?;
                std::io::copy(&mut r, out).map_err(|e| ExportError::Io {
                    path: dest.clone(),
                    source: e,
                })?;
                Ok(())
            })?;
        }
        _ => {
            let store = crate::content::Store::open(root)?;
            let loaded = crate::export::load::load_archive(
                open()?,
                &store,
                crate::config::DEFAULT_MAX_LAYER_SIZE,
            )?;
            let Some(img) = loaded.first() else {
                return Err(BackendError::Refused(format!(
                    "docker save of {image} held no image"
                )));
            };
            let m = crate::export::gzip_manifest(&img.manifest, &store)?;
            crate::export::oci_tar(&dest, &m, &image, &store)?;
        }
    }
    eprintln!("=> wrote {image} to {}", dest.display());
    Ok(())
}

/// `push=true` on a dockerd context: dockerd pushes the image it holds
/// (`POST /images/NAME/push`), with the credentials docker's config has for that registry.
pub(super) async fn docker_push(sock: &Path, image: &str) -> Result<(), BackendError> {
    use base64::Engine as _;
    let r = crate::registry::normalize(image)?;
    let host = r.registry().to_string();
    let tag = r.tag().unwrap_or("latest").to_string();
    let repo = if host == "docker.io" {
        r.repository().to_string()
    } else {
        format!("{host}/{}", r.repository())
    };
    let auth = match crate::registry::auth::credentials_for(&host).map_err(BackendError::Refused)? {
        oci_client::secrets::RegistryAuth::Basic(u, p) => {
            serde_json::json!({"username": u, "password": p, "serveraddress": host})
        }
        _ => serde_json::json!({}),
    };
    let header = base64::engine::general_purpose::URL_SAFE.encode(auth.to_string());
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .map_err(connect_err(sock))?;
    let req = format!(
        "POST /images/{repo}/push?tag={tag} HTTP/1.0\r\nHost: docker\r\n\
         X-Registry-Auth: {header}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(talk_err("docker push"))?;
    let status = crate::remote::read_status(&mut s)
        .await
        .map_err(talk_err("docker push"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .await
        .map_err(talk_err("docker push"))?;
    if !status.contains(" 200 ") {
        return Err(BackendError::Refused(format!(
            "dockerd refused to push {repo}:{tag}: {status} {}",
            body.trim()
        )));
    }
    // A stream of JSON messages; a failure is one with "error".
    let mut digest = None;
    for line in body.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return Err(BackendError::Refused(format!(
                "dockerd could not push {repo}:{tag}: {e}"
            )));
        }
        if let Some(d) = v.pointer("/aux/Digest").and_then(|d| d.as_str()) {
            digest = Some(d.to_string());
        }
    }
    eprintln!(
        "=> dockerd pushed {repo}:{tag} ({})",
        digest.unwrap_or_else(|| "no digest reported".into())
    );
    Ok(())
}
