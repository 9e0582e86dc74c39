//! An image as a root filesystem to run: one of the image store (built here, or loaded from
//! an archive), else pulled from its registry; its layers unpacked once into a snapshot keyed
//! by the manifest digest (through the solver's cache protocol, like any op's result).

use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};

use super::{Engine, EngineError};
use crate::snapshot::{BaseImage, SnapRef};
use crate::solver::cache::{self, CacheMap};

/// An image, ready to run.
#[derive(Debug, Clone)]
pub struct ImageRootfs {
    /// The name it was found by (normalised).
    pub name: String,
    pub manifest_digest: String,
    pub config: ImageConfiguration,
    pub snap: SnapRef,
}

/// An image of the store (built here, or loaded).
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The name it is stored under.
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<Descriptor>,
    pub config: ImageConfiguration,
}

impl Engine {
    /// The image `name` (as typed, or normalised) of the image store, if it is there.
    pub fn stored_image(&self, name: &str) -> Result<Option<StoredImage>, EngineError> {
        let full =
            crate::compile::full_name(name).map_err(|e| EngineError::Output(e.to_string()))?;
        let db = crate::meta::Meta::open(&self.root)?;
        let mut found = None;
        for n in [name, full.as_str()] {
            if let Some(rec) = db.get_image(n)? {
                found = Some((n.to_string(), rec));
                break;
            }
        }
        drop(db);
        let Some((name, rec)) = found else {
            return Ok(None);
        };
        let content = &self.worker.content;
        let top = crate::content::parse_digest(&rec.manifest_digest)?;
        // A multi-platform image runs as this machine's platform.
        let stored = crate::image::index::stored(content, &top)?;
        let host = crate::platform::Platform::host();
        let Some(manifest) = stored.manifest_for(&host) else {
            let have: Vec<String> = stored.platforms().iter().map(|p| p.to_string()).collect();
            return Err(EngineError::Output(format!(
                "{name} has no image for {host} (it has {})",
                have.join(", ")
            )));
        };
        let d = manifest.digest().clone();
        let m: ImageManifest = serde_json::from_slice(&content.read_blob(&d)?)
            .map_err(|e| EngineError::BaseConfig(format!("the manifest of {name}: {e}")))?;
        let config: ImageConfiguration =
            serde_json::from_slice(&content.read_blob(m.config().digest())?)
                .map_err(|e| EngineError::BaseConfig(format!("the config of {name}: {e}")))?;
        Ok(Some(StoredImage {
            name,
            manifest_digest: d.to_string(),
            config_digest: m.config().digest().to_string(),
            layers: m.layers().clone(),
            config,
        }))
    }

    /// The image `name` (as typed or normalised) from the image store, else from its registry,
    /// as a snapshot.
    pub async fn image_rootfs(&self, name: &str) -> Result<ImageRootfs, EngineError> {
        let image = match self.stored_image(name)? {
            Some(i) => i,
            None => {
                let full = crate::compile::full_name(name)
                    .map_err(|e| EngineError::Output(e.to_string()))?;
                let r = self.worker.registry.resolve(&full).await?;
                self.worker.registry.pull(&r, &self.worker.content).await?;
                StoredImage {
                    name: full,
                    manifest_digest: r.manifest_digest.to_string(),
                    config_digest: r.config_digest().to_string(),
                    layers: r.layers,
                    config: r.config,
                }
            }
        };
        let StoredImage {
            name,
            manifest_digest,
            config_digest,
            layers,
            config,
        } = image;
        let key = crate::ops::cache_key("envkit:image-rootfs", &[], &[&manifest_digest]);
        let base = BaseImage {
            reference: name.clone(),
            manifest_digest: manifest_digest.clone(),
            config_digest,
            layers: layers.clone(),
        };
        let map = CacheMap::one(key.clone(), false);
        let out = cache::resolve(&*self.worker, &map, |drafts| async move {
            let Some(draft) = drafts.first() else {
                return Ok(Vec::new());
            };
            self.unpack(&layers, &draft.fs).await?;
            Ok::<_, EngineError>(vec![SnapRef {
                chain: vec![key],
                base: Some(base),
            }])
        })
        .await?;
        let snap = out
            .values
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Output(format!("unpacking {name} gave no snapshot")))?;
        Ok(ImageRootfs {
            name,
            manifest_digest,
            config,
            snap,
        })
    }

    /// Unpacks `layers` (in the content store) into `dest`, through the rootless helper.
    async fn unpack(
        &self,
        layers: &[Descriptor],
        dest: &std::path::Path,
    ) -> Result<(), EngineError> {
        let w = &self.worker;
        let req = w.unpack_request(layers, dest)?;
        w.run_helper(req, None, None)
            .await
            .map_err(|e| EngineError::Output(format!("unpacking image layers: {e}")))?;
        Ok(())
    }
}
