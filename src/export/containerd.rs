//! `type=containerd`: the image goes into a containerd's content store and image list over its
//! gRPC socket, as `ctr images import` would leave it. Every blob is written under one lease
//! (so containerd's garbage collector cannot take a half-imported image), the manifest carries
//! the `containerd.io/gc.ref.content.*` labels that keep its config and layers alive, and the
//! image record points at the manifest. With `unpack=true` the layers are also applied into a
//! snapshotter (containerd's diff service does the extraction), ready for `ctr run`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1 as cd;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Descriptor as CdDescriptor;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::content::Store;

/// Where `CONTAINERD_ADDRESS` is unset and no `address=` is given.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// containerd's own default namespace (what `ctr` and nerdctl use).
pub const DEFAULT_NAMESPACE: &str = "default";
const CHUNK: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot reach containerd at {address}: {message}")]
    Connect { address: PathBuf, message: String },
    #[error("containerd refused {what}: {message}")]
    Rpc { what: String, message: String },
    #[error("the image to import is broken: {0}")]
    Image(String),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
}

/// Which containerd, and how to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: PathBuf,
    pub namespace: String,
    /// Apply the layers into this snapshotter (`unpack=true`: containerd's default, overlayfs).
    pub unpack: Option<String>,
}

impl Target {
    /// `address=` or `CONTAINERD_ADDRESS` or containerd's default socket; `namespace=` or
    /// `CONTAINERD_NAMESPACE` or `default`.
    pub fn new(address: Option<String>, namespace: Option<String>, unpack: Option<String>) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let address = address
            .or_else(|| env("CONTAINERD_ADDRESS"))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let address = address
            .strip_prefix("unix://")
            .unwrap_or(&address)
            .to_string();
        Target {
            address: PathBuf::from(address),
            namespace: namespace
                .or_else(|| env("CONTAINERD_NAMESPACE"))
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            unpack,
        }
    }
}

/// What an import did, for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub written: usize,
    pub present: usize,
    pub unpacked: Option<String>,
}

