//! A remote BuildKit as a backend: a buildkitd (unix, TCP, TLS) or the BuildKit inside a
//! dockerd. The Definition goes over gRPC, local sources and registry credentials through
//! the client's session, and what an exporter makes comes back through it (or from dockerd,
//! afterwards: `dockerd.rs`). `exporter.rs` maps `-o` to BuildKit's exporters.

mod dockerd;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::{Backend, BackendError, BoxFuture, ImageConfig, Job};
use crate::export::Output;
use crate::export::exporter::{Back, RemoteKind};
use crate::lower;
use crate::progress::Reporter;
use crate::registry::Registry;
use crate::remote::{self, Endpoint};

/// A remote BuildKit, connected: what it is decides how the graph is lowered and which
/// exporters exist there.
pub struct Remote {
    pub ep: Endpoint,
    pub channel: tonic::transport::Channel,
    pub workers: remote::Workers,
    /// `Control.Info`'s version (None before BuildKit v0.11).
    pub version: Option<String>,
}

impl Remote {
    pub async fn connect(ep: Endpoint) -> Result<Remote, BackendError> {
        let channel = remote::connect(&ep).await?;
        let workers = remote::list_workers(&ep, &channel).await?;
        if workers.ids.is_empty() {
            return Err(BackendError::Refused(format!(
                "{ep} has no BuildKit worker"
            )));
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
    pub fn target(&self) -> lower::Target {
        if matches!(self.ep, Endpoint::Dockerd(_))
            || !remote::has_merge_op(&self.workers, self.version.as_deref())
        {
            lower::Target::Dockerd
        } else {
            lower::Target::Buildkitd
        }
    }
}

/// A connected remote BuildKit, with what a build on it needs from this machine.
pub struct RemoteBackend {
    pub remote: Remote,
    /// Resolves base images for the frontend (the remote pulls them itself).
    registry: Registry,
    /// `[worker] ca-bundle`, unless `--ca-bundle` says otherwise.
    ca_bundle: Option<PathBuf>,
    reporter: Arc<dyn Reporter>,
    /// envkit's store (dockerd's `docker save` becomes an OCI layout through it).
    root: PathBuf,
    options: RemoteOptions,
}

/// What a build asks of a remote BuildKit besides the job.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// `--no-cache`: every op but the sources is marked to ignore the cache, as BuildKit's
    /// own clients do.
    pub no_cache: bool,
    /// `--allow`: the entitlements the solve asks for (the daemon must grant them too).
    pub entitlements: Vec<String>,
}

impl RemoteBackend {
    pub async fn connect(
        ep: Endpoint,
        config: &crate::config::Config,
        reporter: Arc<dyn Reporter>,
        root: PathBuf,
        options: RemoteOptions,
    ) -> Result<RemoteBackend, BackendError> {
        Ok(RemoteBackend {
            remote: Remote::connect(ep).await?,
            registry: Registry::new(config),
            ca_bundle: config.worker.ca_bundle.clone(),
            reporter,
            root,
            options,
        })
    }
}

/// The Definition with every op but the sources marked `ignore_cache` (`--no-cache`); only
/// the metadata changes, so every digest stays what it was.
pub fn ignoring_cache(bytes: &[u8]) -> Result<Vec<u8>, BackendError> {
    let bad =
        |e: prost::DecodeError| BackendError::Refused(format!("decoding the Definition: {e}"));
    let mut def = crate::pb::Definition::decode(bytes).map_err(bad)?;
    for op in &def.def {
        let parsed = crate::pb::Op::decode(&op[..]).map_err(bad)?;
        if matches!(parsed.op, Some(crate::pb::op::Op::Source(_))) {
            continue;
        }
        let digest = crate::content::sha256_hex(op);
        def.metadata
            .entry(format!("sha256:{digest}"))
            .or_default()
            .ignore_cache = true;
    }
    Ok(def.encode_to_vec())
}

impl Backend for RemoteBackend {
    fn target(&self) -> lower::Target {
        self.remote.target()
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The host CA bundle reaches remote steps as a local source of the session.
    fn ca_bundle_local(
        &self,
        cli_ca: Option<&Path>,
    ) -> Result<Option<(PathBuf, String)>, BackendError> {
        let Some(p) = cli_ca.or(self.ca_bundle.as_deref()) else {
            return Ok(None);
        };
        let real = std::fs::canonicalize(p)
            .map_err(BackendError::io(format!("the CA bundle {}", p.display())))?;
        match (real.parent(), real.file_name()) {
            (Some(dir), Some(f)) => Ok(Some((dir.to_path_buf(), f.to_string_lossy().into()))),
            _ => Err(BackendError::Refused(format!(
                "the CA bundle {} is not a file",
                p.display()
            ))),
        }
    }

    fn default_platform(&self) -> crate::platform::Platform {
        self.remote
            .workers
            .platforms
            .first()
            .cloned()
            .unwrap_or_default()
    }

    fn check_platforms(&self, wanted: &[crate::platform::Platform]) -> Result<(), BackendError> {
        let have = &self.remote.workers.platforms;
        if have.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|w| {
                !have
                    .iter()
                    .any(|h| w.accepts(&h.os, &h.architecture, Some(&h.variant)))
            })
            .map(|p| p.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(BackendError::Refused(format!(
            "{} builds {} (its workers say so); not {}: install QEMU's binfmt_misc handlers \
             on that host, or build there for one of its platforms",
            self.remote.ep,
            have.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            missing.join(", ")
        )))
    }

    fn run(&self, job: Job) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.solve(vec![job]))
    }

