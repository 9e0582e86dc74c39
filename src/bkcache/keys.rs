//! BuildKit v0.32.2's cache keys for LLB ops: the digest each op's `CacheMap` gives and, per
//! input, the selector and content-hash paths that tie an input's key to it. These are the
//! digests a BuildKit cache (`application/vnd.buildkit.cacheconfig.v0`) is made of, so a cache
//! exported by buildkitd can be matched here and the other way round. envkit's own store keeps
//! its own keys (`solver/cache.rs`); these are computed only to read and write BuildKit's caches.
//!
//! Each key is the sha256 of a JSON pre-image that Go's `encoding/json` writes from BuildKit's
//! structs after BuildKit's normalisations; `preimage` keeps those bytes so that a miss can be
//! explained and the golden vectors (buildkitd's `--save-cache-debug` records) compared.

use crate::content::sha256_hex;
use crate::llb::json::{action_body, base64, diff_json, exec_json, merge_json, push_go_string};
use crate::pb;
use crate::platform::Platform;

use super::BkCacheError;

const EXEC: &str = "buildkit.exec.v0";
const FILE: &str = "buildkit.file.v0";
const MERGE: &str = "buildkit.merge.v0";
const DIFF: &str = "buildkit.diff.v0";
const SOURCE: &str = "buildkit.source.v0";

/// A path of an input whose content, not its producer, keys the op: BuildKit computes the
/// input's content hash of these paths after the input is built and keys the op by that too
/// (a "slow" key).
pub use super::contenthash::Selector as PathSelector;

fn selector(path: &str, follow_links: bool) -> PathSelector {
    PathSelector {
        path: path.to_string(),
        follow_links,
        ..PathSelector::default()
    }
}

fn has_wildcard_or_filters(s: &PathSelector) -> bool {
    s.wildcard || !s.include_patterns.is_empty() || !s.exclude_patterns.is_empty()
}

/// How one input takes part in the op's key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dep {
    /// The selector digest on the link from the input's key (none: the whole input).
    pub selector: Option<String>,
    /// Paths whose content hash is a second, content-based key for this input (none: the
    /// input is keyed by how it was made only). An empty list means the whole input (`/`).
    pub content: Option<Vec<PathSelector>>,
}

/// One op's cache map: its digest (with the bytes it is the sha256 of) and its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMap {
    /// `sha256:…`, or `random:…` for keys that never match (local sources of a session).
    pub digest: String,
    pub preimage: Vec<u8>,
    pub deps: Vec<Dep>,
}

impl CacheMap {
    fn of(preimage: Vec<u8>, deps: Vec<Dep>) -> CacheMap {
        CacheMap {
            digest: digest_of(&preimage),
            preimage,
            deps,
        }
    }
}

/// `sha256:` + hex of the bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The key of one output of a key digest (BuildKit's `rootKey`, the `digest` of a cache
/// record): the sha256 of `"<digest>@<output>"`; content-hash keys use output -1. A `random:`
/// digest stays random.
pub fn root_key(digest: &str, output: i64) -> String {
    match digest.strip_prefix("random:") {
        Some(rest) => format!("random:{rest}"),
        None => digest_of(format!("{digest}@{output}").as_bytes()),
    }
}

/// The cache maps of one op: one for most ops, none for a source whose key can never match
/// (a local directory of a session), two for an image (by manifest, then by layers). What a
/// source resolves to comes from `source`.
pub fn op_keys(
    op: &pb::Op,
    source: &mut dyn FnMut(&pb::SourceOp) -> Result<Vec<CacheMap>, BkCacheError>,
) -> Result<Vec<CacheMap>, BkCacheError> {
    use pb::op::Op as K;
    match &op.op {
        Some(K::Exec(e)) => Ok(vec![exec(op, e)?]),
        Some(K::File(f)) => Ok(vec![file(op, f)?]),
        Some(K::Merge(m)) => Ok(vec![merge(m)]),
        Some(K::Diff(d)) => Ok(vec![diff(d)]),
        Some(K::Source(s)) => source(s),
        Some(K::Build(_)) | Some(K::Passthrough(_)) | None => Err(BkCacheError::Invalid(
            "only source, exec, file, merge and diff ops have BuildKit cache keys here".into(),
        )),
    }
}

