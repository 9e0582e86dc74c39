//! Marshalling a [`State`] into a [`Definition`] with the Go client's exact bytes.
//!
//! Order: post-order DFS from the head (inputs before the op, in the Go client's input order),
//! ops with equal bytes stored once, then the terminal op `{inputs: [head]}`. Each node is
//! encoded once (memoised by identity), so the work is linear in the graph size; the DFS uses
//! an explicit stack so long chains cannot overflow the call stack.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use prost::Message;
use sha2::{Digest as _, Sha256};

use super::state::{
    ActionNode, Chmod, Chown, FileActionKind, Node, NodeKind, Output, State, UserRef, caps,
    normalize_path,
};
use super::{LlbError, wire};
use crate::pb;
use crate::platform::Platform;

/// A content digest, `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// Parses and checks `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, LlbError> {
        match s.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Digest(s.to_string()))
            }
            _ => Err(LlbError::InvalidDigest(s.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A marshalled LLB graph: op bytes (terminal last), metadata per op digest, source map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definition {
    pub def: Vec<Vec<u8>>,
    pub metadata: BTreeMap<String, pb::OpMetadata>,
    pub source: Option<pb::Source>,
}

impl Definition {
    /// Deterministic bytes (metadata keys sorted), as the golden `.pb` files.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_definition(&self.to_pb())
    }

    /// The same Definition with every op decoded and encoded again by envkit's deterministic
    /// encoder. For a Definition envkit (or BuildKit's Go client) marshalled, the result is
    /// byte-identical: the encoding is canonical.
    pub fn reencoded(&self) -> Result<Definition, LlbError> {
        let mut def = Vec::with_capacity(self.def.len());
        for (i, b) in self.def.iter().enumerate() {
            let op = pb::Op::decode(b.as_slice()).map_err(|e| LlbError::Decode {
                what: format!("op #{i}"),
                reason: e.to_string(),
            })?;
            def.push(wire::encode_op(&op));
        }
        Ok(Definition {
            def,
            metadata: self.metadata.clone(),
            source: self.source.clone(),
        })
    }

    /// The same Definition with every image source that names no resolve mode preferring
    /// the local image (`image.resolvemode=local`), as BuildKit's Go client writes
    /// `llb.Image(ref, llb.ResolveModePreferLocal)`; `None` when no source needs it. The
    /// Definition is checked as [`super::load`] checks it. The ops it changes, and the ops
    /// built on them, get new digests; their metadata and source locations follow them. Ops
    /// that do not change keep their bytes.
    pub fn with_local_images_preferred(&self) -> Result<Option<Definition>, LlbError> {
        let graph = super::load_definition(self)?;
        // Old digest → new op bytes and digest, inputs before the ops that use them.
        let mut changed: HashMap<String, (Vec<u8>, String)> = HashMap::new();
        let renamed_inputs = |op: &mut pb::Op, changed: &HashMap<String, (Vec<u8>, String)>| {
            let mut any = false;
            for input in &mut op.inputs {
                if let Some((_, d)) = changed.get(&input.digest) {
                    input.digest = d.clone();
                    any = true;
                }
            }
            any
        };
        for v in &graph.vertices {
            let mut op = v.op.clone();
            let mut any = renamed_inputs(&mut op, &changed);
            if let Some(pb::op::Op::Source(src)) = &mut op.op
                && src.identifier.starts_with("docker-image://")
                && !src.attrs.contains_key("image.resolvemode")
            {
                src.attrs
                    .insert("image.resolvemode".to_string(), "local".to_string());
                any = true;
            }
            if any {
                let bytes = wire::encode_op(&op);
                let digest = Digest::of(&bytes).0;
                changed.insert(v.digest.0.clone(), (bytes, digest));
            }
        }
        if changed.is_empty() {
            return Ok(None);
        }
        // The terminal op (last; `load_definition` checked it) points at the new head.
        if let Some(last) = self.def.last() {
            let mut op = pb::Op::decode(last.as_slice()).map_err(|e| LlbError::Decode {
                what: "terminal op".to_string(),
                reason: e.to_string(),
            })?;
            if renamed_inputs(&mut op, &changed) {
                let bytes = wire::encode_op(&op);
                let digest = Digest::of(&bytes).0;
                changed.insert(Digest::of(last).0, (bytes, digest));
            }
        }
        let def = self
            .def
            .iter()
            .map(|b| match changed.get(Digest::of(b).as_str()) {
                Some((new, _)) => new.clone(),
                None => b.clone(),
            })
            .collect();
        let rename = |k: String| match changed.get(&k) {
            Some((_, d)) => d.clone(),
            None => k,
        };
        let metadata = self
            .metadata
            .iter()
            .map(|(k, v)| (rename(k.clone()), v.clone()))
            .collect();
        let source = self.source.clone().map(|mut s| {
            s.locations = s
                .locations
                .into_iter()
                .map(|(k, v)| (rename(k), v))
                .collect();
            s
        });
        Ok(Some(Definition {
            def,
            metadata,
            source,
        }))
    }

    /// Decodes bytes (no validation beyond protobuf; see [`super::load`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Definition, LlbError> {
        let d = pb::Definition::decode(bytes).map_err(|e| LlbError::Decode {
            what: "Definition".to_string(),
            reason: e.to_string(),
        })?;
        Ok(Definition {
            def: d.def,
            metadata: d.metadata,
            source: d.source,
        })
    }

    pub fn to_pb(&self) -> pb::Definition {
        pb::Definition {
            def: self.def.clone(),
            metadata: self.metadata.clone(),
            source: self.source.clone(),
        }
    }

    /// Digest of each op, in order.
    pub fn digests(&self) -> Vec<Digest> {
        self.def.iter().map(|b| Digest::of(b)).collect()
    }

    /// The digest of the op the terminal op points at (`None` for an empty definition).
    pub fn head(&self) -> Result<Option<Digest>, LlbError> {
        let Some(last) = self.def.last() else {
            return Ok(None);
        };
        let op = pb::Op::decode(last.as_slice()).map_err(|e| LlbError::Decode {
            what: "terminal op".to_string(),
            reason: e.to_string(),
        })?;
        match op.inputs.first() {
            Some(i) => Digest::parse(&i.digest).map(Some),
            None => Ok(None),
        }
    }
}

