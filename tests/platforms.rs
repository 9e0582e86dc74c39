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
    let out = env.envkit(&["build", "-p", &ctx, "--platform", "linux/arm64,linux/amd64"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("one platform per build"),
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
