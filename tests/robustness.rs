//! Properties of the compile path, and robustness against bad input.
//!
//! - Marshal → decode → encode is the identity for every example's Definition and every
//!   golden vector, and two marshals of the same file give the same bytes and digests.
//! - Random mutations of the examples' build files and of Definition bytes (a fixed seed and a
//!   bounded number of cases, so runs are repeatable) give errors, never a panic or a hang.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envkit::frontend::{Options, evaluate_with};
use envkit::llb::{self, Definition};
use envkit::lower::{self, BaseImage, LowerOptions, Target};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn example_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("build.envd").is_file())
        .collect();
    v.sort();
    v
}

fn opts(dir: &Path, target: Target) -> LowerOptions {
    LowerOptions {
        context_dir: dir.to_path_buf(),
        env_name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        owner: (1000, 1000),
        platform: Default::default(),
        target,
        ssh_public_key: "ssh-ed25519 AAAA test".into(),
        ssh_public_key_path: String::new(),
        ca_bundle: None,
        proxy_env: None,
        base_resolve: None,
    }
}

/// Compiles the example in `dir` (with `source` as its build file when given) from a copy at
/// `/tmp/envkit-robust/<slot>/<name>`: the same slot gives the same paths, so the same bytes.
fn compile(
    dir: &Path,
    source: Option<&str>,
    target: Target,
    slot: &str,
) -> Result<Definition, String> {
    let cache = tempfile::tempdir().map_err(|e| e.to_string())?;
    let name = dir.file_name().ok_or("no name")?;
    let ctx_dir = Path::new("/tmp/envkit-robust").join(slot).join(name);
    let _ = std::fs::remove_dir_all(&ctx_dir);
    std::fs::create_dir_all(&ctx_dir).map_err(|e| e.to_string())?;
    let ctx = Ctx(ctx_dir);
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.map_err(|e| e.to_string())?;
        let rel = entry.path().strip_prefix(dir).map_err(|e| e.to_string())?;
        let dest = ctx.path().join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
        } else {
            std::fs::copy(entry.path(), &dest).map_err(|e| e.to_string())?;
        }
    }
    if let Some(src) = source {
        std::fs::write(ctx.path().join("build.envd"), src).map_err(|e| e.to_string())?;
    }
    let env = evaluate_with(
        ctx.path(),
        "build.envd",
        "build",
        &Options::hermetic(cache.path()),
    )
    .map_err(|e| e.to_string())?;
    let lowered = lower::lower(&env, &BaseImage::default(), &opts(ctx.path(), target))
        .map_err(|e| e.to_string())?;
    Ok(lowered.definition)
}

/// A context directory, removed when dropped.
struct Ctx(PathBuf);

