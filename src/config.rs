//! envkit's config file (`$XDG_CONFIG_HOME/envkit/config.toml`), buildkitd.toml-shaped:
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["127.0.0.1:5000"]
//! [registry."127.0.0.1:5000"]
//! http = true          # plain http
//! insecure = false     # https without certificate verification
//! ca = ["/path/ca.pem"]
//! [worker]
//! ca-bundle = "/etc/ssl/certs/ca-certificates.crt"
//! max-layer-size = "64GiB"   # a pulled layer that unpacks to more is refused
//! ```
//!
//! Where the file is: `--config FILE`, else `$ENVKIT_CONFIG`, else
//! `$XDG_CONFIG_HOME/envkit/config.toml`, else `~/.config/envkit/config.toml`. Only the last two
//! may be missing (then every setting has its default). Unknown keys are errors.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Errors while finding or reading the config file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `message` is the TOML parser's, with line, column and the offending key.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Settings for one registry host (`[registry."host:port"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// Hosts (`host[:port]`) tried in order before this one.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Talk plain http to this host.
    #[serde(default)]
    pub http: bool,
    /// Use https without verifying the certificate.
    #[serde(default)]
    pub insecure: bool,
    /// Extra CA certificates (PEM files) trusted for this host.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
}

/// `[worker]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkerConfig {
    /// A CA bundle on the host that build steps trust (bound to a private path, never written
    /// into a layer).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// How many build steps may run at once (default 64, `solver::DEFAULT_PARALLELISM`).
    #[serde(default)]
    pub max_parallelism: Option<usize>,
    /// `auto` (overlayfs in the user namespace, copies where the kernel refuses it), `overlay`
    /// (never copies) or `copy` (always: e.g. a store on a filesystem overlayfs misbehaves on).
    #[serde(default)]
    pub snapshotter: Option<Snapshotter>,
    /// The most bytes one pulled layer may unpack to (a guard against decompression bombs):
    /// a number of bytes or a size such as `"64GiB"`; default [`DEFAULT_MAX_LAYER_SIZE`].
    #[serde(default, deserialize_with = "size_opt")]
    pub max_layer_size: Option<u64>,
    /// The network of build steps that ask for none in particular (LLB's default mode).
    #[serde(default)]
    pub network: StepNetwork,
    /// Set `no_new_privs` in build steps and environments (off by default, as in BuildKit
    /// and `docker run`: setuid tools such as sudo then stop gaining privileges).
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Static user-mode emulators for steps of other architectures, by architecture (`arm64 =
    /// "/usr/local/bin/qemu-aarch64-static"`); an architecture not named here uses
    /// `qemu-<QEMU's name for it>-static` found on PATH.
    #[serde(default)]
    pub emulators: std::collections::BTreeMap<String, PathBuf>,
    /// How binfmt_misc runs steps of other architectures (`auto`, `own`, `off`).
    #[serde(default)]
    pub binfmt: Binfmt,
}

/// `[worker] binfmt`: how steps of other architectures reach their emulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binfmt {
    /// A host handler registered with the `F` flag, else one of the step's own user namespace
    /// (Linux 6.7 and later), else the emulator before the step's program.
    #[default]
    Auto,
    /// A handler of the step's own user namespace even where the host has one.
    Own,
    /// No binfmt_misc: the emulator is bound into the step and put before its program, which
    /// then runs emulated but cannot start other foreign programs.
    Off,
}

/// `[worker] network`: what LLB's default network mode means for a build step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepNetwork {
    /// A network namespace of its own behind slirp4netns (BuildKit's `sandbox`); a build
    /// fails, saying why, where that cannot run.
    #[default]
    Sandbox,
    /// The sandbox where it can run, else the host's network (said once per build).
    Auto,
    /// The host's network, as steps had before (what `network.host` gives anyway).
    Host,
}

/// The default of `[worker] max-layer-size`: larger than any sane layer, smaller than a disk
/// a bomb would fill.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;

