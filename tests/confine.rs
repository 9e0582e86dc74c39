//! Build steps confined like BuildKit's (issue 15): Docker's default capability set, the
//! default seccomp profile and runc's masked and read-only /proc paths by default; `security.insecure` (with
//! `--allow security.insecure`) lifts them. Run as the unprivileged test user.

mod common;

use common::confine::{DEFAULT_TABLE, probe_definition};
use common::{TestEnv, stderr};

/// What `tests/data/confine_probe.py` tries; a default step is refused the first six.
const PROBES: [&str; 8] = [
    "unshare",
    "keyctl",
    "mount",
    "bpf",
    "perf_event_open",
    "ptrace",
    "proc_sys_write",
    "kcore_read",
];

/// The probe's `name=result` lines in a build log (the last of each name).
fn results(log: &str) -> std::collections::BTreeMap<String, String> {
    let names = PROBES;
    let mut out = std::collections::BTreeMap::new();
    for line in log.lines() {
        for n in names {
            if let Some(i) = line.find(&format!("{n}=")) {
                let v = line[i + n.len() + 1..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                out.insert(n.to_string(), v.to_string());
            }
        }
    }
    out
}

fn host_sysctl(name: &str) -> i64 {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

/// The step-confinement issue's table: unshare, keyctl, mount, bpf, perf_event_open, ptrace
/// of another user's process and /proc/sys writes are refused in a default step, and do what
/// the kernel allows a user namespace's root in an insecure one (as in BuildKit's insecure
/// mode); /proc/kcore (where the kernel has it) reads as nothing.
#[test]
fn a_default_step_is_refused_what_an_insecure_one_may_do() {
    use envkit::llb::{self, Run};
    use envkit::pb;
    let env = TestEnv::new("confine-probe");
    let step = |insecure: bool| {
        let mut base = llb::image("python:3.11-slim").add_env(
            "PATH",
            "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        if insecure {
            base = base.security(pb::SecurityMode::Insecure);
        }
        base.run(Run::args([
            "python3",
            "-c",
            include_str!("data/confine_probe.py"),
        ]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal")
    };
    let pb = env.def_file("probe-default", &step(false));
    let log = env.solve_log(&pb, &[]);
    let r = results(&log);
    for &n in &PROBES[..6] {
        assert_eq!(
            r.get(n).map(String::as_str),
            Some("EPERM"),
            "{n}: {r:?}\n{log}"
        );
    }
    assert!(
        matches!(
            r.get("proc_sys_write").map(String::as_str),
            Some("EROFS" | "EACCES" | "EPERM")
        ),
        "{r:?}"
    );
    match r.get("kcore_read").map(String::as_str) {
        Some("absent") => {
            eprintln!("NOTE: this kernel has no /proc/kcore; its masking is not seen here")
        }
        other => assert_eq!(other, Some("empty"), "{r:?}"),
    }

    let pb = env.def_file("probe-insecure", &step(true));
    let log = env.solve_log(&pb, &["--allow", "security.insecure"]);
    let r = results(&log);
    for n in ["unshare", "keyctl", "mount", "ptrace", "proc_sys_write"] {
        assert_eq!(
            r.get(n).map(String::as_str),
            Some("ok"),
            "{n}: {r:?}\n{log}"
        );
    }
    // What the host's sysctls leave a user namespace's root (BuildKit's insecure mode gets
    // the same): unprivileged bpf only where unprivileged_bpf_disabled is 0, user-space
    // perf events where perf_event_paranoid is at most 2.
    let bpf = if host_sysctl("unprivileged_bpf_disabled") == 0 {
        "ok"
    } else {
        "EPERM"
    };
    assert_eq!(r.get("bpf").map(String::as_str), Some(bpf), "{r:?}");
    if host_sysctl("perf_event_paranoid") <= 2 {
        assert_eq!(
            r.get("perf_event_open").map(String::as_str),
            Some("ok"),
            "{r:?}"
        );
    }
}

#[test]
fn steps_get_default_capabilities_and_a_masked_proc() {
    let env = TestEnv::new("confine");
    let step = probe_definition;
    let pb = env.def_file("default", &step(false));
    let log = env.solve_log(&pb, &[]);
    for want in DEFAULT_TABLE {
        assert!(log.contains(want), "{want}: {log}");
    }
    assert!(log.contains("CapEff:\t00000000a80425fb"), "{log}");
    // The default seccomp profile: one filter, unshare refused.
    assert!(
        log.contains("Seccomp:\t2") && log.contains("Seccomp_filters:\t1"),
        "{log}"
    );
    assert!(log.contains("unshare=refused"), "{log}");
    assert!(log.contains("NoNewPrivs:\t0"), "{log}");
    assert!(log.contains("keys=0 irq=0"), "{log}");
    assert!(
        log.contains("sys=refused") && log.contains("sys-ro"),
        "{log}"
    );

    let pb = env.def_file("insecure", &step(true));
    let out = env.envkit(&["solve", "--progress", "plain", pb.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("security.insecure"),
        "{}",
        stderr(&out)
    );
    let log = env.solve_log(&pb, &["--allow", "security.insecure"]);
    assert!(!log.contains("CapEff:\t00000000a80425fb"), "{log}");
    assert!(log.contains("CapEff:\t000001ff"), "{log}");
    assert!(log.contains("sys-rw"), "{log}");
    assert!(log.contains("Seccomp:\t0"), "{log}");
    assert!(log.contains("this step runs unconfined"), "{log}");
    assert!(log.contains("unshare=ok"), "{log}");
    assert!(!log.contains("keys=0 irq=0"), "{log}");

    // `[worker] no-new-privileges` (the [worker] section is the config's last).
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    text.push_str("no-new-privileges = true\n");
    std::fs::write(env.config_path(), text).unwrap();
    let pb = env.def_file("default", &step(false));
    let log = env.solve_log(&pb, &["--no-cache"]);
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");

    // `envkit info` shows the profile in force.
    let out = env.envkit(&["info"]);
    let text = common::stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for want in [
        "CHOWN DAC_OVERRIDE",
        "seccomp:      Docker's default",
        "/proc/keys",
        "no_new_privs: on",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let out = env.envkit(&["info", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info --json");
    assert!(
        v["confinement"]["seccomp"]["instructions"]
            .as_u64()
            .unwrap_or(0)
            > 300,
        "{v}"
    );
}

/// Environments are confined as steps are (and as `docker run` is), and sudo works in them;
/// `envkit up --allow security.insecure` starts one unconfined, and `exec` into it is
/// unconfined too.
#[test]
fn environments_are_confined_unless_started_insecure() {
    let env = TestEnv::new("confine-env");
    for insecure in [false, true] {
        let name = format!("confine-{}-{insecure}", std::process::id());
        let ctx = env.context_with(
            &name,
            "# syntax=v1\ndef build():\n    base(image=\"python:3.11-slim\", dev=False)\n    \
             install.apt_packages(name=[\"sudo\"])\n",
        );
        let mut up = vec![
            "up",
            "--detach",
            "-p",
            ctx.to_str().unwrap(),
            "--name",
            &name,
        ];
        if insecure {
            up.extend(["--allow", "security.insecure"]);
        }
        let out = env.envkit(&up);
        assert!(out.status.success(), "{}", stderr(&out));
        let exec_sh =
            |script: &str| env.envkit(&["exec", "--no-tty", &name, "--", "sh", "-c", script]);
        let out = exec_sh(
            "grep -E '^(CapEff|Seccomp):' /proc/self/status; echo keys=$(wc -c < /proc/keys); \
             awk '$2 == \"/sys\" { split($4, o, \",\"); print \"sys=\" o[1] }' /proc/mounts",
        );
        let text = common::stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        // The probe table, in the environment.
        let out = env.envkit(&[
            "exec",
            "--no-tty",
            &name,
            "--",
            "python3",
            "-c",
            include_str!("data/confine_probe.py"),
        ]);
        let r = results(&common::stdout(&out));
        assert!(out.status.success(), "{r:?}{}", stderr(&out));
        let want = if insecure { "ok" } else { "EPERM" };
        for n in ["unshare", "keyctl", "mount", "ptrace"] {
            assert_eq!(r.get(n).map(String::as_str), Some(want), "{n}: {r:?}");
        }
        if !insecure {
            for n in ["bpf", "perf_event_open"] {
                assert_eq!(r.get(n).map(String::as_str), Some("EPERM"), "{n}: {r:?}");
            }
            assert_ne!(
                r.get("proc_sys_write").map(String::as_str),
                Some("ok"),
                "{r:?}"
            );
        }
        if insecure {
            assert!(text.contains("Seccomp:\t0"), "{text}");
            assert!(!text.contains("CapEff:\t00000000a80425fb"), "{text}");
            assert!(text.contains("sys=rw"), "{text}");
        } else {
            assert!(text.contains("Seccomp:\t2"), "{text}");
            assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
            assert!(text.contains("keys=0"), "{text}");
            // The host's /sys (environments use the host's network) is bound read-only.
            assert!(
                text.contains("sys=ro") && !text.contains("sys=rw"),
                "{text}"
            );
            // sudo (setuid root) works for a user of the environment: no no_new_privs, and
            // SETUID/SETGID stay in the bounding set.
            let out = exec_sh(
                "useradd -m alice && echo 'alice ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/alice \
                 && setpriv --reuid=alice --regid=alice --init-groups sh -c \
                 'echo as=$(id -u); sudo -n id -u | sed s/^/sudo=/'",
            );
            let text = common::stdout(&out);
            assert!(out.status.success(), "{text}{}", stderr(&out));
            assert!(
                text.contains("as=1000") && text.contains("sudo=0"),
                "{text}"
            );
        }
        let out = env.envkit(&["destroy", &name]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}