fn rpc(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> ContainerdError {
    let what = what.into();
    move |s| ContainerdError::Rpc {
        what,
        message: format!("{:?}: {}", s.code(), s.message()),
    }
}

struct Session {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Session {
    fn req<T>(&self, msg: T) -> Result<Request<T>, ContainerdError> {
        let mut r = Request::new(msg);
        let bad = |what: &str| ContainerdError::Image(format!("{what} is not a valid gRPC header"));
        let ns = self
            .namespace
            .parse()
            .map_err(|_| bad(&format!("namespace {:?}", self.namespace)))?;
        r.metadata_mut().insert("containerd-namespace", ns);
        if let Some(l) = &self.lease {
            let v = l.parse().map_err(|_| bad("the lease id"))?;
            r.metadata_mut().insert("containerd-lease", v);
        }
        Ok(r)
    }

    fn content(&self) -> cd::content_client::ContentClient<Channel> {
        // Layers travel in CHUNK-sized messages; leave room for the envelope.
        cd::content_client::ContentClient::new(self.channel.clone())
            .max_encoding_message_size(CHUNK * 2)
    }

    async fn has(&self, digest: &str) -> Result<bool, ContainerdError> {
        let r = self.req(cd::InfoRequest {
            digest: digest.to_string(),
        })?;
        match self.content().info(r).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(rpc(format!("a content lookup of {digest}"))(s)),
        }
    }

    /// Streams one blob from the store into containerd's content store and commits it with
    /// `labels`; containerd checks the size and digest on commit.
    async fn write(
        &self,
        store: &Store,
        desc: &Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let digest = desc.digest().to_string();
        let total = desc.size() as i64;
        let file = store.open_blob(desc.digest())?;
        let (tx, rx) = tokio::sync::mpsc::channel::<cd::WriteContentRequest>(4);
        let ref_name = format!("envkit-{}-{digest}", std::process::id());
        let reader = {
            let ref_name = ref_name.clone();
            let digest = digest.clone();
            let path = store.path(desc.digest())?;
            tokio::task::spawn_blocking(move || -> Result<(), ContainerdError> {
                let mut file = file;
                let mut offset = 0i64;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = file.read(&mut buf).map_err(|e| {
                        ContainerdError::Content(crate::content::ContentError::Io {
                            path: path.clone(),
                            source: e,
                        })
                    })?;
                    if n == 0 {
                        break;
                    }
                    let msg = cd::WriteContentRequest {
                        action: cd::WriteAction::Write as i32,
                        r#ref: ref_name.clone(),
                        total,
                        expected: digest.clone(),
                        offset,
                        data: buf[..n].to_vec(),
                        labels: HashMap::new(),
                    };
                    offset += n as i64;
                    if tx.blocking_send(msg).is_err() {
                        return Ok(()); // the call ended; its error says why
                    }
                }
                let commit = cd::WriteContentRequest {
                    action: cd::WriteAction::Commit as i32,
                    r#ref: ref_name,
                    total,
                    expected: digest,
                    offset,
                    data: Vec::new(),
                    labels,
                };
                let _ = tx.blocking_send(commit);
                Ok(())
            })
        };
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let what = format!("the upload of {digest}");
        let result = async {
            let mut responses = self
                .content()
                .write(self.req(requests)?)
                .await
                .map_err(rpc(what.clone()))?
                .into_inner();
            let mut committed = false;
            while let Some(resp) = responses.message().await.map_err(rpc(what.clone()))? {
                if resp.action == cd::WriteAction::Commit as i32 {
                    committed = true;
                }
            }
            if committed {
                Ok(())
            } else {
                Err(ContainerdError::Rpc {
                    what: what.clone(),
                    message: "the stream ended before the commit".into(),
                })
            }
        }
        .await;
        let read = reader.await.map_err(|e| ContainerdError::Rpc {
            what: what.clone(),
            message: format!("the reader stopped: {e}"),
        })?;
        match result {
            // A concurrent import committed the same blob first: it is there, which is the point.
            Err(ContainerdError::Rpc { message, .. }) if message.starts_with("AlreadyExists") => {
                Ok(())
            }
            r => {
                read?;
                r
            }
        }
    }

    async fn set_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let r = self.req(cd::UpdateRequest {
            info: Some(cd::Info {
                digest: digest.to_string(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        })?;
        self.content()
            .update(r)
            .await
            .map_err(rpc(format!("labelling {digest}")))?;
        Ok(())
    }
}

async fn connect(address: &Path) -> Result<Channel, ContainerdError> {
    let fail = |message: String| ContainerdError::Connect {
        address: address.to_path_buf(),
        message,
    };
    if !address.exists() {
        return Err(fail(
            "no such socket (set address=, or CONTAINERD_ADDRESS)".into(),
        ));
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(address)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            Err(fail(msg))
        }
        Err(_) => Err(fail(format!(
            "no answer in {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

fn cd_descriptor(d: &Descriptor) -> CdDescriptor {
    CdDescriptor {
        media_type: d.media_type().to_string(),
        digest: d.digest().to_string(),
        size: d.size() as i64,
        annotations: HashMap::new(),
    }
}

/// The chain ids of an image's layers, as containerd names committed snapshots:
/// chain(0) = diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                crate::content::sha256_digest(format!("{prev} {d}").as_bytes()).to_string()
            }
        };
        out.push(next);
    }
    out
}

/// One image manifest of an import, read.
struct Part {
    manifest: Descriptor,
    parsed: ImageManifest,
    chains: Vec<String>,
}

fn read_part(manifest: &Descriptor, store: &Store) -> Result<Part, ContainerdError> {
    let bad = |m: String| ContainerdError::Image(format!("{}: {m}", manifest.digest()));
    let parsed: ImageManifest = serde_json::from_slice(&store.read_blob(manifest.digest())?)
        .map_err(|e| bad(format!("not an image manifest: {e}")))?;
    let config: ImageConfiguration =
        serde_json::from_slice(&store.read_blob(parsed.config().digest())?)
            .map_err(|e| bad(format!("not an image config: {e}")))?;
    let chains = chain_ids(config.rootfs().diff_ids());
    if chains.len() != parsed.layers().len() {
        return Err(bad(format!(
            "{} layers but {} diff ids",
            parsed.layers().len(),
            chains.len()
        )));
    }
    Ok(Part {
        manifest: manifest.clone(),
        parsed,
        chains,
    })
}

/// Imports the image whose manifest (or index of one manifest per platform) is `manifest` as
/// `name` into the containerd `target`. With `unpack`, this machine's platform is unpacked.
pub async fn import(
    target: &Target,
    name: &str,
    manifest: &Descriptor,
    store: &Store,
) -> Result<Imported, ContainerdError> {
    let bad = |m: String| ContainerdError::Image(format!("{}: {m}", manifest.digest()));
    let stored =
        crate::image::index::stored(store, manifest.digest()).map_err(|e| bad(e.to_string()))?;
    let children = match &stored {
        crate::image::index::Stored::Manifest(_) => vec![manifest.clone()],
        crate::image::index::Stored::Index { manifests, .. } => manifests.clone(),
    };
    let parts = children
        .iter()
        .map(|m| read_part(m, store))
        .collect::<Result<Vec<_>, _>>()?;
    let host = stored
        .manifest_for(&crate::platform::Platform::host())
        .map(|d| d.digest().clone());
    let unpack_at = parts
        .iter()
        .position(|p| Some(p.manifest.digest()) == host.as_ref());

    let channel = connect(&target.address).await?;
    let mut s = Session {
        channel,
        namespace: target.namespace.clone(),
        lease: None,
    };
    // One lease holds everything written until the image record refers to it.
    let mut lease_labels = HashMap::new();
    lease_labels.insert("containerd.io/gc.expire".to_string(), expiry(3600));
    let lease = cd::leases_client::LeasesClient::new(s.channel.clone())
        .create(s.req(cd::CreateRequest {
            id: format!("envkit-import-{}-{}", std::process::id(), nanos()),
            labels: lease_labels,
        })?)
        .await
        .map_err(rpc("a lease"))?
        .into_inner()
        .lease
        .map(|l| l.id);
    s.lease = lease.clone();

    let result = import_under_lease(&s, target, name, manifest, &parts, unpack_at, store).await;
    if let Some(id) = lease {
        s.lease = None;
        let r = s.req(cd::DeleteRequest { id, sync: false })?;
        let _ = cd::leases_client::LeasesClient::new(s.channel.clone())
            .delete(r)
            .await;
    }
    result
}

async fn import_under_lease(
    s: &Session,
    target: &Target,
    name: &str,
    top: &Descriptor,
    parts: &[Part],
    unpack_at: Option<usize>,
    store: &Store,
) -> Result<Imported, ContainerdError> {
    let mut done = Imported::default();
    let mut blobs: Vec<(&Descriptor, HashMap<String, String>)> = Vec::new();
    for (n, part) in parts.iter().enumerate() {
        for l in part.parsed.layers() {
            blobs.push((l, HashMap::new()));
        }
        let mut config_labels = HashMap::new();
        if let (Some(sn), Some(top)) = (&target.unpack, part.chains.last())
            && unpack_at == Some(n)
        {
            config_labels.insert(format!("containerd.io/gc.ref.snapshot.{sn}"), top.clone());
        }
        blobs.push((part.parsed.config(), config_labels));
        let mut manifest_labels = HashMap::new();
        manifest_labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            part.parsed.config().digest().to_string(),
        );
        for (i, l) in part.parsed.layers().iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest().to_string(),
            );
        }
        blobs.push((&part.manifest, manifest_labels));
    }
    if crate::image::index::is_index(top) {
        let labels = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    p.manifest.digest().to_string(),
                )
            })
            .collect();
        blobs.push((top, labels));
    }
    for (desc, labels) in blobs {
        let digest = desc.digest().to_string();
        if s.has(&digest).await? {
            done.present += 1;
            if !labels.is_empty() {
                s.set_labels(&digest, labels).await?;
            }
        } else {
            s.write(store, desc, labels).await?;
            done.written += 1;
        }
    }

    if let (Some(sn), Some(part)) = (&target.unpack, unpack_at.and_then(|n| parts.get(n))) {
        unpack(s, sn, part.parsed.layers(), &part.chains).await?;
        done.unpacked = part.chains.last().cloned();
    }

    let image = cd::Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(cd_descriptor(top)),
        created_at: None,
        updated_at: None,
    };
    let mut images = cd::images_client::ImagesClient::new(s.channel.clone());
    let created = images
        .create(s.req(cd::CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        })?)
        .await;
    match created {
        Ok(_) => {}
        Err(st) if st.code() == Code::AlreadyExists => {
            images
                .update(s.req(cd::UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                })?)
                .await
                .map_err(rpc(format!("updating the image {name}")))?;
        }
        Err(st) => return Err(rpc(format!("creating the image {name}"))(st)),
    }
    Ok(done)
}

