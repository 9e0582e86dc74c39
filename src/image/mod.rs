//! OCI image config / manifest / index assembly.
//!
//! [`ImageSpec`] is what `lower` decides about the final image (envd's `containerimage.config`):
//! the exporter combines it with the base image's config and the layers the build made.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, Digest, ImageConfiguration, MediaType};
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::content::{self, BlobInfo, ContentError, Store};

pub mod index;

/// The runtime part of an image config that a build decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSpec {
    /// `KEY=value` entries, in order.
    pub env: Vec<String>,
    /// `None` keeps the base image's entrypoint; an empty list removes it.
    pub entrypoint: Option<Vec<String>>,
    /// `None` keeps the base image's cmd.
    pub cmd: Option<Vec<String>>,
    /// Empty keeps the base image's user.
    pub user: Option<String>,
    /// Empty keeps the base image's working dir.
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// e.g. `2222/tcp`.
    pub exposed_ports: Vec<String>,
    /// An inline build cache (`--export-cache type=inline`): BuildKit's records as JSON, kept
    /// in the config as `moby.buildkit.cache.v0`. A base image's own is never carried over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_cache: Option<Vec<u8>>,
    /// Further runtime config fields as they are (`Volumes`, `Healthcheck`, `StopSignal`,
    /// `Shell`, `OnBuild`: what a Dockerfile sets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_extra: BTreeMap<String, Value>,
    /// The platform the image is for, `os/arch[/variant]` (`None`: this machine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The image's whole history as the build's frontend wrote it (a Dockerfile's: the base
    /// image's entries, then one per instruction, `empty_layer` where it makes no layer),
    /// used where its layer entries line up with the image's layers; `None`: one entry per
    /// new layer after the base image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Value>>,
}

impl ImageSpec {
    /// What [`ImageSpec::platform`] holds for an image for `p`: nothing for this machine's.
    pub fn platform_field(p: &crate::platform::Platform) -> Option<String> {
        (*p != crate::platform::Platform::host()).then(|| p.to_string())
    }

    /// The platform the image is for.
    pub fn platform(&self) -> crate::platform::Platform {
        self.platform
            .as_deref()
            .and_then(|p| crate::platform::Platform::parse(p).ok())
            .unwrap_or_default()
    }
}

/// OCI image manifest media type.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip-compressed layer media type.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Errors while assembling an image.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("base image config: {0}")]
    BaseConfig(String),
    #[error("base image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error("unsupported layer media type {0}")]
    LayerMediaType(String),
    #[error(transparent)]
    Content(#[from] ContentError),
}

/// A layer the build made: its compressed blob and the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLayer {
    /// Descriptor of the compressed blob (in the content store).
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar (goes into `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// What made the layer (history `created_by`), e.g. the step's command.
    pub created_by: Option<String>,
}

/// The final image: config and manifest, as bytes with their digests.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub config_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    /// Descriptor of the manifest (OCI manifest media type, the image's platform).
    pub manifest_descriptor: Descriptor,
    /// Layer descriptors in the manifest, base first.
    pub layers: Vec<Descriptor>,
}

impl Assembled {
    /// Writes the config and manifest into the content store (layers must already be there).
    pub fn store(&self, store: &Store) -> Result<(BlobInfo, BlobInfo), ContentError> {
        let c = store.write_blob(&self.config_bytes)?;
        let m = store.write_blob(&self.manifest_bytes)?;
        Ok((c, m))
    }
}

/// JSON with object keys sorted at every level, no whitespace: the same input always gives the
/// same bytes (oci-spec keeps labels in a `HashMap`).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // Serialising a `Value` cannot fail (all keys are strings).
    serde_json::to_vec(&sort(value)).unwrap_or_default()
}

pub use crate::timefmt::rfc3339;

/// The creation time to record: `$SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
pub fn created_now() -> u64 {
    if let Some(s) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return s;
    }
    unix_now()
}

