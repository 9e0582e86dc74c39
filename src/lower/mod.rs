//! Lowering: an [`Environment`] (the IR) becomes an LLB graph in envd v1's stage order, plus the
//! [`ImageSpec`] envd would attach as `containerimage.config`.
//!
//! The stages follow envd's `CompileLLB` (see `ENVD_API.md` §5–§6). The walking skeleton emits
//! the sequential shape envd uses for dockerd's embedded BuildKit (no Merge/Diff): base image
//! with envd's environment, apt source, system packages, `/etc/pip.conf`, pip groups, `io.copy`,
//! `run()` groups. Stages whose builtins are not implemented yet are rejected by the frontend;
//! `base(dev=True)` is rejected here.
//!
//! Where envd iterates a Go map (the runtime environment) the order is random in envd; envkit
//! sorts by key so that the same file always gives the same bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use thiserror::Error;

use crate::image::ImageSpec;
use crate::ir::{self, Environment, IrError};
use crate::llb::{
    self, CacheSharing, Chown, Constraints, CopyOptions, FileAction, LlbError, MarshalOptions,
    MkdirOptions, MkfileOptions, Mount, Platform, Run, State,
};

/// Name of the local source that carries the build context (envd's `flag.FlagBuildContext`).
pub const CONTEXT_LOCAL: &str = "build-context";

/// envd's `/home/envd`.
const ENVD_HOME: &str = "/home/envd";
const APT_SOURCE_FILE: &str = "/etc/apt/sources.list";
const PIP_CONF_FILE: &str = "/etc/pip.conf";
const PIP_CACHE_DIR: &str = "/root/.cache/pip";
/// envd's SSH port inside the container, listed in the ports label even for non-dev images.
const SSH_PORT: u16 = 2222;

/// Errors while lowering an environment.
#[derive(Debug, Error)]
pub enum LowerError {
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error("building the LLB graph: {0}")]
    Llb(#[from] LlbError),
    #[error("{0} is not implemented yet in envkit")]
    NotImplemented(&'static str),
}

/// The parts of the base image's config that lowering needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

/// The BuildKit a graph is lowered for: it decides whether parallel branches are joined with
/// MergeOp/DiffOp (envd's default) or chained one after another (envd's `moby-worker`
/// builder, for BuildKits without Merge/Diff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// envkit's own engine. It has no Merge/Diff yet, so it gets the sequential shape.
    #[default]
    Embedded,
    /// A buildkitd: Merge/Diff, like envd with a BuildKit container.
    Buildkitd,
    /// dockerd's embedded BuildKit: no Merge/Diff, like envd's moby-worker.
    Dockerd,
}

impl Target {
    /// Whether parallel branches are joined with MergeOp/DiffOp.
    pub fn merge_op(self) -> bool {
        matches!(self, Target::Buildkitd)
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(Target::Embedded),
            "buildkitd" => Ok(Target::Buildkitd),
            "dockerd" | "moby" => Ok(Target::Dockerd),
            other => Err(format!(
                "unknown target {other:?} (want embedded, buildkitd or dockerd)"
            )),
        }
    }
}

/// What lowering needs to know besides the environment.
#[derive(Debug, Clone)]
pub struct LowerOptions {
    /// Absolute build-context directory (goes into the `build.context` label).
    pub context_dir: PathBuf,
    /// envd's environment name: the basename of the build context.
    pub env_name: String,
    /// uid and gid for chowned files (`config.owner`, else the host user).
    pub owner: (u32, u32),
    /// Target platform of the ops.
    pub platform: Platform,
    /// The BuildKit the graph is for.
    pub target: Target,
}

/// The result: the marshalled graph and the image config decisions.
#[derive(Debug, Clone)]
pub struct Lowered {
    pub definition: llb::Definition,
    pub image: ImageSpec,
}

