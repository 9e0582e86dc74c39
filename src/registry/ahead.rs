//! Tags resolved ahead of the registry's answer: with the default resolve, a build on this
//! machine's engine takes a base image's tag from the store (what it named last time, when
//! the store holds that whole image) and asks the registry what it names now at the same
//! time. The engine goes on with what it can undo (keys, cache lookups) and waits for the
//! answer before it builds a step or records an image ([`Registry::confirm_tags`]). When the
//! tag has moved, that wait fails, [`Registry::moved`] says so, and the caller compiles again:
//! the second time the registry is asked first, as without this.

use std::sync::atomic::Ordering;

use oci_client::secrets::RegistryAuth;
use oci_spec::image::Digest;

use super::{
    MAX_MANIFEST_SIZE, ManifestAuth, Reference, Registry, RegistryError, ResolveMode, Resolved,
    get_capped,
};
use crate::content;
use crate::platform::Platform;

/// A tag taken from the store whose registry has not answered yet.
pub(super) struct Pending {
    /// The key of [`Registry::resolved`]'s entry.
    memo: String,
    reference: String,
    platform: Platform,
    /// What the tag named last time: an index's or a manifest's digest.
    named: Digest,
    /// The host asked first (a mirror, or the registry).
    host: String,
    /// Its answer to an anonymous manifest request (one try: anything else is asked again
    /// the usual way when the answer is awaited).
    answer: tokio::task::JoinHandle<Answer>,
}

/// What [`get_capped`] returns: the manifest and its media type, or whether to try again and
/// why not.
type Answer = Result<(Vec<u8>, Option<String>), (bool, String)>;

/// The state of tags resolved ahead.
#[derive(Default)]
pub(super) struct Ahead {
    pending: Vec<Pending>,
    /// Why the last wait failed: every later wait fails the same way until
    /// [`Registry::speculate`] starts afresh.
    failed: Option<String>,
    moved: bool,
}

impl Registry {
    /// Whether a default resolve of a tag may be answered from the store while the registry is
    /// asked (`on`), for an engine that calls [`Registry::confirm_tags`] before it builds or
    /// records anything. Either way this forgets what was pending or failed.
    pub fn speculate(&self, on: bool) {
        self.speculating.store(on, Ordering::SeqCst);
        *self.ahead_state() = Ahead::default();
    }

    /// The state of tags resolved ahead (a panic elsewhere while it was held leaves it as it
    /// was: nothing pending may be skipped because of one).
    fn ahead_state(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.ahead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether tags are resolved ahead of the registry's answer now.
    pub fn speculating(&self) -> bool {
        self.speculating.load(Ordering::SeqCst)
    }

    /// Whether a tag resolved ahead turned out to name another image now (the build must be
    /// compiled again).
    pub fn moved(&self) -> bool {
        self.ahead_state().moved
    }

    /// `norm` (a tag) as it was last time, with the registry asked meanwhile; `None` where
    /// that cannot be done (nothing remembered, the image not all in the store, credentials
    /// configured for the first host, no runtime): the caller then asks the usual way.
    pub(super) fn resolve_ahead(
        &self,
        norm: &Reference,
        want: &Platform,
        memo: &str,
    ) -> Option<Resolved> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let last = self.named_last_time(norm, want)?;
        let named: Digest = last.parse().ok()?;
        let (host, section) = self.hosts_to_try(norm.registry()).into_iter().next()?;
        if !matches!(self.credentials(&host).ok()?, RegistryAuth::Anonymous) {
            return None;
        }
        let http = self.http_client(&host, &section).ok()?;
        let url = self.manifest_url(&host, norm.repository(), norm.tag().unwrap_or("latest"));
        // Asked first, the registry answers while the store is read.
        let answer = runtime.spawn(async move {
            get_capped(&http, &url, &ManifestAuth::Anonymous, MAX_MANIFEST_SIZE).await
        });
        let Some(mut r) = self.stored_as_tag(norm, &last, want) else {
            answer.abort();
            return None;
        };
        r.host = host.clone();
        self.ahead_state().pending.push(Pending {
            memo: memo.to_string(),
            reference: r.reference.clone(),
            platform: want.clone(),
            named,
            host,
            answer,
        });
        if let Ok(mut m) = self.resolved.lock() {
            m.insert(memo.to_string(), r.clone());
        }
        Some(r)
    }

