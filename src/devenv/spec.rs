//! What an environment runs, read from its image: envd writes its whole graph into the
//! image's labels (`ai.tensorchord.envd.graph.general`, and the runtime part again in
//! `ai.tensorchord.envd.graph.runtime`), as `envd run --image` reads it back. So an image
//! built here, by a buildkitd or dockerd, loaded from an archive or pulled, starts the same.
//!
//! [`Spec::plan`] turns a spec and the image's config into what `envkit up` starts: the
//! processes' environment, the binds, the supervised services and the ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{EnvError, Port};

const GENERAL: &str = "ai.tensorchord.envd.graph.general";
const RUNTIME: &str = "ai.tensorchord.envd.graph.runtime";
/// The PATH of a process whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// envd's `runtime.expose` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub envd_port: u16,
    pub service: String,
    pub listen_addr: String,
}

/// `config.jupyter(token, port)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jupyter {
    /// Empty: no token.
    pub token: String,
    /// Where it listens (the host's network; 0: 8888).
    pub port: u16,
}

/// An environment as its image describes it. An image without envd's labels is a plain
/// environment: nothing supervised, the image's own env.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// `config.gpu`/CUDA: how many GPUs the build file asks for.
    pub num_gpus: i64,
    /// `config.shm_size` in MB (0: not set).
    pub shm_size: i64,
    /// A development environment (its jupyter runs).
    pub dev: bool,
    /// `config.jupyter`.
    pub jupyter: Option<Jupyter>,
    /// `runtime.mount`: host path → path inside.
    pub mounts: Vec<(String, String)>,
    pub commands: Vec<(String, String)>,
    pub daemons: Vec<Vec<String>>,
    pub init: Vec<Vec<String>>,
    /// `runtime.environ` over the base image's, and the PATH list.
    pub environ: Vec<(String, String)>,
    pub paths: Vec<String>,
    pub expose: Vec<Expose>,
}

/// What starting an environment from a [`Spec`] takes, besides the image.
#[derive(Debug, Clone)]
pub struct PlanArgs {
    /// The project directory, mounted at `cwd`.
    pub project: PathBuf,
    pub cwd: String,
    /// `-v HOST:CONTAINER`.
    pub volumes: Vec<(PathBuf, String)>,
    /// The user's home, for `~` in `runtime.mount` sources.
    pub home: Option<PathBuf>,
    /// Bind the host directories `runtime.mount` names. Only for an image just built from
    /// the user's own build file: an image from elsewhere (`up --image`) must not choose host
    /// paths that its processes, running as the user, could then read and write.
    pub host_mounts: bool,
}

/// What the environment is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub env: Vec<String>,
    pub shell: String,
    /// `host path → path inside`: the project first.
    pub mounts: Vec<(PathBuf, String)>,
    pub services: Vec<rootless::Service>,
    pub ports: Vec<Port>,
    /// `runtime.mount`s of the labels not bound (`host_mounts` is off): host path → inside.
    pub refused_mounts: Vec<(String, String)>,
}

