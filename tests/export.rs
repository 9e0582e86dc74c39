//! Export end to end: pull busybox from the local test registry (`ENVKIT_TEST_REGISTRY`, started
//! by `scripts/test-env.sh`), add one layer made from a tar built here, assemble the image,
//! write an OCI tarball and check it with independent tools (skopeo, umoci, podman).

use std::path::Path;
use std::process::Command;

use envkit::config::Config;
use envkit::content::Store;
use envkit::export;
use envkit::image::{self, ImageSpec};
use envkit::registry::Registry;

fn test_registry() -> String {
    match std::env::var("ENVKIT_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "ENVKIT_TEST_REGISTRY is not set: run `eval \"$(scripts/test-env.sh | tail -n 2)\"` \
             (or scripts/test.sh) to start the local test registry first"
        ),
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed (scripts/test-env.sh): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A layer tar with `/opt/hello.txt` and an executable `/opt/hello.sh`.
fn layer_tar(path: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_cksum();
    b.append_data(&mut dir, "opt/", std::io::empty()).unwrap();
    for (name, data, mode) in [
        ("opt/hello.txt", &b"hello from envkit\n"[..], 0o644),
        (
            "opt/hello.sh",
            &b"#!/bin/sh\ncat /opt/hello.txt\n"[..],
            0o755,
        ),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[tokio::test]
async fn busybox_plus_one_layer_as_oci_tar() {
    let reg = test_registry();
    let config = Config::parse(
        &format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{reg}\"]\n[registry.\"{reg}\"]\nhttp = true\n"
        ),
        Path::new("t.toml"),
    )
    .unwrap();
    let registry = Registry::new(&config);
    let base = registry.resolve("busybox:latest").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let store = Store::open(&work.path().join("root")).unwrap();
    registry.pull(&base, &store).await.unwrap();

    let tar_path = work.path().join("layer.tar");
    layer_tar(&tar_path);
    let mut layer = export::layer_from_tar(&tar_path, &store).unwrap();
    layer.created_by = Some("envkit test layer".into());

    let mut spec = ImageSpec {
        env: vec!["GREETING=hi".into()],
        cmd: Some(vec!["/opt/hello.sh".into()]),
        working_dir: Some("/opt".into()),
        ..ImageSpec::default()
    };
    spec.labels
        .insert("ai.tensorchord.envd.test".into(), "yes".into());
    let assembled = image::assemble(
        &base.config,
        &spec,
        &base.layers,
        std::slice::from_ref(&layer),
        1_700_000_000,
    )
    .unwrap();
    assembled.store(&store).unwrap();

    let name = "docker.io/envkit-test/busybox-hello:latest";
    let dest = work.path().join("image.tar");
    export::oci_tar(&dest, &assembled.manifest_descriptor, name, &store).unwrap();

    // skopeo reads the archive and sees our config.
    let inspect = run(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", dest.display()),
        ],
    );
    let cfg: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let env: Vec<&str> = cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"GREETING=hi"), "{env:?}");
    assert_eq!(cfg["config"]["Cmd"][0], "/opt/hello.sh");
    assert_eq!(
        cfg["rootfs"]["diff_ids"].as_array().unwrap().len(),
        base.layers.len() + 1
    );
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}", dest.display()),
        ],
    );
    assert_eq!(raw.as_bytes(), &assembled.manifest_bytes[..]);

    // umoci unpacks the layout (extracted from the tarball) into a runtime bundle.
    {
        let layout = work.path().join("layout");
        std::fs::create_dir_all(&layout).unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(&dest).unwrap());
        ar.unpack(&layout).unwrap();
        let bundle = work.path().join("bundle");
        run(
            "umoci",
            &[
                "unpack",
                "--rootless",
                "--image",
                &format!("{}:latest", layout.display()),
                bundle.to_str().unwrap(),
            ],
        );
        let hello = std::fs::read_to_string(bundle.join("rootfs/opt/hello.txt")).unwrap();
        assert_eq!(hello, "hello from envkit\n");
        assert!(bundle.join("rootfs/bin/busybox").exists());
    }

    // podman loads it under the name we gave. Running it is left to the e2e test (as the
    // unprivileged user): as root in this sandbox runc cannot set rlimits.
    {
        let out = run("podman", &["load", "-i", dest.to_str().unwrap()]);
        assert!(out.contains("envkit-test/busybox-hello"), "{out}");
        let id = run("podman", &["image", "inspect", "--format", "{{.Id}}", name]);
        assert!(!id.trim().is_empty());
        run("podman", &["rmi", "-f", name]);
    }
}