    fn run_platforms(&self, jobs: Vec<Job>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.solve(jobs))
    }

    fn finish(&self) {
        self.reporter.finish();
    }

    fn note(&self, line: String) {
        self.reporter.event(crate::progress::Event::Note(line));
    }
}

/// The image config a job's result gets on a remote BuildKit (`None`: its base image's).
fn image_config(job: &Job) -> Result<Option<Vec<u8>>, BackendError> {
    Ok(match &job.image {
        ImageConfig::Spec {
            spec,
            base_config,
            base_layers,
        } => Some(
            crate::image::assemble(
                base_config,
                spec,
                base_layers,
                &[],
                crate::engine::reproducible_epoch() as u64,
            )?
            .config_bytes,
        ),
        ImageConfig::Full { config, .. } => Some(config.clone()),
        ImageConfig::Base => None,
    })
}

/// The platform a job builds for.
fn platform_of(job: &Job) -> crate::platform::Platform {
    match &job.image {
        ImageConfig::Spec { spec, .. } | ImageConfig::Full { spec, .. } => spec.platform(),
        ImageConfig::Base => crate::platform::Platform::host(),
    }
}

/// The local sources a Definition reads (by name) and the registries its image sources name
/// (as credentials are keyed: `docker.io` for Docker Hub).
fn sources(bytes: &[u8]) -> Result<(Vec<String>, BTreeSet<String>), BackendError> {
    let def = crate::pb::Definition::decode(bytes)
        .map_err(|e| BackendError::Refused(format!("decoding the Definition: {e}")))?;
    let mut names = Vec::new();
    let mut registries = BTreeSet::new();
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

/// Where what comes back is staged: a temporary file (or directory) beside its destination,
/// moved into place once the build has succeeded.
struct Staging {
    file: Option<tempfile::NamedTempFile>,
    dir: Option<tempfile::TempDir>,
}

impl Staging {
    fn for_back(back: &Back) -> Result<Staging, BackendError> {
        let mut s = Staging {
            file: None,
            dir: None,
        };
        match back {
            Back::File(dest) => {
                let dir = beside(dest);
                s.file = Some(
                    tempfile::Builder::new()
                        .prefix(".envkit-export-")
                        .tempfile_in(&dir)
                        .map_err(BackendError::io(format!(
                            "a temporary file in {}",
                            dir.display()
                        )))?,
                );
            }
            Back::Tree(dest) => {
                // The directory itself is made once the files are here (as the embedded
                // engine does); its parent holds the staging directory meanwhile.
                let parent = beside(dest);
                std::fs::create_dir_all(&parent)
                    .map_err(BackendError::io(format!("creating {}", parent.display())))?;
                s.dir = Some(
                    tempfile::Builder::new()
                        .prefix(".envkit-export-")
                        .tempdir_in(&parent)
                        .map_err(BackendError::io(format!(
                            "a temporary directory beside {}",
                            dest.display()
                        )))?,
                );
            }
            Back::Nothing | Back::Saved => {}
        }
        Ok(s)
    }

    fn receive(&self) -> Option<remote::session::Receive> {
        match (&self.file, &self.dir) {
            (Some(f), _) => Some(remote::session::Receive::File(f.path().to_path_buf())),
            (_, Some(d)) => Some(remote::session::Receive::Tree(d.path().to_path_buf())),
            _ => None,
        }
    }
}

impl RemoteBackend {
    /// Runs the job on the remote BuildKit and exports the result as its output asks; with
    /// several jobs (one per platform, the same name and output), one multi-platform result.
    async fn solve(&self, jobs: Vec<Job>) -> Result<(), BackendError> {
        let remote = &self.remote;
        let ep = &remote.ep;
        let Some(job) = jobs.first() else {
            return Err(BackendError::Refused("no platform to build".into()));
        };
        // Local sources are read through a session the client serves.
        let mut wanted: Vec<String> = Vec::new();
        let mut registries = BTreeSet::new();
        for j in &jobs {
            let (names, regs) = sources(&j.definition)?;
            for n in names {
                if !wanted.contains(&n) {
                    wanted.push(n);
                }
            }
            registries.extend(regs);
        }
        let mut offered = remote::session::Locals::default();
        for n in &wanted {
            let Some(dir) = job.locals.get(n) else {
                return Err(BackendError::Refused(format!(
                    "the Definition reads the local source {n:?}, which was not given (--local {n}=DIR)"
                )));
            };
            offered.0.insert(n.clone(), dir.clone());
        }
        let output = job.output.as_ref();
        let kind = RemoteKind {
            endpoint: ep.to_string(),
            dockerd: matches!(ep, Endpoint::Dockerd(_)),
            moby: remote.moby(),
        };
        let default = crate::export::exporter::default_output();
        let mapped = output
            .unwrap_or(&default)
            .exporter()
            .remote(&kind, &job.name)?;
        let (exporter, attrs, back) = (mapped.exporter.to_string(), mapped.attrs, mapped.back);
        let staging = Staging::for_back(&back)?;
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
            receive: staging.receive(),
        };
        // A session always goes along: registry credentials come through it too.
        let session = match ep {
            Endpoint::Dockerd(sock) => remote::session::attach_dockerd(sock, offer).await?,
            _ => remote::session::attach_control(ep, &remote.channel, offer).await?,
        };
        let definition = |j: &Job| {
            if self.options.no_cache {
                ignoring_cache(&j.definition)
            } else {
                Ok(j.definition.clone())
            }
        };
        let mut platforms = Vec::new();
        if jobs.len() > 1 {
            for j in &jobs {
                platforms.push(remote::PlatformPart {
                    platform: platform_of(j),
                    definition: definition(j)?,
                    image_config: image_config(j)?,
                });
            }
        }
        let cache = cache_options(&job.cache, kind.moby)?;
        let shown = attrs.get("name").cloned();
        let res = remote::solve(
            ep,
            &remote.channel,
            remote::Job {
                definition: definition(job)?,
                exporter,
                exporter_attrs: attrs,
                entitlements: self.options.entitlements.clone(),
                image_config: image_config(job)?,
                session: session.id.clone(),
                cache,
                platforms,
            },
            self.reporter.clone(),
        )
        .await;
        self.reporter.finish();
        let resp = res?;
        let tree = match back {
            Back::Tree(_) => session.received_tree(Duration::from_secs(30)).await,
            _ => None,
        };
        drop(session);
        match (&back, staging) {
            (
                Back::File(dest),
                Staging {
                    file: Some(tmp), ..
                },
            ) => place_file(tmp, dest)?,
            (
                Back::Tree(dest),
                Staging {
                    dir: Some(staging), ..
                },
            ) => {
                let stats = match tree {
                    Some(Ok(stats)) => stats,
                    Some(Err(e)) => {
                        return Err(BackendError::Refused(format!(
                            "receiving the files for {}: {e}",
                            dest.display()
                        )));
                    }
                    None => {
                        return Err(BackendError::Refused(format!(
                            "{ep} sent no files for {}",
                            dest.display()
                        )));
                    }
                };
                place_tree(ep, &stats, staging, dest)?;
            }
            (Back::Saved, _) => {
                if let (Endpoint::Dockerd(sock), Some(out)) = (ep, output) {
                    dockerd::fetch_saved(sock, out, &job.name, &self.root).await?;
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
            let target = target.clone().unwrap_or_else(|| job.name.clone());
            let target = crate::compile::full_name(&target)
                .map_err(|e| BackendError::Refused(e.to_string()))?;
            dockerd::docker_push(sock, &target).await?;
        }
        let what = match (shown, resp.get("containerimage.digest")) {
            (Some(n), Some(d)) => format!("{n} ({d})"),
            (Some(n), None) => n,
            (None, _) => "the result".to_string(),
        };
        eprintln!(
            "=> built {what} on {ep} in {:.1}s",
            job.started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The file an exporter sent, renamed into place (or to stdout for `-`).
fn place_file(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), BackendError> {
    if dest.as_os_str() == "-" {
        let mut f = std::fs::File::open(tmp.path())
            .map_err(BackendError::io(format!("{}", tmp.path().display())))?;
        std::io::copy(&mut f, &mut std::io::stdout().lock())
            .map_err(BackendError::io("writing to stdout"))?;
        return Ok(());
    }
    // A temporary file is private (0600); the result is as any file written here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(BackendError::io(format!("{}", tmp.path().display())))?;
    tmp.persist(dest)
        .map_err(|e| BackendError::io(format!("writing {}", dest.display()))(e.error))?;
    eprintln!("=> wrote {}", dest.display());
    Ok(())
}

/// The tree an exporter sent, written into `dest` as this user.
fn place_tree(
    ep: &Endpoint,
    stats: &[crate::remote::pb::filesync::Stat],
    staging: tempfile::TempDir,
    dest: &Path,
) -> Result<(), BackendError> {
    let tar = tempfile::Builder::new()
        .prefix(".envkit-export-")
        .tempfile_in(beside(dest))
        .map_err(BackendError::io(format!(
            "a temporary file beside {}",
            dest.display()
        )))?;
    let file = tar
        .reopen()
        .map_err(BackendError::io(format!("{}", tar.path().display())))?;
    remote::session::tree_to_tar(stats, staging.path(), std::io::BufWriter::new(file))
        .map_err(|e| BackendError::Refused(format!("the files {ep} sent: {e}")))?;
    drop(staging);
    let notes = crate::export::exporter::extract_as_user(tar.path(), dest)?;
    for n in notes {
        eprintln!("=> {n}");
    }
    eprintln!("=> wrote {} entries into {}", stats.len(), dest.display());
    Ok(())
}

/// A private place beside `dest` (same file system, so the result is renamed into place).
fn beside(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() && dest.as_os_str() != "-" => p.to_path_buf(),
        _ if dest.as_os_str() == "-" => std::env::temp_dir(),
        _ => PathBuf::from("."),
    }
}

/// `--export-cache` / `--import-cache` as the remote BuildKit's cache exporters and importers.
/// `type=local` would need the session's content store, which envkit does not serve yet;
/// dockerd's BuildKit exports only `inline` and imports only from registries.
fn cache_options(
    specs: &crate::bkcache::spec::CacheSpecs,
    moby: bool,
) -> Result<remote::pb::CacheOptions, BackendError> {
    use crate::bkcache::spec::Location;
    let entry = |kind: &str, attrs: &std::collections::BTreeMap<String, String>| {
        remote::pb::CacheOptionsEntry {
            r#type: kind.to_string(),
            attrs: attrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    };
    let local = |what: &str| {
        BackendError::Refused(format!(
            "{what} type=local with a remote builder is not supported yet (it would travel \
             through the session's content store); use type=registry"
        ))
    };
    if specs.explain {
        return Err(BackendError::Refused(
            "--explain-cache needs envkit's own engine (`--context embedded`): a remote \
             BuildKit does not say why a step missed"
                .into(),
        ));
    }
    let mut out = remote::pb::CacheOptions::default();
    for e in &specs.exports {
        match &e.location {
            Location::Local { .. } => return Err(local("--export-cache")),
            Location::Registry { .. } if moby => {
                return Err(BackendError::Refused(
                    "--export-cache type=registry: dockerd's BuildKit exports only type=inline"
                        .into(),
                ));
            }
            _ => out.exports.push(entry(&e.kind, &e.attrs)),
        }
    }
    for i in &specs.imports {
        match &i.location {
            Location::Local { .. } => return Err(local("--import-cache")),
            _ => out.imports.push(entry(&i.kind, &i.attrs)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llb::{self, MarshalOptions, Run};

    #[test]
    fn cache_flags_become_buildkits_cache_options() {
        use crate::bkcache::spec::CacheSpecs;
        let specs = CacheSpecs::parse(
            &["type=registry,ref=reg.example/app:cache".into()],
            &[
                "type=registry,ref=reg.example/app:cache,mode=max".into(),
                "type=inline".into(),
            ],
        )
        .expect("specs");
        let o = cache_options(&specs, false).expect("buildkitd");
        assert_eq!(o.exports.len(), 2);
        assert_eq!(o.exports[0].r#type, "registry");
        assert_eq!(
            o.exports[0].attrs.get("mode").map(String::as_str),
            Some("max")
        );
        assert_eq!(
            o.imports[0].attrs.get("ref").map(String::as_str),
            Some("reg.example/app:cache")
        );
        let e = cache_options(&specs, true)
            .expect_err("dockerd")
            .to_string();
        assert!(e.contains("only type=inline"), "{e}");
        let local = CacheSpecs::parse(&[], &["type=local,dest=/c".into()]).expect("specs");
        let e = cache_options(&local, false).expect_err("local").to_string();
        assert!(e.contains("type=registry"), "{e}");
    }

    #[test]
    fn no_cache_marks_every_op_but_the_sources_and_keeps_the_digests() {
        let def = llb::image("busybox")
            .run(Run::args(["sh", "-c", "date > /stamp"]))
            .root()
            .marshal(&MarshalOptions::default())
            .unwrap();
        let bytes = def.to_bytes();
        let marked = crate::pb::Definition::decode(&ignoring_cache(&bytes).unwrap()[..]).unwrap();
        let before = crate::pb::Definition::decode(&bytes[..]).unwrap();
        assert_eq!(
            marked.def, before.def,
            "the ops' bytes (and digests) are unchanged"
        );
        let mut sources = 0;
        let mut others = 0;
        for op in &marked.def {
            let digest = format!("sha256:{}", crate::content::sha256_hex(op));
            let ignored = marked.metadata.get(&digest).is_some_and(|m| m.ignore_cache);
            let parsed = crate::pb::Op::decode(&op[..]).unwrap();
            if matches!(parsed.op, Some(crate::pb::op::Op::Source(_))) {
                assert!(!ignored, "a source is content-addressed and stays cached");
                sources += 1;
            } else if parsed.op.is_some() {
                assert!(ignored, "{digest} should ignore the cache");
                others += 1;
            }
        }
        assert_eq!((sources, others), (1, 1));
    }
}
