//! `io.*`: files from the build context or an image (`copy`), and downloads (`http`).

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::none::NoneType;

use super::invalid;
use super::record;
use crate::ir::{Copy, HttpSource};

/// Registers the members of the `io` namespace.
pub fn register_io(builder: &mut GlobalsBuilder) {
    members(builder);
}

/// Checks a checksum the way go-digest's `Parse` does: `algorithm:hex`, with a known
/// algorithm and the right length of lower-case hex.
pub(crate) fn check_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err("invalid checksum digest format".into());
    };
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ if !alg.is_empty() && !hex.is_empty() => {
            return Err("unsupported digest algorithm".into());
        }
        _ => return Err("invalid checksum digest format".into()),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length".into());
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("invalid checksum digest format".into());
    }
    Ok(())
}

#[starlark_module]
fn members(builder: &mut GlobalsBuilder) {
    /// `io.copy(source, target, image="")`: copies `source` from the build context (or from
    /// `image`) to `target`, owned by the environment's owner. A relative `target` is
    /// resolved against the working directory of the graph at that point, as envd's LLB
    /// client does (usually `/`, so `io.copy("bpe", "bpe")` makes `/bpe`).
    fn copy(
        source: &str,
        target: &str,
        #[starlark(default = "")] image: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if target.is_empty() {
            return Err(invalid(
                "io.copy target is empty (give an absolute path, or one relative to the working \
                 directory)"
                    .to_string(),
            ));
        }
        record(eval, |env| {
            env.copies.push(Copy {
                source: source.to_string(),
                target: target.to_string(),
                image: (!image.is_empty()).then(|| image.to_string()),
            })
        })?;
        Ok(NoneType)
    }

    /// `io.http(url, checksum="", filename="")`: downloads `url` to
    /// `/home/envd/extra_source/<filename>`, verified against `checksum` (`sha256:<hex>`) when
    /// given.
    fn http(
        url: &str,
        #[starlark(default = "")] checksum: &str,
        #[starlark(default = "")] filename: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        if !checksum.is_empty() {
            check_digest(checksum)
                .map_err(|e| invalid(format!("io.http: checksum {checksum:?}: {e}")))?;
        }
        record(eval, |env| {
            env.http.push(HttpSource {
                url: url.to_string(),
                checksum: (!checksum.is_empty()).then(|| checksum.to_string()),
                filename: filename.to_string(),
            })
        })?;
        Ok(NoneType)
    }
}

#[cfg(test)]
mod tests {
    use super::check_digest;

    #[test]
    fn digests_are_checked_like_go_digest() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(check_digest(&ok).is_ok());
        assert_eq!(
            check_digest("sha256:abc").unwrap_err(),
            "invalid checksum digest length"
        );
        assert_eq!(
            check_digest("md5:abc").unwrap_err(),
            "unsupported digest algorithm"
        );
        assert_eq!(
            check_digest("nocolon").unwrap_err(),
            "invalid checksum digest format"
        );
        let upper = format!("sha256:{}", "A".repeat(64));
        assert_eq!(
            check_digest(&upper).unwrap_err(),
            "invalid checksum digest format"
        );
    }
}
