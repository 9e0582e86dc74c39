//! Shared by the hostile-tree tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything under `top` except the paths in `skip`: path → a description that changes when
/// the entry does (type, mode, contents, inode and link count; a link's target).
pub fn survey(top: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if skip.contains(&p.as_path()) {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let what = if md.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).ok())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o} links {}", md.mode(), md.nlink())
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                format!(
                    "file {:o} {} {:?} ino {} links {}",
                    md.mode(),
                    md.len(),
                    bytes,
                    md.ino(),
                    md.nlink()
                )
            };
            out.insert(p, what);
        }
    }
    out
}
