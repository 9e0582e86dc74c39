//! The builder: immutable [`State`] values that share their history, modelled on the Go client.
//!
//! A `State` is an optional output of an op (none = scratch) plus the process metadata that a
//! later `run` will use (env, cwd, user, network, ...). Ops are reference-counted nodes, so
//! building a chain is O(1) per step and `marshal` (see `marshal.rs`) is linear.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::pb;

use crate::platform::Platform;
use crate::reference::normalize_image_ref;

// ---------------------------------------------------------------------------------------------
// Capability names (BuildKit `solver/pb/caps.go`) used by the builder.

pub(crate) mod caps {
    pub const SOURCE_IMAGE: &str = "source.image";
    pub const SOURCE_IMAGE_RESOLVE_MODE: &str = "source.image.resolvemode";
    pub const SOURCE_IMAGE_LAYER_LIMIT: &str = "source.image.layerlimit";
    pub const SOURCE_IMAGE_CHECKSUM: &str = "source.image.checksum";
    pub const SOURCE_LOCAL: &str = "source.local";
    pub const SOURCE_LOCAL_UNIQUE: &str = "source.local.unique";
    pub const SOURCE_LOCAL_SESSION_ID: &str = "source.local.sessionid";
    pub const SOURCE_LOCAL_INCLUDE: &str = "source.local.includepatterns";
    pub const SOURCE_LOCAL_FOLLOW: &str = "source.local.followpaths";
    pub const SOURCE_LOCAL_EXCLUDE: &str = "source.local.excludepatterns";
    pub const SOURCE_LOCAL_SHARED_KEY_HINT: &str = "source.local.sharedkeyhint";
    pub const SOURCE_GIT: &str = "source.git";
    pub const SOURCE_GIT_KEEP_DIR: &str = "source.git.keepgitdir";
    pub const SOURCE_GIT_FULL_URL: &str = "source.git.fullurl";
    pub const SOURCE_GIT_MOUNT_SSH_SOCK: &str = "source.git.mountsshsock";
    pub const SOURCE_GIT_CHECKSUM: &str = "source.git.checksum";
    pub const SOURCE_HTTP: &str = "source.http";
    pub const SOURCE_HTTP_CHECKSUM: &str = "source.http.checksum";
    pub const SOURCE_HTTP_PERM: &str = "source.http.perm";
    /// Misspelled in BuildKit itself; the wire value is what counts.
    pub const SOURCE_HTTP_UIDGID: &str = "soruce.http.uidgid";
    pub const EXEC_META_BASE: &str = "exec.meta.base";
    pub const EXEC_META_CGROUP_PARENT: &str = "exec.meta.cgroup.parent";
    pub const EXEC_META_NETWORK: &str = "exec.meta.network";
    pub const EXEC_META_PROXY: &str = "exec.meta.proxyenv";
    pub const EXEC_META_SECURITY: &str = "exec.meta.security";
    pub const EXEC_META_ULIMIT: &str = "exec.meta.ulimit";
    pub const EXEC_META_CDI: &str = "exec.meta.cdi";
    pub const EXEC_META_LINUX_RESOURCES: &str = "exec.meta.linux.resources";
    pub const EXEC_MOUNT_BIND: &str = "exec.mount.bind";
    pub const EXEC_MOUNT_CACHE: &str = "exec.mount.cache";
    pub const EXEC_MOUNT_CACHE_SHARING: &str = "exec.mount.cache.sharing";
    pub const EXEC_MOUNT_SELECTOR: &str = "exec.mount.selector";
    pub const EXEC_MOUNT_TMPFS: &str = "exec.mount.tmpfs";
    pub const EXEC_MOUNT_TMPFS_SIZE: &str = "exec.mount.tmpfs.size";
    pub const EXEC_MOUNT_SECRET: &str = "exec.mount.secret";
    pub const EXEC_MOUNT_SSH: &str = "exec.mount.ssh";
    pub const EXEC_MOUNT_CONTENT_CACHE: &str = "exec.mount.cache.content";
    pub const EXEC_SECRET_ENV: &str = "exec.secretenv";
    pub const EXEC_VALID_EXIT_CODE: &str = "exec.validexitcode";
    pub const FILE_BASE: &str = "file.base";
    pub const MERGE_OP: &str = "mergeop";
    pub const DIFF_OP: &str = "diffop";
    pub const CONSTRAINTS: &str = "constraints";
    pub const PLATFORM: &str = "platform";
    pub const META_IGNORE_CACHE: &str = "meta.ignorecache";
    pub const META_DESCRIPTION: &str = "meta.description";
    pub const META_EXPORT_CACHE: &str = "meta.exportcache";
}

/// Description key BuildKit shows as the step name.
pub const CUSTOM_NAME_KEY: &str = "llb.customname";

// ---------------------------------------------------------------------------------------------
// Per-op constraints and metadata.

/// Per-op options that are not part of the op body: platform, worker constraints and
/// `OpMetadata` (custom name, descriptions, ignore-cache, export-cache, progress group,
/// resources). Everything but the platform and worker filters leaves the op digest unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    pub platform: Option<Platform>,
    pub worker_constraints: Vec<String>,
    pub metadata: pb::OpMetadata,
}

