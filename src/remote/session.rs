//! envkit's side of a BuildKit session: the remote BuildKit calls back into the client for what
//! only the client has. Served here: the file sync of local sources (`FileSync.DiffCopy`, as
//! fsutil's sender does it), registry credentials, what an exporter sends back (a file, or a
//! directory tree as fsutil's receiver takes it) and the health check. The session is an
//! HTTP/2 connection on which envkit is the server; it reaches the BuildKit either through
//! dockerd's `/session` HTTP upgrade or tunnelled in a buildkitd's `Control.Session` stream
//! (each message a slice of the connection's bytes, the session's headers as gRPC metadata).
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

/// What an exporter sends back through the session.
#[derive(Debug, Clone)]
pub enum Receive {
    /// One file (the `tar`, `oci` and `docker` exporters), written to this path (the caller
    /// renames it into place).
    File(PathBuf),
    /// A directory tree (the `local` exporter, fsutil's packets): the stats are kept, each
    /// regular file's contents land in this (empty, private) directory named by its index.
    Tree(PathBuf),
}

/// What a session serves: local sources, and what an exporter may send.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub locals: Locals,
    pub receive: Option<Receive>,
    /// The registries the build names (image sources, the output's names), as envkit keys
    /// credentials (`docker.io` for Docker Hub): the only ones the session answers
    /// credentials for. A remote BuildKit asking for any other host gets none.
    pub registries: std::collections::BTreeSet<String>,
}

/// The tree a `local` exporter sent: its entries in the order they came, once all came.
type TreeSlot = Arc<tokio::sync::watch::Sender<Option<Result<Vec<Stat>, String>>>>;

/// A running session; dropping it ends it.
pub struct Session {
    pub id: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tree: TreeSlot,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Session {
    /// The tree received for `Receive::Tree`. The job may report success a moment before
    /// the session has taken the sender's last packet: this waits for it, up to `wait`.
    pub async fn received_tree(
        &self,
        wait: std::time::Duration,
    ) -> Option<Result<Vec<Stat>, String>> {
        let mut rx = self.tree.subscribe();
        match tokio::time::timeout(wait, rx.wait_for(|v| v.is_some())).await {
            Ok(Ok(v)) => v.clone(),
            _ => None,
        }
    }
}

/// The headers that announce a session: its id, name, shared key and the methods it serves.
fn headers(id: &str, offer: &Offer) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-Docker-Expose-Session-Uuid", id.to_string()),
        ("X-Docker-Expose-Session-Name", "envkit".to_string()),
        (
            "X-Docker-Expose-Session-Sharedkey",
            shared_key(&offer.locals),
        ),
    ];
    let mut methods = vec![
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.filesync.v1.Auth/Credentials",
        "/grpc.health.v1.Health/Check",
    ];
    if offer.receive.is_some() {
        methods.push("/moby.filesync.v1.FileSend/DiffCopy");
    }
    for m in methods {
        h.push(("X-Docker-Expose-Session-Grpc-Method", m.to_string()));
    }
    h
}

