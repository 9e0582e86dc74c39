//! Subordinate id ranges (/etc/subuid, /etc/subgid).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, RootlessError};

/// The ids the helper's user namespace maps: 0 → `uid`/`gid`, 1..=count → the subordinate range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    pub subuid_start: u32,
    pub subuid_count: u32,
    pub subgid_start: u32,
    pub subgid_count: u32,
}

impl IdMap {
    /// The current user's ids and its first ranges in /etc/subuid and /etc/subgid, matched by
    /// user name or by uid.
    pub fn for_current_user() -> Result<IdMap> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        Self::from_files(
            uid,
            gid,
            &name,
            Path::new("/etc/subuid"),
            Path::new("/etc/subgid"),
        )
    }

    /// Like [`IdMap::for_current_user`] with explicit ids and files (tests).
    pub fn from_files(
        uid: u32,
        gid: u32,
        name: &str,
        subuid: &Path,
        subgid: &Path,
    ) -> Result<IdMap> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| RootlessError::io(p, e));
        let missing = |kind, file: &Path| RootlessError::NoSubIds {
            kind,
            user: if name.is_empty() {
                format!("#{uid}")
            } else {
                name.to_string()
            },
            uid,
            file: file.to_path_buf(),
        };
        let subuid_text = match read(subuid) {
            Ok(t) => t,
            Err(RootlessError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(missing("uid", subuid));
            }
            Err(e) => return Err(e),
        };
        let subgid_text = match read(subgid) {
            Ok(t) => t,
            Err(RootlessError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(missing("gid", subgid));
            }
            Err(e) => return Err(e),
        };
        let (subuid_start, subuid_count) =
            find_range(&subuid_text, subuid, name, uid)?.ok_or_else(|| missing("uid", subuid))?;
        let (subgid_start, subgid_count) =
            find_range(&subgid_text, subgid, name, uid)?.ok_or_else(|| missing("gid", subgid))?;
        Ok(IdMap {
            uid,
            gid,
            subuid_start,
            subuid_count,
            subgid_start,
            subgid_count,
        })
    }

    /// Translate an id inside the namespace to the host id (None if unmapped).
    pub fn host_uid(&self, ns_uid: u32) -> Option<u32> {
        map_id(ns_uid, self.uid, self.subuid_start, self.subuid_count)
    }

    /// Translate a gid inside the namespace to the host gid (None if unmapped).
    pub fn host_gid(&self, ns_gid: u32) -> Option<u32> {
        map_id(ns_gid, self.gid, self.subgid_start, self.subgid_count)
    }
}

fn map_id(ns: u32, own: u32, start: u32, count: u32) -> Option<u32> {
    if ns == 0 {
        Some(own)
    } else if ns <= count {
        start.checked_add(ns - 1)
    } else {
        None
    }
}

/// First `name_or_uid:start:count` line matching the user. Lines that do not parse are errors
/// only when they name this user.
pub(crate) fn find_range(
    text: &str,
    file: &Path,
    name: &str,
    uid: u32,
) -> Result<Option<(u32, u32)>> {
    let uid_s = uid.to_string();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split(':');
        let who = it.next().unwrap_or("");
        if who != uid_s && (name.is_empty() || who != name) {
            continue;
        }
        let bad = |msg: &str| RootlessError::Parse {
            file: PathBuf::from(file),
            line: i + 1,
            msg: format!("{msg}: {line:?}"),
        };
        let start: u32 = it
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad start"))?;
        let count: u32 = it
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad count"))?;
        if count == 0 {
            continue;
        }
        return Ok(Some((start, count)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_by_name_and_uid() {
        let f = Path::new("/etc/subuid");
        let text = "# comment\nalice:100000:65536\n1001:200000:1000\n";
        assert_eq!(
            find_range(text, f, "alice", 1000).ok().flatten(),
            Some((100000, 65536))
        );
        assert_eq!(
            find_range(text, f, "bob", 1001).ok().flatten(),
            Some((200000, 1000))
        );
        assert_eq!(find_range(text, f, "carol", 5).ok().flatten(), None);
        assert!(find_range("alice:x:1\n", f, "alice", 1).is_err());
    }

    #[test]
    fn missing_range_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let su = dir.path().join("subuid");
        let sg = dir.path().join("subgid");
        std::fs::write(&su, "other:1:2\n").unwrap();
        std::fs::write(&sg, "me:1:2\n").unwrap();
        let err = IdMap::from_files(7, 7, "me", &su, &sg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("subuid"), "{err}");
        let m = IdMap::from_files(
            7, 7, "other", &su, &su, // same file for both
        )
        .unwrap();
        assert_eq!(m.host_uid(0), Some(7));
        assert_eq!(m.host_uid(1), Some(1));
        assert_eq!(m.host_uid(2), Some(2));
        assert_eq!(m.host_uid(3), None);
    }
}
