//! Golden tests of the examples: every `examples/*/build.envd` is evaluated and lowered for
//! envkit's engine and a buildkitd (the same graph, with Merge/Diff: checked equal) and for
//! dockerd's BuildKit (without them), and the LLB (one JSON object per op, as `envkit debug
//! llb --json` prints it) and the image config are compared with
//! `tests/golden/examples/<name>/`. `ENVKIT_BLESS=1 cargo test --test examples` rewrites them.
//!
//! The base images' configs are fixtures below (what the registry would return), so the test
//! needs no registry. Examples are copied to `/tmp/envkit-golden/<name>` first, so the paths
//! that end up in labels and in `local.unique` are the same on every machine.
//!
//! Several examples cannot be *executed* here, only compiled: their steps download from hosts
//! this machine cannot reach (ghcr.io images for micromamba, envd-sshd, horust and the curl
//! helper; GitHub releases for uv, pixi, starship, fish and codex; conda, Julia, Go, Node.js
//! and R downloads; open-vsx for VS Code extensions). `not_executable_here` names them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use envkit::frontend::{Options, evaluate_with};
use envkit::lower::{self, BaseImage, LowerOptions, Target};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// What the registry says about the base images the examples use (the parts lowering reads).
fn base_config(image: &str) -> BaseImage {
    let debian_path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match image {
        "python:3.11-slim" => BaseImage {
            env: vec![
                "PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                    .into(),
                "LANG=C.UTF-8".into(),
                "PYTHON_VERSION=3.11.9".into(),
            ],
            cmd: Some(vec!["python3".into()]),
            ..BaseImage::default()
        },
        i if i.starts_with("docker.io/nvidia/cuda:") => BaseImage {
            env: vec![
                "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "NVIDIA_VISIBLE_DEVICES=all".into(),
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility".into(),
                "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64".into(),
            ],
            entrypoint: Some(vec!["/opt/nvidia/nvidia_entrypoint.sh".into()]),
            ..BaseImage::default()
        },
        _ => BaseImage {
            env: vec![debian_path.into()],
            cmd: Some(vec!["bash".into()]),
            ..BaseImage::default()
        },
    }
}

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo("examples"))
        .expect("read examples/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("build.envd").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from).min_depth(1) {
        let entry = entry.expect("walk example");
        let rel = entry.path().strip_prefix(from).expect("relative");
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
        } else {
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

struct Rendered {
    files: Vec<(String, String)>,
}

fn render(name: &str) -> Result<Rendered, String> {
    let ctx = Path::new("/tmp/envkit-golden").join(name);
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).map_err(|e| e.to_string())?;
    copy_dir(&repo(&format!("examples/{name}")), &ctx);
    let cache = Path::new("/tmp/envkit-golden/.cache");
    let env = evaluate_with(&ctx, "build.envd", "build", &Options::hermetic(cache))
        .map_err(|e| format!("{name}: {e}"))?;
    let base = base_config(&lower::base_image_ref(&env));
    let mut files = Vec::new();
    // A buildkitd gets the embedded engine's graph (both take Merge/Diff): checked equal
    // below rather than kept twice; dockerd's BuildKit gets the graph without them.
    let mut embedded = String::new();
    for (target, file) in [
        (Target::Embedded, "llb.embedded.jsonl"),
        (Target::Buildkitd, ""),
        (Target::Dockerd, "llb.dockerd.jsonl"),
    ] {
        let opts = LowerOptions {
            context_dir: ctx.clone(),
            env_name: name.to_string(),
            owner: (1000, 1000),
            // The goldens are for linux/amd64, whatever the host.
            platform: envkit::llb::Platform::linux_amd64(),
            target,
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVudmtpdC1nb2xkZW4 envkit\n"
                .into(),
            ssh_public_key_path: "/home/user/.config/envkit/id_envkit.pub".into(),
            ca_bundle: None,
            proxy_env: None,
            base_resolve: None,
        };
        let lowered = lower::lower(&env, &base, &opts).map_err(|e| format!("{name}: {e}"))?;
        let graph = envkit::llb::load(&lowered.definition.to_bytes())
            .map_err(|e| format!("{name}: load: {e}"))?;
        let lines = graph.to_json_lines();
        if target == Target::Buildkitd {
            if lines != embedded {
                return Err(format!(
                    "{name}: the buildkitd lowering differs from the embedded engine's"
                ));
            }
            continue;
        }
        if target == Target::Embedded {
            embedded = lines.clone();
        }
        files.push((file.to_string(), lines));
        if target == Target::Embedded {
            let mut image =
                serde_json::to_string_pretty(&lowered.image).map_err(|e| e.to_string())?;
            image.push('\n');
            files.push(("image.json".to_string(), image));
        }
    }
    Ok(Rendered { files })
}

