//! Integration tests that enter user namespaces. They run as the unprivileged test user: when
//! the test process is root it re-runs itself (one test, exact name) as `$ENVKIT_TEST_USER`
//! (default `envkit-test`) with runuser and checks the result.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rootless::{
    Chown, Compression, CopyAction, CopySource, ExecRequest, ExitStatus, FileAction, IdMap, IdSpec,
    LayerFile, Request, Response, UserDb, run_helper,
};

const HELPER: &str = env!("CARGO_BIN_EXE_rootless-helper");

/// Run `body` as the unprivileged test user.
fn as_test_user(name: &str, body: impl FnOnce()) {
    if !nix::unistd::getuid().is_root() {
        body();
        return;
    }
    let user = std::env::var("ENVKIT_TEST_USER").unwrap_or_else(|_| "envkit-test".into());
    match nix::unistd::User::from_name(&user) {
        Ok(Some(_)) => {}
        _ => panic!(
            "test user {user:?} does not exist (set ENVKIT_TEST_USER or run scripts/test-env.sh \
             to create it with /etc/subuid and /etc/subgid ranges)"
        ),
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new("runuser")
        .args(["-u", &user, "--"])
        .arg(&exe)
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TMPDIR", "/tmp")
        .current_dir("/")
        .output()
        .expect("running runuser");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- {name} as {user} ---\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{name} failed as {user}");
    assert!(stdout.contains("1 passed"), "{name} did not run as {user}");
}

fn ids() -> IdMap {
    IdMap::for_current_user().expect("subuid/subgid range for the test user")
}

fn helper(req: &Request) -> (Result<Response, rootless::RootlessError>, String) {
    let mut out = Vec::new();
    let r = run_helper(Path::new(HELPER), &[], &ids(), req, &mut |b: &[u8]| {
        out.extend_from_slice(b)
    });
    (r, String::from_utf8_lossy(&out).into_owned())
}

fn ok(req: &Request) -> (Response, String) {
    let (r, out) = helper(req);
    match r {
        Ok(r) => (r, out),
        Err(e) => panic!("{e}\noutput: {out}"),
    }
}

struct Tmp(PathBuf);
impl Tmp {
    fn new() -> Tmp {
        let d = tempfile::Builder::new()
            .prefix("envkit-rootless-test")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Tmp(d.keep())
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        // Files belong to subordinate ids: only the helper can remove them.
        let _ = helper(&Request::RemoveAll {
            path: self.0.clone(),
        });
    }
}

fn header(et: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(et);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

const APPLETS: [&str; 12] = [
    "sh", "cat", "id", "touch", "rm", "echo", "ls", "true", "false", "stat", "mkdir", "sleep",
];

/// A busybox image: layer 1 = rootfs (gzip), layer 2 = whiteout + opaque + hardlink.
/// The busybox test layers unpacked into `<t>/rootfs`.
fn busybox_rootfs(t: &Tmp) -> PathBuf {
    let rootfs = t.0.join("rootfs");
    ok(&Request::Unpack {
        layers: busybox_layers(&t.0),
        dest: rootfs.clone(),
        max_layer_bytes: None,
    });
    rootfs
}

fn busybox_layers(dir: &Path) -> Vec<LayerFile> {
    let l1 = dir.join("l1.tar.gz");
    {
        let f = std::fs::File::create(&l1).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (d, mode) in [
            ("bin/", 0o755),
            ("etc/", 0o755),
            ("tmp/", 0o1777),
            ("root/", 0o700),
            ("opq/", 0o755),
            ("var/", 0o755),
        ] {
            let mut h = header(tar::EntryType::Directory, mode, 0);
            b.append_data(&mut h, d, std::io::empty()).unwrap();
        }
        let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        let mut h = header(tar::EntryType::Regular, 0o755, 0);
        h.set_size(bb.len() as u64);
        b.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
        for a in APPLETS {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, format!("bin/{a}"), "busybox")
                .unwrap();
        }
        let mut h = header(tar::EntryType::Directory, 0o755, 42);
        b.append_data(&mut h, "var/lib42/", std::io::empty())
            .unwrap();
        let files: [(&str, &[u8], u64); 6] = [
            ("var/lib42/f", b"x", 42),
            (
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/bin/false\n",
                0,
            ),
            ("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0),
            ("opq/old", b"old", 0),
            ("var/owned42", b"x", 42),
            ("etc/gone", b"bye", 0),
        ];
        for (p, data, uid) in files {
            let mut h = header(tar::EntryType::Regular, 0o644, uid);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, p, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
    }
    let l2 = dir.join("l2.tar");
    {
        let f = std::fs::File::create(&l2).unwrap();
        let mut b = tar::Builder::new(f);
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, "etc/.wh.gone", std::io::empty())
            .unwrap();
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, "opq/", std::io::empty()).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, "opq/.wh..wh..opq", std::io::empty())
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        h.set_size(3);
        b.append_data(&mut h, "opq/new", &b"new"[..]).unwrap();
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        b.append_link(&mut h, "etc/passwd-link", "etc/passwd")
            .unwrap();
        let mut h = header(tar::EntryType::Char, 0o666, 0);
        b.append_data(&mut h, "dev-null", std::io::empty()).unwrap();
        b.finish().unwrap();
    }
    vec![
        LayerFile {
            path: l1,
            compression: Compression::Gzip,
        },
        LayerFile {
            path: l2,
            compression: Compression::None,
        },
    ]
}

