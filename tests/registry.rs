//! Registry pull against the local test registry started by `scripts/test-env.sh`
//! (`ENVKIT_TEST_REGISTRY=127.0.0.1:5000`). Extra images (a Docker v2 schema 2 manifest list, an
//! OCI index) are pushed with skopeo into `envkit-test/*` repositories.

mod common;

use std::path::Path;
use std::process::Command;

use envkit::config::Config;
use envkit::content::{self, ContentError, Store};
use envkit::registry::{self, Registry, RegistryError};
use oci_spec::image::Descriptor;
use sha2::{Digest as _, Sha256};

fn test_registry() -> String {
    match std::env::var("ENVKIT_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "ENVKIT_TEST_REGISTRY is not set: run `eval \"$(scripts/test-env.sh | tail -n 2)\"` \
             (or scripts/test.sh) to start the local test registry first"
        ),
    }
}

/// docker.io is mirrored to the local registry, which is plain http.
fn mirror_config(reg: &str) -> Config {
    let text = format!(
        "[registry.\"docker.io\"]\nmirrors = [\"{reg}\"]\n[registry.\"{reg}\"]\nhttp = true\n"
    );
    Config::parse(&text, Path::new("test-config.toml")).unwrap()
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo must be installed (scripts/test-env.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Pushes `envkit-test/busybox-index:latest`: an OCI index whose first entry is a linux/arm64
/// manifest (busybox's manifest with an extra annotation, so a different digest) and whose
/// second is the real linux/amd64 one. Returns the amd64 manifest digest.
fn push_oci_index(reg: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let src = format!("docker://{reg}/library/busybox:latest");
    let dst = format!("oci:{}:latest", layout.display());
    skopeo(&["copy", "-q", "--src-tls-verify=false", &src, &dst]);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let amd64 = index["manifests"][0].clone();
    let amd64_digest = amd64["digest"].as_str().unwrap().to_string();
    let hex = amd64_digest.trim_start_matches("sha256:");
    let mut arm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    arm["annotations"] = serde_json::json!({"envkit.test": "arm64 stand-in"});
    let arm_bytes = serde_json::to_vec(&arm).unwrap();
    let arm_hex = sha256_hex(&arm_bytes);
    std::fs::write(layout.join("blobs/sha256").join(&arm_hex), &arm_bytes).unwrap();
    let entry = |digest: String, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let inner = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(format!("sha256:{arm_hex}"), arm_bytes.len(), "arm64"),
            entry(amd64_digest.clone(), amd64["size"].as_u64().unwrap() as usize, "amd64"),
        ]
    });
    let inner_bytes = serde_json::to_vec(&inner).unwrap();
    let inner_hex = sha256_hex(&inner_bytes);
    std::fs::write(layout.join("blobs/sha256").join(&inner_hex), &inner_bytes).unwrap();
    index["manifests"] = serde_json::json!([{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{inner_hex}"), "size": inner_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}
    }]);
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let dst = format!("docker://{reg}/envkit-test/busybox-index:latest");
    let src = format!("oci:{}:latest", layout.display());
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ]);
    amd64_digest
}

#[tokio::test]
async fn resolve_and_pull_busybox_through_docker_io_mirror() {
    let reg = test_registry();
    let registry = Registry::new(&mirror_config(&reg));
    let r = registry.resolve("busybox").await.unwrap();
    assert_eq!(r.reference, "docker.io/library/busybox:latest");
    assert_eq!(r.host, reg);
    assert_eq!(r.repository, "library/busybox");
    assert!(r.index_digest.is_none());
    assert!(!r.layers.is_empty());
    assert_eq!(content::sha256_digest(&r.manifest_bytes), r.manifest_digest);
    assert_eq!(content::sha256_digest(&r.config_bytes), *r.config_digest());
    assert_eq!(
        r.config.rootfs().diff_ids().len(),
        r.layers.len(),
        "one diff_id per layer"
    );

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    registry.pull(&r, &store).await.unwrap();
    assert!(store.has(r.config_digest()));
    for l in &r.layers {
        assert_eq!(store.verify(l.digest()).unwrap(), l.size());
    }
    // A second pull finds everything present.
    registry.pull(&r, &store).await.unwrap();

    // By digest: the same manifest.
    let by_digest = format!("busybox@{}", r.manifest_digest);
    let r2 = registry.resolve(&by_digest).await.unwrap();
    assert_eq!(r2.manifest_digest, r.manifest_digest);
    assert_eq!(
        r2.reference,
        format!("docker.io/library/busybox@{}", r.manifest_digest)
    );
}