fn bad(message: impl Into<String>) -> EnvError {
    EnvError::Image(message.into())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn string_lists(v: Option<&Value>) -> Vec<Vec<String>> {
    match v {
        Some(Value::Array(a)) => a.iter().map(|l| strings(Some(l))).collect(),
        _ => Vec::new(),
    }
}

fn string_map(v: Option<&Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = match v {
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        _ => Vec::new(),
    };
    out.sort();
    out
}

impl Spec {
    /// The spec in an image's labels (none: a plain image).
    pub fn from_labels(labels: &HashMap<String, String>) -> Result<Spec, EnvError> {
        let parse = |key: &str| -> Result<Option<serde_json::Map<String, Value>>, EnvError> {
            match labels.get(key) {
                None => Ok(None),
                Some(text) => match serde_json::from_str(text) {
                    Ok(Value::Object(m)) => Ok(Some(m)),
                    Ok(_) => Err(bad(format!("the label {key} is not a JSON object"))),
                    Err(e) => Err(bad(format!("the label {key}: {e}"))),
                },
            }
        };
        // The general graph holds everything; an image with only the runtime label (an
        // older envd) still gets its services and environment.
        let Some(g) = parse(GENERAL)?.or(parse(RUNTIME)?) else {
            return Ok(Spec::default());
        };
        let int = |k: &str| g.get(k).and_then(Value::as_i64).unwrap_or(0);
        let jupyter = g.get("Token").map(|t| Jupyter {
            token: match t.as_str() {
                // envd's graph writes an empty token as '' (for its shell).
                Some("''") | None => String::new(),
                Some(t) => t.to_string(),
            },
            port: u16::try_from(int("Port")).unwrap_or(0),
        });
        let mounts = match g.get("Mount") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|m| {
                    Some((
                        m.get("Source")?.as_str()?.to_string(),
                        m.get("Destination")?.as_str()?.to_string(),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut expose = Vec::new();
        if let Some(Value::Array(a)) = g.get("expose") {
            for e in a {
                let port = e.get("EnvdPort").and_then(Value::as_u64).unwrap_or(0);
                let envd_port = u16::try_from(port)
                    .map_err(|_| bad(format!("exposed port {port} is out of range")))?;
                let text = |k: &str| {
                    e.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                expose.push(Expose {
                    envd_port,
                    service: text("ServiceName"),
                    listen_addr: text("ListeningAddr"),
                });
            }
        }
        Ok(Spec {
            num_gpus: int("NumGPUs"),
            shm_size: int("ShmSize"),
            dev: g.get("Dev").and_then(Value::as_bool).unwrap_or(false),
            jupyter,
            mounts,
            commands: string_map(g.get("commands")),
            daemons: string_lists(g.get("daemon")),
            init: string_lists(g.get("init_script")),
            environ: string_map(g.get("environ")),
            paths: strings(g.get("env_paths")),
            expose,
        })
    }

    /// The environment, mounts, services and ports of an environment of this spec, on an
    /// image whose config has `image_env` and `image_user`; GPUs as `gpus` says.
    pub fn plan(
        &self,
        image_env: &[String],
        image_user: &str,
        args: &PlanArgs,
        gpus: bool,
    ) -> Plan {
        // The image's environment, runtime.environ over it, the PATH list's missing entries.
        let mut env: Vec<String> = image_env.to_vec();
        for (k, v) in &self.environ {
            if k == "PATH" {
                continue;
            }
            env.retain(|kv| kv.split_once('=').map(|(a, _)| a) != Some(k.as_str()));
            env.push(format!("{k}={v}"));
        }
        let path = env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH=").map(str::to_string))
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        let mut entries: Vec<&str> = path.split(':').collect();
        for p in &self.paths {
            if !entries.contains(&p.as_str()) {
                entries.push(p);
            }
        }
        let path = entries.join(":");
        env.retain(|kv| !kv.starts_with("PATH="));
        env.push(format!("PATH={path}"));
        if image_user == "envd" && !env.iter().any(|kv| kv.starts_with("HOME=")) {
            env.push("HOME=/home/envd".into());
        }
        let shell = env
            .iter()
            .find_map(|kv| kv.strip_prefix("SHELL=").map(str::to_string))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "bash".into());

        // Mounts: the project, runtime.mount (when the user's own file asked), -v.
        let mut mounts = vec![(args.project.clone(), args.cwd.clone())];
        let mut refused_mounts = Vec::new();
        for (host, inside) in &self.mounts {
            if !args.host_mounts {
                refused_mounts.push((host.clone(), inside.clone()));
                continue;
            }
            mounts.push((
                expand_host(host, args.home.as_deref()),
                expand_target(inside),
            ));
        }
        mounts.extend(args.volumes.iter().cloned());

        let mut ports: Vec<Port> = self
            .expose
            .iter()
            .map(|e| Port {
                service: if e.service.is_empty() {
                    format!("port-{}", e.envd_port)
                } else {
                    e.service.clone()
                },
                port: e.envd_port,
                listen: e.listen_addr.clone(),
            })
            .collect();
        // runtime.init groups run once, in order, before the daemons (each group one shell).
        let mut services: Vec<rootless::Service> = self
            .init
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(i, g)| rootless::Service {
                name: format!("init-{i}"),
                args: vec!["sh".into(), "-c".into(), g.join("\n")],
                once: true,
            })
            .collect();
        if gpus {
            // The driver's libraries were bound in: tell the dynamic linker (what the NVIDIA
            // container toolkit does with its ldconfig hook).
            services.insert(
                0,
                rootless::Service {
                    name: "gpu-ldconfig".into(),
                    args: vec!["sh".into(), "-c".into(), "ldconfig || true".into()],
                    once: true,
                },
            );
        }
        services.extend(
            self.daemons
                .iter()
                .enumerate()
                .map(|(i, args)| rootless::Service {
                    name: format!("daemon-{i}"),
                    args: args.clone(),
                    once: false,
                }),
        );
        if let Some(j) = &self.jupyter {
            let port = if self.dev && j.port > 0 { j.port } else { 8888 };
            ports.push(Port {
                service: "jupyter".into(),
                port,
                listen: "127.0.0.1".into(),
            });
            if self.dev {
                let port = port.to_string();
                // What envd's horust service runs; as namespace root it needs --allow-root,
                // and it listens on the loopback only (host network).
                services.push(rootless::Service {
                    name: "jupyter".into(),
                    args: [
                        "python3",
                        "-m",
                        "notebook",
                        "--allow-root",
                        "--ip",
                        "127.0.0.1",
                        "--notebook-dir",
                        &args.cwd,
                        "--NotebookApp.token",
                        &j.token,
                        "--port",
                        &port,
                    ]
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                    once: false,
                });
            }
        }
        Plan {
            env,
            shell,
            mounts,
            services,
            ports,
            refused_mounts,
        }
    }
}

/// `~` at the start of a host path is the user's home.
fn expand_host(p: &str, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix('~'), home) {
        (Some(rest), Some(home)) => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(p),
    }
}

/// `~` at the start of a path inside is the dev user's home.
fn expand_target(p: &str) -> String {
    match p.strip_prefix('~') {
        Some(rest) => format!("/home/envd{rest}"),
        None => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(general: &str) -> HashMap<String, String> {
        HashMap::from([(GENERAL.to_string(), general.to_string())])
    }

    fn args() -> PlanArgs {
        PlanArgs {
            project: "/work/proj".into(),
            cwd: "/home/envd/proj".into(),
            volumes: vec![("/data".into(), "/data".into())],
            home: Some("/home/me".into()),
            host_mounts: true,
        }
    }

    #[test]
    fn a_plain_image_is_a_plain_environment() {
        let spec = Spec::from_labels(&HashMap::new()).unwrap();
        assert_eq!(spec, Spec::default());
        let plan = spec.plan(&["PATH=/bin".into(), "A=1".into()], "", &args(), false);
        assert_eq!(plan.env, ["A=1", "PATH=/bin"]);
        assert_eq!(plan.shell, "bash");
        assert!(plan.services.is_empty() && plan.ports.is_empty());
        assert_eq!(plan.mounts.len(), 2);
    }

    #[test]
    fn envds_graph_gives_services_ports_mounts_and_environment() {
        let general = r#"{"Dev":true,"NumGPUs":0,"ShmSize":512,"Token":"''","Port":0,
            "Mount":[{"Source":"~/.cache","Destination":"~/.cache"}],
            "commands":{"train":"python train.py"},"daemon":[["redis-server","--port","6380"]],
            "init_script":[["echo a","echo b"]],"environ":{"FOO":"bar","PATH":"x"},
            "env_paths":["/usr/bin","/opt/tools/bin"],
            "expose":[{"EnvdPort":6380,"HostPort":0,"ServiceName":"","ListeningAddr":"127.0.0.1"}]}"#;
        let spec = Spec::from_labels(&labels(general)).unwrap();
        assert_eq!(spec.shm_size, 512);
        assert_eq!(
            spec.jupyter,
            Some(Jupyter {
                token: String::new(),
                port: 0
            })
        );
        let plan = spec.plan(
            &["PATH=/usr/bin".into(), "FOO=old".into(), "SHELL=zsh".into()],
            "envd",
            &args(),
            false,
        );
        assert_eq!(
            plan.env,
            [
                "SHELL=zsh",
                "FOO=bar",
                "PATH=/usr/bin:/opt/tools/bin",
                "HOME=/home/envd"
            ]
        );
        assert_eq!(plan.shell, "zsh");
        assert_eq!(
            plan.mounts,
            [
                (PathBuf::from("/work/proj"), "/home/envd/proj".to_string()),
                (
                    PathBuf::from("/home/me/.cache"),
                    "/home/envd/.cache".to_string()
                ),
                (PathBuf::from("/data"), "/data".to_string()),
            ]
        );
        let names: Vec<_> = plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["init-0", "daemon-0", "jupyter"]);
        assert_eq!(plan.services[0].args[2], "echo a\necho b");
        let jupyter = &plan.services[2].args;
        let token = jupyter.iter().position(|a| a == "--NotebookApp.token");
        assert_eq!(jupyter[token.unwrap() + 1], "");
        let ports: Vec<_> = plan
            .ports
            .iter()
            .map(|p| (p.service.as_str(), p.port))
            .collect();
        assert_eq!(ports, [("port-6380", 6380), ("jupyter", 8888)]);
        assert_eq!(spec.commands, [("train".into(), "python train.py".into())]);
    }

    #[test]
    fn an_image_from_elsewhere_does_not_choose_host_mounts() {
        let hostile = r#"{"Mount":[{"Source":"~/.ssh","Destination":"/loot"},
            {"Source":"/etc","Destination":"/host-etc"}]}"#;
        let spec = Spec::from_labels(&labels(hostile)).unwrap();
        let plan = spec.plan(
            &[],
            "",
            &PlanArgs {
                host_mounts: false,
                ..args()
            },
            false,
        );
        // Only the project and the user's own -v.
        assert_eq!(
            plan.mounts,
            [
                (PathBuf::from("/work/proj"), "/home/envd/proj".to_string()),
                (PathBuf::from("/data"), "/data".to_string()),
            ]
        );
        assert_eq!(
            plan.refused_mounts,
            [
                ("~/.ssh".to_string(), "/loot".to_string()),
                ("/etc".to_string(), "/host-etc".to_string()),
            ]
        );
        // The user's own build file may.
        let own = spec.plan(&[], "", &args(), false);
        assert!(
            own.mounts
                .iter()
                .any(|(h, _)| h == Path::new("/home/me/.ssh"))
        );
        assert!(own.refused_mounts.is_empty());
    }

    #[test]
    fn gpus_add_the_ldconfig_service_first() {
        let spec = Spec {
            daemons: vec![vec!["sleep".into(), "1d".into()]],
            ..Spec::default()
        };
        let plan = spec.plan(&[], "", &args(), true);
        assert_eq!(plan.services[0].name, "gpu-ldconfig");
        assert!(plan.env.contains(&format!("PATH={DEFAULT_PATH}")));
    }

    #[test]
    fn broken_labels_are_errors_that_name_the_label() {
        let err = Spec::from_labels(&labels("{not json")).unwrap_err();
        assert!(err.to_string().contains(GENERAL), "{err}");
        let err = Spec::from_labels(&labels("[1]")).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        let err = Spec::from_labels(&labels(r#"{"expose":[{"EnvdPort":70000}]}"#)).unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
    }
}
