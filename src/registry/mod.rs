//! Pulling images from OCI / Docker v2 registries.
//!
//! * References are normalised the way Docker does (`python:3.11-slim` →
//!   `docker.io/library/python:3.11-slim`).
//! * The hosts tried for a reference are the config's mirrors for its registry, in order, then
//!   the registry itself (`docker.io` is reached as `registry-1.docker.io`). A host with
//!   `http = true` is spoken to over plain http.
//! * Manifests may be OCI or Docker v2 schema 2, images or indexes / manifest lists; from an
//!   index the entry of the wanted platform (by default this machine's) is taken, and a
//!   single-platform image must be of that platform.
//! * Blobs are streamed into the [`content::Store`](crate::content::Store), which checks digest
//!   and size before they become visible.
//! * A manifest that is no image (a BuildKit registry cache's, whose config is a
//!   `cacheconfig.v0`) is fetched as it is ([`Registry::fetch_manifest_raw`]), from the same
//!   hosts in the same order, and its blobs by descriptor ([`Registry::fetch_blobs`],
//!   [`Registry::fetch_blob_bytes`]), with the same checks.
//!
//! Token auth, blobs and pushes go through `oci-client`; manifests through a plain HTTP
//! client. Both are per host, so that per-host TLS settings (`ca`, `insecure`) stay per host,
//! and both are built only when needed: a manifest is first asked for without auth, and the
//! auth step runs only when the registry answers 401 or credentials are configured. TLS trust
//! is [`tls`]'s (the system's roots read once, at the first handshake). Proxies come from the
//! usual environment variables, and loopback addresses never go through a proxy.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, MediaType,
};
use thiserror::Error;

use crate::config::Config;

mod ahead;
pub mod auth;
pub mod follow;
mod push;
pub(crate) mod tls;

use crate::content::{self, ContentError};
pub use push::Pushed;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 schema 2 manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const ACCEPTED: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Largest manifest or index accepted from a registry (containerd's limit too; real ones
/// are a few KiB).
const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Largest image config accepted (they are a few KiB in practice).
const MAX_CONFIG_SIZE: u64 = 64 << 20;

/// One host tried while resolving, and why it did not answer with the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub url: String,
    pub error: String,
}

/// Errors of the registry client.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {message}")]
    InvalidReference { reference: String, message: String },
    #[error("cannot resolve image {reference}: {}", Attempts(.attempts))]
    Resolve {
        reference: String,
        attempts: Vec<Attempt>,
    },
    #[error("pulling {digest} of {reference} from {url}: {message}")]
    Blob {
        reference: String,
        digest: String,
        url: String,
        message: String,
    },
    #[error("registry client for {host}: {message}")]
    Client { host: String, message: String },
    #[error(
        "image {reference} is {have}, not {want} (the registry has no {want} image under that name)"
    )]
    Platform {
        reference: String,
        want: String,
        have: String,
    },
    #[error("pushing {reference}: {message}")]
    Push { reference: String, message: String },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(
        "image {reference} names {now} now, not {was} as when this build was keyed: it is compiled again"
    )]
    TagMoved {
        reference: String,
        was: String,
        now: String,
    },
    /// A later wait for tags resolved ahead, after the first failed.
    #[error("{0}")]
    Unconfirmed(String),
}

/// How a tag is resolved (LLB's `image.resolvemode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolveMode {
    /// Ask the registry (one manifest request), as `pull` does.
    #[default]
    Default,
    /// Ask the registry.
    Pull,
    /// Use what the tag named last time, if its blobs are all in the store; else ask.
    PreferLocal,
}

impl ResolveMode {
    /// From the attr's value (`default`, `pull`, `local`).
    pub fn from_attr(v: Option<&str>) -> Result<ResolveMode, String> {
        match v {
            None | Some("") | Some("default") => Ok(ResolveMode::Default),
            Some("pull") => Ok(ResolveMode::Pull),
            Some("local") => Ok(ResolveMode::PreferLocal),
            Some(other) => Err(format!(
                "image.resolvemode {other:?} (want default, pull or local)"
            )),
        }
    }
}

use crate::platform::Platform;

struct Attempts<'a>(&'a [Attempt]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "no registry to try");
        }
        write!(f, "tried ")?;
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{} ({})", a.url, a.error)?;
        }
        Ok(())
    }
}

/// A reference resolved to one platform image on one host.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The host that answered (a mirror or the registry itself), e.g. `127.0.0.1:5000`.
    pub host: String,
    /// The repository on that host, e.g. `library/busybox`.
    pub repository: String,
    /// The digest of the index / manifest list the reference named, if it named one.
    pub index_digest: Option<Digest>,
    /// Digest of the linux/amd64 image manifest.
    pub manifest_digest: Digest,
    /// Media type of that manifest (OCI or Docker v2 schema 2).
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    /// Config descriptor from the manifest.
    pub config_descriptor: Descriptor,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    /// Layer descriptors, base first.
    pub layers: Vec<Descriptor>,
}

impl Resolved {
    /// Digest of the image config.
    pub fn config_digest(&self) -> &Digest {
        self.config_descriptor.digest()
    }
}

/// A manifest or index as a registry stored it, whatever its config is (a BuildKit cache's
/// `application/vnd.buildkit.cacheconfig.v0`, say): see [`Registry::fetch_manifest_raw`].
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The normalised reference, e.g. `127.0.0.1:5000/envkit-test/cache:chain3`.
    pub reference: String,
    /// The host that answered (a mirror or the registry itself); its blobs come from there.
    pub host: String,
    /// The repository on that host, e.g. `envkit-test/cache`.
    pub repository: String,
    /// Digest of `bytes` (the one the reference named, if it named one).
    pub digest: Digest,
    /// One of [`OCI_MANIFEST`], [`OCI_INDEX`], [`DOCKER_MANIFEST`], [`DOCKER_MANIFEST_LIST`]:
    /// the document's own `mediaType`, else the answer's `Content-Type`, else what its shape
    /// says (`manifests`: an index).
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Normalises a reference like Docker: adds `docker.io`, `library/` and `:latest` where
/// missing. Returns the parsed reference.
///
/// Parsed by envkit's own grammar check (`reference::normalize_image_ref`): the registry client's
/// parser compiles a Unicode regex that cost 15 MiB of heap per process.
pub fn normalize(reference: &str) -> Result<Reference, RegistryError> {
    let bad = |message: String| RegistryError::InvalidReference {
        reference: reference.to_string(),
        message,
    };
    let norm = crate::reference::normalize_image_ref(reference.trim()).map_err(bad)?;
    let (name_tag, digest) = match norm.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (norm.as_str(), None),
    };
    let (domain, rest) = name_tag
        .split_once('/')
        .ok_or_else(|| bad("no repository".to_string()))?;
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((r, t)) => (r, Some(t)),
        None => (rest, None),
    };
    Ok(match (digest, tag) {
        (Some(d), _) => Reference::with_digest(domain.to_string(), repo.to_string(), d.to_string()),
        (None, Some(t)) => Reference::with_tag(domain.to_string(), repo.to_string(), t.to_string()),
        (None, None) => {
            Reference::with_tag(domain.to_string(), repo.to_string(), "latest".to_string())
        }
    })
}

