//! End to end, as the unprivileged test user: `envkit build` of the example, checked with
//! podman (an independent tool); the LLB it executed; errors for bad input.

mod common;

use common::remote::docker;
use common::{TestEnv, repo_path, stderr, stdout};
use sha2::Digest as _;

#[test]
fn python_example_builds_and_runs_under_podman() {
    let env = TestEnv::new("python");
    let ctx = env.copy_context(&repo_path("examples/python-basic"), "python-basic");
    let tar = env.dir.join("py.tar");
    let out = env.envkit(&[
        "build",
        "-p",
        ctx.to_str().unwrap(),
        "-o",
        &format!("type=oci,dest={}", tar.display()),
    ]);
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    assert!(tar.is_file());

    // The image is in envkit's own store too.
    let out = env.envkit(&["images"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("python-basic:dev"),
        "{}",
        stdout(&out)
    );

    // An independent tool loads and runs it.
    let image = env.podman_load(&tar);
    let out = env.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "python3",
        "-c",
        "import six, os; print(open('/opt/hello.out').read().strip()); print(os.environ['GREETING'])",
    ]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("hi from envkit (six "), "{text}");
    assert!(
        text.contains("/usr/bin/curl"),
        "curl was not installed: {text}"
    );
    assert_eq!(text.lines().last(), Some("hi"), "{text}");

    let out = env.podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &image,
    ]);
    assert!(stdout(&out).contains("GREETING=hi"), "{}", stdout(&out));

    // A second build of the same file is served from the cache.
    let out = env.envkit(&["build", "-p", ctx.to_str().unwrap()]);
    assert!(out.status.success(), "warm build failed:\n{}", stderr(&out));
    assert!(stderr(&out).contains("CACHED"), "{}", stderr(&out));
}