/// Seconds since the epoch, by the wall clock (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The OCI media type for a base layer (Docker v2 layer types map to their OCI equivalents).
pub fn oci_layer_media_type(mt: &MediaType) -> Result<MediaType, ImageError> {
    let s = mt.to_string();
    let oci = match s.as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MEDIA_TYPE_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar" => MEDIA_TYPE_LAYER_TAR,
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.v1.tar+zstd" => return Ok(mt.clone()),
        other => return Err(ImageError::LayerMediaType(other.to_string())),
    };
    Ok(MediaType::from(oci))
}

/// `KEY=value` list with `updates` applied: a key already present is replaced in place, new
/// keys are appended in order.
fn merge_env(base: &[String], updates: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut out: Vec<String> = base.to_vec();
    for u in updates {
        let k = key(u);
        match out.iter_mut().find(|e| key(e) == k) {
            Some(slot) => *slot = u.clone(),
            None => out.push(u.clone()),
        }
    }
    out
}

/// Builds the image config and manifest for `base` plus `new_layers`.
///
/// The runtime config starts from the base image's and takes from `spec` whatever it sets:
/// env entries replace same-named ones or are appended; entrypoint / cmd / user / working dir
/// replace the base's when set (setting an entrypoint without a cmd clears the base's cmd, as
/// Docker does); labels are merged over the base's; exposed ports are added. `rootfs.diff_ids`
/// are the base's followed by the new layers'; one history entry is added per new layer.
/// The platform is the spec's. The JSON is canonical (sorted keys), so equal inputs give
/// equal digests.
pub fn assemble(
    base: &ImageConfiguration,
    spec: &ImageSpec,
    base_layers: &[Descriptor],
    new_layers: &[NewLayer],
    created: u64,
) -> Result<Assembled, ImageError> {
    let steps: Vec<Option<NewLayer>> = new_layers.iter().cloned().map(Some).collect();
    assemble_steps(base, spec, base_layers, &steps, created)
}

