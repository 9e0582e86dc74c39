//! `--export-cache` / `--import-cache` end to end, as the unprivileged test user: a cache
//! exported in BuildKit's format (`type=local`, `mode=min` and `mode=max`) gives a fresh store
//! every step and the identical image; a changed step misses only itself and what follows;
//! a corrupt layer in the cache is refused and the step runs instead.

mod common;

use std::path::Path;

use common::cache::{built_digest, context, graph, ran, records_with_results};
use common::{TestEnv, stderr};

fn solve_on(env: &TestEnv, store: &str, pb: &Path, extra: &[&str]) -> String {
    let store = env.dir.join(store);
    let pb = pb.to_str().expect("utf-8");
    let ctx = format!("ctx={}", env.dir.join("ctx").display());
    let mut args = vec![
        "--root",
        store.to_str().expect("utf-8"),
        "solve",
        "--progress",
        "plain",
        "--local",
        &ctx,
    ];
    args.extend_from_slice(extra);
    args.push(pb);
    let out = env.envkit(&args);
    assert!(
        out.status.success(),
        "envkit {}: {}",
        args.join(" "),
        stderr(&out)
    );
    stderr(&out)
}

#[test]
fn an_exported_cache_gives_a_fresh_store_every_step_and_the_same_image() {
    let env = TestEnv::new("cache");
    let ctx = context(&env, "ctx");
    let pb = env.def_file("g", &graph(&env.registry, "v1"));
    let max = env.dir.join("cache-max");
    let min = env.dir.join("cache-min");
    let log = solve_on(
        &env,
        "s1",
        &pb,
        &[
            "--export-cache",
            &format!("type=local,dest={},mode=max", max.display()),
            "--export-cache",
            &format!("type=local,dest={}", min.display()),
            "-t",
            "c:one",
        ],
    );
    let image = built_digest(&log);
    assert_eq!(ran(&log).len(), 7, "{log}");
    // mode=max: every step's result; mode=min: only the final one.
    assert_eq!(records_with_results(&max), 7, "{}", max.display());
    assert_eq!(records_with_results(&min), 1, "{}", min.display());

    for (store, cache) in [("s2", &max), ("s3", &min)] {
        let log = solve_on(
            &env,
            store,
            &pb,
            &[
                "--import-cache",
                &format!("type=local,src={}", cache.display()),
                "-t",
                "c:two",
            ],
        );
        assert!(
            ran(&log).is_empty(),
            "every step comes from the cache:\n{log}"
        );
        assert_eq!(
            built_digest(&log),
            image,
            "the same image from {}",
            cache.display()
        );
        // Warm on that store now, without the cache.
        let log = solve_on(&env, store, &pb, &["-t", "c:three"]);
        assert!(ran(&log).is_empty(), "{log}");
        assert_eq!(built_digest(&log), image);
    }

    // A changed last step: the steps before it come from the cache, it runs.
    let pb2 = env.def_file("g2", &graph(&env.registry, "v2"));
    let log = solve_on(
        &env,
        "s4",
        &pb2,
        &[
            "--import-cache",
            &format!("type=local,src={}", max.display()),
        ],
    );
    assert_eq!(
        ran(&log),
        vec!["exec: sh -c echo v2 > /last".to_string()],
        "{log}"
    );
    // Only the step below it is loaded; the ones under that are not even looked at.
    assert!(log.contains("1 step taken from it"), "{log}");

    // A changed file of the local source: the copy of it and what follows run, nothing else.
    std::fs::write(ctx.join("sub/b.txt"), "changed\n").expect("write");
    let log = solve_on(
        &env,
        "s7",
        &pb,
        &[
            "--import-cache",
            &format!("type=local,src={}", max.display()),
        ],
    );
    assert_eq!(
        ran(&log),
        vec![
            "file: copy{src=/,dest=/ctx}".to_string(),
            "exec: sh -c rm -rf /d /etc/motd; rm -f /one".to_string(),
            "file: rm{path=/nothing}".to_string(),
            "exec: sh -c echo v1 > /last".to_string(),
        ],
        "{log}"
    );
    std::fs::write(ctx.join("sub/b.txt"), "b\n").expect("write");

    // A layer whose bytes are not its digest is refused: the steps run instead.
    let bad = env.dir.join("cache-bad");
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(&max)
        .arg(&bad)
        .status()
        .expect("cp");
    assert!(st.success());
    for e in std::fs::read_dir(bad.join("blobs/sha256")).expect("blobs") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("blob");
        // The layers are gzip; the config and manifests JSON.
        if bytes.starts_with(&[0x1f, 0x8b]) && bytes.len() > 40 {
            let mut b = bytes.clone();
            let n = b.len() - 12;
            b[n] ^= 0xff;
            std::fs::write(&p, b).expect("corrupt");
        }
    }
    env.chown(&bad);
    let log = solve_on(
        &env,
        "s5",
        &pb,
        &[
            "--import-cache",
            &format!("type=local,src={}", bad.display()),
        ],
    );
    assert!(log.contains("the step runs instead"), "{log}");
    assert_eq!(built_digest(&log), image, "{log}");

    // The same through the registry: export, then a fresh store imports it.
    let reference = format!(
        "{}/envkit-test/cache:e2e-{}",
        env.registry,
        std::process::id()
    );
    solve_on(
        &env,
        "s1",
        &pb,
        &[
            "--export-cache",
            &format!("type=registry,ref={reference},mode=max"),
        ],
    );
    let log = solve_on(
        &env,
        "s8",
        &pb,
        &["--import-cache", &format!("type=registry,ref={reference}")],
    );
    assert!(
        ran(&log).is_empty(),
        "every step from the registry's cache:\n{log}"
    );
    assert_eq!(built_digest(&log), image, "{log}");
    // An unreachable registry: a warning on import; on export a failure unless ignore-error.
    let gone = "127.0.0.1:1/nothing/cache:x";
    let log = solve_on(
        &env,
        "s9",
        &pb,
        &["--import-cache", &format!("type=registry,ref={gone}")],
    );
    assert!(
        log.contains(&format!("warning: importing cache {gone}")),
        "{log}"
    );
    let log = solve_on(
        &env,
        "s9",
        &pb,
        &[
            "--export-cache",
            &format!("type=registry,ref={gone},ignore-error=true"),
        ],
    );
    assert!(log.contains("warning: exporting cache (registry)"), "{log}");
    let out = env.envkit(&[
        "--root",
        env.dir.join("s9").to_str().expect("utf-8"),
        "solve",
        "--local",
        &format!("ctx={}", ctx.display()),
        "--export-cache",
        &format!("type=registry,ref={gone}"),
        pb.to_str().expect("utf-8"),
    ]);
    assert!(
        !out.status.success(),
        "an export that fails fails the build"
    );
    assert!(
        stderr(&out).contains("exporting cache (registry)"),
        "{}",
        stderr(&out)
    );

    // A cache that is not there is a warning.
    let log = solve_on(
        &env,
        "s6",
        &pb,
        &["--import-cache", "type=local,src=/nonexistent/cache"],
    );
    assert!(
        log.contains("warning: importing cache /nonexistent/cache"),
        "{log}"
    );
    assert_eq!(built_digest(&log), image);
}