impl Constraints {
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `llb.customname`, the name BuildKit shows for the step.
    pub fn custom_name(self, name: impl Into<String>) -> Self {
        self.description(CUSTOM_NAME_KEY, name)
    }
    pub fn description(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.description.insert(key.into(), value.into());
        self
    }
    pub fn ignore_cache(mut self) -> Self {
        self.metadata.ignore_cache = true;
        self
    }
    /// `Some(true)`: always export; `Some(false)`: never; `None`: build default.
    pub fn export_cache(mut self, value: Option<bool>) -> Self {
        self.metadata.export_cache = value.map(|v| pb::ExportCache { value: v });
        self
    }
    pub fn progress_group(mut self, id: &str, name: &str, weak: bool) -> Self {
        self.metadata.progress_group = Some(pb::ProgressGroup {
            id: id.into(),
            name: name.into(),
            weak,
        });
        self
    }
    pub fn linux_resources(mut self, r: pb::LinuxResources) -> Self {
        self.metadata.linux_resources = Some(r);
        self
    }
    pub fn platform(mut self, p: Platform) -> Self {
        self.platform = Some(p);
        self
    }
    pub fn worker_constraint(mut self, filter: impl Into<String>) -> Self {
        self.worker_constraints.push(filter.into());
        self
    }
    pub(crate) fn add_cap(&mut self, cap: &str) {
        self.metadata.caps.insert(cap.to_string(), true);
    }
}

// ---------------------------------------------------------------------------------------------
// Graph nodes.

/// One op in the graph being built.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) constraints: Constraints,
    /// An error found while building (e.g. an invalid image reference), reported by marshal.
    pub(crate) error: Option<String>,
}

#[derive(Debug)]
pub(crate) enum NodeKind {
    Source {
        identifier: String,
        attrs: BTreeMap<String, String>,
        /// `local://` sources without a session get `local.unique` at marshal time.
        local_unique: Option<Option<String>>,
    },
    Exec(Box<ExecNode>),
    File(FileNode),
    Merge(Vec<Output>),
    Diff {
        lower: Option<Output>,
        upper: Option<Output>,
    },
}

/// A reference to one output of a node.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub(crate) node: Arc<Node>,
    pub(crate) index: i64,
}

impl Output {
    pub(crate) fn same(&self, other: &Output) -> bool {
        Arc::ptr_eq(&self.node, &other.node) && self.index == other.index
    }
}

#[derive(Debug)]
pub(crate) struct ExecNode {
    pub(crate) meta: pb::Meta,
    pub(crate) network: pb::NetMode,
    pub(crate) security: pb::SecurityMode,
    /// Sorted by target (stable), like the Go client does before marshalling.
    pub(crate) mounts: Vec<MountNode>,
    pub(crate) secrets: Vec<SecretMount>,
    pub(crate) ssh: Vec<SshMount>,
    pub(crate) cdi_devices: Vec<pb::CdiDevice>,
}

#[derive(Debug)]
pub(crate) struct MountNode {
    pub(crate) target: String,
    pub(crate) source: Option<Output>,
    pub(crate) readonly: bool,
    pub(crate) selector: String,
    pub(crate) cache: Option<(String, CacheSharing)>,
    pub(crate) tmpfs: Option<i64>,
    pub(crate) content_cache: pb::MountContentCache,
    pub(crate) output: i64,
}

#[derive(Debug)]
pub(crate) struct FileNode {
    /// The state the actions apply to (`None` = scratch).
    pub(crate) base: Option<Output>,
    /// Working directory of the base state: relative paths are resolved against it.
    pub(crate) dir: String,
    pub(crate) actions: Vec<ActionNode>,
}

#[derive(Debug)]
pub(crate) struct ActionNode {
    pub(crate) kind: FileActionKind,
    /// For copies: the source state's output (`None` = scratch source).
    pub(crate) copy_source: Option<Output>,
}

// ---------------------------------------------------------------------------------------------
// State.

/// Process metadata carried by a state (`AddEnv`, `Dir`, `User`, ...).
#[derive(Debug, Clone)]
pub(crate) struct StateMeta {
    /// In Go `EnvList` order: a replaced key moves to the end.
    env: Vec<(String, String)>,
    dir: String,
    user: String,
    hostname: String,
    cgroup_parent: String,
    network: pb::NetMode,
    security: pb::SecurityMode,
    extra_hosts: Vec<pb::HostIp>,
    ulimits: Vec<pb::Ulimit>,
    valid_exit_codes: Option<Vec<i32>>,
    platform: Option<Platform>,
}

impl Default for StateMeta {
    fn default() -> Self {
        StateMeta {
            env: Vec::new(),
            dir: "/".to_string(),
            user: String::new(),
            hostname: String::new(),
            cgroup_parent: String::new(),
            network: pb::NetMode::Unset,
            security: pb::SecurityMode::Sandbox,
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            valid_exit_codes: None,
            platform: None,
        }
    }
}

/// An immutable build state: a filesystem (output of an op, or scratch) plus process metadata.
#[derive(Debug, Clone)]
pub struct State {
    pub(crate) out: Option<Output>,
    pub(crate) meta: Arc<StateMeta>,
}

impl Default for State {
    fn default() -> Self {
        scratch()
    }
}

/// The empty filesystem.
pub fn scratch() -> State {
    State {
        out: None,
        meta: Arc::new(StateMeta::default()),
    }
}

fn new_state(node: Node, index: i64) -> State {
    let platform = node.constraints.platform.clone();
    let meta = StateMeta {
        platform,
        ..StateMeta::default()
    };
    State {
        out: Some(Output {
            node: Arc::new(node),
            index,
        }),
        meta: Arc::new(meta),
    }
}

/// How an image source resolves its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveMode {
    Default,
    ForcePull,
    PreferLocal,
}

/// Options of [`image_with`].
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub resolve_mode: Option<ResolveMode>,
    pub layer_limit: Option<i32>,
    pub checksum: Option<String>,
    pub record_type: Option<String>,
    pub constraints: Constraints,
}

