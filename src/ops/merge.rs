//! MergeOp and DiffOp, lazily: a result is a stack of snapshot dirs, so a merge is the inputs'
//! stacks one on top of the other, and the diff of a stack over one of its own prefixes is
//! the rest of the stack. No files are copied; the record of the result is committed like any
//! other, so a warm build finds it.

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::SnapRef;
use crate::solver::Outcome;

/// `Merge([a, b, c])`: `a`'s stack, then `b`'s, then `c`'s. The base image (for export) is
/// the first input's.
pub(super) async fn merge(
    ctx: &Ctx,
    op: &pb::MergeOp,
    inputs: &[Res],
) -> Result<Outcome<Res>, OpsError> {
    let mut chain = Vec::new();
    let mut base = None;
    for (n, mi) in op.inputs.iter().enumerate() {
        let r = ctx.input(inputs, mi.input)?;
        if n == 0 {
            base = r.snap.base.clone();
        }
        chain.extend(r.snap.chain.iter().cloned());
    }
    record(ctx, inputs, SnapRef { chain, base }).await
}

/// `Diff(lower, upper)`: the layers `upper` adds on top of `lower`. envkit computes it when
/// `upper` was built on `lower` (its stack starts with `lower`'s), which is how envd and
/// Dockerfile frontends use it; other diffs are refused.
pub(super) async fn diff(
    ctx: &Ctx,
    op: &pb::DiffOp,
    inputs: &[Res],
) -> Result<Outcome<Res>, OpsError> {
    let side = |i: Option<i64>| -> Result<SnapRef, OpsError> {
        match i {
            None | Some(-1) => Ok(SnapRef::scratch()),
            Some(i) => Ok(ctx.input(inputs, i)?.snap.clone()),
        }
    };
    let lower = side(op.lower.as_ref().map(|l| l.input))?;
    let upper = side(op.upper.as_ref().map(|u| u.input))?;
    let snap = if lower.chain.is_empty() {
        upper
    } else if upper.chain.starts_with(&lower.chain) {
        SnapRef {
            chain: upper.chain[lower.chain.len()..].to_vec(),
            base: None,
        }
    } else {
        return Err(OpsError::Unsupported(
            "a DiffOp whose upper is not built on its lower".into(),
        ));
    };
    record(ctx, inputs, snap).await
}

/// Commits the result under the op's cache key (an empty snapshot dir with the record).
async fn record(ctx: &Ctx, inputs: &[Res], snap: SnapRef) -> Result<Outcome<Res>, OpsError> {
    let key = ctx.cache_key(inputs, &[]);
    let key = &key;
    ctx.resolve_one(key, |_prepared| async move { Ok(snap) })
        .await
}
