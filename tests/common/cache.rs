//! The cache tests' graph and what they read from logs and caches (`tests/cache.rs`, and the
//! buildkitd interop in `tests/buildkit.rs`).

use std::path::Path;

use envkit::llb::{
    self, Constraints, CopyOptions, FileAction, LocalOptions, MkfileOptions, RmOptions, Run,
};

/// busybox, a step that writes, one that changes nothing, a file op, a copy of the local
/// source `ctx` (keyed by its content), a step that deletes a file of the image (a whiteout)
/// and one that writes `last`.
pub fn graph(reg: &str, last: &str) -> llb::Definition {
    llb::image(&format!("{reg}/library/busybox:latest"))
        .run(Run::args([
            "sh",
            "-c",
            "echo one > /one && mkdir -p /d && echo x > /d/x",
        ]))
        .root()
        .run(Run::args(["true"]))
        .root()
        .file(
            FileAction::new().mkfile("/made", 0o640, b"by a file op\n", MkfileOptions::default()),
            Constraints::new(),
        )
        .file(
            FileAction::new().copy(
                &llb::local("ctx", LocalOptions::default()),
                "/",
                "/ctx",
                CopyOptions::default(),
            ),
            Constraints::new(),
        )
        .run(Run::args(["sh", "-c", "rm -rf /d /etc/motd; rm -f /one"]))
        .root()
        .file(
            FileAction::new().rm(
                "/nothing",
                RmOptions {
                    allow_not_found: true,
                    ..Default::default()
                },
            ),
            Constraints::new(),
        )
        .run(Run::args(["sh", "-c", &format!("echo {last} > /last")]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal")
}

/// The image digest a build's last line names.
pub fn built_digest(log: &str) -> String {
    log.lines()
        .filter(|l| l.starts_with("=> built "))
        .find_map(|l| l.split_once("(sha256:").map(|(_, d)| d.to_string()))
        .and_then(|d| d.split_once(')').map(|(d, _)| format!("sha256:{d}")))
        .unwrap_or_else(|| panic!("no image digest in:\n{log}"))
}

/// The exec and file steps that ran (`DONE`) rather than came from a cache (`CACHED`).
pub fn ran(log: &str) -> Vec<String> {
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::new();
    for l in log.lines() {
        let Some((id, what)) = l.strip_prefix('#').and_then(|r| r.split_once(' ')) else {
            continue;
        };
        if what.starts_with("exec:") || what.starts_with("file:") {
            names.insert(id.to_string(), what.to_string());
        } else if what.starts_with("DONE")
            && let Some(name) = names.get(id)
        {
            out.push(name.clone());
        }
    }
    out
}

pub fn records_with_results(cache: &Path) -> usize {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("index.json")).expect("index.json"))
            .expect("json");
    let m = index["manifests"][0]["digest"]
        .as_str()
        .expect("manifest digest");
    let blob = |d: &str| cache.join("blobs/sha256").join(&d["sha256:".len()..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(m)).expect("manifest")).expect("json");
    let c = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(c)).expect("config")).expect("json");
    config["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r.get("layers").is_some())
        .count()
}

/// The local source of [`graph`]: a few files, owned by the test user.
pub fn context(env: &super::TestEnv, name: &str) -> std::path::PathBuf {
    let dir = env.dir.join(name);
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("a.txt"), "a\n").expect("write");
    std::fs::write(dir.join("sub/b.txt"), "b\n").expect("write");
    std::os::unix::fs::symlink("a.txt", dir.join("link")).expect("symlink");
    env.chown(&dir);
    dir
}
