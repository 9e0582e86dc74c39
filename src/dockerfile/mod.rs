//! The Dockerfile frontend: a Dockerfile compiled to the LLB Definition that BuildKit
//! v0.32.2's own Dockerfile frontend (`dockerfile2llb`) makes of it, so that the same bytes run
//! on envkit's engine or on a buildkitd and share its cache keys. `parser.rs`: the text into
//! instructions (directives, continuation lines, flags, argument shapes, here-documents);
//! `shell.rs`: word expansion as BuildKit's shell lexer does it; `instructions.rs`: typed
//! commands and stages; `convert.rs`: stages to LLB.

pub mod convert;
pub mod instructions;
pub mod parser;
pub mod shell;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::image::ImageSpec;
use crate::platform::Platform;
use crate::registry::{Registry, ResolveMode};

/// A Dockerfile's error, with where it is: `Dockerfile:LINE:COL`, the line, a caret.
#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:1: {message}\n  {text}\n  ^")]
    At {
        file: String,
        line: usize,
        text: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
    #[error("resolving {reference}: {source}")]
    Resolve {
        reference: String,
        source: crate::registry::RegistryError,
    },
}

/// What to compile.
#[derive(Debug, Clone)]
pub struct Request {
    /// The build context.
    pub context: PathBuf,
    /// The Dockerfile.
    pub file: PathBuf,
    /// `--target`: the stage to build (default: the last).
    pub target: Option<String>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// The platform that builds (BuildKit's BUILDPLATFORM: this machine's).
    pub platform: Platform,
    /// `--platform`: the platform to build for (TARGETPLATFORM; default: `platform`).
    pub target_platform: Option<Platform>,
    /// One of several platforms of one build (the steps' names say which).
    pub multi_platform: bool,
    /// How `FROM` tags are resolved (`--pull`; BuildKit's `image-resolve-mode`).
    pub resolve: ResolveMode,
}

/// A compiled Dockerfile.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The Definition's bytes.
    pub definition: Vec<u8>,
    /// The result's image config over its base's.
    pub spec: ImageSpec,
    /// The whole image config BuildKit's frontend would give its exporter.
    pub config: Vec<u8>,
    /// The local sources it reads (the context).
    pub locals: BTreeMap<String, PathBuf>,
    pub context_dir: PathBuf,
}

/// Whether `from` (`-f`) names a Dockerfile rather than an envd build file.
pub fn is_dockerfile(from: &str) -> bool {
    let file = from.rsplit('/').next().unwrap_or(from);
    let lower = file.to_ascii_lowercase();
    lower == "dockerfile"
        || lower == "containerfile"
        || lower.ends_with(".dockerfile")
        || lower.ends_with(".containerfile")
        || lower.starts_with("dockerfile.")
}

