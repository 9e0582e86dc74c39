//! `-o` on a remote BuildKit: which of its exporters makes the output, with which attributes,
//! and how the result comes back to this machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{BackendError, Remote};
use crate::export::{Compression, CompressionOpts, Output};
use crate::remote::Endpoint;

/// How an exporter's result comes back to this machine.
pub(super) enum Back {
    /// Nothing comes back (an image stays in the remote's store, or is pushed).
    Nothing,
    /// A file through the session (tar, and oci/docker from a buildkitd), written to `dest`.
    File(PathBuf),
    /// A directory tree through the session, written into `dest`.
    Tree(PathBuf),
    /// dockerd's `docker save` of the built image, afterwards.
    Saved,
}

fn compression_attrs(c: &CompressionOpts, attrs: &mut HashMap<String, String>) {
    if *c == CompressionOpts::default() {
        return;
    }
    let kind = match c.kind {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::Uncompressed => "uncompressed",
    };
    attrs.insert("compression".into(), kind.into());
    if let Some(l) = c.level {
        attrs.insert("compression-level".into(), l.to_string());
    }
    if c.force {
        attrs.insert("force-compression".into(), "true".into());
    }
}

/// The exporter, its attributes, and what comes back, for `output` there.
pub(super) fn exporter(
    remote: &Remote,
    output: Option<&Output>,
    name: &str,
) -> Result<(String, HashMap<String, String>, Back), BackendError> {
    let mut attrs = HashMap::new();
    let dockerd = matches!(remote.ep, Endpoint::Dockerd(_));
    let moby = remote.moby();
    let named = |n: &Option<String>| n.clone().unwrap_or_else(|| name.to_string());
    let (exporter, back) = match output {
        None | Some(Output::Image { push: false, .. }) if moby => {
            let n = match output {
                Some(Output::Image { name: n, .. }) => named(n),
                _ => name.to_string(),
            };
            attrs.insert("name".into(), n);
            ("moby", Back::Nothing)
        }
        // push=true: dockerd pushes it afterwards (see `dockerd::docker_push`).
        Some(Output::Image { name: n, .. }) if dockerd => {
            attrs.insert("name".into(), named(n));
            ("moby", Back::Nothing)
        }
        // From dockerd these are made from `docker save` of the image (`dockerd::fetch_saved`).
        Some(Output::Oci { name: n, .. } | Output::Docker { name: n, .. }) if dockerd => {
            attrs.insert("name".into(), named(n));
            ("moby", Back::Saved)
        }
        Some(
            out @ (Output::Image { push: true, .. } | Output::Oci { .. } | Output::Docker { .. }),
        ) if moby => {
            return Err(BackendError::Refused(format!(
                "-o {}: {} is dockerd's BuildKit, whose only image exporter puts the image \
                 into dockerd; make a dockerd context for its API socket to push or save it",
                out.kind(),
                remote.ep
            )));
        }
        None => {
            attrs.insert("name".into(), name.to_string());
            ("image", Back::Nothing)
        }
        Some(Output::Image {
            name: n,
            push,
            compression,
        }) => {
            attrs.insert("name".into(), named(n));
            if *push {
                attrs.insert("push".into(), "true".into());
            }
            compression_attrs(compression, &mut attrs);
            ("image", Back::Nothing)
        }
        Some(
            out @ (Output::Oci {
                dest,
                name: n,
                compression,
            }
            | Output::Docker {
                dest,
                name: n,
                compression,
            }),
        ) => {
            attrs.insert("name".into(), named(n));
            compression_attrs(compression, &mut attrs);
            let exporter = if matches!(out, Output::Oci { .. }) {
                "oci"
            } else {
                "docker"
            };
            (exporter, Back::File(dest.clone()))
        }
        Some(Output::Tar { dest }) => ("tar", Back::File(dest.clone())),
        Some(Output::Local { dest }) => ("local", Back::Tree(dest.clone())),
        Some(other) => {
            return Err(BackendError::Refused(format!(
                "-o {}: a remote BuildKit exports to an image (push=true for a registry), \
                 oci, docker, tar or local; a containerd import is the embedded engine's",
                other.kind()
            )));
        }
    };
    Ok((exporter.to_string(), attrs, back))
}

/// A private place beside `dest` (same file system, so the result is renamed into place).
pub(super) fn beside(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() && dest.as_os_str() != "-" => p.to_path_buf(),
        _ if dest.as_os_str() == "-" => std::env::temp_dir(),
        _ => PathBuf::from("."),
    }
}