#[test]
fn examples_match_their_golden_llb_and_image_config() {
    let bless = std::env::var_os("ENVKIT_BLESS").is_some();
    let names = examples();
    assert!(
        names.len() >= 20,
        "want at least 20 examples, found {}",
        names.len()
    );
    let mut failures = Vec::new();
    for name in &names {
        let rendered = match render(name) {
            Ok(r) => r,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let dir = repo(&format!("tests/golden/examples/{name}"));
        for (file, text) in &rendered.files {
            let path = dir.join(file);
            if bless {
                std::fs::create_dir_all(&dir).expect("mkdir golden");
                std::fs::write(&path, text).expect("write golden");
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(want) if &want == text => {}
                Ok(want) => {
                    let line = want
                        .lines()
                        .zip(text.lines())
                        .position(|(a, b)| a != b)
                        .unwrap_or(want.lines().count().min(text.lines().count()));
                    failures.push(format!(
                        "{name}/{file} differs from the golden file at line {}\n got: {}\nwant: {}",
                        line + 1,
                        text.lines().nth(line).unwrap_or("<end>"),
                        want.lines().nth(line).unwrap_or("<end>")
                    ));
                }
                Err(e) => failures.push(format!(
                    "{}: {e} (run with ENVKIT_BLESS=1 to create it)",
                    path.display()
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every builtin of envd's API is called by at least one example.
#[test]
fn the_examples_call_every_builtin() {
    let mut text = String::new();
    for name in examples() {
        for entry in walkdir::WalkDir::new(repo(&format!("examples/{name}"))) {
            let entry = entry.expect("walk");
            if entry.path().extension().is_some_and(|e| e == "envd") {
                text.push_str(&std::fs::read_to_string(entry.path()).expect("read"));
            }
        }
    }
    let builtins = [
        "base",
        "shell",
        "run",
        "git_config",
        "include",
        "install.python",
        "install.conda",
        "install.uv",
        "install.pixi",
        "install.r_lang",
        "install.julia",
        "install.rust",
        "install.go",
        "install.nodejs",
        "install.apt_packages",
        "install.python_packages",
        "install.conda_packages",
        "install.r_packages",
        "install.julia_packages",
        "install.cuda",
        "install.vscode_extensions",
        "install.codex",
        "config.apt_source",
        "config.pip_index",
        "config.cran_mirror",
        "config.julia_pkg_server",
        "config.conda_channel",
        "config.jupyter",
        "config.rstudio_server",
        "config.gpu",
        "config.shm_size",
        "config.entrypoint",
        "config.repo",
        "config.owner",
        "io.copy",
        "io.http",
        "runtime.command",
        "runtime.daemon",
        "runtime.expose",
        "runtime.environ",
        "runtime.mount",
        "runtime.init",
        "data.envd",
        "load",
    ];
    let missing: BTreeSet<&str> = builtins
        .iter()
        .filter(|b| !text.contains(&format!("{b}(")))
        .copied()
        .collect();
    assert!(missing.is_empty(), "no example calls {missing:?}");
}

/// The examples whose build needs hosts this machine cannot reach (they are compiled and
/// golden-tested above, not executed). Kept as a list so that the e2e suite can say so.
#[test]
fn not_executable_here() {
    let offline_ok = [
        "copy-from-image",
        "python-basic",
        "python-requirements",
        "site-config",
    ];
    for name in examples() {
        let json = std::fs::read_to_string(repo(&format!(
            "tests/golden/examples/{name}/llb.embedded.jsonl"
        )))
        .unwrap_or_default();
        let remote = json.contains("docker-image://ghcr.io/")
            || json.contains("\"identifier\":\"https://")
            || json.contains("local://cache-dir");
        if offline_ok.contains(&name.as_str()) {
            assert!(
                !remote,
                "{name} was expected to need only the local registry and mirrors"
            );
        } else if remote {
            eprintln!("{name}: compiled only — it downloads from ghcr.io, GitHub or the web");
        }
    }
}