fn exec_req(lowers: Vec<PathBuf>, base: &Path, args: &[&str]) -> ExecRequest {
    ExecRequest {
        lowers,
        upper: base.join("upper"),
        work: base.join("work"),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        mounts: vec![],
        hostname: "envkit".into(),
        ca_bundle: None,
        readonly_rootfs: false,
        network_none: false,
        sandbox_net: false,
        insecure: false,
        no_new_privs: false,
        rlimits: Vec::new(),
        emulator: None,
    }
}

fn tar_names(p: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(std::fs::File::open(p).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// A sandboxed step (BuildKit's default network) has a namespace of its own: loopback and
/// slirp4netns's tap0, none of the host's interfaces, slirp's name server, and no way to the
/// host's abstract unix sockets.
#[test]
fn a_sandboxed_step_has_a_network_of_its_own() {
    as_test_user("a_sandboxed_step_has_a_network_of_its_own", || {
        if let Err(why) = rootless::slirp::available() {
            panic!("the sandbox network cannot run here: {why} (scripts/test-env.sh sets this up)");
        }
        let t = Tmp::new();
        let rootfs = busybox_rootfs(&t);
        // An abstract unix socket of the host: in the step's namespace it does not exist.
        let name = format!("envkit-ns-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let mut req = exec_req(
            vec![rootfs.clone()],
            &t.0,
            &[
                "sh",
                "-c",
                &format!(
                    "ls /sys/class/net; cat /etc/resolv.conf; grep -q {name} /proc/net/unix \
                     && echo host-socket-visible || echo no-host-socket"
                ),
            ],
        );
        req.sandbox_net = true;
        let (r, out) = ok(&Request::Exec(req));
        assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{out}");
        let names: Vec<&str> = out.lines().take_while(|l| !l.contains(' ')).collect();
        assert!(names.contains(&"lo") && names.contains(&"tap0"), "{out}");
        assert_eq!(names.len(), 2, "host interfaces in the step: {out}");
        assert!(out.contains("nameserver 10.0.2.3"), "{out}");
        assert!(out.contains("no-host-socket"), "{out}");
        // The resolv.conf written for the step is gone, and nothing leaked into the layer.
        assert!(!t.0.join("sandbox-resolv.conf").exists());
        assert!(!t.0.join("upper/etc/resolv.conf").exists());
    });
}

#[test]
fn unpack_exec_difftar() {
    as_test_user("unpack_exec_difftar", || {
        let t = Tmp::new();
        let ids = ids();
        let rootfs = t.0.join("rootfs");
        let (r, _) = ok(&Request::Unpack {
            layers: busybox_layers(&t.0),
            dest: rootfs.clone(),
            max_layer_bytes: None,
        });
        let Response::Unpacked { notes } = r else {
            panic!("{r:?}")
        };
        assert!(notes.iter().any(|n| n.contains("dev-null")), "{notes:?}");
        // ownership lands in the subordinate range
        let md = std::fs::metadata(rootfs.join("var/owned42")).unwrap();
        assert_eq!(md.uid(), ids.subuid_start + 41);
        assert_eq!(
            std::fs::metadata(rootfs.join("bin/busybox")).unwrap().uid(),
            ids.uid
        );
        assert!(!rootfs.join("etc/gone").exists(), "whiteout applied");
        assert!(!rootfs.join("opq/old").exists(), "opaque dir cleared");
        assert!(rootfs.join("opq/new").exists());
        assert_eq!(
            std::fs::metadata(rootfs.join("etc/passwd-link"))
                .unwrap()
                .nlink(),
            2
        );
        assert!(!rootfs.join("dev-null").exists());

        // Exec
        let req = exec_req(
            vec![rootfs.clone()],
            &t.0,
            &["sh", "-c", "echo hi; id -u; touch /new; rm /bin/cat"],
        );
        let start = std::time::Instant::now();
        let (r, out) = ok(&Request::Exec(req));
        eprintln!("exec step took {:?}", start.elapsed());
        assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{out}");
        assert_eq!(out, "hi\n0\n");
        let upper = t.0.join("upper");
        assert!(upper.join("new").is_file());
        let wh = std::fs::symlink_metadata(upper.join("bin/cat")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "whiteout for /bin/cat"
        );
        for mp in ["proc", "dev", "sys", "etc/resolv.conf", "etc/hosts"] {
            assert!(
                !upper.join(mp).exists(),
                "mount point {mp} leaked into the upper dir"
            );
        }

        // DiffTar
        let out_tar = t.0.join("diff.tar");
        let (r, _) = ok(&Request::DiffTar {
            upper: upper.clone(),
            out: out_tar.clone(),
            mtime_clamp: None,
        });
        assert!(matches!(r, Response::DiffWritten { .. }), "{r:?}");
        let names = tar_names(&out_tar);
        assert!(names.contains(&"new".to_string()), "{names:?}");
        assert!(names.contains(&"bin/.wh.cat".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("etc")), "{names:?}");

        // A failing command returns its exit code; a missing one 127.
        let req = exec_req(
            vec![upper.clone(), rootfs.clone()],
            &t.0.join("s2"),
            &["sh", "-c", "cat /new; echo err >&2; exit 3"],
        );
        let (r, out) = ok(&Request::Exec(req));
        assert_eq!(r, Response::Exited(ExitStatus::Code(3)));
        assert_eq!(out, "err\n");
        let req = exec_req(vec![rootfs.clone()], &t.0.join("s3"), &["no-such-cmd"]);
        let (r, out) = ok(&Request::Exec(req));
        assert_eq!(r, Response::Exited(ExitStatus::Code(127)), "{out}");
        assert!(out.contains("no-such-cmd"), "{out}");

        // user, cwd, env, mounts, read-only rootfs
        let ca = t.0.join("ca.crt");
        std::fs::write(&ca, "CA").unwrap();
        let mut req = exec_req(
            vec![rootfs.clone()],
            &t.0.join("s4"),
            &[
                "sh",
                "-c",
                "id -u; id -g; pwd; cat $SSL_CERT_FILE; echo; ls /mnt; touch /x 2>/dev/null || echo ro",
            ],
        );
        req.user = "_apt".into();
        req.cwd = "/work/dir".into();
        req.ca_bundle = Some(ca.clone());
        req.readonly_rootfs = true;
        req.mounts.push(rootless::Mount {
            source: t.0.join("rootfs/opq"),
            target: "/mnt".into(),
            kind: rootless::MountKind::Bind { readonly: true },
        });
        let (r, out) = ok(&Request::Exec(req));
        assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{out}");
        assert_eq!(out, "42\n65534\n/work/dir\nCA\nnew\nro\n");
        let up4 = t.0.join("s4/upper");
        assert!(up4.join("work/dir").is_dir(), "cwd persists");
        assert!(!up4.join("run").exists() && !up4.join("mnt").exists());

        // Layer views: a writable view whose changes are thrown away, and a read-only view
        // of two layers with a selector.
        let mut req = exec_req(
            vec![rootfs.clone()],
            &t.0.join("s5"),
            &[
                "sh",
                "-c",
                "echo scribble > /ctx/new-file; cat /ctx/etc/passwd-link >/dev/null && echo rw; ls /two; touch /two/x 2>/dev/null || echo ro",
            ],
        );
        req.mounts.push(rootless::Mount {
            source: PathBuf::new(),
            target: "/ctx".into(),
            kind: rootless::MountKind::Layers {
                lowers: vec![rootfs.clone()],
                selector: String::new(),
                writable: true,
                keep: None,
            },
        });
        req.mounts.push(rootless::Mount {
            source: PathBuf::new(),
            target: "/two".into(),
            kind: rootless::MountKind::Layers {
                lowers: vec![upper.clone(), rootfs.clone()],
                selector: "/opq".into(),
                writable: false,
                keep: None,
            },
        });
        let (r, out) = ok(&Request::Exec(req));
        assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{out}");
        assert_eq!(
            out,
            "rw
new
ro
"
        );
        assert!(
            !rootfs.join("new-file").exists(),
            "the view's changes are discarded"
        );
        let s5 = t.0.join("s5");
        assert!(!s5.join("upper/ctx/new-file").exists());
        assert!(!s5.join("view-0").exists(), "scratch dirs are removed");

        // overhead of a trivial step
        let mut times = Vec::new();
        for i in 0..5 {
            let req = exec_req(vec![rootfs.clone()], &t.0.join(format!("t{i}")), &["true"]);
            let s = std::time::Instant::now();
            let (r, _) = ok(&Request::Exec(req));
            times.push(s.elapsed());
            assert_eq!(r, Response::Exited(ExitStatus::Code(0)));
        }
        times.sort();
        eprintln!("true step: median {:?} (min {:?})", times[2], times[0]);
    });
}

#[test]
fn remove_all_cleans_subordinate_files() {
    as_test_user("remove_all_cleans_subordinate_files", || {
        let t = Tmp::new();
        let rootfs = busybox_rootfs(&t);
        assert!(
            std::fs::remove_dir_all(&rootfs).is_err(),
            "host user cannot remove it"
        );
        let (r, _) = ok(&Request::RemoveAll {
            path: rootfs.clone(),
        });
        assert_eq!(r, Response::Done);
        assert!(!rootfs.exists());
    });
}

#[test]
fn probe_overlay() {
    as_test_user("probe_overlay", || {
        let (r, _) = ok(&Request::Probe);
        let Response::Probe(p) = r else {
            panic!("{r:?}")
        };
        assert!(p.overlay_userxattr, "{}", p.detail);
    });
}

#[test]
fn file_actions_copy_mkfile_owner() {
    as_test_user("file_actions_copy_mkfile_owner", || {
        let t = Tmp::new();
        let ids = ids();
        let rootfs = busybox_rootfs(&t);
        let ctx = t.0.join("ctx");
        std::fs::create_dir_all(ctx.join("dir/sub")).unwrap();
        std::fs::write(ctx.join("hello.py"), "print('hi')").unwrap();
        std::fs::write(ctx.join("a.txt"), "a").unwrap();
        std::fs::write(ctx.join("b.txt"), "b").unwrap();
        std::fs::write(ctx.join("dir/sub/f"), "f").unwrap();
        let copy = |src: &str, dest: &str, contents: bool| {
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Dir(ctx.clone()),
                src: src.into(),
                dest: dest.into(),
                owner: Some(Chown::ids(1000, 1000)),
                follow_symlinks: true,
                dir_copy_contents: contents,
                create_dest_path: true,
                allow_wildcard: true,
                ..CopyAction::default()
            }))
        };
        let actions = vec![
            copy("hello.py", "/opt/hello.py", false),
            copy("*.txt", "/txt/", false),
            copy("dir", "/d1", true),
            copy("dir", "/d2/", false),
            FileAction::Mkfile {
                path: "/etc/motd".into(),
                mode: 0o600,
                data: b"hey".to_vec(),
                owner: Some(Chown::ids(42, 65534)),
                timestamp: None,
            },
            FileAction::Mkdir {
                path: "/a/b/c".into(),
                mode: 0o750,
                make_parents: true,
                owner: None,
                timestamp: None,
            },
            FileAction::Rm {
                path: "/bin/ca*".into(),
                allow_not_found: false,
                allow_wildcard: true,
            },
            FileAction::Rm {
                path: "/nope".into(),
                allow_not_found: true,
                allow_wildcard: false,
            },
        ];
        let upper = t.0.join("fa/upper");
        let (r, _) = ok(&Request::FileActions {
            lowers: vec![rootfs.clone()],
            upper: upper.clone(),
            work: t.0.join("fa/work"),
            actions,
        });
        assert_eq!(r, Response::Done);
        let host1000 = ids.subuid_start + 999;
        let md = std::fs::metadata(upper.join("opt/hello.py")).unwrap();
        assert_eq!((md.uid(), md.gid()), (host1000, ids.subgid_start + 999));
        assert_eq!(
            std::fs::read_to_string(upper.join("opt/hello.py")).unwrap(),
            "print('hi')"
        );
        assert!(upper.join("txt/a.txt").is_file() && upper.join("txt/b.txt").is_file());
        assert!(upper.join("d1/sub/f").is_file());
        assert_eq!(
            std::fs::metadata(upper.join("d1/sub")).unwrap().uid(),
            host1000
        );
        assert!(upper.join("d2/dir/sub/f").is_file());
        let motd = std::fs::metadata(upper.join("etc/motd")).unwrap();
        assert_eq!(
            (motd.uid(), motd.mode() & 0o777),
            (ids.subuid_start + 41, 0o600)
        );
        assert!(upper.join("a/b/c").is_dir());
        let wh = std::fs::symlink_metadata(upper.join("bin/cat")).unwrap();
        assert!(wh.file_type().is_char_device());

        // errors: missing source, escaping source path stays inside the source root
        let (r, _) = helper(&Request::FileActions {
            lowers: vec![rootfs.clone()],
            upper: t.0.join("fb/upper"),
            work: t.0.join("fb/work"),
            actions: vec![copy("missing", "/x", false)],
        });
        assert!(r.is_err());
        // `..` is clamped at the source root: the host's /etc/hostname is never reached.
        let (r, _) = helper(&Request::FileActions {
            lowers: vec![rootfs.clone()],
            upper: t.0.join("fc/upper"),
            work: t.0.join("fc/work"),
            actions: vec![copy("../../../etc/hostname", "/h", false)],
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("not found"), "{e}");
        assert!(!t.0.join("fc/upper/h").exists());
    });
}

