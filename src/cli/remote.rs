//! `envkit context …`, and `build`/`solve` on a remote BuildKit (a buildkitd, or the one
//! inside a dockerd).

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use prost::Message;

use super::{Cli, ContextCommand};
use crate::export::Output;
use crate::remote::context::{Builder, Context, Contexts};
use crate::remote::{self, Endpoint};

fn store_path() -> anyhow::Result<std::path::PathBuf> {
    Contexts::path().context("no config directory (set HOME or XDG_CONFIG_HOME)")
}

/// The context this command uses: `--context`/`ENVKIT_CONTEXT`, else the current one.
pub(super) fn current(cli: &Cli) -> anyhow::Result<Context> {
    let all = Contexts::load_from(&store_path()?)?;
    let name = cli.context.clone().unwrap_or_else(|| all.current_name());
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
        } => {
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
                println!("{mark:<3}{:<20} {b:<10} {}", c.name, c.endpoint);
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

/// The names of the local sources the Definition reads.
fn local_sources(bytes: &[u8]) -> anyhow::Result<Vec<String>> {
    let def = crate::pb::Definition::decode(bytes).context("decoding the Definition")?;
    let mut names = Vec::new();
    for op in &def.def {
        let Ok(op) = crate::pb::Op::decode(&op[..]) else {
            continue;
        };
        if let Some(crate::pb::op::Op::Source(src)) = &op.op
            && let Some(name) = src.identifier.strip_prefix("local://")
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The exporter and its attributes for `output` on `builder`.
fn exporter(
    builder: Builder,
    output: Option<&Output>,
    name: &str,
) -> anyhow::Result<(String, HashMap<String, String>)> {
    let mut attrs = HashMap::new();
    let (image_name, push) = match output {
        None => (name.to_string(), false),
        Some(Output::Image { name: n, push, .. }) => {
            (n.clone().unwrap_or_else(|| name.to_string()), *push)
        }
        // From dockerd these are made from `docker save` of the image (see `fetch_saved`).
        Some(Output::Oci { name: n, .. } | Output::Docker { name: n, .. })
            if builder == Builder::Dockerd =>
        {
            (n.clone().unwrap_or_else(|| name.to_string()), false)
        }
        // BuildKit's tar exporter sends the root filesystem over the session.
        Some(Output::Tar { .. }) if builder == Builder::Dockerd => {
            return Ok(("tar".into(), attrs));
        }
        Some(other) => bail!(
            "{other:?}: outputs written on this machine come back over BuildKit's session, \
             which envkit does not serve yet; on a remote context use type=image[,push=true]"
        ),
    };
    attrs.insert("name".into(), image_name);
    Ok(match builder {
        // push=true: dockerd pushes it afterwards (see `docker_push`).
        Builder::Dockerd => ("moby".into(), attrs),
        _ => {
            if push {
                attrs.insert("push".into(), "true".into());
            }
            ("image".into(), attrs)
        }
    })
}

/// Runs `bytes` on the context's BuildKit and exports the result as `output` asks.
#[allow(clippy::too_many_arguments)]
pub(super) async fn solve_remote(
    ctx: &Context,
    ep: &Endpoint,
    bytes: &[u8],
    output: Option<&Output>,
    name: &str,
    image_config: Option<Vec<u8>>,
    locals: &std::collections::BTreeMap<String, std::path::PathBuf>,
    progress: &str,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    // Local sources are read through a session the client serves.
    let wanted = local_sources(bytes)?;
    let mut offered = remote::session::Locals::default();
    for n in &wanted {
        let Some(dir) = locals.get(n) else {
            bail!(
                "the Definition reads the local source {n:?}, which was not given (--local {n}=DIR)"
            );
        };
        offered.0.insert(n.clone(), dir.clone());
    }
    // A tar output comes back through the session too: into a temporary file beside its
    // destination, renamed into place once the build has succeeded.
    let tar_dest = match output {
        Some(Output::Tar { dest }) if matches!(ep, Endpoint::Dockerd(_)) => Some(dest.clone()),
        _ => None,
    };
    let tar_tmp = match &tar_dest {
        Some(d) if d.as_os_str() != "-" => {
            let dir = match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            Some(
                tempfile::Builder::new()
                    .prefix(".envkit-export-")
                    .tempfile_in(&dir)
                    .with_context(|| format!("a temporary file in {}", dir.display()))?,
            )
        }
        Some(_) => Some(tempfile::NamedTempFile::new().context("a temporary file")?),
        None => None,
    };
    let offer = remote::session::Offer {
        locals: offered,
        file: tar_tmp.as_ref().map(|t| t.path().to_path_buf()),
    };
    // On dockerd a session always goes along: registry credentials come through it too.
    let session = match (&wanted[..], ep, &offer.file) {
        (_, Endpoint::Dockerd(sock), _) => {
            Some(remote::session::attach_dockerd(sock, offer).await?)
        }
        ([], _, None) => None,
        (_, _, _) => bail!(
            "the Definition reads local files ({}): serving them to a buildkitd (the session \
             over Control.Session) is not implemented yet; dockerd contexts and the embedded \
             engine build it",
            wanted.join(", ")
        ),
    };
    let (exporter, attrs) = exporter(ctx.builder, output, name)?;
    let shown = attrs.get("name").cloned();
    let started = std::time::Instant::now();
    let channel = remote::connect(ep).await?;
    let workers = remote::list_workers(ep, &channel).await?;
    if workers.ids.is_empty() {
        bail!("{ep} has no BuildKit worker");
    }
    let reporter = super::build::reporter(progress);
    let res = remote::solve(
        ep,
        &channel,
        remote::Job {
            definition: bytes.to_vec(),
            exporter,
            exporter_attrs: attrs,
            entitlements: Vec::new(),
            image_config,
            session: session.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
        },
        reporter.clone(),
    )
    .await;
    reporter.finish();
    drop(session);
    let resp = res?;
    if let (Some(dest), Some(tmp)) = (&tar_dest, tar_tmp) {
        if dest.as_os_str() == "-" {
            let mut f = std::fs::File::open(tmp.path())?;
            std::io::copy(&mut f, &mut std::io::stdout().lock())?;
        } else {
            tmp.persist(dest)
                .with_context(|| format!("writing {}", dest.display()))?;
            eprintln!("=> wrote the root filesystem to {}", dest.display());
        }
    }
    if let (Endpoint::Dockerd(sock), Some(out @ (Output::Oci { .. } | Output::Docker { .. }))) =
        (ep, output)
    {
        fetch_saved(sock, out, name, root).await?;
    }
    if let (
        Endpoint::Dockerd(sock),
        Some(Output::Image {
            name: target,
            push: true,
            ..
        }),
    ) = (ep, output)
    {
        let target = target.clone().unwrap_or_else(|| name.to_string());
        docker_push(sock, &super::build::full_name(&target)?).await?;
    }
    let what = match (shown, resp.get("containerimage.digest")) {
        (Some(n), Some(d)) => format!("{n} ({d})"),
        (Some(n), None) => n,
        (None, _) => "the result".to_string(),
    };
    eprintln!(
        "=> built {what} on {ep} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `-o type=docker|oci` on a dockerd context: the image is built into dockerd, then dockerd's
/// `docker save` of it (`GET /images/NAME/get`) is the docker tarball, or is read into envkit's
/// store and written out as an OCI layout.
async fn fetch_saved(
    sock: &std::path::Path,
    output: &Output,
    name: &str,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dest, image) = match output {
        Output::Oci { dest, name: n, .. } | Output::Docker { dest, name: n, .. } => {
            (dest.clone(), n.clone().unwrap_or_else(|| name.to_string()))
        }
        _ => return Ok(()),
    };
    let image = super::build::full_name(&image)?;
    let tmp = tempfile::NamedTempFile::new().context("a temporary file for docker save")?;
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("connecting to {}", sock.display()))?;
    let req = format!("GET /images/{image}/get HTTP/1.0\r\nHost: docker\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let status = crate::remote::read_status(&mut s).await?;
    if !status.contains(" 200 ") {
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        bail!("docker save of {image}: {status} {}", body.trim());
    }
    let mut f = tokio::fs::File::from_std(tmp.reopen()?);
    tokio::io::copy(&mut s, &mut f).await?;
    f.flush().await?;
    drop(f);
    match output {
        Output::Docker { .. } => {
            crate::export::write_to_dest(&dest, |out| {
                let mut r = std::fs::File::open(tmp.path()).map_err(|e| {
                    crate::export::ExportError::Io {
                        path: tmp.path().to_path_buf(),
                        source: e,
                    }
                })?;
                std::io::copy(&mut r, out).map_err(|e| crate::export::ExportError::Io {
                    path: dest.clone(),
                    source: e,
                })?;
                Ok(())
            })?;
        }
        _ => {
            let store = crate::content::Store::open(root)?;
            let loaded =
                crate::export::load::load_archive(std::fs::File::open(tmp.path())?, &store)?;
            let Some(img) = loaded.first() else {
                bail!("docker save of {image} held no image");
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
async fn docker_push(sock: &std::path::Path, image: &str) -> anyhow::Result<()> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = crate::registry::normalize(image)?;
    let host = r.registry().to_string();
    let tag = r.tag().unwrap_or("latest").to_string();
    let repo = if host == "docker.io" {
        r.repository().to_string()
    } else {
        format!("{host}/{}", r.repository())
    };
    let auth = match crate::registry::auth::credentials_for(&host).map_err(anyhow::Error::msg)? {
        oci_client::secrets::RegistryAuth::Basic(u, p) => {
            serde_json::json!({"username": u, "password": p, "serveraddress": host})
        }
        _ => serde_json::json!({}),
    };
    let header = base64::engine::general_purpose::URL_SAFE.encode(auth.to_string());
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("connecting to {}", sock.display()))?;
    let req = format!(
        "POST /images/{repo}/push?tag={tag} HTTP/1.0\r\nHost: docker\r\n\
         X-Registry-Auth: {header}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let status = crate::remote::read_status(&mut s).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    if !status.contains(" 200 ") {
        bail!(
            "dockerd refused to push {repo}:{tag}: {status} {}",
            body.trim()
        );
    }
    // A stream of JSON messages; a failure is one with "error".
    let mut digest = None;
    for line in body.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("dockerd could not push {repo}:{tag}: {e}");
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