/// `llb.Image(ref)`: short names are normalised (`busybox` → `docker.io/library/busybox:latest`).
pub fn image(reference: &str) -> State {
    image_with(reference, ImageOptions::default())
}

/// An image source with options.
pub fn image_with(reference: &str, opts: ImageOptions) -> State {
    let mut c = opts.constraints;
    c.add_cap(caps::SOURCE_IMAGE);
    let mut attrs = BTreeMap::new();
    match opts.resolve_mode {
        None | Some(ResolveMode::Default) => {}
        Some(ResolveMode::ForcePull) => {
            attrs.insert("image.resolvemode".to_string(), "pull".to_string());
            c.add_cap(caps::SOURCE_IMAGE_RESOLVE_MODE);
        }
        Some(ResolveMode::PreferLocal) => {
            attrs.insert("image.resolvemode".to_string(), "local".to_string());
        }
    }
    if let Some(rt) = opts.record_type {
        attrs.insert("image.recordtype".to_string(), rt);
    }
    if let Some(ll) = opts.layer_limit {
        attrs.insert("image.layerlimit".to_string(), ll.to_string());
        c.add_cap(caps::SOURCE_IMAGE_LAYER_LIMIT);
    }
    if let Some(ck) = opts.checksum {
        attrs.insert("image.checksum".to_string(), ck);
        c.add_cap(caps::SOURCE_IMAGE_CHECKSUM);
    }
    let (name, error) = match normalize_image_ref(reference) {
        Ok(n) => (n, None),
        Err(e) => (reference.to_string(), Some(e)),
    };
    new_state(
        Node {
            kind: NodeKind::Source {
                identifier: format!("docker-image://{name}"),
                attrs,
                local_unique: None,
            },
            constraints: c,
            error,
        },
        0,
    )
}

/// Options of [`local`].
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    pub session_id: Option<String>,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub follow_paths: Vec<String>,
    pub shared_key_hint: Option<String>,
    /// Pins `local.unique` for this source (else the marshal option is used).
    pub unique_id: Option<String>,
    pub constraints: Constraints,
}

/// Go's `encoding/json` output for a list of strings (HTML-safe escaping).
pub(crate) fn go_json_strings(list: &[String]) -> String {
    let mut s = String::from("[");
    for (i, x) in list.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        super::json::push_go_string(&mut s, x);
    }
    s.push(']');
    s
}

/// `llb.Local(name)`: a directory the client provides (the build context).
pub fn local(name: &str, opts: LocalOptions) -> State {
    let mut c = opts.constraints;
    let mut attrs = BTreeMap::new();
    if let Some(s) = &opts.session_id {
        attrs.insert("local.session".to_string(), s.clone());
        c.add_cap(caps::SOURCE_LOCAL_SESSION_ID);
    }
    if !opts.include_patterns.is_empty() {
        attrs.insert(
            "local.includepattern".to_string(),
            go_json_strings(&opts.include_patterns),
        );
        c.add_cap(caps::SOURCE_LOCAL_INCLUDE);
    }
    if !opts.follow_paths.is_empty() {
        attrs.insert(
            "local.followpaths".to_string(),
            go_json_strings(&opts.follow_paths),
        );
        c.add_cap(caps::SOURCE_LOCAL_FOLLOW);
    }
    if !opts.exclude_patterns.is_empty() {
        attrs.insert(
            "local.excludepatterns".to_string(),
            go_json_strings(&opts.exclude_patterns),
        );
        c.add_cap(caps::SOURCE_LOCAL_EXCLUDE);
    }
    if let Some(h) = &opts.shared_key_hint {
        attrs.insert("local.sharedkeyhint".to_string(), h.clone());
        c.add_cap(caps::SOURCE_LOCAL_SHARED_KEY_HINT);
    }
    c.add_cap(caps::SOURCE_LOCAL);
    let local_unique = if opts.session_id.is_some() {
        None
    } else {
        Some(opts.unique_id)
    };
    new_state(
        Node {
            kind: NodeKind::Source {
                identifier: format!("local://{name}"),
                attrs,
                local_unique,
            },
            constraints: c,
            error: None,
        },
        0,
    )
}

/// A generic source op (`git://`, `https://`, ...) with the given attrs and caps.
pub fn source(
    identifier: &str,
    attrs: BTreeMap<String, String>,
    constraints: Constraints,
) -> State {
    new_state(
        Node {
            kind: NodeKind::Source {
                identifier: identifier.to_string(),
                attrs,
                local_unique: None,
            },
            constraints,
            error: None,
        },
        0,
    )
}

/// Options of [`git`].
#[derive(Debug, Clone, Default)]
pub struct GitOptions {
    /// Keep the `.git` directory in the result.
    pub keep_git_dir: bool,
    /// The commit the ref must resolve to.
    pub checksum: Option<String>,
    pub constraints: Constraints,
}

