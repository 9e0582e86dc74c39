//! Builds for another platform, end to end as the unprivileged test user: `--platform
//! linux/arm64` on this amd64 machine runs the steps under QEMU user emulation in each of
//! the three ways envkit has (the host's binfmt_misc handler, a handler of the step's own user
//! namespace, and the emulator put before the step's program), writes arm64 image configs,
//! and an envd build's arm64 image runs in podman.

mod common;

use common::{TestEnv, stderr, stdout};

/// Appends `[worker] binfmt = MODE` to the test's config (its last section is `[worker]`).
fn set_binfmt(env: &TestEnv, mode: &str) {
    let path = env.config_path();
    let mut text = std::fs::read_to_string(&path).expect("read config");
    text.push_str(&format!("binfmt = \"{mode}\"\n"));
    std::fs::write(&path, text).expect("write config");
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

fn dockerfile_context(env: &TestEnv, name: &str, dockerfile: &str) -> String {
    let dir = env.dir.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write Dockerfile");
    env.chown(&dir);
    dir.to_str().expect("utf-8").to_string()
}

fn architecture(env: &TestEnv, image: &str) -> String {
    let out = env.envkit(&["images", "inspect", image]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let found = |v: &serde_json::Value| v.pointer("/config/architecture").cloned();
    let arch = found(&v)
        .or_else(|| v.as_array().and_then(|a| a.first()).and_then(found))
        .unwrap_or_else(|| panic!("no architecture in {v}"));
    arch.as_str().unwrap_or_default().to_string()
}

/// A Dockerfile step for linux/arm64 whose shell starts other programs (`cat`, `ls`) runs
/// through the host's handler (where the test setup could register one) and through a
/// handler of its own user namespace; the image config says arm64; the same file without
/// `--platform` runs natively.
#[test]
fn arm64_steps_run_under_qemu() {
    let env = TestEnv::new("platform-arm64");
    let ctx = dockerfile_context(
        &env,
        "arm",
        "FROM busybox:multiarch\nARG TARGETPLATFORM\n\
         RUN echo \"$TARGETPLATFORM $(uname -m)\" > /arch && cat /arch && ls /bin/ls\n",
    );
    let out = env.envkit(&["info"]);
    assert!(
        stdout(&out).contains("linux/arm64 ("),
        "info lists no way to run arm64: {}",
        stdout(&out)
    );
    let host_handler = std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    if host_handler {
        let log = env.build_ok(&["-p", &ctx, "-t", "arm:auto", "--platform", "linux/arm64"]);
        assert!(log.contains("linux/arm64 aarch64"), "{log}");
        assert!(log.contains("/bin/ls"), "{log}");
        assert_eq!(architecture(&env, "arm:auto"), "arm64");
    } else {
        eprintln!("NOT RUN: the host's binfmt_misc handler (none is registered here)");
    }
    if kernel_at_least(6, 7) {
        set_binfmt(&env, "own");
        let log = env.build_ok(&[
            "-p",
            &ctx,
            "-t",
            "arm:own",
            "--platform",
            "linux/arm64",
            "--no-cache",
        ]);
        assert!(log.contains("linux/arm64 aarch64"), "{log}");
        assert!(log.contains("/bin/ls"), "{log}");
        assert!(!log.contains("first program only"), "{log}");
        assert_eq!(architecture(&env, "arm:own"), "arm64");
    } else {
        eprintln!(
            "NOT RUN: a binfmt_misc handler of the step's own user namespace (Linux 6.7 or \
             later lets a user namespace mount binfmt_misc; this kernel does not)"
        );
    }

    let log = env.build_ok(&["-p", &ctx, "-t", "arm:native"]);
    assert!(log.contains("linux/amd64 x86_64"), "{log}");
    assert_eq!(architecture(&env, "arm:native"), "amd64");
}

/// Without binfmt_misc the emulator is bound into the step and put before its program: a
/// step of one program runs emulated, and the log says that programs it starts cannot.
#[test]
fn without_binfmt_the_emulator_runs_the_first_program() {
    let env = TestEnv::new("platform-off");
    set_binfmt(&env, "off");
    let ctx = dockerfile_context(
        &env,
        "arm",
        "FROM busybox:multiarch\nRUN [\"uname\", \"-m\"]\n",
    );
    let log = env.build_ok(&["-p", &ctx, "-t", "arm:off", "--platform", "linux/arm64"]);
    assert!(log.contains("aarch64"), "{log}");
    assert!(log.contains("first program only"), "{log}");
    let out = env.envkit(&[
        "debug",
        "llb",
        "-p",
        &ctx,
        "--platform",
        "linux/arm64,linux/amd64",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("takes one platform"),
        "{}",
        stderr(&out)
    );
    let out = env.envkit(&["build", "-p", &ctx, "--platform", "arm64"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("os/arch"), "{}", stderr(&out));
}

/// An envd file built with `--platform linux/arm64` on the arm64 Debian image: `uname -m` in
/// a step gives aarch64, and podman runs the exported image as arm64.
#[test]
fn an_envd_build_for_arm64_runs_in_podman() {
    if std::env::var("ENVKIT_TEST_ARM64").unwrap_or_default() != "1" {
        eprintln!(
            "NOT RUN: an_envd_build_for_arm64_runs_in_podman needs the arm64 Debian image and \
             a binfmt_misc handler (scripts/test-env.sh makes both where binfmt_misc can be mounted)"
        );
        return;
    }
    let env = TestEnv::new("platform-envd");
    let ctx = env.context_with(
        "armenv",
        "def build():\n    base(image=\"debian:bookworm-multiarch\", dev=False)\n    \
         run(commands=[\"uname -m > /arch\", \"dpkg --print-architecture >> /arch\"])\n",
    );
    let tar = env.dir.join("arm.tar");
    env.build_ok(&[
        "-p",
        ctx.to_str().unwrap(),
        "-t",
        "armenv:dev",
        "--platform",
        "linux/arm64",
        "-o",
        &format!("type=oci,dest={}", tar.display()),
    ]);
    assert_eq!(architecture(&env, "armenv:dev"), "arm64");
    let image = env.podman_load(&tar);
    let out = env.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--arch",
        "arm64",
        &image,
        "sh",
        "-c",
        "cat /arch; uname -m",
    ]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "aarch64\narm64\naarch64");
}

/// `skopeo` on an image reference, its stdout.
fn skopeo(args: &[&str]) -> String {
    let out = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(out.status.success(), "skopeo {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// One build for linux/amd64 and linux/arm64 makes one OCI index: `envkit images` lists both
/// platforms; the OCI archive holds the index, which skopeo reads, and podman runs each
/// platform's image as its architecture; `type=local` writes one directory per platform;
/// a push sends the index and both manifests; `type=docker` holds each platform's image;
/// `--platform-tags` makes one image per platform, named as envd names them.
#[test]
fn a_two_platform_build_makes_one_index() {
    let env = TestEnv::new("multi-arch");
    let ctx = dockerfile_context(
        &env,
        "multi",
        "FROM busybox:multiarch\nARG TARGETPLATFORM\n\
         RUN echo \"$TARGETPLATFORM $(uname -m)\" > /arch\nCMD [\"cat\", \"/arch\"]\n",
    );
    let two = "linux/amd64,linux/arm64";
    // The image of both platforms, sent where `-o` says.
    let build_to = |output: &str| {
        env.build_ok(&["-p", &ctx, "-t", "multi:1", "--platform", two, "-o", output])
    };
    let tar = env.dir.join("multi.tar");
    let log = build_to(&format!("type=oci,dest={}", tar.display()));
    assert!(log.contains("built docker.io/library/multi:1"), "{log}");
    let out = env.envkit(&["images"]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains("multi:1"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        line.ends_with("linux/amd64,linux/arm64"),
        "{}",
        stdout(&out)
    );

    let archive = format!("oci-archive:{}", tar.display());
    let index: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--raw", &archive])).expect("index JSON");
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");
    for arch in ["amd64", "arm64"] {
        let cfg: serde_json::Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--override-arch",
            arch,
            "--config",
            &archive,
        ]))
        .expect("config JSON");
        assert_eq!(cfg["architecture"], arch, "{cfg}");
        let out = env.podman(&["run", "--rm", "--network", "none", "--arch", arch, &archive]);
        assert!(out.status.success(), "podman run: {}", stderr(&out));
        let want = if arch == "amd64" {
            "linux/amd64 x86_64"
        } else {
            "linux/arm64 aarch64"
        };
        assert_eq!(stdout(&out).trim(), want);
    }

    let dest = env.dir.join("rootfs");
    build_to(&format!("type=local,dest={}", dest.display()));
    let arch_of =
        |dir: &str| std::fs::read_to_string(dest.join(dir).join("arch")).unwrap_or_default();
    assert_eq!(arch_of("linux_amd64").trim(), "linux/amd64 x86_64");
    assert_eq!(arch_of("linux_arm64").trim(), "linux/arm64 aarch64");

    let pushed = format!(
        "{}/envkit-test/multi:e2e-{}",
        env.registry,
        std::process::id()
    );
    build_to(&format!("type=image,name={pushed},push=true"));
    let remote = format!("docker://{pushed}");
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &remote,
    ]))
    .expect("index JSON");
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2), "{raw}");
    let cfg: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--override-arch",
        "arm64",
        "--config",
        &remote,
    ]))
    .expect("config JSON");
    assert_eq!(cfg["architecture"], "arm64", "{cfg}");

    // A docker archive has no index: each platform's image, tagged as --platform-tags names
    // them (BuildKit's docker exporter refuses several platforms).
    let docker = env.dir.join("d.tar");
    build_to(&format!("type=docker,dest={}", docker.display()));
    let out = env.podman(&["load", "-i", docker.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {}", stderr(&out));
    let loaded = stdout(&out);
    for (arch, want) in [
        ("amd64", "linux/amd64 x86_64"),
        ("arm64", "linux/arm64 aarch64"),
    ] {
        let tag = format!("docker.io/library/multi:1-linux-{arch}");
        assert!(loaded.contains(&tag), "{loaded}");
        let out = env.podman(&["run", "--rm", "--network", "none", "--arch", arch, &tag]);
        assert!(out.status.success(), "podman run: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), want);
    }

    // Into containerd: the index and both images, this machine's platform unpacked.
    let sock = common::containerd_socket();
    let ns = format!("envkit-multi-{}", std::process::id());
    build_to(&format!(
        "type=containerd,name=envkit-e2e/multi:1,address={sock},namespace={ns},unpack=true"
    ));
    let ctr = |args: &[&str]| env.ctr(&sock, &ns, args);
    let list = ctr(&["images", "ls"]);
    assert!(
        list.contains("docker.io/envkit-e2e/multi:1") && list.contains("linux/amd64,linux/arm64"),
        "{list}"
    );
    let check = ctr(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");
    // The image is the index; both platforms' manifests and configs are in its content store.
    let index_digest = list
        .lines()
        .find(|l| l.starts_with("docker.io/envkit-e2e/multi:1"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .unwrap_or_else(|| panic!("no digest in {list}"))
        .to_string();
    let index: serde_json::Value =
        serde_json::from_str(&ctr(&["content", "get", &index_digest])).expect("index JSON");
    let manifests = index["manifests"].as_array().expect("an index");
    assert_eq!(manifests.len(), 2, "{index}");
    for m in manifests {
        let manifest: serde_json::Value = serde_json::from_str(&ctr(&[
            "content",
            "get",
            m["digest"].as_str().unwrap_or_default(),
        ]))
        .expect("manifest JSON");
        let config: serde_json::Value = serde_json::from_str(&ctr(&[
            "content",
            "get",
            manifest["config"]["digest"].as_str().unwrap_or_default(),
        ]))
        .expect("config JSON");
        assert_eq!(
            config["architecture"], m["platform"]["architecture"],
            "{config}"
        );
    }

    // A prune keeps every blob of both platforms' images: the store saves the index whole.
    let out = env.envkit(&["prune", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.envkit(&["check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let saved = env.dir.join("saved.tar");
    let out = env.envkit(&["save", "multi:1", "-o", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--override-arch",
        "arm64",
        "--config",
        &format!("oci-archive:{}", saved.display()),
    ]))
    .expect("config JSON");
    assert_eq!(cfg["architecture"], "arm64", "{cfg}");

    env.build_ok(&[
        "-p",
        &ctx,
        "-t",
        "per:1",
        "--platform",
        two,
        "--platform-tags",
    ]);
    assert_eq!(architecture(&env, "per:1-linux-amd64"), "amd64");
    assert_eq!(architecture(&env, "per:1-linux-arm64"), "arm64");
}