/// An https registry (a TLS front for the local registry, its certificate from a test CA):
/// the host's `ca` file makes it trusted, without it the certificate is refused (the
/// system's roots do not know the test CA), and `insecure = true` skips the check.
#[tokio::test]
async fn https_registries_use_the_system_roots_their_ca_files_or_insecure() {
    use tokio_rustls::rustls;
    let reg = test_registry();
    let dir = tempfile::tempdir().unwrap();
    let certs = common::remote::make_certs(dir.path());
    let pem = |p: &Path| std::fs::read(p).unwrap();
    let chain: Vec<_> = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(&pem(&certs.server_cert))
            .map(|c| c.unwrap())
            .collect()
    };
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem(&certs.server_key)).unwrap()
    };
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = l.local_addr().unwrap().to_string();
    let backend = reg.clone();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(c).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    let config = |extra: &str| {
        let text = format!("[registry.\"{front}\"]\n{extra}\n");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    };
    let image = format!("{front}/library/busybox:latest");
    let pull = |cfg: Config| {
        let image = image.clone();
        async move {
            let root = tempfile::tempdir().unwrap();
            let store = Store::open(root.path()).unwrap();
            let registry = Registry::new(&cfg);
            let r = registry.resolve(&image).await?;
            registry.pull(&r, &store).await?;
            for l in &r.layers {
                assert_eq!(store.verify(l.digest()).unwrap(), l.size());
            }
            Ok::<_, RegistryError>(())
        }
    };
    let ca = format!("ca = [{:?}]", certs.ca.display().to_string());
    pull(config(&ca))
        .await
        .expect("trusted through its ca file");
    pull(config("insecure = true")).await.expect("insecure");
    let e = pull(config("")).await.unwrap_err().to_string();
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let e = pull(config(&format!("ca = [{:?}]", bad.display().to_string())))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not-a-ca.pem") && e.contains("PEM"), "{e}");
}