impl WorkerConfig {
    /// `max-layer-size`, or its default.
    pub fn max_layer_size(&self) -> u64 {
        self.max_layer_size.unwrap_or(DEFAULT_MAX_LAYER_SIZE)
    }
}

/// Parses `10GB`, `512MiB`, `1.5g`, `42` (a bare number is MB, as `buildctl prune` reads it;
/// `b` for bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: want e.g. 10GB or 512MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" => 1e6,
        "b" => 1.0,
        "k" | "kb" => 1e3,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0_f64.powi(4),
        other => return Err(format!("size {s:?}: unknown unit {other:?}")),
    };
    Ok((n * mult) as u64)
}

/// A size in the config file: an integer (bytes) or a string for [`parse_size`].
fn size_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `[worker] snapshotter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Snapshotter {
    #[default]
    Auto,
    Overlay,
    Copy,
}

impl Snapshotter {
    /// The helper's argument for it.
    pub fn helper_arg(self) -> &'static str {
        match self {
            Snapshotter::Auto => "--snapshotter=auto",
            Snapshotter::Overlay => "--snapshotter=overlay",
            Snapshotter::Copy => "--snapshotter=copy",
        }
    }
}

/// `[cache]`: the caches a build imports and exports when its command line names none for
/// that direction (each entry in buildctl's syntax, as `--import-cache` / `--export-cache`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheDefaults {
    #[serde(default)]
    pub import: Vec<String>,
    #[serde(default)]
    pub export: Vec<String>,
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default)]
    pub registry: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub cache: CacheDefaults,
    /// The file this was read from; `None` for defaults.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

fn home_dir(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// An XDG base directory: `$var` if set to an absolute path, else `~/<fallback>`.
fn xdg_dir(env: &dyn Fn(&str) -> Option<OsString>, var: &str, fallback: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home_dir(env).map(|h| h.join(fallback)))
}

fn real_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Which config file to read, and whether it must exist.
fn config_location(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<(PathBuf, bool)> {
    if let Some(p) = explicit {
        return Some((p.to_path_buf(), true));
    }
    if let Some(p) = env("ENVKIT_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    xdg_dir(env, "XDG_CONFIG_HOME", ".config").map(|d| (d.join("envkit/config.toml"), false))
}

fn store_root_from(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = env("ENVKIT_ROOT").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match xdg_dir(env, "XDG_DATA_HOME", ".local/share") {
        Some(d) => d.join("envkit"),
        // No HOME at all: a per-user directory under the temp dir.
        None => std::env::temp_dir().join(format!("envkit-{}", current_uid())),
    }
}

fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// envkit's config directory: `$XDG_CONFIG_HOME/envkit`, else `~/.config/envkit`.
pub fn config_dir() -> Option<PathBuf> {
    xdg_dir(&real_env, "XDG_CONFIG_HOME", ".config").map(|d| d.join("envkit"))
}

/// envkit's cache directory: `$XDG_CACHE_HOME/envkit`, else `~/.cache/envkit`.
pub fn cache_dir() -> Option<PathBuf> {
    xdg_dir(&real_env, "XDG_CACHE_HOME", ".cache").map(|d| d.join("envkit"))
}

/// The user's home directory (`$HOME`).
pub fn home() -> Option<PathBuf> {
    home_dir(&real_env)
}

/// The store root: `--root`, else `$ENVKIT_ROOT`, else `$XDG_DATA_HOME/envkit`, else
/// `~/.local/share/envkit`.
pub fn store_root(explicit: Option<&Path>) -> PathBuf {
    store_root_from(explicit, &real_env)
}

impl Config {
    /// Finds and reads the config file (see the module docs for where it is looked for).
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(explicit, &real_env)
    }

    fn load_with_env(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let Some((path, required)) = config_location(explicit, env) else {
            return Ok(Config::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses config text; `path` is only used in messages and recorded in [`Config::path`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.path = Some(path.to_path_buf());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: self.path.clone().unwrap_or_default(),
            message,
        };
        for (host, reg) in &self.registry {
            check_host(host).map_err(|m| invalid(format!("[registry.{host:?}]: {m}")))?;
            for m in &reg.mirrors {
                check_host(strip_scheme(m).1)
                    .map_err(|e| invalid(format!("[registry.{host:?}] mirrors: {m:?}: {e}")))?;
            }
            if reg.http && reg.insecure {
                return Err(invalid(format!(
                    "[registry.{host:?}]: `http` and `insecure` exclude each other"
                )));
            }
        }
        Ok(())
    }

    /// The settings for `host` (defaults when the file has no section for it).
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registry.get(host).cloned().unwrap_or_default()
    }

    /// Whether `host` is reached over plain http: `http = true` in its section, or a mirror
    /// entry written as `http://host`.
    pub fn is_plain_http(&self, host: &str) -> bool {
        if self.registry.get(host).is_some_and(|r| r.http) {
            return true;
        }
        self.registry
            .values()
            .flat_map(|r| r.mirrors.iter())
            .any(|m| strip_scheme(m) == (Some("http"), host))
    }

    /// The hosts to try for `host`, in order: its mirrors, then the host itself. Mirror
    /// entries are returned without any `http://`/`https://` prefix.
    pub fn hosts_for(&self, host: &str) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .registry
            .get(host)
            .map(|r| {
                r.mirrors
                    .iter()
                    .map(|m| strip_scheme(m).1.trim_end_matches('/').to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
        }
        hosts
    }
}

