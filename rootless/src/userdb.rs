//! Resolving a step's `user` in the rootfs' /etc/passwd and /etc/group.

use crate::error::{Result, RootlessError};

/// The identity a step runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (includes `gid`).
    pub groups: Vec<u32>,
    pub home: String,
}

struct PwEnt<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GrEnt<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd(text: &str) -> impl Iterator<Item = PwEnt<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PwEnt {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group(text: &str) -> impl Iterator<Item = GrEnt<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GrEnt {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|s| !s.is_empty()).collect(),
        })
    })
}

/// uid and primary gid of the user `name` in the text of a passwd file.
pub fn lookup_user(passwd_text: &str, name: &str) -> Option<(u32, u32)> {
    passwd(passwd_text)
        .find(|p| p.name == name)
        .map(|p| (p.uid, p.gid))
}

/// gid of the group `name` in the text of a group file.
pub fn lookup_group(group_text: &str, name: &str) -> Option<u32> {
    group(group_text).find(|g| g.name == name).map(|g| g.gid)
}

/// Resolve `spec` (`""`, `name`, `uid`, `uid:gid`, `name:group`) against the text of the
/// rootfs' /etc/passwd and /etc/group (empty strings when the files are missing).
pub fn resolve_user(spec: &str, passwd_text: &str, group_text: &str) -> Result<ExecUser> {
    let err = |msg: String| RootlessError::User {
        spec: spec.to_string(),
        msg,
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let (uid, mut gid, home, name) = if let Ok(uid) = u.parse::<u32>() {
        match passwd(passwd_text).find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, p.home.to_string(), Some(p.name)),
            None => (uid, 0, "/".to_string(), None),
        }
    } else {
        let p = passwd(passwd_text)
            .find(|p| p.name == u)
            .ok_or_else(|| err(format!("no user {u:?} in /etc/passwd")))?;
        (p.uid, p.gid, p.home.to_string(), Some(p.name))
    };
    let groups = match g {
        Some(g) if !g.is_empty() => {
            gid = if let Ok(n) = g.parse::<u32>() {
                n
            } else {
                group(group_text)
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| err(format!("no group {g:?} in /etc/group")))?
            };
            vec![gid]
        }
        _ => {
            let mut gs = vec![gid];
            if let Some(name) = name {
                for e in group(group_text) {
                    if e.members.contains(&name) && !gs.contains(&e.gid) {
                        gs.push(e.gid);
                    }
                }
            }
            gs
        }
    };
    Ok(ExecUser {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "root:x:0:0:root:/root:/bin/bash\n_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken line\n";
    const GR: &str = "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nstaff:x:50:bob,alice\n";

    #[test]
    fn resolves() {
        let r = resolve_user("", PW, GR).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let a = resolve_user("alice", PW, GR).unwrap();
        assert_eq!((a.uid, a.gid), (1000, 1000));
        assert_eq!(a.groups, vec![1000, 100, 50]);
        assert_eq!(a.home, "/home/alice");
        let n = resolve_user("1234", PW, GR).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (1234, 0, "/"));
        let n = resolve_user("1000", PW, GR).unwrap();
        assert_eq!((n.uid, n.gid), (1000, 1000));
        let ug = resolve_user("1000:7", PW, GR).unwrap();
        assert_eq!((ug.uid, ug.gid, ug.groups.clone()), (1000, 7, vec![7]));
        let ng = resolve_user("alice:staff", PW, GR).unwrap();
        assert_eq!((ng.uid, ng.gid), (1000, 50));
        assert!(resolve_user("bob", PW, GR).is_err());
        assert!(resolve_user("alice:nogroup", PW, GR).is_err());
        assert_eq!(lookup_user(PW, "_apt"), Some((42, 65534)));
        assert_eq!(lookup_user(PW, "bob"), None);
        assert_eq!(lookup_group(GR, "staff"), Some(50));
        let none = resolve_user("5:6", "", "").unwrap();
        assert_eq!((none.uid, none.gid), (5, 6));
    }
}
