//! `envkit context …`, and `build`/`solve` on a remote BuildKit (a buildkitd, or the one
//! inside a dockerd).

use std::collections::HashMap;
use std::time::Duration;

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

/// The local sources a Definition reads (by name) and the registries its image sources name
/// (as credentials are keyed: `docker.io` for Docker Hub).
fn sources(bytes: &[u8]) -> anyhow::Result<(Vec<String>, std::collections::BTreeSet<String>)> {
    let def = crate::pb::Definition::decode(bytes).context("decoding the Definition")?;
    let mut names = Vec::new();
    let mut registries = std::collections::BTreeSet::new();
    for op in &def.def {
        let Ok(op) = crate::pb::Op::decode(&op[..]) else {
            continue;
        };
        let Some(crate::pb::op::Op::Source(src)) = &op.op else {
            continue;
        };
        if let Some(name) = src.identifier.strip_prefix("local://")
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
        if let Some(r) = src.identifier.strip_prefix("docker-image://")
            && let Ok(r) = crate::registry::normalize(r)
        {
            registries.insert(r.registry().to_string());
        }
    }
    Ok((names, registries))
}

/// A remote BuildKit, connected: what it is decides how the graph is lowered and which
/// exporters exist there.
pub(super) struct Remote {
    pub ep: Endpoint,
    pub channel: tonic::transport::Channel,
    pub workers: remote::Workers,
    /// `Control.Info`'s version (None before BuildKit v0.11).
    pub version: Option<String>,
}

impl Remote {
    pub(super) async fn connect(ep: Endpoint) -> anyhow::Result<Remote> {
        let channel = remote::connect(&ep).await?;
        let workers = remote::list_workers(&ep, &channel).await?;
        if workers.ids.is_empty() {
            bail!("{ep} has no BuildKit worker");
        }
        let version = remote::version(&ep, &channel).await?;
        Ok(Remote {
            ep,
            channel,
            workers,
            version,
        })
    }

    /// The BuildKit inside a dockerd (reached through dockerd, or as a buildkitd).
    fn moby(&self) -> bool {
        matches!(self.ep, Endpoint::Dockerd(_)) || self.workers.is_moby()
    }

    /// How to lower for it: Merge/Diff only where it has them.
    pub(super) fn target(&self) -> crate::lower::Target {
        if matches!(self.ep, Endpoint::Dockerd(_))
            || !remote::has_merge_op(&self.workers, self.version.as_deref())
        {
            crate::lower::Target::Dockerd
        } else {
            crate::lower::Target::Buildkitd
        }
    }
}

/// How an exporter's result comes back to this machine.
enum Back {
    /// Nothing comes back (an image stays in the remote's store, or is pushed).
    Nothing,
    /// A file through the session (tar, and oci/docker from a buildkitd), written to `dest`.
    File(std::path::PathBuf),
    /// A directory tree through the session, written into `dest`.
    Tree(std::path::PathBuf),
    /// dockerd's `docker save` of the built image, afterwards.
    Saved,
}

fn compression_attrs(c: &crate::export::CompressionOpts, attrs: &mut HashMap<String, String>) {
    use crate::export::Compression;
    if *c == crate::export::CompressionOpts::default() {
        return;
    }
    let kind = match c.kind {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::Uncompressed => "uncompressed",
    };
    attrs.insert("compression".into(), kind.into());
    if let Some(l) = c.level {
        attrs.insert("compression-level".into(), l.to_string());
    }
    if c.force {
        attrs.insert("force-compression".into(), "true".into());
    }
}

