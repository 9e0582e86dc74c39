//! `--export-cache` / `--import-cache` specs, in buildctl's CSV form (`type=registry,ref=…`,
//! `type=local,dest=…`, `type=inline`); a bare value is a registry reference, as buildx reads
//! `--cache-from REF`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::BkCacheError;

/// Which results a cache export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Only the final result's layers (BuildKit's default).
    #[default]
    Min,
    /// Every step's.
    Max,
}

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An OCI image layout directory; `tag` names the manifest in its index.json.
    Local {
        dir: PathBuf,
        tag: String,
        digest: Option<String>,
    },
    /// A registry reference.
    Registry { reference: String },
    /// In the built image's config (`moby.buildkit.cache.v0`).
    Inline,
}

/// One `--import-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub location: Location,
    /// The spec as given, for messages and for a remote builder.
    pub kind: String,
    pub attrs: BTreeMap<String, String>,
}

/// One `--export-cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub location: Location,
    pub mode: Mode,
    /// gzip (default), zstd or uncompressed.
    pub compression: String,
    pub compression_level: Option<u32>,
    pub force_compression: bool,
    /// Write an image manifest (default, as BuildKit since v0.21) rather than an index.
    pub image_manifest: bool,
    pub oci_mediatypes: bool,
    /// A failed export is a warning, not a failed build.
    pub ignore_error: bool,
    pub kind: String,
    pub attrs: BTreeMap<String, String>,
}

/// A build's cache imports and exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheSpecs {
    pub imports: Vec<Import>,
    pub exports: Vec<Export>,
    /// Say for every step whether it is cached and, where not, why (`--explain-cache`).
    pub explain: bool,
    /// What the build's graph is remembered as for the next explanation (the image name).
    pub target: Option<String>,
}

impl CacheSpecs {
    /// Parses `--import-cache` and `--export-cache` values.
    pub fn parse(imports: &[String], exports: &[String]) -> Result<CacheSpecs, BkCacheError> {
        Ok(CacheSpecs {
            imports: imports
                .iter()
                .map(|s| Import::parse(s))
                .collect::<Result<_, _>>()?,
            exports: exports
                .iter()
                .map(|s| Export::parse(s))
                .collect::<Result<_, _>>()?,
            explain: false,
            target: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.imports.is_empty() && self.exports.is_empty()
    }
}

fn bad(spec: &str, why: impl std::fmt::Display) -> BkCacheError {
    BkCacheError::Spec(format!("{spec:?}: {why}"))
}

/// `key=value` pairs separated by commas (a value may be double-quoted to hold commas).
fn fields(spec: &str) -> Result<(String, BTreeMap<String, String>), BkCacheError> {
    if !spec.contains('=') {
        let mut attrs = BTreeMap::new();
        attrs.insert("ref".to_string(), spec.to_string());
        return Ok(("registry".into(), attrs));
    }
    let mut attrs = BTreeMap::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut parts = Vec::new();
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(bad(spec, "unterminated quote"));
    }
    parts.push(cur);
    for p in parts.into_iter().filter(|p| !p.trim().is_empty()) {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| bad(spec, format!("{p:?} is not key=value")))?;
        let k = k.trim().to_ascii_lowercase();
        if attrs.insert(k.clone(), v.trim().to_string()).is_some() {
            return Err(bad(spec, format!("{k} given twice")));
        }
    }
    let kind = attrs
        .remove("type")
        .ok_or_else(|| bad(spec, "no type= (registry, local or inline)"))?;
    Ok((kind, attrs))
}

fn boolean(
    spec: &str,
    attrs: &BTreeMap<String, String>,
    k: &str,
    default: bool,
) -> Result<bool, BkCacheError> {
    match attrs.get(k).map(String::as_str) {
        None => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(v) => Err(bad(spec, format!("{k}={v}: expected true or false"))),
    }
}

fn unsupported(spec: &str, kind: &str) -> BkCacheError {
    bad(
        spec,
        format!(
            "cache type {kind:?} is not supported by envkit's engine (registry, local and inline are); \
             a remote buildkitd context passes it on"
        ),
    )
}

fn location(
    spec: &str,
    kind: &str,
    attrs: &BTreeMap<String, String>,
    dir_key: &str,
) -> Result<Location, BkCacheError> {
    match kind {
        "registry" => {
            let reference = attrs
                .get("ref")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(spec, "type=registry needs ref="))?;
            Ok(Location::Registry {
                reference: reference.clone(),
            })
        }
        "local" => {
            let dir = attrs
                .get(dir_key)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad(spec, format!("type=local needs {dir_key}=")))?;
            Ok(Location::Local {
                dir: PathBuf::from(dir),
                tag: attrs.get("tag").cloned().unwrap_or_else(|| "latest".into()),
                digest: attrs.get("digest").cloned(),
            })
        }
        "inline" => Ok(Location::Inline),
        other => Err(unsupported(spec, other)),
    }
}

