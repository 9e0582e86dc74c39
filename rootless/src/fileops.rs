//! File actions on an overlay (BuildKit FileOp semantics) and tree removal.

use std::path::Path;

use crate::error::{Result, RootlessError};
use crate::proto::FileAction;

/// Delete a tree (as uid 0 of the namespace, so subordinate-owned files go too).
pub fn remove_all(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RootlessError::io(path, e)),
        Ok(_) => {}
    }
    make_writable(path);
    crate::unpack::remove_any(path).map_err(|e| RootlessError::io(path, e))
}

/// Directories without write/exec bits block removal even for namespace root on some trees
/// (e.g. files of unmapped ids are not ours): add u+rwx to dirs first.
fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::symlink_metadata(p)
        && md.is_dir()
    {
        let mode = md.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

pub fn run_actions(
    lowers: &[std::path::PathBuf],
    upper: &Path,
    work: &Path,
    actions: &[FileAction],
) -> Result<()> {
    let _ = (lowers, upper, work, actions);
    Err(RootlessError::Invalid(
        "file actions: not implemented yet".into(),
    ))
}