/// The exporter, its attributes, and what comes back, for `output` there.
fn exporter(
    remote: &Remote,
    output: Option<&Output>,
    name: &str,
) -> anyhow::Result<(String, HashMap<String, String>, Back)> {
    let mut attrs = HashMap::new();
    let dockerd = matches!(remote.ep, Endpoint::Dockerd(_));
    let moby = remote.moby();
    let named = |n: &Option<String>| n.clone().unwrap_or_else(|| name.to_string());
    let (exporter, back) = match output {
        None | Some(Output::Image { push: false, .. }) if moby => {
            let n = match output {
                Some(Output::Image { name: n, .. }) => named(n),
                _ => name.to_string(),
            };
            attrs.insert("name".into(), n);
            ("moby", Back::Nothing)
        }
        // push=true: dockerd pushes it afterwards (see `docker_push`).
        Some(Output::Image { name: n, .. }) if dockerd => {
            attrs.insert("name".into(), named(n));
            ("moby", Back::Nothing)
        }
        // From dockerd these are made from `docker save` of the image (see `fetch_saved`).
        Some(Output::Oci { name: n, .. } | Output::Docker { name: n, .. }) if dockerd => {
            attrs.insert("name".into(), named(n));
            ("moby", Back::Saved)
        }
        Some(
            out @ (Output::Image { push: true, .. } | Output::Oci { .. } | Output::Docker { .. }),
        ) if moby => {
            bail!(
                "-o {}: {} is dockerd's BuildKit, whose only image exporter puts the image \
                 into dockerd; make a dockerd context for its API socket to push or save it",
                out.kind(),
                remote.ep
            )
        }
        None => {
            attrs.insert("name".into(), name.to_string());
            ("image", Back::Nothing)
        }
        Some(Output::Image {
            name: n,
            push,
            compression,
        }) => {
            attrs.insert("name".into(), named(n));
            if *push {
                attrs.insert("push".into(), "true".into());
            }
            compression_attrs(compression, &mut attrs);
            ("image", Back::Nothing)
        }
        Some(
            out @ (Output::Oci {
                dest,
                name: n,
                compression,
            }
            | Output::Docker {
                dest,
                name: n,
                compression,
            }),
        ) => {
            attrs.insert("name".into(), named(n));
            compression_attrs(compression, &mut attrs);
            let exporter = if matches!(out, Output::Oci { .. }) {
                "oci"
            } else {
                "docker"
            };
            (exporter, Back::File(dest.clone()))
        }
        Some(Output::Tar { dest }) => ("tar", Back::File(dest.clone())),
        Some(Output::Local { dest }) => ("local", Back::Tree(dest.clone())),
        Some(other) => bail!(
            "-o {}: a remote BuildKit exports to an image (push=true for a registry), \
             oci, docker, tar or local; a containerd import is the embedded engine's",
            other.kind()
        ),
    };
    Ok((exporter.to_string(), attrs, back))
}