/// Options for [`State::marshal`].
#[derive(Debug, Clone)]
pub struct MarshalOptions {
    /// Platform of ops that do not set one. Default `linux/amd64`.
    pub platform: Platform,
    /// `local.unique` for local sources that pin none (the Go client uses a random id; envkit
    /// pins it so graphs are reproducible).
    pub local_unique_id: String,
    /// Worker constraints added to every op.
    pub worker_constraints: Vec<String>,
    /// A read-only mount (and environment) added to every exec op: how a remote BuildKit's
    /// steps get the host's CA bundle, which the embedded engine binds in itself.
    pub exec_extra: Option<ExecExtra>,
    /// Proxy variables every exec op gets as `meta.proxy_env` where it has none (`--use-proxy`
    /// for build files: the Go client sets them per exec, `llb.WithProxy`, with the same
    /// bytes and cap).
    pub proxy_env: Option<pb::ProxyEnv>,
}

/// See [`MarshalOptions::exec_extra`].
#[derive(Debug, Clone)]
pub struct ExecExtra {
    pub source: State,
    pub target: String,
    /// `KEY=value`, added where the op sets no `KEY`.
    pub env: Vec<String>,
}

impl Default for MarshalOptions {
    fn default() -> Self {
        MarshalOptions {
            platform: Platform::default(),
            local_unique_id: "envkit".to_string(),
            worker_constraints: Vec::new(),
            exec_extra: None,
            proxy_env: None,
        }
    }
}

struct Encoded {
    digest: Digest,
    bytes: Vec<u8>,
    metadata: pb::OpMetadata,
}

type NodeKey = *const Node;

fn key(n: &Arc<Node>) -> NodeKey {
    Arc::as_ptr(n)
}

