//! A generated adversarial suite (fixed seed): random trees of 1–3 layers — chains of relative
//! and absolute symlinks with `..`, dangling links, hardlinks, whiteouts and opaque markers —
//! then random file actions (copy, mkdir, mkfile, rm, symlink) and mount-selector look-ups over
//! them. For every case nothing outside the root may change (contents, modes, link counts),
//! no host inode may gain a link, every look-up must land inside the root, and nothing may
//! panic. Errors are fine: a hostile tree may be refused.

mod common;

use std::path::Path;

use common::survey;
use rootless::fsroot::{DotDot, Root};
use rootless::{Compression, CopyAction, CopySource, FileAction, LayerFile};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

const NAMES: [&str; 6] = ["a", "b", "esc", "l", "x", "keep"];
const TARGETS: [&str; 14] = [
    "@OUT@",
    "@OUT@/sub",
    "../..",
    "../../../outside",
    "x/../esc",
    "/",
    "a/../../..",
    "b",
    "a/b",
    "/a/../esc",
    "..",
    ".",
    "missing/../../..",
    "l/../..",
];

fn path(r: &mut Rng) -> String {
    let depth = 1 + r.below(3);
    let mut v = Vec::new();
    for _ in 0..depth {
        v.push(match r.below(10) {
            0 => "..",
            1 => ".",
            _ => r.pick(&NAMES),
        });
    }
    v.join("/")
}

fn target(r: &mut Rng, out: &Path) -> String {
    let t = r.pick(&TARGETS);
    t.replace("@OUT@", &out.to_string_lossy())
}

/// A tar layer of random entries; names are written raw (the unpacker must judge them).
fn layer(r: &mut Rng, out: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for _ in 0..(1 + r.below(8)) {
        let mut p = path(r);
        let mut h = tar::Header::new_gnu();
        let mut data: &[u8] = b"";
        let mut link = String::new();
        match r.below(8) {
            0 | 1 => {
                h.set_entry_type(tar::EntryType::Symlink);
                link = target(r, out);
            }
            2 => h.set_entry_type(tar::EntryType::Directory),
            3 => {
                h.set_entry_type(tar::EntryType::Link);
                link = match r.below(3) {
                    0 => format!("{}/keep", out.to_string_lossy()),
                    _ => path(r),
                };
            }
            4 => {
                h.set_entry_type(tar::EntryType::Regular);
                p = format!("{}/.wh.{}", path(r), r.pick(&NAMES));
            }
            5 => {
                h.set_entry_type(tar::EntryType::Regular);
                p = format!("{}/.wh..wh..opq", path(r));
            }
            _ => {
                h.set_entry_type(tar::EntryType::Regular);
                data = b"generated";
            }
        }
        h.set_mode(0o755);
        h.set_uid(nix::unistd::getuid().as_raw() as u64);
        h.set_gid(nix::unistd::getgid().as_raw() as u64);
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().expect("gnu header");
        let n = p.len().min(99);
        gnu.name[..n].copy_from_slice(&p.as_bytes()[..n]);
        let n = link.len().min(99);
        gnu.linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar")
}

fn action(r: &mut Rng, out: &Path, src_root: &Path) -> FileAction {
    match r.below(5) {
        0 => FileAction::Mkdir {
            path: path(r),
            mode: 0o755,
            make_parents: r.below(2) == 0,
            owner: None,
            timestamp: None,
        },
        1 => FileAction::Mkfile {
            path: path(r),
            mode: 0o644,
            data: b"mkfile".to_vec(),
            owner: None,
            timestamp: Some(0),
        },
        2 => FileAction::Rm {
            path: if r.below(3) == 0 {
                format!("{}/*", path(r))
            } else {
                path(r)
            },
            allow_not_found: true,
            allow_wildcard: true,
        },
        3 => FileAction::Symlink {
            target: target(r, out),
            path: path(r),
            owner: None,
            timestamp: None,
        },
        _ => FileAction::Copy(Box::new(CopyAction {
            src_root: CopySource::Dir(src_root.to_path_buf()),
            src: path(r),
            dest: path(r),
            owner: None,
            mode: None,
            mode_str: None,
            follow_symlinks: r.below(2) == 0,
            dir_copy_contents: r.below(2) == 0,
            create_dest_path: r.below(2) == 0,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            always_replace_existing: r.below(2) == 0,
            unpack_archives: false,
            required_paths: Vec::new(),
            timestamp: None,
        })),
    }
}

fn one_case(seed: u64) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path().canonicalize().expect("canonical");
    let root = t.join("a/b/root");
    let src = t.join("a/b/src");
    let outside = t.join("outside");
    for d in [&root, &src, &outside.join("sub")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(outside.join("keep"), b"keep").expect("keep");
    std::fs::write(outside.join("sub/keep"), b"keep").expect("keep");
    std::fs::write(t.join("a/keep"), b"keep").expect("keep");
    let before = survey(&t, &[&root, &src]);
    let nlayers = 1 + r.below(3);
    let mut files = Vec::new();
    for i in 0..nlayers {
        let data = layer(&mut r, &outside);
        let f = t.join(format!("a/layer{i}"));
        std::fs::write(&f, data).expect("layer");
        files.push(LayerFile {
            path: f,
            compression: Compression::None,
        });
    }
    // The same layers make the tree file actions copy from.
    let _ = rootless::unpack_layers(&files, &src, None);
    for l in &files {
        let _ = rootless::unpack_layers(std::slice::from_ref(l), &root, None);
    }
    let actions: Vec<FileAction> = (0..(1 + r.below(4)))
        .map(|_| action(&mut r, &outside, &src))
        .collect();
    for a in &actions {
        let _ = rootless::apply_actions(&root, std::slice::from_ref(a));
    }
    // Mount selectors: what a look-up finds lies inside the root, by real directories.
    let fs = Root::open(&root).expect("open root");
    for _ in 0..4 {
        let p = path(&mut r);
        // The walk agrees with the kernel's openat2(RESOLVE_IN_ROOT) on what is there.
        if let (Ok(k), Ok(w)) = (fs.open_path(&p, true), fs.entry(&p, true, DotDot::Clamp)) {
            let id = |st: nix::sys::stat::FileStat| (st.st_dev, st.st_ino);
            let k = k.and_then(|fd| nix::sys::stat::fstat(&fd).ok()).map(id);
            let w = w.and_then(|e| e.stat().ok().flatten()).map(id);
            assert_eq!(k, w, "seed {seed}: the walk and openat2 disagree on {p}");
        }
        for dd in [DotDot::Clamp, DotDot::Reject] {
            if let Ok(Some(e)) = fs.entry(&p, true, dd) {
                let host = root.join(e.rel());
                let dir = if e.is_dot() {
                    host.as_path()
                } else {
                    host.parent().unwrap_or(&root)
                };
                if let Ok(c) = dir.canonicalize() {
                    assert!(
                        c.starts_with(&root),
                        "seed {seed}: {p} resolved to {} outside the root",
                        c.display()
                    );
                }
            }
        }
    }
    for l in &files {
        std::fs::remove_file(&l.path).expect("remove layer");
    }
    let after = survey(&t, &[&root, &src]);
    assert_eq!(
        before, after,
        "seed {seed}: something outside the root changed (actions {actions:?})"
    );
}

#[test]
fn random_trees_and_actions_stay_inside_their_root() {
    let n: u64 = std::env::var("ENVKIT_ADVERSARIAL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    for seed in 1..=n {
        one_case(seed);
    }
}
