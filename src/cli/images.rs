//! `envkit images [ls|inspect|rm]`, `envkit save`, `envkit load`, `envkit push`: the local
//! image store.

use std::io::Write;

use anyhow::{Context, bail};
use oci_spec::image::Descriptor;

use super::build::full_name;
use super::store::human_size;
use super::{Cli, LoadArgs, SaveArgs};
use crate::config;
use crate::export;
use crate::image;
use crate::meta;
use crate::worker::Worker;

pub(super) fn list(cli: &Cli) -> anyhow::Result<()> {
    let root = config::store_root(cli.globals.root.as_deref());
    let db = meta::Meta::open(&root)?;
    let mut out = std::io::stdout().lock();
    let store = crate::content::Store::open(&root)?;
    writeln!(
        out,
        "{:<48} {:<14} {:>10}  {:<20}  PLATFORMS",
        "NAME", "DIGEST", "SIZE", "CREATED"
    )?;
    for (name, img) in db.list_images()? {
        let short = img.manifest_digest.trim_start_matches("sha256:");
        writeln!(
            out,
            "{:<48} {:<14} {:>10}  {:<20}  {}",
            name,
            &short[..short.len().min(12)],
            human_size(img.size),
            image::rfc3339(img.created),
            platforms_of(&store, &img.manifest_digest)
        )?;
    }
    Ok(())
}

/// The platforms of an image of the store, for the list: an index's, each of its manifests';
/// a lone manifest's, its config's.
fn platforms_of(store: &crate::content::Store, digest: &str) -> String {
    let Ok(d) = crate::content::parse_digest(digest) else {
        return "?".into();
    };
    match image::index::stored(store, &d) {
        Ok(image::index::Stored::Index { manifests, .. }) => manifests
            .iter()
            .map(|m| match image::index::platform_of(m) {
                Some(p) => p.to_string(),
                None => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Ok(image::index::Stored::Manifest(_)) => config_platform(store, &d).unwrap_or("?".into()),
        Err(_) => "?".into(),
    }
}

/// A manifest's platform as its config says.
fn config_platform(
    store: &crate::content::Store,
    manifest: &oci_spec::image::Digest,
) -> Option<String> {
    let m: serde_json::Value = serde_json::from_slice(&store.read_blob(manifest).ok()?).ok()?;
    let c = crate::content::parse_digest(m["config"]["digest"].as_str()?).ok()?;
    let c: serde_json::Value = serde_json::from_slice(&store.read_blob(&c).ok()?).ok()?;
    let p = crate::platform::Platform::new(
        c["os"].as_str()?,
        c["architecture"].as_str()?,
        c["variant"].as_str().unwrap_or(""),
    );
    Some(p.to_string())
}

/// The record of `name` (as typed, or normalized).
fn record(db: &meta::Meta, name: &str) -> anyhow::Result<(String, meta::ImageRecord)> {
    let full = full_name(name)?;
    for n in [name.to_string(), full.clone()] {
        if let Some(r) = db.get_image(&n)? {
            return Ok((n, r));
        }
    }
    bail!("no image {full} in envkit's store (see `envkit images`)")
}

pub(super) fn inspect(cli: &Cli, names: &[String]) -> anyhow::Result<()> {
    let root = config::store_root(cli.globals.root.as_deref());
    let db = meta::Meta::open(&root)?;
    let store = crate::content::Store::open(&root)?;
    let mut all = Vec::new();
    for n in names {
        let (name, r) = record(&db, n)?;
        let digest = crate::content::parse_digest(&r.manifest_digest)?;
        let manifest: serde_json::Value = serde_json::from_slice(&store.read_blob(&digest)?)
            .with_context(|| format!("the manifest of {name}"))?;
        let config_of = |manifest: &serde_json::Value| -> anyhow::Result<serde_json::Value> {
            Ok(match manifest["config"]["digest"].as_str() {
                Some(d) => {
                    let d = crate::content::parse_digest(d)?;
                    serde_json::from_slice(&store.read_blob(&d)?)
                        .with_context(|| format!("the config of {name}"))?
                }
                None => serde_json::Value::Null,
            })
        };
        let mut entry = serde_json::json!({
            "name": name,
            "digest": r.manifest_digest,
            "size": r.size,
            "created": image::rfc3339(r.created),
            "manifest": manifest,
            "config": config_of(&manifest)?,
        });
        // An index: each platform's manifest and config as well.
        if let Some(children) = manifest["manifests"].as_array() {
            let mut images = Vec::new();
            for c in children {
                let Some(d) = c["digest"].as_str() else {
                    continue;
                };
                let d = crate::content::parse_digest(d)?;
                let m: serde_json::Value = match store.read_blob(&d) {
                    Ok(b) => serde_json::from_slice(&b)
                        .with_context(|| format!("the manifest {d} of {name}"))?,
                    Err(_) => serde_json::Value::Null,
                };
                let config = config_of(&m)?;
                images.push(serde_json::json!({
                    "digest": d.to_string(),
                    "platform": c["platform"],
                    "manifest": m,
                    "config": config,
                }));
            }
            entry["images"] = serde_json::Value::Array(images);
        }
        all.push(entry);
    }
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &all)?;
    writeln!(out)?;
    Ok(())
}

pub(super) fn remove(cli: &Cli, names: &[String]) -> anyhow::Result<()> {
    let root = config::store_root(cli.globals.root.as_deref());
    let db = meta::Meta::open(&root)?;
    // Every name must exist before any is removed.
    let mut found = Vec::new();
    for n in names {
        found.push(record(&db, n)?);
    }
    for (name, r) in found {
        db.remove_image(&name)?;
        println!("removed {name} ({})", r.manifest_digest);
    }
    println!("(`envkit prune` frees the blobs no other image or cache entry needs)");
    Ok(())
}

pub(super) fn save(cli: &Cli, args: &SaveArgs) -> anyhow::Result<()> {
    let root = config::store_root(cli.globals.root.as_deref());
    if args.output.as_os_str() == "-" && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("refusing to write an archive to a terminal: give -o FILE or redirect stdout");
    }
    let db = meta::Meta::open(&root)?;
    let mut images = Vec::new();
    for n in &args.names {
        let (name, r) = record(&db, n)?;
        images.push((name, r));
    }
    drop(db);
    let cfg = cli.globals.load_config()?;
    // Held shared: a prune cannot take blobs while they are written out.
    let worker = Worker::new(&root, cfg, None)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let store = &worker.content;
    let mut descs = Vec::new();
    for (name, r) in &images {
        let digest = crate::content::parse_digest(&r.manifest_digest)?;
        let stored = image::index::stored(store, &digest)?;
        descs.push((stored.descriptor().clone(), name.clone()));
    }
    match args.format.as_str() {
        "oci" => {
            let gz: Vec<(Descriptor, String)> = descs
                .iter()
                .map(|(d, n)| Ok((export::gzip_manifest(d, store)?, n.clone())))
                .collect::<Result<_, export::ExportError>>()?;
            export::oci_tar_of(&args.output, &gz, store)?;
        }
        "docker" => {
            let [(d, n)] = &descs[..] else {
                bail!(
                    "--format docker holds one image; save the others separately, or use --format oci"
                );
            };
            let plain = export::CompressionOpts {
                kind: export::Compression::Uncompressed,
                ..Default::default()
            };
            export::docker_tar(&args.output, d, n, store, &plain)?;
        }
        other => bail!("unknown --format {other:?} (oci or docker)"),
    }
    if args.output.as_os_str() != "-" {
        eprintln!(
            "saved {} to {}",
            images
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            args.output.display()
        );
    }
    Ok(())
}

