//! Remote backends: a real BuildKit runs envkit's Definition. Two ways to reach one:
//!
//! * a buildkitd's gRPC socket (`unix:///run/buildkit/buildkitd.sock`, `tcp://host:port`);
//! * the BuildKit inside a dockerd, through the Docker API socket: `POST /grpc` with
//!   `Upgrade: h2c` hands the connection over to BuildKit's gRPC server (the route buildx's
//!   docker driver and envd's moby worker take).
//!
//! Then `Control.Solve` runs the Definition with the exporter `--output` chose, while
//! `Control.Status` streams the job's progress into envkit's own renderers.

pub mod context;
pub mod pb;
pub mod session;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::progress::{Event, Reporter};
use pb::control_client::ControlClient;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 windows of envkit's connections to BuildKit and of its session. h2 budgets the
/// framing overhead of small DATA frames that wait unread (half the connection window) and
/// hangs up with ENHANCE_YOUR_CALM when it runs out; a local tree or source listing is
/// thousands of small messages, which may wait while the machine is busy. A stream can have
/// at most its window unread, which costs at most about twice as much budget for fsutil's
/// messages: the connection window leaves room for several such streams.
pub(crate) const STREAM_WINDOW: u32 = 2 << 20;
pub(crate) const CONN_WINDOW: u32 = 16 << 20;

#[derive(Debug, Error)]
pub enum RemoteError {
    #[error("cannot reach {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{endpoint}: {what}: {message}")]
    Rpc {
        endpoint: String,
        what: String,
        message: String,
    },
    #[error("invalid Definition: {0}")]
    Definition(String),
    #[error("invalid endpoint {0:?}: want unix:///path, tcp://host:port, or a docker socket")]
    Endpoint(String),
}

/// TLS towards a buildkitd on TCP, as buildctl takes it (`--tlscacert`, `--tlscert`,
/// `--tlskey`, `--tlsservername`). Without a CA the host's bundle is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl Tls {
    pub fn is_empty(&self) -> bool {
        self == &Tls::default()
    }
}

/// Where a BuildKit listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// buildkitd on a unix socket.
    Unix(PathBuf),
    /// buildkitd on TCP: plain h2, or TLS.
    Tcp { addr: String, tls: Option<Tls> },
    /// dockerd's API socket; BuildKit is reached through `/grpc`.
    Dockerd(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "buildkitd at unix://{}", p.display()),
            Endpoint::Tcp { addr, tls: None } => write!(f, "buildkitd at tcp://{addr}"),
            Endpoint::Tcp { addr, tls: Some(_) } => write!(f, "buildkitd at tcp://{addr} (TLS)"),
            Endpoint::Dockerd(p) => write!(f, "dockerd at unix://{}", p.display()),
        }
    }
}

impl Endpoint {
    /// `unix:///path` or `tcp://host:port` for buildkitd; for dockerd a `unix://` socket (or
    /// a bare path).
    pub fn parse(dockerd: bool, url: &str) -> Result<Endpoint, RemoteError> {
        if let Some(p) = url.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(RemoteError::Endpoint(url.to_string()));
            }
            return Ok(if dockerd {
                Endpoint::Dockerd(PathBuf::from(p))
            } else {
                Endpoint::Unix(PathBuf::from(p))
            });
        }
        if let Some(a) = url.strip_prefix("tcp://")
            && !dockerd
            && a.contains(':')
        {
            return Ok(Endpoint::Tcp {
                addr: a.to_string(),
                tls: None,
            });
        }
        if dockerd && url.starts_with('/') {
            return Ok(Endpoint::Dockerd(PathBuf::from(url)));
        }
        Err(RemoteError::Endpoint(url.to_string()))
    }
}

