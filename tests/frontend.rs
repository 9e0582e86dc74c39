//! The frontend through its public API: build files in a temporary build context, evaluated to
//! the IR, and every kind of user mistake reported at the right `file:line:col` with a caret.

use std::collections::BTreeMap;
use std::path::Path;

use envkit::frontend::FrontendError;
use envkit::frontend::Options;
use envkit::frontend::evaluate;
use envkit::frontend::evaluate_with;
use envkit::frontend::parse_from;
use envkit::ir::Copy;
use envkit::ir::Environment;
use envkit::ir::RunGroup;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A build context holding `build.envd` with `source`.
fn context(source: &str) -> Result<tempfile::TempDir, std::io::Error> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("build.envd"), source)?;
    Ok(dir)
}

fn eval_src(source: &str) -> Result<Environment, FrontendError> {
    let dir = context(source).map_err(|e| panic!("temp dir: {e}"))?;
    let cache = tempfile::tempdir().map_err(|e| panic!("temp dir: {e}"))?;
    evaluate_with(
        dir.path(),
        "build.envd",
        "build",
        &Options::hermetic(cache.path()),
    )
}

/// Evaluates the build file of a context made by the test, with a private cache dir.
fn eval_dir(dir: &Path) -> Result<Environment, FrontendError> {
    let cache = tempfile::tempdir().map_err(|e| panic!("temp dir: {e}"))?;
    evaluate_with(dir, "build.envd", "build", &Options::hermetic(cache.path()))
}

fn eval_err(source: &str) -> FrontendError {
    match eval_src(source) {
        Ok(env) => panic!("expected an error, got {env:?}"),
        Err(e) => e,
    }
}

/// Checks the error's position, that the rendering names it, and that the caret line sits
/// under the reported column with `caret` carets.
fn assert_at(err: &FrontendError, line: usize, col: usize, caret: usize) {
    let loc = err
        .location()
        .unwrap_or_else(|| panic!("no location in {err}"));
    assert_eq!((loc.line, loc.col), (line, col), "{err}");
    assert_eq!(loc.caret_len, caret, "{err}");
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("error: "), "{text}");
    assert!(
        lines[1].trim_start().starts_with("--> ")
            && lines[1].ends_with(&format!("build.envd:{line}:{col}")),
        "{text}"
    );
    assert_eq!(lines[3], format!("{line} | {}", loc.source_line), "{text}");
    let gutter = line.to_string().len() + 3;
    let expected = format!("{}{}", " ".repeat(col - 1), "^".repeat(caret));
    assert_eq!(&lines[4][gutter..], expected, "{text}");
}

const EXAMPLE: &str = r#"# syntax=v1
def build():
    base(image="python:3.11-slim", dev=False)
    install.apt_packages(name=["curl"])
    install.python_packages(name=["six"])
    io.copy(source="hello.py", target="/opt/hello.py")
    runtime.environ(env={"GREETING": "hi"})
    run(commands=["python3 /opt/hello.py > /opt/hello.out"])
"#;

#[test]
fn example_evaluates_to_the_expected_ir() -> TestResult {
    let env = eval_src(EXAMPLE)?;
    let expected = Environment {
        image: "python:3.11-slim".into(),
        dev: false,
        apt_packages: vec!["curl".into()],
        python_packages: vec![vec!["six".into()]],
        copies: vec![Copy {
            source: "hello.py".into(),
            target: "/opt/hello.py".into(),
            image: None,
        }],
        environ: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        run: vec![RunGroup {
            commands: vec!["python3 /opt/hello.py > /opt/hello.out".into()],
            mount_host: false,
        }],
        ..Environment::default()
    };
    assert_eq!(env, expected);
    Ok(())
}

#[test]
fn from_spec_cases() -> TestResult {
    let p = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(parse_from("build.envd:build")?, p("build.envd", "build"));
    assert_eq!(parse_from("gpu.envd")?, p("gpu.envd", "build"));
    assert_eq!(parse_from(":serving")?, p("build.envd", "serving"));
    assert_eq!(parse_from("x.envd:")?, p("x.envd", "build"));
    assert!(matches!(
        parse_from("a.envd:b:c"),
        Err(FrontendError::FromSpec(_))
    ));
    Ok(())
}

