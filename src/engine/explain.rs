//! Why a step was cached or not (`--explain-cache`). Every solve with a target (the image
//! name) keeps a small record of its graph under `<store>/explain/`: each vertex's name, key,
//! op (as JSON, without its inputs' digests), inputs, and for a local source its checksum and
//! where its manifest is (`ops::manifest`). An explained build pairs its vertices with the
//! last record's, from the heads down input by input, and says for each step that runs what
//! differs: the op (which fields), an input (which is explained in turn), a local source's
//! files (which, and how), the base image, or nothing (the result was pruned). Misses in
//! imported caches say whether the cache knew the op at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llb::LoadedGraph;
use crate::ops::import::Role;
use crate::ops::{LocalSums, OpVertex};
use crate::pb;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Vertex {
    name: String,
    key: String,
    op: Value,
    inputs: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local: Option<Local>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Local {
    checksum: String,
    stat: PathBuf,
}

/// A solved graph as the next explanation compares with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Record {
    head: Option<usize>,
    vertices: Vec<Vertex>,
}

/// The op as JSON without the digests of its inputs (a changed input is told apart).
fn op_value(op: &pb::Op) -> Value {
    let mut v: Value = serde_json::from_str(&crate::llb::json::op_json(op)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("inputs");
    }
    v
}

fn record_path(root: &Path, target: &str) -> PathBuf {
    root.join("explain").join(format!(
        "{}.json",
        crate::content::sha256_hex(target.as_bytes())
    ))
}

impl Record {
    pub(super) fn new(
        graph: &LoadedGraph,
        names: &[crate::solver::Vertex],
        keys: &[String],
        sums: &LocalSums,
    ) -> Record {
        let sums = sums.lock().map(|s| s.clone()).unwrap_or_default();
        Record {
            head: graph.head,
            vertices: graph
                .vertices
                .iter()
                .enumerate()
                .map(|(i, v)| Vertex {
                    name: names.get(i).map(|v| v.name.clone()).unwrap_or_default(),
                    key: keys.get(i).cloned().unwrap_or_default(),
                    op: op_value(&v.op),
                    inputs: v.inputs.clone(),
                    local: sums.get(&i).map(|s| Local {
                        checksum: s.checksum.clone(),
                        stat: s.stat.clone(),
                    }),
                })
                .collect(),
        }
    }

    /// The last record of `target` in the store at `root`.
    pub(super) fn load(root: &Path, target: &str) -> Option<Record> {
        let bytes = std::fs::read(record_path(root, target)).ok()?;
        let nl = bytes.iter().position(|&b| b == b'\n')?;
        serde_json::from_slice(&bytes[nl + 1..]).ok()
    }
}

/// A digest of a graph's keys: a record is written again only when it changes.
pub(super) fn keys_digest(keys: &[String]) -> String {
    crate::content::sha256_hex(keys.join("\n").as_bytes())
}

/// Whether the last record of `target` is of a graph with these keys (its first line; the
/// rest is not read).
pub(super) fn is_recorded(root: &Path, target: &str, digest: &str) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(record_path(root, target)) else {
        return false;
    };
    let mut buf = [0u8; 65];
    f.read_exact(&mut buf).is_ok() && &buf[..64] == digest.as_bytes() && buf[64] == b'\n'
}

/// Keeps `record` (of a graph with keys `digest`) as the last of `target`. Best effort:
/// without it the next explanation has nothing to compare with.
pub(super) fn save(root: &Path, target: &str, digest: &str, record: &Record) {
    let path = record_path(root, target);
    let Ok(json) = serde_json::to_vec(record) else {
        return;
    };
    let mut bytes = Vec::with_capacity(json.len() + 65);
    bytes.extend_from_slice(digest.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&json);
    if let Some(dir) = path.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = crate::fsutil::write_atomic(&path, &bytes, false);
    }
}

/// What an imported cache knew about each vertex, for the explanation of a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImportSeen {
    /// No cache was imported.
    NoImport,
    /// A cache has records of the op, but none on these inputs.
    OtherInputs,
    /// No cache has the op.
    Unknown,
}

