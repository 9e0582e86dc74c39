//! A cache in an OCI image-layout directory (`type=local`), as buildkitd writes one: `index.json`
//! names a manifest by tag (`org.opencontainers.image.ref.name`); the manifest is an image
//! manifest whose config is the cache config (BuildKit's default since v0.21), or an index
//! that lists the config beside the layers (the older form). Every file read here is
//! untrusted: sizes are capped and digests checked.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::BkCacheError;
use super::config::{self, CacheConfig};

/// Caps on the small files of a cache (its layers are checked as they are ingested).
const MAX_INDEX: u64 = 4 << 20;
/// The largest cache config read (buildkitd's for large builds are a few MiB).
pub const MAX_CONFIG: u64 = 64 << 20;

/// A descriptor as OCI writes it (only what a cache uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Desc {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Desc>,
}

#[derive(Deserialize)]
struct ManifestJson {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
}

/// A cache read from somewhere: its config and the descriptors of the blobs it names.
#[derive(Debug)]
pub struct Cache {
    pub config: CacheConfig,
    /// Layer descriptors by blob digest.
    pub blobs: HashMap<String, Desc>,
    /// What the cache was found as, for messages (`DIR:tag`).
    pub name: String,
}

fn bad(what: impl std::fmt::Display) -> BkCacheError {
    BkCacheError::Config(what.to_string())
}

/// The file of a blob in a layout directory (the digest must be a sha256 one).
pub fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, BkCacheError> {
    if !config::is_sha256(digest) {
        return Err(bad(format!("{digest:?} is not a sha256 digest")));
    }
    Ok(dir.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

/// Reads a small file with a cap; with `digest`, the bytes must have it.
fn read_capped(path: &Path, cap: u64, digest: Option<&str>) -> Result<Vec<u8>, BkCacheError> {
    let f = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > cap {
        return Err(bad(format!(
            "{} is larger than {cap} bytes",
            path.display()
        )));
    }
    if let Some(d) = digest {
        let have = super::keys::digest_of(&buf);
        if have != d {
            return Err(bad(format!(
                "{} has digest {have}, not {d}",
                path.display()
            )));
        }
    }
    Ok(buf)
}

/// Reads the cache tagged `tag` (or the manifest `digest`) in the layout directory `dir`.
pub fn read(dir: &Path, tag: &str, digest: Option<&str>) -> Result<Cache, BkCacheError> {
    let name = format!("{}:{}", dir.display(), digest.unwrap_or(tag));
    let index: IndexJson =
        serde_json::from_slice(&read_capped(&dir.join("index.json"), MAX_INDEX, None)?)
            .map_err(|e| bad(format!("{}/index.json: {e}", dir.display())))?;
    let found = index.manifests.iter().find(|m| match digest {
        Some(d) => m.digest == d,
        None => {
            m.annotations
                .get("org.opencontainers.image.ref.name")
                .map(String::as_str)
                == Some(tag)
        }
    });
    let Some(m) = found else {
        return Err(bad(format!(
            "{name}: no such cache in {}/index.json",
            dir.display()
        )));
    };
    let manifest_bytes = read_capped(&blob_path(dir, &m.digest)?, MAX_INDEX, Some(&m.digest))?;
    let (cfg, layers) = parse_manifest(&name, &manifest_bytes)?;
    let cfg_bytes = read_capped(
        &blob_path(dir, &cfg.digest)?,
        MAX_CONFIG.min(cfg.size),
        Some(&cfg.digest),
    )?;
    Cache::new(&name, &cfg_bytes, layers)
}

/// The config descriptor and the layer descriptors of a cache manifest (the image form, or the
/// older index form that lists the config among its manifests).
pub fn parse_manifest(name: &str, bytes: &[u8]) -> Result<(Desc, Vec<Desc>), BkCacheError> {
    let m: ManifestJson =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("{name}: manifest: {e}")))?;
    match m.config {
        Some(c) if c.media_type == config::MEDIA_TYPE => Ok((c, m.layers)),
        _ => {
            let mut cfg = None;
            let mut layers = Vec::new();
            for d in m.manifests {
                if d.media_type == config::MEDIA_TYPE {
                    cfg = Some(d);
                } else {
                    layers.push(d);
                }
            }
            let Some(c) = cfg else {
                return Err(bad(format!(
                    "{name}: {} is not a BuildKit cache (no {} config)",
                    if m.media_type.is_empty() {
                        "the manifest"
                    } else {
                        &m.media_type
                    },
                    config::MEDIA_TYPE
                )));
            };
            Ok((c, layers))
        }
    }
}

/// The image config field that holds an inline cache (BuildKit's `type=inline`): the records
/// as JSON, base64-encoded, whose results are indexes into the image's own layers.
pub const INLINE_KEY: &str = "moby.buildkit.cache.v0";

