//! Overlay upper dir → OCI layer tar.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, RootlessError};

const OVL_PREFIX: &str = "user.overlay.";

/// What an upper-dir entry means in a layer.
#[derive(Debug, PartialEq, Eq)]
pub enum UpperKind {
    /// Deleted: emit `.wh.<name>`.
    Whiteout,
    /// Anything else: emit it (opaque dirs get a `.wh..wh..opq` child).
    Entry { opaque: bool },
}

/// Classify an entry of an overlay upper dir (char device 0/0 or `user.overlay.whiteout` →
/// whiteout; `user.overlay.opaque` = `y` → opaque dir).
pub fn classify(path: &Path, md: &std::fs::Metadata) -> UpperKind {
    let ft = md.file_type();
    if ft.is_char_device() && md.rdev() == 0 {
        return UpperKind::Whiteout;
    }
    if ft.is_file()
        && md.len() == 0
        && xattr::get(path, "user.overlay.whiteout")
            .ok()
            .flatten()
            .is_some()
    {
        return UpperKind::Whiteout;
    }
    if ft.is_dir() {
        let opaque = matches!(xattr::get(path, "user.overlay.opaque"), Ok(Some(v)) if v == b"y");
        return UpperKind::Entry { opaque };
    }
    UpperKind::Entry { opaque: false }
}

/// The latest modification time a layer entry may carry (seconds; `i64::MAX`: none).
static MTIME_CLAMP: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MAX);

/// A layer tar as written: its entries, and the SHA-256 (lowercase hex) and size of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffTar {
    pub entries: u64,
    pub sha256: String,
    pub size: u64,
}

/// Write `upper` as an uncompressed OCI layer tar to `out`, hashing it as it is written.
/// With `clamp`, no entry's mtime is later than it (reproducible layers).
pub fn write_diff_tar(upper: &Path, out: &Path, clamp: Option<i64>) -> Result<DiffTar> {
    MTIME_CLAMP.store(
        clamp.unwrap_or(i64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    let f = std::fs::File::create(out).map_err(|e| RootlessError::io(out, e))?;
    let mut b = tar::Builder::new(crate::hashfile::HashingFile::new(f));
    b.follow_symlinks(false);
    let mut n = 0u64;
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(upper, Path::new(""), &mut b, &mut n, &mut links)?;
    let w = b.into_inner().map_err(|e| RootlessError::io(out, e))?;
    let (sha256, size) = w.finish().map_err(|e| RootlessError::io(out, e))?;
    Ok(DiffTar {
        entries: n,
        sha256,
        size,
    })
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(|e| RootlessError::io(dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| RootlessError::io(dir, e))?;
    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(v)
}

fn base_header(md: &std::fs::Metadata, et: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(et);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid() as u64);
    h.set_gid(md.gid() as u64);
    let clamp = MTIME_CLAMP.load(std::sync::atomic::Ordering::Relaxed);
    h.set_mtime(md.mtime().min(clamp).max(0) as u64);
    h.set_size(0);
    h
}

fn add_xattrs<W: Write>(b: &mut tar::Builder<W>, path: &Path) -> Result<()> {
    let Ok(names) = xattr::list(path) else {
        return Ok(());
    };
    let mut kv: Vec<(String, Vec<u8>)> = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with(OVL_PREFIX) {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(path, &name) {
            kv.push((format!("SCHILY.xattr.{name}"), v));
        }
    }
    if kv.is_empty() {
        return Ok(());
    }
    kv.sort();
    b.append_pax_extensions(kv.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| RootlessError::io(path, e))
}

fn walk(
    dir: &Path,
    rel: &Path,
    b: &mut tar::Builder<crate::hashfile::HashingFile>,
    n: &mut u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    for name in sorted_children(dir)? {
        let p = dir.join(&name);
        let r = rel.join(&name);
        let md = std::fs::symlink_metadata(&p).map_err(|e| RootlessError::io(&p, e))?;
        let io = |e: std::io::Error| RootlessError::io(&p, e);
        match classify(&p, &md) {
            UpperKind::Whiteout => {
                let mut wh = OsString::from(".wh.");
                wh.push(&name);
                let mut h = base_header(&md, tar::EntryType::Regular);
                h.set_mode(0o644);
                b.append_data(&mut h, rel.join(wh), std::io::empty())
                    .map_err(io)?;
                *n += 1;
            }
            UpperKind::Entry { opaque } => {
                let ft = md.file_type();
                add_xattrs(b, &p)?;
                if ft.is_dir() {
                    let mut h = base_header(&md, tar::EntryType::Directory);
                    let mut rs = r.clone().into_os_string();
                    rs.push("/");
                    b.append_data(&mut h, rs, std::io::empty()).map_err(io)?;
                    *n += 1;
                    if opaque {
                        let mut h = base_header(&md, tar::EntryType::Regular);
                        h.set_mode(0o644);
                        b.append_data(&mut h, r.join(".wh..wh..opq"), std::io::empty())
                            .map_err(io)?;
                        *n += 1;
                    }
                    walk(&p, &r, b, n, links)?;
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(&p).map_err(io)?;
                    let mut h = base_header(&md, tar::EntryType::Symlink);
                    b.append_link(&mut h, &r, &target).map_err(io)?;
                    *n += 1;
                } else if ft.is_file() {
                    if md.nlink() > 1 {
                        let key = (md.dev(), md.ino());
                        if let Some(first) = links.get(&key) {
                            let mut h = base_header(&md, tar::EntryType::Link);
                            b.append_link(&mut h, &r, first).map_err(io)?;
                            *n += 1;
                            continue;
                        }
                        links.insert(key, r.clone());
                    }
                    let mut h = base_header(&md, tar::EntryType::Regular);
                    h.set_size(md.len());
                    let mut f = std::fs::File::open(&p).map_err(io)?;
                    // The header (and a long name's entries) through the builder, then the
                    // content read straight into the layer's buffer and padded to a block.
                    b.append_data(&mut h, &r, std::io::empty()).map_err(io)?;
                    let w = b.get_mut();
                    w.copy_in(&mut f, md.len()).map_err(io)?;
                    let pad = (512 - md.len() % 512) % 512;
                    w.write_all(&[0u8; 512][..pad as usize]).map_err(io)?;
                    *n += 1;
                } else if ft.is_fifo() {
                    let mut h = base_header(&md, tar::EntryType::Fifo);
                    b.append_data(&mut h, &r, std::io::empty()).map_err(io)?;
                    *n += 1;
                } else if ft.is_char_device() || ft.is_block_device() {
                    let et = if ft.is_char_device() {
                        tar::EntryType::Char
                    } else {
                        tar::EntryType::Block
                    };
                    let mut h = base_header(&md, et);
                    let rdev = md.rdev();
                    let _ = h.set_device_major(libc::major(rdev));
                    let _ = h.set_device_minor(libc::minor(rdev));
                    b.append_data(&mut h, &r, std::io::empty()).map_err(io)?;
                    *n += 1;
                }
                // sockets are not representable: skipped
            }
        }
    }
    Ok(())
}
