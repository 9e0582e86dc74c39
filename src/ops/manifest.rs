//! What a local source's content checksum covered, entry by entry: kept beside the source's
//! stat cache for its last two checksums, so that `--explain-cache` can name the file of a
//! context that changed, and what changed about it (added, removed, content, mode, link
//! target). Written only when a source's checksum is new; a missing or damaged manifest only
//! makes an explanation less precise.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One entry of a context as its checksum saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the source's root.
    pub path: Vec<u8>,
    /// `st_mode`: the file type and permission bits.
    pub mode: u32,
    /// A file's content hash (hex), a symlink's target, nothing for a directory.
    pub what: Vec<u8>,
}

const MAGIC: &[u8] = b"envkit context manifest 1\n";

fn current(stat: &Path) -> PathBuf {
    stat.with_extension("manifest")
}

fn previous(stat: &Path) -> PathBuf {
    stat.with_extension("manifest.prev")
}

/// The checksum a manifest file is for (its header), reading nothing else.
fn header(path: &Path) -> Option<String> {
    let mut f = fs::File::open(path).ok()?;
    let mut buf = [0u8; 160];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    let rest = buf[..n].strip_prefix(MAGIC)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

fn encode(checksum: &str, entries: &[FileEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 80 + entries.len() * 100);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(checksum.as_bytes());
    out.push(b'\n');
    for e in entries {
        let (Ok(pl), Ok(wl)) = (u32::try_from(e.path.len()), u32::try_from(e.what.len())) else {
            continue;
        };
        out.extend_from_slice(&pl.to_le_bytes());
        out.extend_from_slice(&e.path);
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&wl.to_le_bytes());
        out.extend_from_slice(&e.what);
    }
    out
}

fn decode(bytes: &[u8], checksum: &str) -> Option<Vec<FileEntry>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn u32_of(b: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?))
    }
    let mut b = bytes.strip_prefix(MAGIC)?;
    let line = take(&mut b, checksum.len() + 1)?;
    if &line[..checksum.len()] != checksum.as_bytes() || line[checksum.len()] != b'\n' {
        return None;
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let pl = usize::try_from(u32_of(&mut b)?).ok()?;
        let path = take(&mut b, pl)?.to_vec();
        let mode = u32_of(&mut b)?;
        let wl = usize::try_from(u32_of(&mut b)?).ok()?;
        let what = take(&mut b, wl)?.to_vec();
        out.push(FileEntry { path, mode, what });
    }
    Some(out)
}

/// Keeps `entries` as the manifest of `checksum` for the source whose stat cache is `stat`,
/// unless it already is the current one; the one it replaces becomes the previous one. Best
/// effort: a manifest that is not written only makes an explanation vaguer.
pub fn remember(stat: &Path, checksum: &str, entries: &[FileEntry]) {
    let cur = current(stat);
    if header(&cur).as_deref() == Some(checksum) {
        return;
    }
    if let Some(parent) = cur.parent()
        && fs::create_dir_all(parent).is_err()
    {
        return;
    }
    if cur.exists() {
        let _ = fs::rename(&cur, previous(stat));
    }
    let _ = crate::fsutil::write_atomic(&cur, &encode(checksum, entries), false);
}

/// The manifest of `checksum` for the source whose stat cache is `stat`, if it is one of the
/// two kept.
pub fn recall(stat: &Path, checksum: &str) -> Option<Vec<FileEntry>> {
    [current(stat), previous(stat)]
        .iter()
        .find_map(|p| decode(&fs::read(p).ok()?, checksum))
}

/// The kept manifests other than `checksum`'s, with the checksum each is for: the contexts a
/// new copy of this source may take unchanged files from.
pub fn others(stat: &Path, checksum: &str) -> Vec<(String, Vec<FileEntry>)> {
    [current(stat), previous(stat)]
        .iter()
        .filter_map(|p| {
            let sum = header(p).filter(|h| h != checksum)?;
            let entries = decode(&fs::read(p).ok()?, &sum)?;
            Some((sum, entries))
        })
        .collect()
}

fn kind(mode: u32) -> &'static str {
    match mode & 0o170000 {
        0o040000 => "a directory",
        0o120000 => "a symlink",
        0o100000 => "a file",
        _ => "a special file",
    }
}

