//! The system stages of envd's graph (its `system.go`): base image and environment, apt source
//! and packages, `io.http`, `io.copy`, `run()` groups and `runtime.mount` directories.

use super::{Compiler, ENVD_HOME, context_local, named};
use crate::ir;
use crate::llb::{
    self, CacheSharing, Constraints, CopyOptions, FileAction, HttpOptions, MkdirOptions,
    MkfileOptions, Mount, Run, State,
};

const APT_SOURCE_FILE: &str = "/etc/apt/sources.list";

impl Compiler<'_> {
    /// Stage 1: the base image with envd's build environment: envd's base variables, then the
    /// runtime environment (base `ENV`s and `runtime.environ`, by key).
    pub(super) fn base_state(&self) -> State {
        let mut s = llb::image_with(
            &self.image,
            llb::ImageOptions {
                resolve_mode: self.opts.base_resolve,
                ..Default::default()
            },
        )
        .add_env("DEBIAN_FRONTEND", "noninteractive")
        .add_env("PATH", ir::DEFAULT_PATH)
        .add_env("LANG", "C.UTF-8")
        .add_env("LC_ALL", "C.UTF-8");
        for (k, v) in &self.environ {
            s = s.add_env(k, v);
        }
        s
    }

    /// Stage 2: `config.apt_source` → /etc/apt/sources.list.
    pub(super) fn apt_source(&self, root: State) -> State {
        let Some(text) = &self.env.apt_source else {
            return root;
        };
        let name = "[internal] setting apt source";
        root.file(
            FileAction::new().mkdir("/etc/apt", 0o755, parents()),
            named(name),
        )
        .file(
            FileAction::new().mkfile(
                APT_SOURCE_FILE,
                0o644,
                text.as_bytes(),
                MkfileOptions::default(),
            ),
            named(name),
        )
    }

    /// Stage 4: every `install.apt_packages` name in one apt-get run, with envd's cache mounts.
    pub(super) fn system_packages(&self, root: State) -> State {
        let pkgs = &self.env.apt_packages;
        if pkgs.is_empty() {
            return root;
        }
        let mut cmd = String::from("apt-get update && apt-get install -y --no-install-recommends");
        for p in pkgs {
            cmd.push(' ');
            cmd.push_str(p);
        }
        let run = Run::shlex(&format!("bash -c \"{cmd}\""))
            .custom_name(format!("apt-get install {}", pkgs.join(" ")))
            .mount(Mount::cache(
                "/var/cache/apt",
                &self.cache_id("/var/cache/apt"),
                CacheSharing::Shared,
            ))
            .mount(Mount::cache(
                "/var/lib/apt",
                &self.cache_id("/var/lib/apt"),
                CacheSharing::Shared,
            ));
        root.run(run).root()
    }

    /// Stage 7: `io.http` downloads into `/home/envd/extra_source`: chained copies, or (with
    /// Merge) one scratch layer per download merged under the graph. envd puts the graph
    /// last in that merge, so later steps get the first layer's (empty) environment, as in envd.
    pub(super) fn extra_source(&self, root: State) -> State {
        if self.env.http.is_empty() {
            return root;
        }
        let dest = format!("{ENVD_HOME}/extra_source");
        let copy_of = |base: &State, h: &ir::HttpSource| {
            let src = llb::http(
                &h.url,
                HttpOptions {
                    checksum: h.checksum.clone(),
                    filename: Some(h.filename.clone()),
                    uid: self.opts.owner.0,
                    gid: self.opts.owner.1,
                    ..Default::default()
                },
            );
            base.file(
                FileAction::new().copy(
                    &src,
                    "/",
                    &dest,
                    CopyOptions {
                        create_dest_path: true,
                        ..Default::default()
                    },
                ),
                Constraints::new(),
            )
        };
        if !self.opts.target.merge_op() {
            return self
                .env
                .http
                .iter()
                .fold(root, |state, h| copy_of(&state, h));
        }
        let mut inputs: Vec<State> = self
            .env
            .http
            .iter()
            .map(|h| copy_of(&llb::scratch(), h))
            .collect();
        inputs.push(root);
        llb::merge(&inputs, named("[internal] build source layers"))
    }

    /// Stage 8: `io.copy`, in call order, from the build context or an image.
    pub(super) fn copies(&self, root: State) -> State {
        let mut root = root;
        for c in &self.env.copies {
            let from = match &c.image {
                Some(img) => llb::image(img),
                None => context_local(),
            };
            root = root.file(
                FileAction::new().copy(
                    &from,
                    &c.source,
                    &c.target,
                    CopyOptions {
                        create_dest_path: true,
                        chown: Some(self.chown()),
                        ..Default::default()
                    },
                ),
                Constraints::new(),
            );
        }
        root
    }

    /// Stage 11: each `run()` group is one `bash -c` exec in `/home/envd/<env name>`.
    pub(super) fn run_groups(&self, root: State) -> State {
        let mut root = root;
        let wd = self.working_dir();
        for group in &self.env.run {
            let mut script = String::from("set -euo pipefail\n");
            for c in &group.commands {
                script.push_str(c);
                script.push('\n');
            }
            // envd wraps the script in single quotes and shell-lexes the result; a quote inside
            // a command therefore splits the script (ENVD_API.md §6.11). Same bytes as envd.
            let mut run = Run::shlex(&format!("bash -c '{script}'"));
            if group.mount_host {
                run = run.mount(Mount::bind(&wd, &context_local()));
            }
            root = root.dir(&wd).run(run).root();
        }
        root
    }

    /// Stage 12: the working directory (dev), then the target directory of each
    /// `runtime.mount`, owned by the owner.
    pub(super) fn mount_dirs(&self, root: State) -> State {
        let mut root = if self.env.dev {
            self.dev_workdir(root)
        } else {
            root
        };
        for m in &self.env.mounts {
            root = root.file(
                FileAction::new().mkdir(
                    &m.envd_path,
                    0o755,
                    MkdirOptions {
                        make_parents: true,
                        chown: Some(self.chown()),
                        ..Default::default()
                    },
                ),
                named(format!(
                    "[internal] create dir for runtime.mount {}",
                    m.envd_path
                )),
            );
        }
        root
    }
}

/// `llb.WithParents(true)`.
pub(super) fn parents() -> MkdirOptions {
    MkdirOptions {
        make_parents: true,
        ..Default::default()
    }
}
