//! `--export-cache` for the embedded engine: the solved graph's BuildKit keys as records
//! (`bkcache::config::Builder`), each built result's layers (the base image's blobs as pulled,
//! one layer per snapshot on top: the step's diff, or BuildKit's empty layer where the step
//! changed nothing), written as BuildKit writes a cache.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use oci_spec::image::Descriptor;

use super::{Engine, EngineError, Solved};
use crate::bkcache::config::{self, Builder};
use crate::bkcache::keys;
use crate::bkcache::layout::{self, Desc};
use crate::bkcache::matching;
use crate::bkcache::spec::{Export, Location, Mode};
use crate::ops::import::Role;
use crate::pb;
use crate::progress::Event;
use crate::snapshot::SnapRef;

/// One layer of an exported result.
#[derive(Clone)]
struct LayerOut {
    desc: Descriptor,
    diff_id: String,
}

impl Engine {
    /// Exports the cache of `solved` as each of `exports` asks. A failed export fails the
    /// build unless it says `ignore-error=true` (then it is a warning).
    pub async fn export_cache(
        &self,
        solved: &Solved,
        exports: &[Export],
    ) -> Result<(), EngineError> {
        for e in exports {
            if let Err(err) = self.export_one(solved, e).await {
                if e.ignore_error {
                    self.reporter.event(Event::Note(format!(
                        "warning: exporting cache ({}): {err}",
                        e.kind
                    )));
                } else {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    async fn export_one(&self, solved: &Solved, e: &Export) -> Result<(), EngineError> {
        let fail = |m: String| EngineError::Output(format!("exporting cache ({}): {m}", e.kind));
        if e.location == Location::Inline {
            // Written into the image's config before the image was made (`inline_cache`).
            return Ok(());
        }
        let opts = crate::export::CompressionOpts {
            kind: crate::export::Compression::parse(&e.compression)
                .ok_or_else(|| fail(format!("compression {}", e.compression)))?,
            level: e.compression_level.map(|l| l as i32),
            force: e.force_compression,
        };
        opts.validate().map_err(fail)?;
        let created = crate::timefmt::rfc3339_nano(std::time::SystemTime::now());
        let (cfg, layer_descs, made) = self
            .cache_config(solved, e.mode, Some(&opts), &created)
            .await?;
        let blobs: Vec<LayerOut> = {
            let mut seen = std::collections::BTreeSet::new();
            cfg.layers
                .iter()
                .filter(|l| seen.insert(l.blob.clone()))
                .filter_map(|l| layer_descs.get(&l.blob).cloned())
                .collect()
        };
        let records = cfg.records.len();
        let made_manifest = manifest(&cfg, &blobs, e.image_manifest, &created).map_err(fail)?;
        match &e.location {
            Location::Local { dir, tag, .. } => {
                let (store, dir, tag) = (self.worker.content.clone(), dir.clone(), tag.clone());
                tokio::task::spawn_blocking(move || {
                    write_local(&dir, &tag, &made_manifest, &blobs, &store)
                })
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(fail)?;
            }
            Location::Registry { reference } => {
                if !e.image_manifest {
                    return Err(fail(
                        "image-manifest=false (the index form) is written to directories only"
                            .into(),
                    ));
                }
                let store = &self.worker.content;
                store.write_blob(&made_manifest.config)?;
                let info = store.write_blob(&made_manifest.manifest)?;
                let desc = Descriptor::new(
                    oci_spec::image::MediaType::ImageManifest,
                    info.size,
                    info.digest,
                );
                let pushed = self.worker.registry.push(reference, &desc, store).await;
                pushed.map_err(|e| fail(e.to_string()))?;
            }
            Location::Inline => {}
        }
        self.reporter.event(Event::Note(format!(
            "exported cache ({}): {records} records, {made} results",
            e.kind
        )));
        Ok(())
    }

    /// BuildKit's records of the solved graph, and the layers of the results `mode` keeps:
    /// compressed as `opts` asks, or (`None`, for an inline cache) the image's own layers as
    /// they are, steps that changed nothing left out as in the image.
    async fn cache_config(
        &self,
        solved: &Solved,
        mode: Mode,
        opts: Option<&crate::export::CompressionOpts>,
        created: &str,
    ) -> Result<(config::CacheConfig, HashMap<String, LayerOut>, usize), EngineError> {
        let g = &solved.graph;
        let mut images = self.image_keys(g, &solved.locals).await;
        let used = matching::used_outputs(g);
        let mut b = Builder::default();
        let mut recs: Vec<BTreeMap<i64, Vec<usize>>> = vec![BTreeMap::new(); g.vertices.len()];
        let mut layer_descs: HashMap<String, LayerOut> = HashMap::new();
        let mut made = 0usize;
        for (vi, v) in g.vertices.iter().enumerate() {
            let maps = match keys::op_keys(&v.op, &mut |s| {
                use crate::bkcache::matching::Resolver as _;
                images.source(&v.op, s)
            }) {
                Ok(m) => m,
                Err(_) => continue,
            };
            // A skipped vertex was not built here; its result may still be in the store.
            let skipped = matches!(
                solved.plan.as_ref().and_then(|p| p.roles.get(vi)),
                Some(Role::Skip)
            );
            let real: Option<crate::ops::Res> = match solved.results.get(&vi) {
                Some(r) if !skipped => Some(r.clone()),
                Some(r) => self
                    .worker
                    .snapshots
                    .lookup_quiet(&r.key)
                    .ok()
                    .flatten()
                    .map(|snap| crate::ops::Res {
                        snap,
                        key: r.key.clone(),
                        more: Default::default(),
                    }),
                None => None,
            };
            let wants_result = match mode {
                Mode::Max => !matches!(v.op.op, Some(pb::op::Op::Source(_))),
                Mode::Min => Some(vi) == g.head,
            };
            for &out in &used[vi] {
                let mut here = Vec::new();
                for km in &maps {
                    let key = keys::root_key(&km.digest, out);
                    let mut inputs = Vec::with_capacity(v.op.inputs.len());
                    for (i, (inp, &from)) in v.op.inputs.iter().zip(&v.inputs).enumerate() {
                        let sel = km
                            .deps
                            .get(i)
                            .and_then(|d| d.selector.clone())
                            .unwrap_or_default();
                        let mut links: Vec<(String, usize)> = recs[from]
                            .get(&inp.index)
                            .map(|rs| rs.iter().map(|&r| (sel.clone(), r)).collect())
                            .unwrap_or_default();
                        // The input's content hash, where it can be had: a key of its own.
                        if let Some(paths) = km.deps.get(i).and_then(|d| d.content.as_ref()) {
                            use crate::bkcache::matching::Resolver as _;
                            if let Some(h) =
                                super::blocking(|| images.content(from, inp.index, paths))
                            {
                                links.push((
                                    String::new(),
                                    b.record(&keys::root_key(&h, -1), Vec::new()),
                                ));
                            }
                        }
                        inputs.push(links);
                    }
                    if inputs.iter().any(Vec::is_empty) {
                        continue; // an input without a key (a local directory): no record
                    }
                    here.push(b.record(&key, inputs));
                }
                if here.is_empty() || !wants_result {
                    recs[vi].insert(out, here);
                    continue;
                }
                if let Some(res) = real.as_ref().and_then(|r| r.output(out)) {
                    let layers = self
                        .result_layers(&res.snap, opts, &mut layer_descs)
                        .await?;
                    let blobs: Vec<String> =
                        layers.iter().map(|l| l.desc.digest().to_string()).collect();
                    if let Some(top) = b.chain(&blobs) {
                        for &r in &here {
                            b.result(r, top, created);
                        }
                        made += 1;
                    }
                }
                recs[vi].insert(out, here);
            }
        }
        Ok((b.finish(), layer_descs, made))
    }

    /// The inline cache of the solved graph (`--export-cache type=inline`): the records of
    /// its final result (BuildKit's records JSON, results as indexes into the image's
    /// layers), for the image config's `moby.buildkit.cache.v0`. `None` (with a warning)
    /// when the result has no layers to point at.
    pub async fn inline_cache(&self, solved: &Solved) -> Result<Option<Vec<u8>>, EngineError> {
        // The image's own time, so that the image stays reproducible.
        let created = crate::timefmt::rfc3339_nano(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(super::reproducible_epoch().max(0) as u64),
        );
        let (cfg, _, _) = self.cache_config(solved, Mode::Min, None, &created).await?;
        let mut image = Vec::new();
        let mut seen = HashMap::new();
        image.extend(
            self.result_layers(&solved.snap, None, &mut seen)
                .await?
                .into_iter()
                .map(|l| l.desc.digest().to_string()),
        );
        let records = inline_records(&cfg, &image).map_err(EngineError::Output)?;
        if records.is_empty() {
            self.reporter.event(Event::Note(
                "warning: exporting cache (inline): the result has no layers to point at".into(),
            ));
            return Ok(None);
        }
        let n = records.len();
        let bytes = serde_json::to_vec(&records).map_err(|e| EngineError::Output(e.to_string()))?;
        self.reporter.event(Event::Note(format!(
            "exported cache (inline): {n} records in the image's config"
        )));
        Ok(Some(bytes))
    }

    /// The layers of a result: its base image's as pulled, then one per own snapshot.
    async fn result_layers(
        &self,
        snap: &SnapRef,
        opts: Option<&crate::export::CompressionOpts>,
        seen: &mut HashMap<String, LayerOut>,
    ) -> Result<Vec<LayerOut>, EngineError> {
        let w = &self.worker;
        let mut out = Vec::new();
        if let Some(base) = &snap.base {
            let digest = crate::content::parse_digest(&base.config_digest)?;
            let cfg: oci_spec::image::ImageConfiguration =
                serde_json::from_slice(&w.content.read_blob(&digest)?)
                    .map_err(|e| EngineError::BaseConfig(e.to_string()))?;
            let ids = cfg.rootfs().diff_ids().clone();
            for (l, id) in base.layers.iter().zip(ids) {
                let lo = LayerOut {
                    desc: l.clone(),
                    diff_id: id,
                };
                seen.insert(l.digest().to_string(), lo.clone());
                out.push(lo);
            }
        }
        for id in snap.own_layers() {
            let lo = match (super::image::layer_for(w, id).await?, opts) {
                (Some(l), None) => LayerOut {
                    desc: l.descriptor,
                    diff_id: l.diff_id.to_string(),
                },
                (None, None) => continue,
                (Some(l), Some(opts)) => {
                    let store = w.content.clone();
                    let (d, o) = (l.descriptor.clone(), *opts);
                    let desc =
                        tokio::task::spawn_blocking(move || crate::export::convert(&store, &d, &o))
                            .await
                            .map_err(|e| EngineError::Output(e.to_string()))??;
                    LayerOut {
                        desc,
                        diff_id: l.diff_id.to_string(),
                    }
                }
                (None, Some(_)) => empty_layer(&w.content)?,
            };
            seen.insert(lo.desc.digest().to_string(), lo.clone());
            out.push(lo);
        }
        Ok(out)
    }
}

/// An inline cache's records: `cfg`'s, each result given by where its layers are in the
/// image (`image`: its layers' digests, bottom first) — the top layer's index when they are
/// the image's first layers, else every layer's index; results whose layers the image does
/// not have are left out, and records left without results keep only their links.
fn inline_records(
    cfg: &config::CacheConfig,
    image: &[String],
) -> Result<Vec<config::Record>, String> {
    let at: HashMap<&str, i64> = image
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i as i64))
        .collect();
    let mut any = false;
    let records = cfg
        .records
        .iter()
        .map(|r| {
            let mut out = config::Record {
                digest: r.digest.clone(),
                inputs: r.inputs.clone(),
                ..Default::default()
            };
            for res in &r.results {
                let blobs: Vec<&str> = cfg
                    .layer_chain(res.layer)
                    .into_iter()
                    .map(|l| cfg.layers[l].blob.as_str())
                    .collect();
                let Some(idx) = blobs
                    .iter()
                    .map(|b| at.get(b).copied())
                    .collect::<Option<Vec<i64>>>()
                else {
                    continue;
                };
                any = true;
                if idx.iter().enumerate().all(|(i, &x)| x == i as i64) && !idx.is_empty() {
                    out.results.push(config::RecordResult {
                        layer: idx.len() as i64 - 1,
                        created_at: res.created_at.clone(),
                    });
                } else {
                    out.chained.push(config::ChainedResult {
                        layers: idx,
                        created_at: res.created_at.clone(),
                    });
                }
            }
            out
        })
        .collect();
    Ok(if any { records } else { Vec::new() })
}

/// The layer of a step that changed nothing: an empty tar, gzipped (BuildKit has one too).
fn empty_layer(store: &crate::content::Store) -> Result<LayerOut, EngineError> {
    use std::io::Write as _;
    let tar = [0u8; 1024];
    let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)
        .map_err(|e| EngineError::Output(e.to_string()))?;
    let bytes = gz
        .finish()
        .map_err(|e| EngineError::Output(e.to_string()))?;
    let info = store.write_blob(&bytes)?;
    Ok(LayerOut {
        desc: Descriptor::new(
            oci_spec::image::MediaType::ImageLayerGzip,
            info.size,
            info.digest,
        ),
        diff_id: keys::digest_of(&tar),
    })
}

/// A cache's config and manifest, as bytes.
struct Made {
    config: Vec<u8>,
    manifest: Vec<u8>,
    media_type: &'static str,
}

/// The manifest of a cache: an image manifest whose config is the cache config (BuildKit's
/// default), or the older index form that lists the config beside the layers.
fn manifest(
    cfg: &config::CacheConfig,
    layers: &[LayerOut],
    image_manifest: bool,
    created: &str,
) -> Result<Made, String> {
    let descs: Vec<Desc> = layers
        .iter()
        .map(|l| {
            let mut annotations = BTreeMap::new();
            annotations.insert("buildkit/createdat".to_string(), created.to_string());
            annotations.insert("containerd.io/uncompressed".to_string(), l.diff_id.clone());
            Desc {
                media_type: l.desc.media_type().to_string(),
                digest: l.desc.digest().to_string(),
                size: l.desc.size(),
                annotations,
            }
        })
        .collect();
    let config = serde_json::to_vec(cfg).map_err(|e| e.to_string())?;
    let cfg_desc = Desc {
        media_type: config::MEDIA_TYPE.into(),
        digest: keys::digest_of(&config),
        size: config.len() as u64,
        annotations: BTreeMap::new(),
    };
    let (manifest, media_type) = if image_manifest {
        (
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg_desc,
                "layers": descs,
            }),
            "application/vnd.oci.image.manifest.v1+json",
        )
    } else {
        let mut all = descs;
        all.push(cfg_desc);
        (
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": all,
            }),
            "application/vnd.oci.image.index.v1+json",
        )
    };
    Ok(Made {
        config,
        manifest: serde_json::to_vec(&manifest).map_err(|e| e.to_string())?,
        media_type,
    })
}

