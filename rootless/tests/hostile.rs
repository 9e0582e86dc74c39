//! Hostile layers: every tarball here is made by the test, byte by byte where the `tar` crate
//! would refuse to write it. Each case is unpacked as an image layer into `T/a/b/root`; the
//! test then proves that nothing outside `root` changed (every path under `T` is compared
//! before and after: type, mode, size, contents, link target) and that the case ended as it
//! must: refused with an error naming the entry and the reason, or contained inside `root`.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::survey;
use rootless::{Compression, LayerFile, TarMode};

/// One tar entry, written raw. `@OUT@` in a name or link is replaced by the absolute path of a
/// directory outside the target.
#[derive(Clone)]
enum E {
    File(&'static str, &'static [u8]),
    Mode(&'static str, u32),
    Dir(&'static str),
    Sym(&'static str, &'static str),
    Hard(&'static str, &'static str),
    Char(&'static str),
    Block(&'static str),
    Fifo(&'static str),
    /// A header that claims `size` bytes; the data that follows is `data` (may be short).
    Claims(&'static str, u64, &'static [u8]),
    /// A PAX `path` record overriding the ustar name.
    PaxPath(&'static str, &'static str),
    /// A GNU long-name entry (`././@LongLink`) for the next header.
    GnuLong(&'static str, &'static str),
}

fn header(name: &[u8], link: &[u8], et: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(et);
    h.set_mode(mode);
    h.set_uid(nix::unistd::getuid().as_raw() as u64);
    h.set_gid(nix::unistd::getgid().as_raw() as u64);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    {
        let gnu = h.as_gnu_mut().expect("gnu header");
        let n = name.len().min(gnu.name.len());
        gnu.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(gnu.linkname.len());
        gnu.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_cksum();
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn raw(out: &mut Vec<u8>, h: &tar::Header, data: &[u8]) {
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    pad(out);
}

fn tarball(entries: &[E], outside: &Path) -> Vec<u8> {
    use tar::EntryType as T;
    let sub = |s: &str| s.replace("@OUT@", &outside.to_string_lossy());
    let mut out = Vec::new();
    for e in entries {
        match e {
            E::File(n, data) => raw(
                &mut out,
                &header(sub(n).as_bytes(), b"", T::Regular, data.len() as u64, 0o644),
                data,
            ),
            E::Mode(n, mode) => raw(
                &mut out,
                &header(sub(n).as_bytes(), b"", T::Regular, 0, *mode),
                b"",
            ),
            E::Dir(n) => raw(
                &mut out,
                &header(sub(n).as_bytes(), b"", T::Directory, 0, 0o755),
                b"",
            ),
            E::Sym(n, l) => raw(
                &mut out,
                &header(sub(n).as_bytes(), sub(l).as_bytes(), T::Symlink, 0, 0o777),
                b"",
            ),
            E::Hard(n, l) => raw(
                &mut out,
                &header(sub(n).as_bytes(), sub(l).as_bytes(), T::Link, 0, 0o644),
                b"",
            ),
            E::Char(n) => raw(
                &mut out,
                &header(sub(n).as_bytes(), b"", T::Char, 0, 0o666),
                b"",
            ),
            E::Block(n) => raw(
                &mut out,
                &header(sub(n).as_bytes(), b"", T::Block, 0, 0o660),
                b"",
            ),
            E::Fifo(n) => raw(
                &mut out,
                &header(sub(n).as_bytes(), b"", T::Fifo, 0, 0o644),
                b"",
            ),
            E::Claims(n, size, data) => {
                out.extend_from_slice(
                    header(sub(n).as_bytes(), b"", T::Regular, *size, 0o644).as_bytes(),
                );
                out.extend_from_slice(data);
                return out; // whatever follows is missing: the stream ends here
            }
            E::PaxPath(name, path) => {
                let path = sub(path);
                // "<len> path=<value>\n", where <len> counts its own digits.
                let base = " path=".len() + path.len() + 1;
                let mut len = base + 1;
                while len != base + len.to_string().len() {
                    len = base + len.to_string().len();
                }
                let rec = format!("{len} path={path}\n");
                raw(
                    &mut out,
                    &header(b"PaxHeaders/x", b"", T::XHeader, rec.len() as u64, 0o644),
                    rec.as_bytes(),
                );
                raw(
                    &mut out,
                    &header(name.as_bytes(), b"", T::Regular, 2, 0o644),
                    b"px",
                );
            }
            E::GnuLong(long, short) => {
                let mut data = sub(long).into_bytes();
                data.push(0);
                raw(
                    &mut out,
                    &header(
                        b"././@LongLink",
                        b"",
                        T::GNULongName,
                        data.len() as u64,
                        0o644,
                    ),
                    &data,
                );
                raw(
                    &mut out,
                    &header(short.as_bytes(), b"", T::Regular, 2, 0o644),
                    b"gl",
                );
            }
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

struct Outcome {
    result: Result<(), String>,
    notes: Vec<String>,
    root: PathBuf,
    outside: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Unpacks `bytes` as a layer (gzip when `gz`) with `limit`, and checks nothing outside
/// changed.
fn unpack_bytes(
    label: &str,
    bytes: impl FnOnce(&Path) -> Vec<u8>,
    gz: bool,
    limit: Option<u64>,
) -> Outcome {
    unpack_bytes_as(label, bytes, gz, limit, false)
}

/// [`unpack_bytes`], flattening (`upper` false) or as an upper dir ([`rootless::unpack_upper`]).
fn unpack_bytes_as(
    label: &str,
    bytes: impl FnOnce(&Path) -> Vec<u8>,
    gz: bool,
    limit: Option<u64>,
    upper: bool,
) -> Outcome {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path().canonicalize().expect("canonical");
    let root = t.join("a/b/root");
    std::fs::create_dir_all(&root).expect("mkdir root");
    let outside = t.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir outside");
    std::fs::write(outside.join("keep"), b"keep").expect("write keep");
    std::fs::write(t.join("a/keep"), b"keep too").expect("write keep");
    let data = bytes(&outside);
    let layer = t.join("layer");
    let mut f = std::fs::File::create(&layer).expect("create layer");
    if gz {
        let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        enc.write_all(&data).expect("gzip");
        enc.finish().expect("gzip finish");
    } else {
        f.write_all(&data).expect("write layer");
        drop(f);
    }
    let before = survey(&t, &[&root]);
    let files = [LayerFile {
        path: layer.clone(),
        compression: if gz {
            Compression::Gzip
        } else {
            Compression::None
        },
    }];
    let unpacked = if upper {
        rootless::unpack_upper(&files[0], &root, limit)
    } else {
        rootless::unpack_layers(&files, &root, limit)
    };
    let (result, notes) = match unpacked {
        Ok(n) => (Ok(()), n),
        Err(e) => (Err(e.to_string()), Vec::new()),
    };
    let after = survey(&t, &[&root]);
    assert_eq!(
        before, after,
        "{label}: something outside the target changed"
    );
    Outcome {
        result,
        notes,
        root,
        outside,
        _tmp: tmp,
    }
}

fn unpack(label: &str, entries: &[E]) -> Outcome {
    let entries = entries.to_vec();
    unpack_bytes(label, move |out| tarball(&entries, out), false, None)
}

/// The case must be refused, the message naming `entry` and containing `reason`.
fn refused(label: &str, entries: &[E], entry: &str, reason: &str) {
    let o = unpack(label, entries);
    match o.result {
        Ok(()) => panic!("{label}: unpacked, but must be refused"),
        Err(e) => {
            eprintln!("{label}: {e}");
            assert!(
                e.contains(entry) && e.contains(reason),
                "{label}: the error should name {entry:?} and say {reason:?}: {e}"
            )
        }
    }
}

fn contained(label: &str, entries: &[E]) -> Outcome {
    let o = unpack(label, entries);
    if let Err(e) = &o.result {
        panic!("{label}: should be contained, not refused: {e}");
    }
    o
}

/// `root` + an absolute host path (what an absolute link inside the layer resolves to).
fn rerooted(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").expect("absolute"))
}

#[test]
fn parent_directory_names_are_refused() {
    refused("dotdot", &[E::File("../escape", b"x")], "../escape", "`..`");
    refused(
        "nested dotdot",
        &[E::File("a/../../escape", b"x")],
        "a/../../escape",
        "`..`",
    );
    refused(
        "deep dotdot",
        &[E::File("../../../escape", b"x")],
        "../../../escape",
        "`..`",
    );
    refused(
        "absolute",
        &[E::File("@OUT@/escape", b"x")],
        "/escape",
        "absolute",
    );
    refused(
        "pax path",
        &[E::PaxPath("innocent", "../pax-escape")],
        "../pax-escape",
        "`..`",
    );
    refused(
        "gnu long name",
        &[E::GnuLong("../../long-escape", "short")],
        "long-escape",
        "`..`",
    );
}

#[test]
fn symlinks_cannot_carry_writes_outside() {
    refused(
        "relative symlink parent",
        &[E::Sym("up", "../../../outside"), E::File("up/escape", b"x")],
        "up/escape",
        "escapes its root",
    );
    refused(
        "symlink chain",
        &[
            E::Sym("a", "b"),
            E::Sym("b", "../../.."),
            E::File("a/outside/escape", b"x"),
        ],
        "a/outside/escape",
        "escapes its root",
    );
    // An absolute link is the container's path: it resolves inside the root.
    let o = contained(
        "absolute symlink parent",
        &[E::Sym("up", "@OUT@"), E::File("up/escape", b"inside")],
    );
    let landed = rerooted(&o.root, &o.outside).join("escape");
    assert_eq!(std::fs::read(&landed).expect("re-rooted file"), b"inside");
    // Writing a file over a symlink replaces the link; its target is untouched.
    let o = contained(
        "final symlink",
        &[E::Sym("f", "@OUT@/keep"), E::File("f", b"replaced")],
    );
    let md = std::fs::symlink_metadata(o.root.join("f")).expect("f");
    assert!(md.is_file());
    assert_eq!(
        std::fs::read(o.outside.join("keep")).expect("keep"),
        b"keep"
    );
}

/// The security issue's defect 1: once a component was missing, the string resolver stopped
/// looking at later ones, so `x/../esc` popped the missing `x` and the kernel then followed the
/// symlink `esc` to the host. Every kind of write through such a path stays inside now.
#[test]
fn resolver_escape_missing_component_dotdot_symlink() {
    let base = [E::Sym("esc", "@OUT@"), E::Sym("l", "x/../esc")];
    let cases: [(&str, E); 6] = [
        ("file", E::File("l/f", b"x")),
        ("directory", E::Dir("l/d")),
        ("whiteout", E::File("l/.wh.keep", b"")),
        ("opaque marker", E::File("l/.wh..wh..opq", b"")),
        ("hardlink to a host file", E::Hard("h", "l/keep")),
        ("symlink", E::Sym("l/s", "/")),
    ];
    for (label, last) in cases {
        let mut entries = base.to_vec();
        entries.push(last);
        // Refused or contained, either is fine; `unpack` proves nothing outside changed
        // (contents, modes, link counts).
        let o = unpack(label, &entries);
        eprintln!("{label}: {:?}", o.result);
        assert!(o.outside.join("keep").exists(), "{label}");
    }
}

#[test]
fn hardlinks_cannot_reach_outside() {
    refused(
        "relative hardlink",
        &[E::Hard("l", "../../../outside/keep")],
        "\"l\"",
        "hardlink target",
    );
    refused(
        "absolute hardlink",
        &[E::Hard("l", "@OUT@/keep")],
        "\"l\"",
        "hardlink target",
    );
    refused(
        "hardlink through an absolute symlink",
        &[E::Sym("s", "@OUT@"), E::Hard("l", "s/keep")],
        "\"l\"",
        "hardlink target",
    );
    refused(
        "hardlink to a directory",
        &[E::Dir("d"), E::Hard("l", "d")],
        "\"l\"",
        "directory",
    );
    // A hardlink to a symlink links the symlink itself; writing the name later replaces it.
    let o = contained(
        "hardlink to a symlink, then a write",
        &[
            E::Sym("s", "@OUT@/keep"),
            E::Hard("l", "s"),
            E::File("l", b"mine"),
        ],
    );
    assert_eq!(std::fs::read(o.root.join("l")).expect("l"), b"mine");
}

#[test]
fn whiteouts_cannot_delete_outside() {
    refused(
        "whiteout under a relative symlink",
        &[E::Sym("s", "../../../outside"), E::File("s/.wh.keep", b"")],
        "s/.wh.keep",
        "escapes its root",
    );
    refused(
        "opaque marker under a relative symlink",
        &[E::Sym("s", "../../.."), E::File("s/.wh..wh..opq", b"")],
        "s/.wh..wh..opq",
        "escapes its root",
    );
    refused(
        "whiteout of ..",
        &[E::File("a/.wh...", b"")],
        "a/.wh...",
        "whiteout",
    );
    refused(
        "whiteout of nothing",
        &[E::File("a/.wh.", b"")],
        "a/.wh.",
        "whiteout",
    );
    // Through an absolute symlink a whiteout deletes inside the root only.
    let o = contained(
        "whiteout under an absolute symlink",
        &[E::Sym("s", "@OUT@"), E::File("s/.wh.keep", b"")],
    );
    assert!(o.outside.join("keep").exists());
}

#[test]
fn device_nodes_are_skipped_and_setuid_bits_kept() {
    let o = contained(
        "devices",
        &[
            E::Dir("dev"),
            E::Char("dev/evil-null"),
            E::Block("dev/evil-sda"),
            E::Fifo("dev/pipe"),
            E::Mode("bin-su", 0o4755),
            E::Mode("sgid", 0o2755),
        ],
    );
    assert!(!o.root.join("dev/evil-null").exists());
    assert!(!o.root.join("dev/evil-sda").exists());
    assert_eq!(
        o.notes
            .iter()
            .filter(|n| n.contains("skipped device node"))
            .count(),
        2,
        "{:?}",
        o.notes
    );
    let ft = std::fs::symlink_metadata(o.root.join("dev/pipe")).expect("fifo");
    use std::os::unix::fs::FileTypeExt;
    assert!(ft.file_type().is_fifo());
    // Inside the user namespace these ids are the namespace's; on the host they belong to
    // the subordinate range, so the bits grant nothing outside.
    let mode = |p: &str| {
        std::fs::metadata(o.root.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin-su"), 0o4755);
    assert_eq!(mode("sgid"), 0o2755);
}

#[test]
fn duplicate_entries_are_contained_and_the_last_one_wins() {
    let o = contained(
        "same file twice",
        &[E::File("f", b"one"), E::File("f", b"two")],
    );
    assert_eq!(std::fs::read(o.root.join("f")).expect("f"), b"two");
    let o = contained(
        "a directory, then a symlink out, then a file below it",
        &[
            E::Dir("d"),
            E::Sym("d", "@OUT@"),
            E::File("d/escape", b"in"),
        ],
    );
    assert!(
        std::fs::symlink_metadata(o.root.join("d"))
            .expect("d")
            .file_type()
            .is_symlink()
    );
    assert!(rerooted(&o.root, &o.outside).join("escape").exists());
    refused(
        "a directory, then a relative symlink out, then a file below it",
        &[
            E::Dir("d"),
            E::Sym("d", "../../../outside"),
            E::File("d/escape", b"x"),
        ],
        "d/escape",
        "escapes its root",
    );
    let o = contained(
        "a directory replaced by a file",
        &[E::File("d/x", b"x"), E::File("d", b"file now")],
    );
    assert!(
        std::fs::symlink_metadata(o.root.join("d"))
            .expect("d")
            .is_file()
    );
}

#[test]
fn size_limits_stop_decompression_bombs() {
    // A header that claims 2 GiB: refused before anything is written.
    let o = unpack_bytes(
        "claimed size",
        |out| tarball(&[E::Claims("bomb", 2 << 30, b"tiny")], out),
        false,
        Some(1 << 20),
    );
    let e = o.result.expect_err("claimed bomb");
    assert!(e.contains("bomb") && e.contains("max-layer-size"), "{e}");
    assert!(!o.root.join("bomb").exists());
    // 64 MiB of zeros gzip to ~64 KiB: stopped at the limit, the partial file removed.
    let o = unpack_bytes(
        "gzip bomb",
        |_| {
            let mut b = tar::Builder::new(Vec::new());
            let zeros = vec![0u8; 64 << 20];
            let mut h = tar::Header::new_gnu();
            h.set_size(zeros.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append_data(&mut h, "zeros", &zeros[..]).expect("append");
            b.into_inner().expect("tar")
        },
        true,
        Some(16 << 20),
    );
    let e = o.result.expect_err("gzip bomb");
    assert!(e.contains("zeros") && e.contains("limit"), "{e}");
    assert!(!o.root.join("zeros").exists());
    // Many files that add up: the limit is per layer, not per file.
    let o = unpack_bytes(
        "many files",
        |_| {
            let mut b = tar::Builder::new(Vec::new());
            let mb = vec![7u8; 1 << 20];
            for i in 0..12 {
                let mut h = tar::Header::new_gnu();
                h.set_size(mb.len() as u64);
                h.set_mode(0o644);
                h.set_uid(0);
                h.set_gid(0);
                h.set_cksum();
                b.append_data(&mut h, format!("f{i}"), &mb[..])
                    .expect("append");
            }
            b.into_inner().expect("tar")
        },
        false,
        Some(10 << 20),
    );
    let e = o.result.expect_err("many files");
    assert!(e.contains("f10") && e.contains("limit"), "{e}");
    // Under the limit it unpacks.
    let o = unpack_bytes(
        "small",
        |out| tarball(&[E::File("ok", b"fine")], out),
        false,
        Some(4),
    );
    assert!(o.result.is_ok());
}

#[test]
fn broken_streams_fail_clearly() {
    let o = unpack_bytes(
        "truncated",
        |out| tarball(&[E::Claims("cut", 1000, b"only ten b")], out),
        false,
        None,
    );
    let e = o.result.expect_err("truncated");
    assert!(e.contains("layer"), "the error names the layer: {e}");
    let o = unpack_bytes(
        "truncated gzip",
        |out| tarball(&[E::File("f", b"x")], out)[..700].to_vec(),
        true,
        None,
    );
    // A short tar inside a complete gzip: the tar ends early.
    let _ = o.result;
    let o = unpack_bytes(
        "not a tar",
        |_| b"this is certainly not a tar archive, just some words".repeat(20),
        false,
        None,
    );
    assert!(o.result.is_err(), "garbage must not unpack");
    let o = unpack_bytes(
        "not gzip",
        |_| b"plain words, called gzip".to_vec(),
        true,
        None,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let layer = tmp.path().join("fake.gz");
    std::fs::write(&layer, b"plain words, called gzip").expect("write");
    let files = [LayerFile {
        path: layer,
        compression: Compression::Gzip,
    }];
    let e = rootless::unpack_layers(&files, &tmp.path().join("root"), None).expect_err("not gzip");
    assert!(e.to_string().contains("fake.gz"), "{e}");
    drop(o);
    // A TarMode for archives (not layers) treats `.wh.` names as files.
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().canonicalize().expect("canonical");
    let data = tarball(&[E::File(".wh.kept", b"plain")], &root);
    let mut notes = Vec::new();
    rootless::unpack_tar(
        &data[..],
        Path::new("archive"),
        &root,
        &mut notes,
        TarMode::default(),
    )
    .expect("archive");
    assert!(root.join(".wh.kept").exists());
}

/// Unpacked as an upper dir (whiteouts recorded, not applied), a layer is held to the same
/// rules: nothing lands or is marked outside the root.
#[test]
fn upper_dirs_are_held_to_the_same_rules() {
    let upper = |label: &str, entries: &[E]| {
        let entries = entries.to_vec();
        unpack_bytes_as(label, move |out| tarball(&entries, out), false, None, true)
    };
    let refused_upper = |label: &str, entries: &[E], entry: &str, reason: &str| {
        let o = upper(label, entries);
        match o.result {
            Ok(()) => panic!("{label}: unpacked, but must be refused"),
            Err(e) => assert!(
                e.contains(entry) && e.contains(reason),
                "{label}: the error should name {entry:?} and say {reason:?}: {e}"
            ),
        }
    };
    refused_upper(
        "whiteout under a relative symlink",
        &[E::Sym("s", "../../../outside"), E::File("s/.wh.new", b"")],
        "s/.wh.new",
        "escapes its root",
    );
    refused_upper(
        "opaque marker under a relative symlink",
        &[
            E::Sym("s", "../../../outside"),
            E::File("s/.wh..wh..opq", b""),
        ],
        "s/.wh..wh..opq",
        "escapes its root",
    );
    refused_upper(
        "whiteout of ..",
        &[E::File("a/.wh...", b"")],
        "a/.wh...",
        "whiteout",
    );
    refused_upper(
        "parent directory name",
        &[E::File("../evil", b"x")],
        "../evil",
        "..",
    );
    refused_upper(
        "absolute path",
        &[E::File("/abs", b"x")],
        "/abs",
        "absolute",
    );
    refused_upper(
        "hardlink out",
        &[E::Hard("l", "../../../outside/keep")],
        "l",
        "..",
    );
    refused_upper(
        "file under a relative symlink",
        &[E::Sym("s", "../../../outside"), E::File("s/x", b"x")],
        "s/x",
        "escapes its root",
    );
    // Through an absolute symlink, whiteouts and opaque markers land inside the root.
    let o = upper(
        "whiteout and opaque marker under an absolute symlink",
        &[
            E::Sym("s", "@OUT@"),
            E::File("s/.wh.keep", b""),
            E::File("s/.wh.new", b""),
            E::File("s/.wh..wh..opq", b""),
        ],
    );
    assert!(o.result.is_ok(), "{:?}", o.result);
    let inside = rerooted(&o.root, &o.outside);
    assert!(std::fs::symlink_metadata(inside.join("keep")).is_ok());
    assert!(std::fs::symlink_metadata(o.outside.join("new")).is_err());
    assert_eq!(
        xattr_get(&inside, "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr_get(&o.outside, "user.overlay.opaque"), None);
    // Devices are skipped (a 0/0 char device would read as a whiteout).
    let o = upper("devices", &[E::Char("null"), E::Block("sda")]);
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert!(std::fs::symlink_metadata(o.root.join("null")).is_err());
    assert!(std::fs::symlink_metadata(o.root.join("sda")).is_err());
    // The size limit.
    let o = unpack_bytes_as(
        "claimed size",
        |out| tarball(&[E::Claims("bomb", 2 << 30, b"tiny")], out),
        false,
        Some(1 << 20),
        true,
    );
    assert!(o.result.is_err(), "a bomb must not unpack");
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(p, name).ok().flatten()
}
