//! envkit's side of a BuildKit session: the remote BuildKit calls back into the client for what
//! only the client has. Served here: the file sync of local sources (`FileSync.DiffCopy`, as
//! fsutil's sender does it) and the health check. The session is attached through dockerd's
//! `/session` HTTP upgrade; the connection then carries an HTTP/2 server run by envkit.
//!
//! DiffCopy: envkit walks the directory as Go's `filepath.Walk` does (depth first, names
//! sorted), sends one STAT packet per entry and an empty STAT at the end; the receiver asks
//! for file contents by id (REQ), gets them as DATA packets closed by an empty one, and ends
//! with FIN, which is answered with FIN.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};

use super::RemoteError;
use super::pb::filesync::{
    BytesMessage, CredentialsRequest, CredentialsResponse, Packet, Stat, auth_server,
    file_send_server, file_sync_server, packet::PacketType,
};
use super::pb::health::{self, HealthCheckRequest, HealthCheckResponse, health_server};

/// What the session offers: local directories by the names the Definition uses.
#[derive(Debug, Clone, Default)]
pub struct Locals(pub BTreeMap<String, PathBuf>);

/// What a session serves: local sources, and a file an exporter may send (a tar).
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub locals: Locals,
    /// Where the exporter's file is written (the caller renames it into place).
    pub file: Option<PathBuf>,
}

/// A running session; dropping it ends it.
pub struct Session {
    pub id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a session on the dockerd at `socket` that serves `offer`.
pub async fn attach_dockerd(socket: &Path, offer: Offer) -> Result<Session, RemoteError> {
    let Offer { locals, file } = offer;
    let mut methods = vec![
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.filesync.v1.Auth/Credentials",
        "/grpc.health.v1.Health/Check",
    ];
    if file.is_some() {
        methods.push("/moby.filesync.v1.FileSend/DiffCopy");
    }
    let fail = |m: String| RemoteError::Connect {
        endpoint: format!("dockerd at unix://{} (session)", socket.display()),
        message: m,
    };
    let id = super::random_hex(16);
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut req = format!(
        "POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
         X-Docker-Expose-Session-Uuid: {id}\r\nX-Docker-Expose-Session-Name: envkit\r\n\
         X-Docker-Expose-Session-Sharedkey: {}\r\n",
        shared_key(&locals)
    );
    for m in methods {
        req.push_str(&format!("X-Docker-Expose-Session-Grpc-Method: {m}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = super::read_status(&mut stream)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !status.contains(" 101 ") {
        return Err(fail(format!("dockerd answered {status:?} to /session")));
    }
    let router = Router {
        files: file_sync_server::FileSyncServer::new(FileSyncService {
            locals: Arc::new(locals),
        }),
        send: file_send_server::FileSendServer::new(FileSendService { dest: file }),
        auth: auth_server::AuthServer::new(AuthService),
        health: health_server::HealthServer::new(HealthService),
    };
    let task = tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(stream);
        let svc = hyper_util::service::TowerToHyperService::new(router);
        let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, svc);
        if let Err(e) = conn.await {
            tracing::debug!("the session connection ended: {e}");
        }
    });
    Ok(Session { id, task })
}

/// BuildKit keys cached copies of a local source by this (with the source's name).
fn shared_key(locals: &Locals) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    for (k, v) in &locals.0 {
        h.update(k.as_bytes());
        h.update(v.as_os_str().as_encoded_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// Dispatches the session's calls by path.
#[derive(Clone)]
struct Router {
    files: file_sync_server::FileSyncServer<FileSyncService>,
    send: file_send_server::FileSendServer<FileSendService>,
    auth: auth_server::AuthServer<AuthService>,
    health: health_server::HealthServer<HealthService>,
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Request<hyper::body::Incoming>> for Router {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let path = req.uri().path().to_string();
        if path.starts_with("/moby.filesync.v1.FileSync/") {
            let mut s = self.files.clone();
            Box::pin(async move { tower::Service::call(&mut s, req).await })
        } else if path.starts_with("/moby.filesync.v1.FileSend/") {
            let mut s = self.send.clone();
            Box::pin(async move { tower::Service::call(&mut s, req).await })
        } else if path.starts_with("/moby.filesync.v1.Auth/") {
            let mut s = self.auth.clone();
            Box::pin(async move { tower::Service::call(&mut s, req).await })
        } else if path.starts_with("/grpc.health.v1.Health/") {
            let mut s = self.health.clone();
            Box::pin(async move { tower::Service::call(&mut s, req).await })
        } else {
            Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("envkit's session does not serve {path}"))
                        .into_http(),
                )
            })
        }
    }
}

