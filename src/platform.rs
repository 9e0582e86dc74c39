//! The one OCI platform type (`os/arch[/variant]`, containerd's normalisation) used by
//! lowering, LLB, the registry, ops and exports. The default is this machine's platform, as
//! BuildKit's client and containerd take it.

use std::fmt;

use crate::llb::LlbError;
use crate::pb;

/// A target platform (`variant` empty when there is none). Default: [`Platform::host`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Default for Platform {
    fn default() -> Self {
        Platform::host()
    }
}

impl Platform {
    /// A normalised platform.
    pub fn new(os: &str, arch: &str, variant: &str) -> Platform {
        let os = os.to_ascii_lowercase();
        let (arch, variant) =
            normalize_arch(&arch.to_ascii_lowercase(), &variant.to_ascii_lowercase());
        Platform {
            os,
            architecture: arch,
            variant,
        }
    }

    /// The platform this machine runs.
    pub fn host() -> Platform {
        Platform::new(std::env::consts::OS, std::env::consts::ARCH, "")
    }

    pub fn linux_amd64() -> Platform {
        Platform::new("linux", "amd64", "")
    }

    pub fn linux_arm64() -> Platform {
        Platform::new("linux", "arm64", "")
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, LlbError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform::new(os, arch, variant))
            }
            _ => Err(LlbError::InvalidPlatform(s.to_string())),
        }
    }

    /// Whether an image of `os`/`architecture`/`variant` serves this platform (a variant
    /// is compared only when both name one).
    pub fn accepts(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let other = Platform::new(os, architecture, variant.unwrap_or(""));
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_empty()
                || other.variant.is_empty()
                || self.variant == other.variant)
    }

    /// The platform of an LLB op (its own, else this machine's).
    pub fn of_op(p: Option<&pb::Platform>) -> Platform {
        match p {
            Some(p) if !p.os.is_empty() && !p.architecture.is_empty() => {
                Platform::new(&p.os, &p.architecture, &p.variant)
            }
            _ => Platform::host(),
        }
    }

    pub(crate) fn to_pb(&self) -> pb::Platform {
        pb::Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            os_version: String::new(),
            os_features: Vec::new(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    match arch {
        "i386" | "x86" => ("386".into(), String::new()),
        "powerpc64" | "ppc64le" => ("ppc64le".into(), variant.into()),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if variant == "v1" { "" } else { variant };
            ("amd64".into(), v.into())
        }
        "aarch64" | "arm64" => {
            let v = if variant == "8" || variant == "v8" {
                ""
            } else {
                variant
            };
            ("arm64".into(), v.into())
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant {
                "" | "7" => "v7",
                "5" | "6" | "8" => return ("arm".into(), format!("v{variant}")),
                v => v,
            };
            ("arm".into(), v.into())
        }
        other => (other.into(), variant.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalise() {
        assert_eq!(
            Platform::parse("linux/amd64").ok(),
            Some(Platform::linux_amd64())
        );
        assert_eq!(
            Platform::parse("linux/aarch64").ok(),
            Some(Platform::linux_arm64())
        );
        let arm = Platform::parse("linux/arm").ok();
        assert_eq!(arm.map(|p| p.to_string()), Some("linux/arm/v7".to_string()));
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn the_host_is_the_default_and_variants_match_loosely() {
        assert_eq!(Platform::default(), Platform::host());
        let arm = Platform::linux_arm64();
        assert!(
            arm.accepts("linux", "arm64", Some("v8")),
            "v8 is arm64's default"
        );
        assert!(arm.accepts("linux", "aarch64", None));
        assert!(!arm.accepts("linux", "amd64", None));
        let v7 = Platform::new("linux", "arm", "v7");
        assert!(!v7.accepts("linux", "arm", Some("v6")));
        assert!(v7.accepts("linux", "arm", None));
    }
}
