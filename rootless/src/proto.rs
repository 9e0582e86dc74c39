//! Requests and responses exchanged with the helper (JSON over pipes).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Compression of one layer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    Gzip,
    None,
}

/// One layer blob on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFile {
    pub path: PathBuf,
    pub compression: Compression,
}

/// Kind of an extra mount of an exec step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// Bind mount of a host path (recursive).
    Bind { readonly: bool },
    /// A fresh tmpfs; `size` in bytes (None: kernel default).
    Tmpfs { size: Option<u64> },
    /// A read-only file whose contents live only in memory (a tmpfs the helper mounts),
    /// owned by `uid`:`gid` of the container with `mode`: how secrets reach a step without
    /// touching the disk or a layer.
    MemFile {
        data: SecretBytes,
        uid: u32,
        gid: u32,
        mode: u32,
    },
    /// A unix socket (`source`, a path the helper can reach) bound at the target and given
    /// `uid`:`gid` of the container and `mode` first: how an ssh agent reaches a step.
    Socket { uid: u32, gid: u32, mode: u32 },
    /// An overlay view of snapshot dirs (`lowers`, top first; `source` is ignored), optionally
    /// only its `selector` subdirectory. Writable views get a scratch upper dir whose changes
    /// are thrown away after the step (an input mounted read-write whose output nobody keeps).
    Layers {
        lowers: Vec<PathBuf>,
        selector: String,
        writable: bool,
        /// For a writable view whose changes are an output of the step: its upper and work
        /// dirs (kept), instead of scratch ones thrown away.
        #[serde(default)]
        keep: Option<(PathBuf, PathBuf)>,
    },
}

/// Bytes that must not show up in logs: `Debug` prints only their length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// An extra mount of an exec step. `target` is a path in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub kind: MountKind,
}

/// A static user-mode emulator (QEMU's) on the host, and QEMU's name of the architecture it
/// runs (`aarch64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulator {
    pub path: PathBuf,
    pub arch: String,
    /// Try a binfmt_misc handler of the step's user namespace first (false: only put the
    /// emulator before the step's program).
    #[serde(default)]
    pub binfmt: bool,
}

/// One container step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Lower dirs, top first. May be empty.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub args: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    /// Working directory in the container (created if missing; it persists).
    pub cwd: String,
    /// `""`, `name`, `uid`, `uid:gid`, `name:group`.
    pub user: String,
    pub mounts: Vec<Mount>,
    pub hostname: String,
    /// A host CA bundle bound read-only at [`CA_BUNDLE_PATH`].
    pub ca_bundle: Option<PathBuf>,
    pub readonly_rootfs: bool,
    /// Run in a network namespace of its own with only loopback (LLB's network mode none).
    #[serde(default)]
    pub network_none: bool,
    /// Run in a network namespace of its own connected to the outside by slirp4netns (LLB's
    /// default network mode, BuildKit's `sandbox`); see [`crate::slirp`].
    #[serde(default)]
    pub sandbox_net: bool,
    /// `security.insecure`: every capability of the user namespace, no seccomp filter and an
    /// unmasked /proc (see [`crate::confine`]).
    #[serde(default)]
    pub insecure: bool,
    /// Set `no_new_privs` before exec (`[worker] no-new-privileges`): setuid files no longer
    /// raise privileges.
    #[serde(default)]
    pub no_new_privs: bool,
    /// Resource limits of the step's process: (name as in `ulimit`/BuildKit, e.g. `nofile`,
    /// soft, hard).
    #[serde(default)]
    pub rlimits: Vec<(String, u64, u64)>,
    /// A user-mode emulator for a step of another architecture: registered with a
    /// binfmt_misc instance of the step's user namespace where the kernel allows that, else
    /// bound read-only at [`EMULATOR_PATH`] and put before the step's program in its argv (as
    /// BuildKit does without binfmt: then only that first program is emulated).
    #[serde(default)]
    pub emulator: Option<Box<Emulator>>,
}

/// Where the CA bundle of [`ExecRequest::ca_bundle`] appears inside the container.
pub const CA_BUNDLE_PATH: &str = "/run/envkit/ca-certificates.crt";

