//! `--import-cache` for the embedded engine: reads each cache, looks every vertex of the graph
//! up in it with BuildKit's keys (`bkcache::matching`), and decides what the solve loads,
//! skips and runs (`ops::import::Role`). The layers of what it loads are fetched into the
//! content store now, each checked against its digest, so that a cache that cannot deliver
//! a result costs a warning and the step simply runs.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::bkcache::BkCacheError;
use crate::bkcache::config::Index;
use crate::bkcache::keys::{self, CacheMap, PathSelector};
use crate::bkcache::layout::{self, Cache};
use crate::bkcache::matching::{self, Matches, Resolver};
use crate::bkcache::spec::{Import, Location};
use crate::llb::LoadedGraph;
use crate::ops::import::{ImportPlan, Loaded, Role};
use crate::pb;
use crate::platform::Platform;
use crate::progress::Event;

use super::Engine;
use super::explain::ImportSeen;

/// Where a cache's blobs are read from.
enum Blobs {
    Dir(PathBuf),
    Registry(crate::registry::RawManifest),
}

struct Opened {
    cache: Cache,
    index: Index,
    blobs: Blobs,
}

/// The keys of every image source of the graph, resolved up front (the lookup is not async),
/// and the directories of its local sources (by vertex) whose content can be hashed.
pub(super) struct Images(HashMap<String, Vec<CacheMap>>, Vec<Option<PathBuf>>);

fn image_slot(op: &pb::Op, src: &pb::SourceOp) -> String {
    format!(
        "{} {}",
        src.identifier,
        Platform::of_op(op.platform.as_ref())
    )
}

impl Resolver for Images {
    fn source(&mut self, op: &pb::Op, src: &pb::SourceOp) -> Result<Vec<CacheMap>, BkCacheError> {
        Ok(self
            .0
            .get(&image_slot(op, src))
            .cloned()
            .unwrap_or_default())
    }

    /// A local source's content as BuildKit hashes it: read from the directory it names, every
    /// file owned by 0:0 (BuildKit's client sends them so). Only for sources without
    /// include/exclude patterns or follow paths (their snapshot is the whole directory);
    /// extended attributes are not read yet, so a context that has some misses.
    fn content(&mut self, vertex: usize, output: i64, paths: &[PathSelector]) -> Option<String> {
        use crate::bkcache::contenthash::{self, AllOwnedBy, NoXattrs, Origin, Source};
        let dir = self.1.get(vertex)?.as_ref()?;
        if output != 0 {
            return None;
        }
        let src = Source {
            root: dir,
            origin: Origin::LocalSource,
            ids: &AllOwnedBy(0, 0),
            xattrs: &NoXattrs,
        };
        contenthash::content_hash(&src, paths).ok()
    }
}

impl Engine {
    fn warn(&self, what: String) {
        self.reporter.event(Event::Note(format!("warning: {what}")));
    }

    /// Opens one cache; `None` (with a warning) when it cannot be read.
    async fn open_cache(&self, imp: &Import) -> Option<Opened> {
        match &imp.location {
            Location::Local { dir, tag, digest } => {
                let (d, t, g) = (dir.clone(), tag.clone(), digest.clone());
                let read = tokio::task::spawn_blocking(move || layout::read(&d, &t, g.as_deref()))
                    .await
                    .map_err(|e| BkCacheError::Config(e.to_string()))
                    .and_then(|r| r);
                match read {
                    Ok(cache) => {
                        let index = Index::new(cache.config.clone());
                        Some(Opened {
                            cache,
                            index,
                            blobs: Blobs::Dir(dir.clone()),
                        })
                    }
                    Err(e) => {
                        self.warn(format!(
                            "importing cache {}: {e}; building without it",
                            dir.display()
                        ));
                        None
                    }
                }
            }
            Location::Registry { reference } => match self.registry_cache(reference).await {
                Ok((cache, raw)) => {
                    let index = Index::new(cache.config.clone());
                    Some(Opened {
                        cache,
                        index,
                        blobs: Blobs::Registry(raw),
                    })
                }
                Err(e) => {
                    self.warn(format!(
                        "importing cache {reference}: {e}; building without it"
                    ));
                    None
                }
            },
            Location::Inline => None,
        }
    }