/// The cache map of an exec op.
pub fn exec(op: &pb::Op, e: &pb::ExecOp) -> Result<CacheMap, BkCacheError> {
    let mut norm = e.clone();
    if let Some(meta) = norm.meta.as_mut() {
        for h in &mut meta.extra_hosts {
            h.ip.clear();
        }
        meta.proxy_env = None;
    }
    for m in &mut norm.mounts {
        m.selector.clear();
        if clears_cache_id(m)
            && let Some(c) = m.cache_opt.as_mut()
        {
            c.id.clear();
            c.sharing = 0;
        }
    }
    // BuildKit leaves the one plain root mount of a simple RUN out, for compatibility with
    // caches of versions that left every mount out.
    if let [m] = norm.mounts.as_slice()
        && m.dest == "/"
        && !m.readonly
        && m.mount_type == pb::MountType::Bind as i32
        && m.cache_opt.is_none()
        && m.ssh_opt.is_none()
        && m.secret_opt.is_none()
        && m.result_id.is_empty()
    {
        norm.mounts.clear();
    }
    let mut s = String::from("{\"Type\":");
    push_go_string(&mut s, EXEC);
    s.push_str(",\"Exec\":");
    s.push_str(&exec_json(&norm));
    push_platform(&mut s, op.platform.as_ref());
    s.push('}');

    let n = op.inputs.len();
    let mut selectors: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut content = vec![false; n];
    for m in &e.mounts {
        let kind = m.mount_type;
        if kind == pb::MountType::Secret as i32
            || kind == pb::MountType::Ssh as i32
            || kind == pb::MountType::Tmpfs as i32
            || m.input == -1
        {
            continue;
        }
        let i = usize::try_from(m.input)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| BkCacheError::Invalid(format!("exec mount input {}", m.input)))?;
        let sel = clean_abs(&m.selector);
        // Safe only where nothing outside the selected paths can reach a later step.
        let mut by_content = m.output == -1 || m.readonly || sel == "/";
        match m.content_cache {
            c if c == pb::MountContentCache::Off as i32 => by_content = false,
            c if c == pb::MountContentCache::On as i32 => {
                if !by_content {
                    return Err(BkCacheError::Invalid(format!(
                        "content cache forced on the writable mount {}",
                        m.dest
                    )));
                }
            }
            _ => {
                if m.dest == "/" {
                    by_content = false;
                }
            }
        }
        selectors[i].push(sel);
        content[i] = by_content;
    }
    let deps = selectors
        .into_iter()
        .zip(content)
        .map(|(sels, by_content)| Dep {
            selector: (!sels.is_empty()).then(|| digest_of(sels.join("\0").as_bytes())),
            content: by_content.then(|| {
                let paths = dedupe_paths(sels);
                if paths.iter().any(|p| p.is_empty() || p == "/") {
                    Vec::new()
                } else {
                    paths.iter().map(|p| selector(p, true)).collect()
                }
            }),
        })
        .collect();
    Ok(CacheMap::of(s.into_bytes(), deps))
}

/// BuildKit keeps a cache mount's id in the key only for Dockerfile's default ids (the target,
/// or `<namespace>/<target>`, shared).
fn clears_cache_id(m: &pb::Mount) -> bool {
    let Some(c) = &m.cache_opt else {
        return false;
    };
    if c.sharing != 0 {
        return true;
    }
    if c.id == m.dest {
        return false;
    }
    !matches!(c.id.split_once('/'), Some((_, rest)) if rest == m.dest)
}

/// `,"OS":…,"Arch":…` (and the optional fields) of the op's platform, else this machine's.
fn push_platform(s: &mut String, p: Option<&pb::Platform>) {
    let host;
    let (os, arch, variant, os_version, features): (&str, &str, &str, &str, &[String]) = match p {
        Some(p) => (
            &p.os,
            &p.architecture,
            &p.variant,
            &p.os_version,
            &p.os_features,
        ),
        None => {
            host = Platform::host();
            (&host.os, &host.architecture, &host.variant, "", &[])
        }
    };
    s.push_str(",\"OS\":");
    push_go_string(s, os);
    s.push_str(",\"Arch\":");
    push_go_string(s, arch);
    if !variant.is_empty() {
        s.push_str(",\"Variant\":");
        push_go_string(s, variant);
    }
    if !os_version.is_empty() {
        s.push_str(",\"OSVersion\":");
        push_go_string(s, os_version);
    }
    if !features.is_empty() {
        s.push_str(",\"OSFeatures\":[");
        for (i, f) in features.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_go_string(s, f);
        }
        s.push(']');
    }
}

