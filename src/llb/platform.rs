//! OCI platform (`os/arch[/variant]`) with containerd's normalisation.

use std::fmt;

use super::LlbError;
use crate::pb;

/// A target platform. Default: `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Default for Platform {
    fn default() -> Self {
        Platform::new("linux", "amd64", "")
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

    pub fn linux_amd64() -> Platform {
        Platform::default()
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
        "i386" => ("386".into(), String::new()),
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
            Some(Platform::default())
        );
        assert_eq!(
            Platform::parse("linux/aarch64").ok(),
            Some(Platform::linux_arm64())
        );
        let arm = Platform::parse("linux/arm").ok();
        assert_eq!(arm.map(|p| p.to_string()), Some("linux/arm/v7".to_string()));
        assert!(Platform::parse("linux").is_err());
    }
}