/// Applies each layer on top of the one below in `snapshotter`, committing each under its
/// chain id; layers already there (same chain id) are skipped.
async fn unpack(
    s: &Session,
    snapshotter: &str,
    layers: &[Descriptor],
    chains: &[String],
) -> Result<(), ContainerdError> {
    let mut snaps = snap::snapshots_client::SnapshotsClient::new(s.channel.clone());
    let mut diff = cd::diff_client::DiffClient::new(s.channel.clone());
    let mut parent = String::new();
    for (layer, chain) in layers.iter().zip(chains) {
        let stat = snaps
            .stat(s.req(snap::StatSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: chain.clone(),
            })?)
            .await;
        match stat {
            Ok(_) => {
                parent = chain.clone();
                continue;
            }
            Err(st) if st.code() == Code::NotFound => {}
            Err(st) => return Err(rpc(format!("a snapshot lookup of {chain}"))(st)),
        }
        let key = format!("envkit-extract-{}-{} {chain}", std::process::id(), nanos());
        let mounts = snaps
            .prepare(s.req(snap::PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            })?)
            .await
            .map_err(rpc(format!("preparing a {snapshotter} snapshot")))?
            .into_inner()
            .mounts;
        let applied = diff
            .apply(s.req(cd::ApplyRequest {
                diff: Some(cd_descriptor(layer)),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            })?)
            .await
            .map_err(rpc(format!("applying the layer {}", layer.digest())));
        let committed = match applied {
            Ok(_) => {
                let mut labels = HashMap::new();
                labels.insert("containerd.io/snapshot.ref".to_string(), chain.clone());
                snaps
                    .commit(s.req(snap::CommitSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels,
                    })?)
                    .await
                    .map(|_| ())
                    .or_else(|st| {
                        if st.code() == Code::AlreadyExists {
                            Ok(())
                        } else {
                            Err(rpc(format!("committing the snapshot {chain}"))(st))
                        }
                    })
            }
            Err(e) => Err(e),
        };
        if committed.is_err() {
            let _ = snaps
                .remove(s.req(snap::RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key,
                })?)
                .await;
        }
        committed?;
        parent = chain.clone();
    }
    Ok(())
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// An RFC 3339 time `secs` from now (the lease's expiry label).
fn expiry(secs: u64) -> String {
    crate::image::rfc3339(crate::image::unix_now() + secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = crate::content::sha256_digest(format!("{a} {b}").as_bytes()).to_string();
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn targets_default_to_containerds_socket_and_namespace() {
        let t = Target::new(Some("unix:///tmp/x.sock".into()), Some("ns".into()), None);
        assert_eq!(t.address, PathBuf::from("/tmp/x.sock"));
        assert_eq!(t.namespace, "ns");
    }
}