/// Receives an exporter's file (a tar) into `dest`.
struct FileSendService {
    dest: Option<PathBuf>,
}

type BytesStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

#[tonic::async_trait]
impl file_send_server::FileSend for FileSendService {
    type DiffCopyStream = BytesStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BytesStream>, Status> {
        let Some(dest) = self.dest.clone() else {
            return Err(Status::failed_precondition(
                "envkit expects no file from this build",
            ));
        };
        let mut f = tokio::fs::File::create(&dest)
            .await
            .map_err(|e| Status::internal(format!("{}: {e}", dest.display())))?;
        let mut incoming = request.into_inner();
        while let Some(m) = incoming.message().await? {
            f.write_all(&m.data)
                .await
                .map_err(|e| Status::internal(format!("{}: {e}", dest.display())))?;
        }
        f.flush()
            .await
            .map_err(|e| Status::internal(format!("{}: {e}", dest.display())))?;
        let none: BytesStream = Box::pin(futures_util::stream::empty());
        Ok(Response::new(none))
    }
}

/// Registry credentials from docker's config (`auths`, credential helpers), as for envkit's
/// own pulls and pushes; empty (anonymous) where it has none.
struct AuthService;

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        // BuildKit asks for Docker Hub's credentials as registry-1.docker.io.
        let key = if host == "registry-1.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        let creds =
            tokio::task::spawn_blocking(move || crate::registry::auth::credentials_for(&key))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(Status::internal)?;
        Ok(Response::new(match creds {
            oci_client::secrets::RegistryAuth::Basic(u, p) => CredentialsResponse {
                username: u,
                secret: p,
            },
            _ => CredentialsResponse::default(),
        }))
    }
}

struct HealthService;

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: health::health_check_response::ServingStatus::Serving as i32,
        }))
    }
}

struct FileSyncService {
    locals: Arc<Locals>,
}

/// Go's os.FileMode of a unix mode: permissions, setuid/setgid/sticky and the type as Go
/// spells them.
pub fn go_mode(mode: u32) -> u32 {
    const DIR: u32 = 1 << 31;
    const SYMLINK: u32 = 1 << 27;
    const DEVICE: u32 = 1 << 26;
    const PIPE: u32 = 1 << 25;
    const SOCKET: u32 = 1 << 24;
    const SETUID: u32 = 1 << 23;
    const SETGID: u32 = 1 << 22;
    const CHAR: u32 = 1 << 21;
    const STICKY: u32 = 1 << 20;
    let mut m = mode & 0o777;
    match mode & libc::S_IFMT {
        libc::S_IFDIR => m |= DIR,
        libc::S_IFLNK => m |= SYMLINK,
        libc::S_IFBLK => m |= DEVICE,
        libc::S_IFCHR => m |= DEVICE | CHAR,
        libc::S_IFIFO => m |= PIPE,
        libc::S_IFSOCK => m |= SOCKET,
        _ => {}
    }
    if mode & libc::S_ISUID != 0 {
        m |= SETUID;
    }
    if mode & libc::S_ISGID != 0 {
        m |= SETGID;
    }
    if mode & libc::S_ISVTX != 0 {
        m |= STICKY;
    }
    m
}

/// The entries of `root` in `filepath.Walk` order (the root itself left out), filtered.
pub fn walk(
    root: &Path,
    filter: &rootless::patterns::Filter,
) -> std::io::Result<Vec<(Stat, PathBuf)>> {
    let mut out = Vec::new();
    walk_dir(root, "", filter, &mut out)?;
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    filter: &rootless::patterns::Filter,
    out: &mut Vec<(Stat, PathBuf)>,
) -> std::io::Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let path = dir.join(&name);
        let md = std::fs::symlink_metadata(&path)?;
        let r = if rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", name.to_string_lossy())
        };
        if !filter.keeps(&r, md.is_dir()) {
            continue;
        }
        let linkname = if md.file_type().is_symlink() {
            std::fs::read_link(&path)?.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let (major, minor) = if md.file_type().is_file() || md.is_dir() {
            (0, 0)
        } else {
            let dev = md.rdev();
            (libc::major(dev) as i64, libc::minor(dev) as i64)
        };
        out.push((
            Stat {
                path: r.clone(),
                mode: go_mode(md.mode()),
                uid: md.uid(),
                gid: md.gid(),
                size: if md.is_file() { md.len() as i64 } else { 0 },
                mod_time: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                linkname,
                devmajor: major,
                devminor: minor,
                xattrs: HashMap::new(),
            },
            path.clone(),
        ));
        if md.is_dir() {
            walk_dir(&path, &r, filter, out)?;
        }
    }
    Ok(())
}