    /// A cache in a registry: its manifest (BuildKit's image form or index form) and config.
    async fn registry_cache(
        &self,
        reference: &str,
    ) -> Result<(Cache, crate::registry::RawManifest), String> {
        let reg = &self.worker.registry;
        let raw = reg
            .fetch_manifest_raw(reference)
            .await
            .map_err(|e| e.to_string())?;
        let (cfg, layers) = match layout::parse_manifest(&raw.reference, &raw.bytes) {
            Ok(found) => found,
            // Not a cache: an image may carry one inline.
            Err(e) => return self.inline_cache_of(reference, e.to_string()).await,
        };
        let digest = crate::content::parse_digest(&cfg.digest).map_err(|e| e.to_string())?;
        let desc = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::Other(cfg.media_type.clone()),
            cfg.size,
            digest,
        );
        let bytes = reg
            .fetch_blob_bytes(&raw, &desc, layout::MAX_CONFIG)
            .await
            .map_err(|e| e.to_string())?;
        let cache = Cache::new(&raw.reference, &bytes, layers).map_err(|e| e.to_string())?;
        Ok((cache, raw))
    }

    /// The inline cache of the image `reference` (for this machine's platform): its records,
    /// with the image's layers as the cache's. `not_cache` says why the manifest was no cache,
    /// for an image that carries none.
    async fn inline_cache_of(
        &self,
        reference: &str,
        not_cache: String,
    ) -> Result<(Cache, crate::registry::RawManifest), String> {
        let reg = &self.worker.registry;
        let r = reg
            .resolve_with(
                reference,
                &Platform::host(),
                crate::registry::ResolveMode::Default,
            )
            .await
            .map_err(|e| e.to_string())?;
        let layers: Vec<layout::Desc> = r
            .layers
            .iter()
            .map(|l| layout::Desc {
                media_type: l.media_type().to_string(),
                digest: l.digest().to_string(),
                size: l.size(),
                annotations: Default::default(),
            })
            .collect();
        let cache = layout::inline(&r.reference, &r.config_bytes, &layers)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{not_cache}, and the image has no inline cache"))?;
        let raw = crate::registry::RawManifest {
            reference: r.reference.clone(),
            host: r.host.clone(),
            repository: r.repository.clone(),
            digest: r.manifest_digest.clone(),
            media_type: r.manifest_media_type.clone(),
            bytes: r.manifest_bytes.clone(),
        };
        Ok((cache, raw))
    }

    /// Resolves the graph's image sources to their BuildKit keys (failures leave a source
    /// without keys: the source op reports them when it runs).
    pub(super) async fn image_keys(
        &self,
        graph: &LoadedGraph,
        locals: &std::collections::BTreeMap<String, PathBuf>,
    ) -> Images {
        let dirs = graph
            .vertices
            .iter()
            .map(|v| match &v.op.op {
                Some(pb::op::Op::Source(s)) => {
                    let name = s.identifier.strip_prefix("local://")?;
                    let filtered = [
                        "local.includepattern",
                        "local.excludepattern",
                        "local.followpaths",
                    ]
                    .iter()
                    .any(|k| {
                        s.attrs
                            .get(*k)
                            .is_some_and(|v| !v.is_empty() && v != "[]" && v != "null")
                    });
                    if filtered {
                        None
                    } else {
                        locals.get(name).cloned()
                    }
                }
                _ => None,
            })
            .collect();
        let mut out = HashMap::new();
        for v in &graph.vertices {
            let Some(pb::op::Op::Source(src)) = &v.op.op else {
                continue;
            };
            let Some(reference) = src.identifier.strip_prefix("docker-image://") else {
                continue;
            };
            let slot = image_slot(&v.op, src);
            if out.contains_key(&slot) {
                continue;
            }
            let platform = Platform::of_op(v.op.platform.as_ref());
            let mode = crate::registry::ResolveMode::from_attr(
                src.attrs.get("image.resolvemode").map(String::as_str),
            )
            .unwrap_or(crate::registry::ResolveMode::Default);
            let Ok(r) = self
                .worker
                .registry
                .resolve_with(reference, &platform, mode)
                .await
            else {
                continue;
            };
            let main = r
                .index_digest
                .as_ref()
                .unwrap_or(&r.manifest_digest)
                .to_string();
            out.insert(slot, keys::image(&main, &platform, &r.config_bytes, None));
        }
        Images(out, dirs)
    }

    /// What the solve does with each vertex, given every vertex's key from a first pass
    /// (`keys`, by vertex): from the head down, a vertex whose result is in the store is a
    /// hit and nothing below it is needed; else one an imported cache has a result for is
    /// loaded; else it runs and its inputs are looked at the same way. Vertices nothing
    /// needs are skipped (only their keys are computed); images under loaded steps are still
    /// pulled, as the loaded layers go on top of them.
    pub(super) async fn plan(
        &self,
        graph: &LoadedGraph,
        ops: &[crate::ops::OpVertex],
        keys: &[String],
        imports: &[Import],
        locals: &std::collections::BTreeMap<String, PathBuf>,
    ) -> (ImportPlan, Vec<ImportSeen>) {
        let mut opened = Vec::new();
        for imp in imports {
            if let Some(o) = self.open_cache(imp).await {
                opened.push(o);
            }
        }
        let mut matches: Vec<Matches> = Vec::with_capacity(opened.len());
        if !opened.is_empty() {
            let mut images = self.image_keys(graph, locals).await;
            for o in &opened {
                match super::blocking(|| matching::match_graph(graph, &o.index, &mut images)) {
                    Ok(m) => matches.push(m),
                    Err(e) => {
                        self.warn(format!("importing cache {}: {e}", o.cache.name));
                        matches.push(Matches::default());
                    }
                }
            }
        }
        let used = matching::used_outputs(graph);
        let n = graph.vertices.len();
        let mut roles = vec![Role::Skip; n];
        let mut visited = vec![false; n];
        let mut stack: Vec<usize> = graph.head.into_iter().collect();
        let mut loaded = 0usize;
        while let Some(v) = stack.pop() {
            if std::mem::replace(&mut visited[v], true) {
                continue;
            }
            let vx = &graph.vertices[v];
            let cacheable =
                !ops.get(v).is_some_and(|o| o.ignore_cache) && used[v].iter().all(|&o| o == 0);
            if cacheable
                && let Some(k) = keys.get(v)
                && !k.starts_with("unknown-")
                && matches!(self.worker.snapshots.lookup_quiet(k), Ok(Some(_)))
            {
                roles[v] = Role::Hit;
                continue;
            }
            let layered = matches!(vx.op.op, Some(pb::op::Op::Exec(_) | pb::op::Op::File(_)));
            if layered
                && cacheable
                && !opened.is_empty()
                && let Some(l) = self.fetch_result(&opened, &matches, v).await
            {
                roles[v] = Role::Load(l);
                loaded += 1;
                continue;
            }
            roles[v] = Role::Run;
            stack.extend(vx.inputs.iter().copied());
        }
        if loaded > 0 {
            for (v, vx) in graph.vertices.iter().enumerate() {
                if !visited[v]
                    && matches!(&vx.op.op, Some(pb::op::Op::Source(s)) if s.identifier.starts_with("docker-image://"))
                {
                    roles[v] = Role::Run;
                }
            }
        }
        if !opened.is_empty() {
            let names: Vec<&str> = opened.iter().map(|o| o.cache.name.as_str()).collect();
            self.reporter.event(Event::Note(format!(
                "imported cache {}: {loaded} step{} taken from it",
                names.join(", "),
                if loaded == 1 { "" } else { "s" }
            )));
        }
        let seen = (0..n)
            .map(|v| {
                if opened.is_empty() {
                    ImportSeen::NoImport
                } else if matches
                    .iter()
                    .any(|m| m.known.get(v).copied().unwrap_or(false))
                {
                    ImportSeen::OtherInputs
                } else {
                    ImportSeen::Unknown
                }
            })
            .collect();
        (
            ImportPlan {
                roles,
                keys_only: false,
            },
            seen,
        )
    }

    /// The first record of vertex `v` with a result whose layers can all be had, fetched into
    /// the content store.
    async fn fetch_result(
        &self,
        opened: &[Opened],
        matches: &[Matches],
        v: usize,
    ) -> Option<Loaded> {
        for (o, m) in opened.iter().zip(matches) {
            for &r in m.records(v, 0) {
                let rec = &o.index.config.records[r];
                let chain: Vec<usize> = if let Some(res) = rec.results.first() {
                    o.index.config.layer_chain(res.layer)
                } else if let Some(c) = rec.chained.first() {
                    c.layers.iter().map(|&l| l as usize).collect()
                } else {
                    continue;
                };
                match self.fetch_layers(o, &chain).await {
                    Ok(layers) => {
                        return Some(Loaded {
                            layers,
                            from: format!("{} record {}", o.cache.name, rec.digest),
                        });
                    }
                    Err(e) => self.warn(format!(
                        "cache {} record {}: {e}; the step runs instead",
                        o.cache.name, rec.digest
                    )),
                }
            }
        }
        None
    }

    /// Copies the layers (indexes into the config's layers) into the content store, each
    /// checked against its digest and size; their descriptors, bottom first.
    async fn fetch_layers(
        &self,
        o: &Opened,
        chain: &[usize],
    ) -> Result<Vec<oci_spec::image::Descriptor>, String> {
        let mut out = Vec::with_capacity(chain.len());
        let mut seen = BTreeSet::new();
        for &li in chain {
            let layer = &o.index.config.layers[li];
            let desc =
                o.cache.blobs.get(&layer.blob).ok_or_else(|| {
                    format!("layer {} is not in the cache's manifest", layer.blob)
                })?;
            let media_type = if desc.media_type.is_empty() {
                layer
                    .annotations
                    .as_ref()
                    .map(|a| a.media_type.clone())
                    .unwrap_or_default()
            } else {
                desc.media_type.clone()
            };
            if !(media_type.ends_with("tar+gzip") || media_type.ends_with("tar")) {
                return Err(format!(
                    "layer {} has media type {media_type:?}, which envkit cannot unpack",
                    layer.blob
                ));
            }
            let digest = crate::content::parse_digest(&layer.blob).map_err(|e| e.to_string())?;
            if seen.insert(layer.blob.clone()) && !self.worker.content.has(&digest) {
                match &o.blobs {
                    Blobs::Registry(_) => {} // below, with the descriptor
                    Blobs::Dir(dir) => {
                        let path =
                            layout::blob_path(dir, &layer.blob).map_err(|e| e.to_string())?;
                        let store = self.worker.content.clone();
                        let (d, size) = (digest.clone(), desc.size);
                        tokio::task::spawn_blocking(move || -> Result<(), String> {
                            let f = std::fs::File::open(&path)
                                .map_err(|e| format!("{}: {e}", path.display()))?;
                            store
                                .ingest(f, Some((&d, size)))
                                .map(|_| ())
                                .map_err(|e| format!("{}: {e}", path.display()))
                        })
                        .await
                        .map_err(|e| e.to_string())??;
                    }
                }
            }
            let mt: oci_spec::image::MediaType = media_type.as_str().into();
            let d = oci_spec::image::Descriptor::new(mt, desc.size, digest);
            if let Blobs::Registry(raw) = &o.blobs
                && !self.worker.content.has(d.digest())
            {
                self.worker
                    .registry
                    .fetch_blobs(raw, std::slice::from_ref(&d), &self.worker.content)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            out.push(d);
        }
        Ok(out)
    }
}
