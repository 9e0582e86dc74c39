//! The confinement probes, shared by `tests/confine.rs` (envkit's own engine) and the buildkitd
//! suite (`tests/buildkit.rs`, the same Definition on buildkitd v0.32.2).

use envkit::llb::{self, Run};
use envkit::pb;

/// What a step reports about itself: its capabilities, seccomp and no_new_privs, whether
/// `unshare -U` works, what the masked /proc/keys and /proc/interrupts give (/proc/kcore is
/// absent from some kernels, this machine's among them) and whether /proc/sys can be
/// written.
pub const PROBE: &str = "grep CapEff /proc/self/status; \
     grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status; \
     unshare -U true 2>/dev/null && echo unshare=ok || echo unshare=refused; \
     echo keys=$(cat /proc/keys | wc -c) irq=$(cat /proc/interrupts | wc -c); \
     echo x 2>&1 > /proc/sys/kernel/hostname && echo sys=written || echo sys=refused; \
     grep -q ' /proc/sys .*ro,' /proc/mounts && echo sys-ro || echo sys-rw";

/// One busybox step running [`PROBE`], `security.insecure` or not.
pub fn probe_definition(insecure: bool) -> llb::Definition {
    probe_definition_with(insecure, None)
}

/// [`probe_definition`] with a `NONCE` in the step's environment: a step no cache holds (a
/// remote BuildKit keeps its cache between runs, and LLB has no `--no-cache`).
pub fn probe_definition_with(insecure: bool, nonce: Option<&str>) -> llb::Definition {
    let mut base = llb::image("busybox").add_env("PATH", "/bin");
    if let Some(n) = nonce {
        base = base.add_env("NONCE", n);
    }
    if insecure {
        base = base.security(pb::SecurityMode::Insecure);
    }
    base.run(Run::args(["sh", "-c", PROBE]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal")
}

/// The lines of [`PROBE`]'s output that must be the same on every engine for a default
/// (not insecure) step.
pub const DEFAULT_TABLE: [&str; 7] = [
    "CapEff:\t00000000a80425fb",
    "NoNewPrivs:\t0",
    "Seccomp:\t2",
    "unshare=refused",
    "keys=0",
    "sys=refused",
    "sys-ro",
];