/// The host actually contacted for a registry name when no mirror is used.
pub fn endpoint_for(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// The config section whose TLS settings apply to a contacted host.
fn section_for(host: &str) -> &str {
    match host {
        "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// What a 401 means to the user.
const UNAUTHORIZED: &str =
    "unauthorized (give credentials in docker's config.json: `auths` or a credential helper)";

/// A registry's error envelope in one line: each error's message, else its code.
fn envelope_text(errors: impl Iterator<Item = (String, String)>) -> String {
    let msgs: Vec<String> = errors
        .map(|(message, code)| if message.is_empty() { code } else { message })
        .collect();
    msgs.join("; ")
}

/// Renders an oci-client error for a user: the registry's own messages where it sent some.
fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RegistryError { envelope, .. } => envelope_text(
            envelope
                .errors
                .iter()
                .map(|x| (x.message.clone(), format!("{:?}", x.code))),
        ),
        E::ImageManifestNotFoundError(_) => "manifest unknown".to_string(),
        E::ServerError { code, message, .. } => format!("HTTP {code}: {message}"),
        E::UnauthorizedError { .. } => UNAUTHORIZED.into(),
        other => chain(other),
    }
}

/// Renders an error and its sources as one line (also for the remote backends' errors).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// Proxy settings from the environment, with loopback always excluded.
fn proxies_from_env() -> (Option<String>, Option<String>, Option<String>) {
    let var = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .find(|v| !v.is_empty())
    };
    let all = var(&["ALL_PROXY", "all_proxy"]);
    let https = var(&["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone());
    let http = var(&["HTTP_PROXY", "http_proxy"]).or(all);
    let mut no_proxy = var(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    for local in ["127.0.0.1", "localhost", "::1"] {
        if !no_proxy.split(',').any(|h| h.trim() == local) {
            if !no_proxy.is_empty() {
                no_proxy.push(',');
            }
            no_proxy.push_str(local);
        }
    }
    (https, http, Some(no_proxy))
}

/// A plain HTTP client with the distribution client's settings: the host's TLS (system
/// roots read on first handshake, its `ca` files, `insecure`), proxies and timeouts.
fn plain_client(
    tls: rustls::ClientConfig,
    (https, http, no_proxy): (&Option<String>, &Option<String>, &Option<String>),
) -> Result<reqwest::Client, reqwest::Error> {
    let no_proxy = no_proxy.as_deref().and_then(reqwest::NoProxy::from_string);
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(300))
        .user_agent(concat!("envkit/", env!("CARGO_PKG_VERSION")));
    if let Some(p) = https {
        b = b.proxy(reqwest::Proxy::https(p)?.no_proxy(no_proxy.clone()));
    }
    if let Some(p) = http {
        b = b.proxy(reqwest::Proxy::http(p)?.no_proxy(no_proxy));
    }
    b.build()
}

/// What a reference named on one host, and how it was asked for (a child manifest is asked
/// for the same way).
struct OnHost {
    http: reqwest::Client,
    auth: ManifestAuth,
    /// The reference on that host (for the distribution client).
    on_host: Reference,
    repo: String,
    url: String,
    bytes: Vec<u8>,
    digest: Digest,
    content_type: Option<String>,
}

/// How a manifest request authenticates: what the distribution client's auth step found.
#[derive(Clone)]
enum ManifestAuth {
    Anonymous,
    Bearer(String),
    Basic(String, String),
}

impl ManifestAuth {
    fn of(token: Option<String>, creds: &RegistryAuth) -> ManifestAuth {
        match (token, creds) {
            (Some(t), _) => ManifestAuth::Bearer(t),
            (None, RegistryAuth::Basic(u, p)) => ManifestAuth::Basic(u.clone(), p.clone()),
            _ => ManifestAuth::Anonymous,
        }
    }
}

/// A registry's error answer in one line: the messages of its error envelope, else the
/// status and the start of the body.
fn registry_answer(status: reqwest::StatusCode, body: &[u8]) -> String {
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return UNAUTHORIZED.into();
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope>(body)
        && !env.errors.is_empty()
    {
        return envelope_text(env.errors.into_iter().map(|e| (e.message, e.code)));
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("HTTP {}: {}", status.as_u16(), text.trim())
}

/// GETs `url` for a manifest and reads at most `cap` bytes of it; with the media type of its
/// `Content-Type` (parameters dropped), if it sent one. An error says whether another try may
/// help (5xx, 429) and what went wrong.
async fn get_capped(
    http: &reqwest::Client,
    url: &str,
    auth: &ManifestAuth,
    cap: u64,
) -> Result<(Vec<u8>, Option<String>), (bool, String)> {
    let mut req = http
        .get(url)
        .header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
    req = match auth {
        ManifestAuth::Anonymous => req,
        ManifestAuth::Bearer(t) => req.bearer_auth(t),
        ManifestAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
    };
    let mut resp = req.send().await.map_err(|e| (false, chain(&e)))?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    let too_big =
        |n: u64| format!("manifest of {n} bytes or more is larger than the {cap}-byte limit");
    if let Some(n) = resp.content_length()
        && n > cap
        && status.is_success()
    {
        return Err((false, too_big(n)));
    }
    // An error body is only read for its message: a few KiB are enough.
    let limit = if status.is_success() { cap } else { 64 << 10 };
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| (true, chain(&e)))? {
        if (body.len() + chunk.len()) as u64 > limit {
            if status.is_success() {
                return Err((false, too_big(limit + 1)));
            }
            body.extend_from_slice(&chunk[..(limit as usize).saturating_sub(body.len())]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let busy = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        return Err((busy, registry_answer(status, &body)));
    }
    Ok((body, content_type))
}

/// What a manifest fetch returned.
enum Fetched {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>, String),
}

/// A manifest's JSON, which must be schema 2 (OCI or Docker v2).
fn schema2(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
    if schema != Some(2) {
        return Err(format!(
            "unsupported manifest schemaVersion {} (only schema 2 / OCI)",
            schema.map_or("missing".to_string(), |s| s.to_string())
        ));
    }
    Ok(value)
}

fn classify(bytes: &[u8]) -> Result<Fetched, String> {
    let value = schema2(bytes)?;
    let media_type = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("unsupported manifest media type {other}")),
        None => value.get("manifests").is_some(),
    };
    if is_index {
        let index: ImageIndex =
            serde_json::from_value(value).map_err(|e| format!("invalid image index: {e}"))?;
        Ok(Fetched::Index(Box::new(index)))
    } else {
        let manifest: ImageManifest =
            serde_json::from_value(value).map_err(|e| format!("invalid image manifest: {e}"))?;
        Ok(Fetched::Manifest(
            Box::new(manifest),
            media_type.unwrap_or_else(|| OCI_MANIFEST.to_string()),
        ))
    }
}

/// The media type of a manifest or index taken as it is (see [`RawManifest::media_type`]),
/// after the checks that it is one: JSON, schema 2, a known media type, and the field its
/// kind needs (`manifests` for an index, `config` for a manifest).
fn raw_media_type(bytes: &[u8], content_type: Option<&str>) -> Result<String, String> {
    let value = schema2(bytes)?;
    let media_type = match value.get("mediaType").and_then(|v| v.as_str()) {
        Some(mt) if ACCEPTED.contains(&mt) => mt.to_string(),
        Some(other) => return Err(format!("unsupported manifest media type {other}")),
        None => match content_type {
            Some(ct) if ACCEPTED.contains(&ct) => ct.to_string(),
            _ if value.get("manifests").is_some() => OCI_INDEX.to_string(),
            _ => OCI_MANIFEST.to_string(),
        },
    };
    let (field, kind) = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => ("manifests", "index"),
        _ => ("config", "manifest"),
    };
    if value.get(field).is_none() {
        return Err(format!("invalid {kind} ({media_type}): no {field:?}"));
    }
    Ok(media_type)
}

/// The note name under which what a tag resolved to (for a platform) is kept.
fn tag_note_key(whole: &str, want: &Platform) -> String {
    content::sha256_hex(memo_key(whole, want).as_bytes())
}

/// The key of [`Registry::resolved`]'s entry for the reference `whole` (normalised) on
/// `want`.
fn memo_key(whole: &str, want: &Platform) -> String {
    format!("{whole} {want}")
}

/// Picks the entry of an index for `want`.
fn pick_platform<'a>(index: &'a ImageIndex, want: &Platform) -> Result<&'a Descriptor, String> {
    let found = index.manifests().iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            want.accepts(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            )
        })
    });
    found.ok_or_else(|| {
        let have: Vec<String> = index
            .manifests()
            .iter()
            .map(|d| match d.platform() {
                Some(p) => match p.variant() {
                    Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                    None => format!("{}/{}", p.os(), p.architecture()),
                },
                None => "no platform".to_string(),
            })
            .collect();
        format!("no {want} image in the index (has: {})", have.join(", "))
    })
}

/// Pulls images with the settings of a [`Config`].
pub struct Registry {
    config: Config,
    /// Per host, the distribution client (token auth, blobs, push), built when first needed.
    clients: Mutex<HashMap<String, Client>>,
    /// Per host, a plain HTTP client with the same TLS, proxy and timeout settings for the
    /// requests that must be read with a cap (manifests).
    http_clients: Mutex<HashMap<String, reqwest::Client>>,
    /// Hosts that answered a manifest request without auth (their blobs need none either).
    anonymous: Mutex<std::collections::HashSet<String>>,
    /// Where manifests and configs are kept once fetched (the content store), so that a
    /// digest reference resolves without the network and a tag costs one manifest request.
    blobs: Option<content::Store>,
    /// References resolved by this process (a build resolves its base image twice: for
    /// lowering and for the image source).
    resolved: Mutex<HashMap<String, Resolved>>,
    /// Whether a default resolve of a tag is answered from the store while the registry is
    /// asked (`ahead.rs`).
    speculating: std::sync::atomic::AtomicBool,
    /// Whether a default resolve of a tag is answered as `image.resolvemode=local` would be
    /// (`envkit solve --pull missing` on the embedded engine).
    preferring_local: std::sync::atomic::AtomicBool,
    /// Tags so resolved, until their answers are awaited.
    ahead: Mutex<ahead::Ahead>,
    /// One wait for those answers at a time.
    confirming: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn new(config: &Config) -> Registry {
        Registry {
            config: config.clone(),
            clients: Mutex::new(HashMap::new()),
            http_clients: Mutex::new(HashMap::new()),
            anonymous: Mutex::new(std::collections::HashSet::new()),
            blobs: None,
            resolved: Mutex::new(HashMap::new()),
            speculating: std::sync::atomic::AtomicBool::new(false),
            preferring_local: std::sync::atomic::AtomicBool::new(false),
            ahead: Mutex::new(ahead::Ahead::default()),
            confirming: tokio::sync::Mutex::new(()),
        }
    }

    /// Keeps fetched manifests and configs in `store` and reads them back from there.
    pub fn with_store(mut self, store: content::Store) -> Registry {
        self.blobs = Some(store);
        self
    }