/// Writes the cache into the OCI layout `dir` under `tag`: layer blobs (those already there
/// are kept), the config, the manifest, and index.json with the tag moved to it.
fn write_local(
    dir: &Path,
    tag: &str,
    made: &Made,
    layers: &[LayerOut],
    store: &crate::content::Store,
) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(|e| io(dir, e))?;
    let put = |bytes: &[u8]| -> Result<String, String> {
        let d = keys::digest_of(bytes);
        let p = layout::blob_path(dir, &d).map_err(|e| e.to_string())?;
        if !p.exists() {
            crate::fsutil::write_atomic(&p, bytes, true).map_err(|e| io(&p, e))?;
        }
        Ok(d)
    };
    for l in layers {
        let d = l.desc.digest().to_string();
        let p = layout::blob_path(dir, &d).map_err(|e| e.to_string())?;
        let have = std::fs::metadata(&p)
            .map(|m| m.len() == l.desc.size())
            .unwrap_or(false);
        if !have {
            let src = store.path(l.desc.digest()).map_err(|e| e.to_string())?;
            let tmp = p.with_extension("tmp");
            std::fs::copy(&src, &tmp).map_err(|e| io(&src, e))?;
            std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
        }
    }
    put(&made.config)?;
    let man_digest = put(&made.manifest)?;
    let (man_bytes, media_type) = (&made.manifest, made.media_type);
    // index.json: the tag moves to the new manifest; other tags stay.
    let index_path = dir.join("index.json");
    let mut entries: Vec<serde_json::Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default();
    entries.retain(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(|t| t.as_str())
            != Some(tag)
    });
    entries.push(serde_json::json!({
        "mediaType": media_type,
        "digest": man_digest,
        "size": man_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    crate::fsutil::write_atomic(&index_path, &bytes, true).map_err(|e| io(&index_path, e))?;
    let layout_file = dir.join("oci-layout");
    if !layout_file.exists() {
        crate::fsutil::write_atomic(&layout_file, br#"{"imageLayoutVersion":"1.0.0"}"#, true)
            .map_err(|e| io(&layout_file, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_results_are_indexes_into_the_image_layers() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let layer = |c: char, parent: i64| config::Layer {
            blob: d(c),
            parent,
            annotations: None,
        };
        let result = |layer: i64| config::RecordResult {
            layer,
            created_at: "t".into(),
        };
        let cfg = config::CacheConfig {
            // 0: a, 1: b on a, 2: c (not in the image), 3: b alone
            layers: vec![
                layer('a', -1),
                layer('b', 0),
                layer('c', -1),
                layer('b', -1),
            ],
            records: vec![
                config::Record {
                    digest: d('1'),
                    results: vec![result(1)],
                    ..Default::default()
                },
                config::Record {
                    digest: d('2'),
                    results: vec![result(2), result(3)],
                    inputs: vec![vec![config::Input {
                        selector: String::new(),
                        link: 0,
                    }]],
                    ..Default::default()
                },
            ],
        };
        let out = inline_records(&cfg, &[d('a'), d('b')]).expect("records");
        assert_eq!(out[0].results[0].layer, 1);
        // Layers the image lacks: left out; layers out of the image's order: a chain.
        assert!(out[1].results.is_empty());
        assert_eq!(out[1].chained[0].layers, vec![1]);
        assert_eq!(out[1].inputs, cfg.records[1].inputs);
        assert!(inline_records(&cfg, &[d('x')]).expect("none").is_empty());
    }
}