/// Opens a session on the dockerd at `socket` that serves `offer`.
pub async fn attach_dockerd(socket: &Path, offer: Offer) -> Result<Session, RemoteError> {
    let fail = |m: String| RemoteError::Connect {
        endpoint: format!("dockerd at unix://{} (session)", socket.display()),
        message: m,
    };
    let id = super::random_hex(16);
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut req = String::from(
        "POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n",
    );
    for (k, v) in headers(&id, &offer) {
        req.push_str(&format!("{k}: {v}\r\n"));
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
    Ok(serve(id, stream, offer, Vec::new()))
}

/// Opens a session through `Control.Session` on the BuildKit behind `ch` (a buildkitd; the
/// BuildKit inside dockerd answers it too).
pub async fn attach_control(
    ep: &super::Endpoint,
    ch: &tonic::transport::Channel,
    offer: Offer,
) -> Result<Session, RemoteError> {
    use super::pb::{self as control, control_client::ControlClient};
    let id = super::random_hex(16);
    let (tx, rx) = tokio::sync::mpsc::channel::<control::BytesMessage>(64);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut req = Request::new(outbound);
    let bad = |what: String| RemoteError::Connect {
        endpoint: format!("{ep} (session)"),
        message: format!("the session header {what} cannot be sent"),
    };
    for (k, v) in headers(&id, &offer) {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| bad(k.to_string()))?;
        let val = v.parse().map_err(|_| bad(format!("{k}: {v:?}")))?;
        req.metadata_mut().append(key, val);
    }
    let mut inbound = ControlClient::new(ch.clone())
        .session(req)
        .await
        .map_err(|s| super::rpc(ep, "Session", s))?
        .into_inner();
    // The HTTP/2 server reads and writes one end of a pipe; the other end is carried in
    // the stream's messages, both ways.
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let m = control::BytesMessage {
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let down = tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if wr.write_all(&m.data).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    Ok(serve(id, ours, offer, vec![up, down]))
}

/// Serves the session's HTTP/2 connection on `io`.
fn serve<IO>(
    id: String,
    io: IO,
    offer: Offer,
    mut tasks: Vec<tokio::task::JoinHandle<()>>,
) -> Session
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Offer {
        locals,
        receive,
        registries,
    } = offer;
    let tree: TreeSlot = Arc::new(tokio::sync::watch::channel(None).0);
    let router = Router {
        files: file_sync_server::FileSyncServer::new(FileSyncService {
            locals: Arc::new(locals),
        }),
        send: match receive {
            Some(Receive::File(dest)) => {
                Sink::File(file_send_server::FileSendServer::new(FileSendService {
                    dest,
                }))
            }
            Some(Receive::Tree(staging)) => Sink::Tree(TreeReceiver {
                staging,
                slot: tree.clone(),
            }),
            None => Sink::None,
        },
        auth: auth_server::AuthServer::new(AuthService {
            registries: Arc::new(registries),
        }),
        health: health_server::HealthServer::new(HealthService),
    };
    tasks.push(tokio::spawn(async move {
        let io = hyper_util::rt::TokioIo::new(io);
        let svc = hyper_util::service::TowerToHyperService::new(router);
        let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_connection_window_size(super::CONN_WINDOW)
            .initial_stream_window_size(super::STREAM_WINDOW)
            .serve_connection(io, svc);
        if let Err(e) = conn.await {
            tracing::debug!("the session connection ended: {e}");
        }
    }));
    Session { id, tasks, tree }
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

/// Where `FileSend.DiffCopy` goes: one method path, two message types (a file comes as
/// BytesMessages, a tree as fsutil Packets), so the session decides by what it expects.
#[derive(Clone)]
enum Sink {
    None,
    File(file_send_server::FileSendServer<FileSendService>),
    Tree(TreeReceiver),
}

/// Dispatches the session's calls by path.
#[derive(Clone)]
struct Router {
    files: file_sync_server::FileSyncServer<FileSyncService>,
    send: Sink,
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
            match self.send.clone() {
                Sink::File(mut s) => {
                    Box::pin(async move { tower::Service::call(&mut s, req).await })
                }
                Sink::Tree(t) => Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
                    Ok(tonic::server::Grpc::new(codec).streaming(t, req).await)
                }),
                Sink::None => Box::pin(async move {
                    Ok(
                        Status::failed_precondition("envkit expects nothing back from this build")
                            .into_http(),
                    )
                }),
            }
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
    dest: PathBuf,
}

type BytesStream = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send>>;

#[tonic::async_trait]
impl file_send_server::FileSend for FileSendService {
    type DiffCopyStream = BytesStream;