/// Where a step's emulator is bound (BuildKit's name: in /dev, a tmpfs, so it never reaches a
/// layer).
pub const EMULATOR_PATH: &str = "/dev/.buildkit_qemu_emulator";

/// Environment variables that point tools at the CA bundle.
pub const CA_BUNDLE_ENV: [&str; 6] = [
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
];

/// Where the source side of a copy comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopySource {
    /// A plain directory (e.g. a build context snapshot).
    Dir(PathBuf),
    /// A read-only overlay view of a snapshot chain, top first.
    Lowers(Vec<PathBuf>),
}

impl Default for CopySource {
    fn default() -> CopySource {
        CopySource::Lowers(Vec::new())
    }
}

/// A user or group of a chown: a number, or a name looked up in the passwd/group files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdSpec {
    Id(u32),
    Name(String),
}

/// Where names of a [`Chown`] are looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserDb {
    /// The tree the action works on, as the earlier actions left it.
    #[default]
    Dest,
    /// Another snapshot chain (dirs, top first).
    Lowers(Vec<PathBuf>),
}

/// The owner of what an action creates, with BuildKit's rules: a numeric user alone also
/// gives the group, a named user brings its primary group, a group alone means user 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chown {
    pub user: Option<IdSpec>,
    pub group: Option<IdSpec>,
    #[serde(default)]
    pub user_db: UserDb,
    #[serde(default)]
    pub group_db: UserDb,
}

impl Chown {
    /// A numeric owner.
    pub fn ids(uid: u32, gid: u32) -> Chown {
        Chown {
            user: Some(IdSpec::Id(uid)),
            group: Some(IdSpec::Id(gid)),
            user_db: UserDb::Dest,
            group_db: UserDb::Dest,
        }
    }
}

/// A copy (BuildKit's FileActionCopy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAction {
    pub src_root: CopySource,
    pub src: String,
    pub dest: String,
    pub owner: Option<Chown>,
    /// Octal mode for everything copied.
    pub mode: Option<u32>,
    /// A chmod-style mode (`u+x,go-w`, `0755`); wins over `mode`.
    pub mode_str: Option<String>,
    pub follow_symlinks: bool,
    pub dir_copy_contents: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    /// Patterns relative to each source path.
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    /// Replace an existing destination of another type (a dir by a file, and back).
    pub always_replace_existing: bool,
    /// Unpack a source that is a (compressed) tar archive into `dest`, like Dockerfile ADD.
    pub unpack_archives: bool,
    /// Source paths (relative to the source root) that must exist.
    pub required_paths: Vec<String>,
    /// Modification time (ns since the epoch) of everything copied; else the source's.
    pub timestamp: Option<i64>,
}

/// One file operation, BuildKit's FileOp semantics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileAction {
    Mkdir {
        path: String,
        mode: u32,
        make_parents: bool,
        owner: Option<Chown>,
        timestamp: Option<i64>,
    },
    Mkfile {
        path: String,
        mode: u32,
        data: Vec<u8>,
        owner: Option<Chown>,
        timestamp: Option<i64>,
    },
    Rm {
        path: String,
        allow_not_found: bool,
        allow_wildcard: bool,
    },
    Copy(Box<CopyAction>),
    Symlink {
        /// The link's target, stored as given.
        target: String,
        /// Where the link is created.
        path: String,
        owner: Option<Chown>,
        timestamp: Option<i64>,
    },
}

