//! Stages to LLB, following BuildKit v0.32.2's `dockerfile2llb`: the build's arguments (the
//! platform ones, `--build-arg`, the ARGs before the first FROM), each stage's base (an image
//! pinned to the digest it resolves to, scratch, or an earlier stage), only the stages the
//! target needs, and each instruction as the op (or the image config change) BuildKit makes of
//! it, through the same LLB client calls, so that the ops have the same bytes.
//!
//! Base images are resolved by the caller: [`convert`] answers
//! [`ConvertError::Unresolved`] with the references it needs, and is called again with them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::instructions::{self, ArgDef, CmdLine, Command, Kind, Stage};
use super::parser;
use super::shell::Lexer;
use crate::llb::{
    self, Constraints, CopyOptions, FileAction, LocalOptions, MkdirOptions, Run, State,
};
use crate::platform::Platform;

/// What a base image resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference with its digest (`docker.io/library/alpine:3.23@sha256:…`).
    pub pinned: String,
    /// The image config's JSON.
    pub config: Vec<u8>,
}

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOpt {
    /// The stage to build (default: the last).
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// `--platform` (default: the build platform).
    pub target_platform: Option<Platform>,
    pub build_platform: Platform,
    /// The local source of the build context.
    pub context_name: String,
    /// `local.unique` of the context (BuildKit's client makes a random one).
    pub context_unique: String,
    /// Patterns of `.dockerignore`, excluded from the context.
    pub context_excludes: Vec<String>,
    /// Compile with the built-in frontend whatever `# syntax=` names (as the golden vectors
    /// were made); otherwise another frontend image is refused.
    pub ignore_syntax: bool,
    /// Base images by (normalised reference, platform).
    pub images: HashMap<(String, Platform), ResolvedImage>,
    /// One of several platforms of one build: step names start with the platform, as
    /// BuildKit's do when several are asked for (`[linux/arm64 2/3] RUN …`).
    pub multi_platform: bool,
    /// The resolve mode of every `FROM` image op (`--pull missing`: `local`).
    pub image_resolve_mode: Option<llb::ResolveMode>,
}

impl Default for ConvertOpt {
    fn default() -> Self {
        ConvertOpt {
            target: None,
            build_args: BTreeMap::new(),
            target_platform: None,
            build_platform: Platform::host(),
            context_name: "context".into(),
            context_unique: String::new(),
            context_excludes: Vec::new(),
            ignore_syntax: false,
            multi_platform: false,
            images: HashMap::new(),
            image_resolve_mode: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Base images the conversion needs resolved (normalised reference, platform).
    #[error("base images to resolve: {0:?}")]
    Unresolved(Vec<(String, Platform)>),
    #[error("Dockerfile:{line}: {message}")]
    At { line: usize, message: String },
    #[error("{0}")]
    Other(String),
}

fn at(line: usize, message: impl Into<String>) -> ConvertError {
    ConvertError::At {
        line,
        message: message.into(),
    }
}

/// What a conversion made.
#[derive(Debug, Clone)]
pub struct Converted {
    pub definition: llb::Definition,
    /// The image config of the target (Docker's JSON).
    pub image: Value,
    /// The target platform.
    pub platform: Platform,
}

/// An ordered environment where a key set again moves to the end (BuildKit's `EnvList`).
#[derive(Debug, Clone, Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, k: &str, v: &str) {
        self.0.retain(|(key, _)| key != k);
        self.0.push((k.to_string(), v.to_string()));
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// The image config fields a Dockerfile changes (Docker's JSON keys).
#[derive(Debug, Clone, Default)]
struct ImageConfig {
    os: String,
    architecture: String,
    variant: String,
    env: Vec<String>,
    working_dir: String,
    user: String,
    shell: Vec<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    labels: BTreeMap<String, String>,
    exposed: BTreeSet<String>,
    volumes: BTreeSet<String>,
    healthcheck: Option<instructions::Health>,
    stop_signal: String,
    on_build: Vec<String>,
    author: String,
    /// The base config as it was, for fields a Dockerfile does not touch.
    base: Value,
    history: Vec<Value>,
}

impl ImageConfig {
    fn empty(p: &Platform) -> ImageConfig {
        ImageConfig {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
            env: vec![format!("PATH={DEFAULT_PATH}")],
            working_dir: "/".into(),
            base: Value::Null,
            ..Default::default()
        }
    }

    fn from_json(bytes: &[u8]) -> Result<ImageConfig, String> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("failed to parse image config: {e}"))?;
        let c = &v["config"];
        let strs = |x: &Value| -> Vec<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
        Ok(ImageConfig {
            os: s(&v["os"]),
            architecture: s(&v["architecture"]),
            variant: s(&v["variant"]),
            env: strs(&c["Env"]),
            working_dir: s(&c["WorkingDir"]),
            user: s(&c["User"]),
            shell: strs(&c["Shell"]),
            cmd: c.get("Cmd").filter(|x| !x.is_null()).map(strs),
            entrypoint: c.get("Entrypoint").filter(|x| !x.is_null()).map(strs),
            labels: string_map(&c["Labels"]),
            exposed: object_keys(&c["ExposedPorts"]).into_iter().collect(),
            volumes: object_keys(&c["Volumes"]).into_iter().collect(),
            healthcheck: None,
            stop_signal: s(&c["StopSignal"]),
            on_build: strs(&c["OnBuild"]),
            author: s(&v["author"]),
            history: v["history"].as_array().cloned().unwrap_or_default(),
            base: v,
        })
    }

    fn add_env(&mut self, k: &str, v: &str) {
        let entry = format!("{k}={v}");
        match self
            .env
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key) == k)
        {
            Some(e) => *e = entry,
            None => self.env.push(entry),
        }
    }

    fn commit(&mut self, msg: String, with_layer: bool, buildkit: bool) {
        let mut h = serde_json::Map::new();
        h.insert(
            "created_by".into(),
            Value::String(if buildkit {
                format!("{msg} # buildkit")
            } else {
                msg
            }),
        );
        h.insert(
            "comment".into(),
            Value::String("buildkit.dockerfile.v0".into()),
        );
        if !with_layer {
            h.insert("empty_layer".into(), Value::Bool(true));
        }
        self.history.push(Value::Object(h));
    }

    fn to_json(&self) -> Value {
        let mut v = match &self.base {
            Value::Object(m) => Value::Object(m.clone()),
            _ => serde_json::json!({}),
        };
        let mut c = serde_json::Map::new();
        if !self.user.is_empty() {
            c.insert("User".into(), self.user.clone().into());
        }
        if !self.exposed.is_empty() {
            c.insert(
                "ExposedPorts".into(),
                Value::Object(
                    self.exposed
                        .iter()
                        .map(|p| (p.clone(), serde_json::json!({})))
                        .collect(),
                ),
            );
        }
        c.insert("Env".into(), serde_json::json!(self.env));
        if let Some(e) = &self.entrypoint {
            c.insert("Entrypoint".into(), serde_json::json!(e));
        }
        if let Some(cmd) = &self.cmd {
            c.insert("Cmd".into(), serde_json::json!(cmd));
        }
        if !self.volumes.is_empty() {
            c.insert(
                "Volumes".into(),
                Value::Object(
                    self.volumes
                        .iter()
                        .map(|p| (p.clone(), serde_json::json!({})))
                        .collect(),
                ),
            );
        }
        if !self.working_dir.is_empty() {
            c.insert("WorkingDir".into(), self.working_dir.clone().into());
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), serde_json::json!(self.labels));
        }
        if !self.stop_signal.is_empty() {
            c.insert("StopSignal".into(), self.stop_signal.clone().into());
        }
        if !self.shell.is_empty() {
            c.insert("Shell".into(), serde_json::json!(self.shell));
        }
        if !self.on_build.is_empty() {
            c.insert("OnBuild".into(), serde_json::json!(self.on_build));
        }
        if let Some(h) = &self.healthcheck {
            let mut hc = serde_json::Map::new();
            hc.insert("Test".into(), serde_json::json!(h.test));
            for (k, d) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
            ] {
                if d != 0 {
                    hc.insert(k.into(), d.into());
                }
            }
            if h.retries != 0 {
                hc.insert("Retries".into(), h.retries.into());
            }
            c.insert("Healthcheck".into(), Value::Object(hc));
        }
        if let Value::Object(m) = &mut v {
            m.insert("config".into(), Value::Object(c));
            m.insert("os".into(), self.os.clone().into());
            m.insert("architecture".into(), self.architecture.clone().into());
            if self.variant.is_empty() {
                m.remove("variant");
            } else {
                m.insert("variant".into(), self.variant.clone().into());
            }
            if !self.author.is_empty() {
                m.insert("author".into(), self.author.clone().into());
            }
            m.insert("history".into(), Value::Array(self.history.clone()));
            m.remove("created");
        }
        v
    }
}