/// BuildKit's other file-op options: chown by name (looked up in the tree the actions work
/// on), include patterns with lazily created dirs, chmod-style modes, fixed timestamps,
/// symlinks, archives unpacked by a copy (with `.wh.` names kept as files) and the checks.
#[test]
fn file_actions_names_patterns_times_links_archives() {
    as_test_user("file_actions_names_patterns_times_links_archives", || {
        let t = Tmp::new();
        let ids = ids();
        let me = nix::unistd::getuid().as_raw();
        let rootfs = busybox_rootfs(&t);
        let ctx = t.0.join("ctx");
        std::fs::create_dir_all(ctx.join("dir/sub")).unwrap();
        std::fs::create_dir_all(ctx.join("dir/empty")).unwrap();
        std::fs::write(ctx.join("dir/a.sh"), "a").unwrap();
        std::fs::write(ctx.join("dir/b.txt"), "b").unwrap();
        std::fs::write(ctx.join("dir/sub/c.sh"), "c").unwrap();
        std::fs::write(ctx.join("dir/empty/x.txt"), "x").unwrap();
        {
            let f = std::fs::File::create(ctx.join("arch.tgz")).unwrap();
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            for (name, data) in [("x/hello", &b"hello"[..]), (".wh.keep", &b"k"[..])] {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, data).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        let ts: i64 = 1_704_164_645_000_000_000;
        let named = |user: Option<&str>, group: Option<&str>| Chown {
            user: user.map(|u| IdSpec::Name(u.into())),
            group: group.map(|g| IdSpec::Name(g.into())),
            user_db: UserDb::Dest,
            group_db: UserDb::Dest,
        };
        let mkfile = |path: &str, data: &str| FileAction::Mkfile {
            path: path.into(),
            mode: 0o644,
            data: data.as_bytes().to_vec(),
            owner: None,
            timestamp: None,
        };
        let actions = vec![
            mkfile(
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1001::/home/alice:/bin/sh\n",
            ),
            mkfile("/etc/group", "root:x:0:\nstaff:x:50:\n"),
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Dir(ctx.clone()),
                src: "/dir".into(),
                dest: "/inc".into(),
                owner: Some(named(Some("alice"), None)),
                mode_str: Some("a+x".into()),
                dir_copy_contents: true,
                create_dest_path: true,
                include_patterns: vec!["**/*.sh".into()],
                timestamp: Some(ts),
                ..CopyAction::default()
            })),
            FileAction::Symlink {
                target: "/inc/a.sh".into(),
                path: "/link".into(),
                owner: Some(named(None, Some("staff"))),
                timestamp: Some(ts),
            },
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Dir(ctx.clone()),
                src: "/arch.tgz".into(),
                dest: "/unpacked".into(),
                unpack_archives: true,
                ..CopyAction::default()
            })),
            // An existing dir is fine for mkdir without parents, as in BuildKit.
            FileAction::Mkdir {
                path: "/inc".into(),
                mode: 0o700,
                make_parents: false,
                owner: None,
                timestamp: None,
            },
        ];
        let upper = t.0.join("fa/upper");
        ok(&Request::FileActions {
            lowers: vec![rootfs.clone()],
            upper: upper.clone(),
            work: t.0.join("fa/work"),
            actions,
        });
        let a = std::fs::metadata(upper.join("inc/a.sh")).unwrap();
        assert_eq!(
            (a.uid(), a.gid()),
            (ids.subuid_start + 999, ids.subgid_start + 1000)
        );
        assert_eq!(a.mode() & 0o777, 0o755, "a+x on 0644");
        assert_eq!(a.mtime(), 1_704_164_645);
        assert!(upper.join("inc/sub/c.sh").is_file());
        assert!(!upper.join("inc/b.txt").exists(), "b.txt is not included");
        assert!(
            !upper.join("inc/empty").exists(),
            "a dir with nothing included is not created"
        );
        let l = std::fs::symlink_metadata(upper.join("link")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!((l.uid(), l.gid()), (me, ids.subgid_start + 49));
        assert_eq!(l.mtime(), 1_704_164_645);
        assert_eq!(
            std::fs::read_link(upper.join("link")).unwrap(),
            Path::new("/inc/a.sh")
        );
        assert_eq!(
            std::fs::read_to_string(upper.join("unpacked/x/hello")).unwrap(),
            "hello"
        );
        assert!(upper.join("unpacked/.wh.keep").is_file());

        let fails = |name: &str, a: FileAction| {
            let (r, _) = helper(&Request::FileActions {
                lowers: vec![rootfs.clone()],
                upper: t.0.join(format!("{name}/upper")),
                work: t.0.join(format!("{name}/work")),
                actions: vec![a],
            });
            r.expect_err(name).to_string()
        };
        let e = fails(
            "nouser",
            FileAction::Mkdir {
                path: "/x".into(),
                mode: 0o755,
                make_parents: true,
                owner: Some(named(Some("nobody-here"), None)),
                timestamp: None,
            },
        );
        assert!(e.contains("no user \"nobody-here\""), "{e}");
        let e = fails(
            "noparent",
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Dir(ctx.clone()),
                src: "/dir/a.sh".into(),
                dest: "/missing/deeper/a.sh".into(),
                ..CopyAction::default()
            })),
        );
        assert!(e.contains("/missing/deeper"), "{e}");
        let e = fails(
            "required",
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Dir(ctx.clone()),
                src: "/dir".into(),
                dest: "/d".into(),
                required_paths: vec!["dir/nothere".into()],
                ..CopyAction::default()
            })),
        );
        assert!(e.contains("required path dir/nothere"), "{e}");
        let e = fails(
            "badmode",
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Dir(ctx.clone()),
                src: "/dir".into(),
                dest: "/d".into(),
                mode_str: Some("q+z".into()),
                ..CopyAction::default()
            })),
        );
        assert!(e.contains("invalid mode"), "{e}");
    });
}

