//! Development environments (`envkit up`, `exec`, `envs`, `destroy`, `run`): what envkit
//! remembers of each running environment, and whether it still runs.
//!
//! An environment is the init process the rootless helper started (its own PID, mount and
//! UTS namespaces in a user namespace; the host's network), a writable layer over the image's
//! snapshots, and a state directory:
//!
//! * `$XDG_RUNTIME_DIR/envkit/envs/<name>/` (else `<store>/run/envs/<name>/`): `state.json`
//!   and `logs/` (`init.log`, one `<service>.log` per daemon);
//! * `<store>/envs/<name>/{upper,work}`: the environment's own writes (files of subordinate
//!   ids: removed through the helper).
//!
//! An environment "runs" while its init's pid exists with the start time recorded; anything
//! else is stale, shown as such, and can be destroyed.

pub mod lifecycle;
pub mod spec;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnvError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an environment's state: {message}")]
    State { path: PathBuf, message: String },
    #[error("the image's environment description: {0}")]
    Image(String),
    #[error(
        "GPUs were asked for (config.gpu or --gpus) but this host has no NVIDIA GPU \
         (no /dev/nvidia0); use --no-gpu to start without"
    )]
    NoGpu,
    #[error("the helper could not start the environment {name}: {message}")]
    Start { name: String, message: String },
    #[error("the environment {name} (pid {pid}) does not stop")]
    DoesNotStop { name: String, pid: u32 },
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
    #[error("invalid environment name {0:?}: use letters, digits, `_`, `.` and `-` (at most 30)")]
    Name(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnvError + '_ {
    move |source| EnvError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A port a service of the environment listens on (host networking: the same number on the
/// host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub service: String,
    pub port: u16,
    pub listen: String,
}

/// What `envkit up` recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvState {
    pub name: String,
    pub image: String,
    pub manifest_digest: String,
    /// The init on the host, and its start time (clock ticks since boot, /proc/PID/stat).
    pub pid: u32,
    pub pid_start: u64,
    pub project: PathBuf,
    /// `host path → path inside`.
    pub mounts: Vec<(PathBuf, String)>,
    pub ports: Vec<Port>,
    pub services: Vec<(String, Vec<String>)>,
    /// What `exec` runs commands with.
    pub env: Vec<String>,
    pub user: String,
    pub cwd: String,
    pub shell: String,
    /// `runtime.command` names and their shell commands.
    #[serde(default)]
    pub commands: Vec<(String, String)>,
    pub created: u64,
    /// The snapshots under the writable layer (kept by `prune` while the env exists).
    pub lowers: Vec<PathBuf>,
    pub layer_dir: PathBuf,
    pub gpus: bool,
    /// Started with `--allow security.insecure`: unconfined (every capability of its user
    /// namespace, no seccomp filter, an unmasked /proc).
    #[serde(default)]
    pub insecure: bool,
    /// Started with `[worker] no-new-privileges`.
    #[serde(default)]
    pub no_new_privs: bool,
}

/// Running, or what is left of one that is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Stale,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Stale => "stale (its processes are gone)",
        })
    }
}

/// Where environments' state lives.
pub fn state_root(store: &Path) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() && Path::new(&d).is_dir() => {
            PathBuf::from(d).join("envkit").join("envs")
        }
        _ => store.join("run").join("envs"),
    }
}

/// envd's rule: keep `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 30 characters.
pub fn normalize_name(raw: &str) -> Result<String, EnvError> {
    let mut out: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect();
    while out.starts_with(['_', '.', '-']) {
        out.remove(0);
    }
    out.truncate(30);
    if out.is_empty() {
        return Err(EnvError::Name(raw.to_string()));
    }
    Ok(out)
}

/// A name given on the command line must already be valid.
pub fn check_name(name: &str) -> Result<(), EnvError> {
    match normalize_name(name) {
        Ok(n) if n == name => Ok(()),
        _ => Err(EnvError::Name(name.to_string())),
    }
}