/// Pairs the vertices of the graph with the last record's: head with head, then input `i`
/// with input `i` of each pair; a vertex not reached so is paired with a recorded vertex of
/// the same key.
fn pair(cur: &Record, last: &Record) -> Vec<Option<usize>> {
    let mut out = vec![None; cur.vertices.len()];
    let mut taken = vec![false; last.vertices.len()];
    let mut stack: Vec<(usize, usize)> = cur.head.zip(last.head).into_iter().collect();
    while let Some((c, l)) = stack.pop() {
        if out[c].is_some() || taken.get(l).copied().unwrap_or(true) {
            continue;
        }
        out[c] = Some(l);
        taken[l] = true;
        let (ci, li) = (&cur.vertices[c].inputs, &last.vertices[l].inputs);
        for (&a, &b) in ci.iter().zip(li) {
            if a < out.len() && b < taken.len() {
                stack.push((a, b));
            }
        }
    }
    let by_key: BTreeMap<&str, usize> = last
        .vertices
        .iter()
        .enumerate()
        .map(|(i, v)| (v.key.as_str(), i))
        .collect();
    for (c, v) in cur.vertices.iter().enumerate() {
        if out[c].is_none()
            && let Some(&l) = by_key.get(v.key.as_str())
        {
            out[c] = Some(l);
        }
    }
    out
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.chars().count() > 72 {
        let cut: String = s.chars().take(69).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The fields in which two ops' JSON differ (`exec.meta.args[2]: "a" → "b"`), at most
/// `limit` of them.
fn op_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || a == b {
        return;
    }
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => op_diff(p, q, &at(k), out, limit),
                    (Some(p), None) => out.push(format!("{}: {} → (none)", at(k), short(p))),
                    (None, Some(q)) => out.push(format!("{}: (none) → {}", at(k), short(q))),
                    (None, None) => {}
                }
                if out.len() >= limit {
                    return;
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                op_diff(p, q, &format!("{path}[{i}]"), out, limit);
            }
        }
        _ => out.push(format!(
            "{}: {} → {}",
            if path.is_empty() { "op" } else { path },
            short(a),
            short(b)
        )),
    }
}

/// Why vertex `v` of `cur` misses, given the last record (paired by `pairs`).
fn reason(cur: &Record, last: Option<&Record>, pairs: &[Option<usize>], v: usize) -> String {
    let me = &cur.vertices[v];
    if me.key.starts_with("unknown-") {
        return "its key depends on what it fetches (checked when it runs)".into();
    }
    let Some(last) = last else {
        return "no earlier build of this target is recorded in this store".into();
    };
    let Some(p) = pairs[v] else {
        return "a new step: the last build had none like it here".into();
    };
    let before = &last.vertices[p];
    if before.key == me.key {
        return "the same key as in the last build, but its result is not in the store any \
                more (pruned, or that build stopped before it)"
            .into();
    }
    let mut why = Vec::new();
    if before.op != me.op {
        let mut diffs = Vec::new();
        op_diff(&before.op, &me.op, "", &mut diffs, 4);
        why.push(format!("the op changed: {}", diffs.join("; ")));
    }
    for (i, (&a, &b)) in me.inputs.iter().zip(&before.inputs).enumerate() {
        let (ka, kb) = (&cur.vertices[a].key, &last.vertices[b].key);
        if ka != kb {
            why.push(format!("input {i} changed ({})", cur.vertices[a].name));
        }
    }
    if !why.is_empty() {
        return why.join("; ");
    }
    if let (Some(now), Some(then)) = (&me.local, &before.local) {
        let old = crate::ops::manifest::recall(&then.stat, &then.checksum);
        let new = crate::ops::manifest::recall(&now.stat, &now.checksum);
        return match (old, new) {
            (Some(o), Some(n)) => {
                let lines = crate::ops::manifest::differences(&o, &n, 8);
                if lines.is_empty() {
                    "its files are the same, but what it selects changed".into()
                } else {
                    format!("files changed: {}", lines.join("; "))
                }
            }
            _ => "its content changed (the earlier file list is no longer kept)".into(),
        };
    }
    if me.op.get("Op").and_then(|o| o.get("source")).is_some() {
        return "the same source now resolves to other content (a new image manifest, download \
                or commit)"
            .into();
    }
    "its key changed".into()
}