/// A chain longer than mount options can name (120 layers with long paths) still mounts:
/// files from the top and the bottom layer are visible to the actions.
#[test]
fn long_layer_chains_mount() {
    as_test_user("long_layer_chains_mount", || {
        let t = Tmp::new();
        let mut lowers = Vec::new();
        for i in 0..120 {
            let d = t.0.join(format!(
                "lowers/a-layer-directory-with-a-rather-long-name-{i:03}"
            ));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), "x").unwrap();
            lowers.push(d);
        }
        let upper = t.0.join("long/upper");
        let rm = |p: &str| FileAction::Rm {
            path: p.into(),
            allow_not_found: false,
            allow_wildcard: false,
        };
        ok(&Request::FileActions {
            lowers,
            upper: upper.clone(),
            work: t.0.join("long/work"),
            actions: vec![rm("/f0"), rm("/f119")],
        });
        for f in ["f0", "f119"] {
            let wh = std::fs::symlink_metadata(upper.join(f)).unwrap();
            assert!(wh.file_type().is_char_device(), "{f} was not seen");
        }
    });
}

/// Copies out of a single snapshot link its large files instead of copying them, where the
/// copy would leave them as they are; anything else is copied, and the layer is what a copy
/// makes: no file of it is a hard link to another.
#[test]
fn file_actions_link_large_files_of_a_snapshot() {
    as_test_user("file_actions_link_large_files_of_a_snapshot", || {
        use std::os::unix::fs::PermissionsExt;
        let t = Tmp::new();
        let src = t.0.join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        let ts: i64 = 1_704_164_645_000_000_000;
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ts as u64);
        for name in ["big", "xbig", "d/big3", "d/big4"] {
            std::fs::write(src.join(name), &big).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(src.join(name))
                .unwrap();
            f.set_modified(at).unwrap();
        }
        std::fs::set_permissions(src.join("big"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(src.join("small"), b"small").unwrap();
        xattr::set(src.join("xbig"), "user.envkit-test", b"1").unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let copy = |from: &str, dest: &str, owner: Option<Chown>, time: Option<i64>| {
            FileAction::Copy(Box::new(CopyAction {
                src_root: CopySource::Lowers(vec![src.clone()]),
                src: from.into(),
                dest: dest.into(),
                owner,
                dir_copy_contents: true,
                create_dest_path: true,
                timestamp: time,
                ..CopyAction::default()
            }))
        };
        let actions = vec![
            copy("/big", "/out/big", None, None),
            copy("/big", "/out/again", None, None),
            copy("/small", "/out/small", None, None),
            copy("/xbig", "/out/xbig", None, None),
            copy("/d", "/chowned", Some(Chown::ids(1000, 1000)), None),
            copy("/d", "/timed", None, Some(ts)),
            copy("/d/big3", "/out/replaced", None, None),
            copy("/small", "/out/replaced", None, None),
        ];
        let upper = t.0.join("fa/upper");
        ok(&Request::FileActions {
            lowers: vec![src.clone()],
            upper: upper.clone(),
            work: t.0.join("fa/work"),
            actions,
        });
        // Linked: the same inode as the source, its mode and time.
        assert_eq!(ino(&upper.join("out/big")), ino(&src.join("big")));
        let md = std::fs::metadata(upper.join("out/big")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o750);
        assert_eq!(md.mtime(), ts / 1_000_000_000);
        assert_eq!(ino(&upper.join("timed/big3")), ino(&src.join("d/big3")));
        assert_eq!(ino(&upper.join("timed/big4")), ino(&src.join("d/big4")));
        // Copied: a source already linked once, a small file, one with extended attributes,
        // files given another owner, and a file a later copy replaced.
        for (dest, from) in [
            ("out/again", "big"),
            ("out/small", "small"),
            ("out/xbig", "xbig"),
            ("chowned/big3", "d/big3"),
            ("out/replaced", "small"),
        ] {
            assert_ne!(ino(&upper.join(dest)), ino(&src.join(from)), "{dest}");
            assert_eq!(
                std::fs::read(upper.join(dest)).unwrap(),
                std::fs::read(src.join(from)).unwrap(),
                "{dest}"
            );
        }
        assert_eq!(
            std::fs::metadata(upper.join("chowned/big3")).unwrap().uid(),
            ids().subuid_start + 999
        );
        // The directory the links went into keeps the copy's time.
        assert_eq!(
            std::fs::metadata(upper.join("timed")).unwrap().mtime(),
            ts / 1_000_000_000
        );
        // The layer: every file with its content, none a hard link.
        let out_tar = t.0.join("layer.tar");
        ok(&Request::DiffTar {
            upper: upper.clone(),
            out: out_tar.clone(),
            mtime_clamp: None,
        });
        let mut ar = tar::Archive::new(std::fs::File::open(&out_tar).unwrap());
        let mut sizes = std::collections::BTreeMap::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_ne!(e.header().entry_type(), tar::EntryType::Link);
            sizes.insert(
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().size().unwrap(),
            );
        }
        for f in ["out/big", "out/again", "timed/big3", "timed/big4"] {
            assert_eq!(sizes.get(f), Some(&(100 * 1024)), "{f}: {sizes:?}");
        }
    });
}

