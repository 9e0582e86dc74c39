//! Build steps confined like BuildKit's (issue 15, first slice): Docker's default capability
//! set and runc's masked and read-only /proc paths by default; `security.insecure` (with
//! `--allow security.insecure`) lifts them. Run as the unprivileged test user.

mod common;

use common::{TestEnv, stderr};

/// What a step reports about itself: its capabilities, what the masked /proc/keys and
/// /proc/interrupts give (/proc/kcore is absent from some kernels, this machine's among them)
/// and whether /proc/sys can be written.
const PROBE: &str = "grep CapEff /proc/self/status; echo keys=$(cat /proc/keys | wc -c) irq=$(cat /proc/interrupts | wc -c); \
                     echo x 2>&1 > /proc/sys/kernel/hostname && echo sys=written \
                     || echo sys=refused; grep -q ' /proc/sys .*ro,' /proc/mounts \
                     && echo sys-ro || echo sys-rw";

#[test]
fn steps_get_default_capabilities_and_a_masked_proc() {
    use envkit::llb::{self, Run};
    use envkit::pb;
    let env = TestEnv::new("confine");
    let step = |insecure: bool| {
        let mut base = llb::image("busybox").add_env("PATH", "/bin");
        if insecure {
            base = base.security(pb::SecurityMode::Insecure);
        }
        base.run(Run::args(["sh", "-c", PROBE]))
            .root()
            .marshal(&llb::MarshalOptions::default())
            .expect("marshal")
    };
    let pb = env.def_file("default", &step(false));
    let out = env.envkit(&["solve", "--progress", "plain", pb.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("CapEff:\t00000000a80425fb"), "{log}");
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
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "--allow",
        "security.insecure",
        pb.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("CapEff:\t00000000a80425fb"), "{log}");
    assert!(log.contains("CapEff:\t000001ff"), "{log}");
    assert!(log.contains("sys-rw"), "{log}");
    assert!(!log.contains("keys=0 irq=0"), "{log}");
}