/// The cache map of a file op.
pub fn file(op: &pb::Op, f: &pb::FileOp) -> Result<CacheMap, BkCacheError> {
    use pb::file_action::Action;
    let n = op.inputs.len();
    let mut selectors: std::collections::BTreeMap<i64, Vec<PathSelector>> = Default::default();
    let mut invalid = std::collections::BTreeSet::new();
    let mut actions = Vec::with_capacity(f.actions.len());
    let mut indexes = Vec::with_capacity(f.actions.len());
    for a in &f.actions {
        let Some(action) = &a.action else {
            return Err(BkCacheError::Invalid("file action without a kind".into()));
        };
        if a.input != -1 {
            invalid.insert(a.input);
        }
        let mut body = String::new();
        match action {
            Action::Mkdir(m) => {
                owner_selectors(m.owner.as_ref(), &mut selectors);
                action_body(&mut body, action);
            }
            Action::Mkfile(m) => {
                owner_selectors(m.owner.as_ref(), &mut selectors);
                action_body(&mut body, action);
            }
            Action::Symlink(_) | Action::Rm(_) => action_body(&mut body, action),
            Action::Copy(c) => {
                owner_selectors(c.owner.as_ref(), &mut selectors);
                let mut c = c.clone();
                if a.secondary_input != -1
                    && usize::try_from(a.secondary_input).is_ok_and(|i| i < n)
                {
                    selectors
                        .entry(a.secondary_input)
                        .or_default()
                        .push(PathSelector {
                            path: c.src.clone(),
                            follow_links: c.follow_symlink,
                            wildcard: c.allow_wildcard && has_wildcards(&c.src),
                            include_patterns: c.include_patterns.clone(),
                            exclude_patterns: c.exclude_patterns.clone(),
                            required_paths: c.required_paths.clone(),
                        });
                    c.src = base_name(&c.src);
                }
                action_body(&mut body, &Action::Copy(c));
            }
        }
        actions.push(body);
        indexes.push([a.input, a.secondary_input, a.output]);
    }

    let mut s = String::from("{\"Type\":");
    push_go_string(&mut s, FILE);
    s.push_str(",\"Actions\":[");
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        s.push_str(&base64(a.as_bytes()));
        s.push('"');
    }
    s.push(']');
    if !default_indexes(&indexes) && !indexes.is_empty() {
        s.push_str(",\"indexes\":[");
        for (i, [a, b, c]) in indexes.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("[{a},{b},{c}]"));
        }
        s.push(']');
    }
    s.push('}');

    let mut deps = vec![Dep::default(); n];
    for (idx, sels) in selectors {
        let i = usize::try_from(idx)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| BkCacheError::Invalid(format!("file op input {idx} of {n} inputs")))?;
        if invalid.contains(&idx) {
            continue;
        }
        let mut paths: Vec<&str> = sels.iter().map(|s| s.path.as_str()).collect();
        paths.sort_unstable();
        paths.reverse();
        deps[i] = Dep {
            selector: Some(digest_of(paths.join("\0").as_bytes())),
            content: Some(dedupe_selectors(sels)),
        };
    }
    Ok(CacheMap::of(s.into_bytes(), deps))
}

/// A chown by name reads the target input's `/etc/passwd` or `/etc/group`.
fn owner_selectors(
    owner: Option<&pb::ChownOpt>,
    selectors: &mut std::collections::BTreeMap<i64, Vec<PathSelector>>,
) {
    let Some(owner) = owner else { return };
    for (user, file) in [(&owner.user, "/etc/passwd"), (&owner.group, "/etc/group")] {
        if let Some(pb::UserOpt {
            user: Some(pb::user_opt::User::ByName(n)),
        }) = user
            && n.input >= 0
        {
            selectors
                .entry(n.input)
                .or_default()
                .push(selector(file, true));
        }
    }
}

/// BuildKit's test for the usual action chain (first on input 0, each on the one before, the
/// last one the output): such ops are keyed without their indexes.
fn default_indexes(idx: &[[i64; 3]]) -> bool {
    if idx.is_empty() {
        return false;
    }
    let n = idx.len() as i64;
    idx.iter()
        .enumerate()
        .all(|(i, &[input, secondary, output])| {
            let i = i as i64;
            let input_ok = if i == 0 {
                input == 0
            } else {
                input == n + i - 1
            };
            let output_ok = if i == n - 1 {
                output == 0
            } else {
                output == -1
            };
            input_ok && (secondary == -1 || secondary == 1) && output_ok
        })
}