/// Reads an HTTP/1.1 response head, byte by byte up to the blank line (what follows may
/// belong to HTTP/2 or be the body), and returns its status line.
pub(crate) async fn read_status(stream: &mut tokio::net::UnixStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut b).await? == 0 || head.len() > 16 << 10 {
            return Err(std::io::Error::other(
                "dockerd closed the connection before its answer ended",
            ));
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Asks dockerd to hand the connection to its BuildKit (HTTP/1.1 upgrade to h2c).
async fn upgrade(stream: &mut tokio::net::UnixStream, path: &str) -> std::io::Result<()> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
         Content-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let status = read_status(stream).await?;
    if !status.contains(" 101 ") {
        return Err(std::io::Error::other(format!(
            "dockerd answered {status:?} to {path} (is BuildKit enabled in this dockerd?)"
        )));
    }
    Ok(())
}

/// A gRPC channel to the BuildKit at `ep`; fails within seconds when nothing answers.
pub async fn connect(ep: &Endpoint) -> Result<Channel, RemoteError> {
    let fail = |message: String| RemoteError::Connect {
        endpoint: ep.to_string(),
        message,
    };
    let connecting = async {
        match ep {
            Endpoint::Tcp { addr, tls: None } => {
                TonicEndpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| e.to_string())?
                    .initial_connection_window_size(CONN_WINDOW)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect()
                    .await
                    .map_err(|e| crate::registry::chain(&e))
            }
            Endpoint::Tcp {
                addr,
                tls: Some(tls),
            } => TonicEndpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| e.to_string())?
                .tls_config(client_tls(addr, tls)?)
                .map_err(|e| crate::registry::chain(&e))?
                .initial_connection_window_size(CONN_WINDOW)
                .initial_stream_window_size(STREAM_WINDOW)
                .connect_timeout(CONNECT_TIMEOUT)
                .connect()
                .await
                .map_err(|e| crate::registry::chain(&e)),
            Endpoint::Unix(path) | Endpoint::Dockerd(path) => {
                let path = path.clone();
                let docker = matches!(ep, Endpoint::Dockerd(_));
                TonicEndpoint::from_static("http://buildkit")
                    .initial_connection_window_size(CONN_WINDOW)
                    .initial_stream_window_size(STREAM_WINDOW)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            let mut s = tokio::net::UnixStream::connect(&path).await?;
                            if docker {
                                upgrade(&mut s, "/grpc").await?;
                            }
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                        }
                    }))
                    .await
                    .map_err(|e| crate::registry::chain(&e))
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(m)) => Err(fail(m)),
        Err(_) => Err(fail(format!(
            "no answer in {} s",
            (CONNECT_TIMEOUT * 2).as_secs()
        ))),
    }
}

/// The host's CA bundle, trusted when a TLS context names no CA of its own.
const HOST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn client_tls(addr: &str, tls: &Tls) -> Result<tonic::transport::ClientTlsConfig, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca = tls.ca.clone().unwrap_or_else(|| PathBuf::from(HOST_BUNDLE));
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca)?));
    match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => return Err("a client certificate needs its key, and a key its certificate".into()),
    }
    // The server's name: the one given, else the host part of the address.
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    Ok(cfg.domain_name(tls.server_name.clone().unwrap_or_else(|| host.to_string())))
}

/// What the remote BuildKit is.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    pub ids: Vec<String>,
    /// `org.mobyproject.buildkit.worker.*` labels of the first worker.
    pub labels: HashMap<String, String>,
    /// What the workers build, the first worker's first platform first (BuildKit's default
    /// platform for a build that names none).
    pub platforms: Vec<crate::platform::Platform>,
}

pub async fn list_workers(ep: &Endpoint, ch: &Channel) -> Result<Workers, RemoteError> {
    let mut client = ControlClient::new(ch.clone());
    let resp = client
        .list_workers(pb::ListWorkersRequest { filter: Vec::new() })
        .await
        .map_err(|s| rpc(ep, "ListWorkers", s))?
        .into_inner();
    let mut w = Workers::default();
    for r in resp.record {
        if w.ids.is_empty() {
            w.labels = r.labels.clone();
        }
        w.ids.push(r.id);
        for p in r.platforms {
            let p = crate::platform::Platform::new(&p.os, &p.architecture, &p.variant);
            if !w.platforms.contains(&p) {
                w.platforms.push(p);
            }
        }
    }
    Ok(w)
}