#[test]
fn all_implemented_builtins_record() -> TestResult {
    let env = eval_src(
        r#"
def build():
    base("debian:bookworm", True)
    install.apt_packages(["git"])
    install.apt_packages(name=["vim", "make"])
    install.python_packages(name=["numpy", "torch --extra-index-url https://x"])
    install.python_packages(requirements="requirements.txt", local_wheels=["a.whl"])
    install.python_packages(local_wheels=["b.whl"])
    install.python_packages()
    io.copy("src", "/opt/src", image="busybox")
    runtime.environ(env={"A": "1", "B": "2"}, extra_path=["/opt/bin"])
    runtime.environ(env={"A": "3"}, extra_path=["/x"])
    run(["a", "b"], mount_host=True)
    run(commands=[])
    config.pip_index(url="https://pypi.example/simple", extra_url="https://e", trust=True)
    config.apt_source(source="deb http://deb.example bookworm main\n")
"#,
    )?;
    assert_eq!(env.image, "debian:bookworm");
    assert!(env.dev);
    assert_eq!(env.apt_packages, ["git", "vim", "make"]);
    assert_eq!(
        env.python_packages,
        [vec!["numpy", "torch --extra-index-url https://x"]]
    );
    assert_eq!(env.requirements_file.as_deref(), Some("requirements.txt"));
    assert_eq!(env.local_wheels, ["a.whl", "b.whl"]);
    assert_eq!(env.copies[0].image.as_deref(), Some("busybox"));
    assert_eq!(env.environ.get("A").map(String::as_str), Some("3"));
    assert_eq!(env.environ.get("B").map(String::as_str), Some("2"));
    assert_eq!(env.extra_path, ["/opt/bin", "/x"]);
    assert_eq!(
        env.run,
        [RunGroup {
            commands: vec!["a".into(), "b".into()],
            mount_host: true
        }]
    );
    let pip = env.pip_index.ok_or("no pip index")?;
    assert_eq!(
        (pip.url.as_str(), pip.extra_url.as_str(), pip.trust),
        ("https://pypi.example/simple", "https://e", true)
    );
    assert_eq!(
        env.apt_source.as_deref(),
        Some("deb http://deb.example bookworm main\n")
    );
    Ok(())
}

#[test]
fn base_last_call_wins_and_resets_dev() -> TestResult {
    let env = eval_src(
        "def build():\n    base(image=\"a\", dev=True)\n    base(image=\"\")\n    config.entrypoint([\"x\"])\n    config.entrypoint(args=[\"y\"])\n",
    )?;
    assert_eq!(env.image, "a");
    assert!(!env.dev);
    assert_eq!(env.entrypoint, ["x", "y"]);
    Ok(())
}

#[test]
fn module_level_calls_are_recorded_before_the_entry() -> TestResult {
    let env = eval_src(
        "base(image=\"python:3.11-slim\")\ninstall.apt_packages(name=[\"curl\"])\n\ndef build():\n    install.apt_packages(name=[\"git\"])\n",
    )?;
    assert_eq!(env.image, "python:3.11-slim");
    assert_eq!(env.apt_packages, ["curl", "git"]);
    Ok(())
}

#[test]
fn helpers_and_entries_call_each_other() -> TestResult {
    let src = r#"
def common(pkgs):
    install.apt_packages(name=pkgs)

def build():
    base(image="python:3.11-slim")
    common(["curl"])

def build_gpu():
    build()
    common(["nvtop"])
    runtime.environ(env={"GPU": "1"})

def count(n):
    return 0 if n == 0 else 1 + count(n - 1)

def deep():
    install.python_packages(name=["pkg%d" % count(5)])
"#;
    let dir = context(src)?;
    let env = evaluate(dir.path(), "build.envd", "build_gpu")?;
    assert_eq!(env.apt_packages, ["curl", "nvtop"]);
    assert_eq!(env.image, "python:3.11-slim");
    assert_eq!(env.environ.len(), 1);
    let env = evaluate(dir.path(), "build.envd", "build")?;
    assert_eq!(env.apt_packages, ["curl"]);
    // Recursion is allowed, as in envd.
    let env = evaluate(dir.path(), "build.envd", "deep")?;
    assert_eq!(env.python_packages, [vec!["pkg5".to_string()]]);
    Ok(())
}

