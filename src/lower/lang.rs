//! Languages, their package managers and packages, and code agents, as envd lowers them
//! (its `python.go`, `conda.go`, `uv.go`, `pixi.go`, `r.go`, `julia.go`, `rust.go`,
//! `golang.go`, `nodejs.go`, `agent.go`).
//!
//! Downloads happen in small helper images (curl-multi, micromamba) whose results are copied
//! into the environment, so they can run in parallel with the rest of the graph.

use std::path::Path;

use super::system::parents;
use super::{Compiler, LowerError, context_local, named};
use crate::ir::{DEFAULT_PYTHON, LanguageName};
use crate::llb::{
    self, CacheSharing, CopyOptions, FileAction, MkdirOptions, MkfileOptions, Mount, RmOptions,
    Run, State,
};

/// envd's helper image for downloads.
const CURL_IMAGE: &str = "ghcr.io/curl/curl-container/curl-multi:8.17.0";
const MICROMAMBA_IMAGE: &str = "ghcr.io/mamba-org/micromamba:2.3.3-debian12-slim";
const CONDA_VERSION: &str = "py311_25.9.1-1";
const CONDA_ROOT: &str = "/opt/conda";
const CONDA_BIN: &str = "/opt/conda/bin";
/// envd's `DefaultCondaPath`: one PATH-list element with colons in it.
const CONDA_PATH: &str = "/opt/conda/envs/envd/bin:/opt/conda/bin:/home/envd/.local/bin";
const CERT_PATH: &str = "/etc/ssl/certs";
const PIP_CACHE_DIR: &str = "/root/.cache/pip";
const PIP_CONF_FILE: &str = "/etc/pip.conf";
const UV_VERSION: &str = "0.9.22";
const PIXI_VERSION: &str = "0.62.2";
const GO_VERSION: &str = "1.25.3";
const NODEJS_VERSION: &str = "25.1.0";
/// The codex release envd falls back to when it cannot ask GitHub; envkit does not ask (no
/// network at compile time), so it is the default for `install.codex()` without a version.
const CODEX_VERSION: &str = "rust-v0.98.0";
const R_LIBRARY: &str = "/usr/local/lib/R/site-library";
const CRAN_MIRROR: &str = "https://cran.rstudio.com";
const JULIA_DEPOT: &str = "/opt/julia/user_packages";

const GET_CONDA_SH: &str = include_str!("payload/get_conda.sh");
const INSTALL_CONDA_SH: &str = include_str!("payload/install_conda.sh");
const JULIA_SH: &str = include_str!("payload/julia.sh");

const MAMBA_RC: &str = "\nchannels:\n    - conda-forge\n";
const MAMBA_ACTIVATE_BASH: &str = "\n#!/bin/sh\neval \"$(/opt/conda/bin/micromamba shell hook --shell=bash)\" || return $?\nmicromamba activate \"$@\"\n";
const MAMBA_ACTIVATE_FISH: &str = "\n#!/usr/bin/fish\n/opt/conda/bin/micromamba shell hook --shell=fish | source\nmicromamba activate $argv\n";
const CONDA_ACTIVATE_FISH: &str = "\n#!/usr/bin/fish\nconda activate $argv\n";
const CONDA_RC: &str = "\ndefault_channels:\n  - https://conda.anaconda.org/conda-forge/\n\nchannels:\n  - conda-forge\n";

fn run(cmd: &str, name: impl Into<String>) -> Run {
    Run::shlex(cmd).custom_name(name)
}

/// A copy without options (`llb.Copy(from, src, dest)`).
fn copy(root: &State, from: &State, src: &str, dest: &str, name: impl Into<String>) -> State {
    root.file(
        FileAction::new().copy(from, src, dest, CopyOptions::default()),
        named(name),
    )
}

fn mkfile(root: &State, path: &str, mode: u32, data: &str, name: &str) -> State {
    root.file(
        FileAction::new().mkfile(path, mode, data.as_bytes(), MkfileOptions::default()),
        named(name),
    )
}