    async fn diff_copy(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BytesStream>, Status> {
        let dest = self.dest.clone();
        let mut incoming = request.into_inner();
        let written = async {
            let mut f = tokio::fs::File::create(&dest).await?;
            while let Some(m) = incoming.message().await.map_err(std::io::Error::other)? {
                f.write_all(&m.data).await?;
            }
            f.flush().await
        }
        .await;
        if let Err(e) = written {
            // The sender is still sending: take the rest off the wire so that it sees the
            // error instead of waiting for room to send.
            drain(&mut incoming).await;
            return Err(Status::internal(format!("{}: {e}", dest.display())));
        }
        let none: BytesStream = Box::pin(futures_util::stream::empty());
        Ok(Response::new(none))
    }
}

/// Receives a directory tree as fsutil's receiver does: STAT packets (an empty one ends
/// them), a REQ for each regular file's contents by its index, DATA packets closed by an
/// empty one, then FIN both ways. Contents go into `staging/<index>`; the stats into `slot`.
#[derive(Clone)]
struct TreeReceiver {
    staging: PathBuf,
    slot: TreeSlot,
}

impl tonic::server::StreamingService<Packet> for TreeReceiver {
    type Response = Packet;
    type ResponseStream = PacketStream;
    type Future = BoxFut<Result<Response<PacketStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Packet>>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            tracing::debug!("the exporter sends a tree");
            let incoming = request.into_inner();
            // Unbounded: REQs must never wait for the sender, which may be busy sending
            // contents that only this side's reading loop takes off the wire.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Packet, Status>>();
            tokio::spawn(async move {
                let mut incoming = incoming;
                let r = receive_tree(&mut incoming, &tx, &me.staging).await;
                tracing::debug!(
                    "tree received: {}",
                    match &r {
                        Ok(s) => format!("{} entries", s.len()),
                        Err(e) => e.clone(),
                    }
                );
                let failed = r.is_err();
                if let Err(e) = &r {
                    let _ = tx.send(Ok(Packet {
                        r#type: PacketType::PacketErr as i32,
                        data: e.clone().into_bytes(),
                        ..Default::default()
                    }));
                }
                me.slot.send_replace(Some(r));
                if failed {
                    // The sender stops on the ERR, but only after what it is sending now
                    // has gone out: keep taking it off the wire, or both sides wait forever.
                    drain(&mut incoming).await;
                }
            });
            let out: PacketStream =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|m| (m, rx))
                }));
            Ok(Response::new(out))
        })
    }
}

/// Reads a stream to its end, dropping what comes (after an error: see the callers).
async fn drain<T>(incoming: &mut Streaming<T>) {
    while let Ok(Some(_)) = incoming.message().await {}
}

/// A file asked for: its staging path, the open file once contents come, bytes so far and
/// bytes its entry announced.
struct Pending {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    got: u64,
    want: u64,
}

/// How many files may be open at once while their contents come (fsutil's sender sends four
/// at a time).
const MAX_OPEN: usize = 64;

async fn receive_tree(
    incoming: &mut Streaming<Packet>,
    tx: &tokio::sync::mpsc::UnboundedSender<Result<Packet, Status>>,
    staging: &Path,
) -> Result<Vec<Stat>, String> {
    let send = |p: Packet| {
        tx.send(Ok(p))
            .map_err(|_| "the session closed while receiving".to_string())
    };
    let mut stats: Vec<Stat> = Vec::new();
    let mut open: HashMap<u32, Pending> = HashMap::new();
    let mut files_open = 0usize;
    let mut stats_done = false;
    let mut fin_sent = false;
    loop {
        let p = match incoming.message().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(s) => return Err(format!("the remote BuildKit's stream: {}", s.message())),
        };
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketStat) if stats_done => {
                return Err("an entry after the end of the listing".into());
            }
            Ok(PacketType::PacketStat) => match p.stat {
                None => stats_done = true,
                Some(st) => {
                    let id = u32::try_from(stats.len()).map_err(|_| "too many entries")?;
                    if st.mode & GO_MODE_TYPE == 0 && st.linkname.is_empty() {
                        open.insert(
                            id,
                            Pending {
                                path: staging.join(id.to_string()),
                                file: None,
                                got: 0,
                                want: st.size.max(0) as u64,
                            },
                        );
                        send(Packet {
                            r#type: PacketType::PacketReq as i32,
                            id,
                            ..Default::default()
                        })?;
                    }
                    stats.push(st);
                }
            },
            Ok(PacketType::PacketData) => {
                let what = |id: u32| {
                    stats
                        .get(id as usize)
                        .map(|s| s.path.clone())
                        .unwrap_or_else(|| format!("#{id}"))
                };
                let Some(pending) = open.get_mut(&p.id) else {
                    return Err(format!(
                        "contents of {} that were not asked for",
                        what(p.id)
                    ));
                };
                if pending.file.is_none() {
                    if files_open >= MAX_OPEN {
                        return Err(format!("more than {MAX_OPEN} files sent at once"));
                    }
                    let f = tokio::fs::File::create(&pending.path)
                        .await
                        .map_err(|e| format!("{}: {e}", pending.path.display()))?;
                    pending.file = Some(f);
                    files_open += 1;
                }
                if p.data.is_empty() {
                    let Some(Pending {
                        file: Some(mut f),
                        got,
                        want,
                        ..
                    }) = open.remove(&p.id)
                    else {
                        return Err(format!(
                            "contents of {} that were not asked for",
                            what(p.id)
                        ));
                    };
                    files_open -= 1;
                    f.flush().await.map_err(|e| e.to_string())?;
                    if got != want {
                        return Err(format!(
                            "{}: {got} bytes came, its entry said {want}",
                            what(p.id)
                        ));
                    }
                } else if let Some(f) = pending.file.as_mut() {
                    pending.got += p.data.len() as u64;
                    if pending.got > pending.want {
                        return Err(format!(
                            "{}: more bytes came than its entry said ({})",
                            what(p.id),
                            pending.want
                        ));
                    }
                    f.write_all(&p.data).await.map_err(|e| e.to_string())?;
                }
            }
            Ok(PacketType::PacketFin) if fin_sent => return Ok(stats),
            Ok(PacketType::PacketFin) => return Err("the sender stopped before the end".into()),
            Ok(PacketType::PacketErr) => {
                return Err(format!(
                    "the remote BuildKit could not send: {}",
                    String::from_utf8_lossy(&p.data)
                ));
            }
            _ => {}
        }
        if stats_done && open.is_empty() && !fin_sent {
            send(Packet {
                r#type: PacketType::PacketFin as i32,
                ..Default::default()
            })?;
            fin_sent = true;
        }
    }
    if fin_sent {
        Ok(stats)
    } else {
        Err("the stream ended before the whole tree came".into())
    }
}