#[test]
fn debug_llb_lists_every_op_with_the_digest_of_its_bytes() {
    let env = TestEnv::new("llb");
    let ctx = env.copy_context(&repo_path("examples/python-basic"), "python-basic");
    let p = ctx.to_str().unwrap();
    let json = env.envkit(&["debug", "llb", "-p", p, "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let pb = env.envkit(&["debug", "llb", "-p", p, "--pb"]);
    assert!(pb.status.success(), "{}", stderr(&pb));

    let def = envkit::llb::Definition::from_bytes(&pb.stdout).expect("decode Definition");
    let digests: Vec<String> = def
        .def
        .iter()
        .map(|op| format!("sha256:{}", hex::encode(sha2::Sha256::digest(op))))
        .collect();
    let lines: Vec<serde_json::Value> = stdout(&json)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), digests.len());
    for line in &lines {
        let d = line["Digest"].as_str().expect("Digest");
        assert!(
            digests.iter().any(|x| x == d),
            "{d} is not the digest of any op's bytes"
        );
    }
    // The ops the example needs are all there.
    let text = stdout(&json);
    for needle in [
        "docker-image://docker.io/library/python:3.11-slim",
        "local://build-context",
        "apt-get",
        "pip install",
        "/opt/hello.py",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[test]
fn a_broken_build_file_reports_its_location_and_builds_nothing() {
    let env = TestEnv::new("broken");
    let ctx = env.context_with(
        "broken",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\")\n    install.apt_packages(name=\"curl\", bogus=1)\n",
    );
    let out = env.envkit(&["build", "-p", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("build.envd:4:"), "no file:line:col in:\n{err}");
    assert!(err.contains('^'), "no caret in:\n{err}");
    let out = env.envkit(&["images"]);
    assert!(!stdout(&out).contains("broken"), "{}", stdout(&out));
}

#[test]
fn a_failing_run_step_shows_command_exit_code_and_output() {
    let env = TestEnv::new("failing");
    let ctx = env.context_with(
        "failing",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\")\n    run(commands=[\"echo about to fail\", \"exit 3\"])\n",
    );
    let out = env.envkit(&["build", "-p", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("about to fail"), "{err}");
    assert!(err.contains("bash -c"), "{err}");
}

#[test]
fn an_unknown_image_names_the_reference_and_the_registry() {
    let env = TestEnv::new("unknown");
    let ctx = env.context_with(
        "unknown",
        "# syntax=v1\ndef build():\n    base(image=\"no-such-image:1\")\n",
    );
    let out = env.envkit(&["build", "-p", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no-such-image"), "{err}");
    assert!(err.contains(&env.registry), "{err}");
}

#[test]
fn debug_llb_draws_the_graph_as_dot_and_svg() {
    let env = TestEnv::new("dot");
    let ctx = env.copy_context(&repo_path("examples/python-basic"), "python-basic");
    let p = ctx.to_str().unwrap();
    let dot = env.envkit(&["debug", "llb", "-p", p, "--dot"]);
    assert!(dot.status.success(), "{}", stderr(&dot));
    let text = stdout(&dot);
    assert!(text.starts_with("digraph llb {"), "{text}");
    for needle in [
        "apt-get install curl",
        "cache /var/cache/apt (id /var/cache/apt/python-basic-cpu)",
        "copy /hello.py → /opt/hello.py",
        "shape=ellipse",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let svg = env.envkit(&["debug", "llb", "-p", p, "--svg"]);
    assert!(svg.status.success(), "{}", stderr(&svg));
    assert!(stdout(&svg).contains("<svg"), "not an SVG");
}

#[test]
fn the_build_context_mounted_writable_keeps_nothing() {
    let env = TestEnv::new("mounthost");
    let ctx = env.context_with(
        "mounthost",
        "# syntax=v1\ndef build():\n    base(image=\"python:3.11-slim\", dev=False)\n    \
         install.python_packages(requirements=\"requirements.txt\")\n    \
         run(commands=[\"test -f build.envd\", \"echo scribble > scratch.txt\", \"ls > /opt/listing\"], mount_host=True)\n",
    );
    // `typing-extensions` contains `-e`, so envd does not inline the file: pip runs
    // `-r requirements.txt` with the build context mounted in /home/envd/<name>.
    std::fs::write(ctx.join("requirements.txt"), "typing-extensions\n").unwrap();
    env.chown(&ctx);
    let tar = env.dir.join("mh.tar");
    let out = env.envkit(&[
        "build",
        "-p",
        ctx.to_str().unwrap(),
        "-o",
        &format!("type=oci,dest={}", tar.display()),
    ]);
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    assert!(
        stderr(&out).contains("pip install -r requirements.txt"),
        "{}",
        stderr(&out)
    );
    assert!(
        !ctx.join("scratch.txt").exists(),
        "the step wrote into the host's context"
    );
    let out = env.podman(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {}", stderr(&out));
    let out = env.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "mounthost:dev",
        "sh",
        "-c",
        "cat /opt/listing; python3 -c 'import typing_extensions; print(\"te ok\")'; ls -A /home/envd/mounthost 2>/dev/null | wc -l",
    ]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("build.envd") && text.contains("requirements.txt"),
        "{text}"
    );
    assert!(text.contains("te ok"), "{text}");
    assert_eq!(
        text.lines().last(),
        Some("0"),
        "the context's files leaked into the image: {text}"
    );
}

/// Four `sleep 1` branches joined with Merge/Diff run at the same time (with
/// `--parallelism 4`), and a warm rerun starts no step.
#[test]
fn merged_branches_run_concurrently_and_a_warm_solve_runs_nothing() {
    use envkit::llb::{self, Constraints, Run};
    let env = TestEnv::new("parallel");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    let branches: Vec<llb::State> = (0..4)
        .map(|i| {
            base.run(Run::args([
                "sh",
                "-c",
                &format!(
                    "mkdir -p /t; cut -d' ' -f1 /proc/uptime > /t/{i}.start; sleep 1; cut -d' ' -f1 /proc/uptime > /t/{i}.end"
                ),
            ]))
            .root()
        })
        .collect();
    let mut inputs = vec![base.clone()];
    inputs.extend(
        branches
            .iter()
            .map(|b| llb::diff(&base, b, Constraints::new())),
    );
    let merged = llb::merge(&inputs, Constraints::new());
    // All four were running at once: the latest start comes before the earliest end.
    let check = merged.run(Run::args([
        "sh",
        "-c",
        "s=$(cat /t/*.start | sort -n | tail -1); e=$(cat /t/*.end | sort -n | head -1); \
         echo \"latest start $s, earliest end $e\"; awk -v s=$s -v e=$e 'BEGIN { exit !(s < e) }'",
    ]));
    let def = check
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("parallel", &def);
    let args = [
        "solve",
        pb.to_str().unwrap(),
        "--parallelism",
        "4",
        "-t",
        "parallel:test",
    ];
    let out = env.envkit(&args);
    assert!(out.status.success(), "solve failed:\n{}", stderr(&out));
    assert!(
        stderr(&out)
            .lines()
            .any(|l| l.contains("latest start ") && !l.contains("exec:")),
        "{}",
        stderr(&out)
    );

    let out = env.envkit(&args);
    assert!(out.status.success(), "warm solve failed:\n{}", stderr(&out));
    let log = stderr(&out);
    assert!(every_step_cached(&log), "a warm solve ran a step:\n{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("latest start ") && !l.contains("exec:")),
        "the check step ran again:\n{log}"
    );

    // --no-cache runs every step again (the image source stays cached).
    let mut again = args.to_vec();
    again.push("--no-cache");
    let out = env.envkit(&again);
    let log = stderr(&out);
    assert!(out.status.success(), "--no-cache solve failed:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("latest start ") && !l.contains("exec:")),
        "--no-cache did not run the steps:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.ends_with(" CACHED")),
        "the image source was not cached:\n{log}"
    );
}

/// Whether a plain progress log says CACHED of every step it names.
fn every_step_cached(log: &str) -> bool {
    let named = log
        .lines()
        .filter(|l| l.starts_with('#') && !l.contains(" CACHED") && !l.contains(" DONE"))
        .count();
    let cached = log.lines().filter(|l| l.ends_with(" CACHED")).count();
    cached == named
}

/// A Definition (bytes on disk, owned by the test user): `busybox` + one exec per command,
/// each on the base, merged.
fn branches_definition(env: &TestEnv, name: &str, commands: &[&str]) -> std::path::PathBuf {
    use envkit::llb::{self, Constraints, Run};
    let base = llb::image("busybox").add_env("PATH", "/bin");
    let mut inputs = vec![base.clone()];
    for c in commands {
        let b = base.run(Run::args(["sh", "-c", c])).root();
        inputs.push(llb::diff(&base, &b, Constraints::new()));
    }
    let def = llb::merge(&inputs, Constraints::new())
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.dir.join(name);
    std::fs::write(&pb, def.to_bytes()).unwrap();
    env.chown(&pb);
    pb
}

/// Processes of the test user whose command line contains `needle`.
fn user_processes(env: &TestEnv, needle: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-a", "-u", &env.user, "-f", needle])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_failing_step_cancels_its_siblings_and_kills_their_processes() {
    let env = TestEnv::new("cancel");
    let pb = branches_definition(
        &env,
        "cancel.pb",
        &[
            "sleep 47; touch /done",
            "sleep 0.5; echo failing now; exit 3",
        ],
    );
    let start = std::time::Instant::now();
    let out = env.envkit(&["solve", pb.to_str().unwrap(), "--parallelism", "4"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("exit code: 3") && err.contains("failing now"),
        "{err}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(40),
        "the sibling was waited for instead of cancelled"
    );
    assert!(
        user_processes(&env, "sleep 47").is_empty(),
        "a sibling still runs"
    );
}

#[test]
fn an_interrupted_build_stops_its_steps_and_leaves_the_store_usable() {
    let env = TestEnv::new("interrupt");
    let pb = branches_definition(&env, "slow.pb", &["sleep 53"]);
    let child = env
        .user_command(common::envkit_bin())
        .args(["solve", pb.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn envkit");
    // Wait until the step runs, then interrupt envkit itself (not runuser).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while user_processes(&env, "sleep 53").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // This test's envkit, not another test's (they run at once as the same user).
    let pids = user_processes(&env, &format!("solve {}", pb.display()));
    let pid = pids
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .next()
        .expect("envkit's pid")
        .to_string();
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        user_processes(&env, "sleep 53").is_empty(),
        "the step still runs"
    );

    // The next build on the store works and clears what the interrupted one left.
    let quick = branches_definition(&env, "quick.pb", &["echo again"]);
    let out = env.envkit(&["solve", quick.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let leftovers: Vec<_> = std::fs::read_dir(env.store().join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_secret_reaches_the_step_and_no_layer() {
    use envkit::llb::{self, Run, SecretMount};
    let env = TestEnv::new("secret");
    let value = "s3cr3t-value-8f2c";
    let secret = env.dir.join("token.txt");
    std::fs::write(&secret, value).unwrap();
    env.chown(&secret);
    let step = llb::image("busybox").add_env("PATH", "/bin").run(
        Run::args([
            "sh",
            "-c",
            &format!(
                "test \"$(cat /run/secrets/token)\" = \"$TOKEN\" && test ${{#TOKEN}} -eq {} && \
                 stat -c '%a %u' /run/secrets/token && echo proof > /proof",
                value.len()
            ),
        ])
        .secret(SecretMount {
            id: "token".into(),
            target: Some("/run/secrets/token".into()),
            env: None,
            uid: 0,
            gid: 0,
            mode: 0o400,
            optional: false,
        })
        .secret(SecretMount {
            id: "token".into(),
            target: None,
            env: Some("TOKEN".into()),
            uid: 0,
            gid: 0,
            mode: 0,
            optional: false,
        }),
    );
    let def = step
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("secret", &def);
    let missing = env.envkit(&["solve", pb.to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("--secret id=token"),
        "{}",
        stderr(&missing)
    );

    let tar = env.dir.join("secret.tar");
    let out = env.envkit(&[
        "solve",
        "--input",
        pb.to_str().unwrap(),
        "--secret",
        &format!("id=token,src={}", secret.display()),
        "-o",
        &format!("type=oci,dest={}", tar.display()),
    ]);
    assert!(out.status.success(), "solve failed:\n{}", stderr(&out));
    assert!(stderr(&out).contains("400 0"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(value), "the secret reached the log");

    // No layer of the image holds the secret's value or its mount point.
    let layers = oci_layers(&env, &tar);
    for (digest, data) in &layers {
        let mut ar = tar::Archive::new(&data[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            assert!(!p.contains("run/secrets"), "mount point {p} in a layer");
        }
        let hay = String::from_utf8_lossy(data);
        assert!(!hay.contains(value), "layer {digest} holds the secret");
    }
    let layers = layers.len();
    assert!(layers >= 2, "expected the base layer and the step's");
}

#[test]
fn rawjson_progress_is_solve_status_lines() {
    let env = TestEnv::new("rawjson");
    let pb = branches_definition(&env, "raw.pb", &["echo hello-from-step"]);
    let out = env.envkit(&["solve", pb.to_str().unwrap(), "--progress", "rawjson"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut completed = 0;
    let mut logged = false;
    for line in stderr(&out).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(vs) = v["vertexes"].as_array() {
            for x in vs {
                assert!(
                    x["digest"].as_str().unwrap_or("").starts_with("sha256:"),
                    "{x}"
                );
                assert!(x["started"].is_string() && x["name"].is_string(), "{x}");
                if x["completed"].is_string() {
                    completed += 1;
                }
            }
        }
        if let Some(logs) = v["logs"].as_array() {
            use base64::Engine as _;
            for l in logs {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(l["data"].as_str().unwrap_or(""))
                    .unwrap();
                logged |= String::from_utf8_lossy(&data).contains("hello-from-step");
            }
        }
    }
    assert!(completed >= 4, "{}", stderr(&out));
    assert!(logged, "the step's output is not in the logs");
}

/// A static file server on 127.0.0.1 (Python's), stopped when dropped.
struct FileServer {
    child: std::process::Child,
    port: u16,
}

impl FileServer {
    fn start(dir: &std::path::Path) -> FileServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("read");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        FileServer { child, port }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn io_http_downloads_a_checked_file() {
    use sha2::Digest as _;
    let env = TestEnv::new("http");
    let files = env.dir.join("www");
    std::fs::create_dir_all(&files).unwrap();
    let body = b"col1,col2\n1,2\n";
    std::fs::write(files.join("data.csv"), body).unwrap();
    let server = FileServer::start(&files);
    let sum = format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)));
    let file = |port: u16, checksum: &str| {
        format!(
            "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
             io.http(url=\"http://127.0.0.1:{port}/data.csv\", checksum=\"{checksum}\", filename=\"data.csv\")\n    \
             run(commands=[\"stat -c %u_%a /home/envd/extra_source/data.csv > /opt/stat\", \
             \"cp /home/envd/extra_source/data.csv /opt/copy\"])\n"
        )
    };
    let ctx = env.context_with("http", &file(server.port, &sum));
    let text = build_and_run(&env, &ctx, "http", "cat /opt/stat /opt/copy");
    assert!(text.starts_with(&format!("{}_600\n", env.uid())), "{text}");
    assert!(text.ends_with("col1,col2\n1,2\n"), "{text}");

    // A warm build with a checksum does not download again: it works with the server gone.
    drop(server);
    let out = env.envkit(&["build", "-p", ctx.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "warm build needed the server:\n{}",
        stderr(&out)
    );

    // A wrong checksum is an error that says so.
    let server = FileServer::start(&files);
    let bad = format!("sha256:{}", "0".repeat(64));
    let ctx2 = env.context_with("http-bad", &file(server.port, &bad));
    let out = env.envkit(&["build", "-p", ctx2.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn two_builds_on_one_store_run_a_shared_step_once() {
    let env = TestEnv::new("shared");
    let pb = branches_definition(&env, "shared.pb", &["sleep 2; echo ran-the-shared-step"]);
    let spawn = || {
        env.user_command(common::envkit_bin())
            .args(["solve", pb.to_str().unwrap(), "--progress", "plain"])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn envkit")
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let mut ran = 0;
    for o in &outs {
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{log}");
        // The output line (not the step's name line) shows who ran it.
        ran += log
            .lines()
            .filter(|l| l.contains("ran-the-shared-step") && !l.contains("exec:"))
            .count();
    }
    assert_eq!(ran, 1, "the step ran {ran} times");
}

/// A config (owned by the test user) that sends docker.io to a port where nothing listens:
/// a build that asks the registry fails, naming `127.0.0.1:9`.
fn offline_config(env: &TestEnv) -> std::path::PathBuf {
    let offline = env.dir.join("offline.toml");
    std::fs::write(
        &offline,
        "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:9\"]\n[registry.\"127.0.0.1:9\"]\nhttp = true\n",
    )
    .unwrap();
    env.chown(&offline);
    offline
}

#[test]
fn a_warm_build_from_a_pinned_base_needs_no_registry() {
    let env = TestEnv::new("pinned");
    // The digest the local registry serves for debian:bookworm.
    let out = std::process::Command::new("curl")
        .args([
            "-fsSI",
            "--noproxy",
            "*",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("http://{}/v2/library/debian/manifests/bookworm", env.registry))
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let digest = headers
        .lines()
        .find_map(|l| l.strip_prefix("docker-content-digest:"))
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|| panic!("no digest header in {headers}"));
    let ctx = env.context_with(
        "pinned",
        &format!(
            "# syntax=v1\ndef build():\n    base(image=\"debian@{digest}\", dev=False)\n    \
             run(commands=[\"echo pinned > /pinned\"])\n"
        ),
    );
    let out = env.envkit(&["build", "-p", ctx.to_str().unwrap()]);
    assert!(out.status.success(), "cold build failed:\n{}", stderr(&out));
    // Point docker.io at a port where nothing listens: a warm build must not need it.
    let offline = offline_config(&env);
    let out = env.envkit(&[
        "--config",
        offline.to_str().unwrap(),
        "build",
        "-p",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "the warm build touched the registry:\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("CACHED"), "{}", stderr(&out));
}

#[test]
fn du_and_prune_keep_images_and_wait_for_running_builds() {
    let env = TestEnv::new("prune");
    let pb = branches_definition(&env, "p.pb", &["echo layer > /layer-file"]);
    let out = env.envkit(&["solve", pb.to_str().unwrap(), "-t", "kept:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let du = stdout(&env.envkit(&["du"]));
    let count = |text: &str, kind: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(kind))
            .and_then(|l| {
                l[kind.len()..]
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} in\n{text}"))
    };
    assert!(count(&du, "build cache") >= 3, "{du}");
    let blobs_before = count(&du, "blobs");

    // Recently used cache survives a filter; a plain prune removes it all.
    let out = env.envkit(&["prune", "--filter", "until=24h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("removed 0 build cache"),
        "{}",
        stdout(&out)
    );
    let out = env.envkit(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let du = stdout(&env.envkit(&["du"]));
    assert_eq!(count(&du, "build cache"), 0, "{du}");
    // The image's blobs stay (layers, config, manifest); only unreferenced ones may go.
    let blobs_after = count(&du, "blobs");
    assert!(blobs_after >= 3 && blobs_after <= blobs_before, "{du}");
    assert!(stdout(&env.envkit(&["images"])).contains("kept:1"));

    // A prune while a build runs waits for it; the build is not disturbed.
    let slow = branches_definition(&env, "slow.pb", &["sleep 3; echo built-during-prune"]);
    let build = env
        .user_command(common::envkit_bin())
        .args(["solve", slow.to_str().unwrap(), "--progress", "plain"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while user_processes(&env, "sleep 3; echo built-during-prune").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started its step"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = env.envkit(&["prune", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for the builds"),
        "{}",
        stderr(&out)
    );
    let b = build.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
}

#[test]
fn network_none_isolates_a_step_and_extra_hosts_are_added() {
    use envkit::llb::{self, Constraints, Run};
    use envkit::pb;
    let env = TestEnv::new("net");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    // Interfaces the step sees (busybox-static's wget crashes, so no connection probe).
    let probe = "ifconfig -a | grep -c Link";
    let isolated = base
        .network(pb::NetMode::None)
        .add_extra_host("myhost.internal", "10.1.2.3")
        .run(Run::args([
            "sh",
            "-c",
            &format!("echo none: $({probe}) interfaces; grep myhost.internal /etc/hosts"),
        ]))
        .root();
    // The default (BuildKit's sandbox): loopback and slirp4netns's tap0.
    let sandboxed = base
        .run(Run::args([
            "sh",
            "-c",
            "echo sandbox: $(ifconfig -a | grep Link | cut -d' ' -f1 | sort | tr '\\n' ' ')",
        ]))
        .root();
    let def = llb::merge(
        &[
            base.clone(),
            llb::diff(&base, &isolated, Constraints::new()),
            llb::diff(&base, &sandboxed, Constraints::new()),
        ],
        Constraints::new(),
    )
    .marshal(&llb::MarshalOptions::default())
    .expect("marshal");
    let pb_path = env.def_file("net", &def);
    let out = env.envkit(&["solve", pb_path.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("none: 1 interfaces"), "network none: {log}");
    assert!(log.contains("10.1.2.3\tmyhost.internal"), "{log}");
    // Loopback and slirp4netns's tap0; never the host's interfaces.
    let line = log
        .lines()
        .find(|l| l.contains("sandbox: ") && !l.contains("exec:"))
        .unwrap_or_else(|| panic!("no sandbox line: {log}"));
    assert!(line.contains("lo ") && line.contains("tap0"), "{line}");
    assert!(
        !line.contains("eth") && !line.contains("ekbr"),
        "host interfaces: {line}"
    );
}

/// A local source's exclude patterns (with a `!` exception) decide what the step sees and
/// what its cache key covers: a change in an excluded file reruns nothing.
#[test]
fn local_source_patterns_filter_the_context_and_its_key() {
    use envkit::llb::{self, LocalOptions, Mount, Run};
    let env = TestEnv::new("patterns");
    let ctx = env.dir.join("patterns-ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::create_dir_all(ctx.join("target/debug")).unwrap();
    std::fs::write(ctx.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(ctx.join("src/notes.tmp"), "scratch\n").unwrap();
    std::fs::write(ctx.join("keep.tmp"), "kept\n").unwrap();
    std::fs::write(ctx.join("target/debug/app"), "binary\n").unwrap();
    env.chown(&ctx);
    let local = llb::local(
        "src",
        LocalOptions {
            exclude_patterns: vec!["target".into(), "**/*.tmp".into(), "!keep.tmp".into()],
            ..Default::default()
        },
    );
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(
            Run::args(["sh", "-c", "cd /ctx && find . | sort | tr '\\n' ' '; echo"])
                .mount(Mount::bind("/ctx", &local).readonly()),
        )
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb_path = env.def_file("patterns", &def);
    let local_arg = format!("src={}", ctx.display());
    let solve = || {
        env.envkit(&[
            "solve",
            "--progress",
            "plain",
            "--local",
            &local_arg,
            pb_path.to_str().unwrap(),
        ])
    };
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(". ./keep.tmp ./src ./src/main.rs"),
        "the step saw the wrong files: {log}"
    );
    std::fs::write(ctx.join("target/debug/app"), "rebuilt\n").unwrap();
    std::fs::write(ctx.join("src/more.tmp"), "more\n").unwrap();
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("./src/main.rs"),
        "a change in excluded files reran the step: {log}"
    );
}

/// An ssh mount reaches the user's agent through a socket of the step's own, owned by the
/// uid the mount asks for; the agent here is a tiny fake that answers one message.
#[test]
fn an_ssh_mount_forwards_the_agent_to_a_non_root_step() {
    use envkit::llb::{self, Run, SshMount};
    let env = TestEnv::new("ssh");
    let agent = env.dir.join("agent.sock");
    let fake = FakeAgent::start(&agent);
    let probe = "import os, socket, stat\n\
                 p = os.environ['SSH_AUTH_SOCK']\n\
                 st = os.stat(p)\n\
                 print('sock', st.st_uid, oct(stat.S_IMODE(st.st_mode)), 'me', os.getuid())\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.connect(p)\n\
                 s.sendall(b'hello')\n\
                 print(s.recv(64).decode())\n";
    let def = llb::image("python:3.11-slim")
        .user("1000")
        .run(Run::args(["python3", "-c", probe]).ssh(SshMount {
            id: "default".into(),
            target: None,
            uid: 1000,
            gid: 1000,
            mode: 0o600,
            optional: false,
        }))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb_path = env.def_file("ssh", &def);
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "--ssh",
        &format!("default={}", agent.display()),
        pb_path.to_str().unwrap(),
    ]);
    let missing = env.envkit(&["solve", "--progress", "plain", pb_path.to_str().unwrap()]);
    drop(fake);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("sock 1000 0o600 me 1000"), "{log}");
    assert!(log.contains("agent says hello"), "{log}");
    let log = stderr(&missing);
    assert!(!missing.status.success());
    assert!(
        log.contains("ssh agent \"default\" was not provided"),
        "{log}"
    );
}

/// A stand-in for ssh-agent: a unix socket anyone may connect to that answers each
/// connection's first message with `agent says <message>`.
struct FakeAgent(std::process::Child);

impl FakeAgent {
    fn start(path: &std::path::Path) -> FakeAgent {
        let child = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import os, socket, sys\n\
                 p = sys.argv[1]\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.bind(p)\n\
                 os.chmod(p, 0o666)\n\
                 s.listen(4)\n\
                 while True:\n\
                 \x20   c, _ = s.accept()\n\
                 \x20   c.sendall(b'agent says ' + c.recv(64))\n\
                 \x20   c.close()\n",
            )
            .arg(path)
            .spawn()
            .expect("start the fake agent");
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FakeAgent(child)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every vector of BuildKit's Go client in `tests/golden/llb` executes with `envkit solve`,
/// except those whose sources cannot be reached here: `git-http` (github.com and
/// example.com) is not run, and `platform-arm64` and `platform-mixed` must fail with a clear
/// error (they name busybox:latest and debian:bookworm, which are linux/amd64 only in the
/// local registry; arm64 steps run in `tests/platforms.rs`, on the multi-arch tags).
#[test]
fn every_reachable_golden_vector_executes() {
    let env = TestEnv::new("vectors");
    // The vectors name 127.0.0.1:5000; a registry mirror sends that to the test registry.
    if env.registry != "127.0.0.1:5000" {
        let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
        cfg.push_str(&format!(
            "\n[registry.\"127.0.0.1:5000\"]\nmirrors = [\"{}\"]\nhttp = true\n",
            env.registry
        ));
        std::fs::write(env.config_path(), cfg).unwrap();
    }
    let ctx = env.dir.join("vector-ctx");
    for d in ["sub", "bin", "etc", "src", "target"] {
        std::fs::create_dir_all(ctx.join(d)).unwrap();
    }
    std::fs::write(ctx.join("bin/hello.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::write(ctx.join("bin/other"), "not a script\n").unwrap();
    std::fs::write(ctx.join("etc/app.conf"), "k=v\n").unwrap();
    std::fs::write(ctx.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(ctx.join("Cargo.toml"), "[package]\n").unwrap();
    std::fs::write(ctx.join("sub/file"), "in sub\n").unwrap();
    std::fs::write(ctx.join("token"), "tok3n\n").unwrap();
    env.chown(&ctx);
    let agent = env.dir.join("agent.sock");
    let _fake = FakeAgent::start(&agent);
    // Not run at all: its sources are on github.com and example.com, which tests must not
    // contact (git and http sources have their own e2e tests against local servers).
    let not_run = ["git-http"];
    // Run, and must fail with a clear error.
    let unreachable = [
        ("platform-arm64", "is linux/amd64, not linux/arm64"),
        ("platform-mixed", "is linux/amd64, not linux/arm"),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/llb");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".pb").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    let mut failures = Vec::new();
    for name in &names {
        if not_run.contains(&name.as_str()) {
            eprintln!("=== {name}: not run here (its sources are outside this network)");
            continue;
        }
        let pb = env.dir.join(format!("{name}.pb"));
        std::fs::copy(dir.join(format!("{name}.pb")), &pb).unwrap();
        env.chown(&pb);
        let mut cmd = env.user_command(common::envkit_bin());
        cmd.env("APIKEY", "k3y").args([
            "solve",
            "--progress",
            "plain",
            "--local",
            &format!("context={}", ctx.display()),
            "--secret",
            &format!("id=token,src={}", ctx.join("token").display()),
            "--secret",
            "id=apikey,env=APIKEY",
            "--ssh",
            &format!("default={}", agent.display()),
            "--allow",
            "network.host",
            "--allow",
            "security.insecure",
        ]);
        let out = cmd.arg(&pb).output().expect("run envkit");
        let log = stderr(&out);
        eprintln!("=== {name}\n{log}");
        match unreachable.iter().find(|(n, _)| n == name) {
            Some((_, why)) if out.status.success() || !log.contains(why) => {
                failures.push(format!("{name}: expected a failure mentioning {why:?}"));
            }
            Some(_) => {}
            None if !out.status.success() => failures.push(format!("{name} failed")),
            None => {}
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Git sources with the system git: a tag, a branch with a subdir, a kept `.git`; a warm
/// solve reruns nothing, and a new commit on the branch reruns the step that reads it.
#[test]
fn git_sources_check_out_refs_and_follow_new_commits() {
    use envkit::llb::{self, GitOptions, Mount, Run};
    let env = TestEnv::new("git");
    let repo = env.dir.join("repo");
    std::fs::create_dir_all(repo.join("docs")).unwrap();
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(["-c", "safe.directory=*"])
            .args(args)
            .status()
            .expect("git");
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.txt"), "v1\n").unwrap();
    std::fs::write(repo.join("docs/readme"), "docs one\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "one"]);
    git(&["tag", "v1"]);
    std::fs::write(repo.join("a.txt"), "v2\n").unwrap();
    git(&["commit", "-q", "-am", "two"]);
    env.chown(&repo);
    let url = format!("file://{}", repo.display());
    let tag = llb::git(&url, "v1", GitOptions::default());
    let docs = llb::git(&url, "main:docs", GitOptions::default());
    let kept = llb::git(
        &url,
        "main",
        GitOptions {
            keep_git_dir: true,
            ..Default::default()
        },
    );
    let script = "echo tag=$(cat /tag/a.txt) entries=$(ls -A /tag | tr '\\n' ,); \
                  echo docs=$(cat /docs/readme); test -d /kept/.git && echo kept-git";
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(
            Run::args(["sh", "-c", script])
                .mount(Mount::bind("/tag", &tag).readonly())
                .mount(Mount::bind("/docs", &docs).readonly())
                .mount(Mount::bind("/kept", &kept).readonly()),
        )
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb_path = env.def_file("git", &def);
    let solve = || env.envkit(&["solve", "--progress", "plain", pb_path.to_str().unwrap()]);
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("tag=v1 entries=a.txt,docs,"), "{log}");
    assert!(log.contains("docs=docs one"), "{log}");
    assert!(step_said(&log, "kept-git"), "{log}");
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("docs=docs one"),
        "a warm solve reran the step: {log}"
    );
    std::fs::write(repo.join("docs/readme"), "docs two\n").unwrap();
    git(&["commit", "-q", "-am", "three"]);
    env.chown(&repo);
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("docs=docs two"),
        "the new commit was not seen: {log}"
    );
}

/// A cache mount is shared by two different builds on one store: what the first left in it
/// the second reads, and neither image holds it.
#[test]
fn a_cache_mount_is_shared_by_two_builds_and_kept_out_of_layers() {
    use envkit::llb::{self, CacheSharing, Mount, Run};
    let env = TestEnv::new("cachemount");
    let def = |name: &str, script: &str| {
        let def = llb::image("busybox")
            .add_env("PATH", "/bin")
            .run(Run::args(["sh", "-c", script]).mount(Mount::cache(
                "/var/cache/shared",
                "envkit-e2e-shared",
                CacheSharing::Shared,
            )))
            .root()
            .marshal(&llb::MarshalOptions::default())
            .expect("marshal");
        env.def_file(name, &def)
    };
    let first = def(
        "first",
        "echo cached-by-first > /var/cache/shared/marker; echo ran > /first-ran",
    );
    let second = def(
        "second",
        "echo second read $(cat /var/cache/shared/marker); ls /var/cache/shared | wc -l",
    );
    let tar = env.dir.join("first.tar");
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "-o",
        &format!("type=oci,dest={}", tar.display()),
        first.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.envkit(&["solve", "--progress", "plain", second.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("second read cached-by-first"), "{log}");
    // `--filter type=exec.cachemount` empties the cache mounts and keeps the build cache.
    let out = env.envkit(&["prune", "--filter", "type=exec.cachemount"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("removed 0 build cache entries") && text.contains("1 cache mounts"),
        "{text}"
    );
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "--no-cache",
        second.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        step_said(&log, "second read") && !log.contains("cached-by-first"),
        "the cache mount survived the prune: {log}"
    );
    let layers = oci_layers(&env, &tar);
    assert!(
        layers
            .iter()
            .any(|(_, data)| String::from_utf8_lossy(data).contains("first-ran")),
        "the step's layer is missing"
    );
    let found = layers
        .iter()
        .any(|(_, data)| String::from_utf8_lossy(data).contains("cached-by-first"));
    assert!(!found, "the cache mount's content is in a layer");
}

/// The uncompressed layers (digest, tar bytes) of an OCI layout tar: every blob that
/// gunzips (manifests and configs are JSON).
fn oci_layers(env: &TestEnv, tar: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let layout = env.dir.join(format!(
        "layout-{}",
        tar.file_stem().unwrap_or_default().to_string_lossy()
    ));
    std::fs::create_dir_all(&layout).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        let mut data = Vec::new();
        let mut gz = flate2::read::GzDecoder::new(&raw[..]);
        if std::io::Read::read_to_end(&mut gz, &mut data).is_ok() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, data));
        }
    }
    out
}

/// Exec options: ulimits reach the step, a listed exit code counts as success, and insecure
/// mode (an entitlement, as in BuildKit) needs `--allow security.insecure`.
#[test]
fn ulimits_exit_codes_and_entitlements() {
    use envkit::llb::{self, Constraints, Run};
    use envkit::pb;
    let env = TestEnv::new("execopts");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    let limited = base
        .add_ulimit("nofile", 64, 128)
        .valid_exit_codes(&[0, 3])
        .run(Run::args([
            "sh",
            "-c",
            "echo soft=$(ulimit -n) hard=$(ulimit -Hn); exit 3",
        ]))
        .root();
    let insecure = base
        .security(pb::SecurityMode::Insecure)
        .run(Run::args(["sh", "-c", "echo insecure ran"]))
        .root();
    let def = llb::merge(
        &[
            base.clone(),
            llb::diff(&base, &limited, Constraints::new()),
            llb::diff(&base, &insecure, Constraints::new()),
        ],
        Constraints::new(),
    )
    .marshal(&llb::MarshalOptions::default())
    .expect("marshal");
    let pb_path = env.def_file("execopts", &def);
    let p = pb_path.to_str().unwrap();
    let refused = env.envkit(&["solve", "--progress", "plain", p]);
    let log = stderr(&refused);
    assert!(!refused.status.success(), "{log}");
    assert!(
        log.contains("security.insecure, which is not allowed") && log.contains("--allow"),
        "{log}"
    );
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "--allow",
        "security.insecure",
        p,
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("soft=64 hard=128"), "{log}");
    assert!(step_said(&log, "insecure ran"), "{log}");
}

/// `image.resolvemode=local`: once a tag has been resolved, a build that prefers local
/// images needs no registry; the default mode asks the registry and says what failed.
#[test]
fn prefer_local_resolve_needs_no_registry_for_a_known_tag() {
    use envkit::llb::{self, ImageOptions, ResolveMode, Run};
    let env = TestEnv::new("resolvemode");
    let def = |name: &str, mode: Option<ResolveMode>| {
        let def = llb::image_with(
            "busybox:latest",
            ImageOptions {
                resolve_mode: mode,
                ..Default::default()
            },
        )
        .add_env("PATH", "/bin")
        .run(Run::args(["sh", "-c", "echo resolved"]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
        env.def_file(name, &def)
    };
    let local = def("local", Some(ResolveMode::PreferLocal));
    let default = def("default", None);
    let out = env.envkit(&["solve", default.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let offline = offline_config(&env);
    let cfg = offline.to_str().unwrap();
    let out = env.envkit(&["--config", cfg, "solve", local.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "local mode asked the registry:\n{}",
        stderr(&out)
    );
    let out = env.envkit(&["--config", cfg, "solve", default.to_str().unwrap()]);
    let log = stderr(&out);
    assert!(
        !out.status.success(),
        "the default mode did not ask the registry: {log}"
    );
    assert!(log.contains("127.0.0.1:9"), "{log}");
}

/// `envkit solve --pull missing`: a Definition's image tags that its ops leave to the default
/// are taken from the store, as `build --pull missing` does.
#[test]
fn solve_pull_missing_takes_a_definitions_tags_from_the_store() {
    let env = TestEnv::new("solvepm");
    let pb = branches_definition(&env, "pm.pb", &["echo one > /one"]);
    let p = pb.to_str().unwrap();
    let out = env.envkit(&["solve", p, "-t", "spm:1", "--progress", "plain"]);
    assert!(out.status.success(), "cold solve failed:\n{}", stderr(&out));
    let offline = offline_config(&env);
    let cfg = offline.to_str().unwrap();
    let offline_solve = |pull: &str| {
        env.envkit(&[
            "--config",
            cfg,
            "solve",
            "--pull",
            pull,
            p,
            "-t",
            "spm:1",
            "--progress",
            "plain",
        ])
    };
    let out = offline_solve("missing");
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "--pull missing asked the registry:\n{log}"
    );
    assert!(every_step_cached(&log), "a step ran again:\n{log}");
    let out = offline_solve("always");
    assert!(
        !out.status.success(),
        "the default did not ask the registry"
    );
    assert!(stderr(&out).contains("127.0.0.1:9"), "{}", stderr(&out));
}

/// `build --pull missing`: a tag base the store has is not asked of the registry, a default
/// build's results are reused (the resolve mode is out of every key), and an edited build
/// file is evaluated again (the memo of evaluations sees the change).
#[test]
fn pull_missing_rebuilds_a_tag_base_without_the_registry() {
    let env = TestEnv::new("pullmissing");
    let file = |extra: &str| {
        format!(
            "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
             run(commands=[\"echo one > /one\"]){extra}\n"
        )
    };
    let ctx = env.context_with("pullmissing", &file(""));
    let c = ctx.to_str().unwrap();
    let out = env.envkit(&["build", "-p", c, "-t", "pm:1", "--progress", "plain"]);
    assert!(out.status.success(), "cold build failed:\n{}", stderr(&out));
    let offline = offline_config(&env);
    let cfg = offline.to_str().unwrap();
    let offline_build = |pull: &str| {
        env.envkit(&[
            "--config",
            cfg,
            "build",
            "--pull",
            pull,
            "-p",
            c,
            "-t",
            "pm:1",
            "--progress",
            "plain",
        ])
    };
    let out = offline_build("missing");
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "--pull missing asked the registry:\n{log}"
    );
    assert!(every_step_cached(&log), "a step ran again:\n{log}");
    let out = offline_build("always");
    assert!(
        !out.status.success(),
        "the default did not ask the registry"
    );
    assert!(stderr(&out).contains("127.0.0.1:9"), "{}", stderr(&out));

    // An edited build file: evaluated again, its new step runs, still without the registry.
    std::fs::write(
        ctx.join("build.envd"),
        file("\n    run(commands=[\"echo two > /two\"])"),
    )
    .unwrap();
    env.chown(&ctx.join("build.envd"));
    let out = offline_build("missing");
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("echo two > /two"),
        "the edit was not seen:\n{log}"
    );

    // Kept evaluations are metadata that only speeds builds up: `prune --all` drops them.
    let kept =
        || std::fs::read_dir(env.store().join("content/evaluations")).map_or(0, |d| d.count());
    assert!(kept() > 0, "no evaluation was kept");
    let out = env.envkit(&["prune", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(kept(), 0);
}

/// With the default resolve a warm build takes its base image's tag from the store while the
/// registry is asked, and waits for the answer before it records the image: while the tag
/// names the same image everything is cached; once a new image is pushed under the tag, the
/// build says so, is compiled again on the new image and its step runs on it.
#[test]
fn a_base_tag_pushed_again_is_built_on_again() {
    let env = TestEnv::new("tagmoved");
    let tag = format!(
        "{}/envkit-test/moving-{}:1",
        env.registry,
        std::process::id()
    );
    let push = |content: &str| {
        let src = env.context_with(
            "moving-src",
            &format!(
                "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
                 run(commands=[\"echo {content} > /v\"])\n"
            ),
        );
        let out = env.envkit(&[
            "build",
            "-p",
            src.to_str().unwrap(),
            "--progress",
            "plain",
            "-o",
            &format!("type=image,name={tag},push=true"),
        ]);
        assert!(out.status.success(), "push: {}", stderr(&out));
    };
    push("first");
    let ctx = env.context_with(
        "moving",
        &format!(
            "# syntax=v1\ndef build():\n    base(image=\"{tag}\", dev=False)\n    \
             run(commands=[\"cat /v\"])\n"
        ),
    );
    let build = || {
        let out = env.envkit(&["build", "-p", ctx.to_str().unwrap(), "--progress", "plain"]);
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        log
    };
    let log = build();
    assert!(log.contains("first"), "{log}");
    let log = build();
    assert!(every_step_cached(&log), "a step ran again:\n{log}");
    assert!(!log.contains("compiled again"), "{log}");

    push("second");
    let log = build();
    assert!(
        log.contains(&format!("image {tag} names sha256:")) && log.contains("compiled again"),
        "the move was not noticed:\n{log}"
    );
    assert!(
        log.contains("second"),
        "the step did not run on the new image:\n{log}"
    );
    let log = build();
    assert!(every_step_cached(&log), "a step ran again:\n{log}");
}

/// `[worker] snapshotter = "copy"` (what envkit falls back to where the kernel refuses
/// overlayfs in a user namespace) builds an envd file whose image podman runs as expected.
#[test]
fn the_copy_snapshotter_builds_a_runnable_image() {
    let env = TestEnv::new("copysnap");
    let mut cfg = std::fs::read_to_string(env.config_path()).unwrap();
    cfg.push_str("snapshotter = \"copy\"\n");
    std::fs::write(env.config_path(), cfg).unwrap();
    let ctx = env.context_with(
        "copysnap",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         io.copy(source=\"hello.txt\", target=\"/opt/hello.txt\")\n    \
         run(commands=[\"echo made > /made\", \"rm /etc/issue\", \"mkdir -p /x/y && touch /x/y/z\"])\n    \
         run(commands=[\"test ! -e /etc/issue\", \"cat /made > /made-copy\", \
         \"stat -f -c %T / > /rootfs-type\"])\n",
    );
    std::fs::write(ctx.join("hello.txt"), "hello from the context\n").unwrap();
    env.chown(&ctx);
    let text = build_and_run(
        &env,
        &ctx,
        "copysnap",
        "cat /opt/hello.txt /made-copy; test -e /x/y/z && echo z-there; test -e /etc/issue || echo issue-gone; echo root-was-$(cat /rootfs-type)",
    );
    for want in [
        "hello from the context",
        "made",
        "z-there",
        "issue-gone",
        "root-was-",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    assert!(
        !text.contains("root-was-overlay"),
        "the steps ran on overlayfs: {text}"
    );
}

/// Cache sharing modes with two steps at once: `locked` steps take turns, `private` ones get
/// an instance each, `shared` ones see each other.
#[test]
fn cache_mount_sharing_modes() {
    use envkit::llb::{self, CacheSharing, Constraints, Mount, Run};
    let env = TestEnv::new("sharing");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    // Each step marks the cache busy for a second and reports whether it found it busy
    // (another step inside) and which other steps' files it sees.
    let step = |mode: &str, n: u32, sharing: CacheSharing| {
        base.run(
            Run::args([
                "sh",
                "-c",
                &format!(
                    "cd /c; if [ -e busy ]; then echo {mode}{n}: overlap; fi; touch busy; \
                     echo $$ > mine-{n}; sleep 1; echo {mode}{n}: sees $(ls | grep -c mine); \
                     rm -f busy"
                ),
            ])
            .mount(Mount::cache("/c", &format!("sharing-{mode}"), sharing)),
        )
        .root()
    };
    let mut inputs = vec![base.clone()];
    for (mode, sharing) in [
        ("locked", CacheSharing::Locked),
        ("private", CacheSharing::Private),
    ] {
        for n in 1..=2 {
            inputs.push(llb::diff(
                &base,
                &step(mode, n, sharing),
                Constraints::new(),
            ));
        }
    }
    let def = llb::merge(&inputs, Constraints::new())
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb_path = env.def_file("sharing", &def);
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "--parallelism",
        "4",
        pb_path.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // Output lines, not the command lines that quote them.
    let said = |what: &str| {
        log.lines()
            .any(|l| !l.contains("exec:") && l.trim_end().ends_with(what))
    };
    assert!(
        !said("locked1: overlap") && !said("locked2: overlap"),
        "{log}"
    );
    // Locked steps run one after the other on one cache: the second sees both files.
    assert!(said("locked1: sees 2") || said("locked2: sees 2"), "{log}");
    // Private steps ran at once on two instances: each sees only its own file.
    assert!(
        said("private1: sees 1") && said("private2: sees 1"),
        "{log}"
    );
}

/// An exec mount with an output (a writable mount on scratch, as `llb.AddMount` makes): what
/// the step writes there is a result of its own that later ops use, and it is cached with the
/// step.
#[test]
fn an_exec_mount_output_is_a_result_of_its_own() {
    use envkit::llb::{self, CopyOptions, FileAction, Mount, Run};
    let env = TestEnv::new("mountout");
    let base = llb::image("busybox").add_env("PATH", "/bin");
    let exec = base.run(
        Run::args([
            "sh",
            "-c",
            "echo artifact > /out/a; mkdir -p /out/sub; echo deep > /out/sub/b; echo root > /r",
        ])
        .mount(Mount::bind("/out", &llb::scratch())),
    );
    let out = exec.get_mount("/out").expect("the mount's output");
    let final_state = base.file(
        FileAction::new().copy(&out, "/", "/collected", CopyOptions::default()),
        llb::Constraints::new(),
    );
    let check = final_state
        .run(Run::args([
            "sh",
            "-c",
            "cat /collected/a /collected/sub/b; test -e /r || echo no-root-change",
        ]))
        .root();
    let def = check
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb_path = env.def_file("mountout", &def);
    let solve = || env.envkit(&["solve", "--progress", "plain", pb_path.to_str().unwrap()]);
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    for want in ["artifact", "deep", "no-root-change"] {
        assert!(step_said(&log, want), "{want}: {log}");
    }
    let out = solve();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        !step_said(&log, "no-root-change"),
        "a warm solve reran steps: {log}"
    );
}

/// Whether a step printed a line ending in `what` (plain progress: `#N  secs text`), as
/// opposed to a command line that merely quotes it.
fn step_said(log: &str, what: &str) -> bool {
    log.lines().any(|l| {
        let mut parts = l.split_whitespace();
        parts.next().is_some_and(|p| p.starts_with('#'))
            && parts.next().is_some_and(|t| t.parse::<f64>().is_ok())
            && l.trim_end().ends_with(what)
    })
}

/// Builds the context `ctx` (its image named `<name>:dev`) to an OCI tar, loads it into podman
/// and runs `script` in it without a network; returns what the script printed.
fn build_and_run(env: &TestEnv, ctx: &std::path::Path, name: &str, script: &str) -> String {
    let tar = env.dir.join(format!("{name}.tar"));
    let out = env.envkit(&[
        "build",
        "-p",
        ctx.to_str().unwrap(),
        "-o",
        &format!("type=oci,dest={}", tar.display()),
    ]);
    assert!(out.status.success(), "build failed:\n{}", stderr(&out));
    let out = env.podman(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {}", stderr(&out));
    let image = format!("{name}:dev");
    let out = env.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    stdout(&out)
}

/// The other exporters: `type=docker` loads in podman, `type=tar` is the root filesystem
/// with the image's owners, `type=local` writes it into a directory owned by the user, and
/// `compression=zstd` gives zstd layers skopeo reads.
#[test]
fn docker_tar_local_and_zstd_exports() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("exporters");
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(Run::args([
            "sh",
            "-c",
            "echo exported > /made; chown 42:42 /made; rm /bin/cat",
        ]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("exporters", &def);
    let solve = |out: &str| {
        let o = env.envkit(&[
            "solve",
            "-t",
            "exporters:dev",
            "-o",
            out,
            pb.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "-o {out}: {}", stderr(&o));
    };
    // docker save format, loaded by podman.
    let docker = env.dir.join("docker.tar");
    solve(&format!("type=docker,dest={}", docker.display()));
    let out = env.podman(&["load", "-i", docker.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {}", stderr(&out));
    let out = env.podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "exporters:dev",
        "sh",
        "-c",
        "cat /made; stat -c %u:%g /made; test -e /bin/cat || echo cat-gone",
    ]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("exported") && text.contains("42:42") && text.contains("cat-gone"),
        "{text}"
    );

    // The root filesystem as one tar, with the image's ids; the whiteout applied.
    let rootfs = env.dir.join("rootfs.tar");
    solve(&format!("type=tar,dest={}", rootfs.display()));
    let mut ar = tar::Archive::new(std::fs::File::open(&rootfs).unwrap());
    let mut made = None;
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p == "made" {
            made = Some((e.header().uid().unwrap(), e.header().gid().unwrap()));
        }
        names.push(p);
    }
    assert_eq!(made, Some((42, 42)), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/sh"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "bin/cat" || n.contains(".wh.")),
        "{names:?}"
    );

    // A directory owned by the user.
    let dir = env.dir.join("local-out");
    solve(&format!("type=local,dest={}", dir.display()));
    let md = std::fs::symlink_metadata(dir.join("made")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.uid(), env.uid());
    assert_eq!(
        std::fs::read_to_string(dir.join("made")).unwrap(),
        "exported\n"
    );
    assert!(!dir.join("bin/cat").exists());

    // zstd layers in an OCI layout.
    let zst = env.dir.join("zstd.tar");
    solve(&format!("type=oci,dest={},compression=zstd", zst.display()));
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", zst.display()))
        .output()
        .expect("skopeo");
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        raw.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{raw}"
    );
    assert!(
        raw.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
        "the base layer keeps gzip: {raw}"
    );
}

/// Through a registry that wants basic auth (credentials in docker's config.json): a build
/// pulls its base through a mirror there and pushes the result back (`push=true`); skopeo sees
/// the same digest; a fresh store pulls the pushed image; `envkit push` to another repository
/// uploads nothing new; without credentials the pull fails and says why.
#[test]
fn push_and_pull_through_an_authenticating_registry() {
    use base64::Engine as _;
    use envkit::llb::{self, Run};
    let env = TestEnv::new("push");
    let (areg, creds) = common::auth_registry();
    let docker_dir = env.dir.join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&creds);
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"auths": {{"{areg}": {{"auth": "{b64}"}}}}}}"#),
    )
    .unwrap();
    std::fs::write(
        env.config_path(),
        format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{areg}\"]\n[registry.\"{areg}\"]\nhttp = true\n"
        ),
    )
    .unwrap();
    env.chown(&env.dir);
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(Run::args(["sh", "-c", "echo pushed-content > /pushed"]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("push", &def);
    let target = format!("{areg}/envkit/pushed:1");
    let out = env.envkit(&[
        "solve",
        "--progress",
        "plain",
        "-o",
        &format!("type=image,name={target},push=true"),
        pb.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("envkit-test-secret"),
        "the password reached the log"
    );
    let pushed = log
        .lines()
        .find_map(|l| {
            l.split_once(&format!("pushed {target} ("))?
                .1
                .split_once(')')
        })
        .map(|(d, _)| d.to_string())
        .unwrap_or_else(|| panic!("no push line: {log}"));
    // skopeo pulls the pushed image whole (every blob, verified) and finds the same digest.
    let pulled = env.dir.join("skopeo-pulled");
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--src-creds",
            &creds,
        ])
        .arg(format!("docker://{target}"))
        .arg(format!("oci:{}:pulled", pulled.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(pushed.as_str())
    );

    // A fresh store pulls the pushed image (authenticated) and finds the step's file.
    let check = llb::image(&target)
        .add_env("PATH", "/bin")
        .run(Run::args(["sh", "-c", "cat /pushed"]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let check_pb = env.def_file("push-check", &check);
    let fresh = env.dir.join("fresh-store");
    let out = env.envkit(&[
        "--root",
        fresh.to_str().unwrap(),
        "solve",
        "--progress",
        "plain",
        check_pb.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(step_said(&log, "pushed-content"), "{log}");
    // The machine-readable progress of an authenticated pull carries no secret either.
    let out = env.envkit(&[
        "--root",
        env.dir.join("fresh-store-json").to_str().unwrap(),
        "solve",
        "--progress",
        "rawjson",
        check_pb.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !all.contains("envkit-test-secret") && !all.contains(&b64),
        "a secret reached rawjson"
    );

    // `envkit push` under another name: every blob is there or mounted, none uploaded.
    let out = env.envkit(&[
        "push",
        "envkit-solve:latest",
        "--to",
        &format!("{areg}/envkit/copy:2"),
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("0 blobs uploaded"), "{text}");

    // Without credentials the registry says no, and envkit says so.
    std::fs::remove_file(docker_dir.join("config.json")).unwrap();
    let out = env.envkit(&[
        "--root",
        env.dir.join("nocreds").to_str().unwrap(),
        "solve",
        check_pb.to_str().unwrap(),
    ]);
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.to_ascii_lowercase().contains("unauthorized") || log.contains("401"),
        "{log}"
    );
}

/// Two clean builds of the same deterministic file on two stores give the same image, in the
/// store and exported (layer mtimes clamped to SOURCE_DATE_EPOCH, else the epoch; sorted
/// entries; the config's created time the same).
#[test]
fn two_clean_builds_give_the_same_digests() {
    let env = TestEnv::new("repro");
    let ctx = env.context_with(
        "repro",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         io.copy(source=\"data.txt\", target=\"/opt/data.txt\")\n    \
         run(commands=[\"echo a > /a\", \"mkdir -p /d && ln -s /a /d/l\", \"rm -f /etc/issue\"])\n",
    );
    std::fs::write(ctx.join("data.txt"), "data\n").unwrap();
    env.chown(&ctx);
    let mut digests = Vec::new();
    for (i, delay) in [(0, 0u64), (1, 1100)] {
        // A second later: any time that leaks into the image would differ.
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let store = env.dir.join(format!("store-{i}"));
        let tar = env.dir.join(format!("repro-{i}.tar"));
        let out = env.envkit(&[
            "--root",
            store.to_str().unwrap(),
            "build",
            "--progress",
            "plain",
            "-p",
            ctx.to_str().unwrap(),
            "-o",
            &format!("type=oci,dest={}", tar.display()),
        ]);
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        let built = log
            .lines()
            .find_map(|l| {
                l.split_once("built docker.io/library/repro:dev (")?
                    .1
                    .split_once(')')
            })
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| panic!("{log}"));
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg("index.json")
            .output()
            .unwrap();
        let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let exported = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        digests.push((built, exported));
    }
    assert_eq!(digests[0], digests[1], "two clean builds differ");
}

/// `-o type=containerd`: the image shows up in the fixture containerd's `ctr images ls`, its
/// content is complete, and with `unpack=true` its top snapshot exists; a second import writes
/// nothing new. A dead socket fails in seconds with the address in the message.
#[test]
fn containerd_exporter_imports_into_ctr() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("containerd");
    let sock = common::containerd_socket();
    let ns = format!("envkit-e2e-{}", std::process::id());
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(Run::args(["sh", "-c", "echo in-containerd > /made"]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("containerd", &def);
    let out_spec =
        format!("type=containerd,name=envkit-e2e/ctd:1,address={sock},namespace={ns},unpack=true");
    let o = env.envkit(&[
        "solve",
        "-t",
        "ctd:1",
        "-o",
        &out_spec,
        pb.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("containerd has"), "{}", stderr(&o));
    let ctr = |args: &[&str]| env.ctr(&sock, &ns, args);
    let list = ctr(&["images", "ls"]);
    assert!(list.contains("docker.io/envkit-e2e/ctd:1"), "{list}");
    let check = ctr(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");
    let snaps = ctr(&["snapshots", "ls"]);
    assert!(
        snaps.lines().count() >= 3,
        "busybox + one layer unpacked: {snaps}"
    );

    // Again: every blob is there already.
    let o = env.envkit(&[
        "solve",
        "-t",
        "ctd:1",
        "-o",
        &out_spec,
        pb.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 blobs written"), "{}", stderr(&o));

    let dead = env.dir.join("no-containerd.sock");
    let o = env.envkit(&[
        "solve",
        "-o",
        &format!("type=containerd,address={}", dead.display()),
        pb.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach containerd") && stderr(&o).contains("no-containerd.sock"),
        "{}",
        stderr(&o)
    );
    if std::env::var_os("ENVKIT_TEST_KEEP").is_none() {
        let rm = ["images", "rm", "docker.io/envkit-e2e/ctd:1"];
        let _ = env
            .user_command("ctr")
            .args(["--address", &sock, "-n", &ns])
            .args(rm)
            .output();
    }
}

/// `[worker] max-layer-size` reaches the helper that unpacks pulled layers: busybox (about
/// 2 MiB unpacked) is refused under a 64 KiB limit, with the setting named, and the same store
/// pulls it once the limit allows.
#[test]
fn the_layer_size_limit_refuses_a_large_base() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("layerlimit");
    let plain = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("{plain}max-layer-size = \"64KiB\"\n"),
    )
    .unwrap();
    let def = llb::image("busybox")
        .run(Run::args(["/bin/sh", "-c", "echo ok > /ok"]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("layerlimit", &def);
    let o = env.envkit(&["solve", pb.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("max-layer-size"), "{}", stderr(&o));
    std::fs::write(env.config_path(), plain).unwrap();
    let o = env.envkit(&["solve", pb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `envkit images inspect|rm`, `envkit save` and `envkit load`: an image saved from one store
/// loads into another with the same layers; skopeo's docker-archive of the registry's busybox
/// and a gzip-compressed archive load too; bad input and unknown names fail clearly.
#[test]
fn save_load_inspect_and_remove_images() {
    use envkit::llb::{self, Run};
    let env = TestEnv::new("saveload");
    let def = llb::image("busybox")
        .add_env("PATH", "/bin")
        .run(Run::args(["sh", "-c", "echo saved > /saved"]))
        .root()
        .marshal(&llb::MarshalOptions::default())
        .expect("marshal");
    let pb = env.def_file("saveload", &def);
    let o = env.envkit(&["solve", "-t", "saveload:1", pb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = env.envkit(&["images", "inspect", "saveload:1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("inspect JSON");
    assert_eq!(v[0]["name"], "docker.io/library/saveload:1");
    let layers = v[0]["manifest"]["layers"].as_array().expect("layers").len();
    assert_eq!(layers, 2, "busybox + one step");
    assert_eq!(
        v[0]["config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let archive = env.dir.join("saved.tar");
    let o = env.envkit(&["save", "saveload:1", "-o", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another store reads it back; the image runs the same.
    let other = env.dir.join("other-store");
    let root = format!("--root={}", other.display());
    let o = env.envkit(&[&root, "load", "-i", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("loaded docker.io/library/saveload:1"),
        "{}",
        stdout(&o)
    );
    let o = env.envkit(&[&root, "images", "inspect", "saveload:1"]);
    let w: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("inspect JSON");
    assert_eq!(
        w[0]["config"]["rootfs"], v[0]["config"]["rootfs"],
        "the same layers, by diff id"
    );
    // The docker format, read back by envkit itself.
    let docker = env.dir.join("saved-docker.tar");
    let o = env.envkit(&[
        "save",
        "--format",
        "docker",
        "saveload:1",
        "-o",
        docker.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.envkit(&[
        &root,
        "load",
        "-i",
        docker.to_str().unwrap(),
        "-t",
        "from-docker:1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("loaded docker.io/library/from-docker:1"),
        "{}",
        stdout(&o)
    );

    // skopeo's docker-archive of the registry's busybox, gzip-compressed on the way.
    let sk = env.dir.join("busybox-docker.tar");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/library/busybox:latest", env.registry))
        .arg(format!("docker-archive:{}:busybox:sk", sk.display()))
        .output()
        .expect("skopeo");
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    let gz = env.dir.join("busybox-docker.tar.gz");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", sk.display(), gz.display()))
        .status()
        .expect("gzip");
    assert!(status.success());
    env.chown(&gz);
    let o = env.envkit(&[&root, "load", "-i", gz.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("loaded docker.io/library/busybox:sk"),
        "{}",
        stdout(&o)
    );
    let o = env.envkit(&[&root, "images"]);
    for want in ["saveload:1", "from-docker:1", "busybox:sk"] {
        assert!(stdout(&o).contains(want), "{want}: {}", stdout(&o));
    }

    // Removing: unknown names change nothing; known ones go.
    let o = env.envkit(&[&root, "images", "rm", "busybox:sk", "no-such:image"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no image docker.io/library/no-such:image"),
        "{}",
        stderr(&o)
    );
    let o = env.envkit(&[&root, "images", "rm", "busybox:sk"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.envkit(&[&root, "images"]);
    assert!(!stdout(&o).contains("busybox:sk") && stdout(&o).contains("saveload:1"));

    let junk = env.dir.join("junk.tar");
    std::fs::write(&junk, b"definitely not an image archive").unwrap();
    env.chown(&junk);
    let o = env.envkit(&[&root, "load", "-i", junk.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("image archive"), "{}", stderr(&o));
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// An HTTP GET of `/` on 127.0.0.1:port: the status line, once something answers (10 s).
fn http_status(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if let Some(line) = buf.lines().next() {
                return Some(line.to_string());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// Whether any process on the host has `needle` in its command line.
fn process_with(needle: &str) -> Option<String> {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            continue; // a zombie is dead
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            return Some(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    None
}

fn devenv_project(env: &TestEnv, name: &str, port: u16) -> std::path::PathBuf {
    let ctx = env.context_with(
        name,
        &format!(
            "# syntax=v1\ndef build():\n    base(image=\"python:3.11-slim\", dev=False)\n    \
             runtime.environ(env={{\"GREETING\": \"hello-from-env\"}})\n    \
             runtime.command(commands={{\"greet\": \"echo greet-$GREETING\"}})\n    \
             runtime.init(commands=[\"echo init-ran > /tmp/init-marker\"])\n    \
             runtime.daemon(commands=[[\"python3\", \"-m\", \"http.server\", \"{port}\", \
             \"--bind\", \"127.0.0.1\"]])\n"
        ),
    );
    std::fs::write(ctx.join("hello.txt"), "the project's file\n").unwrap();
    env.chown(&ctx);
    ctx
}

/// `envkit up --detach`, `exec`, a supervised `runtime.daemon`, `envs ls|describe`, and a
/// `destroy` that leaves no process, no state and no writable layer behind.
#[test]
fn dev_environment_up_exec_daemon_and_destroy() {
    let env = TestEnv::new("devenv");
    let name = format!("devenv-{}", std::process::id());
    let port = free_port();
    let ctx = devenv_project(&env, &name, port);
    let p = ctx.to_str().unwrap();
    // An extra mount, into /dev (where GPU device nodes go: a tmpfs of the environment's own).
    let extra = env.dir.join("extra.txt");
    std::fs::write(&extra, "extra mount\n").unwrap();
    env.chown(&extra);
    let vol = format!("{}:/dev/envkit-extra", extra.display());
    let o = env.envkit(&["up", "--detach", "--progress", "plain", "-v", &vol, "-p", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o2 = env.envkit(&["exec", &name, "--", "cat", "/dev/envkit-extra"]);
    assert!(stdout(&o2).contains("extra mount"), "{}", stderr(&o2));
    assert!(
        stderr(&o).contains(&format!("environment {name} is up")),
        "{}",
        stderr(&o)
    );

    let o = env.envkit(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "cat hello.txt; echo \"$GREETING\"; pwd; hostname",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "the project's file",
        "hello-from-env",
        &format!("/home/envd/{name}"),
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // Files made in the project belong to the user on the host.
    let o = env.envkit(&[
        "exec",
        &name,
        "--",
        "sh",
        "-c",
        "echo made-inside > made.txt",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(ctx.join("made.txt")).unwrap().uid(),
        env.uid()
    );
    let o = env.envkit(&["exec", &name, "--command", "greet"]);
    assert!(
        stdout(&o).contains("greet-hello-from-env"),
        "{}",
        stdout(&o)
    );

    // The daemon answers on the host's loopback.
    let status = http_status(port).unwrap_or_else(|| panic!("nothing answers on {port}"));
    assert!(status.contains("200"), "{status}");
    // runtime.init ran before the daemons started.
    let o = env.envkit(&["exec", &name, "--", "cat", "/tmp/init-marker"]);
    assert!(stdout(&o).contains("init-ran"), "{}", stdout(&o));

    let o = env.envkit(&["envs", "ls"]);
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&name))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{name} not listed: {}", stdout(&o)));
    assert!(line.contains("running"), "{line}");
    let pid: u32 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    let o = env.envkit(&["envs", "describe", &name]);
    assert!(stdout(&o).contains("http.server"), "{}", stdout(&o));

    let o = env.envkit(&["destroy", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    assert!(gone(pid), "the init {pid} still runs");
    assert_eq!(process_with(&format!("http.server {port}")), None);
    assert!(!env.store().join("envs").join(&name).exists());
    // Nothing of it is mounted anywhere on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "{mounts}");
    let o = env.envkit(&["envs", "ls"]);
    assert!(!stdout(&o).contains(&name), "{}", stdout(&o));
    // Idempotent.
    let o = env.envkit(&["destroy", &name]);
    assert!(o.status.success() && stdout(&o).contains("nothing to destroy"));
}

/// `envkit up --image`: an image built elsewhere (saved, then loaded into another store) starts
/// as its envd labels describe it (runtime.command, runtime.environ, runtime.init, the
/// daemon), with another project mounted; a plain image pulled from its registry starts too.
#[test]
fn dev_environment_from_an_image_built_elsewhere() {
    let env = TestEnv::new("devimage");
    let name = format!("devimg-{}", std::process::id());
    let port = free_port();
    let ctx = devenv_project(&env, &name, port);
    let p = ctx.to_str().unwrap();
    let tag = format!("{name}:built");
    let o = env.envkit(&["build", "--progress", "plain", "-p", p, "-t", &tag]);
    assert!(o.status.success(), "{}", stderr(&o));
    let archive = env.dir.join("devimage.tar");
    let o = env.envkit(&["save", &tag, "-o", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let other = env.dir.join("other-store");
    let root = format!("--root={}", other.display());
    let o = env.envkit(&[&root, "load", "-i", archive.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another project: nothing of the build's context is needed.
    let project = env.dir.join("elsewhere");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("notes.txt"), "another project\n").unwrap();
    env.chown(&project);
    let envname = format!("img-{}", std::process::id());
    let o = env.envkit(&[
        &root,
        "up",
        "--detach",
        "--image",
        &tag,
        "--name",
        &envname,
        "-p",
        project.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.envkit(&[&root, "exec", &envname, "--command", "greet"]);
    assert!(
        stdout(&o).contains("greet-hello-from-env"),
        "{}",
        stderr(&o)
    );
    let o = env.envkit(&[
        &root,
        "exec",
        &envname,
        "--",
        "sh",
        "-c",
        "cat notes.txt /tmp/init-marker; pwd",
    ]);
    let text = stdout(&o);
    for want in ["another project", "init-ran", "/home/envd/elsewhere"] {
        assert!(text.contains(want), "{want}: {text} {}", stderr(&o));
    }
    let status = http_status(port).unwrap_or_else(|| panic!("nothing answers on {port}"));
    assert!(status.contains("200"), "{status}");
    let o = env.envkit(&[&root, "destroy", &envname]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(process_with(&format!("http.server {port}")), None);

    // A plain image from the registry (through the mirror): no labels, nothing supervised.
    let o = env.envkit(&[
        &root,
        "run",
        "--image",
        "busybox",
        "-p",
        project.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "cat notes.txt; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stdout(&o).contains("another project"), "{}", stdout(&o));
    // A name that is nowhere is a clear error.
    let o = env.envkit(&[
        &root,
        "up",
        "--detach",
        "--image",
        "no-such-image:1",
        "-p",
        ".",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-image"), "{}", stderr(&o));
}

/// `envkit run` propagates the command's exit code and removes its environment; a stale
/// environment (its init killed) is shown as such, refuses `exec`, and `destroy` cleans it.
#[test]
fn dev_environment_run_exit_codes_and_stale_envs() {
    let env = TestEnv::new("devrun");
    let name = format!("devrun-{}", std::process::id());
    let ctx = devenv_project(&env, &name, free_port());
    let p = ctx.to_str().unwrap();
    let o = env.envkit(&[
        "run",
        "--progress",
        "plain",
        "-p",
        p,
        "--",
        "sh",
        "-c",
        "cat hello.txt; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).contains("the project's file"));
    let o = env.envkit(&["envs", "ls"]);
    assert!(
        !stdout(&o).contains(&format!("{name}-run-")),
        "{}",
        stdout(&o)
    );

    let o = env.envkit(&["up", "--detach", "--progress", "plain", "-p", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.envkit(&["envs", "ls"]);
    let pid: i32 = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&name))
        .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or_else(|| panic!("{}", stdout(&o)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = env.envkit(&["envs", "ls"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with(&name) && l.contains("stale")),
        "{}",
        stdout(&o)
    );
    let o = env.envkit(&["exec", &name, "--", "true"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    let o = env.envkit(&["destroy", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!env.store().join("envs").join(&name).exists());

    // GPUs where there are none: a clear refusal.
    if !std::path::Path::new("/dev/nvidia0").exists() {
        let o = env.envkit(&[
            "up",
            "--detach",
            "--gpus",
            "all",
            "--progress",
            "plain",
            "-p",
            p,
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("no NVIDIA GPU"), "{}", stderr(&o));
    } else {
        eprintln!("this host has an NVIDIA GPU: the no-GPU refusal was not checked");
    }
}

/// An interactive `envkit up` driven through a pseudo-terminal (`script`): the shell runs
/// `echo $0`, and `exit` leaves the environment running.
#[test]
fn dev_environment_interactive_up_through_a_pty() {
    let env = TestEnv::new("devtty");
    let name = format!("devtty-{}", std::process::id());
    let ctx = devenv_project(&env, &name, free_port());
    let cmd = format!(
        "{} up --progress plain -p {}",
        common::envkit_bin(),
        ctx.display()
    );
    let mut child = env
        .user_command("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // The shell reads these once it starts; `script` holds them until then.
        stdin
            .write_all(b"echo shell-is-$0 in $(pwd)\nexit\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains(&format!("shell-is-bash in /home/envd/{name}")),
        "{text}"
    );
    assert!(text.contains("it keeps running"), "{text}");
    let o = env.envkit(&["destroy", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A dockerd context: `envkit build` runs on the BuildKit inside the fixture dockerd, the
/// image (with envd's image config) lands in dockerd's store and runs there; a failing step
/// reports its error and leaves dockerd up; local files arrive through envkit's session; an
/// unreachable endpoint fails at once; `--context embedded` overrides.
#[test]
fn dockerd_context_builds_into_dockerd() {
    let env = TestEnv::new("dockerd");
    let sock = common::dockerd_socket();
    let o = env.envkit(&[
        "context",
        "create",
        "--name",
        "dk",
        "--builder",
        "dockerd",
        "--endpoint",
        &format!("unix://{sock}"),
        "--use",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.envkit(&["context", "ls"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with('*') && l.contains("dk")),
        "{}",
        stdout(&o)
    );

    let tag = format!("envkit-e2e/remote:{}", std::process::id());
    let ctx = env.context_with(
        "remote",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         runtime.environ(env={\"BUILT_BY\": \"envkit-remote\"})\n    \
         run(commands=[\"echo built-on-dockerd > /made\"])\n",
    );
    let o = env.envkit(&[
        "build",
        "--progress",
        "plain",
        "-p",
        ctx.to_str().unwrap(),
        "-t",
        &tag,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("on dockerd at"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("echo built-on-dockerd"),
        "the step's progress: {}",
        stderr(&o)
    );
    let full = format!("docker.io/{tag}");
    let out = docker(
        &sock,
        &[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            &full,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("BUILT_BY=envkit-remote"),
        "{}",
        stdout(&out)
    );
    let out = docker(
        &sock,
        &["run", "--rm", "--network", "none", &full, "cat", "/made"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("built-on-dockerd"));

    // A failing step: its command and exit code; dockerd lives on.
    let bad = env.context_with(
        "remote-bad",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         run(commands=[\"echo about-to-fail\", \"exit 3\"])\n",
    );
    let o = env.envkit(&["build", "--progress", "plain", "-p", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("exit code: 3"), "{}", stderr(&o));
    let out = docker(&sock, &["version"]);
    assert!(out.status.success(), "dockerd died: {}", stderr(&out));

    // Local files travel through envkit's session (file sync): a directory with a nested
    // dir and a symlink.
    let local = env.context_with(
        "remote-local",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         io.copy(source=\"data\", target=\"/data\")\n    \
         run(commands=[\"cat /data/f.txt /data/sub/g.txt > /joined; readlink /data/link > /link\"])\n",
    );
    std::fs::create_dir_all(local.join("data/sub")).unwrap();
    std::fs::write(local.join("data/f.txt"), "from the client\n").unwrap();
    std::fs::write(local.join("data/sub/g.txt"), "nested too\n").unwrap();
    std::os::unix::fs::symlink("f.txt", local.join("data/link")).unwrap();
    env.chown(&local);
    let ltag = format!("envkit-e2e/remote-local:{}", std::process::id());
    let lctx = local.to_str().unwrap();
    let o = env.envkit(&["build", "--progress", "plain", "-p", lctx, "-t", &ltag]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lfull = format!("docker.io/{ltag}");
    let out = docker(
        &sock,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &lfull,
            "sh",
            "-c",
            "cat /joined /link",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from the client\nnested too\nf.txt\n");
    // The same file built by the embedded engine, chosen per command.
    let o = env.envkit(&["--context", "embedded", "build", "-p", lctx]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = docker(&sock, &["image", "rm", &lfull]);

    // The python example: its files come through the session, apt and pip reach their
    // mirrors from dockerd's steps, pip trusting the host's CA bundle (sent the same way).
    let py = env.copy_context(&repo_path("examples/python-basic"), "python-basic");
    let ptag = format!("envkit-e2e/python-remote:{}", std::process::id());
    let o = env.envkit(&[
        "build",
        "--progress",
        "plain",
        "-p",
        py.to_str().unwrap(),
        "-t",
        &ptag,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pfull = format!("docker.io/{ptag}");
    let out = docker(&sock, &["image", "inspect", &pfull]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = docker(
        &sock,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &pfull,
            "sh",
            "-c",
            "cat /opt/hello.out",
        ],
    );
    assert!(
        stdout(&out).contains("hi from envkit (six"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let _ = docker(&sock, &["image", "rm", &pfull]);

    // A deterministic file gives the same root filesystem on both engines (what `docker
    // export` adds for a container, and the mount point of the CA bundle, left aside), and
    // `-o type=oci` from dockerd writes a layout skopeo reads.
    let det = env.context_with(
        "remote-det",
        "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         io.copy(source=\"data\", target=\"/opt/data\")\n    \
         run(commands=[\"echo made > /made\", \"mkdir -p /x/y && ln -s ../../made /x/y/link\", \
         \"chmod 0640 /made\"])\n",
    );
    std::fs::create_dir_all(det.join("data/sub")).unwrap();
    std::fs::write(det.join("data/a.txt"), "one\n").unwrap();
    std::fs::write(det.join("data/sub/b.txt"), "two\n").unwrap();
    env.chown(&det);
    let dctx = det.to_str().unwrap();
    let emb = env.dir.join("embedded-rootfs.tar");
    let o = env.envkit(&[
        "--context",
        "embedded",
        "build",
        "-p",
        dctx,
        "-o",
        &format!("type=tar,dest={}", emb.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dtag = format!("envkit-e2e/remote-det:{}", std::process::id());
    let oci = env.dir.join("remote-oci.tar");
    let o = env.envkit(&[
        "build",
        "-p",
        dctx,
        "-t",
        &dtag,
        "-o",
        &format!("type=oci,dest={},name={dtag}", oci.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", oci.display()))
        .output()
        .expect("skopeo");
    assert!(out.status.success(), "{}", stderr(&out));
    let dfull = format!("docker.io/{dtag}");
    let cid = stdout(&docker(&sock, &["create", &dfull, "true"]))
        .trim()
        .to_string();
    let rem = env.dir.join("remote-rootfs.tar");
    let out = docker(&sock, &["export", "-o", rem.to_str().unwrap(), &cid]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = docker(&sock, &["rm", &cid]);
    let _ = docker(&sock, &["image", "rm", &dfull]);
    let (a, b) = (
        common::remote::rootfs_entries(&emb),
        common::remote::rootfs_entries(&rem),
    );
    common::remote::assert_same_rootfs(&a, &b, "dockerd");
    assert!(a.contains_key("opt/data/sub/b.txt") && a.contains_key("x/y/link"));

    // push=true: dockerd pushes the image with the credentials of docker's config; the
    // registry then serves the digest dockerd reported. type=tar comes back over the session.
    let (areg, creds) = common::remote::use_auth_registry(&env);
    let target = format!("{areg}/envkit/from-dockerd:{}", std::process::id());
    let o = env.envkit(&[
        "build",
        "--progress",
        "plain",
        "-p",
        dctx,
        "-o",
        &format!("type=image,name={target},push=true"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pushed = stderr(&o)
        .lines()
        .find_map(|l| {
            l.split_once("dockerd pushed ")?
                .1
                .split_once(" (")?
                .1
                .split_once(')')
        })
        .map(|(d, _)| d.to_string())
        .unwrap_or_else(|| panic!("no push line: {}", stderr(&o)));
    assert_eq!(common::remote::registry_digest(&target, &creds), pushed);
    // A base image on the authenticating registry: dockerd's BuildKit asks envkit's session
    // for the credentials (docker's config); without them the registry says 401.
    let auth_def = envkit::llb::image(&format!("{areg}/library/busybox:latest"))
        .add_env("PATH", "/bin")
        .run(envkit::llb::Run::args([
            "sh",
            "-c",
            "echo authed > /authed",
        ]))
        .root()
        .marshal(&envkit::llb::MarshalOptions::default())
        .expect("marshal");
    let auth_pb = env.def_file("remote-auth", &auth_def);
    let o = env.envkit(&["solve", "--progress", "plain", auth_pb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(env.dir.join(".docker/config.json"), "{}").unwrap();
    let o = env.envkit(&["solve", "--progress", "plain", auth_pb.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    let rootfs = env.dir.join("remote-rootfs-out.tar");
    let o = env.envkit(&[
        "build",
        "-p",
        dctx,
        "-o",
        &format!("type=tar,dest={}", rootfs.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&rootfs).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.trim_start_matches("./") == "opt/data/sub/b.txt"),
        "{names:?}"
    );

    // An endpoint nobody listens on fails at once, naming it.
    let dead = env.dir.join("no-dockerd.sock");
    let o = env.envkit(&[
        "context",
        "create",
        "--name",
        "dead",
        "--builder",
        "dockerd",
        "--endpoint",
        &format!("unix://{}", dead.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t0 = std::time::Instant::now();
    let o = env.envkit(&["--context", "dead", "build", "-p", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(t0.elapsed() < std::time::Duration::from_secs(15));
    assert!(
        stderr(&o).contains("cannot reach dockerd") && stderr(&o).contains("no-dockerd.sock"),
        "{}",
        stderr(&o)
    );
    // Environments run here: `up` on a remote context says so.
    let o = env.envkit(&["up", "--detach", "-p", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--context embedded"), "{}", stderr(&o));
    let o = env.envkit(&["context", "use", "embedded"]);
    assert!(o.status.success());
    let _ = docker(&sock, &["image", "rm", &full]);
    // Called last: the solves it stops may run on for a while, and no other build on this
    // dockerd must meet them (apt's locks).
    common::remote::every_example_definition_loads(&env, "dk", envkit::lower::Target::Dockerd);
    let o = env.envkit(&["context", "rm", "dk"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