    /// A blob from the content store, when there is one and it holds `digest`.
    fn stored(&self, digest: &Digest) -> Option<Vec<u8>> {
        let store = self.blobs.as_ref()?;
        if !store.has(digest) {
            return None;
        }
        store.read_blob(digest).ok()
    }

    /// A note kept beside the content store's blobs (none without a store).
    pub fn note(&self, kind: &str, key: &str) -> Option<String> {
        let bytes = self.blobs.as_ref()?.read_note(kind, key)?;
        String::from_utf8(bytes).ok()
    }

    /// Keeps a note beside the content store's blobs (best effort; nothing without a store).
    pub fn set_note(&self, kind: &str, key: &str, value: &str) {
        if let Some(store) = &self.blobs {
            store.write_note(kind, key, value.as_bytes());
        }
    }

    /// Writes a manifest or config into the content store (best effort: it is a cache).
    fn keep(&self, bytes: &[u8]) {
        if let Some(store) = &self.blobs {
            let _ = store.write_blob(bytes);
        }
    }

    /// What the tag `norm` named on `want` when it was last resolved here (its `tags` note).
    fn named_last_time(&self, norm: &Reference, want: &Platform) -> Option<String> {
        let named = self.note("tags", &tag_note_key(&norm.whole(), want))?;
        Some(named.trim().to_string())
    }

    /// The image `named` (what the tag `norm` named) from the content store alone, under the
    /// tag's name.
    fn stored_as_tag(&self, norm: &Reference, named: &str, want: &Platform) -> Option<Resolved> {
        let pinned = Reference::with_digest(
            norm.registry().to_string(),
            norm.repository().to_string(),
            named.to_string(),
        );
        let mut r = self.resolve_offline(&pinned, want)?;
        r.reference = norm.whole();
        Some(r)
    }