pub(super) fn load(cli: &Cli, args: &LoadArgs) -> anyhow::Result<()> {
    let root = config::store_root(cli.globals.root.as_deref());
    let cfg = cli.globals.load_config()?;
    let worker = Worker::new(&root, cfg, None)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let limit = worker.config.worker.max_layer_size();
    let loaded = match &args.input {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            export::load::load_archive(f, &worker.content, limit)
        }
        _ => export::load::load_archive(std::io::stdin().lock(), &worker.content, limit),
    }
    .with_context(|| match &args.input {
        Some(p) => format!("loading {}", p.display()),
        None => "loading from stdin".to_string(),
    })?;
    let tag = match &args.tag {
        Some(t) => Some(full_name(t)?),
        None => None,
    };
    let now = image::unix_now();
    let lone = loaded.len() == 1;
    let db = meta::Meta::open(&root)?;
    for img in loaded {
        let mut names = Vec::new();
        if let Some(t) = &tag
            && (lone || img.names.is_empty())
        {
            names.push(t.clone());
        }
        for n in &img.names {
            names.push(full_name(n).with_context(|| format!("the archive's name {n:?}"))?);
        }
        if names.is_empty() {
            bail!(
                "the archive leaves image {} unnamed: give it one with --tag NAME",
                img.manifest.digest()
            );
        }
        names.dedup();
        let record = meta::ImageRecord {
            manifest_digest: img.manifest.digest().to_string(),
            size: img.size,
            created: now,
        };
        for n in names {
            db.put_image(&n, &record)?;
            println!("loaded {n} ({})", img.manifest.digest());
        }
    }
    Ok(())
}

/// `envkit push REF`: pushes an image of envkit's store to the registry its name names.
pub(super) async fn push(cli: &Cli, args: &super::PushArgs) -> anyhow::Result<()> {
    let cfg = cli.globals.load_config()?;
    let root = config::store_root(cli.globals.root.as_deref());
    let name = full_name(&args.image)?;
    let db = meta::Meta::open(&root)?;
    let Some(img) = db.get_image(&name)? else {
        bail!("no image {name} in envkit's store (see `envkit images`)");
    };
    drop(db);
    let worker = Worker::new(&root, cfg, None)
        .with_context(|| format!("opening the store at {}", root.display()))?;
    let digest = crate::content::parse_digest(&img.manifest_digest)?;
    let desc = image::index::stored(&worker.content, &digest)?
        .descriptor()
        .clone();
    let compression = match &args.compression {
        Some(c) => export::parse_output(&format!("type=image,name=x,push=true,compression={c}"))
            .map(|o| match o {
                export::Output::Image { compression, .. } => compression,
                _ => export::CompressionOpts::default(),
            })?,
        None => export::CompressionOpts::default(),
    };
    let manifest = export::convert_manifest(&desc, &worker.content, &compression)?;
    let target = match &args.to {
        Some(t) => full_name(t)?,
        None => name.clone(),
    };
    let p = worker
        .registry
        .push(&target, &manifest, &worker.content)
        .await?;
    println!("{}", crate::export::exporter::pushed_note(&p));
    Ok(())
}