    /// Resolves `reference` ahead when it is a tag that can be (see
    /// [`Registry::resolve_ahead`]), and does nothing otherwise: never a wait for the network.
    /// For a base image a build named last time, asked for before the build file says it again.
    pub fn ask_ahead(&self, reference: &str, want: &Platform) {
        let Ok(norm) = super::normalize(reference) else {
            return;
        };
        let memo = super::memo_key(&norm.whole(), want);
        let known = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&memo);
        if self.speculating() && norm.digest().is_none() && !known {
            self.resolve_ahead(&norm, want, &memo);
        }
    }

    /// Drops what [`Registry::ask_ahead`] started for `reference` when the build does not
    /// use it after all: its answer is not waited for, and a later resolve asks again.
    pub fn forget_ahead(&self, reference: &str, want: &Platform) {
        let Ok(norm) = super::normalize(reference) else {
            return;
        };
        let memo = super::memo_key(&norm.whole(), want);
        let mut a = self.ahead_state();
        let before = a.pending.len();
        a.pending.retain(|p| {
            let keep = p.memo != memo;
            if !keep {
                p.answer.abort();
            }
            keep
        });
        let dropped = a.pending.len() != before;
        drop(a);
        if dropped {
            self.resolved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&memo);
        }
    }

    /// Waits for the registry's answer on every tag resolved ahead and turns resolving ahead
    /// off. An error when a tag names another image now ([`Registry::moved`] is then true) or
    /// the registry cannot say what it names (the error a resolve would have given).
    pub async fn confirm_tags(&self) -> Result<(), RegistryError> {
        let _one_at_a_time = self.confirming.lock().await;
        self.speculating.store(false, Ordering::SeqCst);
        let pending = {
            let mut a = self.ahead_state();
            if let Some(why) = &a.failed {
                return Err(RegistryError::Unconfirmed(why.clone()));
            }
            std::mem::take(&mut a.pending)
        };
        for p in pending {
            if let Err(e) = self.confirm(p).await {
                let mut a = self.ahead_state();
                a.failed = Some(e.to_string());
                a.moved = matches!(e, RegistryError::TagMoved { .. });
                return Err(e);
            }
        }
        Ok(())
    }

    async fn confirm(&self, p: Pending) -> Result<(), RegistryError> {
        let forget = || {
            self.resolved
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&p.memo);
        };
        let now = match p.answer.await {
            Ok(Ok((bytes, _))) => {
                if let Ok(mut open) = self.anonymous.lock() {
                    open.insert(p.host.clone());
                }
                let now = content::sha256_digest(&bytes);
                if now != p.named {
                    // Compiled again, the build asks for what the tag names now.
                    forget();
                }
                now
            }
            // Refused, unauthorized, busy: asked again the usual way (every mirror, the auth
            // step, retries), whose answer or error stands; what it resolved stays in the
            // memo for the build compiled again.
            _ => {
                forget();
                let r = self
                    .resolve_any(&p.reference, &p.platform, ResolveMode::Default)
                    .await?;
                r.index_digest.unwrap_or(r.manifest_digest)
            }
        };
        if now == p.named {
            return Ok(());
        }
        Err(RegistryError::TagMoved {
            reference: p.reference,
            was: p.named.to_string(),
            now: now.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::test_http::{ok, read_head};
    use super::super::{OCI_MANIFEST, Registry, RegistryError};
    use crate::config::Config;
    use crate::content;
    use crate::platform::Platform;

    /// An image with no layers whose config says `marker`: its manifest and config.
    fn image(marker: &str) -> (String, String) {
        let p = Platform::host();
        let config = format!(
            r#"{{"architecture":"{}","os":"linux","config":{{"Env":["M={marker}"]}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#,
            p.architecture
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            content::sha256_digest(config.as_bytes()),
            config.len()
        );
        (manifest, config)
    }

    /// A registry whose tag `r:1` names image `a` or `b` (`names`: 0, 1), or answers 404
    /// (2); it counts manifest requests.
    async fn registry(names: Arc<AtomicUsize>, asked: Arc<AtomicUsize>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let images = [image("a"), image("b")];
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let (names, asked, images) = (names.clone(), asked.clone(), images.clone());
                tokio::spawn(async move {
                    while let Some(req) = read_head(&mut c).await {
                        let answered = if req.starts_with(b"GET /v2/r/manifests/1 ") {
                            asked.fetch_add(1, Ordering::SeqCst);
                            match images.get(names.load(Ordering::SeqCst)) {
                                Some((m, _)) => ok(&mut c, OCI_MANIFEST, m).await,
                                None => {
                                    let _ = tokio::io::AsyncWriteExt::write_all(
                                        &mut c,
                                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                                    )
                                    .await;
                                    true
                                }
                            }
                        } else {
                            let head = String::from_utf8_lossy(&req).to_string();
                            let config = images
                                .iter()
                                .map(|(_, c)| c)
                                .find(|c| {
                                    head.contains(
                                        content::sha256_digest(c.as_bytes()).as_ref() as &str
                                    )
                                })
                                .cloned()
                                .unwrap_or_default();
                            ok(&mut c, "application/octet-stream", &config).await
                        };
                        if !answered {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A tag resolved ahead is what it named last time, with no wait; the wait for the
    /// registry's answer passes while the tag names the same image, and fails, saying so
    /// (and [`Registry::moved`]), once it names another; the build compiled again then asks
    /// the registry first and gets the new image. A registry that cannot answer gives a
    /// resolve's own error at the wait.
    #[tokio::test]
    async fn a_tag_resolved_ahead_is_confirmed_or_found_moved() {
        let (names, asked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let addr = registry(names.clone(), asked.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let store = content::Store::open(dir.path()).unwrap();
        let text = format!("[registry.\"{addr}\"]\nhttp = true\n");
        let cfg = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let reference = format!("{addr}/r:1");
        let process = || {
            let r = Registry::new(&cfg).with_store(store.clone());
            r.speculate(true);
            r
        };
        let env = |r: &super::Resolved| r.config.config().as_ref().and_then(|c| c.env().clone());

        // Nothing remembered yet: asked the usual way.
        let first = process();
        let a = first.resolve(&reference).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        first.confirm_tags().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1, "nothing was pending");

        // Unchanged: the store's answer, confirmed by one request.
        let same = process();
        let r = same.resolve(&reference).await.unwrap();
        assert_eq!(r.manifest_digest, a.manifest_digest);
        same.confirm_tags().await.unwrap();
        assert!(!same.moved() && !same.speculating());
        assert_eq!(asked.load(Ordering::SeqCst), 2);

        // Moved: the wait fails, and keeps failing, until the build starts again.
        names.store(1, Ordering::SeqCst);
        let moved = process();
        let r = moved.resolve(&reference).await.unwrap();
        assert_eq!(env(&r), Some(vec!["M=a".to_string()]));
        let e = moved.confirm_tags().await.unwrap_err();
        assert!(matches!(e, RegistryError::TagMoved { .. }), "{e}");
        assert!(e.to_string().contains(&reference), "{e}");
        assert!(moved.moved());
        assert!(
            moved.confirm_tags().await.is_err(),
            "a later wait fails too"
        );
        moved.speculate(false);
        let b = moved.resolve(&reference).await.unwrap();
        assert_eq!(env(&b), Some(vec!["M=b".to_string()]));
        moved.confirm_tags().await.unwrap();

        // No answer: the resolve's error, naming the URL.
        names.store(2, Ordering::SeqCst);
        let gone = process();
        gone.resolve(&reference).await.unwrap();
        let e = gone.confirm_tags().await.unwrap_err();
        assert!(matches!(e, RegistryError::Resolve { .. }), "{e}");
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        assert!(!gone.moved());

        // Asked ahead for a base the build file no longer names: dropped, not waited for.
        let unused = process();
        unused.ask_ahead(&reference, &Platform::host());
        unused.forget_ahead(&reference, &Platform::host());
        unused.confirm_tags().await.unwrap();
        // Asked ahead and then resolved: the same answer, waited for.
        let named = process();
        named.ask_ahead(&reference, &Platform::host());
        let r = named.resolve(&reference).await.unwrap();
        assert_eq!(r.manifest_digest, b.manifest_digest);
        assert!(
            named.confirm_tags().await.is_err(),
            "the 404 was not waited for"
        );
    }
}
