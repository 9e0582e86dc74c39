//! Docker image reference normalisation (`reference.ParseNormalizedNamed` + `TagNameOnly`).

const DEFAULT_DOMAIN: &str = "docker.io";

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true;
    while i < b.len() {
        if alnum(b[i]) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // a separator
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'_' {
            i += 1;
            if i < b.len() && b[i] == b'_' {
                i += 1;
            }
        } else if b[i] == b'-' {
            while i < b.len() && b[i] == b'-' {
                i += 1;
            }
        } else {
            return false;
        }
        need_alnum = true;
    }
    !need_alnum
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some((alg, hex)) => {
            !alg.is_empty()
                && alg
                    .bytes()
                    .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"+._-".contains(&x))
                && hex.len() >= 32
                && hex.bytes().all(|x| x.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Normalises `busybox` to `docker.io/library/busybox:latest`; keeps digests; adds `:latest`
/// only when there is neither tag nor digest. Errors name what is wrong.
pub fn normalize_image_ref(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("invalid reference format: empty image reference".to_string());
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => {
            if !valid_digest(d) {
                return Err(format!("invalid reference format: bad digest in {s:?}"));
            }
            (n, Some(d))
        }
        None => (s, None),
    };
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if last_slash.is_none_or(|j| i > j) => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    };
    if let Some(t) = tag
        && !valid_tag(t)
    {
        return Err(format!("invalid reference format: bad tag in {s:?}"));
    }
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("library/{path}");
    }
    if path.to_lowercase() != path {
        return Err(format!(
            "invalid reference format: repository name must be lowercase: {s:?}"
        ));
    }
    if !path.split('/').all(valid_path_component) {
        return Err(format!("invalid reference format: {s:?}"));
    }
    let mut out = format!("{domain}/{path}");
    if let Some(t) = tag {
        out.push(':');
        out.push_str(t);
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    } else if tag.is_none() {
        out.push_str(":latest");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::normalize_image_ref as n;

    #[test]
    fn docker_hub_names() {
        assert_eq!(
            n("busybox").as_deref(),
            Ok("docker.io/library/busybox:latest")
        );
        assert_eq!(
            n("python:3.11-slim").as_deref(),
            Ok("docker.io/library/python:3.11-slim")
        );
        assert_eq!(
            n("tensorchord/envd").as_deref(),
            Ok("docker.io/tensorchord/envd:latest")
        );
        assert_eq!(
            n("index.docker.io/library/debian:bookworm").as_deref(),
            Ok("docker.io/library/debian:bookworm")
        );
    }

    #[test]
    fn registries_and_digests() {
        assert_eq!(
            n("127.0.0.1:5000/library/busybox").as_deref(),
            Ok("127.0.0.1:5000/library/busybox:latest")
        );
        assert_eq!(n("localhost/x:1").as_deref(), Ok("localhost/x:1"));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("busybox@{d}")),
            Ok(format!("docker.io/library/busybox@{d}"))
        );
    }

    #[test]
    fn bad_names() {
        assert!(n("").is_err());
        assert!(n("Busybox").is_err());
        assert!(n("busybox:").is_err());
        assert!(n("a//b").is_err());
    }
}
