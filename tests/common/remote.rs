//! Shared by the tests of remote backends: the docker CLI, root filesystems compared entry by
//! entry, the every-example load check, and a proxy that makes dockerd's BuildKit look like a
//! buildkitd (unix, TCP and TLS sockets that lead to dockerd's `/grpc` endpoint).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{TestEnv, repo_path, stderr};

/// The docker CLI (as root, a checker) against the fixture dockerd.
pub fn docker(sock: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{sock}"))
        .args(args)
        .output()
        .expect("docker")
}

/// Gives the test's docker config the credentials of the authenticating registry (as a user's
/// `docker login` would); returns the registry and its `user:password`.
pub fn use_auth_registry(env: &TestEnv) -> (String, String) {
    use base64::Engine as _;
    let (areg, creds) = super::auth_registry();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&creds);
    std::fs::write(
        env.dir.join(".docker/config.json"),
        format!(r#"{{"auths": {{"{areg}": {{"auth": "{b64}"}}}}}}"#),
    )
    .unwrap();
    env.chown(&env.dir.join(".docker"));
    (areg, creds)
}

/// The manifest digest a registry serves for `reference`, as skopeo reads it.
pub fn registry_digest(reference: &str, creds: &str) -> String {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", creds])
        .args(["--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One entry of a root filesystem: type (as a tar type byte), mode, owner, contents, link.
pub type Entry = (u8, u32, u64, u64, Vec<u8>, Option<String>);

/// What an engine adds that is not the image's: `docker export`'s container files, the
/// mount point of the CA bundle remote steps read.
const ENGINE_MADE: [&str; 7] = [
    ".dockerenv",
    "dev",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/mtab",
    "run/envkit-ca",
];

fn engine_made(name: &str) -> bool {
    name.is_empty()
        || ENGINE_MADE
            .iter()
            .any(|d| name == *d || name.starts_with(&format!("{d}/")))
}

/// The entries of a root filesystem tar, by path.
pub fn rootfs_entries(p: &Path) -> BTreeMap<String, Entry> {
    let mut out = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(p).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if engine_made(&name) {
            continue;
        }
        let h = e.header().clone();
        // The entry's link name, a PAX `linkpath` included (a header's own field holds only
        // what fits, and buildkitd writes non-ASCII targets as PAX records).
        let link = e
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.insert(
            name,
            (
                h.entry_type().as_byte(),
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap(),
                data,
                link,
            ),
        );
    }
    out
}

/// The entries of a directory tree as `rootfs_entries` gives them (owners as they are on
/// disk: compare those separately).
pub fn dir_entries(root: &Path) -> BTreeMap<String, Entry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if engine_made(&name) {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let (kind, data, link) = if ft.is_symlink() {
                let l = std::fs::read_link(&p).unwrap();
                (b'2', Vec::new(), Some(l.to_string_lossy().into_owned()))
            } else if ft.is_dir() {
                todo.push(p.clone());
                (b'5', Vec::new(), None)
            } else if ft.is_file() {
                (b'0', std::fs::read(&p).unwrap(), None)
            } else {
                (b'?', Vec::new(), None)
            };
            // A symlink's own mode means nothing; tars write 0777.
            let mode = if ft.is_symlink() {
                0o777
            } else {
                md.mode() & 0o7777
            };
            out.insert(
                name,
                (
                    kind,
                    mode,
                    u64::from(md.uid()),
                    u64::from(md.gid()),
                    data,
                    link,
                ),
            );
        }
    }
    out
}

/// Asserts two root filesystems have the same entries, naming what differs.
pub fn assert_same_rootfs(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>, what: &str) {
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let differ: Vec<_> = a
        .keys()
        .filter(|k| b.get(*k).is_some_and(|v| v != &a[*k]))
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && differ.is_empty(),
        "embedded only: {only_a:?}; {what} only: {only_b:?}; different: {differ:?}"
    );
}