#[test]
fn bad_cache_specs_are_refused_before_building() {
    let env = TestEnv::new("cache-specs");
    let pb = env.def_file("g", &graph(&env.registry, "v1"));
    for (spec, want) in [
        ("type=s3,bucket=x", "not supported"),
        ("type=local", "dest="),
        ("type=local,dest=/x,mode=everything", "mode=everything"),
    ] {
        let out = env.envkit(&[
            "solve",
            "--export-cache",
            spec,
            "--local",
            &format!("ctx={}", env.dir.display()),
            pb.to_str().expect("utf-8"),
        ]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(want), "{spec}: {}", stderr(&out));
    }
}

#[test]
fn explain_cache_says_which_step_file_and_field_changed() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new("explain");
    let ctx = context(&env, "ctx");
    let pb = env.def_file("g", &graph(&env.registry, "v1"));
    let first = solve_on(&env, "e1", &pb, &["-t", "c:explain", "--explain-cache"]);
    assert!(
        first.contains("runs: no earlier build of this target is recorded"),
        "{first}"
    );
    // Nothing changed: every step needed is cached.
    let log = solve_on(&env, "e1", &pb, &["-t", "c:explain", "--explain-cache"]);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("explain: ")).collect();
    assert!(
        lines.iter().any(|l| l.ends_with(": cached")) && !lines.iter().any(|l| l.contains("runs:")),
        "{log}"
    );

    // A file's mode, another's content, and the last command change.
    std::fs::set_permissions(ctx.join("a.txt"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(ctx.join("sub/b.txt"), "other\n").expect("write");
    let pb2 = env.def_file("g2", &graph(&env.registry, "v2"));
    let log = solve_on(&env, "e1", &pb2, &["-t", "c:explain", "--explain-cache"]);
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains("explain: ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no explanation with {needle:?}:\n{log}"))
            .to_string()
    };
    assert!(
        line("files changed").contains("a.txt: mode 0644 → 0755; sub/b.txt: content"),
        "{log}"
    );
    assert!(
        line("copy{src=/,dest=/ctx}").contains("runs: input 1 changed"),
        "{log}"
    );
    assert!(
        line("echo v2").contains(
            r#"the op changed: Op.exec.meta.args[2]: "echo v1 > /last" → "echo v2 > /last""#
        ),
        "{log}"
    );
    assert!(line("echo v2").contains("; input 0 changed"), "{log}");
    assert!(line("mkfile").ends_with(": cached"), "{log}");
    // Without the flag nothing is explained.
    let log = solve_on(&env, "e1", &pb2, &["-t", "c:explain"]);
    assert!(!log.contains("explain: "), "{log}");
}

