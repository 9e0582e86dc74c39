//! Which records of an imported BuildKit cache each vertex of a graph is: BuildKit's cache
//! lookup (a source's key is a record without inputs; any other op's key is a record whose
//! every input links to a record its input is, with the op's selector for that input, or to
//! the content hash of the input's selected paths) done over the whole graph without running
//! anything, so that only the results the build needs are ever fetched.

use std::collections::{BTreeMap, BTreeSet};

use super::BkCacheError;
use super::config::{Index, InputKey};
use super::keys::{self, CacheMap, PathSelector};
use crate::llb::LoadedGraph;
use crate::pb;

/// Per vertex, per output that something uses: the records it is.
#[derive(Debug, Default, Clone)]
pub struct Matches {
    pub vertices: Vec<BTreeMap<i64, Vec<usize>>>,
    /// Per vertex: whether the cache has records of its op at all (on whatever inputs).
    pub known: Vec<bool>,
}

impl Matches {
    /// The records of a vertex's output.
    pub fn records(&self, vertex: usize, output: i64) -> &[usize] {
        self.vertices
            .get(vertex)
            .and_then(|m| m.get(&output))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// What the lookup needs from outside the graph.
pub trait Resolver {
    /// The keys of a source op (an image's by its manifest and layers; none for a local
    /// directory, whose BuildKit key is random per session).
    fn source(&mut self, op: &pb::Op, src: &pb::SourceOp) -> Result<Vec<CacheMap>, BkCacheError>;

    /// The content hash of `paths` in output `output` of `vertex` (an empty list: all of
    /// it), if it can be had without building anything (e.g. a local directory); `None`
    /// otherwise.
    fn content(&mut self, vertex: usize, output: i64, paths: &[PathSelector]) -> Option<String>;
}

/// The outputs of each vertex that the graph uses (its consumers' inputs and the head).
pub fn used_outputs(g: &LoadedGraph) -> Vec<BTreeSet<i64>> {
    let mut used = vec![BTreeSet::new(); g.vertices.len()];
    for v in &g.vertices {
        for (inp, &from) in v.op.inputs.iter().zip(&v.inputs) {
            used[from].insert(inp.index);
        }
    }
    if let Some(h) = g.head {
        used[h].insert(g.head_output);
    }
    used
}

/// Matches every vertex of `g` (in its dependency order) against the imported `index`.
pub fn match_graph(
    g: &LoadedGraph,
    index: &Index,
    resolver: &mut dyn Resolver,
) -> Result<Matches, BkCacheError> {
    let used = used_outputs(g);
    let mut m = Matches {
        vertices: vec![BTreeMap::new(); g.vertices.len()],
        known: vec![false; g.vertices.len()],
    };
    for (vi, v) in g.vertices.iter().enumerate() {
        let maps = keys::op_keys(&v.op, &mut |s| resolver.source(&v.op, s))?;
        for &out in &used[vi] {
            let mut found = BTreeSet::new();
            for km in &maps {
                let key = keys::root_key(&km.digest, out);
                m.known[vi] |= index.knows(&key);
                if v.op.inputs.is_empty() {
                    found.extend(index.roots(&key));
                    continue;
                }
                let mut have = Vec::with_capacity(v.op.inputs.len());
                for (i, (inp, &from)) in v.op.inputs.iter().zip(&v.inputs).enumerate() {
                    let dep = km.deps.get(i).cloned().unwrap_or_default();
                    let selector = dep.selector.clone().unwrap_or_default();
                    let mut ks: Vec<InputKey> = m
                        .records(from, inp.index)
                        .iter()
                        .map(|&record| InputKey {
                            record,
                            selector: selector.clone(),
                        })
                        .collect();
                    if let Some(paths) = &dep.content
                        && let Some(hash) = resolver.content(from, inp.index, paths)
                    {
                        ks.extend(index.roots(&keys::root_key(&hash, -1)).into_iter().map(
                            |record| InputKey {
                                record,
                                selector: String::new(),
                            },
                        ));
                    }
                    have.push(ks);
                }
                if have.iter().all(|k| !k.is_empty()) {
                    found.extend(index.linked(&key, &have));
                }
            }
            m.vertices[vi].insert(out, found.into_iter().collect());
        }
    }
    Ok(m)
}
