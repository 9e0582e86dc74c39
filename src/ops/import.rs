//! Results taken from an imported BuildKit cache (`--import-cache`).
//!
//! Before the solve, the engine decides per vertex ([`Role`]): vertices the head needs that
//! an imported record has a result for are *loaded* (their layers unpacked as snapshots,
//! committed under the key the op would have had, so a later build finds them like any
//! other result); vertices that only such vertices need are *skipped*: only their cache key
//! is computed, nothing is pulled, copied or run. Everything else runs as usual.

use std::collections::BTreeMap;

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::SnapRef;
use crate::solver::Outcome;

/// What a build does with a vertex (decided after a first pass that computes every key).
#[derive(Debug, Clone, Default)]
pub enum Role {
    #[default]
    Run,
    /// Needed only below a vertex whose result is already there: its key, nothing else.
    Skip,
    /// Its result is in the store under its key: looked up, nothing below it runs.
    Hit,
    /// Its result's layers, bottom first, in the content store (fetched and verified while
    /// the plan was made).
    Load(Loaded),
}

/// An imported result.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The layers of the result, bottom first.
    pub layers: Vec<oci_spec::image::Descriptor>,
    /// Where it came from, for messages: the cache and the record's digest.
    pub from: String,
}

/// The roles of a Definition's vertices (by solver index); `keys_only` is the first pass,
/// which only computes keys.
#[derive(Debug, Clone, Default)]
pub struct ImportPlan {
    pub roles: Vec<Role>,
    pub keys_only: bool,
}

/// What the solve's plan makes of this vertex, where that is not running it: the first
/// pass's key, a skipped vertex's key, a hit's stored result, an imported result. `None`:
/// the op runs.
pub(super) async fn by_role(ctx: &Ctx, inputs: &[Res]) -> Result<Option<Outcome<Res>>, OpsError> {
    let Some(plan) = ctx.import.as_deref() else {
        return Ok(None);
    };
    let cached = |value: Res| {
        Some(Outcome {
            value,
            cached: true,
        })
    };
    if plan.keys_only {
        // The first pass: keys only (a source whose key needs the download gets none).
        let res = key_only(ctx, inputs).await?;
        if let Some(r) = &res {
            prefetch_image(ctx, &r.key);
        }
        let res = res.unwrap_or_else(|| Res {
            snap: SnapRef::scratch(),
            key: format!("unknown-{}", ctx.vertex),
            more: BTreeMap::new(),
        });
        return Ok(cached(res));
    }
    match plan.roles.get(ctx.vertex) {
        Some(Role::Skip) => Ok(key_only(ctx, inputs).await?.and_then(cached)),
        Some(Role::Hit) => {
            if let Some(res) = key_only(ctx, inputs).await?
                && let Some(hit) = ctx.peek(&res.key)?
            {
                return Ok(Some(hit));
            }
            // Gone since the plan was made (a prune): the engine solves again without it.
            Err(OpsError::Import {
                from: "the store".into(),
                message: "a cached result went away during the build".into(),
            })
        }
        Some(Role::Load(loaded)) if !ctx.me().ignore_cache => {
            let Some(res) = key_only(ctx, inputs).await? else {
                return Ok(None);
            };
            load(ctx, inputs, &res.key, loaded)
                .await
                .map(Some)
                .map_err(|e| match e {
                    OpsError::Import { .. } => e,
                    other => OpsError::Import {
                        from: loaded.from.clone(),
                        message: other.to_string(),
                    },
                })
        }
        _ => Ok(None),
    }
}

/// Starts pulling this vertex's image when it is one the store lacks (see
/// [`super::prefetch`]).
fn prefetch_image(ctx: &Ctx, key: &str) {
    let Some(p) = &ctx.prefetch else {
        return;
    };
    let v = ctx.me();
    let is_image = matches!(&v.op.op, Some(pb::op::Op::Source(s)) if s.identifier.starts_with("docker-image://"));
    if is_image && !v.ignore_cache && matches!(ctx.worker.snapshots.lookup_quiet(key), Ok(None)) {
        p.start(ctx.detached());
    }
}

/// The input a step's result is layered on: an exec's root mount, a file op's first action's.
pub fn layered_on(op: &pb::Op) -> Option<usize> {
    match &op.op {
        Some(pb::op::Op::Exec(e)) => e
            .mounts
            .iter()
            .find(|m| m.dest == "/")
            .and_then(|m| usize::try_from(m.input).ok()),
        Some(pb::op::Op::File(f)) => f
            .actions
            .first()
            .and_then(|a| usize::try_from(a.input).ok())
            .filter(|&i| i < op.inputs.len()),
        _ => None,
    }
}

