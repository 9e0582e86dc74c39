//! End-to-end compile time of a typical build file: Starlark evaluation + lowering + marshal
//! (what `envkit debug llb` does, without the registry lookup). Target: under 5 ms.
//!
//! `cargo bench --bench compile` prints the median of 51 runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use envkit::frontend::{Options, evaluate_with};
use envkit::lower::{self, BaseImage, LowerOptions, Target};

/// A typical envd file: about 30 lines, a helper function, dev mode, Python with pip groups,
/// apt packages, Jupyter, runtime settings and run steps.
const TYPICAL: &str = r#"# syntax=v1
def jupyter_lab():
    install.python_packages(name=["jupyterlab", "ipywidgets"])
    config.jupyter(token="", port=8888)

def build():
    base(image="ubuntu:22.04", dev=True)
    install.apt_packages(name=["build-essential", "git", "htop", "curl"])
    install.python(version="3.11")
    install.python_packages(name=["numpy", "pandas", "scikit-learn"])
    install.python_packages(name=["torch", "torchvision"])
    config.pip_index(url="https://pypi.org/simple")
    jupyter_lab()
    shell("bash")
    git_config(name="Ada", email="ada@example.com", editor="vim")
    runtime.environ(env={"PYTHONUNBUFFERED": "1", "HF_HOME": "/home/envd/.cache/hf"})
    runtime.expose(envd_port=6006, service="tensorboard")
    runtime.mount(host_path="/data", envd_path="/home/envd/data")
    runtime.init(commands=["mkdir -p /home/envd/logs"])
    runtime.daemon(commands=[["tensorboard", "--logdir", "/home/envd/logs"]])
    runtime.command(commands={"test": "pytest -q", "lint": "ruff check ."})
    io.copy(source="requirements.txt", target="/opt/requirements.txt")
    run(commands=[
        "pip list > /opt/packages.txt",
        "python -c 'import numpy'",
    ])
    run(commands=["echo done"])
"#;

fn main() {
    let ctx = tempfile::tempdir().expect("temp dir");
    std::fs::write(ctx.path().join("build.envd"), TYPICAL).expect("write");
    std::fs::write(ctx.path().join("requirements.txt"), "six\n").expect("write");
    let cache = tempfile::tempdir().expect("temp dir");
    let options = Options::hermetic(cache.path());
    let base = BaseImage {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..BaseImage::default()
    };
    for target in [Target::Embedded, Target::Buildkitd] {
        let opts = LowerOptions {
            context_dir: ctx.path().to_path_buf(),
            env_name: "bench".into(),
            owner: (1000, 1000),
            platform: Default::default(),
            target,
            ssh_public_key: "ssh-ed25519 AAAA bench".into(),
            ssh_public_key_path: String::new(),
            ca_bundle: None,
            proxy_env: None,
            base_resolve: None,
        };
        let mut times: Vec<Duration> = Vec::new();
        let mut ops = 0;
        for _ in 0..51 {
            let t = Instant::now();
            let env = evaluate_with(ctx.path(), "build.envd", "build", &options).expect("evaluate");
            let lowered = lower::lower(&env, &base, &opts).expect("lower");
            let bytes = lowered.definition.to_bytes();
            times.push(t.elapsed());
            ops = lowered.definition.def.len();
            black_box(bytes);
        }
        times.sort();
        println!(
            "typical 30-line file ({target:?}): {ops} ops, evaluate+lower+marshal median {:.3} ms, min {:.3} ms",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3
        );
    }
}