/// The BuildKit's version (`Control.Info`, v0.11 and later); None when it is older.
pub async fn version(ep: &Endpoint, ch: &Channel) -> Result<Option<String>, RemoteError> {
    let mut client = ControlClient::new(ch.clone());
    match client.info(pb::InfoRequest {}).await {
        Ok(r) => Ok(Some(
            r.into_inner()
                .buildkit_version
                .map(|v| v.version)
                .unwrap_or_default(),
        )),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(rpc(ep, "Info", s)),
    }
}

impl Workers {
    /// The BuildKit inside a dockerd: its worker is moby's (dockerd 20.10 calls it `moby`
    /// and gives it no labels; later ones label it `org.mobyproject.buildkit.worker.moby.*`),
    /// and its image exporter is `moby`.
    pub fn is_moby(&self) -> bool {
        self.ids.iter().any(|id| id == "moby")
            || self
                .labels
                .keys()
                .any(|k| k.starts_with("org.mobyproject.buildkit.worker.moby."))
    }
}

/// Whether the graph may use MergeOp/DiffOp there: BuildKit has them from v0.10, and tells
/// its version from v0.11 (`version` answers); dockerd's does not have them.
pub fn has_merge_op(workers: &Workers, version: Option<&str>) -> bool {
    version.is_some() && !workers.is_moby()
}

pub(crate) fn rpc(ep: &Endpoint, what: &str, s: tonic::Status) -> RemoteError {
    RemoteError::Rpc {
        endpoint: ep.to_string(),
        what: what.to_string(),
        message: s.message().to_string(),
    }
}

/// One job for the remote BuildKit.
pub struct Job {
    /// Marshalled `pb.Definition` bytes (what `envkit debug llb --pb` writes).
    pub definition: Vec<u8>,
    pub exporter: String,
    pub exporter_attrs: HashMap<String, String>,
    pub entitlements: Vec<String>,
    /// The image config (JSON) the exporter writes. It travels as a client-side frontend's
    /// result metadata (the gateway), which every BuildKit reads; exporter attributes
    /// alone are ignored by the BuildKit inside dockerd 20.10.
    pub image_config: Option<Vec<u8>>,
    /// The session serving local sources ("" for none).
    pub session: String,
    /// Several platforms of one image: each one's Definition and image config (then
    /// `definition` and `image_config` are not used); the exporter gets one result per
    /// platform, as from BuildKit's own frontends.
    pub platforms: Vec<PlatformPart>,
    /// `--export-cache` / `--import-cache`, as BuildKit's cache exporters and importers.
    pub cache: pb::CacheOptions,
}

/// One platform of a multi-platform [`Job`].
pub struct PlatformPart {
    pub platform: crate::platform::Platform,
    pub definition: Vec<u8>,
    pub image_config: Option<Vec<u8>>,
}

/// gRPC metadata that ties gateway calls to the Control.Solve of the same job.
const BUILD_ID_HEADER: &str = "buildkit-controlapi-buildid";

fn with_build_id<T>(msg: T, id: &str) -> Result<tonic::Request<T>, RemoteError> {
    let mut r = tonic::Request::new(msg);
    let v = id
        .parse()
        .map_err(|_| RemoteError::Definition(format!("job id {id:?} is not a header value")))?;
    r.metadata_mut().insert(BUILD_ID_HEADER, v);
    Ok(r)
}