impl Ctx {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn marshal_decode_encode_is_the_identity() {
    for dir in example_dirs() {
        for target in [Target::Embedded, Target::Buildkitd] {
            let def = compile(&dir, None, target, "identity")
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let bytes = def.to_bytes();
            let again = Definition::from_bytes(&bytes).expect("decode");
            assert_eq!(again.to_bytes(), bytes, "{}", dir.display());
            let reencoded = again.reencoded().expect("re-encode");
            assert_eq!(reencoded.to_bytes(), bytes, "{}", dir.display());
            let graph = llb::load(&bytes).expect("load");
            assert_eq!(graph.vertices.len() + 1, def.def.len(), "{}", dir.display());
        }
    }
    for entry in std::fs::read_dir(repo("tests/golden/llb")).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "pb") {
            let bytes = std::fs::read(&path).expect("read");
            let def = Definition::from_bytes(&bytes).expect("decode");
            assert_eq!(
                def.reencoded().expect("re-encode").to_bytes(),
                bytes,
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn digests_are_stable_across_runs() {
    for dir in example_dirs() {
        let a = compile(&dir, None, Target::Buildkitd, "stable").expect("compile");
        let b = compile(&dir, None, Target::Buildkitd, "stable").expect("compile");
        assert_eq!(a.digests(), b.digests(), "{}", dir.display());
        assert!(a.to_bytes() == b.to_bytes(), "{}", dir.display());
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut out = src.to_vec();
    let pieces: &[&[u8]] = &[
        b"(",
        b")",
        b"[",
        b"]",
        b"\"",
        b"'",
        b":",
        b",",
        b"=",
        b"\n",
        b"    ",
        b"def ",
        b"1",
        b"None",
        b"install.",
        b"base(",
        b"dev=True",
        b"lambda: ",
        b"*",
        b"**",
        b"\\",
        b"#",
        "é".as_bytes(),
    ];
    for _ in 0..=rng.below(4) {
        if out.is_empty() {
            out.extend_from_slice(pieces[rng.below(pieces.len())]);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(4) {
            0 => {
                out.remove(at);
            }
            1 => {
                let p = pieces[rng.below(pieces.len())];
                out.splice(at..at, p.iter().copied());
            }
            2 => out[at] = (rng.next() & 0xff) as u8,
            _ => {
                let len = rng.below(16).min(out.len() - at);
                out.drain(at..at + len);
            }
        }
    }
    out
}

#[test]
fn mutated_build_files_give_errors_not_panics() {
    let mut rng = Rng(0x05ee_de4d_0001);
    let deadline = Duration::from_secs(10);
    let mut cases = 0;
    let mut errors = 0;
    for dir in example_dirs() {
        let src = std::fs::read(dir.join("build.envd")).expect("read");
        for _ in 0..20 {
            let bytes = mutate(&mut rng, &src);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let start = Instant::now();
            let result = std::panic::catch_unwind(|| {
                compile(&dir, Some(&text), Target::Buildkitd, "mutated")
            });
            assert!(
                start.elapsed() < deadline,
                "{}: a mutated file took {:?}:\n{text}",
                dir.display(),
                start.elapsed()
            );
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("{}: panicked on\n{text}", dir.display()),
            }
            cases += 1;
        }
    }
    assert!(cases >= 400, "{cases} cases");
    assert!(
        errors > cases / 4,
        "mutations should mostly break files: {errors}/{cases}"
    );
}

#[test]
fn mutated_definitions_give_errors_not_panics() {
    let mut rng = Rng(0x05ee_de4d_0002);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for entry in std::fs::read_dir(repo("tests/golden/llb")).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "pb") {
            inputs.push(std::fs::read(&path).expect("read"));
        }
    }
    for dir in example_dirs().iter().take(6) {
        inputs.push(
            compile(dir, None, Target::Buildkitd, "defs")
                .expect("compile")
                .to_bytes(),
        );
    }
    let mut cases = 0;
    for input in &inputs {
        for _ in 0..100 {
            let bytes = mutate(&mut rng, input);
            let loaded = std::panic::catch_unwind(|| {
                if let Ok(g) = llb::load(&bytes) {
                    // Dumps of whatever loaded must work too.
                    let _ = g.to_json_lines();
                    let _ = g.to_dot();
                }
            });
            assert!(loaded.is_ok(), "load panicked on {}", hex::encode(&bytes));
            cases += 1;
        }
    }
    assert!(cases >= 2000, "{cases} cases");
}

/// envkit started with a standard descriptor closed (`>&-`) prints into `/dev/null`, as a
/// program through std's own start-up does: the descriptor's number is not handed to the
/// runtime or to a file of the store that envkit opens next (its `main` is the C entry point).
#[test]
fn closed_standard_descriptors_are_not_handed_out_again() {
    let root = tempfile::tempdir().expect("tmp");
    for redirect in [">&-", "2>&-", "<&-"] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec \"$0\" --root \"$1\" images ls {redirect}"))
            .arg(env!("CARGO_BIN_EXE_envkit"))
            .arg(root.path())
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "envkit images ls {redirect}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
