//! `-o` for both engines, one kind per file: each [`Exporter`] says how the embedded engine
//! writes its output from an image assembled in the store ([`Exporter::export`]) and which of
//! a remote BuildKit's exporters makes it, with which attributes and what comes back to this
//! machine ([`Exporter::remote`]). [`Output::exporter`] picks the kind.
//!
//! `image.rs` (the store, `push=true`), `containerd.rs` (an import over containerd's socket),
//! `archive.rs` (OCI layout and `docker save` archives), `rootfs.rs` (`type=tar` and `type=local`: the root
//! filesystem, made by the rootless helper).

mod archive;
mod containerd;
mod image;
mod rootfs;

pub use image::pushed_note;
pub use rootfs::{extract_as_user, rootfs_tar, rootfs_tar_of};

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use super::{Compression, CompressionOpts, ExportError, Output};
use crate::image::Assembled;
use crate::meta::ImageRecord;
use crate::progress::{Event, Reporter};
use crate::worker::Worker;

/// What an embedded export works with: the image, assembled in the store under `name`.
pub struct Cx<'a> {
    pub worker: &'a Worker,
    /// The store's root (its image records).
    pub root: &'a Path,
    /// The image's manifest, or the index over each platform's of a multi-platform build.
    pub descriptor: &'a oci_spec::image::Descriptor,
    /// Each platform's image, in the index's order (one for a single-platform build).
    pub images: &'a [Assembled],
    pub record: &'a ImageRecord,
    /// The image's name in the store.
    pub name: &'a str,
    pub reporter: &'a dyn Reporter,
}

impl Cx<'_> {
    fn note(&self, message: String) {
        self.reporter.event(Event::Note(message));
    }

    /// The name the output gives (`name=`), normalised, else the image's own.
    fn ref_for(&self, name: &Option<String>) -> Result<String, ExportError> {
        match name {
            Some(n) => crate::compile::full_name(n).map_err(|e| ExportError::Output {
                spec: format!("name={n}"),
                message: e.to_string(),
            }),
            None => Ok(self.name.to_string()),
        }
    }
}

/// The remote BuildKit an output goes to, as the mapping needs to know it.
#[derive(Debug, Clone)]
pub struct RemoteKind {
    /// For messages.
    pub endpoint: String,
    /// Reached through dockerd's API (which can save and push what its BuildKit made).
    pub dockerd: bool,
    /// dockerd's BuildKit (through dockerd or as a buildkitd): its only image exporter is
    /// `moby`, into dockerd's image store.
    pub moby: bool,
}

/// How an exporter's result comes back to this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Back {
    /// Nothing comes back (an image stays in the remote's store, or is pushed).
    Nothing,
    /// A file through the session (tar, and oci/docker from a buildkitd), written to `dest`.
    File(PathBuf),
    /// A directory tree through the session, written into `dest`.
    Tree(PathBuf),
    /// dockerd's `docker save` of the built image, afterwards.
    Saved,
}

/// A remote BuildKit's exporter for an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteExport {
    pub exporter: &'static str,
    pub attrs: HashMap<String, String>,
    pub back: Back,
}

impl RemoteExport {
    fn named(exporter: &'static str, name: String, back: Back) -> Self {
        RemoteExport {
            exporter,
            attrs: HashMap::from([("name".to_string(), name)]),
            back,
        }
    }

    /// BuildKit's compression attributes, where they are not the default.
    fn compression(mut self, c: &CompressionOpts) -> Self {
        if *c == CompressionOpts::default() {
            return self;
        }
        let kind = match c.kind {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Uncompressed => "uncompressed",
        };
        self.attrs.insert("compression".into(), kind.into());
        if let Some(l) = c.level {
            self.attrs.insert("compression-level".into(), l.to_string());
        }
        if c.force {
            self.attrs.insert("force-compression".into(), "true".into());
        }
        self
    }
}

/// A future of an exporter.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One kind of output.
pub trait Exporter {
    /// Writes the output on this machine, from the image in the store.
    fn export<'a>(&'a self, cx: &'a Cx<'a>) -> BoxFuture<'a, Result<(), ExportError>>;
    /// The remote exporter that makes it (`name`: the image's name).
    fn remote(&self, remote: &RemoteKind, name: &str) -> Result<RemoteExport, ExportError>;
}

