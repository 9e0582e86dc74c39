//! The image config envd attaches to a build (`containerimage.config`): env, entrypoint,
//! user, working dir, exposed ports and the `ai.tensorchord.envd.*` labels, with envd's value
//! encodings (Go JSON of its graph structs).

use std::collections::BTreeMap;

use super::Compiler;
use super::gojson::Json;
use crate::image::ImageSpec;

/// envd's SSH port inside the environment (listed in the ports label even for non-dev).
const SSH_PORT: i64 = 2222;
const JUPYTER_PORT: i64 = 8888;
const RSTUDIO_PORT: i64 = 8787;

/// The `ai.tensorchord.envd.build.digest` value envd v1.3.4 writes: its "manifest code hash"
/// is taken before the build file runs, so it is the hash of envd's empty default graph — a
/// constant of that envd release, whatever the file says. envkit writes the same value so
/// envd's tooling treats the image alike. (Computed from envd's structs and defaults; not yet
/// compared with an image built by the envd binary.)
pub(super) const ENVD_BUILD_DIGEST: &str = "7ff64771870b46b74a8971079d9b36c5";

impl Compiler<'_> {
    /// The image config: env = the runtime environment without PATH (by key), then PATH from
    /// the PATH list, then envd's locale; the entrypoint is `config.entrypoint` or the base's;
    /// envd's config has no `Cmd`, so the base image's is dropped.
    pub(super) fn image_spec(&self) -> ImageSpec {
        // envd computes the labels before it adds ENVD_WORKDIR to the environment.
        let labels = self.labels();
        let mut environ = self.environ.clone();
        if self.env.dev {
            environ.insert("ENVD_WORKDIR".into(), self.working_dir());
        }
        let mut image_env: Vec<String> = environ
            .iter()
            .filter(|(k, _)| k.as_str() != "PATH")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        image_env.push(format!("PATH={}", self.paths.join(":")));
        image_env.push("LC_ALL=C.UTF-8".to_string());
        image_env.push("LANG=C.UTF-8".to_string());
        let (entrypoint, exposed_ports) = if self.env.dev {
            let mut ports = vec![format!("{}/tcp", super::dev::SSH_PORT)];
            if self.env.jupyter.is_some() {
                ports.push(format!("{JUPYTER_PORT}/tcp"));
            }
            if self.env.rstudio_server {
                ports.push(format!("{RSTUDIO_PORT}/tcp"));
            }
            for e in &self.env.runtime_expose {
                ports.push(format!("{}/tcp", e.envd_port));
            }
            ports.sort();
            ports.dedup();
            (vec!["horust".to_string()], ports)
        } else {
            (self.entrypoint(), Vec::new())
        };
        ImageSpec {
            env: image_env,
            entrypoint: Some(entrypoint),
            cmd: None,
            user: self.user(),
            working_dir: self.image_working_dir(),
            labels,
            exposed_ports,
            inline_cache: None,
            config_extra: Default::default(),
            platform: ImageSpec::platform_field(&self.opts.platform),
            history: None,
        }
    }

    /// envd's `User`: the dev user, else the base image's.
    fn user(&self) -> Option<String> {
        if self.env.dev {
            self.dev_user.clone()
        } else {
            self.base.user.clone()
        }
    }

    /// envd's `WorkingDir`: `/home/envd/<env>` for dev, else the base image's.
    fn image_working_dir(&self) -> Option<String> {
        if self.env.dev {
            Some(self.working_dir())
        } else {
            self.base.working_dir.clone()
        }
    }

    /// envd's `Entrypoint` field: for non-dev `config.entrypoint`, else the base image's; for
    /// dev what `config.entrypoint` said (nothing: it is refused in dev).
    fn entrypoint(&self) -> Vec<String> {
        if self.env.dev {
            return self.env.entrypoint.clone();
        }
        if self.env.entrypoint.is_empty() {
            self.base.entrypoint.clone().unwrap_or_default()
        } else {
            self.env.entrypoint.clone()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let env = self.env;
        let mut labels = BTreeMap::new();
        let mut label = |k: &str, v: String| {
            labels.insert(format!("ai.tensorchord.envd.{k}"), v);
        };
        label("syntax.version", "v1".to_string());
        label(
            "apt.packages",
            Json::string_list(&env.apt_packages).encode(),
        );
        let pypi: Vec<&String> = self.pypi.iter().flatten().collect();
        label("pypi.commands", Json::string_list(&pypi).encode());
        label("r.packages", Json::string_lists(&env.r_packages).encode());
        if let Some(cuda) = &env.cuda {
            label("gpu", "true".to_string());
            label("gpu.cuda", cuda.clone());
            label("gpu.cudnn", env.cudnn.clone());
        }
        label("vendor", "envd".to_string());
        label("graph.runtime", Json::obj(self.runtime_graph()).encode());
        label("graph.general", self.general_graph().encode());
        label("ports", self.ports().encode());
        label("repo", repo_json(env).encode());
        label("container.name", self.opts.env_name.clone());
        label("build.digest", ENVD_BUILD_DIGEST.to_string());
        label(
            "build.context",
            self.opts.context_dir.to_string_lossy().into_owned(),
        );
        labels
    }

    /// `[{"name":"ssh","port":2222}, jupyter?, rstudio-server?, one per runtime.expose]`.
    fn ports(&self) -> Json {
        let env = self.env;
        let port = |name: &str, p: i64| {
            let mut f = Vec::new();
            if !name.is_empty() {
                f.push(("name".to_string(), Json::str(name)));
            }
            if p != 0 {
                f.push(("port".to_string(), Json::Int(p)));
            }
            Json::Obj(f)
        };
        let mut ports = vec![port("ssh", SSH_PORT)];
        if env.jupyter.is_some() {
            ports.push(port("jupyter", JUPYTER_PORT));
        }
        if env.rstudio_server {
            ports.push(port("rstudio-server", RSTUDIO_PORT));
        }
        for e in &env.runtime_expose {
            ports.push(port(&e.service, i64::from(e.envd_port)));
        }
        Json::Arr(ports)
    }

    /// envd's `RuntimeGraph` fields (each left out when empty).
    fn runtime_graph(&self) -> Vec<(String, Json)> {
        let env = self.env;
        let mut f: Vec<(String, Json)> = Vec::new();
        if !env.runtime_commands.is_empty() {
            f.push(("commands".into(), Json::string_map(&env.runtime_commands)));
        }
        if !env.runtime_daemon.is_empty() {
            f.push(("daemon".into(), Json::string_lists(&env.runtime_daemon)));
        }
        if !env.runtime_init.is_empty() {
            f.push(("init_script".into(), Json::string_lists(&env.runtime_init)));
        }
        if !self.environ.is_empty() {
            f.push(("environ".into(), Json::string_map(&self.environ)));
        }
        if !self.paths.is_empty() {
            f.push(("env_paths".into(), Json::string_list(&self.paths)));
        }
        if !env.runtime_expose.is_empty() {
            let items = env
                .runtime_expose
                .iter()
                .map(|e| {
                    Json::obj([
                        ("EnvdPort", Json::Int(i64::from(e.envd_port))),
                        ("HostPort", Json::Int(i64::from(e.host_port))),
                        ("ServiceName", Json::str(&e.service)),
                        ("ListeningAddr", Json::str(&e.listen_addr)),
                    ])
                })
                .collect();
            f.push(("expose".into(), Json::Arr(items)));
        }
        f
    }

    /// envd's whole graph as its `encoding/json` dump (`ai.tensorchord.envd.graph.general`):
    /// exported fields in envd's declaration order, embedded configs flattened in place.
    fn general_graph(&self) -> Json {
        let env = self.env;
        let opt_list = |l: &[String]| Json::strings((!l.is_empty()).then_some(l));
        let languages = (!env.languages.is_empty()).then(|| {
            Json::Arr(
                env.languages
                    .iter()
                    .map(|l| {
                        Json::obj([
                            ("Name", Json::str(l.name.as_str())),
                            ("Version", Json::opt_str(l.version.as_deref())),
                        ])
                    })
                    .collect(),
            )
        });
        let agents = (!env.code_agents.is_empty()).then(|| {
            Json::Arr(
                env.code_agents
                    .iter()
                    .map(|a| {
                        Json::obj([
                            ("Name", Json::str(&a.name)),
                            ("Version", Json::opt_str(a.version.as_deref())),
                        ])
                    })
                    .collect(),
            )
        });
        let plugins = (!env.vscode_plugins.is_empty()).then(|| {
            Json::Arr(
                env.vscode_plugins
                    .iter()
                    .map(|p| {
                        Json::obj([
                            ("Publisher", Json::str(&p.publisher)),
                            ("Extension", Json::str(&p.extension)),
                            ("Platform", Json::str("")),
                            ("Version", Json::opt_str(p.version.as_deref())),
                        ])
                    })
                    .collect(),
            )
        });
        let exec = Json::Arr(
            env.run
                .iter()
                .map(|r| {
                    Json::obj([
                        ("Commands", Json::string_list(&r.commands)),
                        ("MountHost", Json::Bool(r.mount_host)),
                    ])
                })
                .collect(),
        );
        let copies = (!env.copies.is_empty()).then(|| {
            Json::Arr(
                env.copies
                    .iter()
                    .map(|c| {
                        Json::obj([
                            ("Source", Json::str(&c.source)),
                            ("Destination", Json::str(&c.target)),
                            ("Image", Json::str(c.image.as_deref().unwrap_or(""))),
                        ])
                    })
                    .collect(),
            )
        });
        let mounts = (!env.mounts.is_empty()).then(|| {
            Json::Arr(
                env.mounts
                    .iter()
                    .map(|m| {
                        Json::obj([
                            ("Source", Json::str(&m.host_path)),
                            ("Destination", Json::str(&m.envd_path)),
                        ])
                    })
                    .collect(),
            )
        });
        let http = (!env.http.is_empty()).then(|| {
            Json::Arr(
                env.http
                    .iter()
                    .map(|h| {
                        Json::obj([
                            ("URL", Json::str(&h.url)),
                            ("Checksum", Json::str(h.checksum.as_deref().unwrap_or(""))),
                            ("Filename", Json::str(&h.filename)),
                        ])
                    })
                    .collect(),
            )
        });
        let entrypoint = self.entrypoint();
        let pip = env.pip_index.as_ref();
        let mut f: Vec<(String, Json)> = vec![
            ("Languages".into(), languages.unwrap_or(Json::Null)),
            ("CodeAgents".into(), agents.unwrap_or(Json::Null)),
            ("EnvdSyntaxVersion".into(), Json::str("v1")),
            ("Image".into(), Json::str(&self.image)),
            ("User".into(), Json::str(self.user().unwrap_or_default())),
            ("Shell".into(), Json::str(&env.shell)),
            ("Dev".into(), Json::Bool(env.dev)),
            ("CUDA".into(), Json::opt_str(env.cuda.as_deref())),
            ("CUDNN".into(), Json::str(&env.cudnn)),
            ("NumGPUs".into(), Json::Int(env.num_gpus)),
            ("ShmSize".into(), Json::Int(env.shm_size)),
            (
                "UbuntuAPTSource".into(),
                Json::opt_str(env.apt_source.as_deref()),
            ),
            (
                "CRANMirrorURL".into(),
                Json::opt_str(env.cran_mirror.as_deref()),
            ),
            (
                "JuliaPackageServer".into(),
                Json::opt_str(env.julia_pkg_server.as_deref()),
            ),
            (
                "PyPIIndexURL".into(),
                Json::opt_str(pip.map(|p| p.url.as_str())),
            ),
            (
                "PyPIExtraIndexURL".into(),
                Json::opt_str(pip.map(|p| p.extra_url.as_str()).filter(|u| !u.is_empty())),
            ),
            ("PyPITrust".into(), Json::Bool(pip.is_some_and(|p| p.trust))),
            (
                "PublicKeyPath".into(),
                Json::str(&self.opts.ssh_public_key_path),
            ),
            ("PyPIPackages".into(), Json::string_lists(&self.pypi)),
            (
                "RequirementsFile".into(),
                Json::opt_str(env.requirements_file.as_deref()),
            ),
            ("PythonWheels".into(), opt_list(&env.local_wheels)),
            ("RPackages".into(), Json::string_lists(&env.r_packages)),
            (
                "JuliaPackages".into(),
                Json::string_lists(&env.julia_packages),
            ),
            (
                "SystemPackages".into(),
                Json::string_list(&env.apt_packages),
            ),
            ("VSCodePlugins".into(), plugins.unwrap_or(Json::Null)),
            ("UserDirectories".into(), Json::string_list(&self.user_dirs)),
            ("Exec".into(), exec),
            ("Copy".into(), copies.unwrap_or(Json::Null)),
            ("Mount".into(), mounts.unwrap_or(Json::Null)),
            ("HTTP".into(), http.unwrap_or(Json::Null)),
            ("Entrypoint".into(), opt_list(&entrypoint)),
            ("Repo".into(), repo_json(env)),
        ];
        if let Some(j) = &env.jupyter {
            let token = self.jupyter_token.as_deref().unwrap_or(&j.token);
            f.push(("Token".into(), Json::str(token)));
            f.push(("Port".into(), Json::Int(j.port)));
        }
        if let Some(g) = &env.git_config {
            f.push(("Name".into(), Json::str(&g.name)));
            f.push(("Email".into(), Json::str(&g.email)));
            f.push(("Editor".into(), Json::str(&g.editor)));
        }
        if let Some(c) = &env.conda {
            f.push(("CondaPackages".into(), opt_list(&c.packages)));
            f.push(("AdditionalChannels".into(), opt_list(&c.channels)));
            f.push(("CondaChannel".into(), Json::opt_str(c.channel.as_deref())));
            f.push(("CondaEnvFileName".into(), Json::str(&c.env_file)));
            f.push(("UseMicroMamba".into(), Json::Bool(c.use_micromamba)));
        }
        if let Some(u) = &env.uv {
            f.push(("PythonVersion".into(), Json::str(&u.python_version)));
        }
        if let Some(p) = &env.pixi {
            f.push(("UsePixiMirror".into(), Json::Bool(p.use_pixi_mirror)));
            f.push(("PyPIIndex".into(), Json::opt_str(p.pypi_index.as_deref())));
        }
        f.push(("EnvironmentName".into(), Json::str(&self.opts.env_name)));
        f.push((
            "EnvironmentPath".into(),
            Json::str(self.opts.context_dir.to_string_lossy()),
        ));
        f.push((
            "WorkingDir".into(),
            Json::str(self.image_working_dir().unwrap_or_default()),
        ));
        f.push((
            "DisableMergeOp".into(),
            Json::Bool(!self.opts.target.merge_op()),
        ));
        f.extend(self.runtime_graph());
        let p = &self.opts.platform;
        let mut platform = vec![
            ("architecture".to_string(), Json::str(&p.architecture)),
            ("os".to_string(), Json::str(&p.os)),
        ];
        if !p.variant.is_empty() {
            platform.push(("variant".to_string(), Json::str(&p.variant)));
        }
        f.push(("Platform".into(), Json::Obj(platform)));
        Json::Obj(f)
    }
}

/// `types.RepoInfo` with `omitempty` fields.
fn repo_json(env: &crate::ir::Environment) -> Json {
    let mut f = Vec::new();
    if !env.repo.url.is_empty() {
        f.push(("url".to_string(), Json::str(&env.repo.url)));
    }
    if !env.repo.description.is_empty() {
        f.push(("description".to_string(), Json::str(&env.repo.description)));
    }
    Json::Obj(f)
}