/// The inputs of a node in the order the Go client visits them.
fn visit_inputs(node: &Node) -> Vec<&Output> {
    let mut out: Vec<&Output> = Vec::new();
    match &node.kind {
        NodeKind::Source { .. } => {}
        NodeKind::Exec(e) => {
            for m in &e.mounts {
                if let Some(s) = &m.source
                    && !out.iter().any(|o| o.same(s))
                {
                    out.push(s);
                }
            }
        }
        NodeKind::File(f) => {
            // Go's allOutputs: the base, then copy sources from the last action back.
            if let Some(b) = &f.base {
                out.push(b);
            }
            for a in f.actions.iter().rev() {
                if let Some(s) = &a.copy_source
                    && !out.iter().any(|o| o.same(s))
                {
                    out.push(s);
                }
            }
        }
        NodeKind::Merge(inputs) => out.extend(inputs.iter()),
        NodeKind::Diff { lower, upper } => {
            out.extend(lower.iter());
            out.extend(upper.iter());
        }
    }
    out
}

struct Marshaller<'a> {
    opts: &'a MarshalOptions,
    memo: HashMap<NodeKey, Encoded>,
}

impl Marshaller<'_> {
    fn input(&self, o: &Output) -> Result<pb::Input, LlbError> {
        let enc = self.memo.get(&key(&o.node)).ok_or(LlbError::Internal(
            "input marshalled after its user".to_string(),
        ))?;
        Ok(pb::Input {
            digest: enc.digest.0.clone(),
            index: o.index,
        })
    }

    /// Index of `o` in `inputs`, appending it when new (inputs deduped by value, like Go).
    fn add_input(&self, inputs: &mut Vec<pb::Input>, o: &Output) -> Result<i64, LlbError> {
        let inp = self.input(o)?;
        if let Some(i) = inputs.iter().position(|x| *x == inp) {
            return Ok(i as i64);
        }
        inputs.push(inp);
        Ok(inputs.len() as i64 - 1)
    }

    fn encode(&self, node: &Node) -> Result<Encoded, LlbError> {
        if let Some(e) = &node.error {
            return Err(LlbError::InvalidGraph(e.clone()));
        }
        let mut c = node.constraints.clone();
        let mut worker = self.opts.worker_constraints.clone();
        worker.extend(c.worker_constraints.iter().cloned());
        let platform = c
            .platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let mut op = pb::Op {
            inputs: Vec::new(),
            op: None,
            platform: Some(platform.to_pb()),
            constraints: Some(pb::WorkerConstraints { filter: worker }),
        };
        match &node.kind {
            NodeKind::Source {
                identifier,
                attrs,
                local_unique,
            } => {
                let mut attrs = attrs.clone();
                if let Some(pinned) = local_unique {
                    let uid = pinned
                        .clone()
                        .unwrap_or_else(|| self.opts.local_unique_id.clone());
                    attrs.insert("local.unique".to_string(), uid);
                    c.add_cap(caps::SOURCE_LOCAL_UNIQUE);
                }
                if !(identifier.starts_with("docker-image://")
                    || identifier.starts_with("oci-layout://"))
                {
                    op.platform = None;
                }
                op.op = Some(pb::op::Op::Source(pb::SourceOp {
                    identifier: identifier.clone(),
                    attrs,
                }));
            }
            NodeKind::Exec(e) => {
                let mut mounts = Vec::with_capacity(e.mounts.len() + e.secrets.len());
                for m in &e.mounts {
                    let input = match &m.source {
                        Some(s) => self.add_input(&mut op.inputs, s)?,
                        None => -1,
                    };
                    let mut pm = pb::Mount {
                        input,
                        selector: m.selector.clone(),
                        dest: m.target.clone(),
                        output: m.output,
                        readonly: m.readonly,
                        mount_type: pb::MountType::Bind as i32,
                        content_cache: m.content_cache as i32,
                        ..Default::default()
                    };
                    if let Some((id, sharing)) = &m.cache {
                        pm.mount_type = pb::MountType::Cache as i32;
                        pm.cache_opt = Some(pb::CacheOpt {
                            id: id.clone(),
                            sharing: sharing.to_pb() as i32,
                        });
                    }
                    if let Some(size) = m.tmpfs {
                        pm.mount_type = pb::MountType::Tmpfs as i32;
                        pm.tmpfs_opt = Some(pb::TmpfsOpt { size });
                    }
                    mounts.push(pm);
                }
                let mut secretenv = Vec::new();
                for s in &e.secrets {
                    if let Some(env) = &s.env {
                        secretenv.push(pb::SecretEnv {
                            id: s.id.clone(),
                            name: env.clone(),
                            optional: s.optional,
                        });
                    }
                    if let Some(t) = &s.target {
                        mounts.push(pb::Mount {
                            input: -1,
                            dest: t.clone(),
                            mount_type: pb::MountType::Secret as i32,
                            secret_opt: Some(pb::SecretOpt {
                                id: s.id.clone(),
                                uid: s.uid,
                                gid: s.gid,
                                mode: s.mode,
                                optional: s.optional,
                            }),
                            ..Default::default()
                        });
                    }
                }
                for s in &e.ssh {
                    mounts.push(pb::Mount {
                        input: -1,
                        dest: s.target.clone().unwrap_or_default(),
                        mount_type: pb::MountType::Ssh as i32,
                        ssh_opt: Some(pb::SshOpt {
                            id: s.id.clone(),
                            uid: s.uid,
                            gid: s.gid,
                            mode: s.mode,
                            optional: s.optional,
                        }),
                        ..Default::default()
                    });
                }
                let mut meta = e.meta.clone();
                if meta.proxy_env.is_none()
                    && let Some(p) = &self.opts.proxy_env
                {
                    meta.proxy_env = Some(p.clone());
                    c.add_cap(caps::EXEC_META_PROXY);
                }
                if let Some(x) = &self.opts.exec_extra
                    && let Some(src) = &x.source.out
                {
                    let input = self.add_input(&mut op.inputs, src)?;
                    mounts.push(pb::Mount {
                        input,
                        dest: x.target.clone(),
                        output: -1,
                        readonly: true,
                        mount_type: pb::MountType::Bind as i32,
                        ..Default::default()
                    });
                    for kv in &x.env {
                        let key = kv.split('=').next().unwrap_or("");
                        if !meta.env.iter().any(|e| e.split('=').next() == Some(key)) {
                            meta.env.push(kv.clone());
                        }
                    }
                }
                op.op = Some(pb::op::Op::Exec(pb::ExecOp {
                    meta: Some(meta),
                    mounts,
                    network: e.network as i32,
                    security: e.security as i32,
                    secretenv,
                    cdi_devices: e.cdi_devices.clone(),
                }));
            }
            NodeKind::File(f) => {
                op.platform = None;
                let fop = self.encode_file(&mut op.inputs, f.base.as_ref(), &f.dir, &f.actions)?;
                op.op = Some(pb::op::Op::File(fop));
            }
            NodeKind::Merge(inputs) => {
                op.platform = None;
                let mut m = pb::MergeOp::default();
                for o in inputs {
                    m.inputs.push(pb::MergeInput {
                        input: op.inputs.len() as i64,
                    });
                    let inp = self.input(o)?;
                    op.inputs.push(inp);
                }
                op.op = Some(pb::op::Op::Merge(m));
            }
            NodeKind::Diff { lower, upper } => {
                op.platform = None;
                let mut d = pb::DiffOp::default();
                let mut li = pb::LowerDiffInput { input: -1 };
                if let Some(l) = lower {
                    li.input = op.inputs.len() as i64;
                    let inp = self.input(l)?;
                    op.inputs.push(inp);
                }
                let mut ui = pb::UpperDiffInput { input: -1 };
                if let Some(u) = upper {
                    ui.input = op.inputs.len() as i64;
                    let inp = self.input(u)?;
                    op.inputs.push(inp);
                }
                d.lower = Some(li);
                d.upper = Some(ui);
                op.op = Some(pb::op::Op::Diff(d));
            }
        }
        let bytes = wire::encode_op(&op);
        Ok(Encoded {
            digest: Digest::of(&bytes),
            bytes,
            metadata: c.metadata,
        })
    }

    fn encode_file(
        &self,
        inputs: &mut Vec<pb::Input>,
        base: Option<&Output>,
        dir: &str,
        actions: &[ActionNode],
    ) -> Result<pb::FileOp, LlbError> {
        // First pass: input indices, in the order the Go client adds them.
        let mut base_idx = -1i64;
        let mut second = Vec::with_capacity(actions.len());
        for a in actions {
            if let Some(b) = base {
                base_idx = self.add_input(inputs, b)?;
            }
            let s = match (&a.kind, &a.copy_source) {
                (FileActionKind::Copy { .. }, Some(src)) => self.add_input(inputs, src)?,
                _ => -1,
            };
            second.push(s);
        }
        let n_inputs = inputs.len() as i64;
        let mut fop = pb::FileOp::default();
        for (i, (a, sec)) in actions.iter().zip(second).enumerate() {
            let input = if i == 0 {
                base_idx
            } else {
                n_inputs + i as i64 - 1
            };
            let output = if i + 1 == actions.len() { 0 } else { -1 };
            let action = file_action_pb(&a.kind, dir, base_idx);
            fop.actions.push(pb::FileAction {
                input,
                secondary_input: sec,
                output,
                action: Some(action),
            });
        }
        Ok(fop)
    }
}

