//! Which architectures this machine runs, found the way BuildKit finds them: a tiny static
//! program per architecture (its `exit(0)`, nothing else) is written to a file and run. The
//! kernel runs it natively, through a binfmt_misc handler, or not at all; a handler that is
//! registered but broken (its interpreter gone, say) fails the probe as it would fail a step.
//!
//! The programs are made here from a few instruction words each, in a minimal ELF file (one
//! loadable segment), so no foreign binary is shipped; each is checked under QEMU in the tests.

use std::path::Path;

/// One architecture's probe program.
struct Probe {
    /// OCI architecture name.
    arch: &'static str,
    /// ELF class: 64-bit (else 32-bit).
    wide: bool,
    /// Little-endian (else big-endian).
    little: bool,
    machine: u16,
    flags: u32,
    /// The instructions, in the target's byte order.
    code: Vec<u8>,
}

/// 32-bit instruction words in the given byte order.
fn words(little: bool, ws: &[u32]) -> Vec<u8> {
    ws.iter()
        .flat_map(|w| {
            if little {
                w.to_le_bytes()
            } else {
                w.to_be_bytes()
            }
        })
        .collect()
}

fn probes() -> Vec<Probe> {
    vec![
        Probe {
            arch: "amd64",
            wide: true,
            little: true,
            machine: 62,
            flags: 0,
            // mov eax, 60 (exit); xor edi, edi; syscall
            code: vec![0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05],
        },
        Probe {
            arch: "arm64",
            wide: true,
            little: true,
            machine: 183,
            flags: 0,
            // mov x0, #0; mov x8, #93 (exit); svc #0
            code: words(true, &[0xd280_0000, 0xd280_0ba8, 0xd400_0001]),
        },
        Probe {
            arch: "arm",
            wide: false,
            little: true,
            machine: 40,
            // EABI version 5
            flags: 0x0500_0000,
            // mov r0, #0; mov r7, #1 (exit); svc #0
            code: words(true, &[0xe3a0_0000, 0xe3a0_7001, 0xef00_0000]),
        },
        Probe {
            arch: "riscv64",
            wide: true,
            little: true,
            machine: 243,
            flags: 0,
            // li a0, 0; li a7, 93 (exit); ecall
            code: words(true, &[0x0000_0513, 0x05d0_0893, 0x0000_0073]),
        },
        Probe {
            arch: "ppc64le",
            wide: true,
            little: true,
            machine: 21,
            // ELFv2 ABI
            flags: 2,
            // li r0, 1 (exit); li r3, 0; sc
            code: words(true, &[0x3800_0001, 0x3860_0000, 0x4400_0002]),
        },
        Probe {
            arch: "s390x",
            wide: true,
            little: false,
            machine: 22,
            flags: 0,
            // lghi %r2, 0; svc 1 (exit)
            code: vec![0xa7, 0x29, 0x00, 0x00, 0x0a, 0x01],
        },
        Probe {
            arch: "386",
            wide: false,
            little: true,
            machine: 3,
            flags: 0,
            // xor ebx, ebx; mov eax, 1 (exit); int 0x80
            code: vec![0x31, 0xdb, 0xb8, 1, 0, 0, 0, 0xcd, 0x80],
        },
        Probe {
            arch: "mips64le",
            wide: true,
            little: true,
            machine: 8,
            // MIPS64r2, CPIC, PIC, NOREORDER (the n64 ABI)
            flags: 0x8000_0007,
            // li v0, 5058 (exit); li a0, 0; syscall
            code: words(true, &[0x2402_13c2, 0x2404_0000, 0x0000_000c]),
        },
    ]
}