/// What changed from `old` to `new`, one line per entry (at most `limit` lines, then how
/// many more), in path order.
pub fn differences(old: &[FileEntry], new: &[FileEntry], limit: usize) -> Vec<String> {
    let before: BTreeMap<&[u8], &FileEntry> = old.iter().map(|e| (&e.path[..], e)).collect();
    let after: BTreeMap<&[u8], &FileEntry> = new.iter().map(|e| (&e.path[..], e)).collect();
    let mut lines = Vec::new();
    let mut paths: Vec<&[u8]> = before.keys().chain(after.keys()).copied().collect();
    paths.sort_unstable();
    paths.dedup();
    for p in paths {
        let name = String::from_utf8_lossy(p);
        let line = match (before.get(p), after.get(p)) {
            (None, Some(e)) => format!("{name}: added ({})", kind(e.mode)),
            (Some(e), None) => format!("{name}: removed ({})", kind(e.mode)),
            (Some(a), Some(b)) if a.mode & 0o170000 != b.mode & 0o170000 => {
                format!("{name}: now {} (was {})", kind(b.mode), kind(a.mode))
            }
            (Some(a), Some(b)) => {
                let mut what = Vec::new();
                if a.what != b.what {
                    what.push(if b.mode & 0o170000 == 0o120000 {
                        format!(
                            "link target {} → {}",
                            String::from_utf8_lossy(&a.what),
                            String::from_utf8_lossy(&b.what)
                        )
                    } else {
                        "content".to_string()
                    });
                }
                if a.mode != b.mode {
                    what.push(format!(
                        "mode {:04o} → {:04o}",
                        a.mode & 0o7777,
                        b.mode & 0o7777
                    ));
                }
                if what.is_empty() {
                    continue;
                }
                format!("{name}: {}", what.join(", "))
            }
            (None, None) => continue,
        };
        lines.push(line);
    }
    if lines.len() > limit {
        let more = lines.len() - limit;
        lines.truncate(limit);
        lines.push(format!("… and {more} more"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, mode: u32, what: &str) -> FileEntry {
        FileEntry {
            path: path.as_bytes().to_vec(),
            mode,
            what: what.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_last_two_manifests_are_kept_and_found_by_checksum() {
        let dir = tempfile::tempdir().expect("tmp");
        let stat = dir.path().join("abc.stat");
        let one = vec![e("a", 0o100644, "11"), e("d", 0o040755, "")];
        let two = vec![e("a", 0o100755, "22")];
        remember(&stat, "sha256:1", &one);
        remember(&stat, "sha256:2", &two);
        remember(&stat, "sha256:2", &two);
        assert_eq!(recall(&stat, "sha256:1"), Some(one.clone()));
        assert_eq!(recall(&stat, "sha256:2"), Some(two));
        remember(&stat, "sha256:3", &[]);
        assert_eq!(recall(&stat, "sha256:1"), None);
        assert_eq!(recall(&stat, "sha256:3"), Some(vec![]));
        // A damaged file is no manifest.
        std::fs::write(
            dir.path().join("abc.manifest"),
            b"envkit context manifest 1\nsha256:3\n\x09",
        )
        .expect("write");
        assert_eq!(recall(&stat, "sha256:3"), None);
    }

    #[test]
    fn differences_name_the_file_and_what_changed() {
        let old = vec![
            e("a.txt", 0o100644, "11"),
            e("run.sh", 0o100644, "22"),
            e("gone", 0o100644, "33"),
            e("l", 0o120777, "x"),
            e("d", 0o040755, ""),
            e("same", 0o100644, "44"),
        ];
        let new = vec![
            e("a.txt", 0o100644, "12"),
            e("run.sh", 0o100755, "22"),
            e("l", 0o120777, "y"),
            e("d", 0o100644, "55"),
            e("new", 0o100600, "66"),
            e("same", 0o100644, "44"),
        ];
        assert_eq!(
            differences(&old, &new, 10),
            vec![
                "a.txt: content",
                "d: now a file (was a directory)",
                "gone: removed (a file)",
                "l: link target x → y",
                "new: added (a file)",
                "run.sh: mode 0644 → 0755",
            ]
        );
        assert_eq!(
            differences(&old, &new, 2).last().map(String::as_str),
            Some("… and 4 more")
        );
    }
}
