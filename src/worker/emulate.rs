//! Steps of other architectures: whether a platform runs natively, through a binfmt_misc
//! handler the kernel applies inside namespaces (registered with the `F` flag: the
//! interpreter was opened when it was registered), or through a user-mode emulator bound
//! into the step and started before its program (what BuildKit does without binfmt).

use std::path::{Path, PathBuf};

use crate::config::{Binfmt, WorkerConfig};
use crate::platform::Platform;

/// How a step of some platform runs here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// This machine runs it.
    Native,
    /// The kernel runs it through this binfmt_misc handler (`qemu-aarch64`, say).
    Binfmt(String),
    /// This static emulator, bound into the step, runs its program.
    Emulator(PathBuf),
}

/// QEMU's name for an OCI architecture.
pub fn qemu_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        "mips64le" => "mips64el",
        "loong64" => "loongarch64",
        other => other,
    }
}

/// Where binfmt_misc handlers are listed.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// How a step for `platform` runs on this machine, or why it cannot (with what to install).
pub fn emulation_for(platform: &Platform, config: &WorkerConfig) -> Result<Emulation, String> {
    let host = Platform::host();
    if platform.os != host.os {
        return Err(format!(
            "running a step for {platform} on this {host} machine: only {} steps can run here",
            host.os
        ));
    }
    if platform.architecture == host.architecture || runs_natively(&host, platform) {
        return Ok(Emulation::Native);
    }
    let qarch = qemu_arch(&platform.architecture);
    if config.binfmt == Binfmt::Auto
        && let Some(name) = binfmt_handler(Path::new(BINFMT_DIR), qarch)
    {
        return Ok(Emulation::Binfmt(name));
    }
    if let Some(path) = config.emulators.get(&platform.architecture) {
        return if path.is_file() {
            Ok(Emulation::Emulator(path.clone()))
        } else {
            Err(format!(
                "[worker] emulators names {} for {}, which is not a file",
                path.display(),
                platform.architecture
            ))
        };
    }
    match find_on_path(&format!("qemu-{qarch}-static")) {
        Some(path) => Ok(Emulation::Emulator(path)),
        None => Err(format!(
            "running a step for {platform} on this {host} machine needs QEMU user emulation: \
install qemu-{qarch}-static (Debian: apt-get install qemu-user-static), or name a static \
emulator in config.toml's [worker] emulators ({} = \"/path/to/qemu-{qarch}-static\")",
            platform.architecture
        )),
    }
}

/// Whether this machine's kernel runs `platform`'s programs itself: 32-bit x86 on an x86-64
/// kernel (Debian's and every distribution's kernel has IA32 emulation).
fn runs_natively(host: &Platform, platform: &Platform) -> bool {
    host.architecture == "amd64" && platform.architecture == "386"
}

/// The architectures `envkit info` looks for emulators of.
const KNOWN: &[&str] = &[
    "amd64", "arm64", "arm", "riscv64", "ppc64le", "s390x", "386", "mips64le",
];

/// What runs here, for `envkit info`: this machine's platform, then each other Linux
/// architecture that runs, and how. Each architecture's probe program (`probe.rs`, written
/// into `probe_dir`) says what the kernel runs, as BuildKit finds it out.
pub fn platforms(config: &WorkerConfig, probe_dir: &Path) -> Vec<String> {
    let host = Platform::host();
    let ran = super::probe::runnable(probe_dir);
    let mut out = vec![format!("{host} (native)")];
    if !ran.contains(&host.architecture.as_str()) {
        out.push(format!(
            "(the probe programs could not run in {}: is it mounted noexec?)",
            probe_dir.display()
        ));
    }
    for arch in KNOWN {
        let p = Platform::new("linux", arch, "");
        if p.architecture == host.architecture {
            continue;
        }
        let probed = ran.contains(arch);
        let how = match emulation_for(&p, config) {
            Ok(Emulation::Native) if probed => "native: the kernel runs it".to_string(),
            Ok(Emulation::Native) => continue,
            Ok(Emulation::Binfmt(name)) if probed => format!("binfmt_misc handler {name}"),
            Ok(Emulation::Binfmt(name)) => format!(
                "binfmt_misc handler {name}, whose probe program did not run: steps will fail"
            ),
            Ok(Emulation::Emulator(path)) => format!(
                "emulated by {}{}",
                path.display(),
                match config.binfmt {
                    Binfmt::Off => ", before the step's first program only",
                    _ => ", registered in each step's own binfmt_misc",
                }
            ),
            Err(_) if probed => "runs on this host through a binfmt_misc handler without the F \
                                 flag, which a step's root cannot use: install qemu-user-static"
                .to_string(),
            Err(_) => continue,
        };
        out.push(format!("{p} ({how})"));
    }
    out
}

/// The name of an enabled binfmt_misc handler for QEMU's `qarch` registered with the `F`
/// flag (only those work in a step's own root), in `dir`.
fn binfmt_handler(dir: &Path, qarch: &str) -> Option<String> {
    let name = format!("qemu-{qarch}");
    let text = std::fs::read_to_string(dir.join(&name)).ok()?;
    let enabled = text.lines().next() == Some("enabled");
    let fixed = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .is_some_and(|f| f.trim().contains('F'));
    (enabled && fixed).then_some(name)
}

/// `name` in a directory of `$PATH`, as an executable file.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binfmt_handlers_need_to_be_enabled_and_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "qemu-aarch64",
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n",
        );
        write(
            "qemu-riscv64",
            "enabled\ninterpreter /usr/bin/qemu-riscv64\nflags: P\n",
        );
        write(
            "qemu-s390x",
            "disabled\ninterpreter /usr/bin/qemu-s390x-static\nflags: F\n",
        );
        assert_eq!(
            binfmt_handler(dir.path(), "aarch64").as_deref(),
            Some("qemu-aarch64")
        );
        assert_eq!(binfmt_handler(dir.path(), "riscv64"), None, "no F flag");
        assert_eq!(binfmt_handler(dir.path(), "s390x"), None, "disabled");
        assert_eq!(binfmt_handler(dir.path(), "ppc64le"), None, "none");
    }

    #[test]
    fn the_host_is_native_and_other_systems_are_refused() {
        let config = WorkerConfig::default();
        assert_eq!(
            emulation_for(&Platform::host(), &config),
            Ok(Emulation::Native)
        );
        let e = emulation_for(&Platform::new("windows", "amd64", ""), &config).unwrap_err();
        assert!(e.contains("only linux steps"), "{e}");
    }

    #[test]
    fn a_configured_emulator_is_used_and_a_missing_one_is_named() {
        let foreign = if Platform::host().architecture == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        let dir = tempfile::tempdir().unwrap();
        let emu = dir.path().join("qemu-static");
        std::fs::write(&emu, b"").unwrap();
        let mut config = WorkerConfig {
            binfmt: Binfmt::Off,
            ..WorkerConfig::default()
        };
        config.emulators.insert(foreign.into(), emu.clone());
        let p = Platform::new("linux", foreign, "");
        assert_eq!(emulation_for(&p, &config), Ok(Emulation::Emulator(emu)));
        config
            .emulators
            .insert(foreign.into(), dir.path().join("absent"));
        let e = emulation_for(&p, &config).unwrap_err();
        assert!(e.contains("not a file"), "{e}");
    }
}
