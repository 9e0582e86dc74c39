//! Loading an untrusted Definition: decode, recompute digests, check edges, order vertices.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::LlbError;
use super::json::{metadata_json, op_json};
use super::marshal::{Definition, Digest};
use crate::pb;

/// One op of a loaded graph.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// sha256 of the op's bytes, recomputed on load.
    pub digest: Digest,
    pub op: pb::Op,
    /// Metadata from the Definition (default when it has none for this op).
    pub metadata: pb::OpMetadata,
    /// For each `op.inputs[i]`: position of that input's vertex in [`LoadedGraph::vertices`].
    pub inputs: Vec<usize>,
}

/// A validated graph, vertices in dependency order (inputs before users).
#[derive(Debug, Clone, Default)]
pub struct LoadedGraph {
    pub vertices: Vec<Vertex>,
    /// The vertex the terminal op points at (`None` for an empty Definition).
    pub head: Option<usize>,
    /// Output index of the head that the terminal op selects.
    pub head_output: i64,
    /// The terminal op itself (digest, metadata), kept for dumps.
    pub terminal: Option<(Digest, pb::OpMetadata)>,
}

fn decode_err(what: String, e: prost::DecodeError) -> LlbError {
    LlbError::Decode {
        what,
        reason: e.to_string(),
    }
}

/// Loads and validates Definition bytes from an untrusted source.
///
/// Checks: protobuf decodes; every op decodes; the last op is a terminal (no op body, exactly
/// one input); every other op has a body; every input digest names an op in the Definition;
/// output indices are not negative; no cycles. Vertices reachable from the terminal are
/// returned in a dependency order; ops repeated in `def` are kept once.
pub fn load(bytes: &[u8]) -> Result<LoadedGraph, LlbError> {
    let def = Definition::from_bytes(bytes)?;
    load_definition(&def)
}

/// Like [`load`], for a decoded Definition.
pub fn load_definition(def: &Definition) -> Result<LoadedGraph, LlbError> {
    if def.def.is_empty() {
        return Ok(LoadedGraph::default());
    }
    let mut ops: HashMap<Digest, pb::Op> = HashMap::with_capacity(def.def.len());
    let last = def.def.len() - 1;
    let mut terminal: Option<(Digest, pb::Op)> = None;
    for (i, b) in def.def.iter().enumerate() {
        let op = pb::Op::decode(b.as_slice()).map_err(|e| decode_err(format!("op #{i}"), e))?;
        let dg = Digest::of(b);
        if i == last {
            if op.op.is_some() || op.inputs.len() != 1 {
                return Err(LlbError::NoTerminal);
            }
            terminal = Some((dg, op));
        } else {
            if op.op.is_none() {
                return Err(LlbError::InvalidGraph(format!(
                    "op #{i} ({dg}) has no body; only the last op may be the terminal"
                )));
            }
            ops.entry(dg).or_insert(op);
        }
    }
    let Some((tdigest, top)) = terminal else {
        return Err(LlbError::NoTerminal);
    };
    // every input must refer to an op in the Definition
    for (dg, op) in &ops {
        for inp in &op.inputs {
            let idg = Digest::parse(&inp.digest)?;
            if !ops.contains_key(&idg) {
                return Err(LlbError::DanglingInput {
                    op: dg.clone(),
                    input: inp.digest.clone(),
                });
            }
            if inp.index < 0 {
                return Err(LlbError::InvalidGraph(format!(
                    "op {dg} uses negative output index {} of {}",
                    inp.index, inp.digest
                )));
            }
        }
    }
    let tin = &top.inputs[0];
    let head = Digest::parse(&tin.digest)?;
    if !ops.contains_key(&head) {
        return Err(LlbError::DanglingInput {
            op: tdigest,
            input: tin.digest.clone(),
        });
    }

    // Iterative post-order DFS from the head.
    let mut index: HashMap<Digest, usize> = HashMap::new();
    let mut vertices: Vec<Vertex> = Vec::new();
    let mut on_path: HashSet<Digest> = HashSet::new();
    let mut stack: Vec<(Digest, usize)> = vec![(head.clone(), 0)];
    on_path.insert(head.clone());
    while let Some((dg, next)) = stack.pop() {
        let op = ops
            .get(&dg)
            .ok_or_else(|| LlbError::Internal(format!("lost op {dg}")))?;
        if let Some(inp) = op.inputs.get(next) {
            let idg = Digest::parse(&inp.digest)?;
            stack.push((dg, next + 1));
            if index.contains_key(&idg) {
                continue;
            }
            if on_path.contains(&idg) {
                return Err(LlbError::InvalidGraph(format!("cycle through {idg}")));
            }
            on_path.insert(idg.clone());
            stack.push((idg, 0));
            continue;
        }
        let mut inputs = Vec::with_capacity(op.inputs.len());
        for inp in &op.inputs {
            let idg = Digest::parse(&inp.digest)?;
            let pos = index
                .get(&idg)
                .ok_or_else(|| LlbError::Internal(format!("input {idg} not ordered")))?;
            inputs.push(*pos);
        }
        on_path.remove(&dg);
        index.insert(dg.clone(), vertices.len());
        vertices.push(Vertex {
            metadata: def.metadata.get(dg.as_str()).cloned().unwrap_or_default(),
            op: op.clone(),
            digest: dg,
            inputs,
        });
    }
    let head_pos = index.get(&head).copied();
    let tmd = def
        .metadata
        .get(tdigest.as_str())
        .cloned()
        .unwrap_or_default();
    Ok(LoadedGraph {
        vertices,
        head: head_pos,
        head_output: tin.index,
        terminal: Some((tdigest, tmd)),
    })
}