/// A private place beside `dest` (same file system, so the result is renamed into place).
fn beside(dest: &std::path::Path) -> std::path::PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() && dest.as_os_str() != "-" => p.to_path_buf(),
        _ if dest.as_os_str() == "-" => std::env::temp_dir(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Runs `bytes` on the remote BuildKit and exports the result as `output` asks.
#[allow(clippy::too_many_arguments)]
pub(super) async fn solve_remote(
    remote: &Remote,
    bytes: &[u8],
    output: Option<&Output>,
    name: &str,
    image_config: Option<Vec<u8>>,
    locals: &std::collections::BTreeMap<String, std::path::PathBuf>,
    progress: &str,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let ep = &remote.ep;
    // Local sources are read through a session the client serves.
    let (wanted, mut registries) = sources(bytes)?;
    let mut offered = remote::session::Locals::default();
    for n in &wanted {
        let Some(dir) = locals.get(n) else {
            bail!(
                "the Definition reads the local source {n:?}, which was not given (--local {n}=DIR)"
            );
        };
        offered.0.insert(n.clone(), dir.clone());
    }
    let (exporter, attrs, back) = exporter(remote, output, name)?;
    // What comes back lands in a temporary file (or directory) beside its destination first,
    // and is moved into place once the build has succeeded.
    let (tmp_file, tmp_dir) = match &back {
        Back::File(dest) => {
            let dir = beside(dest);
            let f = tempfile::Builder::new()
                .prefix(".envkit-export-")
                .tempfile_in(&dir)
                .with_context(|| format!("a temporary file in {}", dir.display()))?;
            (Some(f), None)
        }
        Back::Tree(dest) => {
            // The directory itself is made once the files are here (as the embedded engine
            // does); its parent holds the staging directory meanwhile.
            let parent = beside(dest);
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let d = tempfile::Builder::new()
                .prefix(".envkit-export-")
                .tempdir_in(&parent)
                .with_context(|| format!("a temporary directory beside {}", dest.display()))?;
            (None, Some(d))
        }
        Back::Nothing | Back::Saved => (None, None),
    };
    // The output's names are registries the build names too (a push needs credentials).
    for n in attrs
        .get("name")
        .map(|v| v.split(',').collect::<Vec<_>>())
        .unwrap_or_default()
    {
        if let Ok(r) = crate::registry::normalize(n.trim()) {
            registries.insert(r.registry().to_string());
        }
    }
    let offer = remote::session::Offer {
        locals: offered,
        registries,
        receive: match (&tmp_file, &tmp_dir) {
            (Some(f), _) => Some(remote::session::Receive::File(f.path().to_path_buf())),
            (_, Some(d)) => Some(remote::session::Receive::Tree(d.path().to_path_buf())),
            _ => None,
        },
    };
    // A session always goes along: registry credentials come through it too.
    let session = match ep {
        Endpoint::Dockerd(sock) => remote::session::attach_dockerd(sock, offer).await?,
        _ => remote::session::attach_control(ep, &remote.channel, offer).await?,
    };
    let shown = attrs.get("name").cloned();
    let started = std::time::Instant::now();
    let reporter = super::build::reporter(progress);
    let res = remote::solve(
        ep,
        &remote.channel,
        remote::Job {
            definition: bytes.to_vec(),
            exporter,
            exporter_attrs: attrs,
            entitlements: Vec::new(),
            image_config,
            session: session.id.clone(),
        },
        reporter.clone(),
    )
    .await;
    reporter.finish();
    let resp = res?;
    let tree = match back {
        Back::Tree(_) => session.received_tree(Duration::from_secs(30)).await,
        _ => None,
    };
    drop(session);
    match (&back, tmp_file, tmp_dir) {
        (Back::File(dest), Some(tmp), _) => {
            if dest.as_os_str() == "-" {
                let mut f = std::fs::File::open(tmp.path())?;
                std::io::copy(&mut f, &mut std::io::stdout().lock())?;
            } else {
                // A temporary file is private (0600); the result is as any file written here.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
                tmp.persist(dest)
                    .with_context(|| format!("writing {}", dest.display()))?;
                eprintln!("=> wrote {}", dest.display());
            }
        }
        (Back::Tree(dest), _, Some(staging)) => {
            let stats = match tree {
                Some(Ok(stats)) => stats,
                Some(Err(e)) => bail!("receiving the files for {}: {e}", dest.display()),
                None => bail!("{ep} sent no files for {}", dest.display()),
            };
            let tar = tempfile::Builder::new()
                .prefix(".envkit-export-")
                .tempfile_in(beside(dest))?;
            let out = std::io::BufWriter::new(tar.reopen()?);
            remote::session::tree_to_tar(&stats, staging.path(), out)
                .with_context(|| format!("the files {ep} sent"))?;
            drop(staging);
            let notes = crate::engine::extract_as_user(tar.path(), dest)?;
            for n in notes {
                eprintln!("=> {n}");
            }
            eprintln!("=> wrote {} entries into {}", stats.len(), dest.display());
        }
        (Back::Saved, _, _) => {
            if let (Endpoint::Dockerd(sock), Some(out)) = (ep, output) {
                fetch_saved(sock, out, name, root).await?;
            }
        }
        _ => {}
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
            let loaded = crate::export::load::load_archive(
                std::fs::File::open(tmp.path())?,
                &store,
                crate::config::DEFAULT_MAX_LAYER_SIZE,
            )?;
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