/// [`assemble`] from every step the result has over its base image, `None` for one that
/// changed nothing (it adds no layer; a frontend's history entry for it is marked
/// `empty_layer`).
pub fn assemble_steps(
    base: &ImageConfiguration,
    spec: &ImageSpec,
    base_layers: &[Descriptor],
    steps: &[Option<NewLayer>],
    created: u64,
) -> Result<Assembled, ImageError> {
    let new_layers: Vec<NewLayer> = steps.iter().flatten().cloned().collect();
    let new_layers = &new_layers[..];
    let created = rfc3339(created);
    let mut cfg = serde_json::to_value(base).map_err(|e| ImageError::BaseConfig(e.to_string()))?;
    let Some(obj) = cfg.as_object_mut() else {
        return Err(ImageError::BaseConfig("not a JSON object".into()));
    };

    // Runtime config.
    let mut rc = match obj.remove("config") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let env = merge_env(&strings(rc.get("Env")), &spec.env);
    if !env.is_empty() {
        rc.insert("Env".into(), json!(env));
    }
    if let Some(ep) = &spec.entrypoint {
        if ep.is_empty() {
            rc.remove("Entrypoint");
        } else {
            rc.insert("Entrypoint".into(), json!(ep));
        }
        if spec.cmd.is_none() {
            rc.remove("Cmd");
        }
    }
    if let Some(cmd) = &spec.cmd {
        rc.insert("Cmd".into(), json!(cmd));
    }
    if let Some(user) = spec.user.as_ref().filter(|u| !u.is_empty()) {
        rc.insert("User".into(), json!(user));
    }
    if let Some(wd) = spec.working_dir.as_ref().filter(|w| !w.is_empty()) {
        rc.insert("WorkingDir".into(), json!(wd));
    }
    if !spec.labels.is_empty() {
        let mut labels = match rc.remove("Labels") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in &spec.labels {
            labels.insert(k.clone(), json!(v));
        }
        rc.insert("Labels".into(), Value::Object(labels));
    }
    if !spec.exposed_ports.is_empty() {
        let mut ports = match rc.remove("ExposedPorts") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for p in &spec.exposed_ports {
            let p = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            ports.insert(p, json!({}));
        }
        rc.insert("ExposedPorts".into(), Value::Object(ports));
    }
    for (k, v) in &spec.config_extra {
        rc.insert(k.clone(), v.clone());
    }
    obj.insert("config".into(), Value::Object(rc));

    // rootfs.
    let base_diff_ids = base.rootfs().diff_ids();
    if base_diff_ids.len() != base_layers.len() {
        return Err(ImageError::LayerCount {
            layers: base_layers.len(),
            diff_ids: base_diff_ids.len(),
        });
    }
    let mut diff_ids: Vec<Value> = base_diff_ids.iter().map(|d| json!(d)).collect();
    diff_ids.extend(new_layers.iter().map(|l| json!(l.diff_id.to_string())));
    obj.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );

    // History: keep the base's; pad it so that its non-empty entries match the base layers.
    let mut history: Vec<Value> = match obj.remove("history") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let non_empty = history
        .iter()
        .filter(|h| h.get("empty_layer").and_then(Value::as_bool) != Some(true))
        .count();
    for _ in non_empty..base_layers.len() {
        history.push(json!({"comment": "base layer (no history in the base image)"}));
    }
    for l in new_layers {
        let mut h = Map::new();
        h.insert("created".into(), json!(created));
        if let Some(by) = &l.created_by {
            h.insert("created_by".into(), json!(by));
        }
        h.insert("comment".into(), json!("envkit"));
        history.push(Value::Object(h));
    }
    if let Some(h) = spec
        .history
        .as_ref()
        .and_then(|h| frontend_history(h, base_layers.len(), steps, &created))
    {
        history = h;
    }
    if !history.is_empty() {
        obj.insert("history".into(), Value::Array(history));
    }
    obj.insert("created".into(), json!(created));
    obj.remove(crate::bkcache::layout::INLINE_KEY);
    if let Some(records) = &spec.inline_cache {
        use base64::Engine as _;
        obj.insert(
            crate::bkcache::layout::INLINE_KEY.into(),
            json!(base64::engine::general_purpose::STANDARD.encode(records)),
        );
    }
    let platform = spec.platform();
    obj.insert("architecture".into(), json!(platform.architecture));
    obj.insert("os".into(), json!(platform.os));
    if platform.variant.is_empty() {
        obj.remove("variant");
    } else {
        obj.insert("variant".into(), json!(platform.variant));
    }

    let config_bytes = canonical_json(&cfg);
    let config_digest = content::sha256_digest(&config_bytes);

    let mut layers = Vec::with_capacity(base_layers.len() + new_layers.len());
    for l in base_layers {
        let mut d = l.clone();
        d.set_media_type(oci_layer_media_type(l.media_type())?);
        layers.push(d);
    }
    layers.extend(new_layers.iter().map(|l| l.descriptor.clone()));
    let layer_values = layers
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ImageError::BaseConfig(e.to_string()))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layer_values,
    });
    let manifest_bytes = canonical_json(&manifest);
    let manifest_digest = content::sha256_digest(&manifest_bytes);
    let mut manifest_descriptor = Descriptor::new(
        MediaType::ImageManifest,
        manifest_bytes.len() as u64,
        manifest_digest.clone(),
    );
    manifest_descriptor.set_platform(Some(index::oci_platform(&platform)?));
    Ok(Assembled {
        config_bytes,
        config_digest,
        manifest_bytes,
        manifest_digest,
        manifest_descriptor,
        layers,
    })
}