impl Import {
    pub fn parse(spec: &str) -> Result<Import, BkCacheError> {
        let (kind, attrs) = fields(spec)?;
        let location = match kind.as_str() {
            // An inline cache is read from an image: `type=registry,ref=IMAGE` finds it.
            "inline" => {
                return Err(bad(
                    spec,
                    "to import an inline cache, name the image: type=registry,ref=IMAGE",
                ));
            }
            k => location(spec, k, &attrs, "src")?,
        };
        if let Location::Local {
            digest: Some(d), ..
        } = &location
            && !super::config::is_sha256(d)
        {
            return Err(bad(spec, format!("digest={d} is not a sha256 digest")));
        }
        Ok(Import {
            location,
            kind,
            attrs,
        })
    }
}

impl Export {
    pub fn parse(spec: &str) -> Result<Export, BkCacheError> {
        let (kind, attrs) = fields(spec)?;
        let location = location(spec, &kind, &attrs, "dest")?;
        let mode = match attrs.get("mode").map(String::as_str) {
            None | Some("min") => Mode::Min,
            Some("max") => Mode::Max,
            Some(m) => return Err(bad(spec, format!("mode={m}: expected min or max"))),
        };
        if location == Location::Inline && mode == Mode::Max {
            return Err(bad(
                spec,
                "an inline cache holds only the image's own layers (mode=min)",
            ));
        }
        let compression = attrs
            .get("compression")
            .cloned()
            .unwrap_or_else(|| "gzip".into());
        if !matches!(compression.as_str(), "gzip" | "zstd" | "uncompressed") {
            return Err(bad(
                spec,
                format!("compression={compression}: expected gzip, zstd or uncompressed"),
            ));
        }
        let compression_level = match attrs.get("compression-level") {
            None => None,
            Some(l) => Some(
                l.parse::<u32>()
                    .map_err(|_| bad(spec, format!("compression-level={l} is not a number")))?,
            ),
        };
        Ok(Export {
            mode,
            compression,
            compression_level,
            force_compression: boolean(spec, &attrs, "force-compression", false)?,
            image_manifest: boolean(spec, &attrs, "image-manifest", true)?,
            oci_mediatypes: boolean(spec, &attrs, "oci-mediatypes", true)?,
            ignore_error: boolean(spec, &attrs, "ignore-error", false)?,
            location,
            kind,
            attrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buildctl_specs() {
        let e = Export::parse("type=local,dest=/tmp/c,mode=max,compression=zstd").expect("parse");
        assert_eq!(e.mode, Mode::Max);
        assert_eq!(e.compression, "zstd");
        assert!(
            matches!(e.location, Location::Local { ref dir, ref tag, .. } if dir == &PathBuf::from("/tmp/c") && tag == "latest")
        );
        let e = Export::parse("type=registry,ref=127.0.0.1:5000/app:cache").expect("parse");
        assert_eq!(e.mode, Mode::Min);
        assert!(e.image_manifest && e.oci_mediatypes && !e.ignore_error);
        let i = Import::parse("registry.example/app:cache").expect("bare ref");
        assert_eq!(
            i.location,
            Location::Registry {
                reference: "registry.example/app:cache".into()
            }
        );
        let i = Import::parse("type=local,src=/c,tag=v1").expect("parse");
        assert!(matches!(i.location, Location::Local { ref tag, .. } if tag == "v1"));
        let e = Export::parse(r#"type=local,"dest=/a,b""#).expect("quoted");
        assert!(
            matches!(e.location, Location::Local { ref dir, .. } if dir == &PathBuf::from("/a,b"))
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, want) in [
            ("type=s3,bucket=x", "not supported"),
            ("type=local", "dest="),
            ("type=registry", "ref="),
            ("type=local,dest=/x,mode=all", "mode=all"),
            ("type=local,dest=/x,compression=lz4", "compression=lz4"),
            ("type=inline,mode=max", "mode=min"),
            ("type=local,dest=/x,ignore-error=maybe", "true or false"),
            ("dest=/x", "no type="),
        ] {
            let e = Export::parse(spec).expect_err(spec).to_string();
            assert!(e.contains(want), "{spec}: {e}");
        }
        let e = Import::parse("type=inline")
            .expect_err("inline")
            .to_string();
        assert!(e.contains("type=registry,ref=IMAGE"), "{e}");
        let e = Import::parse("type=local,src=/c,digest=abc")
            .expect_err("digest")
            .to_string();
        assert!(e.contains("not a sha256"), "{e}");
    }
}
