//! Multi-platform images: an OCI image index over one manifest per platform, made from the
//! images a build assembled, and what an image record of the store points at (a manifest, or
//! an index whose manifests are each in the store).

use oci_spec::image::{Descriptor, Digest, ImageIndex, MediaType, Platform as OciPlatform};
use serde_json::json;

use super::{ImageError, MEDIA_TYPE_INDEX, canonical_json};
use crate::content::{self, Store};
use crate::platform::Platform;

/// An image index, as bytes with its digest.
#[derive(Debug, Clone)]
pub struct Index {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub descriptor: Descriptor,
}

/// The index over `manifests` (each descriptor carrying its platform), in the order given.
pub fn index_of(manifests: &[Descriptor]) -> Result<Index, ImageError> {
    let entries = manifests
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ImageError::BaseConfig(e.to_string()))?;
    let bytes = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": entries,
    }));
    let digest = content::sha256_digest(&bytes);
    let descriptor = Descriptor::new(MediaType::ImageIndex, bytes.len() as u64, digest.clone());
    Ok(Index {
        bytes,
        digest,
        descriptor,
    })
}

/// The OCI platform of a descriptor for `p`.
pub fn oci_platform(p: &Platform) -> Result<OciPlatform, ImageError> {
    let mut b = oci_spec::image::PlatformBuilder::default()
        .architecture(oci_spec::image::Arch::from(p.architecture.as_str()))
        .os(oci_spec::image::Os::from(p.os.as_str()));
    if !p.variant.is_empty() {
        b = b.variant(p.variant.clone());
    }
    b.build().map_err(|e| ImageError::BaseConfig(e.to_string()))
}

/// envkit's platform of a descriptor's OCI platform.
pub fn platform_of(d: &Descriptor) -> Option<Platform> {
    let p = d.platform().as_ref()?;
    Some(Platform::new(
        &p.os().to_string(),
        &p.architecture().to_string(),
        p.variant().as_deref().unwrap_or(""),
    ))
}

/// The directory a platform's output gets in a multi-platform `type=local`/`type=tar`
/// (`linux_arm64`, `linux_arm_v7`), as BuildKit names it.
pub fn platform_dir(p: &Platform) -> String {
    p.to_string().replace('/', "_")
}

/// What a platform's own tag ends in when each platform is an image of its own
/// (`--platform-tags`, a docker archive of several platforms): `-linux-arm64`, as envd
/// names them, `-linux-arm-v7` with a variant.
pub fn tag_suffix(p: &Platform) -> String {
    format!("-{}", p.to_string().replace('/', "-"))
}

/// What an image record points at.
#[derive(Debug, Clone)]
pub enum Stored {
    /// One image manifest.
    Manifest(Descriptor),
    /// An index and its manifests (each with its platform, where the index says).
    Index {
        descriptor: Descriptor,
        manifests: Vec<Descriptor>,
    },
}

impl Stored {
    /// The descriptor of what the record names.
    pub fn descriptor(&self) -> &Descriptor {
        match self {
            Stored::Manifest(d) => d,
            Stored::Index { descriptor, .. } => descriptor,
        }
    }

    /// The image manifest for `want`: the manifest itself, or the index's entry for that
    /// platform (`None` if it has none).
    pub fn manifest_for(&self, want: &Platform) -> Option<&Descriptor> {
        match self {
            Stored::Manifest(d) => Some(d),
            Stored::Index { manifests, .. } => manifests.iter().find(|m| {
                platform_of(m)
                    .is_some_and(|p| want.accepts(&p.os, &p.architecture, Some(&p.variant)))
            }),
        }
    }

    /// The platforms of an index's manifests (empty for a lone manifest).
    pub fn platforms(&self) -> Vec<Platform> {
        match self {
            Stored::Manifest(_) => Vec::new(),
            Stored::Index { manifests, .. } => manifests.iter().filter_map(platform_of).collect(),
        }
    }
}

/// Reads what `digest` (a manifest or an index in `store`) is.
pub fn stored(store: &Store, digest: &Digest) -> Result<Stored, ImageError> {
    let bytes = store.read_blob(digest)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::BaseConfig(format!("{digest} is not JSON: {e}")))?;
    let size = bytes.len() as u64;
    let index = v.get("manifests").is_some()
        || matches!(
            v["mediaType"].as_str(),
            Some(MEDIA_TYPE_INDEX | "application/vnd.docker.distribution.manifest.list.v2+json")
        );
    if !index {
        let mt = match v["mediaType"].as_str() {
            Some("application/vnd.docker.distribution.manifest.v2+json") => {
                MediaType::Other("application/vnd.docker.distribution.manifest.v2+json".into())
            }
            _ => MediaType::ImageManifest,
        };
        return Ok(Stored::Manifest(Descriptor::new(mt, size, digest.clone())));
    }
    let parsed: ImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::BaseConfig(format!("{digest} is not an image index: {e}")))?;
    let mt = match v["mediaType"].as_str() {
        Some(m) if m != MEDIA_TYPE_INDEX => MediaType::Other(m.to_string()),
        _ => MediaType::ImageIndex,
    };
    Ok(Stored::Index {
        descriptor: Descriptor::new(mt, size, digest.clone()),
        manifests: parsed.manifests().clone(),
    })
}

/// Whether a descriptor names an index.
pub fn is_index(d: &Descriptor) -> bool {
    match d.media_type() {
        MediaType::ImageIndex => true,
        MediaType::Other(m) => m == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(store: &Store, p: &Platform) -> Descriptor {
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"sha256:{}","size":1}},"layers":[]}}"#,
            super::super::MEDIA_TYPE_MANIFEST,
            "c".repeat(64)
        );
        let info = store.write_blob(bytes.as_bytes()).unwrap();
        let mut d = Descriptor::new(MediaType::ImageManifest, info.size, info.digest);
        d.set_platform(Some(oci_platform(p).unwrap()));
        d
    }

    #[test]
    fn an_index_lists_each_platforms_manifest_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let amd = manifest(&store, &Platform::linux_amd64());
        let arm = manifest(&store, &Platform::new("linux", "arm", "v7"));
        let index = index_of(&[amd.clone(), arm.clone()]).unwrap();
        let text = String::from_utf8(index.bytes.clone()).unwrap();
        assert!(text.contains(r#""variant":"v7""#), "{text}");
        assert!(text.contains(MEDIA_TYPE_INDEX), "{text}");
        store.write_blob(&index.bytes).unwrap();
        let s = stored(&store, &index.digest).unwrap();
        assert!(is_index(s.descriptor()));
        assert_eq!(
            s.platforms(),
            [Platform::linux_amd64(), Platform::new("linux", "arm", "v7")]
        );
        let found = s
            .manifest_for(&Platform::new("linux", "arm", "v7"))
            .unwrap();
        assert_eq!(found.digest(), arm.digest());
        assert!(s.manifest_for(&Platform::linux_arm64()).is_none());
        let lone = stored(&store, amd.digest()).unwrap();
        assert!(matches!(lone, Stored::Manifest(_)));
        assert!(lone.platforms().is_empty());
        assert_eq!(
            platform_dir(&Platform::new("linux", "arm", "v7")),
            "linux_arm_v7"
        );
        assert_eq!(tag_suffix(&Platform::linux_arm64()), "-linux-arm64");
        assert_eq!(
            tag_suffix(&Platform::new("linux", "arm", "v7")),
            "-linux-arm-v7"
        );
    }
}