/// A JSON object of strings (`Labels`), empty when it is none.
pub(crate) fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The keys of a JSON object (`ExposedPorts`, `Volumes`), none when it is none.
pub(crate) fn object_keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The variables a word sees: the state's environment.
fn env_pairs(st: &State) -> Vec<(String, String)> {
    st.env()
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e, String::new()),
        })
        .collect()
}

/// One stage while it is converted.
struct Dispatch {
    stage: Stage,
    /// The stage's name for messages (`stage-N` when unnamed; empty when it is the only one).
    stage_name: String,
    /// An earlier stage this one starts from.
    base: Option<usize>,
    platform: Option<Platform>,
    state: State,
    image: ImageConfig,
    /// Stages this one copies from (or mounts).
    deps: BTreeSet<usize>,
    build_args: Vec<ArgDef>,
    cmd_total: usize,
    cmd_index: usize,
    /// With several platforms: the platform its steps run for when the stage names none,
    /// shown at the start of each step's name.
    shown_platform: Option<Platform>,
    /// The proxy build arguments (`HTTP_PROXY`, …), which every RUN gets as its
    /// `proxy_env` whether or not the stage declares them.
    proxy: Option<crate::pb::ProxyEnv>,
    /// The command being dispatched (its index in the stage).
    cmd_pos: usize,
    /// How many of the first commands are ONBUILD triggers.
    onbuild: usize,
    dispatched: bool,
    /// Paths of the build context it reads.
    ctx_paths: BTreeSet<String>,
    /// Per command, the states it reads besides its own (COPY's source, RUN's mounts).
    sources: Vec<Vec<Src>>,
}

/// A state a command reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Src {
    Context,
    Scratch,
    Stage(usize),
    Image(String),
}

fn word(lex: &Lexer, w: &str, env: &[(String, String)]) -> Result<String, String> {
    lex.process_word(w, env)
        .map(|e| e.result)
        .map_err(|e| e.to_string())
}

/// `[stage 2/5] ` before an instruction's name, as BuildKit numbers its progress.
fn prefix(d: &mut Dispatch, s: &str) -> String {
    prefix_in(d, s, &[])
}

/// [`prefix`] of a step that runs with `env`: with several platforms, the platform and, where
/// the step's `TARGET*` variables name another, an arrow to that one (BuildKit's
/// `formatTargetPlatform`).
fn prefix_in(d: &mut Dispatch, s: &str, env: &[(String, String)]) -> String {
    if d.cmd_total == 0 {
        return s.to_string();
    }
    let mut out = String::from("[");
    if let Some(shown) = &d.shown_platform {
        let p = d.platform.clone().unwrap_or_else(|| shown.clone());
        out.push_str(&p.to_string());
        out.push_str(&arrow_to_target(&p, env));
        out.push(' ');
    }
    if !d.stage_name.is_empty() {
        out.push_str(&d.stage_name);
        out.push(' ');
    }
    d.cmd_index += 1;
    let width = 1 + (d.cmd_total as f64).log10() as usize;
    out.push_str(&format!("{:>width$}/{}] ", d.cmd_index, d.cmd_total));
    if d.cmd_pos < d.onbuild {
        out.push_str("ONBUILD ");
    }
    out + s
}

/// The proxy variables among the build arguments (names in any case; BuildKit's
/// `proxyEnvFromBuildArgs`): `None` when there are none.
fn proxy_from_build_args(args: &BTreeMap<String, String>) -> Option<crate::pb::ProxyEnv> {
    let mut p = crate::pb::ProxyEnv::default();
    let mut any = false;
    for (k, v) in args {
        let slot = match k.to_ascii_lowercase().as_str() {
            "http_proxy" => &mut p.http_proxy,
            "https_proxy" => &mut p.https_proxy,
            "ftp_proxy" => &mut p.ftp_proxy,
            "no_proxy" => &mut p.no_proxy,
            "all_proxy" => &mut p.all_proxy,
            _ => continue,
        };
        *slot = v.clone();
        any = true;
    }
    any.then_some(p)
}

/// `->arch[/variant]` (or `->os/arch…`) where the step's `TARGETPLATFORM`, else its
/// `TARGETOS`/`TARGETARCH`/`TARGETVARIANT`, name a platform other than `base`.
fn arrow_to_target(base: &Platform, env: &[(String, String)]) -> String {
    let mut parts: (Option<&str>, Option<&str>, Option<&str>) = (None, None, None);
    let mut target = None;
    for (k, v) in env {
        match k.as_str() {
            "TARGETPLATFORM" => {
                if let Ok(p) = Platform::parse(v) {
                    target = Some(p);
                    break;
                }
            }
            "TARGETOS" => parts.0 = Some(v),
            "TARGETARCH" => parts.1 = Some(v),
            "TARGETVARIANT" => parts.2 = Some(v),
            _ => {}
        }
    }
    let target = match target {
        Some(t) => t,
        None if parts == (None, None, None) => return String::new(),
        None => Platform::new(
            parts.0.filter(|o| !o.is_empty()).unwrap_or(&base.os),
            parts
                .1
                .filter(|a| !a.is_empty())
                .unwrap_or(&base.architecture),
            parts.2.unwrap_or(""),
        ),
    };
    if target.os == base.os && target.architecture != base.architecture {
        let mut s = format!("->{}", target.architecture);
        if !target.variant.is_empty() {
            s.push_str(&format!("/{}", target.variant));
        }
        s
    } else if target.os != base.os {
        format!("->{target}")
    } else {
        String::new()
    }
}

/// A RUN step's name as BuildKit shows it: the instruction with the variables it can expand
/// (quotes kept, unset ones left as written), its keyword upper-cased.
fn step_name(lex: &Lexer, text: &str, env: &[(String, String)]) -> String {
    let mut l = lex.clone();
    l.raw_quotes = true;
    l.skip_unset_env = true;
    word_name(&l, text, env)
}

/// Another step's name (WORKDIR, COPY, ADD): the instruction through the Dockerfile's own
/// lexer (quotes removed, unset variables empty), its keyword upper-cased.
fn word_name(l: &Lexer, text: &str, env: &[(String, String)]) -> String {
    let w = l
        .process_word(text, env)
        .map(|e| e.result)
        .unwrap_or_else(|_| text.to_string());
    uppercase_cmd(&w)
}

/// CMD's and ENTRYPOINT's argv: the exec form as it is, the shell form through the shell.
fn exec_form(image: &ImageConfig, cl: &CmdLine) -> Vec<String> {
    if cl.prepend_shell {
        with_shell(image, &cl.args)
    } else {
        cl.args.clone()
    }
}

fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((a, b)) => format!("{} {b}", a.to_uppercase()),
        None => s.to_uppercase(),
    }
}

fn with_shell(img: &ImageConfig, args: &[String]) -> Vec<String> {
    let mut shell = if img.shell.is_empty() {
        vec!["/bin/sh".to_string(), "-c".to_string()]
    } else {
        img.shell.clone()
    };
    shell.push(args.join(" "));
    shell
}

/// A `.dockerignore` pattern as BuildKit keeps it: cleaned, without a leading `/`.
pub fn clean_pattern(p: &str) -> String {
    let c = clean(p);
    let c = c.trim_start_matches('/');
    if c == "." {
        String::new()
    } else {
        c.to_string()
    }
}