/// The copy snapshotter (forced with `--snapshotter=copy`) gives the same layers as overlayfs
/// for a step and for file actions: the same entries, whiteouts included, owned the same.
#[test]
fn copy_snapshotter_gives_the_same_layers_as_overlay() {
    as_test_user("copy_snapshotter_gives_the_same_layers_as_overlay", || {
        let t = Tmp::new();
        let rootfs = busybox_rootfs(&t);
        let with = |args: &[&str], req: &Request| {
            let mut out = Vec::new();
            let r = run_helper(Path::new(HELPER), args, &ids(), req, &mut |b: &[u8]| {
                out.extend_from_slice(b)
            });
            match r {
                Ok(r) => (r, String::from_utf8_lossy(&out).into_owned()),
                Err(e) => panic!("{e}\n{}", String::from_utf8_lossy(&out)),
            }
        };
        let script = "echo new > /etc/added; echo changed >> /etc/passwd; rm /bin/cat; \
                      mkdir -p /opt/d/e; echo deep > /opt/d/e/f; chown 42:42 /opt/d/e/f; \
                      rm -rf /opq; echo ran";
        let mut layers = Vec::new();
        for (mode, args) in [("overlay", &[][..]), ("copy", &["--snapshotter=copy"][..])] {
            let base = t.0.join(mode);
            let req = exec_req(vec![rootfs.clone()], &base, &["sh", "-c", script]);
            let (r, out) = with(args, &Request::Exec(req.clone()));
            assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{mode}: {out}");
            assert!(out.contains("ran"), "{mode}: {out}");
            // A file action on top of the step's result.
            let fa_base = t.0.join(format!("{mode}-fa"));
            with(
                args,
                &Request::FileActions {
                    lowers: vec![req.upper.clone(), rootfs.clone()],
                    upper: fa_base.join("upper"),
                    work: fa_base.join("work"),
                    actions: vec![
                        FileAction::Rm {
                            path: "/etc/added".into(),
                            allow_not_found: false,
                            allow_wildcard: false,
                        },
                        FileAction::Mkfile {
                            path: "/etc/motd".into(),
                            mode: 0o600,
                            data: b"hi".to_vec(),
                            owner: Some(Chown::ids(7, 7)),
                            timestamp: None,
                        },
                    ],
                },
            );
            let mut both = Vec::new();
            for (i, upper) in [req.upper.clone(), fa_base.join("upper")]
                .iter()
                .enumerate()
            {
                let tar = t.0.join(format!("{mode}-{i}.tar"));
                with(
                    args,
                    &Request::DiffTar {
                        upper: upper.clone(),
                        out: tar.clone(),
                        mtime_clamp: None,
                    },
                );
                let mut entries: Vec<(String, u64, bool)> = Vec::new();
                let mut ar = tar::Archive::new(std::fs::File::open(&tar).unwrap());
                for e in ar.entries().unwrap() {
                    let e = e.unwrap();
                    let h = e.header();
                    let name = e.path().unwrap().to_string_lossy().into_owned();
                    entries.push((name, h.uid().unwrap(), h.entry_type().is_dir()));
                }
                entries.sort();
                both.push(entries);
            }
            layers.push(both);
        }
        assert_eq!(layers[0], layers[1], "overlay vs copy");
        let names: Vec<&str> = layers[1][0].iter().map(|e| e.0.as_str()).collect();
        for want in [
            "etc/added",
            "etc/passwd",
            "bin/.wh.cat",
            "opt/d/e/f",
            ".wh.opq",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let names: Vec<&str> = layers[1][1].iter().map(|e| e.0.as_str()).collect();
        assert!(
            names.contains(&"etc/.wh.added") && names.contains(&"etc/motd"),
            "{names:?}"
        );
    });
}

/// Sets distinct old mtimes on the entries below `dir` that belong to us (children before
/// their directory); returns how many.
fn age_tree(dir: &Path, mut t: i64) -> usize {
    let mut n = 0;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() && md.uid() == nix::unistd::getuid().as_raw() {
            n += age_tree(&p, t + 1000);
        }
        t += 1;
        let ts = nix::sys::time::TimeSpec::new(t, 0);
        if nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .is_ok()
        {
            n += 1;
        }
    }
    n
}

