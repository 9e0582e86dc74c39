//! The session's connection: announced by headers, reached through dockerd's `/session`
//! upgrade or tunnelled in `Control.Session`, served as HTTP/2 with one router for its methods.

use super::*;

/// The headers that announce a session: its id, name, shared key and the methods it serves.
pub(super) fn headers(id: &str, offer: &Offer) -> Vec<(&'static str, String)> {
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
    let id = crate::remote::random_hex(16);
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
    let status = crate::remote::read_status(&mut stream)
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
    ep: &crate::remote::Endpoint,
    ch: &tonic::transport::Channel,
    offer: Offer,
) -> Result<Session, RemoteError> {
    use crate::remote::pb::{self as control, control_client::ControlClient};
    let id = crate::remote::random_hex(16);
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
        .map_err(|s| crate::remote::rpc(ep, "Session", s))?
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
pub(super) fn serve<IO>(
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
            .initial_connection_window_size(crate::remote::CONN_WINDOW)
            .initial_stream_window_size(crate::remote::STREAM_WINDOW)
            .serve_connection(io, svc);
        if let Err(e) = conn.await {
            tracing::debug!("the session connection ended: {e}");
        }
    }));
    Session { id, tasks, tree }
}

/// BuildKit keys cached copies of a local source by this (with the source's name).
pub(super) fn shared_key(locals: &Locals) -> String {
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
pub(super) enum Sink {
    None,
    File(file_send_server::FileSendServer<FileSendService>),
    Tree(TreeReceiver),
}

/// Dispatches the session's calls by path.
#[derive(Clone)]
pub(super) struct Router {
    files: file_sync_server::FileSyncServer<FileSyncService>,
    send: Sink,
    auth: auth_server::AuthServer<AuthService>,
    health: health_server::HealthServer<HealthService>,
}

pub(super) type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

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