impl Output {
    /// The exporter of this kind of output.
    pub fn exporter(&self) -> Box<dyn Exporter + '_> {
        match self {
            Output::Image {
                name,
                push,
                compression,
            } => Box::new(image::Image {
                name,
                push: *push,
                compression,
            }),
            Output::Containerd {
                name,
                target,
                compression,
            } => Box::new(containerd::Containerd {
                name,
                target,
                compression,
            }),
            Output::Oci {
                dest,
                name,
                compression,
            } => Box::new(archive::Archive {
                format: archive::Format::Oci,
                dest,
                name,
                compression,
            }),
            Output::Docker {
                dest,
                name,
                compression,
            } => Box::new(archive::Archive {
                format: archive::Format::Docker,
                dest,
                name,
                compression,
            }),
            Output::Tar { dest } => Box::new(rootfs::Rootfs { dest, tree: false }),
            Output::Local { dest } => Box::new(rootfs::Rootfs { dest, tree: true }),
        }
    }
}

/// No `-o`: the image in the store (envkit's, or the remote's).
pub fn default_output() -> Output {
    Output::Image {
        name: None,
        push: false,
        compression: CompressionOpts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buildkitd() -> RemoteKind {
        RemoteKind {
            endpoint: "unix:///run/buildkit/buildkitd.sock".into(),
            dockerd: false,
            moby: false,
        }
    }

    fn dockerd() -> RemoteKind {
        RemoteKind {
            endpoint: "dockerd".into(),
            dockerd: true,
            moby: true,
        }
    }

    fn parse(o: &str) -> Output {
        crate::export::parse_output(o).unwrap()
    }

    #[test]
    fn a_buildkitd_gets_its_own_exporters() {
        let name = "docker.io/library/app:dev";
        let r = default_output()
            .exporter()
            .remote(&buildkitd(), name)
            .unwrap();
        assert_eq!(r, RemoteExport::named("image", name.into(), Back::Nothing));
        let o = parse("type=image,name=reg.example/app:1,push=true,compression=zstd");
        let r = o.exporter().remote(&buildkitd(), name).unwrap();
        assert_eq!(r.exporter, "image");
        assert_eq!(r.attrs["push"], "true");
        assert_eq!(r.attrs["compression"], "zstd");
        assert_eq!(r.attrs["name"], "reg.example/app:1");
        let r = parse("type=oci,dest=/tmp/x.tar")
            .exporter()
            .remote(&buildkitd(), name)
            .unwrap();
        assert_eq!(
            (r.exporter, r.back),
            ("oci", Back::File("/tmp/x.tar".into()))
        );
        let r = parse("type=local,dest=/tmp/out")
            .exporter()
            .remote(&buildkitd(), name)
            .unwrap();
        assert_eq!(
            (r.exporter, r.back),
            ("local", Back::Tree("/tmp/out".into()))
        );
        let err = parse("type=containerd")
            .exporter()
            .remote(&buildkitd(), name)
            .unwrap_err();
        assert!(err.to_string().contains("embedded engine's"), "{err}");
    }

    #[test]
    fn dockerd_makes_images_with_moby_and_saves_or_pushes_them_afterwards() {
        let name = "docker.io/library/app:dev";
        let r = default_output()
            .exporter()
            .remote(&dockerd(), name)
            .unwrap();
        assert_eq!(r, RemoteExport::named("moby", name.into(), Back::Nothing));
        let r = parse("type=docker,dest=/tmp/x.tar")
            .exporter()
            .remote(&dockerd(), name)
            .unwrap();
        assert_eq!((r.exporter, r.back), ("moby", Back::Saved));
        let r = parse("type=image,name=reg.example/app:1,push=true")
            .exporter()
            .remote(&dockerd(), name)
            .unwrap();
        assert_eq!((r.exporter, r.back), ("moby", Back::Nothing));
        // dockerd's BuildKit reached as a buildkitd cannot push or save.
        let moby = RemoteKind {
            dockerd: false,
            ..dockerd()
        };
        let err = parse("type=oci,dest=/tmp/x.tar")
            .exporter()
            .remote(&moby, name)
            .unwrap_err();
        assert!(err.to_string().contains("only image exporter"), "{err}");
    }
}