/// The Definition of every example, lowered for `target` (as `envkit debug llb --pb --target
/// T` writes it), is accepted by the BuildKit of `context`: its solve starts (or ends)
/// without an LLB load error. Examples whose sources live on ghcr.io, GitHub or conda's servers
/// then fail to fetch them, which is not a load error; a solve still busy after a few seconds
/// has loaded too (it is stopped there, and its steps may run on for a while: call this last).
pub fn every_example_definition_loads(env: &TestEnv, context: &str, target: envkit::lower::Target) {
    let cache = env.dir.join("cache-dir");
    std::fs::create_dir_all(&cache).unwrap();
    env.chown(&cache);
    let mut names: Vec<String> = std::fs::read_dir(repo_path("examples"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("build.envd").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    let mut refused = Vec::new();
    for name in &names {
        let ctx = env.copy_context(&repo_path(&format!("examples/{name}")), name);
        // Lowered here, offline: the bases of several examples are not in the local
        // registry, and `debug llb` asks the registry for their config.
        let ir = envkit::frontend::evaluate_with(
            &ctx,
            "build.envd",
            "build",
            &envkit::frontend::Options::hermetic(&env.dir.join(".envdlib")),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let opts = envkit::lower::LowerOptions {
            context_dir: ctx.clone(),
            env_name: name.clone(),
            owner: (env.uid(), env.uid()),
            platform: Default::default(),
            target,
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVudmtpdC1lMmU envkit\n".into(),
            ssh_public_key_path: "/nonexistent/id_envkit.pub".into(),
            ca_bundle: None,
            proxy_env: None,
            base_resolve: None,
        };
        let base = envkit::lower::BaseImage {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..Default::default()
        };
        let lowered =
            envkit::lower::lower(&ir, &base, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let pb = env.dir.join(format!("{name}.pb"));
        std::fs::write(&pb, lowered.definition.to_bytes()).unwrap();
        env.chown(&pb);
        let out = env
            .user_command("timeout")
            .args([
                "5",
                super::envkit_bin(),
                "--context",
                context,
                "solve",
                "--progress",
                "plain",
            ])
            .arg(format!("--local=build-context={}", ctx.display()))
            .arg(format!("--local=cache-dir={}", cache.display()))
            .arg(&pb)
            .output()
            .expect("envkit solve");
        let err = stderr(&out);
        for bad in [
            "failed to load LLB",
            "unknown API capability",
            "invalid",
            "decoding the Definition",
        ] {
            if err.contains(bad) {
                refused.push(format!("{name}: {}", err.lines().last().unwrap_or("")));
                break;
            }
        }
        eprintln!(
            "{name}: exit {:?}; {}",
            out.status.code(),
            err.lines().last().unwrap_or("")
        );
    }
    assert!(
        refused.is_empty(),
        "the BuildKit of {context} refused: {refused:#?}"
    );
}

/// The fixture buildkitd's unix socket and TCP address, when scripts/test-env.sh found a
/// buildkitd on PATH; panics saying so otherwise (the tests that call this are `#[ignore]`d
/// and run only where it exists).
pub fn buildkitd() -> (String, String) {
    match (
        std::env::var("ENVKIT_TEST_BUILDKITD"),
        std::env::var("ENVKIT_TEST_BUILDKITD_TCP"),
    ) {
        (Ok(s), Ok(t)) if !s.is_empty() && !t.is_empty() => (s, t),
        _ => panic!(
            "no buildkitd: scripts/test-env.sh starts one when `buildkitd` is on PATH and exports \
             ENVKIT_TEST_BUILDKITD(_TCP); Debian has no package"
        ),
    }
}

/// Certificates for a TLS test: a CA, a server certificate for `buildkitd.test` and
/// 127.0.0.1, and a client certificate, made with openssl.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=envkit test CA",
    ]);
    for (who, ext) in [
        (
            "server",
            "subjectAltName=DNS:buildkitd.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{who}.ext")), ext).unwrap();
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN=envkit test {who}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{who}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
        ]);
    }
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        let st = std::process::Command::new("chmod")
            .args(["0644", f])
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
    Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// dockerd's BuildKit dressed as a buildkitd: every connection to one of its sockets is
/// handed to dockerd's `/grpc` endpoint (HTTP upgrade), then bytes are copied both ways. TLS
/// connections must show a client certificate signed by the test CA.
pub struct BuildkitdProxy {
    pub unix: PathBuf,
    pub tcp: String,
    pub tls: String,
    _rt: tokio::runtime::Runtime,
}

impl BuildkitdProxy {
    pub fn start(docker_sock: &str, dir: &Path, certs: &Certs) -> BuildkitdProxy {
        use tokio_rustls::rustls;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pem = |p: &Path| std::fs::read(p).unwrap();
        let certs_of = |p: &Path| -> Vec<rustls::pki_types::CertificateDer<'static>> {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::pem_slice_iter(&pem(p))
                .map(|c| c.unwrap())
                .collect()
        };
        let key = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem(&certs.server_key)).unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs_of(&certs.ca) {
            roots.add(c).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .unwrap();
        let mut cfg = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs_of(&certs.server_cert), key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        let unix = dir.join("buildkitd-proxy.sock");
        let docker = PathBuf::from(docker_sock);
        let (tcp, tls) = rt.block_on(async {
            let ul = tokio::net::UnixListener::bind(&unix).unwrap();
            let tl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addrs = (
                tl.local_addr().unwrap().to_string(),
                sl.local_addr().unwrap().to_string(),
            );
            let d = docker.clone();
            tokio::spawn(async move {
                while let Ok((c, _)) = ul.accept().await {
                    tokio::spawn(to_dockerd(c, d.clone()));
                }
            });
            let d = docker.clone();
            tokio::spawn(async move {
                while let Ok((c, _)) = tl.accept().await {
                    tokio::spawn(to_dockerd(c, d.clone()));
                }
            });
            let d = docker.clone();
            tokio::spawn(async move {
                while let Ok((c, _)) = sl.accept().await {
                    let (a, d) = (acceptor.clone(), d.clone());
                    tokio::spawn(async move {
                        if let Ok(s) = a.accept(c).await {
                            to_dockerd(s, d).await;
                        }
                    });
                }
            });
            addrs
        });
        let st = std::process::Command::new("chmod")
            .arg("0777")
            .arg(&unix)
            .status()
            .unwrap();
        assert!(st.success());
        BuildkitdProxy {
            unix,
            tcp,
            tls,
            _rt: rt,
        }
    }
}

async fn to_dockerd<S>(mut client: S, docker: PathBuf)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut d) = tokio::net::UnixStream::connect(&docker).await else {
        return;
    };
    let req = "POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
               Content-Length: 0\r\n\r\n";
    if d.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match d.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    if !String::from_utf8_lossy(&head).contains(" 101 ") {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut d).await;
}