/// Lowers `env` on top of a base image whose config is `base`.
pub fn lower(
    env: &Environment,
    base: &BaseImage,
    opts: &LowerOptions,
) -> Result<Lowered, LowerError> {
    env.validate()?;
    if env.dev {
        return Err(LowerError::NotImplemented(
            "`base(dev=True)` (the development-environment graph)",
        ));
    }
    if let Some(what) = not_lowered_yet(env) {
        return Err(LowerError::NotImplemented(what));
    }
    let rt = RuntimeEnv::new(env, base);
    let g = Graph { env, opts };

    let base_state = g.base_state(&rt);
    let apt_mirror = g.apt_source(base_state.clone());
    let system_packages = g.system_packages(apt_mirror.clone());
    let state = if opts.target.merge_op() {
        // envd joins the system-package and language branches, both grown from the apt
        // mirror state, as diffs over the base image. (No language is lowered yet, so the
        // language branch is the apt mirror state itself, as in envd without install.*.)
        let lang = apt_mirror;
        llb::merge(
            &[
                base_state.clone(),
                llb::diff(
                    &base_state,
                    &system_packages,
                    named("[internal] install system packages"),
                ),
                llb::diff(&base_state, &lang, named("[internal] prepare language")),
            ],
            named("[internal] language environment and system packages"),
        )
    } else {
        system_packages
    };
    let state = g.pip_index(state);
    let state = g.pip_packages(state);
    let state = g.copies(state);
    let state = g.run_groups(state);

    let definition = state.marshal(&MarshalOptions {
        platform: opts.platform.clone(),
        local_unique_id: local_unique_id(opts),
        worker_constraints: Vec::new(),
    })?;
    let image = image_spec(env, base, &rt, opts);
    Ok(Lowered { definition, image })
}

/// The first thing the environment asks for that lowering cannot build yet (the frontend
/// records all of envd's API; lowering catches up stage by stage).
fn not_lowered_yet(env: &Environment) -> Option<&'static str> {
    let checks: [(bool, &'static str); 13] = [
        (!env.languages.is_empty(), "`install.<language>()`"),
        (env.conda.is_some(), "`install.conda()`"),
        (env.uv.is_some(), "`install.uv()`"),
        (env.pixi.is_some(), "`install.pixi()`"),
        (!env.r_packages.is_empty(), "`install.r_packages()`"),
        (!env.julia_packages.is_empty(), "`install.julia_packages()`"),
        (env.cuda.is_some(), "`install.cuda()`"),
        (!env.code_agents.is_empty(), "`install.codex()`"),
        (env.jupyter.is_some(), "`config.jupyter()`"),
        (!env.http.is_empty(), "`io.http()`"),
        (!env.mounts.is_empty(), "`runtime.mount()`"),
        (
            env.requirements_file.is_some(),
            "`install.python_packages(requirements=...)`",
        ),
        (
            !env.local_wheels.is_empty(),
            "`install.python_packages(local_wheels=...)`",
        ),
    ];
    checks.iter().find(|(hit, _)| *hit).map(|(_, what)| *what)
}

/// `local.unique` for the build context: derived from its path, so one project always gives
/// the same graph (the Go client uses a random id per marshal).
fn local_unique_id(opts: &LowerOptions) -> String {
    let digest = crate::ops::sha256_hex(opts.context_dir.as_os_str().as_encoded_bytes());
    format!("envkit-{}", &digest[..16])
}

/// envd's runtime environment after it has read the base image's config: every base `ENV`
/// over the user's `runtime.environ` (envd reads the base config after the build file ran),
/// and the PATH entries: the default Unix PATH, `extra_path`, then the base image's, deduped.
struct RuntimeEnv {
    environ: BTreeMap<String, String>,
    paths: Vec<String>,
}

impl RuntimeEnv {
    fn new(env: &Environment, base: &BaseImage) -> RuntimeEnv {
        let mut environ = env.environ.clone();
        let mut paths: Vec<String> = ir::DEFAULT_PATH.split(':').map(str::to_string).collect();
        paths.extend(env.extra_path.iter().cloned());
        for entry in &base.env {
            let (k, v) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
            environ.insert(k.to_string(), v.to_string());
            if k == "PATH" {
                for p in v.split(':') {
                    if !paths.iter().any(|x| x == p) {
                        paths.push(p.to_string());
                    }
                }
            }
        }
        RuntimeEnv { environ, paths }
    }

    /// The image config's env: everything but PATH, then PATH, then envd's locale.
    fn image_env(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .environ
            .iter()
            .filter(|(k, _)| k.as_str() != "PATH")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(format!("PATH={}", self.paths.join(":")));
        out.push("LC_ALL=C.UTF-8".to_string());
        out.push("LANG=C.UTF-8".to_string());
        out
    }
}