/// `llb.Git(url, fragment)`: a git checkout. `fragment` is `ref[:subdir]`. A URL without a
/// scheme is taken as https, like the Go client; SSH URLs mount the default SSH agent
/// socket (the Go client also scans the host's keys, which envkit leaves to the builder).
pub fn git(url: &str, fragment: &str, opts: GitOptions) -> State {
    let mut c = opts.constraints;
    let full = if url.contains("://") || url.starts_with("git@") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let ssh = full.starts_with("ssh://") || full.starts_with("git@");
    // host + "/" + path, as the Go client builds the id for every protocol.
    let host_path = if let Some(rest) = full.strip_prefix("git@") {
        rest.replacen(':', "/", 1)
    } else {
        let rest = full.split_once("://").map_or(full.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.to_string()
    };
    let (host, path) = host_path.split_once('/').unwrap_or((&host_path, ""));
    let mut id = format!("{host}{}", clean_path(&format!("/{path}")));
    let (git_ref, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let subdir = clean_path(&format!("/{subdir}"));
    let subdir = subdir.trim_start_matches('/');
    if !git_ref.is_empty() || !subdir.is_empty() {
        id.push('#');
        id.push_str(git_ref);
        if !subdir.is_empty() {
            id.push(':');
            id.push_str(subdir);
        }
    }
    let mut attrs = BTreeMap::new();
    if opts.keep_git_dir {
        attrs.insert("git.keepgitdir".to_string(), "true".to_string());
        c.add_cap(caps::SOURCE_GIT_KEEP_DIR);
    }
    attrs.insert("git.fullurl".to_string(), full.clone());
    c.add_cap(caps::SOURCE_GIT_FULL_URL);
    attrs.insert(
        "git.authtokensecret".to_string(),
        "GIT_AUTH_TOKEN".to_string(),
    );
    attrs.insert(
        "git.authheadersecret".to_string(),
        "GIT_AUTH_HEADER".to_string(),
    );
    if ssh {
        attrs.insert("git.mountsshsock".to_string(), "default".to_string());
        c.add_cap(caps::SOURCE_GIT_MOUNT_SSH_SOCK);
    }
    if let Some(ck) = opts.checksum.filter(|c| !c.is_empty()) {
        attrs.insert("git.checksum".to_string(), ck);
        c.add_cap(caps::SOURCE_GIT_CHECKSUM);
    }
    c.add_cap(caps::SOURCE_GIT);
    source(&format!("git://{id}"), attrs, c)
}

/// Options of [`http`].
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `sha256:<hex>` the download must match.
    pub checksum: Option<String>,
    /// Name of the file in the result (default: from the URL).
    pub filename: Option<String>,
    /// File mode; 0 for the default.
    pub perm: u32,
    /// Owner of the file; 0 is left out, as in the Go client.
    pub uid: u32,
    pub gid: u32,
    pub constraints: Constraints,
}

/// `llb.HTTP(url)`: a single file downloaded from `url`.
pub fn http(url: &str, opts: HttpOptions) -> State {
    let mut c = opts.constraints;
    let mut attrs = BTreeMap::new();
    if let Some(ck) = opts.checksum.filter(|c| !c.is_empty()) {
        attrs.insert("http.checksum".to_string(), ck);
        c.add_cap(caps::SOURCE_HTTP_CHECKSUM);
    }
    if let Some(f) = opts.filename.filter(|f| !f.is_empty()) {
        attrs.insert("http.filename".to_string(), f);
    }
    if opts.perm != 0 {
        attrs.insert("http.perm".to_string(), format!("0{:o}", opts.perm));
        c.add_cap(caps::SOURCE_HTTP_PERM);
    }
    if opts.uid != 0 {
        attrs.insert("http.uid".to_string(), opts.uid.to_string());
        c.add_cap(caps::SOURCE_HTTP_UIDGID);
    }
    if opts.gid != 0 {
        attrs.insert("http.gid".to_string(), opts.gid.to_string());
        c.add_cap(caps::SOURCE_HTTP_UIDGID);
    }
    c.add_cap(caps::SOURCE_HTTP);
    source(url, attrs, c)
}

/// `llb.Merge`: layers the inputs on top of each other. Keeps the first input's metadata.
pub fn merge(inputs: &[State], mut c: Constraints) -> State {
    let filtered: Vec<&State> = inputs.iter().filter(|s| s.out.is_some()).collect();
    match filtered.len() {
        0 => return scratch(),
        1 => return filtered[0].clone(),
        _ => {}
    }
    c.add_cap(caps::MERGE_OP);
    let outs = filtered.iter().filter_map(|s| s.out.clone()).collect();
    filtered[0].with_node(
        Node {
            kind: NodeKind::Merge(outs),
            constraints: c,
            error: None,
        },
        0,
    )
}

/// `llb.Diff`: the changes from `lower` to `upper`. Keeps `lower`'s metadata.
pub fn diff(lower: &State, upper: &State, mut c: Constraints) -> State {
    if lower.out.is_none() {
        if upper.out.is_none() {
            return scratch();
        }
        return upper.clone();
    }
    c.add_cap(caps::DIFF_OP);
    lower.with_node(
        Node {
            kind: NodeKind::Diff {
                lower: lower.out.clone(),
                upper: upper.out.clone(),
            },
            constraints: c,
            error: None,
        },
        0,
    )
}

impl State {
    /// True for scratch.
    pub fn is_scratch(&self) -> bool {
        self.out.is_none()
    }

    fn with_node(&self, node: Node, index: i64) -> State {
        let p = node.constraints.platform.clone();
        let mut s = State {
            out: Some(Output {
                node: Arc::new(node),
                index,
            }),
            meta: self.meta.clone(),
        };
        if let Some(p) = p {
            Arc::make_mut(&mut s.meta).platform = Some(p);
        }
        s
    }

    fn edit(&self, f: impl FnOnce(&mut StateMeta)) -> State {
        let mut s = self.clone();
        f(Arc::make_mut(&mut s.meta));
        s
    }

    /// The same filesystem with default process metadata (env, dir, user, network, ...);
    /// the platform is kept. Like the Go client's `NewState(s.Output())`.
    pub fn reset_meta(&self) -> State {
        let meta = StateMeta {
            platform: self.meta.platform.clone(),
            ..StateMeta::default()
        };
        State {
            out: self.out.clone(),
            meta: Arc::new(meta),
        }
    }

    /// `other`'s filesystem with this state's process metadata (the Go client's
    /// `s.WithOutput(other.Output())`).
    pub fn with_output(&self, other: &State) -> State {
        State {
            out: other.out.clone(),
            meta: self.meta.clone(),
        }
    }

    /// Sets (or replaces, moving it last) an environment variable for later `run`s.
    pub fn add_env(&self, key: &str, value: &str) -> State {
        self.edit(|m| {
            m.env.retain(|(k, _)| k != key);
            m.env.push((key.to_string(), value.to_string()));
        })
    }

    /// The environment as `KEY=value` entries.
    pub fn env(&self) -> Vec<String> {
        self.meta
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// The value of one environment variable.
    pub fn get_env(&self, key: &str) -> Option<&str> {
        self.meta
            .env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Working directory; a relative path is joined to the current one.
    pub fn dir(&self, path: &str) -> State {
        let new = if path.starts_with('/') {
            path.to_string()
        } else {
            join_clean(&self.meta.dir, path)
        };
        self.edit(|m| m.dir = new)
    }

    pub fn get_dir(&self) -> &str {
        &self.meta.dir
    }

    pub fn user(&self, user: &str) -> State {
        self.edit(|m| m.user = user.to_string())
    }

    pub fn get_user(&self) -> &str {
        &self.meta.user
    }

    pub fn hostname(&self, h: &str) -> State {
        self.edit(|m| m.hostname = h.to_string())
    }

    pub fn network(&self, n: pb::NetMode) -> State {
        self.edit(|m| m.network = n)
    }

    pub fn security(&self, s: pb::SecurityMode) -> State {
        self.edit(|m| m.security = s)
    }

    pub fn add_extra_host(&self, host: &str, ip: &str) -> State {
        self.edit(|m| {
            m.extra_hosts.push(pb::HostIp {
                host: host.to_string(),
                ip: ip.to_string(),
            })
        })
    }

    pub fn add_ulimit(&self, name: &str, soft: i64, hard: i64) -> State {
        self.edit(|m| {
            m.ulimits.push(pb::Ulimit {
                name: name.to_string(),
                soft,
                hard,
            })
        })
    }

    pub fn cgroup_parent(&self, p: &str) -> State {
        self.edit(|m| m.cgroup_parent = p.to_string())
    }

    pub fn valid_exit_codes(&self, codes: &[i32]) -> State {
        self.edit(|m| m.valid_exit_codes = Some(codes.to_vec()))
    }

    /// The platform later ops of this state are built for.
    pub fn platform(&self, p: Platform) -> State {
        self.edit(|m| m.platform = Some(p))
    }

    pub fn get_platform(&self) -> Option<&Platform> {
        self.meta.platform.as_ref()
    }

    /// Runs a command on this state (see [`Run`]).
    pub fn run(&self, run: Run) -> ExecState {
        let meta = &self.meta;
        let mut c = run.constraints;
        let mut env = meta.env.clone();
        if !run.ssh.is_empty() && !env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
            let target = run.ssh[0]
                .target
                .clone()
                .unwrap_or_else(|| "/run/buildkit/ssh_agent.0".to_string());
            env.push(("SSH_AUTH_SOCK".to_string(), target));
        }
        let mut error = None;
        if run.args.is_empty() {
            error = Some("arguments are required".to_string());
        }
        let mut pmeta = pb::Meta {
            args: run.args,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: meta.dir.clone(),
            user: meta.user.clone(),
            proxy_env: None,
            extra_hosts: meta.extra_hosts.clone(),
            hostname: meta.hostname.clone(),
            ulimit: meta.ulimits.clone(),
            cgroup_parent: meta.cgroup_parent.clone(),
            remove_mount_stubs_recursive: true,
            valid_exit_codes: Vec::new(),
        };
        if let Some(codes) = &meta.valid_exit_codes {
            pmeta.valid_exit_codes = codes.clone();
            c.add_cap(caps::EXEC_VALID_EXIT_CODE);
        }
        if !pmeta.ulimit.is_empty() {
            c.add_cap(caps::EXEC_META_ULIMIT);
        }
        if !pmeta.cgroup_parent.is_empty() {
            // The Go client does not add a cap for the cgroup parent; nor do we.
            let _ = caps::EXEC_META_CGROUP_PARENT;
        }
        if c.metadata.linux_resources.is_some() {
            c.add_cap(caps::EXEC_META_LINUX_RESOURCES);
        }
        if meta.network != pb::NetMode::Unset {
            c.add_cap(caps::EXEC_META_NETWORK);
        }
        if meta.security == pb::SecurityMode::Insecure {
            c.add_cap(caps::EXEC_META_SECURITY);
        }
        if let Some(p) = run.proxy_env {
            pmeta.proxy_env = Some(p);
            c.add_cap(caps::EXEC_META_PROXY);
        }
        c.add_cap(caps::EXEC_META_BASE);

        // Root mount first, then the others; stable sort by target like the Go client.
        let mut specs: Vec<(usize, Mount)> = Vec::with_capacity(run.mounts.len() + 1);
        specs.push((
            0,
            Mount {
                target: "/".to_string(),
                source: Some(self.clone()),
                readonly: run.readonly_rootfs,
                selector: String::new(),
                cache: None,
                tmpfs: None,
                no_output: false,
                content_cache: pb::MountContentCache::Default,
            },
        ));
        for (i, m) in run.mounts.into_iter().enumerate() {
            specs.push((i + 1, m));
        }
        specs.sort_by(|a, b| a.1.target.cmp(&b.1.target));

        let mut mounts = Vec::with_capacity(specs.len());
        let mut out_idx = 0i64;
        let mut order = Vec::with_capacity(specs.len());
        for (orig, m) in specs {
            let source = m.source.and_then(|s| s.out);
            if !m.selector.is_empty() {
                c.add_cap(caps::EXEC_MOUNT_SELECTOR);
            }
            if m.cache.is_some() {
                c.add_cap(caps::EXEC_MOUNT_CACHE);
                c.add_cap(caps::EXEC_MOUNT_CACHE_SHARING);
            } else if let Some(size) = m.tmpfs {
                c.add_cap(caps::EXEC_MOUNT_TMPFS);
                if size > 0 {
                    c.add_cap(caps::EXEC_MOUNT_TMPFS_SIZE);
                }
                if source.is_some() {
                    error = Some("tmpfs mounts must use scratch".to_string());
                }
            } else if source.is_some() {
                c.add_cap(caps::EXEC_MOUNT_BIND);
            }
            if m.content_cache != pb::MountContentCache::Default {
                c.add_cap(caps::EXEC_MOUNT_CONTENT_CACHE);
            }
            let output = if !m.no_output && !m.readonly && m.cache.is_none() && m.tmpfs.is_none() {
                out_idx += 1;
                out_idx - 1
            } else {
                -1
            };
            order.push(orig);
            mounts.push(MountNode {
                target: m.target,
                source,
                readonly: m.readonly,
                selector: m.selector,
                cache: m.cache,
                tmpfs: m.tmpfs,
                content_cache: m.content_cache,
                output,
            });
        }
        if !run.secrets.is_empty() {
            c.add_cap(caps::EXEC_MOUNT_SECRET);
            if run.secrets.iter().any(|s| s.env.is_some()) {
                c.add_cap(caps::EXEC_SECRET_ENV);
            }
        }
        if !run.ssh.is_empty() {
            c.add_cap(caps::EXEC_MOUNT_SSH);
        }
        if !run.cdi_devices.is_empty() {
            c.add_cap(caps::EXEC_META_CDI);
        }
        if c.platform.is_none() {
            c.platform = meta.platform.clone();
        }
        let ssh = run
            .ssh
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                if s.target.is_none() {
                    s.target = Some(format!("/run/buildkit/ssh_agent.{i}"));
                }
                s
            })
            .collect();
        let exec = ExecNode {
            meta: pmeta,
            network: meta.network,
            security: meta.security,
            mounts,
            secrets: run.secrets,
            ssh,
            cdi_devices: run.cdi_devices,
        };
        let node = Arc::new(Node {
            kind: NodeKind::Exec(Box::new(exec)),
            constraints: c,
            error,
        });
        let root_pos = order.iter().position(|&o| o == 0).unwrap_or(0);
        let root_state = self.exec_output(&node, root_pos);
        ExecState {
            root: root_state,
            base: self.clone(),
            node,
            order,
        }
    }

    fn exec_output(&self, node: &Arc<Node>, pos: usize) -> State {
        let NodeKind::Exec(e) = &node.kind else {
            return self.clone();
        };
        let Some(m) = e.mounts.get(pos) else {
            return self.clone();
        };
        if m.readonly {
            // A read-only mount's "output" is its unchanged source.
            return State {
                out: m.source.clone(),
                meta: self.meta.clone(),
            };
        }
        let mut s = State {
            out: Some(Output {
                node: node.clone(),
                index: m.output,
            }),
            meta: self.meta.clone(),
        };
        if let Some(p) = &node.constraints.platform {
            Arc::make_mut(&mut s.meta).platform = Some(p.clone());
        }
        s
    }

    /// Applies a chain of file actions as one FileOp.
    pub fn file(&self, action: FileAction, c: Constraints) -> State {
        let mut c = c;
        c.add_cap(caps::FILE_BASE);
        let actions = action
            .actions
            .into_iter()
            .map(|a| ActionNode {
                copy_source: a.copy_source.and_then(|s| s.out),
                kind: a.kind,
            })
            .collect::<Vec<_>>();
        let error = if actions.is_empty() {
            Some("file op needs at least one action".to_string())
        } else {
            None
        };
        let node = Node {
            kind: NodeKind::File(FileNode {
                base: self.out.clone(),
                dir: self.meta.dir.clone(),
                actions,
            }),
            constraints: Constraints {
                // File ops are not platform specific (the Go client drops it too).
                platform: None,
                ..c
            },
            error,
        };
        State {
            out: Some(Output {
                node: Arc::new(node),
                index: 0,
            }),
            meta: self.meta.clone(),
        }
    }
}