#[tokio::test]
async fn unknown_tag_names_reference_and_every_url() {
    let reg = test_registry();
    // A mirror on a closed port first, then the registry itself.
    let text = format!("[registry.\"{reg}\"]\nhttp = true\nmirrors = [\"http://127.0.0.1:9\"]\n");
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let registry = Registry::new(&config);
    let reference = format!("{reg}/library/busybox:no-such-tag");
    let err = registry.resolve(&reference).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, RegistryError::Resolve { .. }), "{msg}");
    assert!(msg.contains(&reference), "{msg}");
    assert!(
        msg.contains("http://127.0.0.1:9/v2/library/busybox/manifests/no-such-tag"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "http://{reg}/v2/library/busybox/manifests/no-such-tag"
        )),
        "{msg}"
    );

    let err = registry
        .resolve(&format!("{reg}/envkit-test/does-not-exist:1"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "http://{reg}/v2/envkit-test/does-not-exist/manifests/1"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn digest_mismatch_is_rejected_and_leaves_nothing() {
    let reg = test_registry();
    let registry = Registry::new(&mirror_config(&reg));
    let r = registry.resolve("busybox").await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();

    // A descriptor whose size is off by one: the bytes the registry sends are refused.
    let layer = &r.layers[0];
    let mut bad = r.clone();
    bad.layers = vec![Descriptor::new(
        layer.media_type().clone(),
        layer.size() - 1,
        layer.digest().clone(),
    )];
    let err = registry.pull(&bad, &store).await.unwrap_err();
    assert!(err.to_string().contains(layer.digest().as_ref()), "{err}");
    assert!(!store.has(layer.digest()));

    // Bytes that do not hash to the expected digest never enter the store.
    let err = store
        .ingest(&b"not the layer"[..], Some((layer.digest(), 13)))
        .unwrap_err();
    assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
    assert!(!store.has(layer.digest()));
    assert_eq!(
        std::fs::read_dir(root.path().join("content/ingest"))
            .unwrap()
            .count(),
        0
    );

    // A blob corrupted on disk after the fact is caught when re-verified.
    registry.pull(&r, &store).await.unwrap();
    std::fs::write(store.path(r.config_digest()).unwrap(), b"{}").unwrap();
    assert!(store.read_blob(r.config_digest()).is_err());
}

#[tokio::test]
async fn docker_v2s2_manifest_list_and_oci_index() {
    let reg = test_registry();
    let http = format!("[registry.\"{reg}\"]\nhttp = true\n");
    let registry = Registry::new(&Config::parse(&http, Path::new("t.toml")).unwrap());

    // Docker v2 schema 2 manifest list → v2s2 manifest.
    let list_ref = format!("{reg}/envkit-test/busybox-list:latest");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{reg}/library/busybox:latest"),
        &format!("docker://{reg}/envkit-test/busybox-v2s2:latest"),
    ]);
    let v2 = registry
        .resolve(&format!("{reg}/envkit-test/busybox-v2s2:latest"))
        .await
        .unwrap();
    assert_eq!(v2.manifest_media_type, registry::DOCKER_MANIFEST);
    assert!(v2.index_digest.is_none());
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    registry.pull(&v2, &store).await.unwrap();
    for l in &v2.layers {
        assert!(store.has(l.digest()));
    }

    // A manifest list made by skopeo from an OCI index (--format v2s2 --all).
    let amd64 = push_oci_index(&reg);
    let oci = registry
        .resolve(&format!("{reg}/envkit-test/busybox-index:latest"))
        .await
        .unwrap();
    assert!(oci.index_digest.is_some());
    assert_eq!(oci.manifest_digest.to_string(), amd64, "picked linux/amd64");

    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("l");
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{reg}/envkit-test/busybox-index:latest"),
        &format!("oci:{}:latest", layout.display()),
    ]);
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{list_ref}"),
    ]);
    let list = registry.resolve(&list_ref).await.unwrap();
    assert!(list.index_digest.is_some());
    assert_eq!(list.manifest_media_type, registry::DOCKER_MANIFEST);
    registry.pull(&list, &store).await.unwrap();
}

/// What the flaky proxy does to the next request for the watched blob.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Answer 503 without asking the registry.
    Unavailable,
    /// Forward the registry's answer, but close the connection halfway through the body.
    CutHalf,
    /// Like `CutHalf`, with every byte of the half that is sent changed.
    CorruptHalf,
    /// Forward it whole.
    Pass,
}

#[derive(Debug, Clone)]
struct Seen {
    range: Option<String>,
    body_sent: u64,
}

/// An HTTP proxy in front of the test registry that injects faults into the requests for one
/// blob, records what was asked, and can hold every blob request for a while (to see how many
/// run at once).
struct Flaky {
    addr: String,
    watched: std::sync::Mutex<String>,
    plan: std::sync::Mutex<std::collections::VecDeque<Fault>>,
    seen: std::sync::Mutex<Vec<Seen>>,
    hold: std::time::Duration,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

impl Flaky {
    async fn start(upstream: String, hold: std::time::Duration) -> std::sync::Arc<Flaky> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = std::sync::Arc::new(Flaky {
            addr: listener.local_addr().unwrap().to_string(),
            watched: std::sync::Mutex::new(String::new()),
            plan: Default::default(),
            seen: Default::default(),
            hold,
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        });
        let proxy = me.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (p, up) = (proxy.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = p.serve(conn, &up).await;
                });
            }
        });
        me
    }

    async fn serve(&self, mut conn: tokio::net::TcpStream, upstream: &str) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await? == 0 {
                return Ok(());
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = None;
        let mut out = String::new();
        for (i, line) in text.split("\r\n").enumerate() {
            if line.is_empty() {
                continue;
            }
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("range:") {
                range = Some(line[6..].trim().to_string());
            }
            if i > 0 && lower.starts_with("connection:") {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        let blob = path.contains("/blobs/sha256:");
        let watched = {
            let w = self.watched.lock().unwrap();
            !w.is_empty() && path.contains(w.as_str())
        };
        let fault = if watched {
            self.plan.lock().unwrap().pop_front().unwrap_or(Fault::Pass)
        } else {
            Fault::Pass
        };
        if blob {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.hold).await;
        }
        let mut sent = 0u64;
        let result = async {
            if fault == Fault::Unavailable {
                conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await?;
                return Ok(());
            }
            let mut up = tokio::net::TcpStream::connect(upstream).await?;
            up.write_all(out.as_bytes()).await?;
            let mut resp = Vec::new();
            up.read_to_end(&mut resp).await?;
            let split = resp
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4)
                .unwrap_or(resp.len());
            let body = resp.len() - split;
            let keep = match fault {
                Fault::CutHalf | Fault::CorruptHalf => split + body / 2,
                _ => resp.len(),
            };
            if fault == Fault::CorruptHalf {
                for b in &mut resp[split..keep] {
                    *b ^= 0x5a;
                }
            }
            conn.write_all(&resp[..keep]).await?;
            sent = (keep - split) as u64;
            conn.shutdown().await
        }
        .await;
        if blob {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if watched {
            self.seen.lock().unwrap().push(Seen {
                range,
                body_sent: sent,
            });
        }
        result
    }
}