#[test]
fn an_inline_cache_travels_in_the_pushed_image() {
    let env = TestEnv::new("inline");
    context(&env, "ctx");
    let pb = env.def_file("g", &graph(&env.registry, "inline"));
    let image = format!(
        "{}/envkit-test/inline:e2e-{}",
        env.registry,
        std::process::id()
    );
    let push = format!("type=image,name={image},push=true");
    let log = solve_on(
        &env,
        "i1",
        &pb,
        &["--export-cache", "type=inline", "-o", &push],
    );
    assert!(log.contains("exported cache (inline)"), "{log}");
    let first = built_digest(&log);
    // The config carries BuildKit's field: base64 of the records' JSON.
    let cfg = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--config", "--raw"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo");
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).expect("config json");
    assert!(
        cfg["moby.buildkit.cache.v0"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{cfg}"
    );

    // A fresh store takes every step from the image; exporting inline again gives the same
    // image (the records' times are the image's own).
    let log = solve_on(
        &env,
        "i2",
        &pb,
        &[
            "--import-cache",
            &format!("type=registry,ref={image}"),
            "--export-cache",
            "type=inline",
        ],
    );
    assert!(ran(&log).is_empty(), "every step from the image:\n{log}");
    assert_eq!(built_digest(&log), first, "{log}");

    // An image without one: a warning, and the build runs.
    let plain = format!("{}/library/busybox:latest", env.registry);
    let log = solve_on(
        &env,
        "i3",
        &pb,
        &["--import-cache", &format!("type=registry,ref={plain}")],
    );
    assert!(log.contains("has no inline cache"), "{log}");
    assert_eq!(ran(&log).len(), 7, "{log}");
}

#[test]
fn config_cache_defaults_apply_where_the_command_line_names_none() {
    let env = TestEnv::new("cache-defaults");
    context(&env, "ctx");
    let pb = env.def_file("g", &graph(&env.registry, "defaults"));
    let dest = env.dir.join("from-config");
    let mut text = std::fs::read_to_string(env.config_path()).expect("config");
    text.push_str(&format!(
        "\n[cache]\nexport = [\"type=local,dest={}\"]\n",
        dest.display()
    ));
    std::fs::write(env.config_path(), text).expect("config");
    // --no-cache-defaults: nothing exported.
    solve_on(&env, "d1", &pb, &["--no-cache-defaults"]);
    assert!(!dest.exists());
    // The config's export.
    let log = solve_on(&env, "d1", &pb, &[]);
    assert!(log.contains("exported cache (local)"), "{log}");
    assert_eq!(records_with_results(&dest), 1, "{log}");
    // A command line export replaces it.
    let other = env.dir.join("from-flag");
    solve_on(
        &env,
        "d1",
        &pb,
        &[
            "--export-cache",
            &format!("type=local,dest={}", other.display()),
        ],
    );
    assert!(other.join("index.json").is_file());
}