/// The inline cache an image carries (its config's [`INLINE_KEY`]), as a cache whose layers
/// are the image's (`layers`, from its manifest); `None` when it carries none.
pub fn inline(
    name: &str,
    image_config: &[u8],
    layers: &[Desc],
) -> Result<Option<Cache>, BkCacheError> {
    let cfg: serde_json::Value = serde_json::from_slice(image_config)
        .map_err(|e| bad(format!("{name}: image config: {e}")))?;
    let Some(encoded) = cfg.get(INLINE_KEY) else {
        return Ok(None);
    };
    let Some(encoded) = encoded.as_str() else {
        return Err(bad(format!("{name}: {INLINE_KEY} is not a string")));
    };
    use base64::Engine as _;
    let records = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad(format!("{name}: {INLINE_KEY}: {e}")))?;
    let records: serde_json::Value =
        serde_json::from_slice(&records).map_err(|e| bad(format!("{name}: {INLINE_KEY}: {e}")))?;
    let diff_ids: Vec<&str> = cfg
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map(|a| a.iter().filter_map(|d| d.as_str()).collect())
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(bad(format!(
            "{name}: the image's config lists {} layers and its manifest {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    // When each layer was made, from the history entries that made layers.
    let created: Vec<String> = cfg
        .get("history")
        .and_then(|h| h.as_array())
        .map(|h| {
            h.iter()
                .filter(|e| e.get("empty_layer").and_then(|b| b.as_bool()) != Some(true))
                .map(|e| {
                    e.get("created")
                        .and_then(|c| c.as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    let cache_layers: Vec<serde_json::Value> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!({
                "blob": l.digest,
                "parent": i as i64 - 1,
                "annotations": {
                    "mediaType": l.media_type,
                    "diffID": diff_ids[i],
                    "size": l.size,
                    "createdAt": created.get(i).cloned().unwrap_or_default(),
                },
            })
        })
        .collect();
    let config = serde_json::json!({"layers": cache_layers, "records": records});
    let bytes = serde_json::to_vec(&config).map_err(|e| bad(format!("{name}: {e}")))?;
    Cache::new(name, &bytes, layers.to_vec()).map(Some)
}

impl Cache {
    /// A cache from its config's bytes and its manifest's layer descriptors.
    pub fn new(name: &str, config_bytes: &[u8], layers: Vec<Desc>) -> Result<Cache, BkCacheError> {
        let config = CacheConfig::parse(config_bytes).map_err(|e| bad(format!("{name}: {e}")))?;
        let mut blobs = HashMap::new();
        for l in layers {
            if !config::is_sha256(&l.digest) {
                return Err(bad(format!("{name}: layer digest {:?}", l.digest)));
            }
            blobs.insert(l.digest.clone(), l);
        }
        Ok(Cache {
            config,
            blobs,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_blob(dir: &Path, bytes: &[u8]) -> String {
        let d = super::super::keys::digest_of(bytes);
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        std::fs::write(blob_path(dir, &d).expect("path"), bytes).expect("write");
        d
    }

    #[test]
    fn an_inline_cache_is_read_from_an_image_config_and_bad_ones_are_refused() {
        use base64::Engine as _;
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let layers = vec![
            Desc {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: d('a'),
                size: 10,
                annotations: Default::default(),
            },
            Desc {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: d('b'),
                size: 20,
                annotations: Default::default(),
            },
        ];
        let records = format!(
            r#"[{{"digest":"{}"}},{{"layers":[{{"layer":1}}],"digest":"{}","inputs":[[{{"link":0}}]]}}]"#,
            d('c'),
            d('e')
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&records);
        let cfg = |key: &str, ids: usize| {
            let ids: Vec<String> = (0..ids).map(|i| d(['1', '2', '3'][i])).collect();
            serde_json::to_vec(&serde_json::json!({
                "rootfs": {"type": "layers", "diff_ids": ids},
                "history": [{"created": "2026-01-01T00:00:00Z"}, {"empty_layer": true}, {}],
                key: b64,
            }))
            .expect("json")
        };
        let c = inline("img", &cfg(INLINE_KEY, 2), &layers)
            .expect("parse")
            .expect("has one");
        assert_eq!(c.config.records.len(), 2);
        assert_eq!(c.config.layer_chain(1), vec![0, 1]);
        assert_eq!(c.config.layers[1].blob, d('b'));
        assert_eq!(c.blobs.len(), 2);
        assert!(
            inline("img", &cfg("other", 2), &layers)
                .expect("parse")
                .is_none()
        );
        let e = inline("img", &cfg(INLINE_KEY, 1), &layers).expect_err("count");
        assert!(e.to_string().contains("lists 1 layers"), "{e}");
        let bad = serde_json::to_vec(&serde_json::json!({INLINE_KEY: "%%%"})).expect("json");
        assert!(inline("img", &bad, &layers).is_err());
        // Records that point past the image's layers are refused by the config's checks.
        let far = base64::engine::general_purpose::STANDARD.encode(format!(
            r#"[{{"layers":[{{"layer":7}}],"digest":"{}"}}]"#,
            d('c')
        ));
        let cfg2 = serde_json::to_vec(&serde_json::json!({
            "rootfs": {"diff_ids": [d('1'), d('2')]},
            INLINE_KEY: far,
        }))
        .expect("json");
        assert!(inline("img", &cfg2, &layers).is_err());
    }

    #[test]
    fn reads_buildkitds_local_cache_and_refuses_tampering() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bkcache/chain3");
        let t = tempfile::tempdir().expect("tmp");
        let cfg = std::fs::read(golden.join("cacheconfig.json")).expect("config");
        write_blob(t.path(), &cfg);
        let man = std::fs::read(golden.join("manifest.json")).expect("manifest");
        write_blob(t.path(), &man);
        std::fs::write(
            t.path().join("index.json"),
            std::fs::read(golden.join("index.json")).expect("index"),
        )
        .expect("index");
        let c = read(t.path(), "latest", None).expect("read");
        assert_eq!(c.config.records.len(), 5);
        assert_eq!(c.blobs.len(), 4);
        assert!(
            read(t.path(), "other", None)
                .expect_err("tag")
                .to_string()
                .contains("no such cache")
        );
        // A config whose bytes are not the manifest's digest is refused.
        let cfg_digest = super::super::keys::digest_of(&cfg);
        std::fs::write(blob_path(t.path(), &cfg_digest).expect("path"), b"{}").expect("tamper");
        let e = read(t.path(), "latest", None)
            .expect_err("tampered")
            .to_string();
        assert!(e.contains("has digest"), "{e}");
    }
}
