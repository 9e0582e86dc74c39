//! FileOp: mkdir / mkfile / rm / copy actions, chained, performed by the rootless helper on an
//! overlay of the base chain; the upper dir becomes the output snapshot.

use super::{Ctx, OpsError, Res};
use crate::pb;
use crate::snapshot::SnapRef;
use crate::solver::Outcome;

pub(super) async fn run(
    ctx: &Ctx,
    op: &pb::FileOp,
    inputs: &[Res],
) -> Result<Outcome<Res>, OpsError> {
    let n_inputs = inputs.len() as i64;
    if op.actions.is_empty() {
        return Err(OpsError::Invalid("file op without actions".into()));
    }
    let w = &ctx.worker;
    // The actions must form one chain: the first works on an op input (or scratch), each
    // later one on the previous action's result; the last one is the op's only output.
    let first = &op.actions[0];
    let base = if first.input < 0 {
        SnapRef::scratch()
    } else if first.input < n_inputs {
        ctx.input(inputs, first.input)?.snap.clone()
    } else {
        return Err(OpsError::Invalid(
            "first file action reads an action result".into(),
        ));
    };
    let mut actions = Vec::with_capacity(op.actions.len());
    for (i, a) in op.actions.iter().enumerate() {
        if i > 0 && a.input != n_inputs + i as i64 - 1 {
            return Err(OpsError::Unsupported(
                "file actions that do not form a single chain".into(),
            ));
        }
        let last = i + 1 == op.actions.len();
        if (last && a.output != 0) || (!last && a.output >= 0) {
            return Err(OpsError::Unsupported(
                "file ops with several outputs".into(),
            ));
        }
        actions.push(action(ctx, a, inputs, n_inputs)?);
    }
    let key = ctx.cache_key(inputs, &[]);
    let key = &key;
    ctx.resolve_one(key, |prepared| async move {
        let req = rootless::Request::FileActions {
            lowers: w.snapshots.lowers(&base),
            upper: prepared.fs.clone(),
            work: prepared.work.clone(),
            actions,
        };
        super::source::helper_ok(ctx, req, "file operation").await?;
        let mut chain = base.chain.clone();
        chain.push(key.clone());
        Ok(SnapRef {
            chain,
            base: base.base.clone(),
        })
    })
    .await
}

fn action(
    ctx: &Ctx,
    a: &pb::FileAction,
    inputs: &[Res],
    n_inputs: i64,
) -> Result<rootless::FileAction, OpsError> {
    use pb::file_action::Action;
    let mode = |m: i32| if m < 0 { None } else { Some(m as u32) };
    let time = |t: i64| if t < 0 { None } else { Some(t) };
    let owner = |o: Option<&pb::ChownOpt>| owner(ctx, o, a.input, inputs, n_inputs);
    Ok(match &a.action {
        Some(Action::Mkdir(m)) => rootless::FileAction::Mkdir {
            path: m.path.clone(),
            mode: mode(m.mode).unwrap_or(0o755),
            make_parents: m.make_parents,
            owner: owner(m.owner.as_ref())?,
            timestamp: time(m.timestamp),
        },
        Some(Action::Mkfile(m)) => rootless::FileAction::Mkfile {
            path: m.path.clone(),
            mode: mode(m.mode).unwrap_or(0o644),
            data: m.data.clone(),
            owner: owner(m.owner.as_ref())?,
            timestamp: time(m.timestamp),
        },
        Some(Action::Rm(r)) => rootless::FileAction::Rm {
            path: r.path.clone(),
            allow_not_found: r.allow_not_found,
            allow_wildcard: r.allow_wildcard,
        },
        Some(Action::Symlink(l)) => rootless::FileAction::Symlink {
            target: l.oldpath.clone(),
            path: l.newpath.clone(),
            owner: owner(l.owner.as_ref())?,
            timestamp: time(l.timestamp),
        },
        Some(Action::Copy(c)) => {
            if a.secondary_input < 0 || a.secondary_input >= n_inputs {
                return Err(OpsError::Unsupported(
                    "copy from scratch or from an earlier action".into(),
                ));
            }
            let from = &ctx.input(inputs, a.secondary_input)?.snap;
            rootless::FileAction::Copy(Box::new(rootless::CopyAction {
                src_root: rootless::CopySource::Lowers(ctx.worker.snapshots.lowers(from)),
                src: c.src.clone(),
                dest: c.dest.clone(),
                owner: owner(c.owner.as_ref())?,
                mode: mode(c.mode),
                mode_str: (!c.mode_str.is_empty()).then(|| c.mode_str.clone()),
                follow_symlinks: c.follow_symlink,
                dir_copy_contents: c.dir_copy_contents,
                create_dest_path: c.create_dest_path,
                allow_wildcard: c.allow_wildcard,
                allow_empty_wildcard: c.allow_empty_wildcard,
                include_patterns: c.include_patterns.clone(),
                exclude_patterns: c.exclude_patterns.clone(),
                always_replace_existing: c.always_replace_existing_dest_paths,
                unpack_archives: c.attempt_unpack_docker_compatibility,
                required_paths: c.required_paths.clone(),
                timestamp: time(c.timestamp),
            }))
        }
        None => return Err(OpsError::Invalid("file action without a kind".into())),
    })
}

/// An owner for the helper. A name is looked up in the `/etc/passwd` (`/etc/group`) of
/// the input its `NamedUserOpt` points at: the tree the action works on (its own input, or
/// an earlier action's result) is read by the helper as the actions run; another op input is
/// read from its snapshot chain.
fn owner(
    ctx: &Ctx,
    o: Option<&pb::ChownOpt>,
    action_input: i64,
    inputs: &[Res],
    n_inputs: i64,
) -> Result<Option<rootless::Chown>, OpsError> {
    let Some(o) = o else { return Ok(None) };
    let spec = |u: Option<&pb::UserOpt>| -> Result<(Option<rootless::IdSpec>, rootless::UserDb), OpsError> {
        match u.and_then(|u| u.user.as_ref()) {
            None => Ok((None, rootless::UserDb::Dest)),
            Some(pb::user_opt::User::ById(id)) => {
                Ok((Some(rootless::IdSpec::Id(*id)), rootless::UserDb::Dest))
            }
            Some(pb::user_opt::User::ByName(n)) => {
                let db = if n.input < 0 {
                    return Err(OpsError::Invalid(format!(
                        "chown {:?}: invalid input index {}",
                        n.name, n.input
                    )));
                } else if n.input == action_input || n.input >= n_inputs {
                    rootless::UserDb::Dest
                } else {
                    let snap = &ctx.input(inputs, n.input)?.snap;
                    rootless::UserDb::Lowers(ctx.worker.snapshots.lowers(snap))
                };
                Ok((Some(rootless::IdSpec::Name(n.name.clone())), db))
            }
        }
    };
    let (user, user_db) = spec(o.user.as_ref())?;
    let (group, group_db) = spec(o.group.as_ref())?;
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    Ok(Some(rootless::Chown {
        user,
        group,
        user_db,
        group_db,
    }))
}
