//! What a local source's content checksum covered, entry by entry: kept beside the source's
//! stat cache for its last two checksums, so that `--explain-cache` can name the file of a
//! context that changed, and what changed about it (added, removed, content, mode, link
//! target). Written only when a source's checksum is new; a missing or damaged manifest only
//! makes an explanation less precise.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One entry of a context as its checksum saw it (a view into a [`Listing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEntry<'a> {
    /// Relative to the source's root.
    pub path: &'a [u8],
    /// `st_mode`: the file type and permission bits.
    pub mode: u32,
    /// A file's content hash (hex), a symlink's target, nothing for a directory.
    pub what: &'a [u8],
}

/// What a context's checksum covered, entry by entry in the walk's order, held as the
/// manifest file keeps it: the entries encoded one after another, with the place of each (a
/// context of thousands of files is a few allocations, not two per file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Per entry: the path's length (u32), the path, the mode (u32), what's length (u32),
    /// what (little-endian).
    bytes: Vec<u8>,
    /// Per entry: where its path begins in `bytes`, the path's length and what's length.
    places: Vec<(usize, u32, u32)>,
}

impl Listing {
    /// Room for `entries` more entries.
    pub fn reserve(&mut self, entries: usize) {
        self.bytes.reserve(entries * 96);
        self.places.reserve(entries);
    }

    /// Appends an entry (left out if its path or what does not fit in 4 GiB).
    pub fn push(&mut self, path: &[u8], mode: u32, what: &[u8]) {
        let (Ok(pl), Ok(wl)) = (u32::try_from(path.len()), u32::try_from(what.len())) else {
            return;
        };
        self.bytes.extend_from_slice(&pl.to_le_bytes());
        let at = self.bytes.len();
        self.bytes.extend_from_slice(path);
        self.bytes.extend_from_slice(&mode.to_le_bytes());
        self.bytes.extend_from_slice(&wl.to_le_bytes());
        self.bytes.extend_from_slice(what);
        self.places.push((at, pl, wl));
    }

    fn entry(&self, &(at, pl, wl): &(usize, u32, u32)) -> FileEntry<'_> {
        let end = at + pl as usize;
        let mut mode = [0u8; 4];
        mode.copy_from_slice(&self.bytes[end..end + 4]);
        FileEntry {
            path: &self.bytes[at..end],
            mode: u32::from_le_bytes(mode),
            what: &self.bytes[end + 8..end + 8 + wl as usize],
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = FileEntry<'_>> + '_ {
        self.places.iter().map(|p| self.entry(p))
    }

    /// The listing of encoded entries (a manifest's body), checked whole.
    fn decode(bytes: &[u8]) -> Option<Listing> {
        fn u32_at(b: &[u8], at: usize) -> Option<u32> {
            Some(u32::from_le_bytes(
                b.get(at..at.checked_add(4)?)?.try_into().ok()?,
            ))
        }
        let mut places = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let pl = u32_at(bytes, at)?;
            let path = at + 4;
            let mode = path.checked_add(pl as usize)?;
            let wl = u32_at(bytes, mode + 4)?;
            let end = (mode + 8).checked_add(wl as usize)?;
            if end > bytes.len() {
                return None;
            }
            places.push((path, pl, wl));
            at = end;
        }
        Some(Listing {
            bytes: bytes.to_vec(),
            places,
        })
    }
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

fn encode(checksum: &str, listing: &Listing) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + checksum.len() + 1 + listing.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(checksum.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&listing.bytes);
    out
}

fn decode(bytes: &[u8], checksum: &str) -> Option<Listing> {
    let b = bytes.strip_prefix(MAGIC)?;
    let b = b.strip_prefix(checksum.as_bytes())?;
    Listing::decode(b.strip_prefix(b"\n")?)
}