/// A static ELF executable of one loadable segment that runs `p.code`.
fn elf(p: &Probe) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(160);
    let (ehsize, phsize): (u16, u16) = if p.wide { (64, 56) } else { (52, 32) };
    let base: u64 = if p.wide { 0x40_0000 } else { 0x1_0000 };
    let entry = base + u64::from(ehsize) + u64::from(phsize);
    let total = u64::from(ehsize) + u64::from(phsize) + p.code.len() as u64;
    let le = p.little;
    let u16b = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
    let u32b = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
    let u64b = |v: u64| if le { v.to_le_bytes() } else { v.to_be_bytes() };
    // e_ident: magic, class, data, version, OS ABI (System V), padding.
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F']);
    out.push(if p.wide { 2 } else { 1 });
    out.push(if le { 1 } else { 2 });
    out.push(1);
    out.extend_from_slice(&[0; 9]);
    out.extend_from_slice(&u16b(2)); // ET_EXEC
    out.extend_from_slice(&u16b(p.machine));
    out.extend_from_slice(&u32b(1)); // EV_CURRENT
    if p.wide {
        out.extend_from_slice(&u64b(entry));
        out.extend_from_slice(&u64b(u64::from(ehsize))); // e_phoff
        out.extend_from_slice(&u64b(0)); // e_shoff
    } else {
        out.extend_from_slice(&u32b(entry as u32));
        out.extend_from_slice(&u32b(u32::from(ehsize)));
        out.extend_from_slice(&u32b(0));
    }
    out.extend_from_slice(&u32b(p.flags));
    out.extend_from_slice(&u16b(ehsize));
    out.extend_from_slice(&u16b(phsize));
    out.extend_from_slice(&u16b(1)); // e_phnum
    out.extend_from_slice(&u16b(0)); // e_shentsize
    out.extend_from_slice(&u16b(0)); // e_shnum
    out.extend_from_slice(&u16b(0)); // e_shstrndx
    // The one PT_LOAD segment: the whole file, readable and executable.
    let (load, rx) = (1u32, 5u32);
    if p.wide {
        out.extend_from_slice(&u32b(load));
        out.extend_from_slice(&u32b(rx));
        out.extend_from_slice(&u64b(0)); // p_offset
        out.extend_from_slice(&u64b(base)); // p_vaddr
        out.extend_from_slice(&u64b(base)); // p_paddr
        out.extend_from_slice(&u64b(total)); // p_filesz
        out.extend_from_slice(&u64b(total)); // p_memsz
        out.extend_from_slice(&u64b(0x1_0000)); // p_align
    } else {
        out.extend_from_slice(&u32b(load));
        out.extend_from_slice(&u32b(0));
        out.extend_from_slice(&u32b(base as u32));
        out.extend_from_slice(&u32b(base as u32));
        out.extend_from_slice(&u32b(total as u32));
        out.extend_from_slice(&u32b(total as u32));
        out.extend_from_slice(&u32b(rx));
        out.extend_from_slice(&u32b(0x1_0000));
    }
    out.extend_from_slice(&p.code);
    out
}

/// The architectures whose probe program this machine runs (natively or through a
/// binfmt_misc handler), each probe written into `dir` and run there.
pub fn runnable(dir: &Path) -> Vec<&'static str> {
    probes()
        .iter()
        .filter(|p| run_probe(dir, p).unwrap_or(false))
        .map(|p| p.arch)
        .collect()
}

fn run_probe(dir: &Path, p: &Probe) -> std::io::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("probe-{}", p.arch));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&path)?;
        f.write_all(&elf(p))?;
    }
    let status = std::process::Command::new(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_file(&path);
    Ok(status.is_ok_and(|s| s.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each probe program exits 0 under QEMU's emulator of its architecture (run directly,
    /// not through binfmt_misc), so a failed probe means the machine lacks the architecture,
    /// not that the program is wrong.
    #[test]
    fn every_probe_exits_zero_under_its_emulator() {
        let dir = tempfile::tempdir().unwrap();
        let mut not_run = Vec::new();
        for p in probes() {
            let path = dir.path().join(p.arch);
            std::fs::write(&path, elf(&p)).unwrap();
            // QEMU opens only executable files.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            let qemu = format!(
                "/usr/bin/qemu-{}-static",
                crate::worker::emulate::qemu_arch(p.arch)
            );
            if !Path::new(&qemu).is_file() {
                not_run.push(p.arch);
                continue;
            }
            let out = std::process::Command::new(&qemu)
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {:?} {}",
                p.arch,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !not_run.is_empty() {
            eprintln!("NOT RUN: the probes of {not_run:?} (no qemu-user-static here)");
        }
    }

    /// This machine's own architecture always passes its probe.
    #[test]
    fn the_host_architecture_runs() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::platform::Platform::host().architecture;
        let found = runnable(dir.path());
        if probes().iter().any(|p| p.arch == host) {
            assert!(found.contains(&host.as_str()), "{found:?}");
        }
    }
}