impl Compiler<'_> {
    /// Stage 5: each `install.<lang>()` in call order: chained, or (with Merge) each grown from
    /// `root` and joined with Diff/Merge when there are several.
    pub(super) fn languages(&mut self, root: State) -> Result<State, LowerError> {
        let langs: Vec<(LanguageName, Option<String>)> = self
            .env
            .languages
            .iter()
            .map(|l| (l.name, l.version.clone()))
            .collect();
        if !self.opts.target.merge_op() {
            let mut root = root;
            for (name, version) in &langs {
                root = self.language(root, *name, version.as_deref())?;
            }
            return Ok(root);
        }
        let mut built = Vec::with_capacity(langs.len());
        for (name, version) in &langs {
            built.push(self.language(root.clone(), *name, version.as_deref())?);
        }
        if built.len() <= 1 {
            return Ok(built.pop().unwrap_or(root));
        }
        let mut inputs = vec![root.clone()];
        for ((name, _), lang) in langs.iter().zip(&built) {
            inputs.push(llb::diff(
                &root,
                lang,
                named(format!("[internal] build {} env", name.as_str())),
            ));
        }
        Ok(llb::merge(
            &inputs,
            named("[internal] merge all the language environments"),
        ))
    }

    fn language(
        &mut self,
        root: State,
        name: LanguageName,
        version: Option<&str>,
    ) -> Result<State, LowerError> {
        Ok(match name {
            LanguageName::Python => self.python(root)?,
            LanguageName::R => self.r_lang(root),
            LanguageName::Julia => self.julia(root),
            LanguageName::Rust => self.rust(root, version),
            LanguageName::Go => self.golang(root, version),
            LanguageName::NodeJs => self.nodejs(root, version),
        })
    }

    /// The Python version: the last `install.python()` wins; `""`/`"3"` mean 3.11.
    fn python_version(&self) -> Result<String, LowerError> {
        let mut version = String::new();
        for l in &self.env.languages {
            if l.name == LanguageName::Python {
                match &l.version {
                    None => return Ok(DEFAULT_PYTHON.to_string()),
                    Some(v) => version = v.clone(),
                }
            }
        }
        if version.is_empty() || version == "3" {
            return Ok(DEFAULT_PYTHON.to_string());
        }
        if version.starts_with("3.") {
            return Ok(version);
        }
        Err(LowerError::Ir(crate::ir::IrError::PythonVersion(version)))
    }

    /// `install.python()`: a Python environment at `/opt/conda/envs/envd`, from micromamba, or
    /// from conda/micromamba with `install.conda()`; then python/pip point at it.
    fn python(&mut self, root: State) -> Result<State, LowerError> {
        let root = self.update_env_path(root, CONDA_PATH);
        let version = self.python_version()?;
        let env = if self.env.conda.is_none() {
            let mamba = llb::image(MICROMAMBA_IMAGE);
            let s = root.file(
                FileAction::new().mkdir(CERT_PATH, 0o755, parents()),
                named("[internal] mkdir certs"),
            );
            let s = copy(
                &s,
                &mamba,
                &format!("{CERT_PATH}/ca-certificates.crt"),
                CERT_PATH,
                "[internal] copy cert from mamba",
            );
            let s = copy(
                &s,
                &mamba,
                "/bin/micromamba",
                "/usr/local/bin",
                "[internal] copy micromamba binary",
            );
            s.run(run(
                &format!(
                    "bash -c \"/usr/local/bin/micromamba create -p /opt/conda/envs/envd -c defaults python={version}\""
                ),
                format!("[internal] create envd python={version}"),
            ))
            .root()
            .run(run(
                "rm /usr/local/bin/micromamba",
                "[internal] rm micromamba binary",
            ))
            .root()
        } else {
            let conda = self.install_conda(root);
            let cmd = self.conda_command();
            let s = conda
                .run(run(
                    &format!("bash -c \"{}\"", self.conda_init_shell("bash")),
                    "[internal] initialize conda bash environment",
                ))
                .root();
            let create = format!("bash -c \"{cmd} create -n envd python={version}\"");
            s.run(run(
                &create,
                format!("[internal] create conda environment: {create}"),
            ))
            .root()
        };
        let p = "/opt/conda/envs/envd/bin";
        let alternatives = format!(
            "sh -c \"\n\t\t\tupdate-alternatives --install /usr/bin/python python {p}/python 1 &&\n\t\t\tupdate-alternatives --install /usr/bin/python3 python3 {p}/python3 1 &&\n\t\t\tupdate-alternatives --install /usr/bin/pip pip {p}/pip 1 &&\n\t\t\tupdate-alternatives --install /usr/bin/pip3 pip3 {p}/pip3 1\n\t\t\t\""
        );
        Ok(env
            .run(run(
                &alternatives,
                "[internal] update alternative python/python3/pip/pip3 to envd",
            ))
            .root())
    }

    fn micromamba(&self) -> bool {
        self.env.conda.as_ref().is_some_and(|c| c.use_micromamba)
    }

    fn conda_command(&self) -> String {
        if self.micromamba() {
            format!("{CONDA_BIN}/micromamba")
        } else {
            format!("{CONDA_BIN}/conda")
        }
    }

    pub(super) fn conda_init_shell(&self, shell: &str) -> String {
        if self.micromamba() {
            format!(
                "{} shell init -s {shell} {CONDA_ROOT}",
                self.conda_command()
            )
        } else {
            format!("{} init {shell}", self.conda_command())
        }
    }

    /// Miniconda (downloaded in the curl image) or micromamba into `/opt/conda`.
    fn install_conda(&mut self, root: State) -> State {
        if self.env.dev {
            self.user_dirs.push(CONDA_ROOT.to_string());
        }
        if self.micromamba() {
            return self.install_micromamba(root);
        }
        let builder = llb::image(CURL_IMAGE)
            .add_env("CONDA_VERSION", CONDA_VERSION)
            .run(run(
                &format!("sh -c '{GET_CONDA_SH}'"),
                "[internal] download conda",
            ))
            .root();
        let s = copy(
            &root,
            &builder,
            "/tmp/miniconda.sh",
            "/tmp/miniconda.sh",
            "copy conda from builder",
        );
        let s = s
            .file(
                FileAction::new().mkdir(CONDA_ROOT, 0o755, parents()),
                named("[internal] create conda directory"),
            )
            .run(run(
                &format!("bash -c '{INSTALL_CONDA_SH}'"),
                "[internal] install conda",
            ))
            .root();
        let s = mkfile(
            &s,
            &format!("{CONDA_BIN}/activate.fish"),
            0o755,
            CONDA_ACTIVATE_FISH,
            "[internal] create the conda activate.fish file",
        );
        let s = s.file(
            FileAction::new().rm("/tmp/miniconda.sh", RmOptions::default()),
            named("[internal] rm conda source file"),
        );
        s.file(
            FileAction::new().mkfile(
                &format!("{CONDA_ROOT}/.condarc"),
                0o644,
                CONDA_RC.as_bytes(),
                MkfileOptions {
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named("[internal] create the conda rc file"),
        )
    }

    fn install_micromamba(&mut self, root: State) -> State {
        self.environ
            .insert("MAMBA_ROOT_PREFIX".into(), CONDA_ROOT.into());
        self.environ
            .insert("MAMBA_TARGET_PREFIX".into(), CONDA_ROOT.into());
        let mamba = llb::image(MICROMAMBA_IMAGE);
        let s = root
            .add_env("MAMBA_ROOT_PREFIX", CONDA_ROOT)
            .add_env("MAMBA_TARGET_PREFIX", CONDA_ROOT)
            .file(
                FileAction::new().mkdir(CERT_PATH, 0o755, parents()),
                named("[internal] mkdir certs"),
            );
        let s = copy(
            &s,
            &mamba,
            &format!("{CERT_PATH}/ca-certificates.crt"),
            CERT_PATH,
            "[internal] copy cert from mamba",
        );
        let s = s.file(
            FileAction::new().mkdir(CONDA_BIN, 0o755, parents()),
            named("[internal] create mamba path"),
        );
        let s = copy(
            &s,
            &mamba,
            "/bin/micromamba",
            CONDA_BIN,
            "[internal] copy micromamba binary",
        );
        let s = mkfile(
            &s,
            &format!("{CONDA_ROOT}/.mambarc"),
            0o644,
            MAMBA_RC,
            "[internal] create the mamba rc file",
        );
        let s = mkfile(
            &s,
            &format!("{CONDA_BIN}/activate"),
            0o755,
            MAMBA_ACTIVATE_BASH,
            "[internal] create the mamba activate file",
        );
        let s = mkfile(
            &s,
            &format!("{CONDA_BIN}/activate.fish"),
            0o755,
            MAMBA_ACTIVATE_FISH,
            "[internal] create the mamba activate.fish file",
        );
        s.run(run(
            &format!("update-alternatives --install /usr/bin/conda conda {CONDA_BIN}/micromamba 1"),
            "[internal] update alternative micromamba to conda",
        ))
        .root()
        .run(run(
            &format!("bash -c \"{CONDA_BIN}/micromamba shell init --shell bash\""),
            "[internal] init micromamba for bash",
        ))
        .root()
    }

    /// `install.r_lang()`: CRAN's apt repository and `r-base`. envd's first command nests
    /// double quotes, so it lexes into six words; the same words are sent here.
    fn r_lang(&mut self, root: State) -> State {
        self.user_dirs.push(R_LIBRARY.to_string());
        let key = "sh -c \"\nwget -qO- https://cloud.r-project.org/bin/linux/ubuntu/marutter_pubkey.asc | gpg --dearmor -o /usr/share/keyrings/r-project.gpg &&\necho \"deb [signed-by=/usr/share/keyrings/r-project.gpg] https://cloud.r-project.org/bin/linux/ubuntu jammy-cran40/\" | tee -a /etc/apt/sources.list.d/r-project.list\n\"";
        root.run(run(key, "add R public GPG key"))
            .root()
            .run(run(
                "sh -c \"apt-get update && apt-get install -y --no-install-recommends r-base\"",
                "[internal] apt install R environment from CRAN repository",
            ))
            .root()
    }

    /// `install.julia()`: Julia 1.10 (downloaded and checked in the curl image) in /opt/julia.
    fn julia(&mut self, root: State) -> State {
        let builder = llb::image(CURL_IMAGE)
            .run(run(
                &format!("sh -c '{JULIA_SH}'"),
                "[internal] downloading julia binary",
            ))
            .root();
        let tarball = "/tmp/julia.tar.gz";
        let s = copy(
            &root,
            &builder,
            tarball,
            tarball,
            "[internal] copying julia.tar.gz to /tmp",
        )
        .file(
            FileAction::new().mkdir("/opt/julia", 0o755, parents()),
            named("[internal] creating /opt/julia folder for julia binary"),
        )
        .run(run(
            &format!("bash -c \"tar zxvf {tarball} --strip 1 -C /opt/julia && rm {tarball}\""),
            "[internal] unpack julia archive under /opt/julia",
        ))
        .root();
        self.update_env_path(s, "/opt/julia/bin")
    }

    /// `install.rust()`: rustup (downloaded in the curl image) into `/opt/rust`.
    fn rust(&mut self, root: State, version: Option<&str>) -> State {
        let init = "/tmp/rustup-init.sh";
        let builder = llb::image(CURL_IMAGE)
            .run(run(
                &format!(
                    "sh -c \"curl --proto '=https' --tlsv1.2 -sSf -o {init} https://sh.rustup.rs\""
                ),
                "[internal] download rustup-init.sh",
            ))
            .root();
        let mut s = copy(
            &root,
            &builder,
            init,
            init,
            "[internal] copy the rustup-init.sh",
        );
        if let Some(v) = version {
            s = s.add_env("RUSTUP_VERSION", v);
        }
        let s = s
            .add_env("CARGO_HOME", "/opt/rust")
            .file(
                FileAction::new().mkdir(
                    "/opt/rust",
                    0o755,
                    MkdirOptions {
                        make_parents: true,
                        chown: Some(self.chown()),
                        ..Default::default()
                    },
                ),
                named("[internal] create cargo dir: /opt/rust"),
            )
            .run(run(
                &format!("sh -c \"sh {init} -y -q --no-modify-path && rm {init}\""),
                "[internal] install rust",
            ))
            .root();
        self.paths.push("/opt/rust/bin".to_string());
        s
    }

    /// `install.go()`: Go's release tarball into /usr/local/go.
    fn golang(&mut self, root: State, version: Option<&str>) -> State {
        let v = version.unwrap_or(GO_VERSION);
        let file = "/tmp/golang.linux.tar.gz";
        let builder = llb::image(CURL_IMAGE)
            .run(run(
                &format!(
                    "sh -c \"wget -qO {file} https://go.dev/dl/go{v}.linux-$(uname -m | sed -e 's/x86_64/amd64/' -e 's/aarch64/arm64/').tar.gz\""
                ),
                format!("[internal] download go {v}"),
            ))
            .root();
        let s = copy(
            &root,
            &builder,
            file,
            file,
            format!("[internal] prepare go {v}"),
        )
        .run(run(
            &format!("sh -c \"tar -C /usr/local -xzf {file} && rm {file}\""),
            format!("[internal] install go {v}"),
        ))
        .root();
        self.paths.push("/usr/local/go/bin".to_string());
        s
    }

    /// `install.nodejs()`: Node.js's release tarball into /opt/nodejs.
    fn nodejs(&mut self, root: State, version: Option<&str>) -> State {
        let v = version.unwrap_or(NODEJS_VERSION);
        let tmp = "/tmp/nodejs";
        let builder = llb::image(CURL_IMAGE)
            .run(run(
                &format!(
                    "sh -c \"mkdir {tmp} && wget -qO- https://nodejs.org/download/release/v{v}/node-v{v}-linux-$(uname -m | sed -e 's/x86_64/x64/').tar.xz | tar -xJ --strip-components=1 -C {tmp} || exit 1\""
                ),
                format!("[internal] download nodejs {v}"),
            ))
            .root();
        let s = copy(
            &root,
            &builder,
            tmp,
            "/opt/nodejs",
            format!("[internal] prepare nodejs {v}"),
        );
        self.paths.push("/opt/nodejs/bin".to_string());
        s
    }

    /// Stage 6: language packages, in envd's order: pip.conf, pip groups (with `jupyter`),
    /// requirements, wheels; conda channel and packages; uv; pixi; R and Julia packages.
    pub(super) fn language_packages(&mut self, root: State) -> Result<State, LowerError> {
        let root = self.pip_index(root);
        let mut pack = self.pip_packages(root)?;
        if self.env.conda.is_some() {
            pack = self.conda_channel(pack);
            pack = self.conda_packages(pack);
        }
        pack = self.uv(pack);
        pack = self.pixi(pack);
        for l in &self.env.languages {
            match l.name {
                LanguageName::R => pack = self.r_packages(pack),
                LanguageName::Julia => pack = self.julia_packages(pack),
                _ => {}
            }
        }
        Ok(pack)
    }

    /// `config.pip_index` → /etc/pip.conf, chowned to the owner.
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

    fn pip_cache(&self, cache: &State) -> Mount {
        Mount::cache(
            PIP_CACHE_DIR,
            &self.cache_id(PIP_CACHE_DIR),
            CacheSharing::Shared,
        )
        .source(cache)
        .selector("/cache/pip")
    }

    /// One `python -m pip install` per group (then the requirements file and the wheels),
    /// with envd's shared pip cache mount.
    fn pip_packages(&self, root: State) -> Result<State, LowerError> {
        let env = self.env;
        if self.pypi.is_empty() && env.requirements_file.is_none() && env.local_wheels.is_empty() {
            return Ok(root);
        }
        let mut root = root
            .run(run(
                &format!("mkdir -p {PIP_CACHE_DIR}"),
                "[internal] create cache dir",
            ))
            .root();
        let cache = llb::scratch().file(
            FileAction::new().mkdir("/cache/pip", 0o755, parents()),
            named("[internal] setting pip cache mount permissions"),
        );
        for group in &self.pypi {
            let joined = group.join(" ");
            root = root
                .run(
                    run(
                        &format!("python -m pip install {joined}"),
                        format!("[internal] pip install {joined}"),
                    )
                    .mount(self.pip_cache(&cache)),
                )
                .root();
        }
        let wd = self.working_dir();
        if let Some(file) = &env.requirements_file {
            match inline_requirements(&self.opts.context_dir.join(file)) {
                Some(deps) => {
                    let deps = deps.join(" ");
                    root = root
                        .run(run(
                            &format!("python -m pip install {deps}"),
                            format!("[internal] pip install from {file} with {deps}"),
                        ))
                        .root();
                }
                None => {
                    let base = root.dir(&wd);
                    root = base
                        .run(
                            run(
                                &format!("python -m pip install -r {file}"),
                                format!("[internal] pip install -r {file}"),
                            )
                            .mount(self.pip_cache(&cache))
                            .mount(Mount::bind(&wd, &context_local())),
                        )
                        .root();
                }
            }
        }
        if !env.local_wheels.is_empty() {
            root = root.dir(&wd);
            for wheel in &env.local_wheels {
                root = root
                    .run(
                        run(
                            &format!("python -m pip install {wheel}"),
                            format!("pip install {wheel}"),
                        )
                        .mount(Mount::bind(&wd, &context_local()).readonly())
                        .mount(self.pip_cache(&cache)),
                    )
                    .root();
            }
        }
        Ok(root)
    }

    /// `config.conda_channel` → the env's `.condarc`.
    fn conda_channel(&self, root: State) -> State {
        let Some(text) = self.env.conda.as_ref().and_then(|c| c.channel.as_ref()) else {
            return root;
        };
        root.file(
            FileAction::new().mkfile(
                "/opt/conda/envs/envd/.condarc",
                0o644,
                text.as_bytes(),
                MkfileOptions {
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named("[internal] setting conda channel"),
        )
    }

    /// `install.conda_packages`: one install (or env update from a file) in the working dir
    /// with the build context mounted and a shared `/opt/conda/pkgs` cache.
    fn conda_packages(&self, root: State) -> State {
        let Some(conda) = &self.env.conda else {
            return root;
        };
        if conda.packages.is_empty() && conda.env_file.is_empty() {
            return root;
        }
        let cache = llb::scratch().file(
            FileAction::new().mkdir("/cache-conda", 0o755, parents()),
            named("[internal] setting conda cache mount permissions"),
        );
        let cmd_path = self.conda_command();
        let cmd = if !conda.env_file.is_empty() {
            let args = format!("update -n envd --file {}", conda.env_file);
            if self.micromamba() {
                format!("{cmd_path} {args}")
            } else {
                format!("{cmd_path} env {args}")
            }
        } else {
            let mut c = format!("{cmd_path} install -n envd");
            for ch in &conda.channels {
                c.push_str(&format!(" -c {ch}"));
            }
            for p in &conda.packages {
                c.push_str(&format!(" {p}"));
            }
            c
        };
        let wd = self.working_dir();
        let pkgs_dir = format!("{CONDA_ROOT}/pkgs");
        root.dir(&wd)
            .add_env("MAMBA_ROOT_PREFIX", CONDA_ROOT)
            .run(
                run(
                    &cmd,
                    format!("[internal] {cmd} {}", conda.packages.join(" ")),
                )
                .mount(Mount::bind(&wd, &context_local()))
                .mount(
                    Mount::cache(&pkgs_dir, &self.cache_id(&pkgs_dir), CacheSharing::Shared)
                        .source(&cache)
                        .selector("/cache-conda"),
                ),
            )
            .root()
    }

    /// `install.uv()`: uv and uvx from their release tarball; a uv-managed Python (non-dev).
    fn uv(&mut self, root: State) -> State {
        let Some(uv) = &self.env.uv else {
            return root;
        };
        self.environ.insert("UV_LINK_MODE".into(), "copy".into());
        self.environ
            .insert("UV_PYTHON_PREFERENCE".into(), "only-managed".into());
        let builder = llb::image(CURL_IMAGE)
            .run(run(
                &format!(
                    "sh -c \"wget -qO- https://github.com/astral-sh/uv/releases/download/{UV_VERSION}/uv-$(uname -m)-unknown-linux-gnu.tar.gz | tar -xz --strip-components=1 -C /tmp || exit 1\""
                ),
                format!("[internal] download uv {UV_VERSION}"),
            ))
            .root();
        let s = copy(
            &root,
            &builder,
            "/tmp/uv",
            "/usr/bin/uv",
            "[internal] install uv",
        );
        let s = copy(
            &s,
            &builder,
            "/tmp/uvx",
            "/usr/bin/uvx",
            "[internal] install uvx",
        );
        if self.env.dev {
            return s;
        }
        s.run(run(
            &format!("uv python install {}", uv.python_version),
            format!("[internal] install uv Python={}", uv.python_version),
        ))
        .root()
    }

    /// `install.pixi()`: pixi from its release tarball, and `/etc/pixi/config.toml` for the
    /// mirror and PyPI index.
    fn pixi(&self, root: State) -> State {
        let Some(pixi) = &self.env.pixi else {
            return root;
        };
        let builder = llb::image(CURL_IMAGE)
            .run(run(
                &format!(
                    "sh -c \"wget -qO- https://github.com/prefix-dev/pixi/releases/download/v{PIXI_VERSION}/pixi-$(uname -m)-unknown-linux-musl.tar.gz | tar -xz -C /tmp || exit 1\""
                ),
                format!("[internal] download pixi {PIXI_VERSION}"),
            ))
            .root();
        let s = copy(
            &root,
            &builder,
            "/tmp/pixi",
            "/usr/bin/pixi",
            "[internal] install pixi",
        );
        if !pixi.use_pixi_mirror && pixi.pypi_index.is_none() {
            return s;
        }
        let mut config = String::new();
        if pixi.use_pixi_mirror {
            config.push_str("[mirrors]\n\"https://conda.anaconda.org\" = [\"https://prefix.dev/\"]\n# prefix.dev doesn't mirror conda-forge's label channels\n# pixi uses the longest matching prefix for the mirror\n\"https://conda.anaconda.org/conda-forge/label\" = [\n  \"https://conda.anaconda.org/conda-forge/label\",\n]");
        }
        if let Some(idx) = &pixi.pypi_index {
            config.push_str(&format!("[pypi-config]\nindex-url = \"{idx}\""));
        }
        s.file(
            FileAction::new().mkdir("/etc/pixi", 0o777, parents()),
            named("[internal] create pixi config directory"),
        )
        .file(
            FileAction::new().mkfile(
                "/etc/pixi/config.toml",
                0o755,
                config.as_bytes(),
                MkfileOptions {
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named("[internal] create pixi config file"),
        )
    }

    /// `install.r_packages`: one `install.packages(...)` per group from the CRAN mirror.
    fn r_packages(&self, root: State) -> State {
        let mirror = self.env.cran_mirror.as_deref().unwrap_or(CRAN_MIRROR);
        let mut root = root;
        for group in &self.env.r_packages {
            let cmd = format!(
                "R -e 'options(repos = \"{mirror}\"); install.packages(c(\"{}\"), lib = \"{R_LIBRARY}\")'",
                group.join("\",\"")
            );
            root = root
                .run(run(
                    &cmd,
                    format!("[internal] installing R packages: {}", group.join(" ")),
                ))
                .root();
        }
        root
    }

    /// `install.julia_packages`: one `Pkg.add(...)` per group, into /opt/julia/user_packages.
    fn julia_packages(&mut self, root: State) -> State {
        if self.env.julia_packages.is_empty() {
            return root;
        }
        let root = root.file(
            FileAction::new().mkdir(JULIA_DEPOT, 0o755, parents()),
            named("[internal] creating folder for julia packages"),
        );
        // envd adds /opt/julia/bin to the PATH list a second time here.
        let mut root = self
            .update_env_path(root, "/opt/julia/bin")
            .add_env("JULIA_DEPOT_PATH", JULIA_DEPOT);
        self.environ
            .insert("JULIA_DEPOT_PATH".into(), JULIA_DEPOT.into());
        self.user_dirs.push(JULIA_DEPOT.to_string());
        for group in &self.env.julia_packages {
            let cmd = format!(
                "julia -e 'using Pkg; Pkg.add([\"{}\"])'",
                group.join("\",\"")
            );
            root = root
                .run(run(
                    &cmd,
                    format!("[internal] installing Julia packages: {}", group.join(" ")),
                ))
                .root();
        }
        root
    }

    /// Stage 9: code agents (`install.codex`): the release binary, downloaded in the curl image.
    pub(super) fn agents(&self, root: State) -> State {
        let mut root = root;
        for agent in &self.env.code_agents {
            if agent.name != "codex" {
                continue;
            }
            let v = agent.version.as_deref().unwrap_or(CODEX_VERSION);
            let builder = llb::image(CURL_IMAGE)
                .run(run(
                    &format!(
                        "sh -c \"wget -qO- https://github.com/openai/codex/releases/download/{v}/codex-$(uname -m)-unknown-linux-musl.tar.gz | tar -xz -C /tmp || exit 1\""
                    ),
                    format!("[internal] download codex {v}"),
                ))
                .root()
                .run(run(
                    "sh -c \"mv /tmp/codex-$(uname -m)-unknown-linux-musl /tmp/codex\"",
                    format!("[internal] prepare codex {v}"),
                ))
                .root();
            root = copy(
                &root,
                &builder,
                "/tmp/codex",
                "/usr/bin/codex",
                "[internal] install codex",
            );
        }
        root
    }
}

/// envd's check whether a requirements file can be inlined into one `pip install` (so the
/// step is cached by content and needs no context mount): every line that does not start
/// with `#` must not contain `-e`, `-r`, `-c` or `--find-links` anywhere and must not name an
/// existing file. `None` when it cannot be inlined (or cannot be read).
fn inline_requirements(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut deps = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        if ["-e", "-r", "-c", "--find-links"]
            .iter()
            .any(|f| line.contains(f))
        {
            return None;
        }
        if !line.is_empty() && Path::new(line).is_file() {
            return None;
        }
        deps.push(line.to_string());
    }
    // A final newline does not make an extra (empty) line, as with Go's line scanner.
    if text.ends_with('\n') {
        deps.pop();
    }
    Some(deps)
}

/// The host of a URL, like Go's `url.Parse(u).Hostname()` for the cases pip.conf needs.
pub(super) fn url_hostname(u: &str) -> Option<String> {
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