/// Keeps `entries` as the manifest of `checksum` for the source whose stat cache is `stat`,
/// unless it already is the current one; the one it replaces becomes the previous one. Best
/// effort: a manifest that is not written only makes an explanation vaguer.
pub fn remember(stat: &Path, checksum: &str, entries: &Listing) {
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

/// The file of keys by paths kept beside a stat cache (see [`selected_recall`]).
fn selected(stat: &Path) -> PathBuf {
    stat.with_extension("selected")
}

/// At most this many keys by paths are kept per source (a build file's copies of one context).
const SELECTED_KEPT: usize = 64;

/// A key by paths (`Ctx::selected_key`) of the source whose stat cache is `stat`, computed
/// earlier for `checksum` and the selection `id`. Such a key is a function of the listing,
/// which the checksum covers whole, and of the paths: a rebuild of an unchanged context finds
/// it here instead of hashing every entry under those paths again. The file holds the
/// checksum on its first line, then one `id key` line per selection.
pub fn selected_recall(stat: &Path, checksum: &str, id: &str) -> Option<String> {
    let text = fs::read_to_string(selected(stat)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != checksum {
        return None;
    }
    lines.find_map(|l| {
        let (i, key) = l.split_once(' ')?;
        (i == id && !key.is_empty()).then(|| key.to_string())
    })
}

/// Keeps `key` for [`selected_recall`]; the keys of another checksum are dropped. Best
/// effort: a key not kept is computed again.
pub fn selected_remember(stat: &Path, checksum: &str, id: &str, key: &str) {
    if checksum.contains(['\n', ' ']) || id.contains(['\n', ' ']) || key.contains(['\n', ' ']) {
        return;
    }
    let path = selected(stat);
    let mut kept: Vec<String> = Vec::new();
    if let Ok(text) = fs::read_to_string(&path) {
        let mut lines = text.lines();
        if lines.next() == Some(checksum) {
            kept = lines
                .filter(|l| l.split_once(' ').is_some_and(|(i, _)| i != id))
                .map(str::to_string)
                .collect();
        }
    }
    kept.push(format!("{id} {key}"));
    let skip = kept.len().saturating_sub(SELECTED_KEPT);
    let mut text = format!("{checksum}\n");
    for l in &kept[skip..] {
        text.push_str(l);
        text.push('\n');
    }
    if let Some(parent) = path.parent()
        && fs::create_dir_all(parent).is_err()
    {
        return;
    }
    let _ = crate::fsutil::write_atomic(&path, text.as_bytes(), false);
}

/// The manifest of `checksum` for the source whose stat cache is `stat`, if it is one of the
/// two kept.
pub fn recall(stat: &Path, checksum: &str) -> Option<Listing> {
    [current(stat), previous(stat)]
        .iter()
        .find_map(|p| decode(&fs::read(p).ok()?, checksum))
}

/// The kept manifests other than `checksum`'s, with the checksum each is for: the contexts a
/// new copy of this source may take unchanged files from.
pub fn others(stat: &Path, checksum: &str) -> Vec<(String, Listing)> {
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
pub fn differences(old: &Listing, new: &Listing, limit: usize) -> Vec<String> {
    let before: BTreeMap<&[u8], FileEntry> = old.iter().map(|e| (e.path, e)).collect();
    let after: BTreeMap<&[u8], FileEntry> = new.iter().map(|e| (e.path, e)).collect();
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
                            String::from_utf8_lossy(a.what),
                            String::from_utf8_lossy(b.what)
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

    fn listing(entries: &[(&str, u32, &str)]) -> Listing {
        let mut l = Listing::default();
        for (path, mode, what) in entries {
            l.push(path.as_bytes(), *mode, what.as_bytes());
        }
        l
    }

    #[test]
    fn keys_by_paths_are_kept_for_the_checksum_they_were_computed_for() {
        let dir = tempfile::tempdir().expect("tmp");
        let stat = dir.path().join("abc.stat");
        assert_eq!(selected_recall(&stat, "sha256:1", "id1"), None);
        selected_remember(&stat, "sha256:1", "id1", "paths:aa");
        selected_remember(&stat, "sha256:1", "id2", "paths:bb");
        selected_remember(&stat, "sha256:1", "id1", "paths:cc");
        assert_eq!(
            selected_recall(&stat, "sha256:1", "id1").as_deref(),
            Some("paths:cc")
        );
        assert_eq!(
            selected_recall(&stat, "sha256:1", "id2").as_deref(),
            Some("paths:bb")
        );
        assert_eq!(selected_recall(&stat, "sha256:1", "id3"), None);
        // Another checksum (the context changed): the old keys are not answers for it, and
        // are dropped once it keeps its own.
        assert_eq!(selected_recall(&stat, "sha256:2", "id1"), None);
        selected_remember(&stat, "sha256:2", "id1", "paths:dd");
        assert_eq!(
            selected_recall(&stat, "sha256:2", "id1").as_deref(),
            Some("paths:dd")
        );
        assert_eq!(selected_recall(&stat, "sha256:1", "id2"), None);
        // Nothing that would break the file's lines is kept; a damaged file answers nothing.
        selected_remember(&stat, "sha256:2", "id 4", "paths:ee");
        assert_eq!(selected_recall(&stat, "sha256:2", "id"), None);
        std::fs::write(stat.with_extension("selected"), b"\xff\xfe").unwrap();
        assert_eq!(selected_recall(&stat, "sha256:2", "id1"), None);
        // A bounded number per checksum, the newest kept.
        for i in 0..SELECTED_KEPT + 5 {
            selected_remember(&stat, "sha256:3", &format!("n{i}"), &format!("paths:{i}"));
        }
        assert_eq!(selected_recall(&stat, "sha256:3", "n0"), None);
        let last = SELECTED_KEPT + 4;
        assert_eq!(
            selected_recall(&stat, "sha256:3", &format!("n{last}")),
            Some(format!("paths:{last}"))
        );
    }

    #[test]
    fn the_last_two_manifests_are_kept_and_found_by_checksum() {
        let dir = tempfile::tempdir().expect("tmp");
        let stat = dir.path().join("abc.stat");
        let one = listing(&[("a", 0o100644, "11"), ("d", 0o040755, "")]);
        let two = listing(&[("a", 0o100755, "22")]);
        remember(&stat, "sha256:1", &one);
        remember(&stat, "sha256:2", &two);
        remember(&stat, "sha256:2", &two);
        assert_eq!(recall(&stat, "sha256:1"), Some(one.clone()));
        assert_eq!(recall(&stat, "sha256:2"), Some(two));
        assert_eq!(
            recall(&stat, "sha256:1").map(|l| l.iter().map(|e| e.mode).collect::<Vec<_>>()),
            Some(vec![0o100644, 0o040755])
        );
        remember(&stat, "sha256:3", &Listing::default());
        assert_eq!(recall(&stat, "sha256:1"), None);
        assert_eq!(recall(&stat, "sha256:3"), Some(Listing::default()));
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
        let old = listing(&[
            ("a.txt", 0o100644, "11"),
            ("run.sh", 0o100644, "22"),
            ("gone", 0o100644, "33"),
            ("l", 0o120777, "x"),
            ("d", 0o040755, ""),
            ("same", 0o100644, "44"),
        ]);
        let new = listing(&[
            ("a.txt", 0o100644, "12"),
            ("run.sh", 0o100755, "22"),
            ("l", 0o120777, "y"),
            ("d", 0o100644, "55"),
            ("new", 0o100600, "66"),
            ("same", 0o100644, "44"),
        ]);
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
