//! The security issue's defects, each as a regression test named after it, run as the
//! unprivileged test user (see SECURITY.md for the rules they hold).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{TestEnv, stderr, stdout};

/// A busybox step that prints what it finds at `/m/<file>` with `local` (the build context
/// named `ctx`) mounted read-only at `/m`, only its `selector` part.
fn selector_definition(env: &TestEnv, name: &str, selector: &str, file: &str) -> PathBuf {
    use envkit::llb::{self, LocalOptions, Mount, Run};
    let ctx = llb::local("ctx", LocalOptions::default());
    let step = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(
            Run::args([
                "sh",
                "-c",
                &format!("cat /m/{file} || echo nothing-at-{file}; ls /m | sed 's/^/entry-/'"),
            ])
            .mount(Mount::bind("/m", &ctx).selector(selector).readonly()),
        )
        .root();
    let def = step
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    env.def_file(name, &def)
}

/// Defect 2: a read-only bind with a selector on a one-snapshot input (here the build
/// context) joined the selector to the snapshot's host path, so an absolute symlink in the
/// input bound a host directory into the step, which read the user's secret.
#[test]
fn ro_bind_selector_symlink_stays_in_its_input() {
    let env = TestEnv::new("selector");
    let secret = env.dir.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("s.txt"), "TOPSECRET\n").unwrap();
    let ctx = env.dir.join("ctx");
    std::fs::create_dir_all(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("sub/ok.txt"), "fine\n").unwrap();
    std::os::unix::fs::symlink(&secret, ctx.join("link")).unwrap();
    std::os::unix::fs::symlink("sub", ctx.join("rel")).unwrap();
    env.chown(&env.dir);
    let local = format!("ctx={}", ctx.display());
    let solve = |pb: &Path| {
        env.envkit(&[
            "solve",
            "--progress",
            "plain",
            "--local",
            &local,
            pb.to_str().unwrap(),
        ])
    };
    // A plain selector and a relative link inside the input work.
    for (sel, name) in [("sub", "plain"), ("rel", "relative")] {
        let out = solve(&selector_definition(&env, name, sel, "ok.txt"));
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("fine"), "{}", stderr(&out));
    }
    // The absolute link is the input's own path, where nothing is: never the host's.
    let out = solve(&selector_definition(&env, "absolute", "link", "s.txt"));
    let log = stderr(&out);
    assert!(
        !log.contains("TOPSECRET"),
        "the step read the host's file:\n{log}"
    );
    assert!(
        !out.status.success() && log.contains("does not exist in its input"),
        "{log}"
    );
}

