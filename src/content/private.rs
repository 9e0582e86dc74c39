//! The store is its user's alone: its root directory is mode 0700, so no other local user can
//! reach a blob, a snapshot (setuid files of images keep their bits there) or an environment.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates the store root `root` (mode 0700) or makes an existing one private: a wider mode is
/// narrowed to 0700. A root that is not a directory, or that another user owns, is refused
/// with a message saying why.
pub fn private_root(root: &Path) -> io::Result<()> {
    if let Some(parent) = root.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(root)?;
    if !md.is_dir() {
        return Err(io::Error::other(
            "the store root is not a directory (a symlink or a file is not taken)",
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(io::Error::other(format!(
            "the store root belongs to uid {}, not to you (uid {me}); \
             use a store of your own (--root, $ENVKIT_ROOT)",
            md.uid()
        )));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            io::Error::other(format!(
                "its mode {:o} lets other users in, and making it 0700 failed: {e}",
                md.mode() & 0o7777
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_root_is_private_and_a_wide_one_is_narrowed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("x/store");
        private_root(&r).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&r), 0o700);
        std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_root(&r).unwrap();
        assert_eq!(mode(&r), 0o700);
        let f = d.path().join("file");
        std::fs::write(&f, "").unwrap();
        assert!(private_root(&f).is_err());
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&r, &l).unwrap();
        assert!(private_root(&l).is_err());
    }
}