/// The client-side frontend: solve each platform's Definition through the gateway (one part
/// with no platform: a plain build), then return the result with the image configs.
async fn gateway(
    ep: &Endpoint,
    ch: &Channel,
    id: &str,
    parts: Vec<(
        Option<crate::platform::Platform>,
        crate::pb::Definition,
        Option<Vec<u8>>,
    )>,
) -> Result<(), RemoteError> {
    use pb::frontend::{self as gw, llb_bridge_client::LlbBridgeClient};
    let bridge = LlbBridgeClient::new(ch.clone());
    let solves = parts.iter().map(|(_, def, _)| {
        let mut bridge = bridge.clone();
        let req = with_build_id(
            gw::SolveRequest {
                definition: Some(def.clone()),
                allow_result_return: true,
                allow_result_array_ref: true,
                // Evaluated here, so that a failing step fails this call with its error.
                evaluate: true,
                ..Default::default()
            },
            id,
        );
        async move {
            match req {
                Ok(req) => bridge.solve(req).await.map_err(Ok),
                Err(e) => Err(Err(e)),
            }
        }
    });
    let solved: Result<Vec<_>, Result<tonic::Status, RemoteError>> =
        futures_util::future::try_join_all(solves).await;
    let mut bridge = bridge;
    let solved = match solved {
        Ok(s) => s,
        Err(Ok(s)) => {
            // Tell the job why, so its Solve fails with the step's error.
            let req = gw::ReturnRequest {
                result: None,
                error: Some(gw::RpcStatus {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                }),
            };
            let _ = bridge.r#return(with_build_id(req, id)?).await;
            return Err(rpc(ep, "LLBBridge.Solve", s));
        }
        Err(Err(e)) => return Err(e),
    };
    let mut metadata = HashMap::new();
    let mut results = Vec::with_capacity(solved.len());
    for (r, (platform, _, config)) in solved.into_iter().zip(&parts) {
        let r = r.into_inner();
        results.push(match r.result.and_then(|x| x.result) {
            Some(res) => res,
            None => gw::result::Result::RefDeprecated(r.r#ref),
        });
        if let Some(cfg) = config {
            let key = match platform {
                Some(p) => format!("containerimage.config/{p}"),
                None => "containerimage.config".to_string(),
            };
            metadata.insert(key, cfg.clone());
        }
    }
    let result = if parts.iter().all(|(p, _, _)| p.is_none()) {
        results.pop()
    } else {
        let ids: Vec<serde_json::Value> = parts
            .iter()
            .filter_map(|(p, _, _)| p.as_ref())
            .map(|p| {
                let mut oci = serde_json::json!({"architecture": p.architecture, "os": p.os});
                if !p.variant.is_empty() {
                    oci["variant"] = serde_json::json!(p.variant);
                }
                serde_json::json!({"ID": p.to_string(), "Platform": oci})
            })
            .collect();
        metadata.insert(
            "refs.platforms".to_string(),
            serde_json::to_vec(&serde_json::json!({ "Platforms": ids }))
                .map_err(|e| RemoteError::Definition(e.to_string()))?,
        );
        let keyed = || {
            parts
                .iter()
                .map(|(p, _, _)| p.as_ref().map(|p| p.to_string()).unwrap_or_default())
        };
        if results
            .iter()
            .all(|r| matches!(r, gw::result::Result::Ref(_)))
        {
            let refs = keyed()
                .zip(results)
                .filter_map(|(k, r)| match r {
                    gw::result::Result::Ref(r) => Some((k, r)),
                    _ => None,
                })
                .collect();
            Some(gw::result::Result::Refs(gw::RefMap { refs }))
        } else {
            let refs = keyed()
                .zip(results)
                .map(|(k, r)| match r {
                    gw::result::Result::Ref(r) => (k, r.id),
                    gw::result::Result::RefDeprecated(id) => (k, id),
                    _ => (k, String::new()),
                })
                .collect();
            Some(gw::result::Result::RefsDeprecated(gw::RefMapDeprecated {
                refs,
            }))
        }
    };
    let result = gw::ReturnRequest {
        result: Some(gw::Result { result, metadata }),
        error: None,
    };
    bridge
        .r#return(with_build_id(result, id)?)
        .await
        .map_err(|s| rpc(ep, "LLBBridge.Return", s))?;
    Ok(())
}

/// `n` random bytes from the kernel, as hex (ids of jobs and sessions).
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    hex::encode(b)
}

fn job_ref() -> String {
    format!("envkit-{}", random_hex(12))
}