/// Defect 4: the store was 0755, so another user could reach its files (and run an image's
/// setuid file, which is setuid to the store's owner).
#[test]
fn store_root_is_private() {
    let env = TestEnv::new("private");
    let out = env.envkit(&["images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&env.store()), 0o700);
    std::fs::set_permissions(env.store(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.envkit(&["images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&env.store()), 0o700, "a wide store root is narrowed");
    // Another local user cannot get in (as root, the test can ask `nobody`).
    // SAFETY: getuid has no preconditions and cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "ls"])
            .arg(env.store().join("content"))
            .output()
            .expect("runuser");
        assert!(!out.status.success(), "nobody listed the store");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    }
}

/// Pids of the test user's processes whose command line holds every one of `needles`.
fn pids_with(needles: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

/// Every process below `root` (by parent pid, as /proc says now).
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !out.contains(&pid) {
                out.push(pid);
                todo.push(pid);
            }
        }
    }
    out
}

/// Defect 5: a prune killed midway left a snapshot record over a half-deleted tree; the next
/// build said CACHED and exported a part of the files. Now a tree leaves in one rename.
#[test]
fn prune_killed_midway_leaves_no_partial_cache() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("prunekill");
    const FILES: u32 = 10_000;
    let many = llb::image("busybox").add_env("PATH", "/bin").run(Run::args([
        "sh",
        "-c",
        &format!("mkdir /many && cd /many && i=0; while [ $i -lt {FILES} ]; do : > f$i; i=$((i+1)); done"),
    ]));
    let def = many
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("many", &def);
    let store = env.store();
    let store_s = store.to_str().unwrap().to_string();
    let tar = env.dir.join("many.tar");
    let tar_s = format!("type=tar,dest={}", tar.display());
    // The root filesystem the build gives, as `type=tar`: how many files are in /many.
    let files_built = || {
        let out = env.envkit(&["solve", pb.to_str().unwrap(), "-o", &tar_s]);
        assert!(out.status.success(), "{}", stderr(&out));
        let f = std::fs::File::open(&tar).expect("tar");
        let mut a = tar::Archive::new(f);
        let n = a
            .entries()
            .expect("entries")
            .filter(|e| {
                e.as_ref()
                    .ok()
                    .and_then(|e| {
                        e.path()
                            .ok()
                            .map(|p| p.to_string_lossy().starts_with("many/f"))
                    })
                    .unwrap_or(false)
            })
            .count();
        (n, stderr(&out))
    };
    for delay_ms in [40u64, 200, 600] {
        let (n, log) = files_built();
        assert_eq!(n, FILES as usize, "{log}");
        let mut child = env
            .user_command(common::envkit_bin())
            .args(["--root", &store_s, "prune", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prune");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        for pid in pids_with(&["envkit", &store_s, "prune"]) {
            // SAFETY: kill(2) of a process the test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = child.wait();
        // The next build gives every file: from a whole cached tree or rebuilt, never a part.
        let (n, log) = files_built();
        assert_eq!(
            n, FILES as usize,
            "after a prune killed at {delay_ms} ms the build gave {n} files:\n{log}"
        );
        // And the store is sound.
        let out = env.envkit(&["check"]);
        assert!(
            out.status.success(),
            "after a prune killed at {delay_ms} ms: {}",
            stdout(&out)
        );
    }
    // What the killed prunes left is removed by the next run and shown by nothing after.
    let out = env.envkit(&["prune", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let du = stdout(&env.envkit(&["du"]));
    let temporary = du
        .lines()
        .find(|l| l.starts_with("temporary"))
        .unwrap_or_else(|| panic!("no temporary line in\n{du}"));
    assert_eq!(
        temporary.split_whitespace().nth(1),
        Some("0"),
        "leftovers stay:\n{du}"
    );
}

/// A dev environment project on the python test image (no daemons).
fn devenv_project(env: &TestEnv, name: &str) -> PathBuf {
    env.context_with(
        name,
        "# syntax=v1\ndef build():\n    base(image=\"python:3.11-slim\", dev=False)\n",
    )
}

/// Runs `cmd` (a shell line, as the test user) under a pty made by `script`; returns what the
/// terminal showed.
fn under_a_pty(env: &TestEnv, cmd: &str) -> String {
    under_a_pty_typing(env, cmd, b"")
}

/// [`under_a_pty`], typing `input` at the terminal.
fn under_a_pty_typing(env: &TestEnv, cmd: &str, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = env
        .user_command("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        s.write_all(input).expect("typing");
    }
    let out = child.wait_with_output().expect("script");
    drop(stdin);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Defects 3 and 6: a process in an environment pushed keystrokes into the user's host shell
/// with TIOCSTI through the terminal `exec` handed it; and a prune run with another
/// `$XDG_RUNTIME_DIR` deleted a running environment's layers.
#[test]
fn tiocsti_from_an_environment_reaches_no_host_shell() {
    let env = TestEnv::new("tiocsti");
    let name = format!("tiocsti-{}", std::process::id());
    let ctx = devenv_project(&env, &name);
    let out = env.envkit(&[
        "up",
        "--detach",
        "-p",
        ctx.to_str().unwrap(),
        "--name",
        &name,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inject = "import fcntl, termios\n\
                  for c in b'echo INJECTED\\n':\n    \
                  try: fcntl.ioctl(1, termios.TIOCSTI, bytes([c]))\n    \
                  except OSError as e: print('refused', e.errno); break";
    let script = env.dir.join("inject.py");
    std::fs::write(&script, inject).unwrap();
    env.chown(&script);
    let envkit = common::envkit_bin();
    for flags in ["", "--no-tty", "-t", "-i", "-it"] {
        // The host side: after envkit returns, whatever sits in the terminal's input queue is
        // what the user's shell would run next.
        let line = format!(
            "bash -c '{envkit} exec {flags} {name} -- python3 -c \"$(cat {s})\"; \
             read -t 2 got; echo \"host-read:[$got]\"'",
            s = script.display()
        );
        let text = under_a_pty(&env, &line);
        assert!(
            text.contains("host-read:[]"),
            "exec {flags}: the environment typed into the host terminal:\n{text}"
        );
        assert!(!text.contains("host-read:[echo INJECTED"), "{text}");
    }
    // A pty's output, exit code and window size come through.
    let text = under_a_pty(
        &env,
        &format!(
            "stty rows 41 cols 123; {envkit} exec {name} -- sh -c \
             'tty; echo size=$(stty size); echo on-a-pty; exit 7'; echo code=$?"
        ),
    );
    assert!(text.contains("size=41 123"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(
        text.contains("on-a-pty") && text.contains("code=7"),
        "{text}"
    );
    // `-i` alone is docker's: stdin attached through a pipe, no terminal; what is typed
    // reaches the command.
    let text = under_a_pty_typing(
        &env,
        &format!(
            "{envkit} exec -i {name} -- sh -c 'tty; test -t 1 || echo out-piped; read x; echo got=$x'"
        ),
        b"typed-line\n",
    );
    assert!(
        text.contains("not a tty") && text.contains("out-piped") && text.contains("got=typed-line"),
        "{text}"
    );

    // Defect 6: prune from another runtime dir keeps what the environment stands on.
    let other_runtime = env.dir.join("other-runtime");
    std::fs::create_dir_all(&other_runtime).unwrap();
    env.chown(&other_runtime);
    let out = env
        .user_command(envkit)
        .args(["prune", "--all"])
        .env("XDG_RUNTIME_DIR", &other_runtime)
        .output()
        .expect("prune");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.envkit(&[
        "exec",
        "--no-tty",
        &name,
        "--",
        "sh",
        "-c",
        "ls /usr/bin | wc -l",
    ]);
    let n: u32 = stdout(&out).trim().parse().unwrap_or(0);
    assert!(
        out.status.success() && n > 20,
        "the environment lost its files: {n} in /usr/bin\n{}",
        stderr(&out)
    );
    let out = env.envkit(&["destroy", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Writes a tar archive with `entries` (name, bytes) into the test dir; gzip when `gz`.
fn archive(env: &TestEnv, name: &str, entries: &[(&str, Vec<u8>)], gz: bool) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    for (n, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, n, &data[..]).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    let bytes = if gz {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&bytes).unwrap();
        e.finish().unwrap()
    } else {
        bytes
    };
    let p = env.dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    env.chown(&p);
    p
}

fn layer_tar(file: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, file, data).unwrap();
    b.into_inner().unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Defects 7 and 9: `envkit load` kept every JSON entry in memory without a total cap, let
/// gzip input expand without bound, and did not check layers against `rootfs.diff_ids`.
#[test]
fn load_refuses_altered_layers_bombs_and_metadata_floods() {
    let env = TestEnv::new("loadcaps");
    // A docker archive whose layer is not the one its config names.
    let real = layer_tar("hello.txt", b"hello\n");
    let other = layer_tar("hello.txt", b"altered\n");
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{}\"]}}}}",
        sha256_hex(&real)
    );
    let manifest =
        "[{\"Config\":\"config.json\",\"RepoTags\":[\"altered:1\"],\"Layers\":[\"l/layer.tar\"]}]";
    let good = archive(
        &env,
        "good.tar",
        &[
            ("config.json", config.clone().into_bytes()),
            ("l/layer.tar", real.clone()),
            ("manifest.json", manifest.as_bytes().to_vec()),
        ],
        false,
    );
    let out = env.envkit(&["load", "-i", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bad = archive(
        &env,
        "altered.tar",
        &[
            ("config.json", config.into_bytes()),
            ("l/layer.tar", other),
            ("manifest.json", manifest.as_bytes().to_vec()),
        ],
        false,
    );
    let out = env.envkit(&["load", "-i", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rootfs.diff_ids") && stderr(&out).contains("l/layer.tar"),
        "{}",
        stderr(&out)
    );

    // Metadata flood: 80 JSON entries of 1 MiB each (a few KiB gzipped).
    let flood: Vec<(String, Vec<u8>)> = (0..80)
        .map(|i| (format!("m{i}.json"), vec![b' '; 1 << 20]))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = flood.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let p = archive(&env, "flood.tar.gz", &refs, true);
    let out = env.envkit(&["load", "-i", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("too much metadata"),
        "{}",
        stderr(&out)
    );

    // A gzip bomb against a small max-layer-size.
    let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
    cfg.push_str("max-layer-size = 1048576\n");
    std::fs::write(env.config_path(), cfg).unwrap();
    let p = archive(&env, "bomb.tar.gz", &[("blob", vec![0u8; 8 << 20])], true);
    let out = env.envkit(&["load", "-i", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("expands to more than 1048576 bytes"),
        "{}",
        stderr(&out)
    );
    // Nothing half-written stays behind.
    let ingest = env.store().join("content/ingest");
    let left: Vec<_> = std::fs::read_dir(&ingest)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// `envkit check` finds a corrupt blob, a snapshot without its record (and what stands on
/// it), a dead process's temporary dir and a killed ingest; `--repair` removes them, a check
/// after that is clean, and the next build makes what was lost again.
#[test]
fn check_finds_and_repairs_damage() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("check");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    let a = base.run(Run::args(["sh", "-c", "echo one > /one"])).root();
    let b = a.run(Run::args(["sh", "-c", "echo two > /two"])).root();
    let def = b.marshal(&llb::MarshalOptions::default()).expect("marshal");
    let pb = env.def_file("check", &def);
    let build = || env.envkit(&["solve", pb.to_str().unwrap(), "-t", "checked:1"]);
    let out = build();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.envkit(&["check"]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("no damage"), "{}", stdout(&out));

    let store = env.store();
    // A corrupt blob: the image's config.
    let inspect = stdout(&env.envkit(&["images", "inspect", "checked:1"]));
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("inspect json");
    let config = v
        .pointer("/0/manifest/config/digest")
        .or_else(|| v.pointer("/manifest/config/digest"))
        .and_then(|d| d.as_str())
        .unwrap_or_else(|| panic!("no config digest in {inspect}"))
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::write(store.join("content/blobs/sha256").join(&config), b"{}").unwrap();
    // A snapshot without its record: the first step's.
    let snaps = store.join("snapshots");
    let mut ids: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snaps)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("ref.json").is_file())
        .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
        .collect();
    ids.sort();
    assert!(ids.len() >= 3, "{ids:?}");
    let victim = ids[1].1.clone();
    std::fs::remove_file(victim.join("ref.json")).unwrap();
    // Leftovers of killed processes.
    std::fs::create_dir_all(snaps.join("tmp-999999_1_0-left")).unwrap();
    std::fs::write(store.join("content/ingest/ingest-killed"), b"half").unwrap();
    env.chown(&store.join("content"));

    let out = env.envkit(&["check"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "do not hash to its name",
        "record (ref.json) is missing",
        "its chain needs snapshot",
        "left by a process that is gone",
        "image docker.io/library/checked:1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // A killed writer's ingest (nobody holds its lock) is removed by whatever opens the
    // store next: writers lock their file before they name it `ingest-*`.
    assert!(
        !store.join("content/ingest/ingest-killed").exists(),
        "{text}"
    );
    let out = env.envkit(&["check", "--repair"]);
    assert!(stdout(&out).contains("repaired"), "{}", stdout(&out));
    let out = env.envkit(&["check"]);
    assert!(out.status.success(), "after --repair: {}", stdout(&out));
    let out = build();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.envkit(&["check"]);
    assert!(out.status.success(), "after the rebuild: {}", stdout(&out));
}

/// A TCP server on the host's loopback that answers every connection with `reply`, and an
/// abstract unix socket of the host, for as long as the returned guards live.
fn host_services(reply: &'static str) -> (u16, String, std::os::unix::net::UnixListener) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            use std::io::Write;
            let _ = c.write_all(reply.as_bytes());
        }
    });
    use std::os::linux::net::SocketAddrExt;
    let name = format!("envkit-sec-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let u = std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract socket");
    (port, name, u)
}

/// Defect 10: build steps shared the host's network namespace and reached the user's
/// loopback services and abstract unix sockets. By default a step now has a network of its
/// own (slirp4netns, host loopback disabled); `network.host` still gives the host's.
#[test]
fn build_steps_get_a_network_of_their_own() {
    use envkit::llb::{self, Run};
    use envkit::pb;
    let env = TestEnv::new("sandboxnet");
    let (port, name, _unix) = host_services("HOST-SECRET\n");
    let probe = format!(
        "import socket\n\
         for host in ('127.0.0.1', '10.0.2.2'):\n    \
           try:\n        \
             s = socket.create_connection((host, {port}), 3); print(host, s.recv(64))\n    \
           except OSError as e: print(host, 'refused', e)\n\
         try:\n    \
           u = socket.socket(socket.AF_UNIX); u.connect('\\0{name}'); print('abstract connected')\n\
         except OSError as e: print('abstract refused', e)\n\
         print('probe-done')\n"
    );
    let step = |net: Option<pb::NetMode>| {
        let mut base = llb::image("python:3.11-slim");
        if let Some(n) = net {
            base = base.network(n);
        }
        base.run(Run::args(["python3", "-c", &probe]))
            .root()
            .marshal(&llb::MarshalOptions::default())
            .expect("marshal")
    };
    let pb_sandbox = env.def_file("sandbox", &step(None));
    let out = env.envkit(&["solve", "--progress", "plain", pb_sandbox.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("probe-done"), "{log}");
    assert!(
        !log.contains("HOST-SECRET"),
        "a sandboxed step reached the host's loopback:\n{log}"
    );
    assert!(log.contains("abstract refused"), "{log}");
    // The host's network is an entitlement, and then everything is reachable.
    let pb_host = env.def_file("host", &step(Some(pb::NetMode::Host)));
    let out = env.envkit(&["solve", "--progress", "plain", pb_host.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("network.host"), "{}", stderr(&out));
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "--allow",
        "network.host",
        pb_host.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("HOST-SECRET"), "{log}");
    assert!(log.contains("abstract connected"), "{log}");
}

/// Runs `envkit --root STORE ARGS` as the test user in the background, kills it (and so its
/// helpers, which die with it) with SIGKILL after `delay_ms`, and waits for it.
fn run_and_kill(env: &TestEnv, store: &Path, args: &[&str], delay_ms: u64) {
    let store_s = store.to_str().unwrap();
    let mut child = env
        .user_command(common::envkit_bin())
        .args(["--root", store_s])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("envkit");
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let mut pids = pids_with(&["envkit", store_s]);
    pids.extend(descendants(child.id() as i32));
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        // SAFETY: kill(2) of a process the test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = child.wait();
    // The crash is over when every killed process is gone: a helper in the middle of a
    // write dies only when the write returns, and until then it still holds its lease.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pids
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The security issue's crash suite: kill -9 at 20 points (a fixed seed) of build, pull,
/// export, push, load and prune; after each, the same command run again succeeds, and
/// `envkit check` finds nothing wrong with the store.
#[test]
fn kill9_at_random_points_leaves_a_sound_store() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("kill9");
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(Run::args([
            "sh",
            "-c",
            "mkdir /d && cd /d && i=0; while [ $i -lt 2000 ]; do echo $i > f$i; i=$((i+1)); done; \
             dd if=/dev/zero of=/big bs=1M count=16 2>/dev/null",
        ]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("kill9", &def);
    let pb = pb.to_str().unwrap().to_string();
    let main = env.store();
    let oci = env.dir.join("k.oci.tar");
    let saved = env.dir.join("k.saved.tar");
    let oci_out = format!("type=oci,dest={}", oci.display());
    let envkit_on = |store: &Path, args: &[&str]| {
        env.user_command(common::envkit_bin())
            .args(["--root", store.to_str().unwrap()])
            .args(args)
            .output()
            .expect("envkit")
    };
    // An image to export, push and save.
    let out = envkit_on(&main, &["solve", &pb, "-t", "kill9:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = envkit_on(&main, &["save", "kill9:1", "-o", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let registry = env.registry.clone();
    let mut seed: u64 = 0x5eed_cafe;
    for point in 0..20u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = 20 + seed % 900;
        let op = ["build", "pull", "export", "push", "load", "prune"][(seed >> 20) as usize % 6];
        // A pull needs a store without the base: each pull point gets a fresh one.
        let store = if op == "pull" {
            env.dir.join(format!("pull-store-{point}"))
        } else {
            main.clone()
        };
        let push_to = format!("{registry}/kill9/k:{point}");
        let args: Vec<&str> = match op {
            "build" => vec!["solve", &pb, "--no-cache", "-t", "kill9:1"],
            "pull" => vec!["solve", &pb],
            "export" => vec!["solve", &pb, "-o", &oci_out],
            "push" => vec!["push", "kill9:1", "--to", &push_to],
            "load" => vec!["load", "-i", saved.to_str().unwrap()],
            _ => vec!["prune", "--all"],
        };
        run_and_kill(&env, &store, &args, delay);
        let again = envkit_on(&store, &args);
        assert!(
            again.status.success(),
            "point {point}: {op} killed at {delay} ms, then run again: {}",
            stderr(&again)
        );
        let check = envkit_on(&store, &["check"]);
        assert!(
            check.status.success(),
            "point {point}: {op} killed at {delay} ms: {}",
            stdout(&check)
        );
        if op == "prune" {
            // Put the image back for the points that need it.
            let out = envkit_on(&main, &["load", "-i", saved.to_str().unwrap()]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
}

/// Four builds and a prune at once on one store, three times: every command succeeds (prune
/// waits for the builds, builds for the prune) or fails with a message, never a panic, and
/// `envkit check` finds the store sound after each round.
#[test]
fn four_builds_and_a_prune_at_once_keep_the_store_sound() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("concurrent");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    let shared = base
        .run(Run::args(["sh", "-c", "echo shared > /shared"]))
        .root();
    let pbs: Vec<String> = (0..4)
        .map(|i| {
            let def = shared
                .run(Run::args([
                    "sh",
                    "-c",
                    &format!("i=0; while [ $i -lt 300 ]; do echo $i > /f{i}-$i; i=$((i+1)); done"),
                ]))
                .root()
                .marshal(&llb::MarshalOptions::default())
                .expect("marshal");
            env.def_file(&format!("c{i}"), &def)
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for round in 0..3 {
        let mut children = Vec::new();
        for (i, pb) in pbs.iter().enumerate() {
            let name = format!("conc{i}:{round}");
            let mut args = vec!["solve", pb.as_str(), "-t", &name];
            if round > 0 {
                args.push("--no-cache");
            }
            let c = env
                .user_command(common::envkit_bin())
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("solve");
            children.push((format!("solve {i}"), c));
        }
        let c = env
            .user_command(common::envkit_bin())
            .args(["prune", "--all"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prune");
        children.push(("prune".to_string(), c));
        for (what, c) in children {
            let out = c.wait_with_output().expect("wait");
            let err = stderr(&out);
            assert!(
                !err.contains("panicked"),
                "round {round}: {what} panicked: {err}"
            );
            assert!(out.status.success(), "round {round}: {what} failed: {err}");
        }
        let out = env.envkit(&["check"]);
        assert!(out.status.success(), "round {round}: {}", stdout(&out));
    }
}