struct Graph<'a> {
    env: &'a Environment,
    opts: &'a LowerOptions,
}

fn named(name: impl Into<String>) -> Constraints {
    Constraints::new().custom_name(name)
}

impl Graph<'_> {
    /// `/home/envd/<env name>`: the cwd of `run()` groups, even for non-dev images.
    fn working_dir(&self) -> String {
        format!("{ENVD_HOME}/{}", self.opts.env_name)
    }

    /// envd's cache mount id: `<path>/<env name>-cpu`.
    fn cache_id(&self, path: &str) -> String {
        format!("{path}/{}-cpu", self.opts.env_name)
    }

    fn chown(&self) -> Chown {
        Chown::ids(self.opts.owner.0, self.opts.owner.1)
    }

    /// Stage 1: the base image with envd's build environment.
    fn base_state(&self, rt: &RuntimeEnv) -> State {
        let mut s = llb::image(&self.env.image)
            .add_env("DEBIAN_FRONTEND", "noninteractive")
            .add_env("PATH", ir::DEFAULT_PATH)
            .add_env("LANG", "C.UTF-8")
            .add_env("LC_ALL", "C.UTF-8");
        for (k, v) in &rt.environ {
            s = s.add_env(k, v);
        }
        s
    }

    /// Stage 2: `config.apt_source` → /etc/apt/sources.list.
    fn apt_source(&self, root: State) -> State {
        let Some(text) = &self.env.apt_source else {
            return root;
        };
        let name = "[internal] setting apt source";
        root.file(
            FileAction::new().mkdir(
                "/etc/apt",
                0o755,
                MkdirOptions {
                    make_parents: true,
                    ..Default::default()
                },
            ),
            named(name),
        )
        .file(
            FileAction::new().mkfile(
                APT_SOURCE_FILE,
                0o644,
                text.as_bytes(),
                MkfileOptions::default(),
            ),
            named(name),
        )
    }

    /// Stage 4: every `install.apt_packages` name in one apt-get run, with envd's cache mounts.
    fn system_packages(&self, root: State) -> State {
        let pkgs = &self.env.apt_packages;
        if pkgs.is_empty() {
            return root;
        }
        let mut cmd = String::from("apt-get update && apt-get install -y --no-install-recommends");
        for p in pkgs {
            cmd.push(' ');
            cmd.push_str(p);
        }
        let run = Run::shlex(&format!("bash -c \"{cmd}\""))
            .custom_name(format!("apt-get install {}", pkgs.join(" ")))
            .mount(Mount::cache(
                "/var/cache/apt",
                &self.cache_id("/var/cache/apt"),
                CacheSharing::Shared,
            ))
            .mount(Mount::cache(
                "/var/lib/apt",
                &self.cache_id("/var/lib/apt"),
                CacheSharing::Shared,
            ));
        root.run(run).root()
    }

    /// Stage 6.2: `config.pip_index` → /etc/pip.conf, chowned to the owner.
    fn pip_index(&self, root: State) -> State {
        let Some(idx) = &self.env.pip_index else {
            return root;
        };
        let extra = if idx.extra_url.is_empty() {
            String::new()
        } else {
            format!("extra-index-url={}", idx.extra_url)
        };
        let trusted = if idx.trust {
            let hosts: Vec<String> = [idx.url.as_str(), idx.extra_url.as_str()]
                .into_iter()
                .filter_map(url_hostname)
                .collect();
            if hosts.is_empty() {
                String::new()
            } else {
                format!("trusted-host={}", hosts.join(" "))
            }
        } else {
            String::new()
        };
        let content = format!(
            "\n[global]\nindex-url={}\n{extra}\n{trusted}\n\n[install]\nsrc = /tmp\n",
            idx.url
        );
        root.file(
            FileAction::new().mkdir(
                "/etc",
                0o755,
                MkdirOptions {
                    make_parents: true,
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named("[internal] setting PyPI index dir /etc"),
        )
        .file(
            FileAction::new().mkfile(
                PIP_CONF_FILE,
                0o644,
                content.as_bytes(),
                MkfileOptions {
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named(format!(
                "[internal] setting PyPI index file {PIP_CONF_FILE}"
            )),
        )
    }

    /// Stage 6.3: one `python -m pip install` exec per `install.python_packages(name=)` call,
    /// with envd's shared pip cache mount.
    fn pip_packages(&self, root: State) -> State {
        let env = self.env;
        if env.python_packages.is_empty() {
            return root;
        }
        let mut root = root
            .run(
                Run::shlex(&format!("mkdir -p {PIP_CACHE_DIR}"))
                    .custom_name("[internal] create cache dir"),
            )
            .root();
        let cache = llb::scratch().file(
            FileAction::new().mkdir(
                "/cache/pip",
                0o755,
                MkdirOptions {
                    make_parents: true,
                    ..Default::default()
                },
            ),
            named("[internal] setting pip cache mount permissions"),
        );
        for group in &env.python_packages {
            let joined = group.join(" ");
            let run = Run::shlex(&format!("python -m pip install {joined}"))
                .custom_name(format!("[internal] pip install {joined}"))
                .mount(
                    Mount::cache(
                        PIP_CACHE_DIR,
                        &self.cache_id(PIP_CACHE_DIR),
                        CacheSharing::Shared,
                    )
                    .source(&cache)
                    .selector("/cache/pip"),
                );
            root = root.run(run).root();
        }
        root
    }

    /// Stage 8: `io.copy`, in call order, from the build context or an image.
    fn copies(&self, root: State) -> State {
        let mut root = root;
        for c in &self.env.copies {
            let from = match &c.image {
                Some(img) => llb::image(img),
                None => context_local(),
            };
            root = root.file(
                FileAction::new().copy(
                    &from,
                    &c.source,
                    &c.target,
                    CopyOptions {
                        create_dest_path: true,
                        chown: Some(self.chown()),
                        ..Default::default()
                    },
                ),
                Constraints::new(),
            );
        }
        root
    }

    /// Stage 11: each `run()` group is one `bash -c` exec in `/home/envd/<env name>`.
    fn run_groups(&self, root: State) -> State {
        let mut root = root;
        let wd = self.working_dir();
        for group in &self.env.run {
            let mut script = String::from("set -euo pipefail\n");
            for c in &group.commands {
                script.push_str(c);
                script.push('\n');
            }
            // envd wraps the script in single quotes and shell-lexes the result; a quote inside
            // a command therefore splits the script (ENVD_API.md §6.11). Same bytes as envd.
            let mut run = Run::shlex(&format!("bash -c '{script}'"));
            if group.mount_host {
                run = run.mount(Mount::bind(&wd, &context_local()));
            }
            root = root.dir(&wd).run(run).root();
        }
        root
    }
}

/// The build context as envd declares it: `llb.Local("build-context")` without options.
fn context_local() -> State {
    llb::local(CONTEXT_LOCAL, Default::default())
}

/// The host of a URL, like Go's `url.Parse(u).Hostname()` for the cases pip.conf needs.
fn url_hostname(u: &str) -> Option<String> {
    let rest = u.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Go's `encoding/json` bytes for a value: compact, map keys sorted, and `<`, `>`, `&`,
/// U+2028, U+2029 escaped (Go escapes them for HTML safety).
fn go_json(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The image config envd attaches (non-dev): env, entrypoint, user, workdir, labels. envd's
/// config has no `Cmd`, so the base image's is dropped.
fn image_spec(
    env: &Environment,
    base: &BaseImage,
    rt: &RuntimeEnv,
    opts: &LowerOptions,
) -> ImageSpec {
    let entrypoint = if env.entrypoint.is_empty() {
        base.entrypoint.clone().unwrap_or_default()
    } else {
        env.entrypoint.clone()
    };
    let mut labels = BTreeMap::new();
    let mut label = |k: &str, v: String| {
        labels.insert(format!("ai.tensorchord.envd.{k}"), v);
    };
    label("syntax.version", "v1".to_string());
    label("apt.packages", go_json(&json!(env.apt_packages)));
    let pypi: Vec<&String> = env.python_packages.iter().flatten().collect();
    label("pypi.commands", go_json(&json!(pypi)));
    label("r.packages", "[]".to_string());
    label("vendor", "envd".to_string());
    let mut runtime = serde_json::Map::new();
    if !rt.environ.is_empty() {
        runtime.insert("environ".into(), json!(rt.environ));
    }
    runtime.insert("env_paths".into(), json!(rt.paths));
    label("graph.runtime", go_json(&Value::Object(runtime)));
    label(
        "ports",
        go_json(&json!([{"name": "ssh", "port": SSH_PORT}])),
    );
    label("repo", "{}".to_string());
    label("container.name", opts.env_name.clone());
    label(
        "build.context",
        opts.context_dir.to_string_lossy().into_owned(),
    );
    ImageSpec {
        env: rt.image_env(),
        entrypoint: Some(entrypoint),
        cmd: None,
        user: base.user.clone(),
        working_dir: base.working_dir.clone(),
        labels,
        exposed_ports: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Copy, PipIndex, RunGroup};
    use crate::pb;

    fn opts() -> LowerOptions {
        LowerOptions {
            context_dir: PathBuf::from("/work/proj"),
            env_name: "proj".into(),
            owner: (1000, 1000),
            platform: Platform::default(),
            target: Target::Embedded,
        }
    }

    fn python_base() -> BaseImage {
        BaseImage {
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "LANG=C.UTF-8".into(),
            ],
            entrypoint: None,
            cmd: Some(vec!["python3".into()]),
            user: None,
            working_dir: None,
        }
    }

    fn example() -> Environment {
        Environment {
            image: "python:3.11-slim".into(),
            apt_packages: vec!["curl".into(), "git".into()],
            python_packages: vec![vec!["six".into()], vec!["numpy".into(), "rich".into()]],
            copies: vec![Copy {
                source: "hello.py".into(),
                target: "/opt/hello.py".into(),
                image: None,
            }],
            environ: [("GREETING".to_string(), "hi".to_string())].into(),
            extra_path: vec!["/opt/tools".into()],
            run: vec![RunGroup {
                commands: vec!["echo a".into(), "echo b > /x".into()],
                mount_host: false,
            }],
            ..Environment::default()
        }
    }

    /// The ops of the chain that ends in the head, bottom first (inputs of exec/file ops that
    /// are not the root or the base are skipped).
    fn chain(l: &Lowered) -> Vec<pb::Op> {
        let g = llb::load(&l.definition.to_bytes()).unwrap();
        let mut out = Vec::new();
        let mut at = g.head;
        while let Some(i) = at {
            let v = &g.vertices[i];
            out.push(v.op.clone());
            at = match &v.op.op {
                Some(pb::op::Op::Exec(e)) => e
                    .mounts
                    .iter()
                    .find(|m| m.dest == "/")
                    .and_then(|m| usize::try_from(m.input).ok())
                    .map(|k| v.inputs[k]),
                Some(pb::op::Op::File(f)) => f
                    .actions
                    .first()
                    .and_then(|a| usize::try_from(a.input).ok())
                    .map(|k| v.inputs[k]),
                _ => None,
            };
        }
        out.reverse();
        out
    }

    fn args(op: &pb::Op) -> Vec<String> {
        match &op.op {
            Some(pb::op::Op::Exec(e)) => e.meta.as_ref().unwrap().args.clone(),
            _ => panic!("not an exec: {op:?}"),
        }
    }

    #[test]
    fn stages_come_in_envds_order() {
        let l = lower(&example(), &python_base(), &opts()).unwrap();
        let ops = chain(&l);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match &o.op {
                Some(pb::op::Op::Source(_)) => "source",
                Some(pb::op::Op::Exec(_)) => "exec",
                Some(pb::op::Op::File(_)) => "file",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["source", "exec", "exec", "exec", "exec", "file", "exec"]
        );
        let Some(pb::op::Op::Source(src)) = &ops[0].op else {
            unreachable!()
        };
        assert_eq!(
            src.identifier,
            "docker-image://docker.io/library/python:3.11-slim"
        );
        assert_eq!(
            args(&ops[1]),
            [
                "bash",
                "-c",
                "apt-get update && apt-get install -y --no-install-recommends curl git"
            ]
        );
        assert_eq!(args(&ops[2]), ["mkdir", "-p", "/root/.cache/pip"]);
        assert_eq!(args(&ops[3]), ["python", "-m", "pip", "install", "six"]);
        assert_eq!(
            args(&ops[4]),
            ["python", "-m", "pip", "install", "numpy", "rich"]
        );
        assert_eq!(
            args(&ops[6]),
            ["bash", "-c", "set -euo pipefail\necho a\necho b > /x\n"]
        );
        let Some(pb::op::Op::Exec(run)) = &ops[6].op else {
            unreachable!()
        };
        assert_eq!(run.meta.as_ref().unwrap().cwd, "/home/envd/proj");
    }

    #[test]
    fn apt_and_pip_use_envds_cache_mounts() {
        let l = lower(&example(), &python_base(), &opts()).unwrap();
        let ops = chain(&l);
        let cache = |op: &pb::Op| -> Vec<(String, String, i32)> {
            let Some(pb::op::Op::Exec(e)) = &op.op else {
                panic!()
            };
            e.mounts
                .iter()
                .filter_map(|m| {
                    m.cache_opt
                        .as_ref()
                        .map(|c| (m.dest.clone(), c.id.clone(), c.sharing))
                })
                .collect()
        };
        let shared = pb::CacheSharingOpt::Shared as i32;
        assert_eq!(
            cache(&ops[1]),
            [
                (
                    "/var/cache/apt".to_string(),
                    "/var/cache/apt/proj-cpu".to_string(),
                    shared
                ),
                (
                    "/var/lib/apt".to_string(),
                    "/var/lib/apt/proj-cpu".to_string(),
                    shared
                ),
            ]
        );
        assert_eq!(
            cache(&ops[3]),
            [(
                "/root/.cache/pip".to_string(),
                "/root/.cache/pip/proj-cpu".to_string(),
                shared
            )]
        );
    }

    #[test]
    fn build_steps_see_envds_environment_and_the_base_images() {
        let l = lower(&example(), &python_base(), &opts()).unwrap();
        let ops = chain(&l);
        let Some(pb::op::Op::Exec(e)) = &ops[1].op else {
            unreachable!()
        };
        let env = &e.meta.as_ref().unwrap().env;
        for want in [
            "DEBIAN_FRONTEND=noninteractive",
            "LC_ALL=C.UTF-8",
            "LANG=C.UTF-8",
            "GREETING=hi",
            // envd puts the base image's PATH into the build environment as it is.
            "PATH=/usr/local/bin:/usr/bin:/bin",
        ] {
            assert!(env.iter().any(|x| x == want), "{want} not in {env:?}");
        }
    }

    #[test]
    fn image_config_follows_envd() {
        let l = lower(&example(), &python_base(), &opts()).unwrap();
        let img = &l.image;
        assert_eq!(
            img.env,
            [
                "GREETING=hi",
                "LANG=C.UTF-8",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/tools",
                "LC_ALL=C.UTF-8",
                "LANG=C.UTF-8",
            ]
        );
        // envd's config has no Cmd and takes the base's entrypoint (none here).
        assert_eq!(img.entrypoint, Some(vec![]));
        assert_eq!(img.cmd, None);
        let label = |k: &str| img.labels[&format!("ai.tensorchord.envd.{k}")].clone();
        assert_eq!(label("syntax.version"), "v1");
        assert_eq!(label("apt.packages"), r#"["curl","git"]"#);
        assert_eq!(label("pypi.commands"), r#"["six","numpy","rich"]"#);
        assert_eq!(label("ports"), r#"[{"name":"ssh","port":2222}]"#);
        assert_eq!(label("container.name"), "proj");
        assert_eq!(label("build.context"), "/work/proj");
        assert_eq!(
            label("graph.runtime"),
            r#"{"env_paths":["/usr/local/sbin","/usr/local/bin","/usr/sbin","/usr/bin","/sbin","/bin","/opt/tools"],"environ":{"GREETING":"hi","LANG":"C.UTF-8","PATH":"/usr/local/bin:/usr/bin:/bin"}}"#
        );
    }

    #[test]
    fn entrypoint_wins_over_the_base_images() {
        let env = Environment {
            entrypoint: vec!["python3".into(), "-m".into(), "http.server".into()],
            ..example()
        };
        let base = BaseImage {
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            user: Some("app".into()),
            working_dir: Some("/srv".into()),
            ..python_base()
        };
        let img = lower(&env, &base, &opts()).unwrap().image;
        assert_eq!(
            img.entrypoint,
            Some(vec!["python3".into(), "-m".into(), "http.server".into()])
        );
        assert_eq!(img.user.as_deref(), Some("app"));
        assert_eq!(img.working_dir.as_deref(), Some("/srv"));
        let img = lower(&example(), &base, &opts()).unwrap().image;
        assert_eq!(img.entrypoint, Some(vec!["/docker-entrypoint.sh".into()]));
    }

    #[test]
    fn apt_source_and_pip_index_are_written_as_files() {
        let env = Environment {
            apt_source: Some("deb http://mirror/debian bookworm main\n".into()),
            pip_index: Some(PipIndex {
                url: "https://idx.example/simple".into(),
                extra_url: "https://user:pw@extra.example:8443/simple".into(),
                trust: true,
            }),
            ..example()
        };
        let l = lower(&env, &python_base(), &opts()).unwrap();
        let files: Vec<(String, Vec<u8>, Option<pb::ChownOpt>)> = chain(&l)
            .iter()
            .filter_map(|o| match &o.op {
                Some(pb::op::Op::File(f)) => match &f.actions[0].action {
                    Some(pb::file_action::Action::Mkfile(m)) => {
                        Some((m.path.clone(), m.data.clone(), m.owner.clone()))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "/etc/apt/sources.list");
        assert_eq!(files[0].1, b"deb http://mirror/debian bookworm main\n");
        assert_eq!(files[1].0, "/etc/pip.conf");
        assert_eq!(
            String::from_utf8_lossy(&files[1].1),
            "\n[global]\nindex-url=https://idx.example/simple\n\
             extra-index-url=https://user:pw@extra.example:8443/simple\n\
             trusted-host=idx.example extra.example\n\n[install]\nsrc = /tmp\n"
        );
        assert!(files[1].2.is_some(), "pip.conf is chowned to the owner");
    }

    #[test]
    fn buildkitd_joins_the_package_branches_with_merge_and_diff() {
        let o = LowerOptions {
            target: Target::Buildkitd,
            ..opts()
        };
        let l = lower(&example(), &python_base(), &o).unwrap();
        let g = llb::load(&l.definition.to_bytes()).unwrap();
        let merges: Vec<&llb::Vertex> = g
            .vertices
            .iter()
            .filter(|v| matches!(v.op.op, Some(pb::op::Op::Merge(_))))
            .collect();
        assert_eq!(merges.len(), 1);
        assert_eq!(
            merges[0].metadata.description["llb.customname"],
            "[internal] language environment and system packages"
        );
        assert_eq!(merges[0].op.inputs.len(), 3);
        let diffs = g
            .vertices
            .iter()
            .filter(|v| matches!(v.op.op, Some(pb::op::Op::Diff(_))))
            .count();
        assert_eq!(diffs, 2);
        for t in [Target::Embedded, Target::Dockerd] {
            let o = LowerOptions {
                target: t,
                ..opts()
            };
            let l = lower(&example(), &python_base(), &o).unwrap();
            let g = llb::load(&l.definition.to_bytes()).unwrap();
            assert!(g.vertices.iter().all(|v| !matches!(
                v.op.op,
                Some(pb::op::Op::Merge(_)) | Some(pb::op::Op::Diff(_))
            )));
        }
    }

    #[test]
    fn the_same_environment_gives_the_same_bytes() {
        let a = lower(&example(), &python_base(), &opts()).unwrap();
        let b = lower(&example(), &python_base(), &opts()).unwrap();
        assert_eq!(a.definition.to_bytes(), b.definition.to_bytes());
    }

    #[test]
    fn what_lowering_cannot_build_yet_is_an_error() {
        let dev = Environment {
            dev: true,
            ..example()
        };
        let e = lower(&dev, &python_base(), &opts()).unwrap_err();
        assert!(e.to_string().contains("not implemented yet"), "{e}");
        let req = Environment {
            requirements_file: Some("requirements.txt".into()),
            ..example()
        };
        let e = lower(&req, &python_base(), &opts()).unwrap_err();
        assert!(e.to_string().contains("requirements"), "{e}");
    }

    #[test]
    fn go_json_escapes_like_go() {
        assert_eq!(go_json(&json!(["a<b>&c"])), r#"["a\u003cb\u003e\u0026c"]"#);
        assert_eq!(url_hostname("https://[::1]:3128/x").as_deref(), Some("::1"));
        assert_eq!(url_hostname("not a url"), None);
    }
}