/// A frontend's whole history (`ImageSpec::history`) over `base` base layers and `steps`,
/// where its entries with a layer are exactly one per base layer and one per step: a step
/// that changed nothing gets `empty_layer`, and an entry without a time gets `created`.
/// `None` where they do not line up (the caller keeps envkit's own entries).
fn frontend_history(
    history: &[Value],
    base: usize,
    steps: &[Option<NewLayer>],
    created: &str,
) -> Option<Vec<Value>> {
    let with_layer = history
        .iter()
        .filter(|h| h.get("empty_layer").and_then(Value::as_bool) != Some(true))
        .count();
    if with_layer != base + steps.len() {
        return None;
    }
    let mut out = Vec::with_capacity(history.len());
    let mut layer = 0;
    for h in history {
        let mut h = h.clone();
        let obj = h.as_object_mut()?;
        if obj.get("empty_layer").and_then(Value::as_bool) != Some(true) {
            if layer >= base && steps.get(layer - base).is_some_and(Option::is_none) {
                obj.insert("empty_layer".into(), json!(true));
            }
            layer += 1;
        }
        if !obj.contains_key("created") {
            obj.insert("created".into(), json!(created));
        }
        out.push(h);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> (ImageConfiguration, Vec<Descriptor>) {
        let cfg: ImageConfiguration = serde_json::from_str(&format!(
            r#"{{"architecture":"amd64","os":"linux",
            "config":{{"Env":["PATH=/usr/bin","LANG=C"],"Cmd":["sh"],"Labels":{{"a":"1"}}}},
            "rootfs":{{"type":"layers","diff_ids":["sha256:{d}"]}},
            "history":[{{"created_by":"base"}}]}}"#,
            d = "d".repeat(64)
        ))
        .unwrap();
        let layer = Descriptor::new(
            MediaType::Other("application/vnd.docker.image.rootfs.diff.tar.gzip".into()),
            10,
            content::sha256_digest(b"base layer"),
        );
        (cfg, vec![layer])
    }

    fn new_layer() -> NewLayer {
        NewLayer {
            descriptor: Descriptor::new(
                MediaType::ImageLayerGzip,
                20,
                content::sha256_digest(b"new gz"),
            ),
            diff_id: content::sha256_digest(b"new tar"),
            created_by: Some("RUN echo hi".into()),
        }
    }

    #[test]
    fn an_empty_entrypoint_clears_the_bases_entrypoint_and_cmd() {
        let (mut cfg, layers) = base();
        let mut rc = cfg.config().clone().unwrap_or_default();
        rc.set_entrypoint(Some(vec!["/entry".into()]));
        rc.set_cmd(Some(vec!["python3".into()]));
        cfg.set_config(Some(rc));
        let spec = ImageSpec {
            entrypoint: Some(vec![]),
            ..ImageSpec::default()
        };
        let a = assemble(&cfg, &spec, &layers, &[], 0).unwrap();
        let c: Value = serde_json::from_slice(&a.config_bytes).unwrap();
        assert!(c["config"].get("Entrypoint").is_none(), "{c}");
        assert!(c["config"].get("Cmd").is_none(), "{c}");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn assembles_config_and_manifest() {
        let (cfg, layers) = base();
        let mut spec = ImageSpec {
            env: vec!["LANG=C.UTF-8".into(), "GREETING=hi".into()],
            entrypoint: Some(vec!["python3".into()]),
            user: Some("envd".into()),
            working_dir: Some("/home/envd".into()),
            exposed_ports: vec!["2222".into()],
            ..ImageSpec::default()
        };
        spec.labels.insert("b".into(), "2".into());
        let a = assemble(&cfg, &spec, &layers, &[new_layer()], 1_700_000_000).unwrap();

        let c: Value = serde_json::from_slice(&a.config_bytes).unwrap();
        assert_eq!(
            c["config"]["Env"],
            json!(["PATH=/usr/bin", "LANG=C.UTF-8", "GREETING=hi"])
        );
        assert_eq!(c["config"]["Entrypoint"], json!(["python3"]));
        assert!(
            c["config"].get("Cmd").is_none(),
            "entrypoint clears base cmd"
        );
        assert_eq!(c["config"]["User"], "envd");
        assert_eq!(c["config"]["WorkingDir"], "/home/envd");
        assert_eq!(c["config"]["Labels"], json!({"a": "1", "b": "2"}));
        assert_eq!(c["config"]["ExposedPorts"], json!({"2222/tcp": {}}));
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(
            c["rootfs"]["diff_ids"][1],
            content::sha256_digest(b"new tar").to_string()
        );
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(c["history"][1]["created_by"], "RUN echo hi");
        assert_eq!(c["created"], "2023-11-14T22:13:20Z");
        assert_eq!(c["architecture"], "amd64");
        // The config parses back as an OCI config.
        let _: ImageConfiguration = serde_json::from_slice(&a.config_bytes).unwrap();

        let m: Value = serde_json::from_slice(&a.manifest_bytes).unwrap();
        assert_eq!(m["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(m["config"]["digest"], a.config_digest.to_string());
        assert_eq!(m["config"]["size"], a.config_bytes.len());
        assert_eq!(m["layers"][0]["mediaType"], MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(
            m["layers"][1]["digest"],
            new_layer().descriptor.digest().to_string()
        );
        assert_eq!(a.manifest_digest, content::sha256_digest(&a.manifest_bytes));
        assert_eq!(a.manifest_descriptor.size(), a.manifest_bytes.len() as u64);
    }

    #[test]
    fn deterministic_and_keeps_base_when_unset() {
        let (cfg, layers) = base();
        let mut spec = ImageSpec::default();
        for i in 0..20 {
            spec.labels.insert(format!("k{i}"), format!("v{i}"));
        }
        let a = assemble(&cfg, &spec, &layers, &[new_layer()], 5).unwrap();
        let b = assemble(&cfg, &spec, &layers, &[new_layer()], 5).unwrap();
        assert_eq!(a.config_bytes, b.config_bytes);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        let c: Value = serde_json::from_slice(&a.config_bytes).unwrap();
        assert_eq!(c["config"]["Cmd"], json!(["sh"]));
        assert_eq!(c["config"]["Env"], json!(["PATH=/usr/bin", "LANG=C"]));
    }

    #[test]
    fn layer_count_mismatch_is_an_error() {
        let (cfg, _) = base();
        assert!(matches!(
            assemble(&cfg, &ImageSpec::default(), &[], &[], 0),
            Err(ImageError::LayerCount { .. })
        ));
    }

    #[test]
    fn history_is_padded_for_base_layers() {
        let (cfg, layers) = base();
        let mut v = serde_json::to_value(&cfg).unwrap();
        v.as_object_mut().unwrap().remove("history");
        let cfg: ImageConfiguration = serde_json::from_value(v).unwrap();
        let a = assemble(&cfg, &ImageSpec::default(), &layers, &[new_layer()], 0).unwrap();
        let c: Value = serde_json::from_slice(&a.config_bytes).unwrap();
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
    }
    /// A frontend's history is kept where its layer entries are one per layer: a step that
    /// changed nothing is marked `empty_layer`, times are filled in; else it is not used.
    #[test]
    fn a_frontends_history_lines_up_with_the_layers() {
        let h = vec![
            json!({"created_by": "base"}),
            json!({"created_by": "ENV A=1", "empty_layer": true}),
            json!({"created_by": "RUN a"}),
            json!({"created_by": "RUN true"}),
        ];
        let steps = vec![Some(new_layer()), None];
        let out = frontend_history(&h, 1, &steps, "T").unwrap();
        assert_eq!(out[2]["empty_layer"], Value::Null);
        assert_eq!(out[3]["empty_layer"], true);
        assert!(out.iter().all(|e| e["created"] == "T"));
        assert!(frontend_history(&h, 0, &steps, "T").is_none());
        let (cfg, layers) = base();
        let spec = ImageSpec {
            history: Some(h),
            ..ImageSpec::default()
        };
        let a = assemble_steps(&cfg, &spec, &layers, &steps, 0).unwrap();
        let c: Value = serde_json::from_slice(&a.config_bytes).unwrap();
        assert_eq!(c["history"].as_array().map(Vec::len), Some(4));
        assert_eq!(a.layers.len(), 2);
    }
}