/// `path.Clean` of a slash path.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// BuildKit's `NormalizePath(parent, path, keepSlash)` for Linux paths: a relative path is
/// joined to the parent (and cleaned); an absolute one is kept as written.
fn normalize_path(parent: &str, p: &str, keep_slash: bool) -> String {
    let parent = if parent.is_empty() { "/" } else { parent };
    let parent = if parent.starts_with('/') {
        parent.to_string()
    } else {
        clean(&format!("/{parent}"))
    };
    let mut out = if p.is_empty() {
        parent.clone()
    } else if p.starts_with('/') {
        p.to_string()
    } else {
        clean(&format!("{parent}/{p}"))
    };
    if keep_slash {
        if p.ends_with('/') && !out.ends_with('/') {
            out.push('/');
        } else if p.ends_with("/.") {
            if out != "/" {
                out.push('/');
            }
            out.push('.');
        }
    }
    out
}

fn dest_path(st: &State, p: &str) -> String {
    let p = if p == "." || p.is_empty() { "./" } else { p };
    if p.starts_with('/') {
        return normalize_path("/", p, true);
    }
    normalize_path(st.get_dir(), p, true)
}

/// `# syntax=`: the built-in frontend stands for `docker/dockerfile:1` (and its 1.x tags);
/// any other frontend image would run as a gateway frontend, which envkit does not.
fn check_syntax(syntax: &str) -> Result<(), ConvertError> {
    let image = syntax.split_whitespace().next().unwrap_or_default();
    let name = image.split('@').next().unwrap_or(image);
    let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
    let repo = repo.trim_start_matches("docker.io/");
    let ours = repo == "docker/dockerfile"
        && (tag == "1" || tag.starts_with("1.") || tag.starts_with("1-"))
        && !tag.contains("labs");
    if ours {
        return Ok(());
    }
    Err(at(
        1,
        format!(
            "# syntax={syntax}: envkit compiles Dockerfiles with its own frontend, which is \
             docker/dockerfile:1; it does not run other frontend images (remove the line, or \
             build with a buildkitd context)"
        ),
    ))
}