fn chown_pb(c: &Option<Chown>, base: i64) -> Option<pb::ChownOpt> {
    let c = c.as_ref()?;
    let one = |u: &Option<UserRef>| {
        u.as_ref().map(|u| pb::UserOpt {
            user: Some(match u {
                UserRef::Id(id) => pb::user_opt::User::ById(*id),
                UserRef::Name(n) => pb::user_opt::User::ByName(pb::NamedUserOpt {
                    name: n.clone(),
                    input: base,
                }),
            }),
        })
    };
    Some(pb::ChownOpt {
        user: one(&c.user),
        group: one(&c.group),
    })
}

fn file_action_pb(kind: &FileActionKind, dir: &str, base: i64) -> pb::file_action::Action {
    use pb::file_action::Action;
    match kind {
        FileActionKind::Mkdir { path, mode, opts } => Action::Mkdir(pb::FileActionMkDir {
            path: normalize_path(dir, path, false),
            mode: (mode & 0o777) as i32,
            make_parents: opts.make_parents,
            owner: chown_pb(&opts.chown, base),
            timestamp: opts.created_time.unwrap_or(-1),
        }),
        FileActionKind::Mkfile {
            path,
            mode,
            data,
            opts,
        } => Action::Mkfile(pb::FileActionMkFile {
            path: normalize_path(dir, path, false),
            mode: (mode & 0o777) as i32,
            data: data.clone(),
            owner: chown_pb(&opts.chown, base),
            timestamp: opts.created_time.unwrap_or(-1),
        }),
        FileActionKind::Rm { path, opts } => Action::Rm(pb::FileActionRm {
            path: normalize_path(dir, path, false),
            allow_not_found: opts.allow_not_found,
            allow_wildcard: opts.allow_wildcard,
        }),
        FileActionKind::Symlink {
            oldpath,
            newpath,
            opts,
        } => Action::Symlink(pb::FileActionSymlink {
            oldpath: oldpath.clone(),
            newpath: newpath.clone(),
            owner: chown_pb(&opts.chown, base),
            timestamp: opts.created_time.unwrap_or(-1),
        }),
        FileActionKind::Copy { src, dest, opts } => {
            let (mode, mode_str) = match &opts.mode {
                None => (-1, String::new()),
                Some(Chmod::Mode(m)) => (*m as i32, String::new()),
                Some(Chmod::Str(s)) => (0, s.clone()),
            };
            Action::Copy(pb::FileActionCopy {
                src: src.clone(),
                dest: normalize_path(dir, dest, true),
                owner: chown_pb(&opts.chown, base),
                mode,
                follow_symlink: opts.follow_symlinks,
                dir_copy_contents: opts.copy_dir_contents_only,
                attempt_unpack_docker_compatibility: opts.attempt_unpack,
                create_dest_path: opts.create_dest_path,
                allow_wildcard: opts.allow_wildcard,
                allow_empty_wildcard: opts.allow_empty_wildcard,
                timestamp: opts.created_time.unwrap_or(-1),
                include_patterns: opts.include_patterns.clone(),
                exclude_patterns: opts.exclude_patterns.clone(),
                always_replace_existing_dest_paths: opts.always_replace_existing_dest_paths,
                mode_str,
                required_paths: opts.required_paths.clone(),
            })
        }
    }
}