#[test]
fn predeclared_constants() -> TestResult {
    let dir = context(
        "def build():\n    run(commands=[_build_context_dir, data.path.huggingface, data.path.dgl])\n",
    )?;
    let env = evaluate(dir.path(), "build.envd", "build")?;
    let abs = std::path::absolute(dir.path())?;
    assert_eq!(
        env.run[0].commands,
        [
            abs.display().to_string(),
            "~/.cache/huggingface".into(),
            "~/.dgl".into()
        ]
    );
    Ok(())
}

#[test]
fn lambda_entry_is_a_function() -> TestResult {
    let env = eval_src("build = lambda: base(image=\"x\")\n")?;
    assert_eq!(env.image, "x");
    Ok(())
}

#[test]
fn file_outside_the_context_is_resolved_against_the_cwd() -> TestResult {
    let ctx = tempfile::tempdir()?;
    let other = context("def serving():\n    base(image=\"srv\")\n")?;
    let file = other.path().join("build.envd");
    let file = file.to_str().ok_or("path")?;
    // An absolute path stands for "relative to the CWD" here: it is not under the context.
    let env = evaluate(ctx.path(), file, "serving")?;
    assert_eq!(env.image, "srv");
    Ok(())
}

// ---- errors ----

#[test]
fn syntax_error_points_at_the_token() {
    let err = eval_err("# syntax=v1\ndef build(:\n    pass\n");
    assert!(matches!(err, FrontendError::Syntax(_)), "{err}");
    assert_at(&err, 2, 11, 1);
}

#[test]
fn unknown_name_points_at_the_name() {
    let err = eval_err("def build():\n    bse(image=\"x\")\n");
    assert!(matches!(err, FrontendError::Name(_)), "{err}");
    assert!(err.message().contains("`bse`"), "{err}");
    assert_at(&err, 2, 5, 3);
}

#[test]
fn unknown_namespace_member_is_a_name_error() {
    let err = eval_err("def build():\n    install.system_packages(name=[])\n");
    assert!(matches!(err, FrontendError::Name(_)), "{err}");
    assert_at(&err, 2, 5, "install.system_packages(name=[])".len());
}