/// One line per vertex the build needs (in dependency order), saying where its result comes
/// from or why it runs, and a last line for the vertices it does not need.
pub(super) fn explain(
    cur: &Record,
    last: Option<&Record>,
    roles: &[Role],
    ops: &[OpVertex],
    imports: &[ImportSeen],
) -> Vec<String> {
    let pairs = last.map(|l| pair(cur, l)).unwrap_or_default();
    let pairs = if pairs.is_empty() {
        vec![None; cur.vertices.len()]
    } else {
        pairs
    };
    let mut lines = Vec::new();
    let mut skipped = 0;
    for (v, me) in cur.vertices.iter().enumerate() {
        let what = match roles.get(v) {
            Some(Role::Skip) => {
                skipped += 1;
                continue;
            }
            Some(Role::Hit) => "cached".to_string(),
            Some(Role::Load(l)) => format!("from the imported cache ({})", l.from),
            Some(Role::Run) | None => {
                if ops.get(v).is_some_and(|o| o.ignore_cache) {
                    "runs: it ignores the cache (--no-cache)".to_string()
                } else {
                    let mut s = format!("runs: {}", reason(cur, last, &pairs, v));
                    match imports.get(v) {
                        Some(ImportSeen::Unknown) => {
                            s.push_str("; no imported cache has this step")
                        }
                        Some(ImportSeen::OtherInputs) => {
                            s.push_str("; the imported cache has this step on other inputs")
                        }
                        _ => {}
                    }
                    s
                }
            }
        };
        lines.push(format!("explain: {}: {what}", me.name));
    }
    if skipped > 0 {
        lines.push(format!(
            "explain: {skipped} vert{} below cached results not needed",
            if skipped == 1 { "ex" } else { "ices" }
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(name: &str, key: &str, op: Value, inputs: &[usize]) -> Vertex {
        Vertex {
            name: name.into(),
            key: key.into(),
            op,
            inputs: inputs.to_vec(),
            local: None,
        }
    }

    #[test]
    fn a_changed_command_names_the_field_and_its_inputs_are_paired() {
        let img = json!({"Op": {"source": {"identifier": "docker-image://x"}}});
        let run = |c: &str| json!({"Op": {"exec": {"meta": {"args": ["sh", "-c", c]}}}});
        let last = Record {
            head: Some(2),
            vertices: vec![
                v("image", "k0", img.clone(), &[]),
                v("run a", "k1", run("a"), &[0]),
                v("run b", "k2", run("b"), &[1]),
            ],
        };
        let cur = Record {
            head: Some(2),
            vertices: vec![
                v("image", "k0", img, &[]),
                v("run a2", "k1x", run("a2"), &[0]),
                v("run b", "k2x", run("b"), &[1]),
            ],
        };
        let pairs = pair(&cur, &last);
        assert_eq!(pairs, vec![Some(0), Some(1), Some(2)]);
        assert_eq!(
            reason(&cur, Some(&last), &pairs, 1),
            r#"the op changed: Op.exec.meta.args[2]: "a" → "a2""#
        );
        assert_eq!(
            reason(&cur, Some(&last), &pairs, 2),
            "input 0 changed (run a2)"
        );
        let roles = vec![Role::Hit, Role::Run, Role::Run];
        let lines = explain(&cur, Some(&last), &roles, &[], &[]);
        assert_eq!(lines[0], "explain: image: cached");
        assert!(lines[2].starts_with("explain: run b: runs: input 0 changed"));
        // Nothing recorded: said so.
        assert!(reason(&cur, None, &[None; 3], 1).contains("no earlier build"));
        // Same key, result gone.
        let same = pair(&last, &last);
        assert!(reason(&last, Some(&last), &same, 1).contains("not in the store"));
    }
}
