//! Dockerfile builds end to end, as the unprivileged test user: a multi-stage Dockerfile
//! (offline: the local registry's busybox) builds only what its target needs, with a cache
//! mount, a here-document, a stage copy, build arguments and the image config BuildKit
//! writes; the image runs in podman; `--stage` builds an earlier stage; a mistake points at
//! its line.

mod common;

use common::dockerfile::context;
use common::{TestEnv, stderr, stdout};

#[test]
fn a_multi_stage_dockerfile_builds_what_its_target_needs() {
    let env = TestEnv::new("dockerfile");
    let ctx = context(&env);
    let ctx_s = ctx.to_str().expect("utf-8");
    let rootfs = env.dir.join("rootfs");
    let log = env.build_ok(&[
        "-p",
        ctx_s,
        "-t",
        "df:test",
        "-o",
        &format!("type=local,dest={}", rootfs.display()),
    ]);
    assert!(
        !log.contains("this stage is not needed"),
        "an unused stage ran:\n{log}"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("out")).expect("/out"),
        "built\nhello\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("greeting")).expect("/greeting"),
        "hi\n"
    );

    // The image config BuildKit writes.
    let out = env.envkit(&["images", "inspect", "df:test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let cfg = &v[0]["config"]["config"];
    assert_eq!(cfg["Cmd"], serde_json::json!(["cat", "/out"]), "{v}");
    assert_eq!(cfg["Labels"]["org.example.k"], "v", "{v}");
    assert!(cfg["ExposedPorts"].get("8080/tcp").is_some(), "{v}");
    assert!(
        cfg["Env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == "G=hi")),
        "{v}"
    );
    // BuildKit's history: one entry per instruction of the final stage after the base
    // image's, the ones without a layer marked so, and as many others as the image has layers.
    let history = v[0]["config"]["history"].as_array().expect("history");
    let ours: Vec<(&str, bool)> = history
        .iter()
        .filter(|h| h["comment"] == "buildkit.dockerfile.v0")
        .map(|h| {
            (
                h["created_by"].as_str().unwrap_or_default(),
                h["empty_layer"] == true,
            )
        })
        .collect();
    assert!(
        ours.contains(&("COPY other.txt /other.txt # buildkit", false))
            && ours.contains(&("LABEL org.example.k=v", true))
            && ours.contains(&("EXPOSE map[8080/tcp:{}]", true)),
        "{ours:?}"
    );
    let with_layer = history.iter().filter(|h| h["empty_layer"] != true).count();
    let layers = v[0]["manifest"]["layers"].as_array().map_or(0, Vec::len);
    assert_eq!(with_layer, layers, "{v}");

    // A file only the last stage copies changes: the build stage stays cached.
    std::fs::write(ctx.join("other.txt"), "changed\n").expect("other");
    env.chown(&ctx);
    let log = env.build_ok(&["-p", ctx_s, "-t", "df:test"]);
    let status_of = |needle: &str| {
        let id = log
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no step {needle:?}:\n{log}"))
            .to_string();
        log.lines()
            .find(|l| {
                l.starts_with(&format!("{id} ")) && (l.contains("CACHED") || l.contains("DONE"))
            })
            .map(|l| {
                if l.contains("CACHED") {
                    "cached"
                } else {
                    "ran"
                }
            })
            .unwrap_or("?")
    };
    assert_eq!(status_of("RUN --mount=type=cache"), "cached", "{log}");
    assert_eq!(status_of("COPY other.txt"), "ran", "{log}");

    // The image runs in podman.
    let oci = env.dir.join("df.tar");
    env.build_ok(&[
        "-p",
        ctx_s,
        "-t",
        "df:test",
        "-o",
        &format!("type=oci,dest={},name=df:test", oci.display()),
    ]);
    let out = env.podman(&[
        "run",
        "--rm",
        "--network",
        "host",
        &format!("oci-archive:{}", oci.display()),
    ]);
    assert!(out.status.success(), "podman: {}", stderr(&out));
    assert_eq!(stdout(&out), "built\nhello\n");

    // A build argument, and an earlier stage as the target.
    let yo = env.dir.join("yo");
    env.build_ok(&[
        "-p",
        ctx_s,
        "--build-arg",
        "GREETING=yo",
        "-o",
        &format!("type=local,dest={}", yo.display()),
    ]);
    assert_eq!(
        std::fs::read_to_string(yo.join("greeting")).expect("greeting"),
        "yo\n"
    );
    let stage = env.dir.join("stage");
    env.build_ok(&[
        "-p",
        ctx_s,
        "--stage",
        "build",
        "-o",
        &format!("type=local,dest={}", stage.display()),
    ]);
    assert!(stage.join("src/out").is_file());
    assert!(!stage.join("greeting").exists());

    // `debug llb` of the Dockerfile: the context is read only where it is copied from, and
    // .dockerignore leaves files out.
    let out = env.envkit(&["debug", "llb", "-p", ctx_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&out);
    assert!(
        json.contains(r#"local.followpaths":"[\"hello.txt\",\"other.txt\"]"#),
        "{json}"
    );
    assert!(
        json.contains(r#"local.excludepatterns":"[\"ignored.txt\"]"#),
        "{json}"
    );

    // A mistake names its line.
    std::fs::write(
        ctx.join("Bad.Dockerfile"),
        "FROM busybox\nRUN --mount=type=nope true\n",
    )
    .expect("bad");
    env.chown(&ctx);
    let out = env.envkit(&[
        "build",
        "-p",
        ctx_s,
        "-f",
        &ctx.join("Bad.Dockerfile").display().to_string(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Bad.Dockerfile:2:1: unsupported mount type \"nope\"")
            && err.contains("RUN --mount=type=nope true")
            && err.contains('^'),
        "{err}"
    );
}

/// `--use-proxy` gives steps this shell's proxy variables, as envd's flag does: a Dockerfile's
/// RUN gets them as BuildKit gives proxy build arguments (both cases of each name), a build
/// file's steps as their proxy variables; neither changes a cache key, so a build without the
/// flag takes the same steps from the cache.
#[test]
fn use_proxy_reaches_steps_and_not_cache_keys() {
    let env = TestEnv::new("use-proxy");
    let with_proxy = |args: &[&str]| {
        let out = env
            .user_command(common::envkit_bin())
            .env("HTTP_PROXY", "http://proxy.invalid:3128")
            .env("https_proxy", "http://proxy.invalid:3129")
            // envkit's own pulls from the test registry go direct.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .args(args)
            .output()
            .expect("envkit");
        eprintln!("$ envkit {}\n{}", args.join(" "), stderr(&out));
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let df = env.dir.join("df");
    std::fs::create_dir_all(&df).unwrap();
    std::fs::write(
        df.join("Dockerfile"),
        "FROM busybox:latest\nRUN echo \"seen $HTTP_PROXY $http_proxy $HTTPS_PROXY $no_proxy\"\n",
    )
    .unwrap();
    env.chown(&df);
    let df = df.to_str().unwrap();
    let log = stderr(&with_proxy(&[
        "build",
        "--progress",
        "plain",
        "-p",
        df,
        "--use-proxy",
    ]));
    assert!(
        log.contains(
            "seen http://proxy.invalid:3128 http://proxy.invalid:3128 \
             http://proxy.invalid:3129 127.0.0.1,localhost"
        ),
        "{log}"
    );
    let log = env.build_ok(&["-p", df]);
    assert!(log.contains("CACHED"), "{log}");

    let ctx = env.context_with(
        "envdproxy",
        "def build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         run(commands=[\"echo envd-seen $HTTP_PROXY $https_proxy\"])\n",
    );
    let ctx = ctx.to_str().unwrap();
    let json = stdout(&with_proxy(&[
        "debug",
        "llb",
        "-p",
        ctx,
        "--use-proxy",
        "--json",
    ]));
    assert!(json.contains("proxy.invalid:3129"), "{json}");
    let log = stderr(&with_proxy(&[
        "build",
        "--progress",
        "plain",
        "-p",
        ctx,
        "--proxy",
    ]));
    assert!(
        log.contains("envd-seen http://proxy.invalid:3128 http://proxy.invalid:3129"),
        "{log}"
    );
    let log = env.build_ok(&["-p", ctx]);
    assert!(
        !log.contains("envd-seen http") && log.contains("CACHED"),
        "the step ran again:\n{log}"
    );
}

/// Language-shaped multi-stage Dockerfiles (a pip-built Python package, a static program into
/// `scratch`) build offline, their images run in podman, and a rebuild is all cached.
#[test]
fn language_shaped_dockerfiles_build_and_run() {
    let env = TestEnv::new("df-lang");
    for (name, ctx, prints) in common::dockerfile::language_contexts(&env) {
        let tar = env.dir.join(format!("{name}.tar"));
        let ctx = ctx.to_str().unwrap();
        env.build_ok(&[
            "-p",
            ctx,
            "-t",
            &format!("lang-{name}:1"),
            "-o",
            &format!("type=oci,dest={}", tar.display()),
        ]);
        let image = env.podman_load(&tar);
        let out = env.podman(&["run", "--rm", "--network", "none", &image]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out), prints, "{name}");
        let log = env.build_ok(&["-p", ctx, "-t", &format!("lang-{name}:1")]);
        assert!(!log.contains(" DONE "), "{name}: a step ran again:\n{log}");
    }
}

/// A Dockerfile's cache mount with the id an envd file's apt step uses is that very cache:
/// it holds the package lists the envd build's `apt-get update` fetched. BuildKit's frontend
/// puts a `/` before a Dockerfile's id (its cache-id namespace, empty by default), so envd's
/// `/var/lib/apt/<env name>-cpu` is `id=var/lib/apt/<env name>-cpu` in a Dockerfile.
#[test]
fn cache_mounts_are_shared_with_envd_files() {
    let env = TestEnv::new("df-share");
    let ctx = env.context_with(
        "share",
        "def build():\n    base(image=\"debian:bookworm\", dev=False)\n    \
         install.apt_packages(name=[\"jq\"])\n",
    );
    env.build_ok(&["-p", ctx.to_str().unwrap()]);
    let df = env.dir.join("reader");
    std::fs::create_dir_all(&df).unwrap();
    std::fs::write(
        df.join("Dockerfile"),
        "FROM debian:bookworm\n\
         RUN --mount=type=cache,id=var/lib/apt/share-cpu,target=/var/lib/apt,sharing=shared \
         echo \"lists: $(ls /var/lib/apt/lists | grep -c _Packages)\"\n",
    )
    .unwrap();
    env.chown(&df);
    let log = env.build_ok(&["-p", df.to_str().unwrap()]);
    let count: usize = log
        .lines()
        .find_map(|l| l.split(" lists: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{log}"));
    assert!(
        count > 0,
        "the envd build's apt lists are not there:\n{log}"
    );
}