/// The result of [`State::run`]: the new root and access to other writable mounts.
#[derive(Debug, Clone)]
pub struct ExecState {
    root: State,
    base: State,
    node: Arc<Node>,
    /// For each sorted mount, its position in the `Run` (0 = root, i = mounts[i-1]).
    order: Vec<usize>,
}

impl ExecState {
    /// The state after the command: the root mount's output, with the base's metadata.
    pub fn root(&self) -> State {
        self.root.clone()
    }

    /// The output of the mount at `target` (a read-only mount gives its source back).
    pub fn get_mount(&self, target: &str) -> Option<State> {
        let NodeKind::Exec(e) = &self.node.kind else {
            return None;
        };
        let pos = e.mounts.iter().position(|m| m.target == target)?;
        let m = &e.mounts[pos];
        if m.cache.is_some() || m.tmpfs.is_some() || (m.output < 0 && !m.readonly) {
            return None;
        }
        let _ = &self.order;
        Some(self.base.exec_output(&self.node, pos))
    }
}

/// Cache mount sharing mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

impl CacheSharing {
    pub(crate) fn to_pb(self) -> pb::CacheSharingOpt {
        match self {
            CacheSharing::Shared => pb::CacheSharingOpt::Shared,
            CacheSharing::Private => pb::CacheSharingOpt::Private,
            CacheSharing::Locked => pb::CacheSharingOpt::Locked,
        }
    }
}