/// Splits an optional `http://` / `https://` prefix off a host entry.
fn strip_scheme(s: &str) -> (Option<&str>, &str) {
    if let Some(rest) = s.strip_prefix("http://") {
        (Some("http"), rest.trim_end_matches('/'))
    } else if let Some(rest) = s.strip_prefix("https://") {
        (Some("https"), rest.trim_end_matches('/'))
    } else {
        (None, s.trim_end_matches('/'))
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err("expected host[:port] (no path, no spaces)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_the_documented_shape() {
        let text = r#"
[registry."docker.io"]
mirrors = ["127.0.0.1:5000"]
[registry."127.0.0.1:5000"]
http = true
insecure = false
ca = ["/path/ca.pem"]
[worker]
ca-bundle = "/etc/ssl/certs/ca-certificates.crt"
[cache]
import = ["type=registry,ref=reg/p:cache"]
export = ["type=registry,ref=reg/p:cache,mode=max"]
"#;
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.cache.import, vec!["type=registry,ref=reg/p:cache"]);
        assert_eq!(
            c.cache.export,
            vec!["type=registry,ref=reg/p:cache,mode=max"]
        );
        assert_eq!(c.registry("docker.io").mirrors, vec!["127.0.0.1:5000"]);
        assert!(c.is_plain_http("127.0.0.1:5000"));
        assert!(!c.is_plain_http("docker.io"));
        assert_eq!(
            c.registry("127.0.0.1:5000").ca,
            vec![PathBuf::from("/path/ca.pem")]
        );
        assert_eq!(
            c.worker.ca_bundle.as_deref(),
            Some(Path::new("/etc/ssl/certs/ca-certificates.crt"))
        );
        assert_eq!(
            c.hosts_for("docker.io"),
            vec!["127.0.0.1:5000", "docker.io"]
        );
        assert_eq!(c.hosts_for("ghcr.io"), vec!["ghcr.io"]);
    }

    #[test]
    fn layer_size_limits() {
        let p = |t: &str| Config::parse(t, Path::new("c.toml"));
        assert_eq!(
            p("").unwrap().worker.max_layer_size(),
            DEFAULT_MAX_LAYER_SIZE
        );
        let c = p("[worker]\nmax-layer-size = \"2GiB\"\n").unwrap();
        assert_eq!(c.worker.max_layer_size(), 2 << 30);
        let c = p("[worker]\nmax-layer-size = 1000\n").unwrap();
        assert_eq!(c.worker.max_layer_size(), 1000);
        let e = p("[worker]\nmax-layer-size = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lots"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[registry.\"docker.io\"]\nmirrors = []\nmirror = [\"x\"]\n";
        let err = Config::parse(text, Path::new("/etc/c.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/c.toml"), "{msg}");
        assert!(msg.contains("mirror"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");

        let err = Config::parse("[wroker]\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("wroker"), "{err}");
    }

    #[test]
    fn syntax_error_names_path_and_line() {
        let err = Config::parse("[worker]\nca-bundle = \n", Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.toml") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn http_mirror_prefix() {
        let text = "[registry.\"docker.io\"]\nmirrors = [\"http://10.0.0.1:5000/\"]\n";
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.hosts_for("docker.io"), vec!["10.0.0.1:5000", "docker.io"]);
        assert!(c.is_plain_http("10.0.0.1:5000"));
        let bad = "[registry.\"docker.io\"]\nmirrors = [\"10.0.0.1/v2\"]\n";
        assert!(Config::parse(bad, Path::new("c.toml")).is_err());
    }

    #[test]
    fn config_location_order() {
        let env = env_of(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("ENVKIT_CONFIG", "/e.toml"),
        ]);
        assert_eq!(
            config_location(Some(Path::new("/x.toml")), &env),
            Some((PathBuf::from("/x.toml"), true))
        );
        assert_eq!(
            config_location(None, &env),
            Some((PathBuf::from("/e.toml"), true))
        );
        let env = env_of(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "/xdg")]);
        assert_eq!(
            config_location(None, &env),
            Some((PathBuf::from("/xdg/envkit/config.toml"), false))
        );
        let env = env_of(&[("HOME", "/home/u"), ("XDG_CONFIG_HOME", "relative")]);
        assert_eq!(
            config_location(None, &env),
            Some((PathBuf::from("/home/u/.config/envkit/config.toml"), false))
        );
        assert_eq!(config_location(None, &env_of(&[])), None);
    }

    #[test]
    fn missing_default_is_defaults_missing_explicit_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().to_str().unwrap().to_string();
        let env = env_of(&[("XDG_CONFIG_HOME", &xdg)]);
        assert_eq!(
            Config::load_with_env(None, &env).unwrap(),
            Config::default()
        );

        let missing = dir.path().join("nope.toml");
        let err = Config::load_with_env(Some(&missing), &env).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");

        let env = env_of(&[("ENVKIT_CONFIG", missing.to_str().unwrap())]);
        assert!(Config::load_with_env(None, &env).is_err());

        std::fs::create_dir_all(dir.path().join("envkit")).unwrap();
        std::fs::write(
            dir.path().join("envkit/config.toml"),
            "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        let env = env_of(&[("XDG_CONFIG_HOME", &xdg)]);
        let c = Config::load_with_env(None, &env).unwrap();
        assert_eq!(c.registry("docker.io").mirrors, vec!["127.0.0.1:5000"]);
        assert_eq!(c.path, Some(dir.path().join("envkit/config.toml")));
    }

    #[test]
    fn store_root_order() {
        let env = env_of(&[
            ("HOME", "/home/u"),
            ("XDG_DATA_HOME", "/data"),
            ("ENVKIT_ROOT", "/r"),
        ]);
        assert_eq!(
            store_root_from(Some(Path::new("/x")), &env),
            PathBuf::from("/x")
        );
        assert_eq!(store_root_from(None, &env), PathBuf::from("/r"));
        let env = env_of(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/data")]);
        assert_eq!(store_root_from(None, &env), PathBuf::from("/data/envkit"));
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            store_root_from(None, &env),
            PathBuf::from("/home/u/.local/share/envkit")
        );
    }
}