fn plain_http(host: &str) -> Config {
    Config::parse(
        &format!("[registry.\"{host}\"]\nhttp = true\n"),
        Path::new("test-config.toml"),
    )
    .unwrap()
}

/// busybox through a fault-injecting proxy (no delay), resolved; its first layer's downloads
/// meet `faults`, in order.
async fn flaky_busybox(
    faults: &[Fault],
) -> (
    std::sync::Arc<Flaky>,
    Registry,
    registry::Resolved,
    Descriptor,
) {
    let flaky = Flaky::start(test_registry(), std::time::Duration::ZERO).await;
    let registry = Registry::new(&plain_http(&flaky.addr));
    let r = registry
        .resolve(&format!("{}/library/busybox:latest", flaky.addr))
        .await
        .unwrap();
    let layer = r.layers[0].clone();
    *flaky.watched.lock().unwrap() = layer.digest().to_string();
    flaky.plan.lock().unwrap().extend(faults.iter().copied());
    (flaky, registry, r, layer)
}

/// A 503, then a body cut off halfway, then success: the layer arrives whole, and the last
/// attempt asked only for the missing bytes (a range request).
#[tokio::test]
async fn pulls_retry_and_resume_interrupted_blobs() {
    let (flaky, registry, r, layer) =
        flaky_busybox(&[Fault::Unavailable, Fault::CutHalf, Fault::Pass]).await;
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    registry.pull(&r, &store).await.unwrap();
    assert_eq!(store.verify(layer.digest()).unwrap(), layer.size());
    let seen = flaky.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[0].range.is_none() && seen[1].range.is_none(),
        "{seen:?}"
    );
    let half = seen[1].body_sent;
    assert!(half > 0 && half < layer.size(), "{seen:?}");
    assert_eq!(
        seen[2].range.as_deref(),
        Some(format!("bytes={half}-{}", layer.size() - 1).as_str()),
        "{seen:?}"
    );
    assert_eq!(
        seen[2].body_sent,
        layer.size() - half,
        "only the rest came again"
    );
    // Nothing is left half-written.
    let ingest = std::fs::read_dir(root.path().join("content/ingest"))
        .unwrap()
        .count();
    assert_eq!(ingest, 0);
}

/// A followed pull: each layer the store lacks can be read while it downloads, through a
/// 503 and a body cut off halfway (the rest comes by a range request), and what the
/// follower copied is the blob the store got. A layer the store has gets no follower.
#[tokio::test]
async fn followed_pulls_copy_layers_while_they_download() {
    let (flaky, registry, r, layer) =
        flaky_busybox(&[Fault::Unavailable, Fault::CutHalf, Fault::Pass]).await;
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (followers, download) = registry.pull_followed(&r, &store);
    assert_eq!(followers.len(), r.layers.len());
    let copies = futures_util::future::join_all(followers.into_iter().map(|f| async move {
        let f = f.expect("a missing layer is followed");
        let mut out = Vec::new();
        let n = f.copy_to(&mut out).await.unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }));
    let (pulled, copies) = tokio::join!(download, copies);
    pulled.unwrap();
    for (l, copy) in r.layers.iter().zip(copies) {
        assert_eq!(copy, store.read_blob(l.digest()).unwrap());
    }
    let seen = flaky.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen[2].range.is_some(),
        "the last attempt resumed: {seen:?}"
    );
    // Pulled again: nothing to follow.
    let (followers, download) = registry.pull_followed(&r, &store);
    download.await.unwrap();
    assert!(followers.iter().all(Option::is_none));
    assert!(store.verify(layer.digest()).is_ok());
}