/// An extra mount of a [`Run`].
#[derive(Debug, Clone)]
pub struct Mount {
    target: String,
    source: Option<State>,
    readonly: bool,
    selector: String,
    cache: Option<(String, CacheSharing)>,
    tmpfs: Option<i64>,
    no_output: bool,
    content_cache: pb::MountContentCache,
}

impl Mount {
    fn new(target: &str) -> Mount {
        Mount {
            target: target.to_string(),
            source: None,
            readonly: false,
            selector: String::new(),
            cache: None,
            tmpfs: None,
            no_output: false,
            content_cache: pb::MountContentCache::Default,
        }
    }
    /// Binds `source` at `target` (writable unless `.readonly()`).
    pub fn bind(target: &str, source: &State) -> Mount {
        Mount {
            source: Some(source.clone()),
            ..Mount::new(target)
        }
    }
    /// A persistent cache directory with the given id and sharing mode.
    pub fn cache(target: &str, id: &str, sharing: CacheSharing) -> Mount {
        Mount {
            cache: Some((id.to_string(), sharing)),
            ..Mount::new(target)
        }
    }
    /// A tmpfs; `size` in bytes, 0 for the default.
    pub fn tmpfs(target: &str, size: i64) -> Mount {
        Mount {
            tmpfs: Some(size),
            ..Mount::new(target)
        }
    }
    pub fn readonly(mut self) -> Mount {
        self.readonly = true;
        self
    }
    /// Mount only this path of the source.
    pub fn selector(mut self, path: &str) -> Mount {
        self.selector = path.to_string();
        self
    }
    /// Initial contents (for cache mounts).
    pub fn source(mut self, s: &State) -> Mount {
        self.source = Some(s.clone());
        self
    }
    pub fn no_output(mut self) -> Mount {
        self.no_output = true;
        self
    }
    pub fn content_cache(mut self, c: pb::MountContentCache) -> Mount {
        self.content_cache = c;
        self
    }
}