/// Go's `mergeMetadata(m1, m2)`.
fn merge_metadata(m1: &mut pb::OpMetadata, m2: &pb::OpMetadata) {
    if m2.ignore_cache {
        m1.ignore_cache = true;
    }
    for (k, v) in &m2.description {
        m1.description.insert(k.clone(), v.clone());
    }
    if m2.export_cache.is_some() {
        m1.export_cache = m2.export_cache;
    }
    for k in m2.caps.keys() {
        m1.caps.insert(k.clone(), true);
    }
    if m2.progress_group.is_some() {
        m1.progress_group = m2.progress_group.clone();
    }
    if m2.linux_resources.is_some() {
        m1.linux_resources = m2.linux_resources.clone();
    }
}

impl State {
    /// Marshals the graph that produces this state.
    pub fn marshal(&self, opts: &MarshalOptions) -> Result<Definition, LlbError> {
        let mut def = Definition::default();
        let Some(head) = &self.out else {
            return Ok(def);
        };
        let mut m = Marshaller {
            opts,
            memo: HashMap::new(),
        };
        let mut seen_digests: HashSet<Digest> = HashSet::new();
        let mut order: Vec<Digest> = Vec::new();

        // The extra mount's source goes first: every exec op refers to it.
        if let Some(x) = &opts.exec_extra
            && let Some(src) = &x.source.out
        {
            let enc = m.encode(&src.node)?;
            let md = def.metadata.entry(enc.digest.0.clone()).or_default();
            merge_metadata(md, &enc.metadata);
            if seen_digests.insert(enc.digest.clone()) {
                order.push(enc.digest.clone());
                def.def.push(enc.bytes.clone());
            }
            m.memo.insert(key(&src.node), enc);
        }
        // Iterative post-order DFS. Frame: node and the index of the next input to visit.
        let mut stack: Vec<(Arc<Node>, usize)> = vec![(head.node.clone(), 0)];
        let mut on_stack: HashSet<NodeKey> = HashSet::new();
        on_stack.insert(key(&head.node));
        while let Some((node, next)) = stack.pop() {
            let inputs = visit_inputs(&node);
            if let Some(inp) = inputs.get(next) {
                let child = inp.node.clone();
                stack.push((node, next + 1));
                let k = key(&child);
                if !m.memo.contains_key(&k) && !on_stack.contains(&k) {
                    on_stack.insert(k);
                    stack.push((child, 0));
                }
                continue;
            }
            let enc = m.encode(&node)?;
            let md = def.metadata.entry(enc.digest.0.clone()).or_default();
            merge_metadata(md, &enc.metadata);
            if seen_digests.insert(enc.digest.clone()) {
                order.push(enc.digest.clone());
                def.def.push(enc.bytes.clone());
            }
            on_stack.remove(&key(&node));
            m.memo.insert(key(&node), enc);
        }

        // Source map: an (empty) location list for every op, like the Go client.
        let mut source = pb::Source::default();
        for d in &order {
            source
                .locations
                .insert(d.0.clone(), pb::Locations::default());
        }

        let head_input = m.input(head)?;
        let terminal = pb::Op {
            inputs: vec![head_input],
            ..Default::default()
        };
        let tbytes = wire::encode_op(&terminal);
        let tdigest = Digest::of(&tbytes);
        let mut tmd = def.metadata.remove(&tdigest.0).unwrap_or_default();
        tmd.caps.insert(caps::CONSTRAINTS.to_string(), true);
        tmd.caps.insert(caps::PLATFORM.to_string(), true);
        for md in def.metadata.values() {
            if md.ignore_cache {
                tmd.caps.insert(caps::META_IGNORE_CACHE.to_string(), true);
            }
            if !md.description.is_empty() {
                tmd.caps.insert(caps::META_DESCRIPTION.to_string(), true);
            }
            if md.export_cache.is_some() {
                tmd.caps.insert(caps::META_EXPORT_CACHE.to_string(), true);
            }
        }
        def.def.push(tbytes);
        def.metadata.insert(tdigest.0, tmd);
        def.source = Some(source);
        Ok(def)
    }
}