/// `.dockerignore` (or `<Dockerfile>.dockerignore` beside the Dockerfile) as exclude
/// patterns, as BuildKit reads it: comments and blank lines dropped, each pattern cleaned and
/// made relative, `!` kept.
pub fn dockerignore(context: &Path, dockerfile: &Path) -> Vec<String> {
    let beside = dockerfile.with_file_name(format!(
        "{}.dockerignore",
        dockerfile
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let text = std::fs::read_to_string(&beside)
        .or_else(|_| std::fs::read_to_string(context.join(".dockerignore")))
        .unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (neg, pat) = match line.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        let mut pat = convert::clean_pattern(pat);
        if pat.is_empty() {
            continue;
        }
        if neg {
            pat.insert(0, '!');
        }
        out.push(pat);
    }
    out
}

/// Compiles a Dockerfile: base images are resolved through `registry` (pinned to the digest
/// they resolve to, as BuildKit does).
pub async fn compile(req: &Request, registry: &Registry) -> Result<Compiled, DockerfileError> {
    let context_dir =
        std::fs::canonicalize(&req.context).map_err(|source| DockerfileError::Read {
            path: req.context.clone(),
            source,
        })?;
    let text = std::fs::read_to_string(&req.file).map_err(|source| DockerfileError::Read {
        path: req.file.clone(),
        source,
    })?;
    let file_name = req
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    let mut opt = convert::ConvertOpt {
        target: req.target.clone(),
        build_args: req.build_args.clone(),
        target_platform: req.target_platform.clone(),
        build_platform: req.platform.clone(),
        context_name: "context".into(),
        context_unique: crate::content::sha256_hex(context_dir.as_os_str().as_encoded_bytes())
            [..16]
            .to_string(),
        context_excludes: dockerignore(&context_dir, &req.file),
        ignore_syntax: false,
        images: Default::default(),
        multi_platform: req.multi_platform,
        image_resolve_mode: crate::compile::llb_resolve_mode(req.resolve),
    };
    let at = |line: usize, message: String| DockerfileError::At {
        file: file_name.clone(),
        line,
        text: text
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or_default()
            .to_string(),
        message,
    };
    for _ in 0..16 {
        match convert::convert(&text, &opt) {
            Ok(c) => {
                let mut locals = BTreeMap::new();
                locals.insert(opt.context_name.clone(), context_dir.clone());
                return Ok(Compiled {
                    definition: c.definition.to_bytes(),
                    spec: spec_of(&c.image),
                    config: serde_json::to_vec(&c.image).unwrap_or_default(),
                    locals,
                    context_dir,
                });
            }
            Err(convert::ConvertError::Unresolved(refs)) => {
                let found = futures_util::future::join_all(
                    refs.iter()
                        .map(|(r, p)| registry.resolve_with(r, p, req.resolve)),
                )
                .await;
                for ((r, p), got) in refs.into_iter().zip(found) {
                    let got = got.map_err(|source| DockerfileError::Resolve {
                        reference: r.clone(),
                        source,
                    })?;
                    let digest = got.index_digest.as_ref().unwrap_or(&got.manifest_digest);
                    let pinned = if r.contains('@') {
                        r.clone()
                    } else {
                        format!("{r}@{digest}")
                    };
                    opt.images.insert(
                        (r, p),
                        convert::ResolvedImage {
                            pinned,
                            config: got.config_bytes.clone(),
                        },
                    );
                }
            }
            Err(convert::ConvertError::At { line, message }) => return Err(at(line, message)),
            Err(convert::ConvertError::Other(m)) => return Err(DockerfileError::Other(m)),
        }
    }
    Err(DockerfileError::Other(
        "base images kept changing while they were resolved".into(),
    ))
}

/// The image spec the engine applies over the result's base image: everything the
/// Dockerfile's config says.
fn spec_of(image: &serde_json::Value) -> ImageSpec {
    let c = &image["config"];
    let strs = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
    };
    let mut extra = BTreeMap::new();
    for k in ["Volumes", "Healthcheck", "StopSignal", "Shell", "OnBuild"] {
        if let Some(v) = c.get(k) {
            extra.insert(k.to_string(), v.clone());
        }
    }
    ImageSpec {
        env: strs(&c["Env"]).unwrap_or_default(),
        entrypoint: strs(&c["Entrypoint"]),
        cmd: strs(&c["Cmd"]),
        user: c["User"].as_str().map(str::to_string),
        working_dir: c["WorkingDir"].as_str().map(str::to_string),
        labels: convert::string_map(&c["Labels"]),
        exposed_ports: convert::object_keys(&c["ExposedPorts"]),
        inline_cache: None,
        config_extra: extra,
        platform: platform_of(image),
        history: image["history"].as_array().cloned(),
    }
}

/// The platform of a final image config, where it is not this machine's.
fn platform_of(image: &serde_json::Value) -> Option<String> {
    let s = |k: &str| image[k].as_str().unwrap_or_default();
    if s("os").is_empty() || s("architecture").is_empty() {
        return None;
    }
    ImageSpec::platform_field(&Platform::new(s("os"), s("architecture"), s("variant")))
}
