//! SourceOp `git://`: a checkout made with the system `git`, as the host user. The ref is
//! resolved to a commit first (`git ls-remote`, skipped for a full commit id), and the
//! commit is what the result is keyed by; then only that commit is fetched (shallow where the
//! server allows it), submodules included, and copied into a snapshot — without `.git`
//! unless `git.keepgitdir` asks for it, and only `subdir` when the fragment names one.
//!
//! Credentials come from the build's secrets (`git.authtokensecret`, `git.authheadersecret`)
//! and reach git through `GIT_CONFIG_*` variables, never its arguments; an SSH remote uses the
//! agent given with `--ssh` for `git.mountsshsock`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::SnapRef;
use crate::solver::Outcome;

/// What a git source asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    url: String,
    git_ref: String,
    subdir: String,
    keep_git_dir: bool,
    checksum: Option<String>,
    token_secret: Option<String>,
    header_secret: Option<String>,
    ssh_id: Option<String>,
}

fn want(id: &str, attrs: &BTreeMap<String, String>) -> Result<Want, OpsError> {
    let rest = id.strip_prefix("git://").unwrap_or(id);
    let (remote, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (git_ref, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let url = match attrs.get("git.fullurl").filter(|u| !u.is_empty()) {
        Some(u) => u.clone(),
        None => format!("https://{remote}"),
    };
    if url.starts_with('-') || git_ref.starts_with('-') {
        return Err(OpsError::Invalid(format!(
            "git source {id:?}: bad URL or ref"
        )));
    }
    let subdir = subdir.trim_matches('/').to_string();
    if subdir.split('/').any(|c| c == "..") {
        return Err(OpsError::Invalid(format!(
            "git source {id:?}: subdir {subdir:?} leaves the repository"
        )));
    }
    let attr = |k: &str| attrs.get(k).filter(|v| !v.is_empty()).cloned();
    Ok(Want {
        url,
        git_ref: git_ref.to_string(),
        subdir,
        keep_git_dir: attrs.get("git.keepgitdir").is_some_and(|v| v == "true"),
        checksum: attr("git.checksum"),
        token_secret: attr("git.authtokensecret"),
        header_secret: attr("git.authheadersecret"),
        ssh_id: attr("git.mountsshsock"),
    })
}

fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The environment git runs with: no prompts, the worker's CA bundle, credentials from
/// secrets (when the build has them), the ssh agent.
fn git_env(ctx: &Ctx, w: &Want) -> Result<Vec<(String, String)>, OpsError> {
    let mut env = vec![("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())];
    if let Some(ca) = &ctx.worker.ca_bundle {
        env.push((
            "GIT_SSL_CAINFO".to_string(),
            ca.to_string_lossy().into_owned(),
        ));
    }
    let secret = |id: &Option<String>| -> Result<Option<String>, OpsError> {
        let Some(id) = id else { return Ok(None) };
        match ctx.secrets.get(id) {
            None => Ok(None),
            Some(s) => String::from_utf8(s.0.clone())
                .map(|v| Some(v.trim().to_string()))
                .map_err(|_| OpsError::Invalid(format!("secret {id:?} is not UTF-8"))),
        }
    };
    let header = match (secret(&w.header_secret)?, secret(&w.token_secret)?) {
        (Some(h), _) => Some(h),
        (None, Some(token)) => Some(format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        )),
        (None, None) => None,
    };
    if let Some(h) = header
        && (w.url.starts_with("https://") || w.url.starts_with("http://"))
    {
        env.push(("GIT_CONFIG_COUNT".to_string(), "1".to_string()));
        env.push((
            "GIT_CONFIG_KEY_0".to_string(),
            format!("http.{}.extraheader", w.url),
        ));
        env.push((
            "GIT_CONFIG_VALUE_0".to_string(),
            format!("Authorization: {h}"),
        ));
    }
    if let Some(id) = &w.ssh_id
        && let Some(sock) = ctx.ssh.get(id)
    {
        env.push((
            "SSH_AUTH_SOCK".to_string(),
            sock.to_string_lossy().into_owned(),
        ));
    }
    Ok(env)
}

/// Runs git; its output on failure becomes the error.
async fn git(
    env: &[(String, String)],
    dir: Option<&Path>,
    args: &[&str],
    what: &str,
) -> Result<String, OpsError> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| OpsError::Git {
        what: what.to_string(),
        message: format!("cannot run git: {e} (is git installed?)"),
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(OpsError::Git {
            what: what.to_string(),
            message: format!(
                "git {} failed ({}): {}",
                args[0],
                out.status,
                tail.join(" | ")
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `w.git_ref` names on the remote (HEAD when empty).
async fn resolve(env: &[(String, String)], w: &Want) -> Result<String, OpsError> {
    if is_commit(&w.git_ref) {
        return Ok(w.git_ref.to_lowercase());
    }
    let what = format!("resolving {} of {}", ref_name(w), w.url);
    let want = if w.git_ref.is_empty() {
        "HEAD"
    } else {
        &w.git_ref
    };
    let out = git(env, None, &["ls-remote", "--", &w.url, want], &what).await?;
    // Prefer an exact ref, then a peeled tag (`^{}`), then any match (refs/heads/x, refs/tags/x).
    let lines: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    let pick = |pred: &dyn Fn(&str) -> bool| lines.iter().find(|(_, r)| pred(r)).map(|(c, _)| *c);
    let peeled = format!("refs/tags/{want}^{{}}");
    let commit = pick(&|r| r == peeled)
        .or_else(|| pick(&|r| r == want))
        .or_else(|| pick(&|r| r == format!("refs/heads/{want}")))
        .or_else(|| pick(&|r| r == format!("refs/tags/{want}")))
        .or_else(|| lines.first().map(|(c, _)| *c));
    match commit {
        Some(c) if is_commit(c) => Ok(c.to_string()),
        _ => Err(OpsError::Git {
            what,
            message: format!("no ref {want:?} on the remote"),
        }),
    }
}

fn ref_name(w: &Want) -> &str {
    if w.git_ref.is_empty() {
        "HEAD"
    } else {
        &w.git_ref
    }
}

pub(super) async fn run(ctx: &Ctx, id: &str, src: &pb::SourceOp) -> Result<Outcome<Res>, OpsError> {
    let w = want(id, &src.attrs)?;
    let env = git_env(ctx, &w)?;
    let commit = resolve(&env, &w).await?;
    if let Some(ck) = &w.checksum
        && !commit.starts_with(&ck.to_lowercase())
    {
        return Err(OpsError::Git {
            what: format!("checking {} of {}", ref_name(&w), w.url),
            message: format!("it is commit {commit}, not {ck}"),
        });
    }
    let keep = if w.keep_git_dir { "keep-git-dir" } else { "" };
    let key = ctx.cache_key(&[], &[&commit, &w.subdir, keep]);
    let key = &key;
    ctx.resolve_one(key, |prepared| async move {
        let tmp = ctx.worker.snapshots.temp_dir()?;
        let repo = tmp.path().join("repo");
        let repo_s = repo.to_string_lossy().into_owned();
        let what = format!("fetching {} of {}", ref_name(&w), w.url);
        git(&env, None, &["init", "-q", &repo_s], &what).await?;
        git(
            &env,
            Some(&repo),
            &["remote", "add", "origin", &w.url],
            &what,
        )
        .await?;
        // Shallow by commit; servers that refuse an unadvertised commit get the ref itself, and
        // dumb ones a full fetch.
        let by_commit = git(
            &env,
            Some(&repo),
            &["fetch", "-q", "--depth", "1", "origin", &commit],
            &what,
        )
        .await;
        if by_commit.is_err() {
            let by_ref = if w.git_ref.is_empty() || is_commit(&w.git_ref) {
                Err(OpsError::Invalid(String::new()))
            } else {
                git(
                    &env,
                    Some(&repo),
                    &["fetch", "-q", "--depth", "1", "origin", &w.git_ref],
                    &what,
                )
                .await
            };
            if by_ref.is_err() {
                git(
                    &env,
                    Some(&repo),
                    &["fetch", "-q", "--tags", "origin"],
                    &what,
                )
                .await?;
            }
        }
        git(
            &env,
            Some(&repo),
            &["checkout", "-q", "--detach", &commit],
            &what,
        )
        .await?;
        if repo.join(".gitmodules").exists() {
            git(
                &env,
                Some(&repo),
                &[
                    "submodule",
                    "update",
                    "-q",
                    "--init",
                    "--recursive",
                    "--depth",
                    "1",
                ],
                &format!("{what}: submodules"),
            )
            .await?;
        }
        let from = if w.subdir.is_empty() {
            repo.clone()
        } else {
            repo.join(&w.subdir)
        };
        if !from.is_dir() {
            return Err(OpsError::Git {
                what,
                message: format!("commit {commit} has no directory {}", w.subdir),
            });
        }
        let filter = if w.keep_git_dir && w.subdir.is_empty() {
            rootless::patterns::Filter::default()
        } else {
            rootless::patterns::Filter::from_lists(&[], &[".git".to_string()])
        };
        let dest = prepared.fs.clone();
        tokio::task::spawn_blocking(move || super::context::copy_tree(&from, &dest, &filter))
            .await
            .map_err(|e| OpsError::Invalid(e.to_string()))??;
        drop(tmp);
        Ok(SnapRef {
            chain: vec![key.clone()],
            base: None,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identifiers_like_buildkit() {
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "git.fullurl".to_string(),
            "https://github.com/moby/buildkit.git".to_string(),
        );
        attrs.insert("git.keepgitdir".to_string(), "true".to_string());
        attrs.insert(
            "git.authtokensecret".to_string(),
            "GIT_AUTH_TOKEN".to_string(),
        );
        let w = want(
            "git://github.com/moby/buildkit.git#v0.32.2:docs/dev",
            &attrs,
        )
        .unwrap();
        assert_eq!(w.url, "https://github.com/moby/buildkit.git");
        assert_eq!(
            (w.git_ref.as_str(), w.subdir.as_str()),
            ("v0.32.2", "docs/dev")
        );
        assert!(w.keep_git_dir);
        assert_eq!(w.token_secret.as_deref(), Some("GIT_AUTH_TOKEN"));
        let bare = want("git://example.org/x/y", &BTreeMap::new()).unwrap();
        assert_eq!(bare.url, "https://example.org/x/y");
        assert_eq!(bare.git_ref, "");
        assert!(want("git://h/r#main:../../etc", &BTreeMap::new()).is_err());
        assert!(want("git://h/r#--upload-pack=x", &BTreeMap::new()).is_err());
        assert!(is_commit(&"a".repeat(40)) && !is_commit("main"));
    }
}