fn dedupe_selectors(sels: Vec<PathSelector>) -> Vec<PathSelector> {
    let mut plain = Vec::new();
    let mut follow = Vec::new();
    for s in &sels {
        if !has_wildcard_or_filters(s) {
            if s.follow_links {
                follow.push(s.path.clone());
            } else {
                plain.push(s.path.clone());
            }
        }
    }
    let mut out: Vec<PathSelector> = dedupe_paths(plain)
        .iter()
        .map(|p| selector(p, false))
        .chain(dedupe_paths(follow).iter().map(|p| selector(p, true)))
        .collect();
    out.extend(sels.into_iter().filter(has_wildcard_or_filters));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Drops paths inside another of the paths; sorted (one path or none: as given).
fn dedupe_paths(paths: Vec<String>) -> Vec<String> {
    if paths.len() <= 1 {
        return paths;
    }
    let set: std::collections::BTreeSet<String> = paths.into_iter().collect();
    set.iter()
        .filter(|p1| {
            !set.iter().any(|p2| {
                let parent = if p2.ends_with('/') {
                    p2.clone()
                } else {
                    format!("{p2}/")
                };
                p1 != &p2 && p1.starts_with(&parent)
            })
        })
        .cloned()
        .collect()
}

/// Go's `path.Join("/", p)`: the cleaned absolute path.
pub(crate) fn clean_abs(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Go's `path.Base`.
fn base_name(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

/// `*`, `?` or `[` outside a backslash escape.
fn has_wildcards(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// The cache map of a merge op.
pub fn merge(m: &pb::MergeOp) -> CacheMap {
    let mut s = String::from("{\"Type\":");
    push_go_string(&mut s, MERGE);
    s.push_str(",\"Merge\":");
    merge_json(&mut s, m);
    s.push('}');
    CacheMap::of(s.into_bytes(), vec![Dep::default(); m.inputs.len()])
}

/// The cache map of a diff op.
pub fn diff(d: &pb::DiffOp) -> CacheMap {
    let mut s = String::from("{\"Type\":");
    push_go_string(&mut s, DIFF);
    s.push_str(",\"Diff\":");
    diff_json(&mut s, d);
    s.push('}');
    let n = [
        d.lower.as_ref().map(|l| l.input),
        d.upper.as_ref().map(|u| u.input),
    ]
    .iter()
    .filter(|i| i.unwrap_or(0) != -1)
    .count();
    CacheMap::of(s.into_bytes(), vec![Dep::default(); n])
}

/// The keys of an image source: by its main manifest (the index or manifest the reference
/// resolved to) and platform, then, when the config lists layers, by their chain id (so the
/// same layers under another manifest match). `layer_limit` is the `image.layerlimit` attr.
pub fn image(
    manifest_digest: &str,
    platform: &Platform,
    config: &[u8],
    layer_limit: Option<usize>,
) -> Vec<CacheMap> {
    let mut m = String::from("{\"Digest\":");
    push_go_string(&mut m, manifest_digest);
    let p = pb::Platform {
        os: platform.os.clone(),
        architecture: platform.architecture.clone(),
        variant: platform.variant.clone(),
        ..Default::default()
    };
    push_platform(&mut m, Some(&p));
    if let Some(l) = layer_limit {
        m.push_str(&format!(",\"Limit\":{l}"));
    }
    m.push('}');
    let mut keys = vec![source_key(&digest_of(m.as_bytes()))];
    if let Some(k) = config_key(config, layer_limit) {
        keys.push(source_key(&k));
    }
    keys
}

fn source_key(k: &str) -> CacheMap {
    CacheMap::of(format!("{SOURCE}:{k}").into_bytes(), Vec::new())
}

/// The chain id of the config's layers (a config that is not an image's: its digest).
fn config_key(config: &[u8], limit: Option<usize>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RootFs {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        rootfs: Option<RootFs>,
    }
    let Ok(c) = serde_json::from_slice::<Config>(config) else {
        return limit.is_none().then(|| digest_of(config));
    };
    let rootfs = c.rootfs?;
    let mut ids = rootfs.diff_ids;
    if let Some(l) = limit {
        if ids.len() < l {
            return None;
        }
        ids.truncate(l);
    }
    if rootfs.kind != "layers" || ids.is_empty() {
        return None;
    }
    Some(chain_id(&ids))
}

/// OCI's chain id of a list of diff ids.
pub fn chain_id(ids: &[String]) -> String {
    let mut it = ids.iter();
    let mut chain = it.next().cloned().unwrap_or_default();
    for id in it {
        chain = digest_of(format!("{chain} {id}").as_bytes());
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_helpers() {
        assert_eq!(clean_abs(""), "/");
        assert_eq!(clean_abs("a//b/./c/.."), "/a/b");
        assert_eq!(clean_abs("/../x/"), "/x");
        assert_eq!(base_name("/a/b/"), "b");
        assert_eq!(base_name("///"), "/");
        assert_eq!(base_name(""), ".");
        assert!(has_wildcards("a*"));
        assert!(!has_wildcards("a\\*"));
        assert_eq!(
            dedupe_paths(vec!["/b".into(), "/a/x".into(), "/a".into(), "/ab".into()]),
            vec!["/a", "/ab", "/b"]
        );
    }

    #[test]
    fn root_keys() {
        // sha256 of "sha256:…@0", computed independently with Python's hashlib.
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(
            root_key(d, 0),
            "sha256:426830622cbd8917dd45a96e42ffd4d33dc86f82ce573c1e414bbe4d9905ea2c"
        );
        assert_eq!(
            root_key(d, -1),
            "sha256:421f8618d299a033206421139a80b0b7542a5d9869504ab9d9250858bad7a3fc"
        );
        assert_eq!(root_key("random:abc", 3), "random:abc");
    }
}