fn values(req: &tonic::metadata::MetadataMap, key: &str) -> Vec<String> {
    req.get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect()
}

/// Go's os.ModeType: a file whose mode has none of these has contents to send.
const GO_MODE_TYPE: u32 =
    (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19);

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

#[tonic::async_trait]
impl file_sync_server::FileSync for FileSyncService {
    type DiffCopyStream = PacketStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<PacketStream>, Status> {
        let md = request.metadata();
        let name = values(md, "dir-name")
            .into_iter()
            .next()
            .unwrap_or_default();
        let Some(root) = self.locals.0.get(&name).cloned() else {
            return Err(Status::not_found(format!(
                "envkit's session has no local source {name:?} (it has: {})",
                self.locals.0.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let filter = rootless::patterns::Filter::from_lists(
            &values(md, "include-patterns"),
            &values(md, "exclude-patterns"),
        );
        let walked = tokio::task::spawn_blocking(move || walk(&root, &filter))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("reading the local source {name:?}: {e}")))?;
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Packet, Status>>(64);
        let files: HashMap<u32, PathBuf> = walked
            .iter()
            .enumerate()
            .filter(|(_, (st, _))| st.mode & GO_MODE_TYPE == 0)
            .map(|(i, (_, p))| (i as u32, p.clone()))
            .collect();
        let stats = tx.clone();
        tokio::spawn(async move {
            for (st, _) in walked {
                let p = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(st),
                    ..Default::default()
                };
                if stats.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            let end = Packet {
                r#type: PacketType::PacketStat as i32,
                ..Default::default()
            };
            let _ = stats.send(Ok(end)).await;
        });
        tokio::spawn(async move {
            loop {
                let p = match incoming.message().await {
                    Ok(Some(p)) => p,
                    _ => return,
                };
                match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let Some(path) = files.get(&p.id).cloned() else {
                            let _ = tx
                                .send(Err(Status::invalid_argument(format!(
                                    "no file id {}",
                                    p.id
                                ))))
                                .await;
                            return;
                        };
                        if send_file(&tx, p.id, &path).await.is_err() {
                            return;
                        }
                    }
                    Ok(PacketType::PacketFin) => {
                        let fin = Packet {
                            r#type: PacketType::PacketFin as i32,
                            ..Default::default()
                        };
                        let _ = tx.send(Ok(fin)).await;
                        return;
                    }
                    Ok(PacketType::PacketErr) => {
                        tracing::warn!(
                            "the remote BuildKit gave up on a local source: {}",
                            String::from_utf8_lossy(&p.data)
                        );
                        return;
                    }
                    _ => {}
                }
            }
        });
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}

/// One file's contents as DATA packets, then the empty DATA that ends it.
async fn send_file(
    tx: &tokio::sync::mpsc::Sender<Result<Packet, Status>>,
    id: u32,
    path: &Path,
) -> Result<(), ()> {
    let data = |data: Vec<u8>| Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data,
        ..Default::default()
    };
    match tokio::fs::File::open(path).await {
        Ok(mut f) => {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => tx.send(Ok(data(buf[..n].to_vec()))).await.map_err(|_| ())?,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("{}: {e}", path.display()))))
                            .await;
                        return Err(());
                    }
                }
            }
        }
        Err(e) => {
            let _ = tx
                .send(Err(Status::internal(format!("{}: {e}", path.display()))))
                .await;
            return Err(());
        }
    }
    tx.send(Ok(data(Vec::new()))).await.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_as_go_writes_them() {
        assert_eq!(go_mode(libc::S_IFREG | 0o644), 0o644);
        assert_eq!(go_mode(libc::S_IFDIR | 0o755), (1 << 31) | 0o755);
        assert_eq!(go_mode(libc::S_IFLNK | 0o777), (1 << 27) | 0o777);
        assert_eq!(
            go_mode(libc::S_IFREG | libc::S_ISUID | 0o755),
            (1 << 23) | 0o755
        );
    }

    #[test]
    fn walks_like_filepath_walk() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/b"), "x").unwrap();
        std::fs::write(d.path().join("a.txt"), "yy").unwrap();
        std::fs::write(d.path().join("skip.tmp"), "").unwrap();
        let f = rootless::patterns::Filter::from_lists(&[], &["*.tmp".into()]);
        let w = walk(d.path(), &f).unwrap();
        let paths: Vec<&str> = w.iter().map(|(s, _)| s.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a.txt"]);
        assert_eq!(w[2].0.size, 2);
    }
}
