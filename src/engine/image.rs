//! A result as an image in the store: the base image's layers as they are, one layer per
//! own snapshot (its diff, cached beside the snapshot in `layer.json`), the config and the
//! manifest assembled and stored. The exporters (`crate::export`) take it from there.

use oci_spec::image::ImageConfiguration;

use super::{Engine, EngineError};
use crate::export;
use crate::image;
use crate::snapshot::{SnapRef, write_atomic};
use crate::worker::Worker;

impl Engine {
    /// The result `snap` as an image of `spec` in the content store, and when it was made
    /// (for the image list: when its newest own layer was first made, so a warm rebuild
    /// changes nothing).
    pub async fn image(
        &self,
        snap: &SnapRef,
        spec: &image::ImageSpec,
    ) -> Result<(image::Assembled, u64), EngineError> {
        export_image(&self.worker, snap, spec).await
    }
}

/// The time reproducible images carry: `$SOURCE_DATE_EPOCH`, else the epoch itself. Layer
/// entries are clamped to it and it is the config's `created`, so two clean builds of the same
/// file on two stores give the same image (unless the build itself is not deterministic).
pub fn reproducible_epoch() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|e| *e >= 0)
        .unwrap_or(0)
}

/// Turns a result chain into an image: the base image's layers as they are, plus one layer per
/// own snapshot (its diff, cached next to the snapshot), stored in the content store. Also
/// returns when the image was made for envkit's image list: when its newest own layer was
/// first made, so a warm rebuild changes nothing.
pub(super) async fn export_image(
    worker: &Worker,
    snap: &SnapRef,
    spec: &crate::image::ImageSpec,
) -> Result<(image::Assembled, u64), EngineError> {
    let mut steps = Vec::new();
    let mut made: Option<u64> = None;
    for id in snap.own_layers() {
        steps.push(layer_for(worker, id).await?);
        let t = std::fs::metadata(worker.snapshots.dir(id).join("layer.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        made = made.max(t);
    }
    let made = made.unwrap_or_else(image::created_now);
    let created = reproducible_epoch() as u64;
    let (base_cfg, base_layers) = match &snap.base {
        Some(b) => {
            let digest = crate::content::parse_digest(&b.config_digest)?;
            let bytes = worker.content.read_blob(&digest)?;
            let cfg: ImageConfiguration = serde_json::from_slice(&bytes)
                .map_err(|e| EngineError::BaseConfig(e.to_string()))?;
            (cfg, b.layers.clone())
        }
        None => (scratch_config(), Vec::new()),
    };
    let assembled = image::assemble_steps(&base_cfg, spec, &base_layers, &steps, created)?;
    assembled.store(&worker.content)?;
    Ok((assembled, made))
}

/// The config an image built from scratch starts from: this machine's platform.
fn scratch_config() -> ImageConfiguration {
    let host = crate::platform::Platform::host();
    let mut cfg = ImageConfiguration::default();
    cfg.set_os(oci_spec::image::Os::from(host.os.as_str()));
    cfg.set_architecture(oci_spec::image::Arch::from(host.architecture.as_str()));
    if !host.variant.is_empty() {
        cfg.set_variant(Some(host.variant.clone()));
    }
    cfg
}

/// A layer as cached beside its snapshot (`layer.json`): `None` when the step changed nothing.
#[derive(serde::Serialize, serde::Deserialize)]
struct LayerRecord {
    descriptor: oci_spec::image::Descriptor,
    diff_id: String,
    /// The mtime clamp the layer was made with (see [`reproducible_epoch`]).
    #[serde(default)]
    clamp: Option<i64>,
}

/// The layer of one snapshot, or `None` when the step changed nothing.
pub(super) async fn layer_for(
    worker: &Worker,
    id: &str,
) -> Result<Option<image::NewLayer>, EngineError> {
    let clamp = reproducible_epoch();
    let record_path = worker.snapshots.dir(id).join("layer.json");
    if let Ok(bytes) = std::fs::read(&record_path)
        && let Ok(record) = serde_json::from_slice::<Option<LayerRecord>>(&bytes)
    {
        match record {
            None => return Ok(None),
            Some(r) if worker.content.has(r.descriptor.digest()) && r.clamp == Some(clamp) => {
                return Ok(Some(image::NewLayer {
                    descriptor: r.descriptor,
                    diff_id: crate::content::parse_digest(&r.diff_id)?,
                    created_by: None,
                }));
            }
            Some(_) => {} // the blob is gone, or another clamp is asked for: make it again
        }
    }
    let tmp = worker.snapshots.temp_file()?;
    let req = rootless::Request::DiffTar {
        upper: worker.snapshots.fs(id),
        out: tmp.path().to_path_buf(),
        mtime_clamp: Some(clamp),
    };
    let layer_err = |message: String| EngineError::Layer {
        id: id.to_string(),
        message,
    };
    let resp = worker
        .run_helper(req, None, None)
        .await
        .map_err(|e| layer_err(e.to_string()))?;
    let layer = match resp {
        rootless::Response::DiffWritten { entries: 0, .. } => None,
        // Hashed as the helper wrote it: renamed into the content store, not read again.
        rootless::Response::DiffWritten {
            sha256: Some(hex),
            size: Some(size),
            ..
        } => {
            let digest = crate::content::parse_digest(&format!("sha256:{hex}"))?;
            Some(export::raw_layer(worker.content.adopt(tmp, &digest, size)?))
        }
        rootless::Response::DiffWritten { .. } => {
            Some(export::raw_layer_from_tar(tmp.path(), &worker.content)?)
        }
        other => return Err(layer_err(format!("unexpected answer {other:?}"))),
    };
    let record = layer.as_ref().map(|l| LayerRecord {
        descriptor: l.descriptor.clone(),
        diff_id: l.diff_id.to_string(),
        clamp: Some(clamp),
    });
    let bytes = serde_json::to_vec(&record).map_err(|e| layer_err(e.to_string()))?;
    write_atomic(&record_path, &bytes)?;
    Ok(layer)
}