#[test]
fn wrong_argument_type_points_at_the_call() {
    let err = eval_err("def build():\n    base(image=1)\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
    assert!(err.message().contains("`image`"), "{err}");
    assert_at(&err, 2, 5, "base(image=1)".len());

    let err = eval_err("def build():\n    install.apt_packages(name=(\"a\",))\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");

    let err = eval_err("def build():\n    runtime.environ(env={\"A\": 1})\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
}

#[test]
fn unexpected_keyword_names_the_accepted_ones() {
    // v0's `base(os=, language=)` is rejected in v1.
    let err = eval_err("def build():\n    base(os=\"ubuntu20.04\", language=\"python3\")\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
    assert!(err.message().contains("`os`"), "{err}");
    assert_eq!(
        err.message(),
        "unexpected keyword arguments `os`, `language` for `base`; it accepts: `image`, `dev`"
    );
    assert_at(&err, 2, 5, 42);

    let err = eval_err("def build():\n    io.copy(host_path=\"a\", envd_path=\"/b\")\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
    assert!(
        err.message()
            .ends_with("for `io.copy`; it accepts: `source`, `target`, `image`"),
        "{err}"
    );
    assert_at(
        &err,
        2,
        5,
        "io.copy(host_path=\"a\", envd_path=\"/b\")".len(),
    );
}

#[test]
fn missing_required_argument() {
    let err = eval_err("def build():\n    run()\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
    assert!(err.message().contains("`commands`"), "{err}");
    assert_at(&err, 2, 5, 5);
}

#[test]
fn builtin_validation_points_at_the_call() {
    let err = eval_err("def build():\n    config.apt_source(source=\"\")\n");
    assert!(matches!(err, FrontendError::Invalid(_)), "{err}");
    assert!(err.message().contains("source is required"), "{err}");
    assert_at(&err, 2, 5, "config.apt_source(source=\"\")".len());

    let err = eval_err("def build():\n    config.pip_index(url=\"\")\n");
    assert!(matches!(err, FrontendError::Invalid(_)), "{err}");

    let err = eval_err("def build():\n    io.copy(source=\"a\", target=\"\")\n");
    assert!(matches!(err, FrontendError::Invalid(_)), "{err}");
    assert_at(&err, 2, 5, "io.copy(source=\"a\", target=\"\")".len());
}

#[test]
fn entrypoint_in_dev_mode_points_at_the_entrypoint_call() {
    let err = eval_err("def build():\n    config.entrypoint([\"python3\"])\n    base(dev=True)\n");
    assert!(matches!(err, FrontendError::Invalid(_)), "{err}");
    assert!(err.message().contains("only for custom image"), "{err}");
    assert_at(&err, 2, 5, "config.entrypoint([\"python3\"])".len());
}

#[test]
fn error_inside_a_helper_points_at_the_builtin_call() {
    let err = eval_err(
        "def helper():\n    install.apt_packages(name=\"curl\")\n\ndef build():\n    helper()\n",
    );
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
    assert_at(&err, 2, 5, "install.apt_packages(name=\"curl\")".len());
}

#[test]
fn missing_entry_function() {
    let err = eval_err("# syntax=v1\ndef build_gpu():\n    pass\n");
    assert!(matches!(err, FrontendError::MissingEntry(_)), "{err}");
    assert_eq!(err.message(), "build.envd doesn't have function `build`");
    assert_at(&err, 1, 1, 1);
}

#[test]
fn entry_that_is_not_a_function() {
    let err = eval_err("# syntax=v1\nbuild = \"python\"\n");
    assert!(matches!(err, FrontendError::NotAFunction(_)), "{err}");
    assert!(
        err.message().starts_with("`build` is not a function"),
        "{err}"
    );
    assert_at(&err, 2, 1, 5);

    let err = eval_err("build = base\n");
    assert!(matches!(err, FrontendError::NotAFunction(_)), "{err}");
    assert!(err.message().contains("builtin"), "{err}");
}

#[test]
fn entry_with_parameters_is_refused_at_its_def() {
    let err = eval_err("def build(gpu):\n    pass\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
    assert_at(&err, 1, 5, 5);
}

#[test]
fn missing_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let err = match evaluate(dir.path(), "nope.envd", "build") {
        Ok(_) => return Err("expected an error".into()),
        Err(e) => e,
    };
    assert!(matches!(err, FrontendError::Read(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("error: build file `nope.envd` not found")
    );
    assert!(err.location().is_none());
    Ok(())
}

#[test]
fn v0_header_is_refused() {
    let err =
        eval_err("# syntax=v0\ndef build():\n    base(os=\"ubuntu20.04\", language=\"python3\")\n");
    assert!(matches!(err, FrontendError::UnsupportedVersion(_)), "{err}");
    assert!(err.message().contains("v0 is"), "{err}");
    assert_at(&err, 1, 1, "# syntax=v0".len());
}

#[test]
fn no_header_is_v1() -> TestResult {
    let env = eval_src("def build():\n    base(image=\"x\")\n")?;
    assert_eq!(env.image, "x");
    Ok(())
}

#[test]
fn top_level_control_flow_is_refused() {
    let err =
        eval_err("for p in [\"a\"]:\n    install.apt_packages(name=[p])\ndef build():\n    pass\n");
    assert!(matches!(err, FrontendError::Syntax(_)), "{err}");
    assert_at(&err, 1, 1, "for p in [\"a\"]:".len());

    let err = eval_err("x = 1\nif x:\n    base()\ndef build():\n    pass\n");
    assert!(matches!(err, FrontendError::Syntax(_)), "{err}");
    assert_eq!(err.line_col(), Some((2, 1)));
}

#[test]
fn while_and_set_are_not_available() {
    let err = eval_err("def build():\n    while True:\n        pass\n");
    assert!(matches!(err, FrontendError::Syntax(_)), "{err}");
    assert_at(&err, 2, 5, 5);
    let err = eval_err("def build():\n    s = set([1])\n");
    assert!(matches!(err, FrontendError::Name(_)), "{err}");
    assert_at(&err, 2, 9, 3);
}

#[test]
fn global_reassignment_is_refused() {
    let err = eval_err("pkgs = [\"a\"]\npkgs = [\"b\"]\ndef build():\n    pass\n");
    assert!(matches!(err, FrontendError::Syntax(_)), "{err}");
    assert!(err.message().contains("`pkgs`"), "{err}");
    assert_at(&err, 2, 1, 4);
}

#[test]
fn fail_is_a_runtime_error() {
    let err = eval_err("def build():\n    fail(\"boom\")\n");
    assert!(matches!(err, FrontendError::Runtime(_)), "{err}");
    assert_eq!(err.message(), "fail: boom");
    assert_at(&err, 2, 5, "fail(\"boom\")".len());
}

#[test]
fn full_rendering() {
    let err = eval_err("# syntax=v1\ndef build():\n    bse(image=\"python:3.11-slim\")\n");
    let file = err.location().map(|l| l.file.clone()).unwrap_or_default();
    assert_eq!(
        err.to_string(),
        format!(
            "error: Variable `bse` not found, did you mean `base`?\n --> {file}:3:5\n  |\n3 |     bse(image=\"python:3.11-slim\")\n  |     ^^^"
        )
    );
}

#[test]
fn every_builtin_records_what_envd_records() -> TestResult {
    let env = eval_src(
        r#"
def build():
    base(image="ubuntu:22.04", dev=True)
    shell("ZSH")
    git_config(name="Ada", email="ada@example.com", editor="vim")
    install.python(version="3.10")
    install.conda(use_mamba=True)
    install.conda_packages(name=["numpy"], channel=["conda-forge"])
    config.conda_channel(channel="channels:\n  - defaults\n")
    install.uv(python_version="3.12")
    install.pixi(use_pixi_mirror=True, pypi_index="https://pypi.example/simple")
    install.r_lang()
    install.julia()
    install.rust(version="1.80")
    install.go()
    install.nodejs(version="20.1.0")
    install.r_packages(name=["dplyr"])
    install.julia_packages(name=["Flux"])
    install.cuda(version="11.8.0", cudnn="9")
    install.vscode_extensions(name=["ms-python.python", "redhat.vscode-yaml-1.2.3"])
    install.codex()
    config.cran_mirror(url="https://cran.example")
    config.julia_pkg_server(url="https://julia.example")
    config.jupyter(token="secret", port=8889)
    config.rstudio_server()
    config.gpu(count=2)
    config.shm_size(size=4096)
    config.repo(url="https://github.com/x/y", description="demo")
    config.owner(uid=1001, gid=1002)
    io.http(url="https://example.com/a.bin", checksum="sha256:" + "0" * 64, filename="a.bin")
    runtime.command(commands={"test": "pytest"})
    runtime.daemon(commands=[["python3", "-m", "http.server"]])
    runtime.expose(envd_port=8000, host_port=18000, service="web")
    runtime.mount(host_path="/data", envd_path="~/data")
    runtime.init(commands=["echo init"])
"#,
    )?;
    use envkit::ir::LanguageName as L;
    let langs: Vec<(L, Option<&str>)> = env
        .languages
        .iter()
        .map(|l| (l.name, l.version.as_deref()))
        .collect();
    assert_eq!(
        langs,
        [
            (L::Python, Some("3.10")),
            (L::R, None),
            (L::Julia, None),
            (L::Rust, Some("1.80")),
            (L::Go, None),
            (L::NodeJs, Some("20.1.0")),
        ]
    );
    assert_eq!(env.shell, "zsh");
    assert_eq!(
        env.git_config.as_ref().map(|g| g.editor.as_str()),
        Some("vim")
    );
    let conda = env.conda.as_ref().ok_or("no conda")?;
    assert!(conda.use_micromamba);
    assert_eq!(conda.packages, ["numpy"]);
    assert_eq!(conda.channels, ["conda-forge"]);
    assert_eq!(conda.channel.as_deref(), Some("channels:\n  - defaults\n"));
    assert_eq!(
        env.uv.as_ref().map(|u| u.python_version.as_str()),
        Some("3.12")
    );
    let pixi = env.pixi.as_ref().ok_or("no pixi")?;
    assert!(pixi.use_pixi_mirror);
    assert_eq!(
        pixi.pypi_index.as_deref(),
        Some("https://pypi.example/simple")
    );
    assert_eq!(env.r_packages, [vec!["dplyr"]]);
    assert_eq!(env.julia_packages, [vec!["Flux"]]);
    assert_eq!(
        (env.cuda.as_deref(), env.cudnn.as_str()),
        (Some("11.8.0"), "9")
    );
    assert_eq!(env.vscode_plugins.len(), 2);
    assert_eq!(env.vscode_plugins[1].extension, "vscode-yaml");
    assert_eq!(env.vscode_plugins[1].version.as_deref(), Some("1.2.3"));
    assert_eq!(env.code_agents[0].name, "codex");
    assert_eq!(env.cran_mirror.as_deref(), Some("https://cran.example"));
    assert_eq!(
        env.julia_pkg_server.as_deref(),
        Some("https://julia.example")
    );
    let j = env.jupyter.as_ref().ok_or("no jupyter")?;
    assert_eq!((j.token.as_str(), j.port), ("secret", 8889));
    assert!(env.rstudio_server);
    assert_eq!((env.num_gpus, env.shm_size), (2, 4096));
    assert_eq!(env.repo.description, "demo");
    assert_eq!(env.owner, Some((1001, 1002)));
    assert_eq!(env.http[0].filename, "a.bin");
    assert_eq!(env.runtime_commands["test"], "pytest");
    assert_eq!(env.runtime_daemon, [vec!["python3", "-m", "http.server"]]);
    assert_eq!(env.runtime_expose[0].envd_port, 8000);
    assert_eq!(env.runtime_expose[0].listen_addr, "127.0.0.1");
    assert_eq!(env.mounts[0].envd_path, "/home/envd/data");
    assert_eq!(env.mounts[0].host_path, "/data");
    assert_eq!(env.runtime_init, [vec!["echo init"]]);
    Ok(())
}

#[test]
fn builtin_validation_errors_point_at_the_call() {
    let cases: &[(&str, &str)] = &[
        (
            "install.python(version=\"2.7\")",
            "envd doesn't support this Python version",
        ),
        (
            "install.conda_packages(name=[\"x\"])",
            "cannot install conda packages when conda is not installed",
        ),
        (
            "config.conda_channel(channel=\"x\")",
            "cannot config conda when conda is not installed",
        ),
        (
            "install.r_packages(name=[])",
            "Can not install empty R package",
        ),
        (
            "install.julia_packages(name=[])",
            "Can not install empty Julia package",
        ),
        (
            "install.vscode_extensions(name=[\"nodot\"])",
            "invalid publisher",
        ),
        ("config.owner(uid=-1, gid=0)", "get a wrong uid or gid"),
        (
            "io.http(url=\"https://x\", checksum=\"md5:00\")",
            "unsupported digest algorithm",
        ),
        (
            "runtime.expose(envd_port=0)",
            "envd_port must be a positive integer",
        ),
        (
            "runtime.expose(envd_port=80, host_port=70000)",
            "host_port must be a positive integer",
        ),
        (
            "runtime.expose(envd_port=80, listen_addr=\"nowhere\")",
            "listening_addr must be a valid IP address",
        ),
        (
            "runtime.mount(host_path=1, envd_path=\"/x\")",
            "invalid data source",
        ),
        ("include(git=\"\")", "`git` is required"),
    ];
    for (call, want) in cases {
        let err = eval_err(&format!("def build():\n    base()\n    {call}\n"));
        assert!(err.message().contains(want), "{call}: {err}");
        assert_at(&err, 3, 5, call.len());
    }
    // conda_packages with env_file and names
    let err = eval_err(
        "def build():\n    install.conda()\n    install.conda_packages(name=[\"a\"], env_file=\"e.yml\")\n",
    );
    assert!(err.message().contains("mutually exclusive"), "{err}");
}

#[test]
fn install_conda_resets_earlier_conda_packages() -> TestResult {
    let env = eval_src(
        "def build():\n    install.conda()\n    install.conda_packages(name=[\"a\"])\n    install.conda(use_mamba=True)\n",
    )?;
    let conda = env.conda.ok_or("no conda")?;
    assert!(conda.packages.is_empty() && conda.use_micromamba);
    Ok(())
}

#[test]
fn shell_takes_one_positional_string() {
    let err = eval_err("def build():\n    shell(name=\"zsh\")\n");
    assert!(matches!(err, FrontendError::Argument(_)), "{err}");
}

#[test]
fn data_envd_mounts_a_managed_directory() -> TestResult {
    let home = tempfile::tempdir()?;
    let dir = context(
        "def build():\n    runtime.mount(host_path=data.envd(name=\"mnist\"), envd_path=\"/data\")\n",
    )?;
    let env = evaluate_with(
        dir.path(),
        "build.envd",
        "build",
        &Options::hermetic(home.path()),
    )?;
    let want = home.path().join("data/mnist");
    assert_eq!(env.mounts[0].host_path, want.display().to_string());
    assert!(want.is_dir());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&want)?, 0o755, "not world-writable");
    Ok(())
}

/// The security issue's defect 11: `data.envd("")` named the data root itself and made it
/// world-writable.
#[test]
fn data_envd_needs_a_name_and_leaves_the_data_root_alone() -> TestResult {
    let home = tempfile::tempdir()?;
    for bad in ["", ".", ".."] {
        let dir = context(&format!(
            "def build():\n    runtime.mount(host_path=data.envd(name=\"{bad}\"), envd_path=\"/data\")\n"
        ))?;
        let err = evaluate_with(
            dir.path(),
            "build.envd",
            "build",
            &Options::hermetic(home.path()),
        )
        .expect_err("a data set without a name");
        assert!(err.to_string().contains("invalid data.envd name"), "{err}");
    }
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::metadata(home.path().join("data")) {
        assert_eq!(
            md.permissions().mode() & 0o002,
            0,
            "the data root became world-writable"
        );
    }
    Ok(())
}

#[test]
fn load_brings_in_a_local_file() -> TestResult {
    let dir = context(
        "load(\"lib/common.envd\", \"py\")\ndef build():\n    base(image=\"debian:bookworm\")\n    py(\"requests\")\n",
    )?;
    std::fs::create_dir(dir.path().join("lib"))?;
    std::fs::write(
        dir.path().join("lib/common.envd"),
        "install.apt_packages(name=[\"from-lib\"])\ndef py(name):\n    install.python_packages(name=[name])\n",
    )?;
    let env = eval_dir(dir.path())?;
    assert_eq!(env.python_packages, [vec!["requests"]]);
    // Top-level calls in the loaded file record too, as in envd.
    assert_eq!(env.apt_packages, ["from-lib"]);
    Ok(())
}

#[test]
fn an_error_in_a_loaded_file_points_into_that_file() -> TestResult {
    let dir = context("load(\"lib.envd\", \"f\")\ndef build():\n    f()\n")?;
    std::fs::write(
        dir.path().join("lib.envd"),
        "def f():\n    install.r_packages(name=[])\n",
    )?;
    let err = match eval_dir(dir.path()) {
        Err(e) => e,
        Ok(env) => panic!("expected an error, got {env:?}"),
    };
    let loc = err.location().ok_or("no location")?;
    assert!(loc.file.ends_with("lib.envd"), "{err}");
    assert_eq!((loc.line, loc.col), (2, 5), "{err}");
    let dir = context("load(\"missing.envd\", \"f\")\ndef build():\n    f()\n")?;
    let err = match eval_dir(dir.path()) {
        Err(e) => e,
        Ok(env) => panic!("expected an error, got {env:?}"),
    };
    assert!(err.message().contains("missing.envd"), "{err}");
    assert_eq!(err.line_col(), Some((1, 1)), "{err}");
    Ok(())
}

#[test]
fn a_load_cycle_is_an_error() -> TestResult {
    let dir = context("load(\"a.envd\", \"x\")\ndef build():\n    pass\n")?;
    std::fs::write(
        dir.path().join("a.envd"),
        "load(\"b.envd\", \"y\")\nx = 1\n",
    )?;
    std::fs::write(
        dir.path().join("b.envd"),
        "load(\"a.envd\", \"x\")\ny = 2\n",
    )?;
    let err = match eval_dir(dir.path()) {
        Err(e) => e,
        Ok(env) => panic!("expected an error, got {env:?}"),
    };
    assert!(err.message().contains("cycle"), "{err}");
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> TestResult {
    let st = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()?;
    if !st.status.success() {
        return Err(format!("git {args:?}: {}", String::from_utf8_lossy(&st.stderr)).into());
    }
    Ok(())
}

#[test]
fn include_runs_every_envd_file_of_a_repository() -> TestResult {
    let lib = tempfile::tempdir()?;
    std::fs::write(
        lib.path().join("a.envd"),
        "def tensorboard(port):\n    runtime.expose(envd_port=port, service=\"tensorboard\")\n_private = 1\n",
    )?;
    std::fs::create_dir(lib.path().join("sub"))?;
    std::fs::write(
        lib.path().join("sub/b.envd"),
        "def tools():\n    install.apt_packages(name=[\"htop\"])\n",
    )?;
    // A local directory is used in place.
    let src = format!(
        "def build():\n    lib = include(\"{}\")\n    lib.tensorboard(6006)\n    lib.tools()\n",
        lib.path().display()
    );
    let dir = context(&src)?;
    let env = eval_dir(dir.path())?;
    assert_eq!(env.runtime_expose[0].envd_port, 6006);
    assert_eq!(env.apt_packages, ["htop"]);

    // A file:// URL is cloned with git (offline) into the cache.
    git(lib.path(), &["init", "-q"])?;
    git(lib.path(), &["add", "."])?;
    git(lib.path(), &["commit", "-q", "-m", "lib"])?;
    let cache = tempfile::tempdir()?;
    let opts = Options::hermetic(cache.path());
    let src = format!(
        "def build():\n    lib = include(git=\"file://{}\")\n    lib.tools()\n",
        lib.path().display()
    );
    let dir = context(&src)?;
    let env = evaluate_with(dir.path(), "build.envd", "build", &opts)?;
    assert_eq!(env.apt_packages, ["htop"]);
    assert!(cache.path().join("envdlib").is_dir());
    let err = match evaluate_with(
        context("def build():\n    lib = include(\"file:///nonexistent/repo\")\n")?.path(),
        "build.envd",
        "build",
        &opts,
    ) {
        Err(e) => e,
        Ok(env) => panic!("expected an error, got {env:?}"),
    };
    assert!(err.message().contains("git clone failed"), "{err}");
    Ok(())
}

#[test]
fn include_refuses_a_name_defined_twice() -> TestResult {
    let lib = tempfile::tempdir()?;
    std::fs::write(lib.path().join("a.envd"), "def f():\n    pass\n")?;
    std::fs::write(lib.path().join("b.envd"), "def f():\n    pass\n")?;
    let src = format!("def build():\n    include(\"{}\")\n", lib.path().display());
    let err = eval_err(&src);
    assert!(err.message().contains("duplicated object name: f"), "{err}");
    Ok(())
}

#[test]
fn the_user_config_file_runs_first() -> TestResult {
    let cfg = tempfile::tempdir()?;
    let prelude = cfg.path().join("config.envd");
    std::fs::write(
        &prelude,
        "config.pip_index(url=\"https://mirror.example/simple\")\n",
    )?;
    let dir = context("def build():\n    install.python_packages(name=[\"six\"])\n")?;
    let opts = Options {
        prelude: vec![prelude],
        cache_dir: Some(cfg.path().to_path_buf()),
    };
    let env = evaluate_with(dir.path(), "build.envd", "build", &opts)?;
    assert_eq!(
        env.pip_index.map(|p| p.url),
        Some("https://mirror.example/simple".to_string())
    );
    Ok(())
}

#[test]
fn context_dir_may_be_relative() -> TestResult {
    let dir = tempfile::tempdir_in(".")?;
    std::fs::write(
        dir.path().join("build.envd"),
        "def build():\n    run(commands=[_build_context_dir])\n",
    )?;
    let rel = dir
        .path()
        .strip_prefix(std::env::current_dir()?)
        .unwrap_or(dir.path());
    let env = evaluate(Path::new(rel), "build.envd", "build")?;
    assert!(Path::new(&env.run[0].commands[0]).is_absolute());
    Ok(())
}

#[test]
fn builtins_reference_is_up_to_date() -> TestResult {
    let text = envkit::frontend::builtins_reference();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/builtins.md");
    if std::env::var_os("ENVKIT_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
        std::fs::write(&path, &text)?;
    }
    let want = std::fs::read_to_string(&path)?;
    assert!(
        want == text,
        "docs/builtins.md is out of date: run ENVKIT_BLESS=1 cargo test --test frontend"
    );
    // Every builtin of envd's API has a section.
    for name in [
        "base",
        "install.cuda",
        "config.jupyter",
        "io.http",
        "runtime.mount",
        "data.envd",
    ] {
        assert!(
            text.contains(&format!("## `{name}`")),
            "{name} is not documented"
        );
    }
    Ok(())
}