/// A gzipped tar of one file named `name` (written raw: tar libraries refuse hostile names).
fn raw_tar_gz(name: &str, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use std::io::Write as _;
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip"), tar)
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Copies the layout cache `from` to `to`, letting `edit` change its manifest (as JSON) and
/// write blobs; the config and index follow the changes.
fn doctor_cache(
    env: &TestEnv,
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&Path, &mut serde_json::Value, &mut String),
) {
    let st = std::process::Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
    let blob = |d: &str| to.join("blobs/sha256").join(&d["sha256:".len()..]);
    let index_path = to.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index")).expect("json");
    let m = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&m)).expect("manifest")).expect("json");
    let c = manifest["config"]["digest"]
        .as_str()
        .expect("config")
        .to_string();
    let mut config = std::fs::read_to_string(blob(&c)).expect("config");
    edit(to, &mut manifest, &mut config);
    let cd = sha256(config.as_bytes());
    std::fs::write(blob(&cd), &config).expect("config");
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = config.len().into();
    let mb = serde_json::to_vec(&manifest).expect("json");
    let md = sha256(&mb);
    std::fs::write(blob(&md), &mb).expect("manifest");
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = mb.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("index");
    env.chown(to);
}

#[test]
fn hostile_cache_layers_are_refused_and_the_steps_run() {
    let env = TestEnv::new("cache-hostile");
    context(&env, "ctx");
    let pb = env.def_file("g", &graph(&env.registry, "hostile"));
    let max = env.dir.join("max");
    let log = solve_on(
        &env,
        "h1",
        &pb,
        &[
            "--export-cache",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
    );
    let image = built_digest(&log);

    // A layer with the right digest whose entry climbs out of the root.
    let evil = env.dir.join("evil");
    doctor_cache(&env, &max, &evil, |dir, manifest, config| {
        let (gz, tar) = raw_tar_gz("../../escaped", b"out\n");
        let d = sha256(&gz);
        std::fs::write(dir.join("blobs/sha256").join(&d["sha256:".len()..]), &gz).expect("blob");
        let layers = manifest["layers"].as_array_mut().expect("layers");
        let last = layers.last_mut().expect("a layer");
        let old = last["digest"].as_str().expect("digest").to_string();
        last["digest"] = d.clone().into();
        last["size"] = gz.len().into();
        if let Some(a) = last.get_mut("annotations") {
            a["containerd.io/uncompressed"] = sha256(&tar).into();
        }
        *config = config.replace(&old, &d);
    });
    let log = solve_on(
        &env,
        "h2",
        &pb,
        &[
            "--import-cache",
            &format!("type=local,src={}", evil.display()),
        ],
    );
    assert!(
        log.contains("building again without the imported cache"),
        "{log}"
    );
    assert_eq!(built_digest(&log), image, "{log}");
    assert!(!env.dir.join("escaped").exists());
    assert!(!env.dir.join("h2/escaped").exists());
    let out = env.envkit(&[
        "--root",
        env.dir.join("h2").to_str().expect("utf-8"),
        "check",
    ]);
    assert!(out.status.success(), "the store is sound: {}", stderr(&out));

    // A layer of a media type envkit cannot unpack.
    let odd = env.dir.join("odd");
    doctor_cache(&env, &max, &odd, |_, manifest, _| {
        for l in manifest["layers"].as_array_mut().expect("layers") {
            l["mediaType"] = "application/vnd.example.layer.v1.tar+lz4".into();
        }
    });
    let log = solve_on(
        &env,
        "h3",
        &pb,
        &[
            "--import-cache",
            &format!("type=local,src={}", odd.display()),
        ],
    );
    assert!(log.contains("which envkit cannot unpack"), "{log}");
    assert_eq!(ran(&log).len(), 7, "{log}");
    assert_eq!(built_digest(&log), image, "{log}");
}