/// Runs `job`, reporting its progress; returns the exporter's response (e.g.
/// `containerimage.digest`).
pub async fn solve(
    ep: &Endpoint,
    ch: &Channel,
    job: Job,
    reporter: Arc<dyn Reporter>,
) -> Result<HashMap<String, String>, RemoteError> {
    let decode = |bytes: &[u8]| {
        let mut def = crate::pb::Definition::decode(bytes)
            .map_err(|e| RemoteError::Definition(e.to_string()))?;
        // The source map holds only empty location lists (as the Go client writes them).
        // Sent again through prost, an empty list would be left out of its map entry, which
        // Go reads as a nil list, and BuildKit 0.8 (dockerd 20.10) dereferences it when a
        // step fails. It carries no information: leave it out.
        if def.source.as_ref().is_some_and(|s| s.infos.is_empty()) {
            def.source = None;
        }
        Ok::<_, RemoteError>(def)
    };
    let r = job_ref();
    let mut status_client = ControlClient::new(ch.clone());
    let status_ref = r.clone();
    let status_reporter = reporter.clone();
    let status = tokio::spawn(async move {
        let Ok(resp) = status_client
            .status(pb::StatusRequest { r#ref: status_ref })
            .await
        else {
            return;
        };
        let mut stream = resp.into_inner();
        let mut view = StatusView::default();
        while let Ok(Some(msg)) = stream.message().await {
            view.apply(&msg, status_reporter.as_ref());
        }
    });
    let mut client = ControlClient::new(ch.clone());
    let (definition, frontend) = if !job.platforms.is_empty() {
        let mut parts = Vec::with_capacity(job.platforms.len());
        for p in job.platforms {
            parts.push((Some(p.platform), decode(&p.definition)?, p.image_config));
        }
        (None, Some(parts))
    } else {
        let def = decode(&job.definition)?;
        match job.image_config {
            // The job's Solve waits for its frontend: the gateway calls below.
            Some(cfg) => (None, Some(vec![(None, def, Some(cfg))])),
            None => (Some(def), None),
        }
    };
    let req = pb::SolveRequest {
        r#ref: r.clone(),
        definition,
        exporter: job.exporter,
        exporter_attrs: job.exporter_attrs,
        session: job.session,
        frontend: String::new(),
        frontend_attrs: HashMap::new(),
        cache: Some(job.cache),
        entitlements: job.entitlements,
    };
    let solving = tokio::spawn(async move { client.solve(req).await });
    let gw = match frontend {
        Some(parts) => gateway(ep, ch, &r, parts).await,
        None => Ok(()),
    };
    let resp = match solving.await {
        Ok(r) => r,
        Err(e) => {
            return Err(RemoteError::Rpc {
                endpoint: ep.to_string(),
                what: "Solve".into(),
                message: e.to_string(),
            });
        }
    };
    // The status stream ends with the job; give it a moment to deliver the last events.
    let _ = tokio::time::timeout(Duration::from_secs(5), status).await;
    let resp = match (resp, gw) {
        (Ok(r), _) => r.into_inner(),
        // The step's own error (from the gateway) says more than the job's, unless the
        // gateway never found the job: then the job's own error says why.
        (Err(s), Err(e)) if e.to_string().contains("no such job") => {
            return Err(rpc(ep, "Solve", s));
        }
        (Err(_), Err(e)) => return Err(e),
        (Err(s), Ok(())) => return Err(rpc(ep, "Solve", s)),
    };
    Ok(resp.exporter_response)
}

/// Turns BuildKit's status messages into envkit's progress events.
#[derive(Default)]
struct StatusView {
    index: HashMap<String, usize>,
    started: HashMap<String, Duration>,
    done: std::collections::HashSet<String>,
}

fn ts(t: &Option<pb::Timestamp>) -> Option<Duration> {
    t.as_ref().map(|t| {
        Duration::from_secs(t.seconds.max(0) as u64) + Duration::from_nanos(t.nanos.max(0) as u64)
    })
}

impl StatusView {
    fn apply(&mut self, msg: &pb::StatusResponse, reporter: &dyn Reporter) {
        for v in &msg.vertexes {
            let next = self.index.len();
            let idx = *self.index.entry(v.digest.clone()).or_insert(next);
            if let Some(start) = ts(&v.started)
                && !self.started.contains_key(&v.digest)
            {
                self.started.insert(v.digest.clone(), start);
                reporter.event(Event::Started {
                    vertex: idx,
                    digest: v.digest.clone(),
                    inputs: v.inputs.clone(),
                    name: v.name.clone(),
                });
            }
            if self.done.contains(&v.digest) {
                continue;
            }
            if !v.error.is_empty() {
                self.done.insert(v.digest.clone());
                reporter.event(Event::Failed {
                    vertex: idx,
                    error: v.error.clone(),
                });
            } else if let Some(end) = ts(&v.completed) {
                self.done.insert(v.digest.clone());
                let elapsed = self
                    .started
                    .get(&v.digest)
                    .map(|s| end.saturating_sub(*s))
                    .unwrap_or_default();
                reporter.event(Event::Completed {
                    vertex: idx,
                    cached: v.cached,
                    elapsed,
                });
            }
        }
        for l in &msg.logs {
            if let Some(&idx) = self.index.get(&l.vertex) {
                reporter.event(Event::Log {
                    vertex: idx,
                    data: l.msg.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse(false, "unix:///run/buildkit/buildkitd.sock").unwrap(),
            Endpoint::Unix("/run/buildkit/buildkitd.sock".into())
        );
        assert_eq!(
            Endpoint::parse(false, "tcp://10.0.0.1:1234").unwrap(),
            Endpoint::Tcp {
                addr: "10.0.0.1:1234".into(),
                tls: None
            }
        );
        assert_eq!(
            Endpoint::parse(true, "unix:///var/run/docker.sock").unwrap(),
            Endpoint::Dockerd("/var/run/docker.sock".into())
        );
        assert!(Endpoint::parse(true, "tcp://x:1").is_err());
        assert!(Endpoint::parse(false, "http://x").is_err());
    }

    #[test]
    fn merge_op_only_where_buildkit_tells_its_version_and_is_not_mobys() {
        let bk = Workers {
            ids: vec!["tos3kccd5sra4c5lsc7fi8hxk".into()],
            ..Default::default()
        };
        assert!(has_merge_op(&bk, Some("v0.11.6")));
        assert!(!has_merge_op(&bk, None), "older than v0.11: no Info");
        let dockerd_20 = Workers {
            ids: vec!["moby".into()],
            ..Default::default()
        };
        assert!(dockerd_20.is_moby() && !has_merge_op(&dockerd_20, None));
        let labelled = Workers {
            ids: vec!["x".into()],
            labels: [(
                "org.mobyproject.buildkit.worker.moby.host-gateway-ip".to_string(),
                "172.17.0.1".to_string(),
            )]
            .into(),
            platforms: Vec::new(),
        };
        assert!(labelled.is_moby() && !has_merge_op(&labelled, Some("v0.12.5")));
    }

    struct Collect(std::sync::Mutex<Vec<Event>>);
    impl Reporter for Collect {
        fn event(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    #[test]
    fn status_becomes_events_once() {
        let c = Collect(Default::default());
        let mut v = StatusView::default();
        let t = |s| {
            Some(pb::Timestamp {
                seconds: s,
                nanos: 0,
            })
        };
        let vx = |completed| pb::Vertex {
            digest: "sha256:a".into(),
            name: "RUN x".into(),
            started: t(10),
            completed,
            ..Default::default()
        };
        v.apply(
            &pb::StatusResponse {
                vertexes: vec![vx(None)],
                ..Default::default()
            },
            &c,
        );
        v.apply(
            &pb::StatusResponse {
                vertexes: vec![vx(t(12))],
                logs: vec![pb::VertexLog {
                    vertex: "sha256:a".into(),
                    msg: b"hi".to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &c,
        );
        v.apply(
            &pb::StatusResponse {
                vertexes: vec![vx(t(12))],
                ..Default::default()
            },
            &c,
        );
        let ev = c.0.lock().unwrap();
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(
            matches!(ev[1], Event::Completed { elapsed, .. } if elapsed == Duration::from_secs(2))
        );
    }
}