/// A first attempt that sent wrong bytes: the resumed blob does not add up, the download
/// starts again from nothing and the store gets the right blob, but a follower that read the
/// wrong half says so instead of passing it off as the layer.
#[tokio::test]
async fn a_follower_that_read_wrong_bytes_says_so() {
    let (_flaky, registry, r, layer) =
        flaky_busybox(&[Fault::CorruptHalf, Fault::Pass, Fault::Pass]).await;
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let (mut followers, download) = registry.pull_followed(&r, &store);
    let follower = followers.remove(0).unwrap();
    drop(followers);
    let mut out = Vec::new();
    let (pulled, copied) = tokio::join!(download, follower.copy_to(&mut out));
    pulled.unwrap();
    assert_eq!(store.verify(layer.digest()).unwrap(), layer.size());
    let e = copied.unwrap_err().to_string();
    assert!(e.contains("are not the blob"), "{e}");
}

/// A registry that keeps failing: the pull gives up after its retries and says so; the bytes
/// it got stay for the next pull, which resumes from them.
#[tokio::test]
async fn pulls_give_up_after_retries_and_keep_what_they_got() {
    let (flaky, registry, r, layer) = flaky_busybox(&[
        Fault::CutHalf,
        Fault::Unavailable,
        Fault::Unavailable,
        Fault::Unavailable,
        Fault::Unavailable,
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let e = registry.pull(&r, &store).await.unwrap_err().to_string();
    assert!(
        e.contains("gave up after 5 attempts") && e.contains("503"),
        "{e}"
    );
    assert!(!store.has(layer.digest()));
    let partial = root
        .path()
        .join("content/ingest")
        .join(format!("partial-{}", layer.digest().digest()));
    let kept = std::fs::metadata(&partial)
        .expect("the partial download is kept")
        .len();
    assert!(kept > 0 && kept < layer.size());
    // The next pull asks for the rest only.
    flaky.seen.lock().unwrap().clear();
    registry.pull(&r, &store).await.unwrap();
    assert_eq!(store.verify(layer.digest()).unwrap(), layer.size());
    let seen = flaky.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .range
            .as_deref()
            .is_some_and(|r| r.starts_with(&format!("bytes={kept}-"))),
        "{seen:?}"
    );
    assert!(!partial.exists());
}

/// A three-layer image: its layers download at the same time.
#[tokio::test]
async fn layers_download_concurrently() {
    let reg = test_registry();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{reg}/library/busybox:latest"),
        &format!("oci:{}:latest", layout.display()),
    ]);
    for name in ["a", "b"] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("data"), name.repeat(100_000)).unwrap();
        let out = Command::new("umoci")
            .args(["insert", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&d)
            .arg(format!("/opt/{name}"))
            .output()
            .expect("umoci");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{reg}/envkit-test/three-layers:latest"),
    ]);
    let flaky = Flaky::start(reg, std::time::Duration::from_millis(300)).await;
    let registry = Registry::new(&plain_http(&flaky.addr));
    let r = registry
        .resolve(&format!("{}/envkit-test/three-layers:latest", flaky.addr))
        .await
        .unwrap();
    assert_eq!(r.layers.len(), 3);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    flaky
        .max_in_flight
        .store(0, std::sync::atomic::Ordering::SeqCst);
    registry.pull(&r, &store).await.unwrap();
    for l in &r.layers {
        assert_eq!(store.verify(l.digest()).unwrap(), l.size());
    }
    let most = flaky
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(most >= 3, "at most {most} blob downloads at once");
}
