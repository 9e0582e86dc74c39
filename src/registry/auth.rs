//! Registry credentials, from where docker, podman and buildctl users keep them:
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`): `auths` entries (`auth` =
//! base64 `user:password`, or `username`/`password`, or `identitytoken`), and credential
//! helpers (`credHelpers` per host, `credsStore` for all) run as `docker-credential-<name>
//! get`. Nothing found means anonymous (the token flow still gets an anonymous token).
//! Credentials never reach a log: errors name the host and the helper, not the secret.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Where the docker config is.
fn config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The names a host may be filed under (Docker Hub has several).
fn keys_for(host: &str) -> Vec<String> {
    let mut v = vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{host}/v1/"),
        format!("https://{host}/v2/"),
    ];
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        v.extend(
            [
                "https://index.docker.io/v1/",
                "index.docker.io",
                "docker.io",
                "registry-1.docker.io",
            ]
            .map(String::from),
        );
    }
    v
}

/// What `entry` holds, if anything.
fn from_entry(e: &AuthEntry) -> Option<RegistryAuth> {
    if let Some(t) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Some(RegistryAuth::Bearer(t.to_string()));
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Some(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    let raw = e.auth.as_deref().filter(|a| !a.is_empty())?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

/// Asks `docker-credential-<helper>` for `host`'s credentials.
fn from_helper(helper: &str, host: &str) -> Result<Option<RegistryAuth>, String> {
    let exe = format!("docker-credential-{helper}");
    let mut child = Command::new(&exe)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {exe}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {exe}: {e}"))?;
    if !out.status.success() {
        // "credentials not found" is not an error: anonymous, then.
        let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
            + &String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
        if text.contains("not found") {
            return Ok(None);
        }
        return Err(format!("{exe} get for {host} failed ({})", out.status));
    }
    let a: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("{exe} get for {host} answered something that is not its JSON"))?;
    Ok(Some(if a.username == "<token>" {
        RegistryAuth::Bearer(a.secret)
    } else {
        RegistryAuth::Basic(a.username, a.secret)
    }))
}

/// The credentials for `host`, anonymous when none are configured.
pub fn credentials_for(host: &str) -> Result<RegistryAuth, String> {
    let Some(path) = config_path() else {
        return Ok(RegistryAuth::Anonymous);
    };
    let cfg: DockerConfig = match std::fs::read(&path) {
        Err(_) => return Ok(RegistryAuth::Anonymous),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a docker config: {e}", path.display()))?,
    };
    let keys = keys_for(host);
    for k in &keys {
        if let Some(helper) = cfg.cred_helpers.get(k) {
            return Ok(from_helper(helper, host)?.unwrap_or(RegistryAuth::Anonymous));
        }
    }
    for k in &keys {
        if let Some(auth) = cfg.auths.get(k).and_then(from_entry) {
            return Ok(auth);
        }
    }
    if let Some(store) = &cfg.creds_store {
        return Ok(from_helper(store, host)?.unwrap_or(RegistryAuth::Anonymous));
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_entries() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let cfg: DockerConfig = serde_json::from_str(&format!(
            r#"{{"auths": {{"127.0.0.1:5001": {{"auth": "{b64}"}},
                "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}},
                "ghcr.io": {{"identitytoken": "tok"}}}}}}"#
        ))
        .unwrap();
        let get = |host: &str| {
            keys_for(host)
                .iter()
                .find_map(|k| cfg.auths.get(k).and_then(from_entry))
        };
        assert!(
            matches!(get("127.0.0.1:5001"), Some(RegistryAuth::Basic(u, p)) if u == "alice" && p == "s3cret")
        );
        assert!(matches!(get("docker.io"), Some(RegistryAuth::Basic(u, _)) if u == "bob"));
        assert!(matches!(get("ghcr.io"), Some(RegistryAuth::Bearer(t)) if t == "tok"));
        assert!(get("quay.io").is_none());
    }
}
