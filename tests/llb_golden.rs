//! Byte compatibility with BuildKit v0.32.2's Go client.
//!
//! The vectors in `shared/llb-golden` were made by the Go client. Each graph is rebuilt here
//! through envkit's builder and must give identical op bytes, digests, Definition bytes, JSON
//! dump and DOT. Every `.pb` is also loaded and checked against its `.digests` listing.
//! Directory: `$ENVKIT_GOLDEN_DIR`, else `tests/golden/llb` (a copy of the workplace's
//! `shared/llb-golden`, so that a clone of the repository tests on its own).

use std::path::PathBuf;

use envkit::llb::{
    self, CacheSharing, Chmod, Chown, Constraints, CopyOptions, Definition, Digest, FileAction,
    ImageOptions, LocalOptions, MarshalOptions, MkdirOptions, MkfileOptions, Mount, Platform,
    ResolveMode, RmOptions, Run, SecretMount, SshMount, State, SymlinkOptions,
};
use envkit::pb;

const REG: &str = "127.0.0.1:5000";
/// 2024-01-02T03:04:05Z in nanoseconds, the time the vectors use.
const T: i64 = 1_704_164_645_000_000_000;

fn golden_dir() -> PathBuf {
    let dir = match std::env::var_os("ENVKIT_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/llb"),
    };
    assert!(
        dir.join("INDEX.txt").is_file(),
        "golden LLB vectors not found: looked for INDEX.txt in {} (set ENVKIT_GOLDEN_DIR)",
        dir.display()
    );
    dir
}