/// Writes a received tree as a tar (entries in the order they came; a regular file's
/// contents from `staging/<index>`), for the same extraction as the embedded engine's
/// `local` output.
pub fn tree_to_tar(
    stats: &[Stat],
    staging: &Path,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    for (i, st) in stats.iter().enumerate() {
        let m = st.mode;
        let mut perm = m & 0o777;
        if m & SETUID != 0 {
            perm |= 0o4000;
        }
        if m & SETGID != 0 {
            perm |= 0o2000;
        }
        if m & STICKY != 0 {
            perm |= 0o1000;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(perm);
        h.set_uid(u64::from(st.uid));
        h.set_gid(u64::from(st.gid));
        h.set_mtime(st.mod_time.max(0) as u64 / 1_000_000_000);
        h.set_size(0);
        let kind = if m & DIR != 0 {
            tar::EntryType::Directory
        } else if m & SYMLINK != 0 {
            tar::EntryType::Symlink
        } else if m & DEVICE != 0 && m & CHAR != 0 {
            tar::EntryType::Char
        } else if m & DEVICE != 0 {
            tar::EntryType::Block
        } else if m & PIPE != 0 {
            tar::EntryType::Fifo
        } else if m & SOCKET != 0 {
            continue;
        } else if !st.linkname.is_empty() {
            tar::EntryType::Link
        } else {
            tar::EntryType::Regular
        };
        h.set_entry_type(kind);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                b.append_link(&mut h, &st.path, &st.linkname)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                h.set_device_major(st.devmajor.max(0) as u32)?;
                h.set_device_minor(st.devminor.max(0) as u32)?;
                b.append_data(&mut h, &st.path, std::io::empty())?;
            }
            tar::EntryType::Regular => {
                let f = std::fs::File::open(staging.join(i.to_string()))?;
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, &st.path, f)?;
            }
            _ => b.append_data(&mut h, &st.path, std::io::empty())?,
        }
    }
    b.into_inner()?.flush()
}

/// Registry credentials from docker's config (`auths`, credential helpers), as for envkit's
/// own pulls and pushes; empty (anonymous) where it has none, and for every registry the
/// build does not name.
struct AuthService {
    registries: Arc<std::collections::BTreeSet<String>>,
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        // BuildKit asks for Docker Hub's credentials as registry-1.docker.io.
        let key = if host == "registry-1.docker.io" || host == "index.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        if !self.registries.contains(&key) {
            tracing::warn!(
                "the remote BuildKit asked for credentials of {key}, which this build does not \
                 name: none given"
            );
            return Ok(Response::new(CredentialsResponse::default()));
        }
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

/// Go's os.FileMode bits (what fsutil's Stat.mode carries).
mod go {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const PIPE: u32 = 1 << 25;
    pub const SOCKET: u32 = 1 << 24;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    pub const IRREGULAR: u32 = 1 << 19;
    /// os.ModeType: a file with none of these has contents.
    pub const TYPE: u32 = DIR | SYMLINK | DEVICE | PIPE | SOCKET | CHAR | IRREGULAR;
}
use go::{CHAR, DEVICE, DIR, PIPE, SETGID, SETUID, SOCKET, STICKY, SYMLINK};

