//! A binfmt_misc handler of the step's own user namespace (Linux 6.7 and later let a user
//! namespace mount a binfmt_misc instance of its own): the step's emulator is registered
//! there with the `F` flag (the kernel opens it now, so it runs whatever root the step has),
//! and every program of the step and of the programs it starts runs through it. No root, and
//! nothing registered for the host.

use std::path::Path;

use nix::mount::MsFlags;

use crate::proto::Emulator;

/// Where the instance is mounted, in the helper's own mount namespace (the host's is not
/// touched). It stays mounted while the helper lives: unmounting it drops the handler.
const MOUNT_POINT: &str = "/proc/sys/fs/binfmt_misc";

/// The ELF header magic and mask of QEMU's architecture names (as qemu-binfmt-conf lists them).
fn elf_rule(arch: &str) -> Option<(&'static str, &'static str)> {
    // The mask most rules share, and the one of the x86 family.
    const MASK: &str =
        r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
    const MASK_X86: &str =
        r"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";
    Some(match arch {
        "aarch64" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
            MASK,
        ),
        "x86_64" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
            MASK_X86,
        ),
        "riscv64" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
            MASK,
        ),
        "arm" => (
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
            MASK,
        ),
        "ppc64le" => (
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
        ),
        "s390x" => (
            r"\x7f\x45\x4c\x46\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
            r"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
        ),
        "i386" => (
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00",
            MASK_X86,
        ),
        _ => return None,
    })
}

/// The registration line for `e`.
fn rule(e: &Emulator) -> Result<String, String> {
    let (magic, mask) =
        elf_rule(&e.arch).ok_or_else(|| format!("no binfmt_misc rule is known for {}", e.arch))?;
    let path = e
        .path
        .to_str()
        .filter(|p| !p.contains(':') && !p.contains('\n'))
        .ok_or_else(|| {
            format!(
                "{}: an emulator path binfmt_misc cannot take",
                e.path.display()
            )
        })?;
    Ok(format!(":envkit-{}:M::{magic}:{mask}:{path}:PF", e.arch))
}

/// [`register`] where `e` allows it.
pub(crate) fn register_if(e: &Emulator) -> Result<(), String> {
    if e.binfmt {
        register(e)
    } else {
        Err("binfmt_misc is not used ([worker] binfmt = \"off\")".into())
    }
}

/// Mounts a binfmt_misc instance for this user namespace and registers `e` in it; the error
/// says why that could not be done (an older kernel refuses the mount).
fn register(e: &Emulator) -> Result<(), String> {
    let line = rule(e)?;
    let at = Path::new(MOUNT_POINT);
    nix::mount::mount(
        Some("binfmt_misc"),
        at,
        Some("binfmt_misc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|err| format!("mounting binfmt_misc in the step's user namespace: {err}"))?;
    std::fs::write(at.join("register"), line.as_bytes())
        .map_err(|err| format!("registering {} with binfmt_misc: {err}", e.path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_names_the_emulator_with_the_fix_binary_flag() {
        let e = Emulator {
            path: "/usr/bin/qemu-aarch64-static".into(),
            arch: "aarch64".into(),
            binfmt: true,
        };
        let r = rule(&e).unwrap();
        assert!(
            r.starts_with(":envkit-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02"),
            "{r}"
        );
        assert!(r.ends_with(":/usr/bin/qemu-aarch64-static:PF"), "{r}");
        let odd = Emulator {
            path: "/a:b/qemu".into(),
            arch: "aarch64".into(),
            binfmt: true,
        };
        assert!(rule(&odd).is_err());
        let unknown = Emulator {
            path: "/q".into(),
            arch: "vax".into(),
            binfmt: true,
        };
        assert!(rule(&unknown).is_err());
    }
}