/// The result a vertex would have, as far as its key goes: its cache key (and its further
/// outputs' keys), without building anything. `None` where the key needs the work itself
/// (a download, a commit): such a vertex runs.
pub(super) async fn key_only(ctx: &Ctx, inputs: &[Res]) -> Result<Option<Res>, OpsError> {
    let v = ctx.me();
    // Below a loaded step only its base image matters (where the loaded layers go).
    let hint = layered_on(&v.op)
        .and_then(|i| inputs.get(i))
        .and_then(|r| base_only(&r.snap));
    if let Some(pb::op::Op::Exec(e)) = &v.op.op {
        super::exec::validate(ctx, e)?;
    }
    let key = match &v.op.op {
        Some(
            pb::op::Op::Exec(_) | pb::op::Op::File(_) | pb::op::Op::Merge(_) | pb::op::Op::Diff(_),
        ) => ctx.cache_key(inputs, &[]),
        Some(pb::op::Op::Source(src)) if src.identifier.starts_with("local://") => {
            super::source::local_key(ctx, src).await?.0
        }
        Some(pb::op::Op::Source(src)) if src.identifier.starts_with("docker-image://") => {
            super::source::image_key(ctx, src).await?.0
        }
        _ => return Ok(None),
    };
    let mut more = BTreeMap::new();
    if let Some(pb::op::Op::Exec(e)) = &v.op.op {
        for m in e.mounts.iter().filter(|m| m.output > 0) {
            let k = super::cache_key(&key, &[], &[&format!("output {}", m.output)]);
            more.insert(m.output, (SnapRef::scratch(), k));
        }
    }
    Ok(Some(Res {
        snap: hint.unwrap_or_else(SnapRef::scratch),
        key,
        more,
    }))
}

/// The base image part of a chain (its bottom snapshot), if it has one.
fn base_only(s: &SnapRef) -> Option<SnapRef> {
    let base = s.base.clone()?;
    Some(SnapRef {
        chain: s.chain.first().cloned().into_iter().collect(),
        base: Some(base),
    })
}

/// How many layers a result has in BuildKit's terms: its base image's, and one per snapshot
/// on top.
fn layer_count(s: &SnapRef) -> usize {
    s.base.as_ref().map_or(0, |b| b.layers.len()) + s.own_layers().len()
}

/// Loads a vertex's result from the imported layers, under the key the op would have
/// (`key`): on top of the input it is layered on when that input was built or loaded (the
/// layers past that input's), else on the base image below it (when the layers start with
/// that image's), else from scratch. Each layer becomes a snapshot of its own, so the
/// result exports as the same image.
pub(super) async fn load(
    ctx: &Ctx,
    inputs: &[Res],
    key: &str,
    loaded: &Loaded,
) -> Result<Outcome<Res>, OpsError> {
    let v = ctx.me();
    let below = layered_on(&v.op).and_then(|i| inputs.get(i));
    let (base, own): (SnapRef, &[oci_spec::image::Descriptor]) = match below {
        Some(r) if !r.snap.own_layers().is_empty() => {
            let n = layer_count(&r.snap);
            (r.snap.clone(), loaded.layers.get(n..).unwrap_or(&[]))
        }
        Some(r) if r.snap.base.is_some() => {
            let b = base_only(&r.snap).unwrap_or_else(SnapRef::scratch);
            let image = b.base.as_ref().map(|b| b.layers.len()).unwrap_or(0);
            let starts = b.base.as_ref().is_some_and(|img| {
                img.layers.len() <= loaded.layers.len()
                    && img
                        .layers
                        .iter()
                        .zip(&loaded.layers)
                        .all(|(a, b)| a.digest() == b.digest())
            });
            if starts {
                (b, &loaded.layers[image..])
            } else {
                (SnapRef::scratch(), &loaded.layers[..])
            }
        }
        _ => (SnapRef::scratch(), &loaded.layers[..]),
    };
    // One snapshot per layer: the last is the op's key; the ones under it are keyed by the
    // chain they sit on and their layer, so that two results sharing layers share them.
    let mut keys = Vec::with_capacity(own.len().max(1));
    let mut prev = base.chain.last().cloned().unwrap_or_default();
    for (i, l) in own.iter().enumerate() {
        let k = if i + 1 == own.len() {
            key.to_string()
        } else {
            super::cache_key("bkcache-layer", &[&prev], &[l.digest().as_ref()])
        };
        prev = k.clone();
        keys.push(k);
    }
    if keys.is_empty() {
        keys.push(key.to_string());
    }
    // The solver's protocol wants the main key first.
    let mut order = vec![key.to_string()];
    order.extend(keys[..keys.len() - 1].iter().cloned());
    let w = &ctx.worker;
    let (base_ref, keys_ref, order_ref) = (&base, &keys, &order);
    let resolved = ctx
        .resolve(order.clone(), |drafts| async move {
            // drafts are in `order`: the main key's first.
            let mut by_key: BTreeMap<&str, crate::snapshot::Prepared> = BTreeMap::new();
            for (k, d) in order_ref.iter().zip(drafts) {
                by_key.insert(k.as_str(), d);
            }
            let mut chain = base_ref.chain.clone();
            let mut refs: BTreeMap<String, SnapRef> = BTreeMap::new();
            for (i, k) in keys_ref.iter().enumerate() {
                let d = by_key.get(k.as_str()).ok_or(super::OutputCount {
                    built: i,
                    keys: keys_ref.len(),
                })?;
                if let Some(l) = own.get(i) {
                    let req = w.unpack_upper_request(l, &d.fs)?;
                    super::source::helper_ok(
                        ctx,
                        req,
                        &format!("unpacking cached layer {}", l.digest()),
                    )
                    .await?;
                }
                chain.push(k.clone());
                refs.insert(
                    k.clone(),
                    SnapRef {
                        chain: chain.clone(),
                        base: base_ref.base.clone(),
                    },
                );
            }
            Ok(order_ref
                .iter()
                .map(|k| refs.remove(k).unwrap_or_else(SnapRef::scratch))
                .collect())
        })
        .await?;
    let snap = resolved
        .values
        .into_iter()
        .next()
        .ok_or(super::OutputCount { built: 0, keys: 1 })?;
    Ok(Outcome {
        value: Res {
            snap,
            key: key.to_string(),
            more: BTreeMap::new(),
        },
        cached: true,
    })
}