/// The start time of a live process (field 22 of /proc/PID/stat); None if it does not
/// exist or is a zombie (dead, not yet reaped by whoever adopted it).
pub fn start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl EnvState {
    pub fn dir(root: &Path, name: &str) -> PathBuf {
        root.join(name)
    }

    pub fn log_dir(root: &Path, name: &str) -> PathBuf {
        root.join(name).join("logs")
    }

    pub fn status(&self) -> Status {
        if self.pid != 0 && start_time(self.pid) == Some(self.pid_start) {
            Status::Running
        } else {
            Status::Stale
        }
    }

    pub fn load(root: &Path, name: &str) -> Result<Option<EnvState>, EnvError> {
        let p = Self::dir(root, name).join("state.json");
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&p)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EnvError::State {
                path: p,
                message: e.to_string(),
            })
    }

    /// Written atomically; the snapshots the environment stands on are also pinned in the
    /// store (`<layer dir>/pins.json`), where every prune finds them whatever
    /// `$XDG_RUNTIME_DIR` it runs with.
    pub fn save(&self, root: &Path) -> Result<(), EnvError> {
        if self.layer_dir.is_dir() {
            let pins = self.layer_dir.join(PINS);
            let bytes = serde_json::to_vec(&self.lowers).map_err(|e| EnvError::State {
                path: pins.clone(),
                message: e.to_string(),
            })?;
            crate::fsutil::write_atomic(&pins, &bytes, true).map_err(io_err(&pins))?;
        }
        let dir = Self::dir(root, &self.name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let p = dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| EnvError::State {
            path: p.clone(),
            message: e.to_string(),
        })?;
        crate::fsutil::write_atomic(&p, &bytes, true).map_err(io_err(&p))
    }

    /// Every environment with a readable state, by name.
    pub fn list(root: &Path) -> Vec<Result<EnvState, EnvError>> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("state.json").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| Self::load(root, &n).transpose())
            .collect()
    }
}

/// The file in an environment's layer dir that pins its snapshots.
const PINS: &str = "pins.json";

/// Snapshots that environments stand on, for `prune` to keep: the pins in the store (every
/// environment, whoever's runtime dir holds its state) and the states this process sees.
pub fn lowers_in_use(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(store.join("envs")) {
        for e in rd.flatten() {
            let Ok(bytes) = std::fs::read(e.path().join(PINS)) else {
                continue;
            };
            if let Ok(v) = serde_json::from_slice::<Vec<PathBuf>>(&bytes) {
                out.extend(v);
            }
        }
    }
    for s in EnvState::list(&state_root(store)).into_iter().flatten() {
        out.extend(s.lowers);
    }
    out
}

/// NVIDIA devices and driver files to bind into an environment, the way the NVIDIA container
/// toolkit does without CDI: `/dev/nvidia*` and the driver's libraries and tools as found on
/// the host. None when the host has no NVIDIA GPU.
pub fn nvidia_binds() -> Option<Vec<PathBuf>> {
    let dev = Path::new("/dev");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dev)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nvidia"))
        })
        .collect();
    if !out.iter().any(|p| p.ends_with("nvidia0")) {
        return None;
    }
    if dev.join("nvidia-caps").is_dir() {
        out.push(dev.join("nvidia-caps"));
    }
    let lib_prefixes = [
        "libnvidia-",
        "libcuda.so",
        "libcudadebugger",
        "libnvcuvid",
        "libnvoptix",
        "libGLX_nvidia",
        "libEGL_nvidia",
        "libGLESv2_nvidia",
        "libGLESv1_CM_nvidia",
    ];
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if lib_prefixes.iter().any(|p| name.starts_with(p)) {
                out.push(e.path());
            }
        }
    }
    for bin in [
        "nvidia-smi",
        "nvidia-debugdump",
        "nvidia-persistenced",
        "nvidia-cuda-mps-control",
        "nvidia-cuda-mps-server",
    ] {
        for dir in ["/usr/bin", "/usr/local/bin"] {
            let p = Path::new(dir).join(bin);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_envd() {
        assert_eq!(normalize_name("my project!").unwrap(), "myproject");
        assert_eq!(normalize_name("-x.y_z").unwrap(), "x.y_z");
        assert_eq!(normalize_name(&"a".repeat(40)).unwrap().len(), 30);
        assert!(normalize_name("!!!").is_err());
        assert!(check_name("ok-1").is_ok());
        assert!(check_name("../x").is_err());
    }

    #[test]
    fn start_times_of_this_process() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn state_round_trips_and_lists() {
        let d = tempfile::tempdir().unwrap();
        let s = EnvState {
            name: "demo".into(),
            image: "docker.io/library/demo:dev".into(),
            manifest_digest: "sha256:00".into(),
            pid: std::process::id(),
            pid_start: start_time(std::process::id()).unwrap(),
            project: "/p".into(),
            mounts: vec![("/p".into(), "/home/envd/p".into())],
            ports: vec![],
            services: vec![],
            env: vec!["A=b".into()],
            user: "0".into(),
            cwd: "/home/envd/p".into(),
            shell: "bash".into(),
            commands: vec![],
            created: 1,
            lowers: vec![],
            layer_dir: "/l".into(),
            gpus: false,
            insecure: false,
            no_new_privs: false,
        };
        s.save(d.path()).unwrap();
        assert_eq!(EnvState::load(d.path(), "demo").unwrap().as_ref(), Some(&s));
        assert_eq!(s.status(), Status::Running);
        let gone = EnvState {
            pid_start: 1,
            ..s.clone()
        };
        assert_eq!(gone.status(), Status::Stale);
        assert_eq!(EnvState::list(d.path()).len(), 1);
        assert!(EnvState::load(d.path(), "nope").unwrap().is_none());
    }
}