    /// Resolves a digest reference from the content store alone: its manifest (or index and
    /// the platform's manifest), config and every layer must be there.
    fn resolve_offline(&self, norm: &Reference, want: &Platform) -> Option<Resolved> {
        let digest: Digest = norm.digest()?.parse().ok()?;
        let bytes = self.stored(&digest)?;
        let (index_digest, manifest_digest, bytes, manifest, media_type) =
            match classify(&bytes).ok()? {
                Fetched::Manifest(m, mt) => (None, digest, bytes, m, mt),
                Fetched::Index(index) => {
                    let child = pick_platform(&index, want).ok()?.digest().clone();
                    let cbytes = self.stored(&child)?;
                    match classify(&cbytes).ok()? {
                        Fetched::Manifest(m, mt) => (Some(digest), child, cbytes, m, mt),
                        Fetched::Index(_) => return None,
                    }
                }
            };
        let config_descriptor = manifest.config().clone();
        let config_bytes = self.stored(config_descriptor.digest())?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).ok()?;
        let store = self.blobs.as_ref()?;
        if !manifest.layers().iter().all(|l| store.has(l.digest())) {
            return None;
        }
        let registry = norm.registry().to_string();
        Some(Resolved {
            reference: norm.whole(),
            host: endpoint_for(&registry).to_string(),
            repository: norm.repository().to_string(),
            index_digest,
            manifest_digest,
            manifest_media_type: media_type,
            manifest_bytes: bytes,
            layers: manifest.layers().clone(),
            manifest: *manifest,
            config_descriptor,
            config_bytes,
            config,
        })
    }

    fn scheme(&self, host: &str) -> &'static str {
        if self.config.is_plain_http(host) {
            "http"
        } else {
            "https"
        }
    }

    fn manifest_url(&self, host: &str, repo: &str, reference: &str) -> String {
        format!(
            "{}://{host}/v2/{repo}/manifests/{reference}",
            self.scheme(host)
        )
    }

    fn blob_url(&self, host: &str, repo: &str, digest: &str) -> String {
        format!("{}://{host}/v2/{repo}/blobs/{digest}", self.scheme(host))
    }

    /// The client for one host. `section` is the config section whose TLS settings apply (the
    /// registry name for `registry-1.docker.io`, else the host itself).
    /// The credentials for `host` (docker's config and credential helpers; else anonymous).
    fn credentials(&self, host: &str) -> Result<RegistryAuth, RegistryError> {
        auth::credentials_for(host).map_err(|message| RegistryError::Client {
            host: host.to_string(),
            message,
        })
    }

    /// The extra CA certificates configured for a host (`ca` files of its section).
    fn host_cas(
        &self,
        host: &str,
        section: &str,
    ) -> Result<Vec<tls::CertificateDer<'static>>, RegistryError> {
        let mut certs = Vec::new();
        for path in &self.config.registry(section).ca {
            let fail = |message: String| RegistryError::Client {
                host: host.to_string(),
                message: format!("CA file {}: {message}", path.display()),
            };
            let data = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            certs.extend(tls::pem_certs(&data).map_err(fail)?);
        }
        Ok(certs)
    }

    /// The distribution client for one host (built on first use: it reads the system's CA
    /// roots, which a warm build against a plain-http mirror never needs).
    fn client(&self, host: &str, section: &str) -> Result<Client, RegistryError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        let settings = self.config.registry(section);
        let is_http = self.config.is_plain_http(host);
        let mut tls_certs_only = Vec::new();
        if !is_http {
            // The same trust as the plain client: the system's roots (read once per
            // process) and the host's own CAs.
            let der = |c: &tls::CertificateDer<'_>| Certificate {
                encoding: CertificateEncoding::Der,
                data: c.as_ref().to_vec(),
            };
            tls_certs_only.extend(tls::system_roots().iter().map(der));
            tls_certs_only.extend(self.host_cas(host, section)?.iter().map(der));
        }
        let (https_proxy, http_proxy, no_proxy) = proxies_from_env();
        let cc = ClientConfig {
            protocol: if is_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: settings.insecure,
            tls_certs_only,
            https_proxy,
            http_proxy,
            no_proxy,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(300)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(cc).map_err(|e| RegistryError::Client {
            host: host.to_string(),
            message: chain(&e),
        })?;
        clients.insert(host.to_string(), client.clone());
        Ok(client)
    }

    /// The plain HTTP client for one host.
    fn http_client(&self, host: &str, section: &str) -> Result<reqwest::Client, RegistryError> {
        let mut clients = self
            .http_clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        let fail = |message: String| RegistryError::Client {
            host: host.to_string(),
            message,
        };
        let tls = tls::client_config(
            self.host_cas(host, section)?,
            self.config.registry(section).insecure,
        )
        .map_err(fail)?;
        let (https_proxy, http_proxy, no_proxy) = proxies_from_env();
        let http = plain_client(tls, (&https_proxy, &http_proxy, &no_proxy))
            .map_err(|e| fail(chain(&e)))?;
        clients.insert(host.to_string(), http.clone());
        Ok(http)
    }

    /// Resolves a reference to the image manifest for this machine's platform and its
    /// config, trying the mirrors and then the registry itself. The error names every URL
    /// tried.
    pub async fn resolve(&self, reference: &str) -> Result<Resolved, RegistryError> {
        self.resolve_for(reference, &Platform::host()).await
    }

    /// [`Registry::resolve`] for a given platform. A single-platform manifest must be for
    /// that platform.
    pub async fn resolve_for(
        &self,
        reference: &str,
        want: &Platform,
    ) -> Result<Resolved, RegistryError> {
        self.resolve_with(reference, want, ResolveMode::Default)
            .await
    }

    /// [`Registry::resolve_for`] with a resolve mode.
    pub async fn resolve_with(
        &self,
        reference: &str,
        want: &Platform,
        mode: ResolveMode,
    ) -> Result<Resolved, RegistryError> {
        let r = self.resolve_any(reference, want, mode).await?;
        if r.index_digest.is_none() {
            let os = r.config.os().to_string();
            let arch = r.config.architecture().to_string();
            if !want.accepts(&os, &arch, r.config.variant().as_deref()) {
                return Err(RegistryError::Platform {
                    reference: r.reference.clone(),
                    want: want.to_string(),
                    have: format!("{os}/{arch}"),
                });
            }
        }
        Ok(r)
    }

    /// Answers every default resolve of a tag from the store when it has what the tag named
    /// last time (`on`), as `image.resolvemode=local` does: what `--pull missing` asks of a
    /// Definition's image sources that name no mode, without rewriting their ops.
    pub fn prefer_local(&self, on: bool) {
        self.preferring_local
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    async fn resolve_any(
        &self,
        reference: &str,
        want: &Platform,
        mode: ResolveMode,
    ) -> Result<Resolved, RegistryError> {
        let mode = match mode {
            ResolveMode::Default
                if self
                    .preferring_local
                    .load(std::sync::atomic::Ordering::SeqCst) =>
            {
                ResolveMode::PreferLocal
            }
            other => other,
        };
        let norm = normalize(reference)?;
        let whole = norm.whole();
        let memo = memo_key(&whole, want);
        if let Some(hit) = self
            .resolved
            .lock()
            .ok()
            .and_then(|m| m.get(&memo).cloned())
        {
            return Ok(hit);
        }
        if let Some(r) = self.resolve_offline(&norm, want) {
            if let Ok(mut m) = self.resolved.lock() {
                m.insert(memo, r.clone());
            }
            return Ok(r);
        }
        if mode == ResolveMode::Default
            && norm.digest().is_none()
            && self.speculating()
            && let Some(r) = self.resolve_ahead(&norm, want, &memo)
        {
            return Ok(r);
        }
        let tag_note = tag_note_key(&whole, want);
        if mode == ResolveMode::PreferLocal
            && norm.digest().is_none()
            && let Some(r) = self
                .named_last_time(&norm, want)
                .and_then(|named| self.stored_as_tag(&norm, &named, want))
        {
            if let Ok(mut m) = self.resolved.lock() {
                m.insert(memo, r.clone());
            }
            return Ok(r);
        }
        let mut attempts = Vec::new();
        for (endpoint, section) in self.hosts_to_try(norm.registry()) {
            match self.resolve_on(&norm, &endpoint, &section, want).await {
                Ok(r) => {
                    self.keep(&r.manifest_bytes);
                    self.keep(&r.config_bytes);
                    // What the tag named, for `local` resolves later on.
                    if norm.digest().is_none()
                        && let Some(b) = &self.blobs
                    {
                        let named = r.index_digest.as_ref().unwrap_or(&r.manifest_digest);
                        b.write_note("tags", &tag_note, named.to_string().as_bytes());
                    }
                    if let Ok(mut m) = self.resolved.lock() {
                        m.insert(memo, r.clone());
                    }
                    return Ok(r);
                }
                Err(a) => attempts.push(a),
            }
        }
        Err(RegistryError::Resolve {
            reference: whole,
            attempts,
        })
    }

    /// The hosts to try for a registry, in order, each with the config section whose TLS
    /// settings apply to it: its mirrors, then the registry itself (at its endpoint:
    /// `docker.io` is reached as `registry-1.docker.io`; mirrors are reached as written).
    fn hosts_to_try(&self, registry: &str) -> Vec<(String, String)> {
        self.config
            .hosts_for(registry)
            .into_iter()
            .map(|host| {
                if host == registry {
                    (endpoint_for(registry).to_string(), host)
                } else {
                    (host.clone(), host)
                }
            })
            .collect()
    }

    /// Fetches what `norm` names (a manifest or an index, unparsed) from one host: without
    /// auth first when no credentials are configured (one round trip), with the auth dance
    /// when the registry answers 401 or credentials are configured. The failure names the URL.
    async fn manifest_on(
        &self,
        norm: &Reference,
        host: &str,
        section: &str,
    ) -> Result<OnHost, Attempt> {
        let repo = norm.repository().to_string();
        let named = norm
            .digest()
            .map(str::to_string)
            .unwrap_or_else(|| norm.tag().unwrap_or("latest").to_string());
        let url = self.manifest_url(host, &repo, &named);
        let fail = |url: &str, error: String| Attempt {
            url: url.to_string(),
            error,
        };
        let http = self
            .http_client(host, section)
            .map_err(|e| fail(&url, e.to_string()))?;
        let on_host = match norm.digest() {
            Some(d) => Reference::with_digest(host.to_string(), repo.clone(), d.to_string()),
            None => Reference::with_tag(host.to_string(), repo.clone(), named.clone()),
        };
        let creds = self
            .credentials(host)
            .map_err(|e| fail(&url, e.to_string()))?;
        // Without credentials the manifest is asked for at once (one round trip, which is
        // all a warm build costs); only a registry that answers 401 gets the auth dance
        // (its challenge, a token) and the request again. With credentials the dance comes
        // first, as before.
        let mut first = None;
        if matches!(creds, RegistryAuth::Anonymous) {
            match self
                .fetch_manifest(&http, &url, &ManifestAuth::Anonymous, &on_host)
                .await
            {
                Ok(got) => {
                    // It serves pulls without auth: its blobs are fetched the same way (the
                    // distribution client, given no auth, probes nothing).
                    if let Ok(mut open) = self.anonymous.lock() {
                        open.insert(host.to_string());
                    }
                    first = Some(got)
                }
                Err(e) if e == UNAUTHORIZED => {}
                Err(e) => return Err(fail(&url, e)),
            }
        }
        let mut auth = ManifestAuth::Anonymous;
        let (bytes, digest, content_type) = match first {
            Some(got) => got,
            None => {
                auth = self
                    .authenticate(host, section, &on_host, &creds)
                    .await
                    .map_err(|e| fail(&url, e))?;
                self.fetch_manifest(&http, &url, &auth, &on_host)
                    .await
                    .map_err(|e| fail(&url, e))?
            }
        };
        Ok(OnHost {
            http,
            auth,
            on_host,
            repo,
            url,
            bytes,
            digest,
            content_type,
        })
    }

    async fn resolve_on(
        &self,
        norm: &Reference,
        host: &str,
        section: &str,
        want: &Platform,
    ) -> Result<Resolved, Attempt> {
        let OnHost {
            http,
            auth,
            on_host,
            repo,
            url,
            bytes,
            digest,
            ..
        } = self.manifest_on(norm, host, section).await?;
        let fail = |url: &str, error: String| Attempt {
            url: url.to_string(),
            error,
        };
        let (index_digest, manifest_digest, bytes, manifest, media_type) = match classify(&bytes)
            .map_err(|e| fail(&url, e))?
        {
            Fetched::Manifest(m, mt) => (None, digest, bytes, m, mt),
            Fetched::Index(index) => {
                self.keep(&bytes);
                let entry = pick_platform(&index, want).map_err(|e| fail(&url, e))?;
                let child = entry.digest().clone();
                let curl = self.manifest_url(host, &repo, child.as_ref());
                let child_ref =
                    Reference::with_digest(host.to_string(), repo.clone(), child.to_string());
                let (cbytes, cdigest) = match self.stored(&child) {
                    Some(b) => (b, child.clone()),
                    None => {
                        let (b, d, _) = self
                            .fetch_manifest(&http, &curl, &auth, &child_ref)
                            .await
                            .map_err(|e| fail(&curl, e))?;
                        (b, d)
                    }
                };
                match classify(&cbytes).map_err(|e| fail(&curl, e))? {
                    Fetched::Manifest(m, mt) => (Some(digest), cdigest, cbytes, m, mt),
                    Fetched::Index(_) => {
                        return Err(fail(&curl, "nested image indexes are not supported".into()));
                    }
                }
            }
        };

        let config_descriptor = manifest.config().clone();
        let curl = self.blob_url(host, &repo, config_descriptor.digest().as_ref());
        if config_descriptor.size() > MAX_CONFIG_SIZE {
            return Err(fail(
                &curl,
                format!(
                    "image config of {} bytes is too large",
                    config_descriptor.size()
                ),
            ));
        }
        let config_bytes = match self.stored(config_descriptor.digest()) {
            Some(b) => b,
            None => {
                // No more than the descriptor says: a registry that keeps sending is cut off.
                let client = self
                    .client(host, section)
                    .map_err(|e| fail(&curl, e.to_string()))?;
                let mut capped = CappedVec::new(config_descriptor.size());
                client
                    .pull_blob(&on_host, config_descriptor.digest().as_ref(), &mut capped)
                    .await
                    .map_err(|e| fail(&curl, describe(&e)))?;
                capped.buf
            }
        };
        let actual = content::sha256_digest(&config_bytes);
        if actual != *config_descriptor.digest()
            || config_bytes.len() as u64 != config_descriptor.size()
        {
            return Err(fail(
                &curl,
                format!(
                    "image config does not match its descriptor: got {actual} ({} bytes), expected {} ({} bytes)",
                    config_bytes.len(),
                    config_descriptor.digest(),
                    config_descriptor.size()
                ),
            ));
        }
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| fail(&curl, format!("invalid image config: {e}")))?;
        Ok(Resolved {
            reference: norm.whole(),
            host: host.to_string(),
            repository: repo,
            index_digest,
            manifest_digest,
            manifest_media_type: media_type,
            manifest_bytes: bytes,
            layers: manifest.layers().clone(),
            manifest: *manifest,
            config_descriptor,
            config_bytes,
            config,
        })
    }

    /// The distribution client's auth step for a pull from `host`: its challenge, a token
    /// when it hands out tokens; what a manifest request then carries.
    async fn authenticate(
        &self,
        host: &str,
        section: &str,
        on_host: &Reference,
        creds: &RegistryAuth,
    ) -> Result<ManifestAuth, String> {
        let client = self.client(host, section).map_err(|e| e.to_string())?;
        let token = client
            .auth(on_host, creds, RegistryOperation::Pull)
            .await
            .map_err(|e| describe(&e))?;
        Ok(ManifestAuth::of(token, creds))
    }

    /// Fetches a manifest and checks its digest when the reference names one. It is read
    /// with a cap ([`MAX_MANIFEST_SIZE`]): a registry that announces or sends more is cut off.
    /// Returns its bytes, digest and the answer's `Content-Type`.
    async fn fetch_manifest(
        &self,
        http: &reqwest::Client,
        url: &str,
        auth: &ManifestAuth,
        on_host: &Reference,
    ) -> Result<(Vec<u8>, Digest, Option<String>), String> {
        // A registry under load (5xx, 429) gets a few more tries; a refused connection does
        // not (the next mirror, or the error, comes sooner).
        let mut attempt = 0;
        let (bytes, content_type) = loop {
            match get_capped(http, url, auth, MAX_MANIFEST_SIZE).await {
                Ok(b) => break b,
                Err((busy, message)) => {
                    if !busy || attempt >= 2 {
                        return Err(message);
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };
        let actual = content::sha256_digest(&bytes);
        if let Some(want) = on_host.digest()
            && want != actual.as_ref()
        {
            return Err(format!("manifest digest mismatch: got {actual}"));
        }
        Ok((bytes, actual, content_type))
    }

    /// Downloads the config and every layer of `resolved` that the store lacks. Each blob is
    /// checked against its descriptor's digest and size before it enters the store.
    pub async fn pull(
        &self,
        resolved: &Resolved,
        store: &content::Store,
    ) -> Result<(), RegistryError> {
        self.pull_followed(resolved, store).1.await
    }

    /// Fetches the manifest or index `reference` names as it is: an OCI image manifest or
    /// index, or a Docker schema 2 manifest or manifest list, whatever its config (a BuildKit
    /// registry cache's is `application/vnd.buildkit.cacheconfig.v0`). No platform is picked
    /// and no config is fetched. The hosts are tried as [`Registry::resolve`] tries them
    /// (mirrors, then the registry; without auth first, the 401 → auth dance when asked); the
    /// manifest is read with a cap and, when the reference names a digest, checked against it.
    /// The error names every URL tried.
    pub async fn fetch_manifest_raw(&self, reference: &str) -> Result<RawManifest, RegistryError> {
        let norm = normalize(reference)?;
        let mut attempts = Vec::new();
        for (endpoint, section) in self.hosts_to_try(norm.registry()) {
            let got = match self.manifest_on(&norm, &endpoint, &section).await {
                Ok(got) => got,
                Err(a) => {
                    attempts.push(a);
                    continue;
                }
            };
            match raw_media_type(&got.bytes, got.content_type.as_deref()) {
                Ok(media_type) => {
                    return Ok(RawManifest {
                        reference: norm.whole(),
                        host: endpoint,
                        repository: got.repo,
                        digest: got.digest,
                        media_type,
                        bytes: got.bytes,
                    });
                }
                Err(error) => attempts.push(Attempt {
                    url: got.url,
                    error,
                }),
            }
        }
        Err(RegistryError::Resolve {
            reference: norm.whole(),
            attempts,
        })
    }

    /// Downloads every blob of `blobs` that the store lacks from the repository and host that
    /// answered for `raw`, as [`Registry::pull`] downloads layers: several at once, retried
    /// and resumed, each checked against its descriptor's digest and size before it enters
    /// the store.
    pub async fn fetch_blobs(
        &self,
        raw: &RawManifest,
        blobs: &[Descriptor],
        store: &content::Store,
    ) -> Result<(), RegistryError> {
        self.pull_blobs(&Source::of(raw), blobs, store).await
    }

    /// One small blob of `raw`'s repository (a cache config, say) in memory: refused
    /// unread when its descriptor says it is larger than `cap` bytes, cut off when the registry
    /// sends more than the descriptor says, and checked against the descriptor's digest and
    /// size. Taken from the registry's content store when that holds it, and kept there.
    pub async fn fetch_blob_bytes(
        &self,
        raw: &RawManifest,
        desc: &Descriptor,
        cap: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let source = Source::of(raw);
        let digest = desc.digest().to_string();
        let url = self.blob_url(source.host, source.repository, &digest);
        let blob_err = |message: String| RegistryError::Blob {
            reference: raw.reference.clone(),
            digest: digest.clone(),
            url: url.clone(),
            message,
        };
        if desc.size() > cap {
            return Err(blob_err(format!(
                "blob of {} bytes is larger than the {cap}-byte limit",
                desc.size()
            )));
        }
        if let Some(b) = self.stored(desc.digest())
            && b.len() as u64 == desc.size()
        {
            return Ok(b);
        }
        let client = self.client(source.host, section_for(source.host))?;
        let on_host = source.on_host();
        self.authorize_pull(&client, source.host, &on_host).await?;
        let mut attempt = 0u32;
        let bytes = loop {
            // No more than the descriptor says: a registry that keeps sending is cut off.
            let mut capped = CappedVec::new(desc.size());
            let outcome = client
                .pull_blob(&on_host, digest.as_str(), &mut capped)
                .await;
            match outcome {
                Ok(()) => break capped.buf,
                Err(e) => {
                    let failure = if capped.over {
                        Failure::Permanent(capped.over_message())
                    } else {
                        Failure::of(e)
                    };
                    match failure {
                        Failure::Transient(m) if attempt < RETRIES => {
                            let wait = backoff(attempt);
                            tracing::warn!("{digest}: {m}; retrying in {} ms", wait.as_millis());
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        Failure::Transient(m) => {
                            return Err(blob_err(format!(
                                "{m} (gave up after {} attempts)",
                                attempt + 1
                            )));
                        }
                        Failure::Permanent(m) => return Err(blob_err(m)),
                    }
                }
            }
        };
        let actual = content::sha256_digest(&bytes);
        if actual != *desc.digest() || bytes.len() as u64 != desc.size() {
            return Err(blob_err(format!(
                "blob does not match its descriptor: got {actual} ({} bytes), expected {} ({} bytes)",
                bytes.len(),
                desc.digest(),
                desc.size()
            )));
        }
        self.keep(&bytes);
        Ok(bytes)
    }

    /// Authenticates the distribution client for pulls from `host`, unless that host served a
    /// manifest without auth (then its blobs need none either).
    async fn authorize_pull(
        &self,
        client: &Client,
        host: &str,
        on_host: &Reference,
    ) -> Result<(), RegistryError> {
        let open = self
            .anonymous
            .lock()
            .map(|a| a.contains(host))
            .unwrap_or(false);
        if !open {
            let creds = self.credentials(host)?;
            client
                .auth(on_host, &creds, RegistryOperation::Pull)
                .await
                .map_err(|e| RegistryError::Client {
                    host: host.to_string(),
                    message: describe(&e),
                })?;
        }
        Ok(())
    }

    /// Downloads every blob of `blobs` that the store lacks from `source`.
    async fn pull_blobs(
        &self,
        source: &Source<'_>,
        blobs: &[Descriptor],
        store: &content::Store,
    ) -> Result<(), RegistryError> {
        let missing = missing_blobs(blobs, store);
        let taps = missing.iter().map(|_| None).collect();
        self.pull_missing(source, missing, taps, store).await
    }

    /// Downloads `missing` (blobs the store lacks, each once), each telling its tap, where it
    /// has one, how far it got (see [`follow`]).
    async fn pull_missing(
        &self,
        source: &Source<'_>,
        missing: Vec<&Descriptor>,
        taps: Vec<Option<follow::Tap>>,
        store: &content::Store,
    ) -> Result<(), RegistryError> {
        // Several blobs at once (as docker and containerd do); the first failure stops the
        // rest, whose partial downloads stay for the next attempt.
        if missing.is_empty() {
            // Nothing to download: no client, no auth round trip.
            return Ok(());
        }
        let client = self.client(source.host, section_for(source.host))?;
        let on_host = source.on_host();
        self.authorize_pull(&client, source.host, &on_host).await?;
        let futures: Vec<_> = missing
            .into_iter()
            .zip(taps)
            .map(|(blob, tap)| async {
                let tap = tap;
                let r = self
                    .pull_blob(&client, &on_host, source, blob, store, tap.as_ref())
                    .await;
                if let Some(t) = &tap {
                    t.end(match &r {
                        Ok(()) => store.path(blob.digest()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    });
                }
                r
            })
            .collect();
        let mut downloads = futures_util::stream::iter(futures).buffer_unordered(PARALLEL_BLOBS);
        while let Some(r) = downloads.next().await {
            r?;
        }
        Ok(())
    }

    /// Downloads one blob, retrying what a flaky network or registry causes (connection
    /// errors, cut-off bodies, 5xx, 429) with exponential backoff, and resuming from the bytes
    /// already on disk with a range request.
    async fn pull_blob(
        &self,
        client: &Client,
        on_host: &Reference,
        source: &Source<'_>,
        desc: &Descriptor,
        store: &content::Store,
        tap: Option<&follow::Tap>,
    ) -> Result<(), RegistryError> {
        let digest = desc.digest().to_string();
        let url = self.blob_url(source.host, source.repository, &digest);
        let blob_err = |message: String| RegistryError::Blob {
            reference: source.reference.to_string(),
            digest: digest.clone(),
            url: url.clone(),
            message,
        };
        let mut attempt = 0u32;
        let mut restarted = false;
        loop {
            let mut writer = store.resumable_writer(desc.digest())?;
            if writer.written() > desc.size() {
                writer.reset()?;
            }
            if let Some(t) = tap {
                t.file(writer.path(), writer.written());
            }
            let outcome = self.download(client, on_host, desc, &mut writer, tap).await;
            match outcome {
                Ok(()) => match writer.commit(Some((desc.digest(), desc.size()))) {
                    Ok(_) => break,
                    // A resumed download that does not add up: start once from nothing
                    // (the bad partial file is gone with the failed commit).
                    Err(e) if !restarted => {
                        tracing::warn!("{digest}: {e}; downloading it again from the start");
                        restarted = true;
                    }
                    Err(e) => return Err(blob_err(e.to_string())),
                },
                Err(Failure::Permanent(m)) => {
                    writer.discard();
                    return Err(blob_err(m));
                }
                Err(Failure::Transient(m)) => {
                    if attempt >= RETRIES {
                        return Err(blob_err(format!(
                            "{m} (gave up after {} attempts)",
                            attempt + 1
                        )));
                    }
                    let wait = backoff(attempt);
                    tracing::warn!(
                        "{digest}: {m}; retrying in {} ms from byte {}",
                        wait.as_millis(),
                        writer.written()
                    );
                    drop(writer); // keeps the partial file
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
        // Where it came from: a push to the same registry can mount it instead of uploading.
        store.write_note(
            "origin",
            desc.digest().digest(),
            format!("{}\n{}", source.host, source.repository).as_bytes(),
        );
        Ok(())
    }

    /// One attempt: the rest of the blob from `writer.written()` on.
    async fn download(
        &self,
        client: &Client,
        on_host: &Reference,
        desc: &Descriptor,
        writer: &mut content::BlobWriter,
        tap: Option<&follow::Tap>,
    ) -> Result<(), Failure> {
        let digest = desc.digest().to_string();
        let offset = writer.written();
        let mut stream = if offset > 0 && offset < desc.size() {
            let r = client
                .pull_blob_stream_partial(
                    on_host,
                    digest.as_str(),
                    offset,
                    Some(desc.size() - offset),
                )
                .await
                .map_err(Failure::of)?;
            match r {
                oci_client::client::BlobResponse::Partial(s) => s,
                oci_client::client::BlobResponse::Full(s) => {
                    // The registry ignored the range: it all comes again.
                    writer
                        .reset()
                        .map_err(|e| Failure::Permanent(e.to_string()))?;
                    if let Some(t) = tap {
                        t.file(writer.path(), 0);
                    }
                    s
                }
            }
        } else if offset == desc.size() && offset > 0 {
            return Ok(()); // all there already; the commit checks it
        } else {
            client
                .pull_blob_stream(on_host, digest.as_str())
                .await
                .map_err(Failure::of)?
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Transient(chain(&e)))?;
            writer
                .update(&chunk)
                .map_err(|e| Failure::Permanent(e.to_string()))?;
            if let Some(t) = tap {
                t.written(writer.written());
            }
            if writer.written() > desc.size() {
                return Err(Failure::Permanent(format!(
                    "registry sent more than the {} bytes the manifest lists",
                    desc.size()
                )));
            }
        }
        if writer.written() < desc.size() {
            return Err(Failure::Transient(format!(
                "the download ended after {} of {} bytes",
                writer.written(),
                desc.size()
            )));
        }
        Ok(())
    }
}

/// The blobs of `blobs` the store lacks, each once.
fn missing_blobs<'a>(blobs: &'a [Descriptor], store: &content::Store) -> Vec<&'a Descriptor> {
    let mut missing: Vec<&Descriptor> = Vec::new();
    for l in blobs {
        if !store.has(l.digest()) && !missing.iter().any(|m| m.digest() == l.digest()) {
            missing.push(l);
        }
    }
    missing
}

/// Where blobs are pulled from: the repository on the host that answered for a reference.
struct Source<'a> {
    /// The reference, for errors.
    reference: &'a str,
    host: &'a str,
    repository: &'a str,
    /// The manifest the blobs belong to.
    manifest: &'a Digest,
}

impl<'a> Source<'a> {
    fn of(raw: &'a RawManifest) -> Source<'a> {
        Source {
            reference: &raw.reference,
            host: &raw.host,
            repository: &raw.repository,
            manifest: &raw.digest,
        }
    }

    /// The manifest on its host, as the distribution client names it (for auth and blob URLs).
    fn on_host(&self) -> Reference {
        Reference::with_digest(
            self.host.to_string(),
            self.repository.to_string(),
            self.manifest.to_string(),
        )
    }
}

/// Blobs downloaded at once.
const PARALLEL_BLOBS: usize = 4;
/// Retries of one blob after the first attempt.
const RETRIES: u32 = 4;

/// 250 ms, 500 ms, 1 s, 2 s …, with up to a quarter more at random (clients that failed
/// together do not come back together).
fn backoff(attempt: u32) -> std::time::Duration {
    let base = 250u64 << attempt.min(6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    std::time::Duration::from_millis(base + nanos % (base / 4 + 1))
}

/// Why a download attempt failed.
enum Failure {
    /// Worth another try: the network or the registry's load.
    Transient(String),
    Permanent(String),
}

impl Failure {
    fn of(e: oci_client::errors::OciDistributionError) -> Failure {
        use oci_client::errors::OciDistributionError as E;
        let m = describe(&e);
        match &e {
            E::ServerError { code, .. } if *code >= 500 || *code == 429 || *code == 408 => {
                Failure::Transient(m)
            }
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(x.code, oci_client::errors::OciErrorCode::Toomanyrequests)
                }) =>
            {
                Failure::Transient(m)
            }
            E::RequestError(r) if !r.is_builder() && !r.is_redirect() => Failure::Transient(m),
            E::IoError(_) => Failure::Transient(m),
            _ => Failure::Permanent(m),
        }
    }
}

/// A buffer that refuses bytes past `cap` (what a descriptor announced).
struct CappedVec {
    buf: Vec<u8>,
    cap: u64,
    /// Whether more than `cap` bytes came (a registry that does so again would again).
    over: bool,
}

impl CappedVec {
    fn new(cap: u64) -> CappedVec {
        CappedVec {
            buf: Vec::with_capacity(usize::try_from(cap.min(1 << 20)).unwrap_or(0)),
            cap,
            over: false,
        }
    }

    fn over_message(&self) -> String {
        format!(
            "the registry sent more than the {} bytes the descriptor announced",
            self.cap
        )
    }
}

impl tokio::io::AsyncWrite for CappedVec {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.buf.len() as u64 + data.len() as u64 > self.cap {
            self.over = true;
            return std::task::Poll::Ready(Err(std::io::Error::other(self.over_message())));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Whether a descriptor's media type is one of the manifest kinds this module understands.
pub fn is_manifest_media_type(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageManifest | MediaType::ImageIndex)
        || matches!(mt, MediaType::Other(s) if s == DOCKER_MANIFEST || s == DOCKER_MANIFEST_LIST)
}

/// Pieces of the registry stand-ins that tests here and elsewhere serve.
#[cfg(test)]
pub(crate) mod test_http {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The request line and headers of one HTTP request; None when the client went away.
    pub(crate) async fn read_head(c: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            if c.read(&mut b).await.unwrap_or(0) == 0 {
                return None;
            }
            req.push(b[0]);
        }
        Some(req)
    }

    /// Answers `200 OK` with `body` of type `ty`; false when the client went away.
    pub(crate) async fn ok(c: &mut tokio::net::TcpStream, ty: &str, body: &str) -> bool {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.is_ok() && c.write_all(body.as_bytes()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that sends more than a config's descriptor announced is cut off there
    /// (the security issue's defect 11: unbounded reads from registries).
    #[tokio::test]
    async fn a_capped_buffer_refuses_what_the_descriptor_did_not_announce() {
        use tokio::io::AsyncWriteExt;
        let mut v = CappedVec::new(8);
        v.write_all(b"12345678").await.unwrap();
        assert!(v.write_all(b"9").await.is_err());
        assert_eq!(v.buf, b"12345678");
    }

    use super::test_http::{ok, read_head};

    /// A registry stand-in: `/v2/` says no auth is needed; a manifest request gets
    /// `head` and then `body` bytes of `x`, repeated `repeat` times (the connection closes
    /// when the client goes away).
    async fn manifest_server(head: &'static str, body: usize, repeat: usize) -> String {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let Some(req) = read_head(&mut c).await else {
                        return;
                    };
                    if req.starts_with(b"GET /v2/ ") {
                        let _ = c
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                            .await;
                        return;
                    }
                    if c.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'x'; body];
                    for _ in 0..repeat {
                        if c.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn resolve_from(addr: &str) -> Result<Resolved, RegistryError> {
        let text = format!("[registry.\"{addr}\"]\nhttp = true\n");
        let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        Registry::new(&config)
            .resolve(&format!("{addr}/big/manifest:1"))
            .await
    }

    /// The security issue's defect 11: a manifest is read with a cap, whether the registry
    /// announces its size or streams without end.
    #[tokio::test]
    async fn registry_manifests_are_read_with_a_size_cap() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n";
        let cases: [(String, usize, &str); 3] = [
            // Announced: refused before the body is read.
            (
                format!("{ok}Content-Length: 1073741824\r\n\r\n"),
                16384,
                "larger than the 4194304-byte limit",
            ),
            // Unannounced (read to the end of the connection): cut off at the cap.
            (
                format!("{ok}Connection: close\r\n\r\n"),
                usize::MAX,
                "larger than the 4194304-byte limit",
            ),
            // An error answer is read for its message, not to its end.
            (
                "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n".to_string(),
                usize::MAX,
                "HTTP 404",
            ),
        ];
        for (head, repeat, want) in cases {
            let head: &'static str = Box::leak(head.into_boxed_str());
            let addr = manifest_server(head, 1 << 16, repeat).await;
            let e = resolve_from(&addr).await.unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// A warm resolve of a tag from an anonymous registry is one request (the manifest):
    /// no `/v2/` auth probe, no config download, and no client that reads the system's CA
    /// roots. The first resolve also fetches the config, still without probing.
    #[tokio::test]
    async fn a_tag_resolved_again_costs_one_manifest_request() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let p = Platform::host();
        let config = format!(
            r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
            p.architecture
        );
        let cdigest = content::sha256_digest(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cdigest}","size":{}}},"layers":[]}}"#,
            config.len()
        );
        let counts: std::sync::Arc<[AtomicUsize; 3]> = std::sync::Arc::new(Default::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = counts.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (seen, manifest, config) = (seen.clone(), manifest.clone(), config.clone());
                tokio::spawn(async move {
                    while let Some(req) = read_head(&mut c).await {
                        let (i, ty, body) = if req.starts_with(b"GET /v2/ ") {
                            (0, "application/json", "{}".to_string())
                        } else if req.starts_with(b"GET /v2/r/manifests/1 ") {
                            (1, OCI_MANIFEST, manifest.clone())
                        } else {
                            (2, "application/octet-stream", config.clone())
                        };
                        seen[i].fetch_add(1, Ordering::SeqCst);
                        if !ok(&mut c, ty, &body).await {
                            return;
                        }
                    }
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = content::Store::open(dir.path()).unwrap();
        let text = format!("[registry.\"{addr}\"]\nhttp = true\n");
        let cfg = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let reference = format!("{addr}/r:1");
        let first = Registry::new(&cfg).with_store(store.clone());
        let r = first.resolve(&reference).await.unwrap();
        first.pull(&r, &store).await.unwrap();
        let n = |i: usize| counts[i].load(Ordering::SeqCst);
        assert_eq!(
            (n(0), n(1), n(2)),
            (0, 1, 1),
            "manifest, config, no auth probe"
        );
        // A new process (a new client) with the same store: the manifest only.
        let again = Registry::new(&cfg).with_store(store.clone());
        let r2 = again.resolve(&reference).await.unwrap();
        again.pull(&r2, &store).await.unwrap();
        assert_eq!(r2.manifest_digest, r.manifest_digest);
        assert_eq!(
            (n(0), n(1), n(2)),
            (0, 2, 1),
            "one more manifest request only"
        );
        assert!(
            again.clients.lock().unwrap().is_empty(),
            "no distribution client was built"
        );
    }

    /// Docker Hub's flow: `/v2/` answers 401 naming a token realm, the token comes from
    /// there, and the manifest request carries it.
    #[tokio::test]
    async fn manifest_requests_carry_the_bearer_token() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let realm = format!("http://{addr}/token");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let realm = realm.clone();
                tokio::spawn(async move {
                    let Some(req) = read_head(&mut c).await else {
                        return;
                    };
                    let req = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    let (status, extra, body) = if req.starts_with("get /token") {
                        ("200 OK", String::new(), r#"{"token":"t0ken"}"#.to_string())
                    } else if req.contains("authorization: bearer t0ken") {
                        let e = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"the token came"}]}"#;
                        ("404 Not Found", String::new(), e.to_string())
                    } else {
                        let h =
                            format!("WWW-Authenticate: Bearer realm=\"{realm}\",service=\"t\"\r\n");
                        ("401 Unauthorized", h, r#"{"errors":[]}"#.to_string())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = c.write_all(answer.as_bytes()).await;
                });
            }
        });
        let e = resolve_from(&addr).await.unwrap_err().to_string();
        assert!(e.contains("the token came"), "{e}");
    }

    /// A registry stand-in serving `routes` (request path → content type and body) over
    /// keep-alive connections, answering 404 with an error envelope for anything else. Each
    /// request's head is recorded.
    async fn registry_stub(
        routes: Vec<(String, &'static str, String)>,
    ) -> (String, std::sync::Arc<Mutex<Vec<String>>>) {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let routes = std::sync::Arc::new(routes);
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (log, routes) = (log.clone(), routes.clone());
                tokio::spawn(async move {
                    while let Some(req) = read_head(&mut c).await {
                        let head = String::from_utf8_lossy(&req).to_string();
                        log.lock().unwrap().push(head.clone());
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let answered = match routes.iter().find(|(p, ..)| *p == path) {
                            Some((_, ty, body)) => ok(&mut c, ty, body).await,
                            None => {
                                let e = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not here"}]}"#;
                                let answer = format!(
                                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{e}",
                                    e.len()
                                );
                                c.write_all(answer.as_bytes()).await.is_ok()
                            }
                        };
                        if !answered {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn plain_http(hosts: &[&str], extra: &str) -> Config {
        let mut text = String::new();
        for h in hosts {
            text.push_str(&format!("[registry.\"{h}\"]\nhttp = true\n"));
        }
        text.push_str(extra);
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn descriptor(media_type: &str, bytes: &str) -> Descriptor {
        Descriptor::new(
            MediaType::from(media_type),
            bytes.len() as u64,
            content::sha256_digest(bytes.as_bytes()),
        )
    }

    const CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// A BuildKit registry cache (an image manifest whose config is a cacheconfig.v0) is read
    /// as it is, by tag and by digest, with its digest and media type; its config comes back
    /// in memory and its layer goes into the store. So does an index-style cache.
    #[tokio::test]
    async fn a_cache_manifest_is_fetched_raw_with_its_digest() {
        let config = r#"{"layers":[{"blob":"sha256:x"}],"records":[{"digest":"sha256:y"}]}"#;
        let layer = "layer bytes";
        let (cdesc, ldesc) = (descriptor(CACHE_CONFIG, config), descriptor(LAYER, layer));
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CACHE_CONFIG}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{LAYER}","digest":"{}","size":{},"annotations":{{"buildkit/createdat":"2025-01-01T00:00:00Z"}}}}]}}"#,
            cdesc.digest(),
            cdesc.size(),
            ldesc.digest(),
            ldesc.size()
        );
        let mdigest = content::sha256_digest(manifest.as_bytes());
        // BuildKit's older layout: an index listing the config among its manifests (no
        // mediaType of its own here, and a registry that calls it plain JSON).
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{CACHE_CONFIG}","digest":"{}","size":{}}}]}}"#,
            cdesc.digest(),
            cdesc.size()
        );
        let repo = "/v2/envkit-test/cache";
        let routes = vec![
            (
                format!("{repo}/manifests/chain3"),
                OCI_MANIFEST,
                manifest.clone(),
            ),
            (
                format!("{repo}/manifests/{mdigest}"),
                OCI_MANIFEST,
                manifest.clone(),
            ),
            (
                format!("{repo}/manifests/idx"),
                "application/json",
                index.clone(),
            ),
            (
                format!("{repo}/blobs/{}", cdesc.digest()),
                "application/octet-stream",
                config.to_string(),
            ),
            (
                format!("{repo}/blobs/{}", ldesc.digest()),
                "application/octet-stream",
                layer.to_string(),
            ),
        ];
        let (addr, seen) = registry_stub(routes).await;
        let registry = Registry::new(&plain_http(&[&addr], ""));

        let raw = registry
            .fetch_manifest_raw(&format!("{addr}/envkit-test/cache:chain3"))
            .await
            .unwrap();
        assert_eq!(raw.reference, format!("{addr}/envkit-test/cache:chain3"));
        assert_eq!(
            (raw.host.as_str(), raw.repository.as_str()),
            (addr.as_str(), "envkit-test/cache")
        );
        assert_eq!(raw.digest, mdigest);
        assert_eq!(raw.media_type, OCI_MANIFEST);
        assert_eq!(raw.bytes, manifest.as_bytes());
        let head = seen.lock().unwrap()[0].to_ascii_lowercase();
        for ty in ACCEPTED {
            assert!(head.contains(ty), "accept {ty}: {head}");
        }
        assert!(
            !head.contains("authorization"),
            "asked without auth first: {head}"
        );

        let pinned = registry
            .fetch_manifest_raw(&format!("{addr}/envkit-test/cache@{mdigest}"))
            .await
            .unwrap();
        assert_eq!(
            (pinned.digest, pinned.bytes),
            (mdigest, manifest.clone().into_bytes())
        );

        let got = registry
            .fetch_blob_bytes(&raw, &cdesc, 64 << 20)
            .await
            .unwrap();
        assert_eq!(got, config.as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let store = content::Store::open(dir.path()).unwrap();
        registry
            .fetch_blobs(&raw, &[ldesc.clone(), ldesc.clone()], &store)
            .await
            .unwrap();
        assert_eq!(store.read_blob(ldesc.digest()).unwrap(), layer.as_bytes());
        let layer_gets = |seen: &Mutex<Vec<String>>| {
            let want = format!("GET {repo}/blobs/{} ", ldesc.digest());
            seen.lock()
                .unwrap()
                .iter()
                .filter(|h| h.starts_with(&want))
                .count()
        };
        assert_eq!(layer_gets(&seen), 1, "a blob listed twice is fetched once");
        registry
            .fetch_blobs(&raw, std::slice::from_ref(&ldesc), &store)
            .await
            .unwrap();
        assert_eq!(
            layer_gets(&seen),
            1,
            "what the store has is not fetched again"
        );

        let idx = registry
            .fetch_manifest_raw(&format!("{addr}/envkit-test/cache:idx"))
            .await
            .unwrap();
        assert_eq!(idx.media_type, OCI_INDEX);
        assert_eq!(idx.digest, content::sha256_digest(index.as_bytes()));
    }

    /// The mirrors come first and the registry after them; when none has the manifest (or
    /// what one has is no manifest), the error names every URL tried.
    #[tokio::test]
    async fn a_raw_manifest_is_looked_for_on_the_mirrors_then_the_registry() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{CACHE_CONFIG}","digest":"sha256:{a}","size":1}},"layers":[]}}"#,
            a = "a".repeat(64)
        );
        let (mirror, _) = registry_stub(vec![(
            "/v2/c/manifests/schema1".to_string(),
            "application/json",
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(),
        )])
        .await;
        let (origin, _) = registry_stub(vec![(
            "/v2/c/manifests/t".to_string(),
            DOCKER_MANIFEST,
            manifest.clone(),
        )])
        .await;
        let mirrors = format!("mirrors = [\"http://{mirror}\"]\n");
        let cfg = plain_http(&[&origin], &mirrors);
        let registry = Registry::new(&cfg);
        let raw = registry
            .fetch_manifest_raw(&format!("{origin}/c:t"))
            .await
            .unwrap();
        assert_eq!(raw.host, origin, "the mirror had nothing");
        assert_eq!(raw.media_type, DOCKER_MANIFEST);
        for (tag, mirror_says) in [
            ("gone", "not here"),
            ("schema1", "unsupported manifest schemaVersion 1"),
        ] {
            let e = registry
                .fetch_manifest_raw(&format!("{origin}/c:{tag}"))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "http://{mirror}/v2/c/manifests/{tag} ({mirror_says}"
                )),
                "{e}"
            );
            assert!(
                e.contains(&format!("http://{origin}/v2/c/manifests/{tag} (not here")),
                "{e}"
            );
        }
    }

    /// A blob whose bytes are not the ones its digest names is refused, and nothing of it
    /// stays in the store; a blob larger than the caller's cap is not even asked for.
    #[tokio::test]
    async fn a_blob_that_does_not_match_its_digest_is_refused() {
        let good = "the bytes the digest names";
        let desc = descriptor(LAYER, good);
        let bad = "X".repeat(good.len());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CACHE_CONFIG}","digest":"{}","size":{}}},"layers":[]}}"#,
            desc.digest(),
            desc.size()
        );
        let routes = vec![
            ("/v2/c/manifests/t".to_string(), OCI_MANIFEST, manifest),
            (
                format!("/v2/c/blobs/{}", desc.digest()),
                "application/octet-stream",
                bad,
            ),
            (
                format!("/v2/c/blobs/{}", content::sha256_digest(b"abc")),
                "application/octet-stream",
                "abcdef".to_string(),
            ),
        ];
        let (addr, seen) = registry_stub(routes).await;
        let registry = Registry::new(&plain_http(&[&addr], ""));
        let raw = registry
            .fetch_manifest_raw(&format!("{addr}/c:t"))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = content::Store::open(dir.path()).unwrap();

        let e = registry
            .fetch_blobs(&raw, std::slice::from_ref(&desc), &store)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Blob { .. }), "{e}");
        assert!(e.to_string().contains(&desc.digest().to_string()), "{e}");
        assert!(!store.has(desc.digest()), "nothing entered the store");
        let leftovers: Vec<_> = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().display().to_string())
            .collect();
        assert!(
            leftovers
                .iter()
                .all(|p| !p.contains(desc.digest().digest())),
            "{leftovers:?}"
        );

        let e = registry
            .fetch_blob_bytes(&raw, &desc, 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Blob { .. }), "{e}");

        // One that sends more than its descriptor says is cut off there, and not asked again.
        let short = descriptor(LAYER, "abc");
        let more_url = format!("GET /v2/c/blobs/{} ", short.digest());
        let gets = |seen: &Mutex<Vec<String>>| {
            let seen = seen.lock().unwrap();
            seen.iter().filter(|h| h.starts_with(&more_url)).count()
        };
        let e = registry
            .fetch_blob_bytes(&raw, &short, 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 3 bytes"), "{e}");
        assert_eq!(gets(&seen), 1, "not retried");
        let e = registry
            .fetch_blobs(&raw, std::slice::from_ref(&short), &store)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the 3 bytes"), "{e}");
        assert_eq!(gets(&seen), 2, "not retried");
        assert!(!store.has(short.digest()));

        let asked = seen.lock().unwrap().len();
        let e = registry
            .fetch_blob_bytes(&raw, &desc, desc.size() - 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), asked, "refused unread");
    }

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
            ("busybox", "docker.io/library/busybox:latest"),
            ("user/app:1", "docker.io/user/app:1"),
            (
                "127.0.0.1:5000/library/busybox",
                "127.0.0.1:5000/library/busybox:latest",
            ),
            ("ghcr.io/o/r:t", "ghcr.io/o/r:t"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap().whole(), want, "{input}");
        }
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        let r = normalize(&d).unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(
            r.digest(),
            Some(format!("sha256:{}", "a".repeat(64)).as_str())
        );
        assert!(normalize("Busybox").is_err());
        assert!(normalize("busybox:a b").is_err());
        assert!(normalize("").is_err());
    }

    #[test]
    fn docker_hub_endpoint() {
        assert_eq!(endpoint_for("docker.io"), "registry-1.docker.io");
        assert_eq!(endpoint_for("quay.io"), "quay.io");
    }

    fn amd64() -> Platform {
        Platform::linux_amd64()
    }

    #[test]
    fn classifies_manifests_and_picks_amd64() {
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","size":1,"digest":"sha256:{a}","platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","size":2,"digest":"sha256:{b}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            a = "a".repeat(64),
            b = "b".repeat(64)
        );
        match classify(list.as_bytes()).unwrap() {
            Fetched::Index(i) => {
                let d = pick_platform(&i, &amd64()).unwrap();
                assert_eq!(d.size(), 2);
                let arm = Platform::linux_arm64();
                assert_eq!(
                    pick_platform(&i, &arm).unwrap().size(),
                    1,
                    "arm64/v8 is arm64"
                );
                let v7 = Platform::new("linux", "arm", "v7");
                assert!(pick_platform(&i, &v7).is_err(), "no arm/v7 image");
            }
            Fetched::Manifest(..) => panic!("expected an index"),
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":3,"digest":"sha256:{c}"}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":4,"digest":"sha256:{c}"}}]}}"#,
            c = "c".repeat(64)
        );
        match classify(manifest.as_bytes()).unwrap() {
            Fetched::Manifest(m, mt) => {
                assert_eq!(mt, DOCKER_MANIFEST);
                assert_eq!(m.layers().len(), 1);
            }
            Fetched::Index(_) => panic!("expected a manifest"),
        }
        let arm_only = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","size":1,"digest":"sha256:{a}","platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
            a = "a".repeat(64)
        );
        match classify(arm_only.as_bytes()).unwrap() {
            Fetched::Index(i) => {
                let e = pick_platform(&i, &amd64()).unwrap_err();
                assert!(e.contains("linux/arm64"), "{e}");
            }
            Fetched::Manifest(..) => panic!("expected an index"),
        }
        assert!(classify(br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        assert!(classify(b"not json").is_err());
    }

    #[test]
    fn resolve_error_lists_every_url() {
        let e = RegistryError::Resolve {
            reference: "docker.io/library/x:1".into(),
            attempts: vec![
                Attempt {
                    url: "http://127.0.0.1:5000/v2/library/x/manifests/1".into(),
                    error: "manifest unknown".into(),
                },
                Attempt {
                    url: "https://registry-1.docker.io/v2/library/x/manifests/1".into(),
                    error: "connection refused".into(),
                },
            ],
        };
        let s = e.to_string();
        assert!(s.contains("docker.io/library/x:1"));
        assert!(s.contains("http://127.0.0.1:5000/v2/library/x/manifests/1"));
        assert!(s.contains("https://registry-1.docker.io/v2/library/x/manifests/1"));
    }

    #[test]
    fn loopback_never_proxied() {
        let (_, _, no_proxy) = proxies_from_env();
        let no_proxy = no_proxy.unwrap_or_default();
        assert!(no_proxy.split(',').any(|h| h == "127.0.0.1"));
        assert!(no_proxy.split(',').any(|h| h == "localhost"));
    }
}
