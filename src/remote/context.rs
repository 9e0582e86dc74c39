//! envkit's contexts, like envd's: named builders (`embedded`, a `buildkitd`, a `dockerd`),
//! one of them current. Kept in `$XDG_CONFIG_HOME/envkit/contexts.json`; `embedded` always
//! exists and is the default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Endpoint, Tls};

#[derive(Debug, Error)]
pub enum ContextError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("no context {0:?} (see `envkit context ls`)")]
    Unknown(String),
    #[error("a context {0:?} exists already")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builder {
    Embedded,
    Buildkitd,
    Dockerd,
}

impl std::str::FromStr for Builder {
    type Err = ContextError;
    fn from_str(s: &str) -> Result<Builder, ContextError> {
        match s {
            "embedded" => Ok(Builder::Embedded),
            "buildkitd" => Ok(Builder::Buildkitd),
            "dockerd" | "moby-worker" => Ok(Builder::Dockerd),
            other => Err(ContextError::Invalid(format!(
                "unknown builder {other:?} (embedded, buildkitd or dockerd)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub name: String,
    pub builder: Builder,
    #[serde(default)]
    pub endpoint: String,
    /// TLS towards a `tcp://` buildkitd.
    #[serde(default, skip_serializing_if = "Tls::is_empty")]
    pub tls: Tls,
}

impl Context {
    pub fn embedded() -> Context {
        Context {
            name: "embedded".into(),
            builder: Builder::Embedded,
            endpoint: String::new(),
            tls: Tls::default(),
        }
    }

    /// Where to connect (None for the embedded engine).
    pub fn endpoint(&self) -> Result<Option<Endpoint>, super::RemoteError> {
        match self.builder {
            Builder::Embedded => Ok(None),
            Builder::Buildkitd => match Endpoint::parse(false, &self.endpoint)? {
                Endpoint::Tcp { addr, .. } if !self.tls.is_empty() => Ok(Some(Endpoint::Tcp {
                    addr,
                    tls: Some(self.tls.clone()),
                })),
                _ if !self.tls.is_empty() => Err(super::RemoteError::Endpoint(format!(
                    "{} (TLS settings are for tcp:// endpoints)",
                    self.endpoint
                ))),
                ep => Ok(Some(ep)),
            },
            Builder::Dockerd => Endpoint::parse(true, &self.endpoint).map(Some),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contexts {
    #[serde(default)]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

impl Contexts {
    pub fn path() -> Option<PathBuf> {
        crate::config::config_dir().map(|d| d.join("contexts.json"))
    }

    pub fn load_from(path: &Path) -> Result<Contexts, ContextError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ContextError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
            Err(e) => Err(ContextError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    pub fn save_to(&self, path: &Path) -> Result<(), ContextError> {
        let err = |m: String| ContextError::File {
            path: path.to_path_buf(),
            message: m,
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| err(e.to_string()))?;
        }
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        crate::fsutil::write_atomic(path, &bytes, true).map_err(|e| err(e.to_string()))
    }

    /// Every context, `embedded` first.
    pub fn all(&self) -> Vec<Context> {
        let mut v = vec![Context::embedded()];
        v.extend(self.contexts.iter().cloned());
        v
    }

    pub fn get(&self, name: &str) -> Result<Context, ContextError> {
        self.all()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ContextError::Unknown(name.to_string()))
    }

    pub fn current_name(&self) -> String {
        self.current.clone().unwrap_or_else(|| "embedded".into())
    }

    pub fn create(&mut self, c: Context) -> Result<(), ContextError> {
        if self.all().iter().any(|x| x.name == c.name) {
            return Err(ContextError::Exists(c.name));
        }
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(ContextError::Invalid(format!(
                "context name {:?}: letters, digits, `-`, `_` and `.`",
                c.name
            )));
        }
        c.endpoint()
            .map_err(|e| ContextError::Invalid(e.to_string()))?;
        self.contexts.push(c);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<(), ContextError> {
        if name == "embedded" {
            return Err(ContextError::Invalid(
                "the embedded context cannot be removed".into(),
            ));
        }
        if self.current_name() == name {
            return Err(ContextError::Invalid(format!(
                "{name:?} is the current context: `envkit context use` another one first"
            )));
        }
        let before = self.contexts.len();
        self.contexts.retain(|c| c.name != name);
        if self.contexts.len() == before {
            return Err(ContextError::Unknown(name.to_string()));
        }
        Ok(())
    }

    pub fn use_(&mut self, name: &str) -> Result<(), ContextError> {
        self.get(name)?;
        self.current = if name == "embedded" {
            None
        } else {
            Some(name.to_string())
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_use_remove() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("contexts.json");
        let mut c = Contexts::load_from(&p).unwrap();
        assert_eq!(c.current_name(), "embedded");
        c.create(Context {
            name: "d".into(),
            builder: Builder::Dockerd,
            endpoint: "unix:///var/run/docker.sock".into(),
            tls: Tls::default(),
        })
        .unwrap();
        assert!(matches!(
            c.create(Context {
                name: "d".into(),
                builder: Builder::Embedded,
                endpoint: String::new(),
                tls: Tls::default(),
            }),
            Err(ContextError::Exists(_))
        ));
        assert!(
            c.create(Context {
                name: "b".into(),
                builder: Builder::Buildkitd,
                endpoint: "http://x".into(),
                tls: Tls::default(),
            })
            .is_err()
        );
        let tls = Tls {
            ca: Some("/ca.pem".into()),
            ..Tls::default()
        };
        let on_unix = Context {
            name: "t".into(),
            builder: Builder::Buildkitd,
            endpoint: "unix:///run/b.sock".into(),
            tls: tls.clone(),
        };
        assert!(c.create(on_unix.clone()).is_err(), "TLS only for tcp");
        c.create(Context {
            endpoint: "tcp://b.example:1234".into(),
            ..on_unix
        })
        .unwrap();
        assert!(matches!(
            c.get("t").unwrap().endpoint().unwrap(),
            Some(Endpoint::Tcp { tls: Some(t), .. }) if t == tls
        ));
        c.use_("d").unwrap();
        c.save_to(&p).unwrap();
        let c2 = Contexts::load_from(&p).unwrap();
        assert_eq!(c2.current_name(), "d");
        let mut c3 = c2.clone();
        assert!(c3.remove("d").is_err(), "the current one stays");
        c3.use_("embedded").unwrap();
        c3.remove("d").unwrap();
        assert!(c3.remove("embedded").is_err());
        assert!(c3.use_("nope").is_err());
    }
}