/// A secret for a [`Run`]: mounted as a file at `target` and/or exposed as env var `env`.
#[derive(Debug, Clone)]
pub struct SecretMount {
    pub id: String,
    pub target: Option<String>,
    pub env: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub optional: bool,
}

/// An SSH agent socket for a [`Run`].
#[derive(Debug, Clone)]
pub struct SshMount {
    pub id: String,
    /// Defaults to `/run/buildkit/ssh_agent.<n>`.
    pub target: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub optional: bool,
}

/// Arguments of [`State::run`].
#[derive(Debug, Clone, Default)]
pub struct Run {
    args: Vec<String>,
    mounts: Vec<Mount>,
    secrets: Vec<SecretMount>,
    ssh: Vec<SshMount>,
    cdi_devices: Vec<pb::CdiDevice>,
    readonly_rootfs: bool,
    proxy_env: Option<pb::ProxyEnv>,
    constraints: Constraints,
}

impl Run {
    /// Runs `args` as given.
    pub fn args<I, S>(args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Run {
            args: args.into_iter().map(Into::into).collect(),
            ..Run::default()
        }
    }
    /// Splits `cmd` like the Go client's `llb.Shlex` (google/shlex rules).
    pub fn shlex(cmd: &str) -> Run {
        Run::args(super::shlex::split(cmd))
    }
    pub fn mount(mut self, m: Mount) -> Run {
        self.mounts.push(m);
        self
    }
    pub fn secret(mut self, s: SecretMount) -> Run {
        self.secrets.push(s);
        self
    }
    pub fn ssh(mut self, s: SshMount) -> Run {
        self.ssh.push(s);
        self
    }
    pub fn cdi_device(mut self, name: &str, optional: bool) -> Run {
        self.cdi_devices.push(pb::CdiDevice {
            name: name.to_string(),
            optional,
        });
        self
    }
    pub fn readonly_rootfs(mut self) -> Run {
        self.readonly_rootfs = true;
        self
    }
    pub fn proxy_env(mut self, p: pb::ProxyEnv) -> Run {
        self.proxy_env = Some(p);
        self
    }
    pub fn constraints(mut self, c: Constraints) -> Run {
        self.constraints = c;
        self
    }
    /// Shorthand for `constraints(Constraints::new().custom_name(..))`, keeping other settings.
    pub fn custom_name(mut self, name: impl Into<String>) -> Run {
        self.constraints = self.constraints.custom_name(name);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// File actions.

/// A user or group for chown: numeric id or name (resolved in the base state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(u32),
    Name(String),
}

/// Ownership for created or copied files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chown {
    pub user: Option<UserRef>,
    pub group: Option<UserRef>,
}

impl Chown {
    pub fn ids(uid: u32, gid: u32) -> Chown {
        Chown {
            user: Some(UserRef::Id(uid)),
            group: Some(UserRef::Id(gid)),
        }
    }
    /// `user[:group]`, names or numbers, like the Go client's `WithUser`.
    pub fn parse(spec: &str) -> Chown {
        fn one(v: &str) -> UserRef {
            if v == "root" {
                return UserRef::Id(0);
            }
            match v.parse::<i32>() {
                Ok(n) => UserRef::Id(n as u32),
                Err(_) => UserRef::Name(v.to_string()),
            }
        }
        let mut parts = spec.splitn(2, ':');
        let user = parts.next().map(one);
        let group = parts.next().map(one);
        Chown { user, group }
    }
}

/// Mode for copied files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Mode(u32),
    /// A symbolic mode string such as `u+x` (BuildKit cap `file.copy.modestring`).
    Str(String),
}