/// Go's os.FileMode of a unix mode: permissions, setuid/setgid/sticky and the type as Go
/// spells them.
pub fn go_mode(mode: u32) -> u32 {
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
const GO_MODE_TYPE: u32 = go::TYPE;

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

    /// A session served on one end of a pipe, and a gRPC channel to it on the other (as the
    /// remote BuildKit would call it).
    async fn session_and_channel(offer: Offer) -> (Session, tonic::transport::Channel) {
        // A pipe as deep as a busy socket's buffers can get.
        let (ours, theirs) = tokio::io::duplex(8 << 20);
        let session = serve("test".into(), ours, offer, Vec::new());
        let theirs = std::sync::Mutex::new(Some(theirs));
        let ch = tonic::transport::Endpoint::from_static("http://session")
            .connect_with_connector(tower::service_fn(move |_| {
                let io = theirs.lock().unwrap().take();
                async move {
                    io.map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("connected once already"))
                }
            }))
            .await
            .unwrap();
        (session, ch)
    }

    /// A session that expects a tree, staged in a fresh directory.
    async fn tree_session() -> (tempfile::TempDir, Session, tonic::transport::Channel) {
        let d = tempfile::tempdir().unwrap();
        let offer = Offer {
            locals: Locals::default(),
            receive: Some(Receive::Tree(d.path().to_path_buf())),
            ..Offer::default()
        };
        let (session, ch) = session_and_channel(offer).await;
        (d, session, ch)
    }

    async fn received(session: &Session) -> Result<Vec<Stat>, String> {
        session
            .received_tree(std::time::Duration::from_secs(5))
            .await
            .expect("the session got a whole tree, or an error")
    }

    fn stat(path: &str, mode: u32, size: i64, link: &str) -> Stat {
        Stat {
            path: path.into(),
            mode,
            size,
            linkname: link.into(),
            mod_time: 1_700_000_000_000_000_000,
            ..Default::default()
        }
    }

    fn packet(t: PacketType, id: u32, stat: Option<Stat>, data: &[u8]) -> Packet {
        Packet {
            r#type: t as i32,
            id,
            stat,
            data: data.to_vec(),
        }
    }

    /// Plays fsutil's sender on FileSend.DiffCopy: sends `stats`, answers each REQ with
    /// `contents(id)`, ends on FIN. Returns the packets the receiver sent.
    async fn send_tree(
        ch: tonic::transport::Channel,
        stats: Vec<Stat>,
        contents: fn(u32) -> Vec<u8>,
    ) -> Vec<Packet> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Packet>();
        for st in stats {
            tx.send(packet(PacketType::PacketStat, 0, Some(st), b""))
                .unwrap();
        }
        tx.send(packet(PacketType::PacketStat, 0, None, b""))
            .unwrap();
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
        let path = http::uri::PathAndQuery::from_static("/moby.filesync.v1.FileSend/DiffCopy");
        let mut back = grpc
            .streaming(Request::new(out), path, codec)
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Ok(Some(p)) = back.message().await {
            seen.push(p.clone());
            match PacketType::try_from(p.r#type) {
                Ok(PacketType::PacketReq) => {
                    let data = contents(p.id);
                    for chunk in data.chunks(2) {
                        let _ = tx.send(packet(PacketType::PacketData, p.id, None, chunk));
                    }
                    let _ = tx.send(packet(PacketType::PacketData, p.id, None, b""));
                }
                Ok(PacketType::PacketFin) => {
                    let _ = tx.send(packet(PacketType::PacketFin, 0, None, b""));
                    break;
                }
                Ok(PacketType::PacketErr) => break,
                _ => {}
            }
        }
        drop(tx);
        seen
    }

    /// The security issue's defect 11: the session answered registry credentials for any
    /// host a remote BuildKit named.
    #[tokio::test]
    async fn credentials_only_for_registries_the_build_names() {
        use auth_server::Auth;
        let svc = AuthService {
            registries: Arc::new(["registry.example".to_string()].into_iter().collect()),
        };
        let asked = |host: &str| {
            Request::new(CredentialsRequest {
                host: host.to_string(),
            })
        };
        let r = svc.credentials(asked("attacker.example")).await.unwrap();
        assert_eq!(r.into_inner(), CredentialsResponse::default());
        let r = svc
            .credentials(asked("registry-1.docker.io"))
            .await
            .unwrap();
        assert_eq!(r.into_inner(), CredentialsResponse::default());
    }

    #[tokio::test]
    async fn receives_a_tree_as_fsutil_sends_it() {
        let (d, session, ch) = tree_session().await;
        let stats = vec![
            stat("a", (1 << 31) | 0o755, 0, ""),
            stat("a/f", 0o640, 5, ""),
            stat("a/hard", 0o640, 5, "a/f"),
            stat("empty", 0o600, 0, ""),
            stat("l", (1 << 27) | 0o777, 0, "a/f"),
        ];
        let seen = send_tree(ch, stats, |id| match id {
            1 => b"hello".to_vec(),
            _ => Vec::new(),
        })
        .await;
        // Contents asked for the regular files only (not the hard link), then FIN.
        let reqs: Vec<u32> = seen
            .iter()
            .filter(|p| p.r#type == PacketType::PacketReq as i32)
            .map(|p| p.id)
            .collect();
        assert_eq!(reqs, [1, 3]);
        assert_eq!(
            seen.last().map(|p| p.r#type),
            Some(PacketType::PacketFin as i32)
        );
        let got = received(&session).await.unwrap();
        assert_eq!(got.len(), 5);
        let mut tar = Vec::new();
        tree_to_tar(&got, d.path(), &mut tar).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let mut entries = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut data = String::new();
            std::io::Read::read_to_string(&mut e, &mut data).unwrap();
            let h = e.header();
            entries.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type().as_byte(),
                h.mode().unwrap(),
                data,
                h.mtime().unwrap(),
            ));
        }
        assert_eq!((entries[0].0.as_str(), entries[0].1), ("a", b'5'));
        assert_eq!(
            entries[1],
            ("a/f".into(), b'0', 0o640, "hello".into(), 1_700_000_000)
        );
        assert_eq!(entries[2].1, b'1', "a hard link");
        assert_eq!(entries[4].1, b'2', "a symlink");
    }

    /// A listing of tens of thousands of entries (one small message each) comes through. (The
    /// ENHANCE_YOUR_CALM hang-up that small messages waiting unread can cause on a busy
    /// machine, see `CONN_WINDOW`, was seen in the buildkitd suite; this does not make it.)
    #[tokio::test]
    async fn a_long_listing_of_small_entries_is_not_a_flood() {
        let (_staging, session, ch) = tree_session().await;
        let stats: Vec<Stat> = (0..40_000)
            .map(|i| stat(&format!("d{i}"), (1 << 31) | 0o755, 0, ""))
            .collect();
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            send_tree(ch, stats, |_| Vec::new()),
        )
        .await
        .expect("the exchange ends");
        assert_eq!(
            seen.last().map(|p| p.r#type),
            Some(PacketType::PacketFin as i32)
        );
        let got = received(&session).await.unwrap();
        assert_eq!(got.len(), 40_000);
    }

    #[tokio::test]
    async fn a_lying_sender_gets_an_error_and_nothing_hangs() {
        let (_staging, session, ch) = tree_session().await;
        let stats = vec![stat("f", 0o644, 2, "")];
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            send_tree(ch, stats, |_| b"far more than two bytes".to_vec()),
        )
        .await
        .expect("the exchange ends");
        let err = seen
            .iter()
            .find(|p| p.r#type == PacketType::PacketErr as i32)
            .expect("an ERR packet");
        assert!(String::from_utf8_lossy(&err.data).contains("more bytes"));
        assert!(received(&session).await.is_err());
    }

    #[test]
    fn a_tree_that_climbs_out_makes_no_tar() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../escape", "/abs"] {
            let stats = vec![stat(bad, (1 << 31) | 0o755, 0, "")];
            let mut tar = Vec::new();
            let r = tree_to_tar(&stats, d.path(), &mut tar);
            // Either refused here, or the entry is one the extraction refuses.
            if r.is_ok() {
                let mut ar = tar::Archive::new(&tar[..]);
                let e = ar.entries().unwrap().next().unwrap().unwrap();
                let p = e.path().unwrap().into_owned();
                assert!(rootless::pathsafe::clean_archive_path(&p).is_err(), "{bad}");
            }
        }
    }

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