/// A layer unpacked as an upper dir (`Request::UnpackUpper`) is the upper dir it was made
/// from: the layer differ gives the same bytes back, whiteouts are 0/0 char devices (mknod of
/// whiteouts works in the namespace), opaque dirs keep `user.overlay.opaque`, ownership lands
/// in the subordinate range, and a step sees the same tree through either. For the upper dirs
/// of overlayfs and of the copy snapshotter, from a plain and from a gzip layer.
#[test]
fn a_layer_unpacks_to_the_upper_dir_it_came_from() {
    as_test_user("a_layer_unpacks_to_the_upper_dir_it_came_from", || {
        let t = Tmp::new();
        let ids = ids();
        let rootfs = busybox_rootfs(&t);
        let with = |args: &[&str], req: &Request| {
            let mut out = Vec::new();
            let r = run_helper(Path::new(HELPER), args, &ids, req, &mut |b: &[u8]| {
                out.extend_from_slice(b)
            });
            match r {
                Ok(r) => (r, String::from_utf8_lossy(&out).into_owned()),
                Err(e) => panic!("{e}\n{}", String::from_utf8_lossy(&out)),
            }
        };
        let long = format!("/opt/{}/{}", "l".repeat(90), "m".repeat(70));
        let script = format!(
            "echo new > /etc/added; ln /etc/added /etc/added-link; rm /bin/cat; \
             rm -rf /var/lib42; rm -rf /opq; mkdir /opq; echo y > /opq/y; \
             mkdir -p /opt/d/e; echo deep > /opt/d/e/f; chown 42:43 /opt/d/e/f; \
             chmod 4755 /opt/d/e/f; ln -s /etc/added /abs-link; ln -s ../etc/added /opt/rel; \
             mkfifo /opt/pipe; mkdir -p {long}; echo long > {long}/file; chmod 700 /root; \
             echo ran"
        );
        let list = "cd / && find etc bin opq opt var root abs-link | sort | \
                    while read f; do stat -c '%n %f %u %g %Y' \"$f\"; done; \
                    cat /opq/y /etc/added /opt/d/e/f";
        for (mode, args, gzip) in [
            ("overlay", &[][..], false),
            ("copy", &["--snapshotter=copy"][..], true),
        ] {
            let base = t.0.join(mode);
            let req = exec_req(vec![rootfs.clone()], &base, &["sh", "-c", &script]);
            let (r, out) = with(args, &Request::Exec(req.clone()));
            assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{mode}: {out}");
            assert!(out.contains("ran"), "{mode}: {out}");
            let upper = req.upper.clone();
            // an xattr of a layer entry (the file belongs to the namespace's root: us)
            xattr::set(upper.join("etc/added"), "user.test", b"kept").unwrap();
            // Old times, distinct per entry (ours; not those of subordinate ids): the step
            // and the unpack run within the same second, which would hide a lost time.
            let touched = age_tree(&upper, 1_500_000_000);
            assert!(touched > 10, "{mode}: {touched}");
            let t1 = t.0.join(format!("{mode}-1.tar"));
            with(
                args,
                &Request::DiffTar {
                    upper: upper.clone(),
                    out: t1.clone(),
                    mtime_clamp: None,
                },
            );
            let b1 = std::fs::read(&t1).unwrap();
            let names = tar_names(&t1);
            for want in ["bin/.wh.cat", "var/.wh.lib42", "etc/added-link", "opt/pipe"] {
                assert!(
                    names.iter().any(|n| n == want),
                    "{mode}: {want} in {names:?}"
                );
            }
            let layer = if gzip {
                let gz = t.0.join(format!("{mode}-1.tar.gz"));
                let mut enc = flate2::write::GzEncoder::new(
                    std::fs::File::create(&gz).unwrap(),
                    flate2::Compression::fast(),
                );
                std::io::Write::write_all(&mut enc, &b1).unwrap();
                enc.finish().unwrap();
                LayerFile {
                    path: gz,
                    compression: Compression::Gzip,
                }
            } else {
                LayerFile {
                    path: t1.clone(),
                    compression: Compression::None,
                }
            };
            let u2 = t.0.join(format!("{mode}-u2"));
            let (r, _) = with(
                args,
                &Request::UnpackUpper {
                    layer: layer.clone(),
                    dest: u2.clone(),
                    max_layer_bytes: Some(1 << 30),
                },
            );
            assert_eq!(r, Response::Unpacked { notes: vec![] }, "{mode}");
            let t2 = t.0.join(format!("{mode}-2.tar"));
            with(
                args,
                &Request::DiffTar {
                    upper: u2.clone(),
                    out: t2.clone(),
                    mtime_clamp: None,
                },
            );
            assert_eq!(names, tar_names(&t2), "{mode}");
            assert!(
                b1 == std::fs::read(&t2).unwrap(),
                "{mode}: the layers differ"
            );
            // what the upper dir holds
            for w in ["bin/cat", "var/lib42"] {
                let md = std::fs::symlink_metadata(u2.join(w)).unwrap();
                assert!(
                    md.file_type().is_char_device() && md.rdev() == 0,
                    "{mode}: {w} is not a 0/0 char device"
                );
            }
            if mode == "overlay" {
                assert_eq!(
                    rootless::classify(
                        &u2.join("opq"),
                        &std::fs::metadata(u2.join("opq")).unwrap()
                    ),
                    rootless::UpperKind::Entry { opaque: true },
                    "{mode}: /opq is opaque"
                );
            } else {
                assert!(names.iter().any(|n| n == "opq/.wh.new"), "{names:?}");
            }
            let f = std::fs::metadata(u2.join("opt/d/e/f")).unwrap();
            assert_eq!(
                (f.uid(), f.gid()),
                (ids.subuid_start + 41, ids.subgid_start + 42)
            );
            assert_eq!(f.mode() & 0o7777, 0o4755);
            assert_eq!(
                xattr::get(u2.join("etc/added"), "user.test").unwrap(),
                Some(b"kept".to_vec())
            );
            // a second unpack into a dir that is not empty is refused
            let (r, _) = helper(&Request::UnpackUpper {
                layer,
                dest: u2.clone(),
                max_layer_bytes: None,
            });
            let e = r.expect_err("a non-empty destination").to_string();
            assert!(e.contains("empty"), "{e}");
            // a step sees the same tree on either upper dir
            let mut views = Vec::new();
            for (i, top) in [upper, u2].into_iter().enumerate() {
                let req = exec_req(
                    vec![top, rootfs.clone()],
                    &t.0.join(format!("{mode}-view-{i}")),
                    &["sh", "-c", list],
                );
                let (r, out) = ok(&Request::Exec(req));
                assert_eq!(r, Response::Exited(ExitStatus::Code(0)), "{out}");
                views.push(out);
            }
            assert!(views[0].contains("etc/added ") && !views[0].contains("bin/cat "));
            assert!(!views[0].contains("opq/new") && !views[0].contains("var/lib42"));
            // The mount points the runtime makes in /etc (hosts, resolv.conf) leave its time
            // alone: the views show the layer's.
            assert!(
                views[0].lines().any(|l| l.starts_with("etc 41ed 0 0 15")),
                "{mode}: /etc's time changed: {}",
                views[0]
            );
            assert_eq!(views[0], views[1], "{mode}: the views differ");
        }
    });
}

