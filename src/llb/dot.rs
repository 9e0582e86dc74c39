//! A Graphviz view of a loaded graph for people: one node per op with its kind, its name (the
//! custom name, else a short form of the command or action), cache mounts and other extra
//! mounts; edges from inputs to users. (`LoadedGraph::to_dot` is the buildctl-compatible
//! dump; this one is for reading.)

use std::collections::HashSet;

use super::load::{LoadedGraph, Vertex};
use crate::pb;

const MAX_LINE: usize = 60;

/// `text` on one line, at most `MAX_LINE` characters.
fn short(text: &str) -> String {
    let one: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one = one.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= MAX_LINE {
        one
    } else {
        let cut: String = one.chars().take(MAX_LINE - 1).collect();
        format!("{cut}…")
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Label lines and Graphviz shape of one op.
fn describe(v: &Vertex) -> (Vec<String>, &'static str) {
    use pb::op::Op as K;
    let name = v.metadata.description.get("llb.customname");
    let mut lines = Vec::new();
    let shape = match &v.op.op {
        Some(K::Source(s)) => {
            lines.push("source".to_string());
            lines.push(short(&s.identifier));
            "box"
        }
        Some(K::Exec(e)) => {
            lines.push("exec".to_string());
            if let Some(n) = name {
                lines.push(short(n));
            }
            if let Some(m) = &e.meta {
                lines.push(format!("$ {}", short(&m.args.join(" "))));
                if !m.user.is_empty() {
                    lines.push(format!("user {}", m.user));
                }
            }
            for m in &e.mounts {
                if let Some(c) = &m.cache_opt {
                    lines.push(format!("cache {} (id {})", m.dest, short(&c.id)));
                } else if m.mount_type == pb::MountType::Tmpfs as i32 {
                    lines.push(format!("tmpfs {}", m.dest));
                } else if m.mount_type == pb::MountType::Secret as i32 {
                    lines.push(format!("secret {}", m.dest));
                } else if m.mount_type == pb::MountType::Ssh as i32 {
                    lines.push(format!("ssh {}", m.dest));
                } else if m.dest != "/" {
                    let ro = if m.readonly { " (ro)" } else { "" };
                    lines.push(format!("bind {}{ro}", m.dest));
                }
            }
            "ellipse"
        }
        Some(K::File(f)) => {
            lines.push("file".to_string());
            if let Some(n) = name {
                lines.push(short(n));
            }
            use pb::file_action::Action;
            for a in &f.actions {
                lines.push(match &a.action {
                    Some(Action::Copy(c)) => format!("copy {} → {}", short(&c.src), short(&c.dest)),
                    Some(Action::Mkfile(m)) => format!("mkfile {}", short(&m.path)),
                    Some(Action::Mkdir(m)) => format!("mkdir {}", short(&m.path)),
                    Some(Action::Rm(r)) => format!("rm {}", short(&r.path)),
                    Some(Action::Symlink(l)) => format!("symlink {} → {}", l.newpath, l.oldpath),
                    None => "?".to_string(),
                });
            }
            "note"
        }
        Some(K::Merge(m)) => {
            lines.push(format!("merge ({} inputs)", m.inputs.len()));
            if let Some(n) = name {
                lines.push(short(n));
            }
            "diamond"
        }
        Some(K::Diff(_)) => {
            lines.push("diff".to_string());
            if let Some(n) = name {
                lines.push(short(n));
            }
            "diamond"
        }
        Some(K::Build(_)) => {
            lines.push("build".to_string());
            "box"
        }
        Some(K::Passthrough(p)) => {
            lines.push(format!("passthrough {}", p.id));
            "box"
        }
        None => {
            lines.push("terminal".to_string());
            "point"
        }
    };
    (lines, shape)
}

impl LoadedGraph {
    /// A graph for people (see the module docs): `envkit debug llb --dot`.
    pub fn to_readable_dot(&self) -> String {
        let mut s = String::from(
            "digraph llb {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n",
        );
        for (i, v) in self.vertices.iter().enumerate() {
            let (lines, shape) = describe(v);
            let label = lines
                .iter()
                .map(|l| escape(l))
                .collect::<Vec<_>>()
                .join("\\l");
            s.push_str(&format!(
                "  n{i} [shape={shape}, label=\"{label}\\l{}\\l\"];\n",
                &v.digest.hex()[..12]
            ));
        }
        for (i, v) in self.vertices.iter().enumerate() {
            let mut seen = HashSet::new();
            for &input in &v.inputs {
                if seen.insert(input) {
                    s.push_str(&format!("  n{input} -> n{i};\n"));
                }
            }
        }
        if let Some(h) = self.head {
            s.push_str(&format!(
                "  result [shape=doublecircle, label=\"result\"];\n  n{h} -> result;\n"
            ));
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shortens_and_flattens() {
        assert_eq!(super::short("a\nb   c"), "a b c");
        let long = "x".repeat(100);
        assert_eq!(super::short(&long).chars().count(), super::MAX_LINE);
    }
}