fn read(name: &str, ext: &str) -> Vec<u8> {
    let p = golden_dir().join(format!("{name}.{ext}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn opts() -> MarshalOptions {
    MarshalOptions {
        // The vectors were marshalled by BuildKit's client on linux/amd64.
        platform: Platform::linux_amd64(),
        local_unique_id: "envkit-golden-0001".to_string(),
        ..MarshalOptions::default()
    }
}

fn busybox() -> State {
    llb::image(&format!("{REG}/library/busybox:latest"))
}

fn debian() -> State {
    llb::image(&format!("{REG}/library/debian:bookworm"))
}

fn sh(cmd: &str) -> Run {
    Run::args(["sh", "-c", cmd])
}

/// The graph of `parallel4` on `base`: four `sleep 1` branches, each file copied onto `base`.
fn parallel4_on(base: State) -> State {
    let mut out = base.clone();
    for i in 1..=4 {
        let branch = base.run(sh(&format!("sleep 1 && echo {i} > /p{i}"))).root();
        out = out.file(
            FileAction::new().copy(
                &branch,
                &format!("/p{i}"),
                &format!("/p{i}"),
                CopyOptions::default(),
            ),
            Constraints::new(),
        );
    }
    out
}

fn build(name: &str) -> Option<State> {
    let s = match name {
        "scratch-empty" => llb::scratch(),
        "image-only" => llb::image("busybox"),
        "image-local-registry" => llb::image_with(
            &format!("{REG}/library/debian:bookworm"),
            ImageOptions {
                resolve_mode: Some(ResolveMode::ForcePull),
                ..Default::default()
            },
        ),
        "image-run" => busybox()
            .add_env("FOO", "bar")
            .dir("/work")
            .user("root")
            .run(sh("echo hello > /hello"))
            .root(),
        "chain3" => {
            let mut s = busybox();
            for i in 1..=3 {
                s = s
                    .run(Run::shlex(&format!("/bin/sh -c \"echo {i} > /f{i}\"")))
                    .root();
            }
            s
        }
        "run-cache-mount" => {
            let ctx = llb::local("context", LocalOptions::default());
            debian()
                .run(
                    sh("apt-get update && apt-get install -y python3-minimal")
                        .mount(Mount::cache(
                            "/var/cache/apt",
                            "apt-cache",
                            CacheSharing::Locked,
                        ))
                        .mount(Mount::cache(
                            "/var/lib/apt",
                            "apt-lib",
                            CacheSharing::Shared,
                        ))
                        .mount(Mount::cache(
                            "/root/.cache/pip",
                            "pip",
                            CacheSharing::Private,
                        ))
                        .mount(Mount::tmpfs("/tmp", 64 << 20))
                        .mount(Mount::bind("/src", &ctx).readonly().selector("/sub")),
                )
                .root()
        }
        "local-include" => {
            let ctx = llb::local(
                "context",
                LocalOptions {
                    session_id: Some("session-0001".into()),
                    include_patterns: vec!["src/**".into(), "Cargo.toml".into(), "*.star".into()],
                    exclude_patterns: vec!["target".into(), "**/*.tmp".into()],
                    follow_paths: vec!["src".into(), "Cargo.toml".into()],
                    shared_key_hint: Some("envkit-context".into()),
                    ..Default::default()
                },
            );
            llb::scratch().file(
                FileAction::new().copy(
                    &ctx,
                    "/",
                    "/app",
                    CopyOptions {
                        copy_dir_contents_only: true,
                        create_dest_path: true,
                        ..Default::default()
                    },
                ),
                Constraints::new(),
            )
        }
        "fileops" => {
            let bb = busybox();
            llb::scratch().file(
                FileAction::new()
                    .mkdir(
                        "/a/b",
                        0o755,
                        MkdirOptions {
                            make_parents: true,
                            created_time: Some(T),
                            ..Default::default()
                        },
                    )
                    .mkfile(
                        "/a/b/hello.txt",
                        0o644,
                        b"hello world\n",
                        MkfileOptions {
                            chown: Some(Chown::ids(1000, 1000)),
                            created_time: Some(T),
                        },
                    )
                    .symlink(
                        "/a/b/hello.txt",
                        "/a/link",
                        SymlinkOptions {
                            created_time: Some(T),
                            ..Default::default()
                        },
                    )
                    .copy(
                        &bb,
                        "/bin/busybox",
                        "/a/bin/",
                        CopyOptions {
                            follow_symlinks: true,
                            create_dest_path: true,
                            allow_wildcard: true,
                            ..Default::default()
                        },
                    )
                    .copy(
                        &bb,
                        "/etc/*",
                        "/a/etc/",
                        CopyOptions {
                            create_dest_path: true,
                            allow_wildcard: true,
                            allow_empty_wildcard: true,
                            exclude_patterns: vec!["shadow".into()],
                            ..Default::default()
                        },
                    )
                    .rm(
                        "/a/b/missing",
                        RmOptions {
                            allow_not_found: true,
                            ..Default::default()
                        },
                    )
                    .rm(
                        "/a/etc/g*",
                        RmOptions {
                            allow_wildcard: true,
                            ..Default::default()
                        },
                    ),
                Constraints::new().custom_name("fileops chain"),
            )
        }
        "fileops-on-image" => busybox()
            .file(
                FileAction::new().mkdir(
                    "/opt/envd",
                    0o755,
                    MkdirOptions {
                        make_parents: true,
                        ..Default::default()
                    },
                ),
                Constraints::new(),
            )
            .file(
                FileAction::new().mkfile(
                    "/opt/envd/config",
                    0o600,
                    b"key=value\n",
                    MkfileOptions::default(),
                ),
                Constraints::new(),
            )
            .file(
                FileAction::new().rm(
                    "/etc/motd",
                    RmOptions {
                        allow_not_found: true,
                        ..Default::default()
                    },
                ),
                Constraints::new(),
            ),
        "copy-chown-mode" => {
            let ctx = llb::local("context", LocalOptions::default());
            busybox()
                .file(
                    FileAction::new().copy(
                        &ctx,
                        "/bin",
                        "/usr/local/bin",
                        CopyOptions {
                            mode: Some(Chmod::Mode(0o755)),
                            chown: Some(Chown::ids(1000, 1000)),
                            copy_dir_contents_only: true,
                            create_dest_path: true,
                            created_time: Some(T),
                            include_patterns: vec!["*.sh".into()],
                            ..Default::default()
                        },
                    ),
                    Constraints::new(),
                )
                .file(
                    FileAction::new().copy(
                        &ctx,
                        "/etc/app.conf",
                        "/etc/app.conf",
                        CopyOptions {
                            chown: Some(Chown::parse("nobody")),
                            ..Default::default()
                        },
                    ),
                    Constraints::new(),
                )
        }
        "exec-options" => {
            let a = busybox()
                .network(pb::NetMode::None)
                .hostname("envkit")
                .add_extra_host("myhost", "10.0.0.1")
                .add_ulimit("nofile", 1024, 2048)
                .valid_exit_codes(&[0, 1])
                .run(sh("hostname; ping -c1 myhost || true"))
                .root();
            // the second exec starts from the first's result with fresh process metadata
            let b = a
                .reset_meta()
                .hostname("envkit")
                .network(pb::NetMode::Host)
                .security(pb::SecurityMode::Insecure)
                .cgroup_parent("/envkit");
            b.run(Run::args(["id"])).root()
        }
        "metadata" => {
            let base = llb::image_with(
                &format!("{REG}/library/busybox:latest"),
                ImageOptions {
                    constraints: Constraints::new().custom_name("[base] busybox"),
                    ..Default::default()
                },
            );
            let one = base
                .run(
                    Run::args(["true"]).constraints(
                        Constraints::new()
                            .custom_name("[1/2] RUN true")
                            .description("com.docker.dockerfile.v1.command", "RUN true")
                            .description("envd.step", "1")
                            .progress_group("pg1", "group one", false),
                    ),
                )
                .root();
            one.run(
                Run::args(["date"]).constraints(
                    Constraints::new()
                        .custom_name("[2/2] RUN date")
                        .ignore_cache()
                        .export_cache(Some(true))
                        .linux_resources(pb::LinuxResources {
                            memory: 512 << 20,
                            cpu_shares: 512,
                            ..Default::default()
                        }),
                ),
            )
            .root()
        }
        "platform-arm64" => llb::image_with(
            &format!("{REG}/library/busybox:latest"),
            ImageOptions {
                constraints: Constraints::new().platform(Platform::linux_arm64()),
                ..Default::default()
            },
        )
        .run(Run::args(["uname", "-m"]))
        .root(),
        "merge" => {
            let base = busybox();
            let a = llb::scratch().file(
                FileAction::new().mkfile("/a", 0o644, b"a", MkfileOptions::default()),
                Constraints::new(),
            );
            let b = llb::scratch().file(
                FileAction::new().mkfile("/b", 0o644, b"b", MkfileOptions::default()),
                Constraints::new(),
            );
            let c = base.run(sh("echo c > /c")).root();
            llb::merge(
                &[base, a, b, c],
                Constraints::new().custom_name("merge layers"),
            )
        }
        "diff" => {
            let lower = busybox();
            let upper = lower.run(sh("echo x > /x")).root();
            let d = llb::diff(&lower, &upper, Constraints::new());
            llb::merge(&[debian(), d], Constraints::new())
        }
        "parallel4" => parallel4_on(busybox()),
        "secret-ssh" => busybox()
            .run(
                sh("cat /run/secrets/token; ls -l $SSH_AUTH_SOCK")
                    .secret(SecretMount {
                        id: "token".into(),
                        target: Some("/run/secrets/token".into()),
                        env: None,
                        uid: 0,
                        gid: 0,
                        mode: 0o400,
                        optional: false,
                    })
                    .secret(SecretMount {
                        id: "apikey".into(),
                        target: None,
                        env: Some("API_KEY".into()),
                        uid: 0,
                        gid: 0,
                        mode: 0o400,
                        optional: false,
                    })
                    .secret(SecretMount {
                        id: "opt".into(),
                        target: Some("/run/secrets/opt".into()),
                        env: None,
                        uid: 0,
                        gid: 0,
                        mode: 0o400,
                        optional: true,
                    })
                    .ssh(SshMount {
                        id: "default".into(),
                        target: None,
                        uid: 0,
                        gid: 0,
                        mode: 0o600,
                        optional: false,
                    }),
            )
            .root(),
        "git-http" => {
            let git = llb::git(
                "https://github.com/moby/buildkit.git",
                "v0.32.2",
                llb::GitOptions {
                    keep_git_dir: true,
                    ..Default::default()
                },
            );
            let http = llb::http(
                "https://example.com/files/six.html",
                llb::HttpOptions {
                    checksum: Some(format!("sha256:{}", "0".repeat(64))),
                    filename: Some("six.html".into()),
                    perm: 0o644,
                    ..Default::default()
                },
            );
            llb::merge(&[git, http], Constraints::new())
        }
        "platform-mixed" => {
            let on = |p: &str| llb::ImageOptions {
                constraints: Constraints::new().platform(llb::Platform::parse(p).unwrap()),
                ..Default::default()
            };
            let bb = format!("{REG}/library/busybox:latest");
            let armv7 = llb::image_with(&bb, on("linux/arm/v7"));
            let arm64 = llb::image_with(&bb, on("linux/arm64"));
            debian()
                .file(
                    FileAction::new().copy(
                        &armv7,
                        "/bin/busybox",
                        "/busybox-armv7",
                        CopyOptions::default(),
                    ),
                    Constraints::new(),
                )
                .file(
                    FileAction::new().copy(
                        &arm64,
                        "/bin/busybox",
                        "/busybox-arm64",
                        CopyOptions::default(),
                    ),
                    Constraints::new(),
                )
        }
        "envd-python" => {
            let base = debian()
                .add_env("DEBIAN_FRONTEND", "noninteractive")
                .add_env(
                    "PATH",
                    "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                );
            let apt = base
                .run(
                    Run::shlex(
                        "bash -c \"apt-get update && apt-get install -y --no-install-recommends python3 python3-pip git\"",
                    )
                    .custom_name("[internal] install system packages")
                    .mount(Mount::cache("/var/cache/apt", "/var/cache/apt", CacheSharing::Locked))
                    .mount(Mount::cache("/var/lib/apt", "/var/lib/apt", CacheSharing::Locked)),
                )
                .root();
            let pip = apt
                .run(
                    Run::args([
                        "python3",
                        "-m",
                        "pip",
                        "install",
                        "--break-system-packages",
                        "numpy",
                        "requests",
                    ])
                    .custom_name("[internal] pip install numpy requests")
                    .mount(Mount::cache(
                        "/root/.cache/pip",
                        "/root/.cache/pip",
                        CacheSharing::Shared,
                    )),
                )
                .root();
            let cfg = llb::scratch().file(
                FileAction::new()
                    .mkdir(
                        "/etc/envd",
                        0o755,
                        MkdirOptions {
                            make_parents: true,
                            ..Default::default()
                        },
                    )
                    .mkfile(
                        "/etc/envd/env",
                        0o644,
                        b"ENVD=1\n",
                        MkfileOptions::default(),
                    ),
                Constraints::new().custom_name("[internal] configure envd"),
            );
            let d = llb::diff(&apt, &pip, Constraints::new());
            llb::merge(
                &[apt, d, cfg],
                Constraints::new().custom_name("[internal] merge layers"),
            )
        }
        _ => return None,
    };
    Some(s)
}

fn names() -> Vec<String> {
    let idx = String::from_utf8(read("INDEX", "txt")).unwrap_or_default();
    idx.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[derive(Debug)]
struct Listed {
    definition_digest: String,
    ops: Vec<(String, usize)>,
}

fn listed_digests(name: &str) -> Listed {
    let text = String::from_utf8(read(name, "digests")).unwrap_or_default();
    let mut definition_digest = String::new();
    let mut ops = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# definition sha256(det .pb)=") {
            definition_digest = rest.split_whitespace().next().unwrap_or("").to_string();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        ops.push((f[1].to_string(), f[2].parse().unwrap_or(0)));
    }
    Listed {
        definition_digest,
        ops,
    }
}

fn check_graph(name: &str) -> Result<(), String> {
    let state = build(name).ok_or_else(|| format!("{name}: no builder case"))?;
    let def = state
        .marshal(&opts())
        .map_err(|e| format!("{name}: marshal: {e}"))?;
    let want = Definition::from_bytes(&read(name, "pb")).map_err(|e| format!("{name}: {e}"))?;
    if def.def.len() != want.def.len() {
        return Err(format!(
            "{name}: {} ops, want {}\n got: {}\nwant: {}",
            def.def.len(),
            want.def.len(),
            dump(&def),
            dump(&want)
        ));
    }
    for (i, (g, w)) in def.def.iter().zip(&want.def).enumerate() {
        if g != w {
            return Err(format!(
                "{name}: op #{i} differs\n got {} {}\nwant {} {}\n got hex {}\nwant hex {}",
                Digest::of(g),
                op_json(g),
                Digest::of(w),
                op_json(w),
                hex::encode(g),
                hex::encode(w)
            ));
        }
    }
    if def.metadata != want.metadata {
        return Err(format!(
            "{name}: metadata differs\n got {:?}\nwant {:?}",
            def.metadata, want.metadata
        ));
    }
    let bytes = def.to_bytes();
    if bytes != read(name, "pb") {
        return Err(format!("{name}: Definition bytes differ"));
    }
    let listed = listed_digests(name);
    if Digest::of(&bytes).to_string() != listed.definition_digest {
        return Err(format!("{name}: definition digest differs"));
    }
    Ok(())
}

fn op_json(b: &[u8]) -> String {
    use prost::Message;
    match pb::Op::decode(b) {
        Ok(op) => llb::op_json(&op),
        Err(e) => format!("<undecodable: {e}>"),
    }
}

fn dump(d: &Definition) -> String {
    d.def
        .iter()
        .map(|b| format!("\n  {} {}", Digest::of(b), op_json(b)))
        .collect()
}

/// Graphs rebuilt through the builder; all must match byte for byte.
const REBUILT: &[&str] = &[
    "scratch-empty",
    "image-only",
    "image-local-registry",
    "image-run",
    "chain3",
    "run-cache-mount",
    "local-include",
    "fileops",
    "fileops-on-image",
    "copy-chown-mode",
    "exec-options",
    "metadata",
    "platform-arm64",
    "merge",
    "diff",
    "parallel4",
    "secret-ssh",
    "envd-python",
    "git-http",
    "platform-mixed",
];

#[test]
fn rebuilt_graphs_are_byte_identical() {
    let mut failures = Vec::new();
    for name in REBUILT {
        if let Err(e) = check_graph(name) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} graphs differ:\n{}",
        failures.len(),
        REBUILT.len(),
        failures.join("\n\n")
    );
}

/// `envkit solve --pull missing`: a Definition's image sources made to prefer the local image
/// are what BuildKit's client marshals for `llb.Image(ref, llb.ResolveModePreferLocal)`, byte
/// for byte; everything else keeps its bytes.
#[test]
fn image_sources_rewritten_to_prefer_local_images() {
    let golden = Definition::from_bytes(&read("parallel4", "pb")).unwrap();
    let rewritten = golden.with_local_images_preferred().unwrap().unwrap();
    let local_busybox = llb::image_with(
        &format!("{REG}/library/busybox:latest"),
        ImageOptions {
            resolve_mode: Some(ResolveMode::PreferLocal),
            ..Default::default()
        },
    );
    let want = parallel4_on(local_busybox).marshal(&opts()).unwrap();
    assert_eq!(rewritten.to_bytes(), want.to_bytes());
    assert_ne!(rewritten.to_bytes(), golden.to_bytes());
    // Done once: a second time changes nothing.
    assert!(rewritten.with_local_images_preferred().unwrap().is_none());
    for name in names() {
        let def = Definition::from_bytes(&read(&name, "pb")).unwrap();
        let Some(r) = def.with_local_images_preferred().unwrap() else {
            // Nothing changed: then there was no image source without a resolve mode.
            assert!(
                def.def
                    .iter()
                    .all(|b| !op_json(b).contains("docker-image://")
                        || op_json(b).contains("image.resolvemode")),
                "{name}"
            );
            continue;
        };
        llb::load(&r.to_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.def.len(), def.def.len(), "{name}");
        assert_eq!(r.metadata.len(), def.metadata.len(), "{name}");
        let images = def
            .def
            .iter()
            .filter(|b| op_json(b).contains("docker-image://"))
            .count();
        assert!(images > 0, "{name}: changed without an image source");
        for b in &r.def {
            let json = op_json(b);
            if json.contains("docker-image://") {
                assert!(json.contains("image.resolvemode"), "{name}: {json}");
            }
        }
    }
}

#[test]
fn every_golden_definition_loads_with_listed_digests() {
    for name in names() {
        let bytes = read(&name, "pb");
        let g = llb::load(&bytes).unwrap_or_else(|e| panic!("{name}: load: {e}"));
        let listed = listed_digests(&name);
        let mut got: Vec<String> = g.vertices.iter().map(|v| v.digest.to_string()).collect();
        if let Some((t, _)) = &g.terminal {
            got.push(t.to_string());
        }
        let want: Vec<String> = listed.ops.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(got, want, "{name}: digests in order");
        let def = Definition::from_bytes(&bytes).unwrap_or_default();
        for ((_, len), op) in listed.ops.iter().zip(&def.def) {
            assert_eq!(*len, op.len(), "{name}: op length");
        }
        assert_eq!(
            Digest::of(&bytes).to_string(),
            listed.definition_digest,
            "{name}: definition digest"
        );
    }
}

#[test]
fn json_and_dot_dumps_match_buildkit() {
    for name in names() {
        let g = llb::load(&read(&name, "pb")).unwrap_or_else(|e| panic!("{name}: load: {e}"));
        let want_json = String::from_utf8(read(&name, "json")).unwrap_or_default();
        assert_eq!(g.to_json_lines(), want_json, "{name}: JSON dump");
        let want_dot = String::from_utf8(read(&name, "dot")).unwrap_or_default();
        assert_eq!(g.to_dot(), want_dot, "{name}: DOT dump");
    }
}

#[test]
fn load_rejects_a_tampered_op() {
    let mut def = Definition::from_bytes(&read("chain3", "pb")).unwrap_or_default();
    // change a byte inside the first exec's command: its digest no longer matches what the
    // next op refers to
    let op = &mut def.def[1];
    let pos = op.windows(6).position(|w| w == b"echo 1").unwrap_or(0);
    op[pos + 5] = b'9';
    let err = llb::load(&def.to_bytes()).map(|_| ()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not in the definition"), "{msg}");
}

#[test]
fn load_rejects_a_dangling_input() {
    let def = Definition::from_bytes(&read("chain3", "pb")).unwrap_or_default();
    // drop the image source: the first exec now points at nothing
    let cut = Definition {
        def: def.def[1..].to_vec(),
        ..def
    };
    let err = llb::load(&cut.to_bytes()).map(|_| ()).unwrap_err();
    assert!(matches!(err, llb::LlbError::DanglingInput { .. }), "{err}");
    assert!(err.to_string().contains("sha256:854dca54"), "{err}");
}

#[test]
fn load_rejects_garbage_and_missing_terminal() {
    let err = llb::load(b"\xff\xff\xff\xff not protobuf")
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, llb::LlbError::Decode { .. }), "{err}");
    let def = Definition::from_bytes(&read("chain3", "pb")).unwrap_or_default();
    let no_term = Definition {
        def: def.def[..def.def.len() - 1].to_vec(),
        ..def
    };
    let err = llb::load(&no_term.to_bytes()).map(|_| ()).unwrap_err();
    assert!(matches!(err, llb::LlbError::NoTerminal), "{err}");
}

#[test]
fn marshal_is_deterministic_and_loadable() {
    for name in REBUILT {
        let Some(s) = build(name) else { continue };
        let a = s.marshal(&opts()).map(|d| d.to_bytes());
        let b = s.marshal(&opts()).map(|d| d.to_bytes());
        assert_eq!(a.as_ref().ok(), b.as_ref().ok(), "{name}");
        if let Ok(bytes) = a {
            assert!(llb::load(&bytes).is_ok(), "{name}");
        }
    }
}

#[test]
fn http_source_op_is_byte_identical() {
    // The http op of the git-http vector: checksum, filename and mode.
    let want = Definition::from_bytes(&read("git-http", "pb")).expect("decode git-http.pb");
    let state = llb::http(
        "https://example.com/files/six.html",
        llb::HttpOptions {
            checksum: Some(format!("sha256:{}", "0".repeat(64))),
            filename: Some("six.html".into()),
            perm: 0o644,
            ..Default::default()
        },
    );
    let def = state.marshal(&opts()).expect("marshal");
    let op = &def.def[0];
    let digest = Digest::of(op);
    assert!(
        want.def.iter().any(|w| w == op),
        "http op {digest} is not in git-http.pb: {}",
        op_json(op)
    );
    assert_eq!(
        def.metadata.get(digest.as_str()),
        want.metadata.get(digest.as_str())
    );
}