/// Converts a Dockerfile.
pub fn convert(text: &str, opt: &ConvertOpt) -> Result<Converted, ConvertError> {
    let parsed = parser::parse(text).map_err(|e| at(e.line, e.message))?;
    if let Some(syntax) = parsed.directives.get("syntax")
        && !opt.ignore_syntax
    {
        check_syntax(syntax)?;
    }
    let ins = instructions::parse(&parsed.nodes).map_err(|e| at(e.line, e.message))?;
    if ins.stages.is_empty() {
        return Err(ConvertError::Other(
            "dockerfile contains no stages to build".into(),
        ));
    }
    let lex = Lexer::new(parsed.escape);
    let target_platform = opt
        .target_platform
        .clone()
        .unwrap_or_else(|| opt.build_platform.clone());
    let target_name = opt.target.clone().unwrap_or_else(|| {
        ins.stages
            .last()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    });

    // The platform arguments, then --build-arg overrides, then the meta ARGs.
    let bp = &opt.build_platform;
    let tp = &target_platform;
    let fmt_platform = |p: &Platform| {
        if p.variant.is_empty() {
            format!("{}/{}", p.os, p.architecture)
        } else {
            format!("{}/{}/{}", p.os, p.architecture, p.variant)
        }
    };
    let mut global = EnvList::default();
    for (k, v) in [
        ("BUILDPLATFORM", fmt_platform(bp)),
        ("BUILDOS", bp.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", bp.architecture.clone()),
        ("BUILDVARIANT", bp.variant.clone()),
        ("TARGETPLATFORM", fmt_platform(tp)),
        ("TARGETOS", tp.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", tp.architecture.clone()),
        ("TARGETVARIANT", tp.variant.clone()),
        (
            "TARGETSTAGE",
            if target_name.is_empty() {
                "default".to_string()
            } else {
                target_name.clone()
            },
        ),
    ] {
        let v = opt.build_args.get(k).cloned().unwrap_or(v);
        global.set(k, &v);
    }
    for cmd in &ins.meta_args {
        let Kind::Arg(args) = &cmd.kind else { continue };
        for a in args {
            let value = match opt.build_args.get(&a.key) {
                Some(v) => Some(v.clone()),
                None => match &a.value {
                    Some(v) => Some(word(&lex, v, &global.0).map_err(|m| at(cmd.start_line, m))?),
                    None => None,
                },
            };
            if let Some(v) = value {
                global.set(&a.key, &v);
            }
        }
    }

    // The stages, their bases and the stages they use.
    let mut ds: Vec<Dispatch> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, st) in ins.stages.iter().enumerate() {
        let base = word(&lex, &st.base, &global.0).map_err(|m| at(st.start_line, m))?;
        if base.is_empty() {
            return Err(at(
                st.start_line,
                format!("base name ({}) should not be blank", st.base),
            ));
        }
        let platform = if st.platform.is_empty() {
            None
        } else {
            let p = word(&lex, &st.platform, &global.0).map_err(|m| at(st.start_line, m))?;
            if p.is_empty() {
                return Err(at(
                    st.start_line,
                    format!("empty platform value from expression {}", st.platform),
                ));
            }
            Some(Platform::parse(&p).map_err(|e| at(st.start_line, e.to_string()))?)
        };
        let mut stage = st.clone();
        stage.base = base.clone();
        let base_stage = by_name.get(&base).copied();
        let mut total = usize::from(base != "scratch" && base_stage.is_none());
        total += stage
            .commands
            .iter()
            .filter(|c| {
                matches!(
                    c.kind,
                    Kind::Add { .. } | Kind::Copy { .. } | Kind::Run { .. } | Kind::Workdir(_)
                )
            })
            .count();
        let stage_name = if st.name.is_empty() {
            format!("stage-{i}")
        } else {
            st.name.clone()
        };
        if !st.name.is_empty() {
            by_name.insert(st.name.clone(), i);
        }
        ds.push(Dispatch {
            stage,
            stage_name,
            base: base_stage,
            platform,
            state: llb::scratch(),
            image: ImageConfig::default(),
            deps: BTreeSet::new(),
            build_args: Vec::new(),
            cmd_total: total,
            cmd_index: 0,
            shown_platform: opt.multi_platform.then(|| target_platform.clone()),
            proxy: proxy_from_build_args(&opt.build_args),
            cmd_pos: usize::MAX,
            onbuild: 0,
            dispatched: false,
            ctx_paths: BTreeSet::new(),
            sources: Vec::new(),
        });
    }
    // ONBUILD triggers run first in a stage: those of the stage it starts from, or of the
    // image (once it is resolved; its config says).
    for d in ds.iter_mut() {
        let exprs: Vec<String> = match d.base {
            Some(b) => ins.stages[b]
                .commands
                .iter()
                .filter_map(|c| match &c.kind {
                    Kind::Onbuild(e) => Some(e.clone()),
                    _ => None,
                })
                .collect(),
            None if d.stage.base == "scratch" => Vec::new(),
            None => {
                let p = d
                    .platform
                    .clone()
                    .unwrap_or_else(|| target_platform.clone());
                crate::reference::normalize_image_ref(&d.stage.base)
                    .ok()
                    .and_then(|n| opt.images.get(&(n, p)))
                    .and_then(|r| ImageConfig::from_json(&r.config).ok())
                    .map(|img| img.on_build)
                    .unwrap_or_default()
            }
        };
        if exprs.is_empty() {
            continue;
        }
        let line = d.stage.start_line;
        let mut triggers = Vec::with_capacity(exprs.len());
        for e in &exprs {
            let c = instructions::parse_trigger(e, line).map_err(|e| at(e.line, e.message))?;
            if matches!(
                c.kind,
                Kind::Add { .. } | Kind::Copy { .. } | Kind::Run { .. } | Kind::Workdir(_)
            ) {
                d.cmd_total += 1;
            }
            triggers.push(c);
        }
        d.onbuild = triggers.len();
        triggers.append(&mut d.stage.commands);
        d.stage.commands = triggers;
    }
    let target = match &opt.target {
        None => ds.len() - 1,
        Some(t) => *by_name
            .get(&t.to_ascii_lowercase())
            .ok_or_else(|| ConvertError::Other(format!("target stage {t:?} could not be found")))?,
    };
    // What each command reads: COPY --from a stage (by name or index) or an image, RUN's
    // mounts from the context, a stage or an image.
    // BuildKit counts every mount and `--from` that names no stage as a state of its own
    // (`unregistered`), so a lone stage that has one keeps its `stage-0` name.
    let mut unregistered = false;
    for i in 0..ds.len() {
        let mut deps = BTreeSet::new();
        let mut all = Vec::new();
        for c in &ds[i].stage.commands {
            let mut srcs = Vec::new();
            match &c.kind {
                Kind::Copy { from, .. } if !from.is_empty() => {
                    let expanded = word(&lex, from, &[]).map_err(|m| at(c.start_line, m))?;
                    if &expanded != from {
                        return Err(at(
                            c.start_line,
                            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                        ));
                    }
                    srcs.push(match from.parse::<usize>() {
                        Ok(n) if n < ds.len() => Src::Stage(n),
                        Ok(n) => return Err(at(c.start_line, format!("invalid stage index {n}"))),
                        Err(_) => match by_name.get(&from.to_ascii_lowercase()) {
                            Some(&n) => Src::Stage(n),
                            None if from == "scratch" => Src::Scratch,
                            None => Src::Image(from.clone()),
                        },
                    });
                }
                Kind::Copy { .. } | Kind::Add { .. } => srcs.push(Src::Context),
                Kind::Run { mounts, .. } => {
                    for m in mounts {
                        let spec =
                            instructions::parse_mount(m, None).map_err(|e| at(c.start_line, e))?;
                        let kind = instructions::parse_mount(m, Some(&|v: &str| Ok(v.to_string())))
                            .map(|x| x.kind)
                            .unwrap_or(instructions::MountKind::Bind);
                        srcs.push(match spec.from.as_str() {
                            "" if kind == instructions::MountKind::Cache => Src::Scratch,
                            "" => Src::Context,
                            "scratch" => Src::Scratch,
                            f => match by_name.get(&f.to_ascii_lowercase()) {
                                Some(&n) => Src::Stage(n),
                                None => Src::Image(f.to_string()),
                            },
                        });
                    }
                }
                _ => {}
            }
            let plain_copy = matches!(&c.kind, Kind::Copy { from, .. } if from.is_empty())
                || matches!(&c.kind, Kind::Add { .. });
            for s in &srcs {
                match s {
                    Src::Stage(n) => {
                        deps.insert(*n);
                    }
                    _ if plain_copy => {}
                    _ => unregistered = true,
                }
            }
            all.push(srcs);
        }
        ds[i].deps = deps;
        ds[i].sources = all;
    }
    if ds.len() == 1 && !unregistered {
        ds[0].stage_name.clear();
    }

    // What the target needs.
    let mut reachable = BTreeSet::new();
    let mut stack = vec![target];
    while let Some(s) = stack.pop() {
        if !reachable.insert(s) {
            continue;
        }
        stack.extend(ds[s].base);
        stack.extend(ds[s].deps.iter().copied());
    }

    // Base images to resolve.
    let mut missing = Vec::new();
    for &i in &reachable {
        let d = &ds[i];
        if d.base.is_some() || d.stage.base == "scratch" {
            continue;
        }
        let norm = crate::reference::normalize_image_ref(&d.stage.base).map_err(|e| {
            at(
                d.stage.start_line,
                format!("failed to parse stage name {:?}: {e}", d.stage.base),
            )
        })?;
        let p = d
            .platform
            .clone()
            .unwrap_or_else(|| target_platform.clone());
        if !opt.images.contains_key(&(norm.clone(), p.clone())) {
            missing.push((norm, p));
        }
        for img in d.sources.iter().flatten().filter_map(|s| match s {
            Src::Image(r) => Some(r),
            _ => None,
        }) {
            let norm = crate::reference::normalize_image_ref(img)
                .map_err(|e| at(d.stage.start_line, e))?;
            let p = target_platform.clone();
            if !opt.images.contains_key(&(norm.clone(), p.clone())) {
                missing.push((norm, p));
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(ConvertError::Unresolved(missing));
    }

    // Two passes: the first learns which paths of the context are read, the second builds
    // with the context's source filtered to them (BuildKit fills the context in last).
    let mut ctx_paths = BTreeSet::new();
    for pass in 0..2 {
        let context = if pass == 0 {
            llb::scratch()
        } else {
            let follow: Vec<String> = if ctx_paths.contains("/") {
                Vec::new()
            } else {
                let mut v: Vec<String> = ctx_paths
                    .iter()
                    .map(|p: &String| clean(p.trim_start_matches('/')))
                    .collect();
                v.sort();
                v
            };
            llb::local(
                &opt.context_name,
                LocalOptions {
                    follow_paths: follow,
                    exclude_patterns: opt.context_excludes.clone(),
                    shared_key_hint: Some(opt.context_name.clone()),
                    unique_id: Some(opt.context_unique.clone()),
                    constraints: Constraints::new().custom_name("[internal] load build context"),
                    ..Default::default()
                },
            )
        };
        let mut run = ds
            .iter()
            .map(|_| None::<(State, ImageConfig, Option<Platform>)>)
            .collect::<Vec<_>>();
        for d in ds.iter_mut() {
            d.dispatched = false;
            d.cmd_index = 0;
            d.cmd_pos = usize::MAX;
            d.ctx_paths.clear();
        }
        for i in 0..ds.len() {
            if !reachable.contains(&i) {
                continue;
            }
            dispatch_stage(
                i,
                &mut ds,
                &mut run,
                &lex,
                &global,
                opt,
                &target_platform,
                &context,
            )?;
        }
        if pass == 0 {
            for &i in &reachable {
                ctx_paths.extend(ds[i].ctx_paths.iter().cloned());
            }
        }
    }
    let t = &ds[target];
    let mut image = t.image.clone();
    if opt.target_platform.is_some() {
        image.os = target_platform.os.clone();
        image.architecture = target_platform.architecture.clone();
        image.variant = target_platform.variant.clone();
    }
    let definition = t
        .state
        .marshal(&llb::MarshalOptions {
            platform: target_platform.clone(),
            local_unique_id: opt.context_unique.clone(),
            ..Default::default()
        })
        .map_err(|e| ConvertError::Other(e.to_string()))?;
    Ok(Converted {
        definition,
        image: image.to_json(),
        platform: target_platform,
    })
}

#[allow(clippy::too_many_arguments)]
fn dispatch_stage(
    i: usize,
    ds: &mut [Dispatch],
    done: &mut Vec<Option<(State, ImageConfig, Option<Platform>)>>,
    lex: &Lexer,
    global: &EnvList,
    opt: &ConvertOpt,
    target_platform: &Platform,
    context: &State,
) -> Result<(), ConvertError> {
    if ds[i].dispatched {
        return Ok(());
    }
    // What it starts from.
    let line = ds[i].stage.start_line;
    let (mut state, mut image, platform) = match ds[i].base {
        Some(b) => {
            if done[b].is_none() {
                dispatch_stage(b, ds, done, lex, global, opt, target_platform, context)?;
            }
            let (s, mut img, p) = done[b]
                .clone()
                .ok_or_else(|| at(line, "base stage not built"))?;
            img.on_build.clear();
            (s, img, p)
        }
        None if ds[i].stage.base == "scratch" => (
            llb::scratch(),
            ImageConfig::empty(target_platform),
            Some(target_platform.clone()),
        ),
        None => {
            let p = ds[i]
                .platform
                .clone()
                .unwrap_or_else(|| target_platform.clone());
            let norm = crate::reference::normalize_image_ref(&ds[i].stage.base)
                .map_err(|e| at(line, e))?;
            let r = opt
                .images
                .get(&(norm.clone(), p.clone()))
                .ok_or_else(|| ConvertError::Unresolved(vec![(norm.clone(), p.clone())]))?;
            let mut img = ImageConfig::from_json(&r.config).map_err(|m| at(line, m))?;
            // Its triggers run in this stage (they were made its first commands).
            img.on_build.clear();
            let scratch = img.base["rootfs"]["diff_ids"]
                .as_array()
                .is_none_or(|a| a.is_empty())
                && img.base["history"]
                    .as_array()
                    .is_none_or(|h| h.iter().all(|e| e["empty_layer"].as_bool() == Some(true)));
            let d = &mut ds[i];
            let name = prefix(d, &format!("FROM {}", r.pinned));
            let st = if scratch {
                llb::scratch()
            } else {
                llb::image_with(
                    &r.pinned,
                    llb::ImageOptions {
                        constraints: Constraints::new()
                            .description("com.docker.dockerfile.v1.command", d.stage.code.clone())
                            .platform(p.clone())
                            .custom_name(name),
                        resolve_mode: opt.image_resolve_mode,
                        ..Default::default()
                    },
                )
            };
            (st, img, Some(p))
        }
    };
    let platform = platform.unwrap_or_else(|| target_platform.clone());
    if !image
        .env
        .iter()
        .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == "PATH")
    {
        image.env.push(format!("PATH={DEFAULT_PATH}"));
    }
    // The image's environment, working dir and user over the state (also for a stage built
    // on another: BuildKit sets them again, which moves the image's variables last).
    {
        for e in image.env.clone() {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            state = state.add_env(k, v);
        }
        if !image.working_dir.is_empty() {
            state = state.dir(&image.working_dir);
        }
        if !image.user.is_empty() {
            state = state.user(&image.user);
        }
    }
    let commands = ds[i].stage.commands.clone();
    for (ci, c) in commands.iter().enumerate() {
        let mut src_states = Vec::new();
        for src in ds[i].sources.get(ci).cloned().unwrap_or_default() {
            src_states.push(match src {
                Src::Context => context.clone(),
                Src::Scratch => llb::scratch(),
                Src::Stage(n) => match &done[n] {
                    Some(x) => x.0.clone(),
                    None => {
                        return Err(at(
                            c.start_line,
                            format!(
                                "cannot copy from stage {:?}, it needs to be defined before current stage {:?}",
                                ds[n].stage.name, ds[i].stage_name
                            ),
                        ));
                    }
                },
                Src::Image(r) => image_state(&r, target_platform, opt).map_err(|e| match e {
                    ConvertError::Other(m) => at(c.start_line, m),
                    e => e,
                })?,
            });
        }
        let d = &mut ds[i];
        d.cmd_pos = ci;
        dispatch(
            d,
            c,
            &mut state,
            &mut image,
            &platform,
            lex,
            global,
            opt,
            &src_states,
        )
        .map_err(|m| at(c.start_line, m))?;
    }
    let d = &mut ds[i];
    d.state = state.clone();
    d.image = image.clone();
    d.dispatched = true;
    done[i] = Some((state, image, Some(platform)));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    d: &mut Dispatch,
    c: &Command,
    state: &mut State,
    image: &mut ImageConfig,
    platform: &Platform,
    lex: &Lexer,
    global: &EnvList,
    opt: &ConvertOpt,
    sources: &[State],
) -> Result<(), String> {
    let env = env_pairs(state);
    let exp = |w: &str| word(lex, w, &env);
    match &c.kind {
        Kind::Env(kvs) => {
            let mut msg = String::from("ENV");
            // Every pair is expanded with the variables as they were before this ENV.
            for kv in kvs {
                let k = exp(&kv.key)?;
                let v = exp(&kv.value)?;
                msg.push_str(&format!(" {k}={v}"));
                *state = state.add_env(&k, &v);
                image.add_env(&k, &v);
            }
            image.commit(msg, false, false);
        }
        Kind::Label(kvs) => {
            let mut msg = String::from("LABEL");
            for kv in kvs {
                let k = exp(&kv.key)?;
                let v = exp(&kv.value)?;
                msg.push_str(&format!(" {k}={v}"));
                image.labels.insert(k, v);
            }
            image.commit(msg, false, false);
        }
        Kind::Maintainer(m) => {
            image.author = m.clone();
            image.commit(format!("MAINTAINER {m}"), false, false);
        }
        Kind::User(u) => {
            let u = exp(u)?;
            *state = state.user(&u);
            image.user = u.clone();
            image.commit(format!("USER {u}"), false, false);
        }
        Kind::Workdir(p) => {
            let p = exp(p)?;
            let wd = normalize_path(&image.working_dir, &p, false);
            image.working_dir = wd.clone();
            *state = state.dir(&wd);
            let mut layer = false;
            if wd != "/" {
                let env = env_pairs(state);
                let name = prefix_in(d, &word_name(lex, &c.code, &env), &env);
                let user = image.user.clone();
                let mut mk = MkdirOptions {
                    make_parents: true,
                    ..Default::default()
                };
                if !user.is_empty() {
                    mk.chown = Some(llb::Chown::parse(&user));
                }
                *state = state.file(
                    FileAction::new().mkdir(&wd, 0o755, mk),
                    Constraints::new()
                        .custom_name(name)
                        .platform(platform.clone()),
                );
                layer = true;
            }
            image.commit(format!("WORKDIR {wd}"), layer, false);
        }
        Kind::Arg(args) => {
            let mut shown_args = Vec::new();
            for a in args {
                let env = env_pairs(state);
                let key = word(lex, &a.key, &env)?;
                let mut value = a.value.clone();
                let has_value = opt.build_args.contains_key(&key);
                if value.is_none()
                    && !has_value
                    && let Some(v) = global.get(&key)
                {
                    value = Some(v.to_string());
                } else if has_value {
                    value = opt.build_args.get(&key).cloned();
                } else if let Some(v) = &value {
                    value = Some(word(lex, v, &env)?);
                }
                if let Some(v) = &value {
                    *state = state.add_env(&key, v);
                }
                shown_args.push(match &value {
                    Some(v) => format!("{key}={v}"),
                    None => key.clone(),
                });
                d.build_args.push(ArgDef { key, value });
            }
            image.commit(format!("ARG {}", shown_args.join(" ")), false, false);
        }
        Kind::Run {
            cmd,
            mounts,
            network,
            security,
            ..
        } => {
            run_command(
                d, c, state, image, lex, cmd, mounts, network, security, sources,
            )?;
        }
        Kind::Cmd(cl) => {
            let args = exec_form(image, cl);
            image.commit(format!("CMD {args:?}"), false, false);
            image.cmd = Some(args);
        }
        Kind::Entrypoint(cl) => {
            let args = exec_form(image, cl);
            image.commit(format!("ENTRYPOINT {args:?}"), false, false);
            image.entrypoint = Some(args);
            image.cmd = None;
        }
        Kind::Shell(s) => {
            image.shell = s.clone();
            image.commit(format!("SHELL {s:?}"), false, false);
        }
        Kind::Healthcheck(h) => {
            image.healthcheck = Some(h.clone());
            image.commit("HEALTHCHECK".into(), false, false);
        }
        Kind::Expose(ports) => {
            let mut out = Vec::new();
            for p in ports {
                for w in lex
                    .process_words(p, env.as_slice())
                    .map_err(|e| e.to_string())?
                {
                    let w = if w.contains('/') {
                        w
                    } else {
                        format!("{w}/tcp")
                    };
                    out.push(w);
                }
            }
            image.commit(
                format!(
                    "EXPOSE map[{}]",
                    out.iter()
                        .map(|p| format!("{p}:{{}}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                false,
                false,
            );
            image.exposed.extend(out);
        }
        Kind::Volume(vs) => {
            let mut out = Vec::new();
            for v in vs {
                let v = exp(v)?;
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                out.push(v);
            }
            image.commit(format!("VOLUME {out:?}"), false, false);
            image.volumes.extend(out);
        }
        Kind::StopSignal(s) => {
            let s = exp(s)?;
            image.commit(format!("STOPSIGNAL {s}"), false, false);
            image.stop_signal = s;
        }
        Kind::Onbuild(e) => image.on_build.push(e.clone()),
        Kind::Copy {
            paths,
            chown,
            chmod,
            link,
            parents,
            exclude,
            ..
        } => {
            let source = sources.first().cloned().unwrap_or_default();
            let from_context = matches!(
                d.sources.get(d.cmd_pos).and_then(|s| s.first()),
                Some(Src::Context)
            );
            let cfg = CopyCfg {
                paths,
                chown: exp(chown)?,
                chmod: exp(chmod)?,
                link: *link,
                parents: *parents,
                exclude: exclude.clone(),
                is_add: false,
                checksum: String::new(),
                unpack: None,
                keep_git_dir: None,
            };
            copy(
                d,
                state,
                image,
                platform,
                lex,
                &env,
                c,
                &cfg,
                &source,
                from_context,
            )?;
        }
        Kind::Add {
            paths,
            chown,
            chmod,
            link,
            checksum,
            unpack,
            exclude,
            keep_git_dir,
        } => {
            let source = sources.first().cloned().unwrap_or_default();
            let cfg = CopyCfg {
                paths,
                chown: exp(chown)?,
                chmod: exp(chmod)?,
                link: *link,
                parents: false,
                exclude: exclude.clone(),
                is_add: true,
                checksum: exp(checksum)?,
                unpack: *unpack,
                keep_git_dir: *keep_git_dir,
            };
            copy(d, state, image, platform, lex, &env, c, &cfg, &source, true)?;
        }
    }
    Ok(())
}

/// The state of an image a command reads (`COPY --from=IMAGE`, `RUN --mount=from=IMAGE`).
fn image_state(
    reference: &str,
    platform: &Platform,
    opt: &ConvertOpt,
) -> Result<State, ConvertError> {
    let norm = crate::reference::normalize_image_ref(reference).map_err(ConvertError::Other)?;
    let r = opt
        .images
        .get(&(norm.clone(), platform.clone()))
        .ok_or_else(|| ConvertError::Unresolved(vec![(norm, platform.clone())]))?;
    let img = ImageConfig::from_json(&r.config).map_err(ConvertError::Other)?;
    if image_is_empty(&img) {
        return Ok(llb::scratch());
    }
    Ok(llb::image_with(
        &r.pinned,
        llb::ImageOptions {
            constraints: Constraints::new()
                .description("com.docker.dockerfile.v1.command", "")
                .platform(platform.clone())
                .custom_name(format!("FROM {}", r.pinned)),
            resolve_mode: opt.image_resolve_mode,
            ..Default::default()
        },
    ))
}

/// An image without layers is scratch.
fn image_is_empty(img: &ImageConfig) -> bool {
    img.base["rootfs"]["diff_ids"]
        .as_array()
        .is_none_or(|a| a.is_empty())
        && img.base["history"]
            .as_array()
            .is_none_or(|h| h.iter().all(|e| e["empty_layer"].as_bool() == Some(true)))
}

/// The first line of a here-document, for a step's name.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let norm = doc.replace("\r\n", "\n");
    let mut lines = norm.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

#[allow(clippy::too_many_arguments)]
fn run_command(
    d: &mut Dispatch,
    c: &Command,
    state: &mut State,
    image: &mut ImageConfig,
    lex: &Lexer,
    cmd: &CmdLine,
    mounts: &[String],
    network: &str,
    security: &str,
    sources: &[State],
) -> Result<(), String> {
    let mut custom = c.code.clone();
    let mut args = cmd.args.clone();
    let mut run_mounts = Vec::new();
    if !cmd.files.is_empty() {
        if args.len() != 1 || !cmd.prepend_shell {
            return Err(format!("parsing produced an invalid run command: {args:?}"));
        }
        match parser::parse_heredoc(&args[0]).ok().flatten() {
            Some(_) => {
                let f = &cmd.files[0];
                let mut data = f.data.clone();
                if f.chomp {
                    data = parser::chomp_heredoc(&data);
                }
                if data.starts_with("#!") {
                    // A script with a shebang: a file of its own, run from a mount.
                    let file = llb::scratch().dir("/").file(
                        FileAction::new().mkfile(
                            &f.name,
                            0o755,
                            data.as_bytes(),
                            Default::default(),
                        ),
                        Constraints::new().custom_name("[internal] preparing inline document"),
                    );
                    run_mounts.push(
                        llb::Mount::bind("/dev/pipes/", &file)
                            .selector("/")
                            .readonly(),
                    );
                    args = vec![format!("/dev/pipes/{}", f.name)];
                } else {
                    args = vec![data];
                }
                custom.push_str(&format!(" ({})", summarize_heredoc(&f.data)));
            }
            None => {
                let mut b = args[0].clone();
                for f in &cmd.files {
                    b.push('\n');
                    b.push_str(&f.data);
                    b.push_str(&f.name);
                }
                args = vec![b];
            }
        }
    }
    if cmd.prepend_shell {
        args = with_shell(image, &args);
    }
    let env = env_pairs(state);
    let expand = |v: &str| word(lex, v, &env);
    let mut secrets = Vec::new();
    let mut ssh = Vec::new();
    let mut masked = Vec::new();
    for (mi, raw) in mounts.iter().enumerate() {
        let m = instructions::parse_mount(raw, Some(&expand))?;
        let source = sources.get(mi).cloned().unwrap_or_default();
        use instructions::MountKind as K;
        match m.kind {
            K::Secret => {
                let mut id = if m.source.is_empty() {
                    m.id.clone()
                } else {
                    m.source.clone()
                };
                if id.is_empty() {
                    if m.target.is_empty() {
                        return Err("one of source, target required".into());
                    }
                    id = base_name(&m.target);
                }
                let target = match (&m.env, m.target.is_empty()) {
                    (None, true) => Some(format!("/run/secrets/{}", base_name(&id))),
                    (_, false) => Some(m.target.clone()),
                    (Some(_), true) => None,
                };
                let (uid, gid, mode) = file_info(&m, 0o400);
                masked.extend(m.env.clone());
                secrets.push(llb::SecretMount {
                    id,
                    target,
                    env: m.env.clone(),
                    uid,
                    gid,
                    mode,
                    optional: !m.required,
                });
                continue;
            }
            K::Ssh => {
                if !m.source.is_empty() {
                    return Err("ssh does not support source".into());
                }
                let (uid, gid, mode) = file_info(&m, 0o600);
                ssh.push(llb::SshMount {
                    id: m.id.clone(),
                    target: (!m.target.is_empty()).then(|| m.target.clone()),
                    uid,
                    gid,
                    mode,
                    optional: !m.required,
                });
                continue;
            }
            _ => {}
        }
        let mut target = m.target.clone();
        if !clean(&target).starts_with('/') {
            target = clean(&format!("/{}/{}", state.get_dir(), m.target));
        }
        if target == "/" {
            return Err(format!("invalid mount target {target:?}"));
        }
        let mut src_state = source;
        let mut mount = match m.kind {
            K::Tmpfs => llb::Mount::tmpfs(&target, m.size),
            K::Cache => {
                let sharing = match m.sharing.as_str() {
                    "private" => llb::CacheSharing::Private,
                    "locked" => llb::CacheSharing::Locked,
                    _ => llb::CacheSharing::Shared,
                };
                let id = if m.id.is_empty() {
                    clean(&m.target)
                } else {
                    m.id.clone()
                };
                llb::Mount::cache(&target, &format!("/{id}"), sharing)
            }
            _ => llb::Mount::bind(&target, &src_state),
        };
        if m.readonly {
            mount = mount.readonly();
        } else if m.kind == K::Bind {
            mount = mount.no_output();
        }
        let src = clean(&format!("/{}", m.source));
        if src != "/" {
            mount = mount.selector(&src);
        } else if m.uid.is_some() || m.gid.is_some() || m.mode.is_some() {
            let mk = MkdirOptions {
                chown: Some(llb::Chown {
                    user: Some(llb::UserRef::Id(m.uid.unwrap_or(0))),
                    group: Some(llb::UserRef::Id(m.gid.unwrap_or(0))),
                }),
                ..Default::default()
            };
            src_state = src_state.file(
                FileAction::new().mkdir("/cache", m.mode.unwrap_or(0o755), mk),
                Constraints::new().custom_name("[internal] setting cache mount permissions"),
            );
            mount = mount.source(&src_state).selector("/cache");
        }
        if m.kind == K::Cache {
            mount = mount.source(&src_state);
        }
        run_mounts.push(mount);
        // As BuildKit: any mount but a cache one without `from` reads the context.
        if m.from.is_empty() && m.kind != K::Cache {
            d.ctx_paths.insert(clean(&format!("/{}", m.source)));
        }
    }
    let net = match network {
        "default" => None,
        "none" => Some(crate::pb::NetMode::None),
        "host" => Some(crate::pb::NetMode::Host),
        n => return Err(format!("unsupported network mode {n:?}")),
    };
    match security {
        "sandbox" | "insecure" => {}
        s => return Err(format!("unsupported security mode {s:?}")),
    }
    // Secrets given as variables are masked in the step's name.
    let mut shown_env = env.clone();
    for e in &masked {
        shown_env.retain(|(k, _)| k != e);
        shown_env.push((e.clone(), "****".into()));
    }
    let name = prefix_in(d, &step_name(lex, &custom, &shown_env), &env);
    let mut run = Run::args(args.clone()).constraints(
        Constraints::new()
            .description("com.docker.dockerfile.v1.command", c.code.clone())
            .custom_name(name),
    );
    if let Some(p) = &d.proxy {
        run = run.proxy_env(p.clone());
    }
    for m in run_mounts {
        run = run.mount(m);
    }
    for sm in secrets {
        run = run.secret(sm);
    }
    for sm in ssh {
        run = run.ssh(sm);
    }
    let mut on = state.clone();
    if let Some(n) = net {
        on = on.network(n);
    }
    if security == "insecure" {
        on = on.security(crate::pb::SecurityMode::Insecure);
    }
    let root = on.run(run).root();
    *state = state.with_output(&root);
    // History: the build arguments in use, then the command.
    let mut shown_args: Vec<String> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for a in &d.build_args {
        let v = env
            .iter()
            .rev()
            .find(|(k, _)| k == &a.key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| a.value.clone().unwrap_or_default());
        match seen.iter().position(|k| k == &a.key) {
            Some(p) => shown_args[p] = format!("{}={v}", a.key),
            None => {
                seen.push(a.key.clone());
                shown_args.push(format!("{}={v}", a.key));
            }
        }
    }
    let mut hist: Vec<String> = Vec::new();
    if !shown_args.is_empty() {
        hist.push(format!("|{}", shown_args.len()));
        hist.extend(shown_args);
    }
    hist.extend(args);
    image.commit(format!("RUN {}", hist.join(" ")), true, true);
    Ok(())
}

/// A secret's or ssh socket's owner and mode: as given, 0 and `mode` by default.
fn file_info(m: &instructions::MountSpec, mode: u32) -> (u32, u32, u32) {
    (
        m.uid.unwrap_or(0),
        m.gid.unwrap_or(0),
        m.mode.unwrap_or(mode),
    )
}

fn base_name(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return if p.is_empty() { ".".into() } else { "/".into() };
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

/// What COPY and ADD were given.
struct CopyCfg<'a> {
    paths: &'a instructions::SourcesAndDest,
    chown: String,
    chmod: String,
    link: bool,
    parents: bool,
    exclude: Vec<String>,
    is_add: bool,
    checksum: String,
    unpack: Option<bool>,
    /// Only meaningful for git sources (not converted yet).
    #[allow(dead_code)]
    keep_git_dir: Option<bool>,
}

fn contains_wildcards(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'*' | b'?' | b'[' => return true,
            b'\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    false
}

#[allow(clippy::too_many_arguments)]
fn copy(
    d: &mut Dispatch,
    state: &mut State,
    image: &mut ImageConfig,
    platform: &Platform,
    lex: &Lexer,
    env: &[(String, String)],
    c: &Command,
    cfg: &CopyCfg,
    source: &State,
    from_context: bool,
) -> Result<(), String> {
    let dest = dest_path(state, &word(lex, &cfg.paths.dest, env)?);
    let chmod = &cfg.chmod;
    let mode = if chmod.is_empty() {
        None
    } else {
        match u32::from_str_radix(chmod, 8) {
            Ok(m) if m <= 0o7777 => Some(llb::Chmod::Mode(m)),
            Ok(_) => {
                return Err(format!(
                    "invalid chmod parameter: '{chmod}'. it should be octal string and between 0 and 07777"
                ));
            }
            Err(_) if chmod.chars().all(|c| c.is_ascii_digit()) => {
                return Err(format!(
                    "invalid chmod parameter: '{chmod}'. it should be octal string and between 0 and 07777"
                ));
            }
            Err(_) => Some(llb::Chmod::Str(chmod.clone())),
        }
    };
    if !cfg.checksum.is_empty() {
        if !cfg.is_add {
            return Err("checksum can't be specified for COPY".into());
        }
        if cfg.paths.sources.len() != 1 {
            return Err("checksum can't be specified for multiple sources".into());
        }
        if !is_http(&cfg.paths.sources[0]) {
            return Err("checksum requires HTTP(S) or Git sources".into());
        }
    }
    let mut msg = String::from(if cfg.is_add { "ADD" } else { "COPY" });
    if cfg.parents {
        msg.push_str(" --parents");
    }
    if !cfg.chown.is_empty() {
        msg.push_str(&format!(" --chown={}", cfg.chown));
    }
    if !chmod.is_empty() {
        msg.push_str(&format!(" --chmod={chmod}"));
    }
    let shown = word_name(lex, &c.code, env);
    let name = prefix_in(d, &shown, env);
    let chown = (!cfg.chown.is_empty()).then(|| llb::Chown::parse(&cfg.chown));
    let mut fa = FileAction::new();
    for raw in &cfg.paths.sources {
        let src = word(lex, raw, env)?;
        msg.push(' ');
        msg.push_str(&src);
        if is_git(&src) {
            if !cfg.is_add {
                return Err("source can't be a git ref for COPY".into());
            }
            let g = parse_git_ref(&src)?;
            let keep = match (cfg.keep_git_dir, g.keep_git_dir) {
                (Some(a), Some(b)) if a != b => {
                    return Err("inconsistent keep-git-dir configuration".into());
                }
                (a, b) => b.or(a).unwrap_or(false),
            };
            let checksum = match (cfg.checksum.as_str(), g.checksum.as_str()) {
                (a, b) if !a.is_empty() && !b.is_empty() && a != b => {
                    return Err(format!("checksum mismatch {a:?} != {b:?}"));
                }
                ("", b) => b.to_string(),
                (a, _) => a.to_string(),
            };
            let fragment = if g.subdir.is_empty() {
                g.git_ref.clone()
            } else {
                format!("{}:{}", g.git_ref, g.subdir)
            };
            let git = llb::git(
                &g.remote,
                &fragment,
                llb::GitOptions {
                    keep_git_dir: keep,
                    checksum: (!checksum.is_empty()).then_some(checksum),
                    constraints: Constraints::new().custom_name(name.clone()),
                },
            );
            fa = fa.copy(
                &git,
                "/",
                &dest,
                CopyOptions {
                    mode: mode.clone(),
                    create_dest_path: true,
                    chown: chown.clone(),
                    exclude_patterns: cfg.exclude.clone(),
                    ..Default::default()
                },
            );
            continue;
        }
        if is_http(&src) {
            if !cfg.is_add {
                return Err("source can't be a URL for COPY".into());
            }
            let file = src
                .split(['?', '#'])
                .next()
                .and_then(|u| u.split("://").nth(1))
                .and_then(|rest| rest.split_once('/').map(|(_, p)| p))
                .map(|p| base_name(&format!("/{p}")))
                .filter(|b| b != "." && b != "/" && !b.is_empty())
                .unwrap_or_else(|| "__unnamed__".into());
            let http = llb::http(
                &src,
                llb::HttpOptions {
                    filename: Some(file.clone()),
                    checksum: (!cfg.checksum.is_empty()).then(|| cfg.checksum.clone()),
                    constraints: Constraints::new()
                        .custom_name(name.clone())
                        .description("com.docker.dockerfile.v1.command", http_dfcmd(cfg)),
                    ..Default::default()
                },
            );
            fa = fa.copy(
                &http,
                &file,
                &dest,
                CopyOptions {
                    mode: mode.clone(),
                    create_dest_path: true,
                    attempt_unpack: cfg.unpack.unwrap_or(false),
                    chown: chown.clone(),
                    exclude_patterns: cfg.exclude.clone(),
                    ..Default::default()
                },
            );
            continue;
        }
        let mut src_path = src.clone();
        let mut patterns = Vec::new();
        let mut required = Vec::new();
        if cfg.parents {
            let (parent, pattern) = match src.split_once("/./") {
                Some((p, pat)) => (p.to_string(), pat.to_string()),
                None => ("/".to_string(), src.clone()),
            };
            src_path = parent;
            let pattern = normalize_path("/", &pattern, false);
            patterns.push(pattern.trim_start_matches('/').to_string());
            if !contains_wildcards(&src_path) && !contains_wildcards(&pattern) {
                required.push(normalize_path(
                    "/",
                    &clean(&format!("{src_path}/{pattern}")),
                    false,
                ));
            }
        }
        let s = normalize_path("/", &src_path, false);
        fa = fa.copy(
            source,
            &s,
            &dest,
            CopyOptions {
                mode: mode.clone(),
                follow_symlinks: true,
                copy_dir_contents_only: true,
                include_patterns: patterns,
                required_paths: required,
                attempt_unpack: cfg.unpack.unwrap_or(cfg.is_add),
                create_dest_path: true,
                allow_wildcard: true,
                allow_empty_wildcard: true,
                chown: chown.clone(),
                exclude_patterns: cfg.exclude.clone(),
                ..Default::default()
            },
        );
        if from_context {
            d.ctx_paths.insert(clean(&format!("/{src}")));
        }
    }
    for content in &cfg.paths.contents {
        msg.push_str(&format!(" <<{}", content.path));
        let data = if content.expand {
            let mut l = Lexer::new('\\');
            l.skip_process_quotes = true;
            word(&l, &content.data, env)?
        } else {
            content.data.clone()
        };
        let doc = llb::scratch().file(
            FileAction::new().mkfile(&content.path, 0o644, data.as_bytes(), Default::default()),
            Constraints::new().custom_name("[internal] preparing inline document"),
        );
        fa = fa.copy(
            &doc,
            &content.path,
            &dest,
            CopyOptions {
                mode: mode.clone(),
                create_dest_path: true,
                chown: chown.clone(),
                exclude_patterns: cfg.exclude.clone(),
                ..Default::default()
            },
        );
    }
    msg.push(' ');
    msg.push_str(&cfg.paths.dest);
    if cfg.link && chmod.is_empty() {
        // The copy onto nothing, merged over the state: a layer of its own.
        d.cmd_index -= 1;
        let copy_name = prefix_in(d, &shown, env);
        d.cmd_index -= 1;
        let link_name = prefix_in(d, &format!("LINK {shown}"), env);
        let layer = llb::scratch().file(
            fa,
            Constraints::new()
                .custom_name(copy_name)
                .platform(platform.clone()),
        );
        let merged = llb::merge(
            &[state.clone(), layer],
            Constraints::new().custom_name(link_name),
        );
        *state = state.with_output(&merged);
    } else {
        *state = state.file(fa, Constraints::new().custom_name(name));
    }
    image.commit(msg, true, true);
    Ok(())
}

/// A git source of ADD: `URL[#ref[:subdir]]` or `URL?ref=…&subdir=…&keep-git-dir=…`.
struct GitRef {
    remote: String,
    git_ref: String,
    subdir: String,
    checksum: String,
    keep_git_dir: Option<bool>,
}

fn parse_git_ref(src: &str) -> Result<GitRef, String> {
    let (rest, fragment) = src.split_once('#').unwrap_or((src, ""));
    let (remote, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (mut git_ref, mut subdir) = match fragment.split_once(':') {
        Some((r, d)) => (r.to_string(), d.to_string()),
        None => (fragment.to_string(), String::new()),
    };
    let mut g = GitRef {
        remote: remote.to_string(),
        git_ref: String::new(),
        subdir: String::new(),
        checksum: String::new(),
        keep_git_dir: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "ref" => git_ref = v.to_string(),
            "tag" if v.starts_with("refs/tags/") => git_ref = v.to_string(),
            "tag" => git_ref = format!("refs/tags/{v}"),
            "branch" if v.starts_with("refs/heads/") => git_ref = v.to_string(),
            "branch" => git_ref = format!("refs/heads/{v}"),
            "subdir" => subdir = v.to_string(),
            "checksum" | "commit" => g.checksum = v.to_string(),
            "keep-git-dir" if v.is_empty() => g.keep_git_dir = Some(true),
            "keep-git-dir" => g.keep_git_dir = Some(instructions::parse_go_bool(k, v)?),
            _ => {
                return Err(format!(
                    "git source option {k:?} is not supported by envkit's Dockerfile frontend yet"
                ));
            }
        }
    }
    g.git_ref = git_ref;
    g.subdir = subdir;
    Ok(g)
}

fn is_git(src: &str) -> bool {
    src.starts_with("git@")
        || src.starts_with("git://")
        || ((src.starts_with("http://") || src.starts_with("https://"))
            && (src
                .split(['?', '#'])
                .next()
                .is_some_and(|u| u.ends_with(".git"))))
}

fn is_http(src: &str) -> bool {
    (src.starts_with("http://") || src.starts_with("https://")) && !is_git(src)
}

/// The description BuildKit gives an ADD's download (the sources and destination).
fn http_dfcmd(cfg: &CopyCfg) -> String {
    let mut parts = cfg.paths.sources.clone();
    parts.push(cfg.paths.dest.clone());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(onbuild: &[&str]) -> ResolvedImage {
        let cfg = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "OnBuild": onbuild},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652"]},
        });
        ResolvedImage {
            pinned: "docker.io/library/b:1@sha256:02a06bd82a3b0c73fa36d8723ebd89e68edb1875f8104d76cfdd311c86722654".into(),
            config: serde_json::to_vec(&cfg).expect("json"),
        }
    }

    fn execs(text: &str, opt: &ConvertOpt) -> Vec<String> {
        let c = convert(text, opt).expect("convert");
        let g = llb::load(&c.definition.to_bytes()).expect("load");
        g.vertices
            .iter()
            .filter_map(|v| match &v.op.op {
                Some(crate::pb::op::Op::Exec(e)) => e.meta.as_ref().map(|m| m.args.join(" ")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn onbuild_triggers_run_first_in_the_stage_that_builds_on_them() {
        let mut opt = ConvertOpt {
            build_platform: Platform::linux_amd64(),
            ..Default::default()
        };
        let key = ("docker.io/library/b:1".to_string(), Platform::linux_amd64());
        opt.images
            .insert(key.clone(), resolved(&["RUN echo from-image"]));
        let runs = execs("FROM b:1\nRUN echo mine\n", &opt);
        assert_eq!(
            runs,
            vec!["/bin/sh -c echo from-image", "/bin/sh -c echo mine"]
        );
        // A stage's ONBUILD runs in the stage built on it, not in itself.
        opt.images.insert(key, resolved(&[]));
        let runs = execs(
            "FROM b:1 AS base\nONBUILD RUN echo trigger\nFROM base\nRUN echo last\n",
            &opt,
        );
        assert_eq!(
            runs,
            vec!["/bin/sh -c echo trigger", "/bin/sh -c echo last"]
        );
        let e = convert("FROM b:1 AS base\nONBUILD BOGUS x\nFROM base\n", &opt)
            .expect_err("bad trigger");
        assert!(e.to_string().contains("unknown instruction: BOGUS"), "{e}");
    }

    #[test]
    fn only_dockerfile_1_syntax_is_accepted() {
        for ok in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7",
            "docker.io/docker/dockerfile:1.4@sha256:abc",
            "docker/dockerfile:1-labs-not",
        ] {
            let r = check_syntax(ok);
            assert_eq!(r.is_ok(), !ok.contains("labs"), "{ok}");
        }
        for bad in [
            "docker/dockerfile:1-labs",
            "example.com/my/frontend:2",
            "docker/dockerfile:2",
        ] {
            assert!(check_syntax(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_clean_and_normalize_like_go() {
        assert_eq!(clean("/a/../b/./c/"), "/b/c");
        assert_eq!(clean("a/.."), ".");
        assert_eq!(normalize_path("/w", "x/", true), "/w/x/");
        assert_eq!(normalize_path("/", "/bin/hadolint", true), "/bin/hadolint");
        assert_eq!(normalize_path("/", "hadolint", false), "/hadolint");
        assert_eq!(normalize_path("/srv", "./", true), "/srv/");
        assert_eq!(normalize_path("/", "/home/app/", false), "/home/app/");
        assert_eq!(normalize_path("/a", "b/.", true), "/a/b/.");
    }
}