/// A request to the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Flatten layers, in order, into `dest` (created).
    Unpack {
        layers: Vec<LayerFile>,
        dest: PathBuf,
        /// The most bytes of file content one layer may unpack to (None: no limit).
        #[serde(default)]
        max_layer_bytes: Option<u64>,
    },
    /// Unpack one layer into `dest` (made if missing; it must be empty) as an overlay upper
    /// dir of that layer: whiteouts and opaque markers are recorded overlay-style (0/0 char
    /// devices or `user.overlay.whiteout` files, `user.overlay.opaque`), not applied. Answered
    /// with [`Response::Unpacked`].
    UnpackUpper {
        layer: LayerFile,
        dest: PathBuf,
        /// The most bytes of file content the layer may unpack to (None: no limit).
        #[serde(default)]
        max_layer_bytes: Option<u64>,
    },
    /// Run one container step on an overlay.
    Exec(ExecRequest),
    /// Mount an overlay and apply file actions in order.
    FileActions {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        actions: Vec<FileAction>,
    },
    /// Write an uncompressed OCI layer tar of an overlay upper dir.
    DiffTar {
        upper: PathBuf,
        out: PathBuf,
        /// The latest mtime an entry may carry (seconds since the epoch).
        #[serde(default)]
        mtime_clamp: Option<i64>,
    },
    /// Delete a tree owned by subordinate ids.
    RemoveAll { path: PathBuf },
    /// Start a long-running environment; answered with [`Response::EnvStarted`] once its
    /// init runs (the init outlives the helper).
    StartEnv(Box<EnvRequest>),
    /// Report what works here.
    Probe,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

/// What [`Request::Probe`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// overlay with `userxattr` mounts and copies up in the namespace.
    pub overlay_userxattr: bool,
    /// Human readable detail (the error when it does not work).
    pub detail: String,
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Unpacked {
        /// Entries skipped (device nodes, unsupported xattrs...).
        notes: Vec<String>,
    },
    Exited(ExitStatus),
    Done,
    DiffWritten {
        entries: u64,
        /// The tar's SHA-256 (lowercase hex) and size, computed as it was written.
        #[serde(default)]
        sha256: Option<String>,
        #[serde(default)]
        size: Option<u64>,
    },
    Probe(ProbeResult),
    /// The environment's init, by its pid on the host.
    EnvStarted {
        pid: u32,
    },
    Error {
        message: String,
    },
}

/// A long-running environment: the rootfs, mounts, environment and user of `exec` (its
/// `args` are unused), a /dev/shm of `shm_size` bytes, and services its init keeps running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRequest {
    pub exec: ExecRequest,
    pub shm_size: u64,
    pub services: Vec<Service>,
    /// Host directory for `init.log` and `<service>.log`.
    pub log_dir: PathBuf,
}

/// A process the environment's init starts, and starts again whenever it exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// A plain file name (the log file is `<name>.log`).
    pub name: String,
    pub args: Vec<String>,
    /// Run once, in order, before the other services start (envd's `runtime.init`); not
    /// started again.
    #[serde(default)]
    pub once: bool,
}

/// A command to run inside a running environment (`envkit exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The environment's init on the host.
    pub pid: u32,
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    pub cwd: String,
    /// As [`ExecRequest::user`].
    pub user: String,
    /// Whether the command gets a pty of the environment's own.
    #[serde(default)]
    pub tty: crate::tty::TtyMode,
    /// The environment was started with `security.insecure`: the command is not confined
    /// either (else Docker's default capabilities and seccomp profile).
    #[serde(default)]
    pub insecure: bool,
    /// The environment was started with `no_new_privs`: the command gets it too.
    #[serde(default)]
    pub no_new_privs: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests of older builds still parse; the limit of an upper-dir unpack may be left out.
    #[test]
    fn unpack_requests_parse() {
        let old = r#"{"Unpack":{"layers":[{"path":"/l","compression":"Gzip"}],"dest":"/d"}}"#;
        let r: Request = serde_json::from_str(old).unwrap();
        assert!(
            matches!(
                r,
                Request::Unpack {
                    max_layer_bytes: None,
                    ..
                }
            ),
            "{r:?}"
        );
        let up = r#"{"UnpackUpper":{"layer":{"path":"/l","compression":"None"},"dest":"/d"}}"#;
        let r: Request = serde_json::from_str(up).unwrap();
        assert_eq!(
            r,
            Request::UnpackUpper {
                layer: LayerFile {
                    path: "/l".into(),
                    compression: Compression::None,
                },
                dest: "/d".into(),
                max_layer_bytes: None,
            }
        );
        let back: Request = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