fn terminal_op(g: &LoadedGraph) -> Option<pb::Op> {
    let h = g.head?;
    Some(pb::Op {
        inputs: vec![pb::Input {
            digest: g.vertices[h].digest.to_string(),
            index: g.head_output,
        }],
        ..Default::default()
    })
}

fn line(op: &pb::Op, digest: &Digest, md: &pb::OpMetadata) -> String {
    format!(
        "{{\"Op\":{},\"Digest\":\"{}\",\"OpMetadata\":{}}}\n",
        op_json(op),
        digest,
        metadata_json(md)
    )
}

impl LoadedGraph {
    /// One JSON object per op (`Op`, `Digest`, `OpMetadata`), terminal last, like
    /// `buildctl debug dump-llb`.
    pub fn to_json_lines(&self) -> String {
        let mut s = String::new();
        for v in &self.vertices {
            s.push_str(&line(&v.op, &v.digest, &v.metadata));
        }
        if let (Some(top), Some((td, tmd))) = (terminal_op(self), &self.terminal) {
            s.push_str(&line(&top, td, tmd));
        }
        s
    }

    /// A Graphviz graph: one node per op (terminal last), edges from inputs to users
    /// (per user, in input order).
    pub fn to_dot(&self) -> String {
        let mut s = String::from("digraph {\n");
        for v in &self.vertices {
            s.push_str(&format!(
                "  \"{}\" [label=\"{}\"];\n",
                v.digest,
                dot_escape(&op_label(&v.op))
            ));
        }
        if let (Some(h), Some((td, _))) = (self.head, &self.terminal) {
            s.push_str(&format!(
                "  \"{td}\" [label=\"{}\"];\n",
                dot_escape(&format!("terminal: -> {}", self.vertices[h].digest))
            ));
        }
        for v in &self.vertices {
            let mut seen = HashSet::new();
            for &i in &v.inputs {
                if seen.insert(i) {
                    s.push_str(&format!(
                        "  \"{}\" -> \"{}\";\n",
                        self.vertices[i].digest, v.digest
                    ));
                }
            }
        }
        if let (Some(h), Some((td, _))) = (self.head, &self.terminal) {
            s.push_str(&format!("  \"{}\" -> \"{td}\";\n", self.vertices[h].digest));
        }
        s.push_str("}\n");
        s
    }
}

/// A short human label for an op.
pub fn op_label(op: &pb::Op) -> String {
    use pb::op::Op as K;
    match &op.op {
        Some(K::Source(s)) => format!("source: {}", s.identifier),
        Some(K::Exec(e)) => format!(
            "exec: {}",
            e.meta
                .as_ref()
                .map(|m| m.args.join(" "))
                .unwrap_or_default()
        ),
        Some(K::File(f)) => {
            use pb::file_action::Action;
            let parts: Vec<String> = f
                .actions
                .iter()
                .map(|a| match &a.action {
                    Some(Action::Copy(c)) => format!("copy{{src={},dest={}}}", c.src, c.dest),
                    Some(Action::Mkfile(m)) => format!("mkfile{{path={}}}", m.path),
                    Some(Action::Mkdir(m)) => format!("mkdir{{path={}}}", m.path),
                    Some(Action::Rm(r)) => format!("rm{{path={}}}", r.path),
                    Some(Action::Symlink(l)) => format!("symlink{{{}->{}}}", l.newpath, l.oldpath),
                    None => "{}".to_string(),
                })
                .collect();
            format!("file: {}", parts.join(","))
        }
        Some(K::Build(_)) => "build".to_string(),
        Some(K::Merge(m)) => format!("merge: {} inputs", m.inputs.len()),
        Some(K::Diff(_)) => "diff: ".to_string(),
        Some(K::Passthrough(p)) => format!("passthrough: {}", p.id),
        None => "terminal".to_string(),
    }
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