/// Manual check: `ENVKIT_DEBIAN_TAR=/tmp/debian-minbase.tar cargo test -p rootless --test ns
/// apt_update_debian -- --ignored --nocapture` (a tar of the Debian minbase rootfs that
/// scripts/test-env.sh builds). Needs the network (through the host's CA bundle).
#[test]
#[ignore]
fn apt_update_debian() {
    as_test_user("apt_update_debian", || {
        let Ok(tar) = std::env::var("ENVKIT_DEBIAN_TAR") else {
            panic!("set ENVKIT_DEBIAN_TAR to a tar of a Debian rootfs");
        };
        let t = Tmp::new();
        let rootfs = t.0.join("rootfs");
        let s = std::time::Instant::now();
        let (r, _) = ok(&Request::Unpack {
            layers: vec![LayerFile {
                path: tar.into(),
                compression: Compression::None,
            }],
            dest: rootfs.clone(),
            max_layer_bytes: None,
        });
        eprintln!("unpack: {:?} {r:?}", s.elapsed());
        let mut req = exec_req(
            vec![rootfs],
            &t.0,
            &[
                "sh",
                "-c",
                "apt-get --version | head -1 && apt-get update && apt-get install -y --no-install-recommends sl >/dev/null && ls -la /usr/games/sl",
            ],
        );
        req.env = vec![];
        req.ca_bundle = Some("/etc/ssl/certs/ca-certificates.crt".into());
        let s = std::time::Instant::now();
        let mut out = Vec::new();
        let r = run_helper(
            Path::new(HELPER),
            &[],
            &ids(),
            &Request::Exec(req),
            &mut |b: &[u8]| {
                std::io::Write::write_all(&mut std::io::stderr(), b).unwrap();
                out.extend_from_slice(b);
            },
        );
        eprintln!("apt step: {:?} {r:?}", s.elapsed());
        assert_eq!(r.unwrap(), Response::Exited(ExitStatus::Code(0)));
    });
}