#[derive(Debug, Clone, Default)]
pub struct MkdirOptions {
    pub make_parents: bool,
    pub chown: Option<Chown>,
    /// Unix nanoseconds.
    pub created_time: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct MkfileOptions {
    pub chown: Option<Chown>,
    pub created_time: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct RmOptions {
    pub allow_not_found: bool,
    pub allow_wildcard: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SymlinkOptions {
    pub chown: Option<Chown>,
    pub created_time: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    pub mode: Option<Chmod>,
    pub follow_symlinks: bool,
    pub copy_dir_contents_only: bool,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub required_paths: Vec<String>,
    pub attempt_unpack: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    pub chown: Option<Chown>,
    pub created_time: Option<i64>,
    pub always_replace_existing_dest_paths: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum FileActionKind {
    Mkdir {
        path: String,
        mode: u32,
        opts: MkdirOptions,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: Vec<u8>,
        opts: MkfileOptions,
    },
    Rm {
        path: String,
        opts: RmOptions,
    },
    Symlink {
        oldpath: String,
        newpath: String,
        opts: SymlinkOptions,
    },
    Copy {
        /// Already resolved against the source state's working dir.
        src: String,
        dest: String,
        opts: Box<CopyOptions>,
    },
}

#[derive(Debug, Clone)]
struct PendingAction {
    kind: FileActionKind,
    copy_source: Option<State>,
}

/// A chain of file actions that becomes one FileOp (`FileAction.Mkdir(..).Mkfile(..)` in Go).
#[derive(Debug, Clone, Default)]
pub struct FileAction {
    actions: Vec<PendingAction>,
}

impl FileAction {
    pub fn new() -> FileAction {
        FileAction::default()
    }
    fn push(mut self, kind: FileActionKind, copy_source: Option<State>) -> FileAction {
        self.actions.push(PendingAction { kind, copy_source });
        self
    }
    pub fn mkdir(self, path: &str, mode: u32, opts: MkdirOptions) -> FileAction {
        self.push(
            FileActionKind::Mkdir {
                path: path.to_string(),
                mode,
                opts,
            },
            None,
        )
    }
    pub fn mkfile(self, path: &str, mode: u32, data: &[u8], opts: MkfileOptions) -> FileAction {
        self.push(
            FileActionKind::Mkfile {
                path: path.to_string(),
                mode,
                data: data.to_vec(),
                opts,
            },
            None,
        )
    }
    pub fn rm(self, path: &str, opts: RmOptions) -> FileAction {
        self.push(
            FileActionKind::Rm {
                path: path.to_string(),
                opts,
            },
            None,
        )
    }
    pub fn symlink(self, oldpath: &str, newpath: &str, opts: SymlinkOptions) -> FileAction {
        self.push(
            FileActionKind::Symlink {
                oldpath: oldpath.to_string(),
                newpath: newpath.to_string(),
                opts,
            },
            None,
        )
    }
    /// Copies `src` (relative paths resolve against `from`'s working dir) to `dest`.
    pub fn copy(self, from: &State, src: &str, dest: &str, opts: CopyOptions) -> FileAction {
        let cleaned = clean_path(src);
        let src = if cleaned.starts_with('/') {
            cleaned
        } else {
            join_clean(from.get_dir(), &cleaned)
        };
        self.push(
            FileActionKind::Copy {
                src,
                dest: dest.to_string(),
                opts: Box::new(opts),
            },
            Some(from.clone()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Path helpers with Go `path` semantics.

/// Go's `path.Clean`.
pub(crate) fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            x => out.push(x),
        }
    }
    let body = out.join("/");
    if rooted {
        format!("/{body}")
    } else if body.is_empty() {
        ".".to_string()
    } else {
        body
    }
}

/// Go's `path.Join(a, b)`.
pub(crate) fn join_clean(a: &str, b: &str) -> String {
    if a.is_empty() {
        return clean_path(b);
    }
    if b.is_empty() {
        return clean_path(a);
    }
    clean_path(&format!("{a}/{b}"))
}

/// The Go client's `normalizePath` for file action paths.
pub(crate) fn normalize_path(parent: &str, p: &str, keep_slash: bool) -> String {
    let orig = p;
    let mut p = clean_path(p);
    if !p.starts_with('/') {
        p = clean_path(&format!("/{parent}/{p}"));
    }
    if keep_slash {
        if orig.ends_with('/') && !p.ends_with('/') {
            p.push('/');
        } else if orig.ends_with("/.") {
            if p != "/" {
                p.push('/');
            }
            p.push('.');
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_clean() {
        assert_eq!(clean_path("a/../b/./c/"), "b/c");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path(""), ".");
        assert_eq!(join_clean("/work", "sub/dir"), "/work/sub/dir");
        assert_eq!(normalize_path("/w", "x/", true), "/w/x/");
        assert_eq!(normalize_path("/", "/a/.", true), "/a/.");
    }

    #[test]
    fn env_replace_moves_last() {
        let s = scratch()
            .add_env("A", "1")
            .add_env("B", "2")
            .add_env("A", "3");
        assert_eq!(s.env(), vec!["B=2", "A=3"]);
        assert_eq!(s.get_env("A"), Some("3"));
    }

    #[test]
    fn dir_is_relative_to_previous() {
        let s = scratch().dir("/a").dir("b");
        assert_eq!(s.get_dir(), "/a/b");
    }

    #[test]
    fn chown_parse() {
        assert_eq!(Chown::parse("1000:1000"), Chown::ids(1000, 1000));
        assert_eq!(
            Chown::parse("nobody"),
            Chown {
                user: Some(UserRef::Name("nobody".into())),
                group: None
            }
        );
        assert_eq!(Chown::parse("root").user, Some(UserRef::Id(0)));
    }
}
