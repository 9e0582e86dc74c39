//! The development-environment graph (`base(dev=True)`), as envd lowers it: a prelude before
//! the packages (built-in apt packages, envd-sshd, horust, starship, the `envd` user) and a
//! post-processing after them (git config, ownership and the switch to the `envd` user, the
//! SSH key, the shell, the prompt, horust services for sshd/init/daemons/Jupyter/RStudio,
//! VS Code extensions). envd's `user.go`, `shell.go`, `starship.go`, `supervisor.go`,
//! `editor.go`, `git.go`.
//!
//! One deviation: for `shell("zsh")` envd writes oh-my-zsh's own installer and envd's zshrc
//! into the image; envkit writes short files of its own with the same purpose (oh-my-zsh
//! itself is copied from the host cache, as in envd), so those two ops differ from envd's.

use super::system::parents;
use super::{Compiler, ENVD_HOME, LowerError, named};
use crate::ir;
use crate::llb::{
    self, CopyOptions, FileAction, LocalOptions, MkdirOptions, MkfileOptions, Run, State,
};

const CURL_IMAGE: &str = "ghcr.io/curl/curl-container/curl-multi:8.17.0";
/// envd-sshd as published with envd v1.3.4.
pub(super) const SSHD_IMAGE: &str = "ghcr.io/tensorchord/envd-sshd-from-scratch:v1.3.4";
const HORUST_IMAGE: &str = "ghcr.io/federicoponzi/horust:0.1.11";
const HORUST_SERVICES: &str = "/etc/horust/services";
const STARSHIP_VERSION: &str = "1.24.0";
const FISH_VERSION: &str = "4.2.0";
/// The host cache envd mounts as `local://cache-dir` (oh-my-zsh, VS Code extensions).
pub const CACHE_LOCAL: &str = "cache-dir";
/// envd's SSH port inside the environment.
pub(super) const SSH_PORT: u16 = 2222;

/// envd's `types.BaseAptPackage`, in order (two entries carry literal quotes).
const BASE_APT_PACKAGES: &[&str] = &[
    "bash-static",
    "'libtinfo[56]'",
    "'libncursesw[56]'",
    "bzip2",
    "ca-certificates",
    "libglib2.0-0",
    "libsm6",
    "libxext6",
    "libxrender1",
    "mercurial",
    "procps",
    "subversion",
    "wget",
    "curl",
    "openssh-client",
    "git",
    "sudo",
    "vim",
    "make",
    "zsh",
    "locales",
    "gpg",
    "libatomic1",
];

/// envd's starship config (`starship.go`).
const STARSHIP_CONFIG: &str = "\n[container]\nformat = \"[$symbol \\\\[envd\\\\]]($style)\"\n\n[sudo]\ndisabled = false\nsymbol = \"sudo \"\n\n[python]\nsymbol = \"Py \"\n\n[pixi]\nsymbol = \"Pixi \"\n\n[conda]\nsymbol = \"Conda \"\n\n[nodejs]\nsymbol = \"NodeJS \"\n\n[golang]\nsymbol = \"Go \"\n\n[rust]\nsymbol = \"Rust \"\n\n[julia]\nsymbol = \"Julia\u{2234} \"\n\n[rlang]\nsymbol = \"R \"\n\n[status]\nformat = '[\\[$status:$common_meaning$signal_name\\]]($style) '\ndisabled = false\n\n[git_branch]\nsymbol = \"git \"\n\n[git_commit]\ntag_symbol = \" tag \"\n\n[git_status]\nahead = \">\"\nbehind = \"<\"\ndiverged = \"<>\"\nrenamed = \"r\"\ndeleted = \"x\"\n";

/// What envkit runs after copying oh-my-zsh into the image (envd runs oh-my-zsh's installer).
const ZSH_INSTALL: &str = "#!/bin/sh\n# Written by envkit: oh-my-zsh is already in ~/.oh-my-zsh; make zsh the login shell.\nset -e\nif command -v chsh >/dev/null 2>&1; then\n  chsh -s \"$(command -v zsh)\" \"$(id -un)\" 2>/dev/null || true\nfi\n";
/// envkit's `~/.zshrc` for dev environments.
const ZSHRC: &str = "# Written by envkit.\nexport ZSH=\"$HOME/.oh-my-zsh\"\nZSH_THEME=\"\"\nplugins=(git)\nsource \"$ZSH/oh-my-zsh.sh\"\nexport PATH=$PATH:$HOME/.local/bin\n";

fn run(cmd: &str, name: impl Into<String>) -> Run {
    Run::shlex(cmd).custom_name(name)
}

fn home(p: &str) -> String {
    format!("{ENVD_HOME}/{p}")
}

impl Compiler<'_> {
    fn uid(&self) -> u32 {
        self.opts.owner.0
    }

    fn gid(&self) -> u32 {
        self.opts.owner.1
    }

    fn mkfile_owned(
        &self,
        root: &State,
        path: &str,
        mode: u32,
        data: &[u8],
        name: Option<String>,
    ) -> State {
        let c = match name {
            Some(n) => named(n),
            None => llb::Constraints::new(),
        };
        root.file(
            FileAction::new().mkfile(
                path,
                mode,
                data,
                MkfileOptions {
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            c,
        )
    }

    /// The dev prelude, before the system packages: built-in apt packages, envd-sshd, horust,
    /// starship, and the `envd` user.
    pub(super) fn dev_prelude(&self, root: State) -> State {
        let cmd = format!(
            "apt-get update && apt-get install -y apt-utils && apt-get install -y --no-install-recommends --no-install-suggests --fix-missing {}&& rm -rf /var/lib/apt/lists/*",
            BASE_APT_PACKAGES.join(" ")
        );
        let s = root
            .run(run(
                &format!("bash -c \"{cmd}\""),
                "[internal] install built-in packages",
            ))
            .root();
        let s = s.file(
            FileAction::new().copy(
                &llb::image(SSHD_IMAGE),
                "/usr/bin/envd-sshd",
                "/var/envd/bin/envd-sshd",
                CopyOptions {
                    create_dest_path: true,
                    ..Default::default()
                },
            ),
            named(format!("[internal] add envd-sshd from {SSHD_IMAGE}")),
        );
        let mkdir = |s: State, path: &str, mode: u32, what: &str| {
            s.file(
                FileAction::new().mkdir(path, mode, parents()),
                named(format!("[internal] mkdir for horust {what}: {path}")),
            )
        };
        let s = s.file(
            FileAction::new().copy(
                &llb::image(HORUST_IMAGE),
                "/sbin/horust",
                "/usr/local/bin/horust",
                CopyOptions::default(),
            ),
            named("[internal] install horust"),
        );
        let s = mkdir(s, HORUST_SERVICES, 0o755, "service");
        let s = mkdir(s, "/var/run/horust", 0o777, "socket");
        let s = mkdir(s, "/var/log/horust", 0o777, "log");
        let s = s
            .run(run(
                "sudo chmod 777 /var/log/horust",
                "[internal] change directory permission for logging",
            ))
            .root();
        let starship = llb::image(CURL_IMAGE)
            .run(run(
                &format!(
                    "sh -c \"wget -qO- https://github.com/starship/starship/releases/download/v{STARSHIP_VERSION}/starship-$(uname -m)-unknown-linux-musl.tar.gz | tar -xz -C /tmp || exit 1\""
                ),
                format!("[internal] download starship {STARSHIP_VERSION}"),
            ))
            .root();
        let s = s.file(
            FileAction::new().copy(
                &starship,
                "/tmp/starship",
                "/usr/local/bin/starship",
                CopyOptions::default(),
            ),
            named(format!("[internal] install starship {STARSHIP_VERSION}")),
        );
        self.user_group(s)
    }

    /// The `envd` user: the owner's uid/gid, in sudoers; for uid 0, a user mapped onto root.
    fn user_group(&self, root: State) -> State {
        let steps: Vec<(String, String)> = if self.uid() == 0 {
            vec![
                (
                    "groupadd -g 1001 envd".into(),
                    "[internal] still create group envd for root context".into(),
                ),
                (
                    "useradd -p \"\" -u 1001 -g envd -s /bin/sh -m envd".into(),
                    "[internal] still create user envd for root context".into(),
                ),
                (
                    "usermod -s /bin/sh root".into(),
                    "[internal] set root default shell to /bin/sh".into(),
                ),
                (
                    "sed -i \"s/envd:x:1001:1001/envd:x:0:0/g\" /etc/passwd".into(),
                    "[internal] set envd uid to 0 as root".into(),
                ),
                (
                    "sed -i \"s./root./home/envd.g\" /etc/passwd".into(),
                    "[internal] set root home dir to /home/envd".into(),
                ),
                (
                    "sed -i \"s/envd:x:1001/envd:x:0/g\" /etc/group".into(),
                    "[internal] set envd group to 0 as root group".into(),
                ),
            ]
        } else {
            let (uid, gid) = (self.uid(), self.gid());
            vec![
                (
                    format!("groupadd -g {gid} envd"),
                    format!("[internal] create user group envd(g:{gid})"),
                ),
                (
                    format!("useradd -p \"\" -u {uid} -g envd -s /bin/sh -m envd"),
                    format!("[internal] create user envd(u:{uid})"),
                ),
                (
                    "usermod -a -G sudo envd".into(),
                    "[internal] add user envd to sudoers".into(),
                ),
                (
                    format!(
                        "install -d -o envd -g {gid} -m 0700 /home/envd/.config /home/envd/.cache"
                    ),
                    "[internal] mkdir config and cache".into(),
                ),
            ]
        };
        steps
            .iter()
            .fold(root, |s, (cmd, name)| s.run(run(cmd, name.clone())).root())
    }

    /// The dev post-processing, after the packages, copies and agents.
    pub(super) fn dev_post(&mut self, root: State) -> Result<State, LowerError> {
        let s = self.git_config(root);
        let s = self.user_own(s);
        let s = self.ssh_key(s);
        let s = self.shell(s);
        let mut s = self.prompt(s);
        if let Some(uv) = &self.env.uv {
            s = s
                .run(run(
                    &format!("uv python install {}", uv.python_version),
                    format!("[internal] install uv Python={}", uv.python_version),
                ))
                .root();
        }
        let s = self.services(s)?;
        Ok(self.vscode(s))
    }

    /// `git_config()` → `/home/envd/.gitconfig`.
    fn git_config(&self, root: State) -> State {
        let Some(g) = &self.env.git_config else {
            return root;
        };
        let text = format!(
            "\n[user]\n\temail = {}\n\tname = {}\n[core]\n\teditor = {}\n\n",
            g.email, g.name, g.editor
        );
        self.mkfile_owned(&root, &home(".gitconfig"), 0o644, text.as_bytes(), None)
    }

    /// The dev user owns its directories, and later steps run as `envd` with envd's
    /// environment set again.
    fn user_own(&mut self, root: State) -> State {
        if self.uid() == 0 {
            self.environ.insert("USER".into(), "root".into());
            return root;
        }
        self.environ.insert("USER".into(), "envd".into());
        self.dev_user = Some("envd".to_string());
        let mut s = root;
        for dir in self.user_dirs.clone() {
            s = s
                .run(run(
                    &format!("chown -R envd:envd {dir}"),
                    format!("[internal] configure user permissions for {dir}"),
                ))
                .root();
        }
        let mut s = s
            .user("envd")
            .add_env("DEBIAN_FRONTEND", "noninteractive")
            .add_env("PATH", ir::DEFAULT_PATH)
            .add_env("LANG", "C.UTF-8")
            .add_env("LC_ALL", "C.UTF-8");
        for (k, v) in &self.environ {
            s = s.add_env(k, v);
        }
        s.add_env("PATH", &self.paths.join(":"))
    }

    /// The host's public key → `/var/envd/authorized_keys` (for envd-sshd).
    fn ssh_key(&self, root: State) -> State {
        let key = self.opts.ssh_public_key.trim_end_matches('\n');
        let s = root.file(
            FileAction::new().mkdir(
                "/var/envd",
                0o755,
                MkdirOptions {
                    make_parents: true,
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named("[internal] create dir for ssh key"),
        );
        self.mkfile_owned(
            &s,
            "/var/envd/authorized_keys",
            0o644,
            format!("{key} envd").as_bytes(),
            Some("[internal] install ssh keys".into()),
        )
    }

    /// `shell()`: zsh (oh-my-zsh from the host cache) or fish; conda and pixi shell hooks.
    fn shell(&mut self, root: State) -> State {
        let shell = self.env.shell.clone();
        let mut s = root;
        match shell.as_str() {
            "zsh" => {
                self.environ.insert("SHELL".into(), "/usr/bin/zsh".into());
                let install = home("install.sh");
                s = s
                    .file(
                        FileAction::new().copy(
                            &llb::local(CACHE_LOCAL, LocalOptions::default()),
                            "oh-my-zsh",
                            &home(".oh-my-zsh"),
                            CopyOptions {
                                create_dest_path: true,
                                ..Default::default()
                            },
                        ),
                        llb::Constraints::new(),
                    )
                    .file(
                        FileAction::new().mkfile(
                            &install,
                            0o666,
                            ZSH_INSTALL.as_bytes(),
                            Default::default(),
                        ),
                        llb::Constraints::new(),
                    )
                    .run(run(
                        &format!("bash {install}"),
                        "[internal] install oh-my-zsh",
                    ))
                    .root()
                    .file(
                        FileAction::new().mkfile(
                            &home(".zshrc"),
                            0o666,
                            ZSHRC.as_bytes(),
                            Default::default(),
                        ),
                        llb::Constraints::new(),
                    );
            }
            "fish" => {
                self.environ.insert("SHELL".into(), "/usr/bin/fish".into());
                let builder = llb::image(CURL_IMAGE)
                    .run(run(
                        &format!(
                            "sh -c \"wget -qO- https://github.com/fish-shell/fish-shell/releases/download/{FISH_VERSION}/fish-{FISH_VERSION}-linux-$(uname -m).tar.xz | tar -xJf - -C /tmp || exit 1\""
                        ),
                        "[internal] download fish shell",
                    ))
                    .root();
                s = s
                    .file(
                        FileAction::new().copy(
                            &builder,
                            "/tmp/fish",
                            "/usr/bin/fish",
                            CopyOptions::default(),
                        ),
                        named("[internal] install fish shell"),
                    )
                    .run(run(
                        &format!("sh -c \"mkdir -p {}\"", home(".config/fish")),
                        "[internal] init fish config dir",
                    ))
                    .root();
            }
            _ => {
                self.environ.insert("SHELL".into(), "bash".into());
            }
        }
        if self.env.conda.is_some() {
            let (rc, activate) = match shell.as_str() {
                "zsh" => (home(".zshrc"), "activate"),
                "fish" => (home(".config/fish/config.fish"), "activate.fish"),
                _ => (home(".bashrc"), "activate"),
            };
            s = s
                .run(run(
                    &format!("bash -c \"{}\"", self.conda_init_shell(&shell)),
                    format!("[internal] init conda {shell} env"),
                ))
                .root()
                .run(run(
                    &format!("bash -c 'echo \"source /opt/conda/bin/{activate} envd\" >> {rc}'"),
                    format!("[internal] add conda environment to {rc}"),
                ))
                .root();
        }
        if self.env.pixi.is_some() {
            let hook = match shell.as_str() {
                "zsh" => Some((
                    "sh -c 'echo \"eval \\\"\\$(pixi completion --shell zsh)\\\"\" >> ~/.zshrc'",
                    "[internal] setting pixi zsh config",
                )),
                "fish" => Some((
                    "sh -c 'echo \"pixi completion --shell fish | source\" >> ~/.config/fish/config.fish'",
                    "[internal] setting pixi fish config",
                )),
                "bash" => Some((
                    "sh -c 'echo \"eval \\\"\\$(pixi completion --shell bash)\\\"\" >> ~/.bashrc'",
                    "[internal] setting pixi bash config",
                )),
                _ => None,
            };
            if let Some((cmd, name)) = hook {
                s = s.run(run(cmd, name)).root();
            }
        }
        s
    }

    /// The starship prompt for bash (always) and zsh/fish.
    fn prompt(&self, root: State) -> State {
        let s = root.file(
            FileAction::new().mkdir(&home(".config"), 0o755, parents()),
            named("[internal] creating config dir"),
        );
        let s = self.mkfile_owned(
            &s,
            &home(".config/starship.toml"),
            0o644,
            STARSHIP_CONFIG.as_bytes(),
            Some("[internal] setting prompt starship config".into()),
        );
        let mut s = s
            .run(run(
                &format!(
                    "bash -c 'echo \"eval \\\"\\$(starship init bash)\\\"\" >> {}'",
                    home(".bashrc")
                ),
                "[internal] setting prompt bash config",
            ))
            .root();
        match self.env.shell.as_str() {
            "zsh" => {
                s = s
                    .run(run(
                        &format!(
                            "bash -c 'echo \"eval \\\"\\$(starship init zsh)\\\"\" >> {}'",
                            home(".zshrc")
                        ),
                        "[internal] setting prompt zsh config",
                    ))
                    .root();
            }
            "fish" => {
                s = s
                    .run(run(
                        &format!(
                            "bash -c 'echo \"starship init fish | source\" >> {}'",
                            home(".config/fish/config.fish")
                        ),
                        "[internal] setting prompt fish config",
                    ))
                    .root();
            }
            _ => {}
        }
        s
    }

    /// horust services: sshd, then `runtime.init` groups, daemons, Jupyter, RStudio.
    fn services(&mut self, root: State) -> Result<State, LowerError> {
        if !self.env.entrypoint.is_empty() {
            return Err(LowerError::Ir(ir::IrError::EntrypointInDevMode));
        }
        let mut s = self.service(
            root,
            "sshd",
            &format!(
                "/var/envd/bin/envd-sshd --port {SSH_PORT} --shell {}",
                self.env.shell
            ),
            &[],
        );
        let mut deps = Vec::new();
        for (i, cmds) in self.env.runtime_init.iter().enumerate() {
            let name = format!("init_{i}");
            let cmd = format!("/bin/bash -c 'set -euo pipefail\n{}'", cmds.join("\n"));
            s = self.service(s, &name, &cmd, &[]);
            deps.push(name);
        }
        for (i, argv) in self.env.runtime_daemon.iter().enumerate() {
            s = self.service(s, &format!("daemon_{i}"), &argv.join(" "), &deps);
        }
        if self.jupyter_token.is_some() {
            let token = match self.jupyter_token.as_deref() {
                Some("") | None => "''".to_string(),
                Some(t) => t.to_string(),
            };
            // envd rewrites an empty token to '' in its graph; the label shows that too.
            self.jupyter_token = Some(token.clone());
            let mut cmd = format!(
                "python3 -m notebook --ip 0.0.0.0 --notebook-dir ${{ENVD_WORKDIR}} --NotebookApp.token {token} --port 8888"
            );
            if self.uid() == 0 {
                cmd.push_str(" --allow-root");
            }
            s = self.service(s, "jupyter", &cmd, &deps);
        }
        if self.env.rstudio_server {
            s = self.service(
                s,
                "rstudio",
                "sudo /usr/lib/rstudio-server/bin/rserver",
                &deps,
            );
        }
        Ok(s)
    }

    fn service(&self, root: State, name: &str, command: &str, deps: &[String]) -> State {
        let mut after = String::new();
        if !deps.is_empty() {
            after.push_str("start-after = [");
            for d in deps {
                after.push('"');
                after.push_str(d);
                after.push_str("\",");
            }
            after.push_str("]\n");
        }
        let text = format!(
            "\nname = \"{name}\"\ncommand = \"\"\"\n{command}\n\"\"\"\nstdout = \"/var/log/horust/{name}_stdout.log\"\nstderr = \"/var/log/horust/{name}_stderr.log\"\nuser = \"${{USER}}\"\nworking-directory = \"${{ENVD_WORKDIR}}\"\n{after}\n\n[environment]\nkeep-env = true\n\n[restart]\nstrategy = \"on-failure\"\nbackoff = \"1s\"\nattempts = 2\n\n[termination]\nwait = \"5s\"\n"
        );
        let path = format!("{HORUST_SERVICES}/{name}.toml");
        self.mkfile_owned(
            &root,
            &path,
            0o644,
            text.as_bytes(),
            Some(format!("[internal] create file {path}")),
        )
    }

    /// `install.vscode_extensions`: each extension copied from the host cache (where it was
    /// downloaded from open-vsx) into the VS Code server's extension dir.
    fn vscode(&self, root: State) -> State {
        let platform = vscode_platform(&self.opts.platform);
        let mut s = root;
        for p in &self.env.vscode_plugins {
            let id = match &p.version {
                Some(v) => format!("{}.{}-{v}@{platform}", p.publisher, p.extension),
                None => format!("{}.{}@{platform}", p.publisher, p.extension),
            };
            s = s.file(
                FileAction::new().copy(
                    &llb::local(CACHE_LOCAL, LocalOptions::default()),
                    &format!("{id}/extension/"),
                    &home(&format!(".vscode-server/extensions/{id}")),
                    CopyOptions {
                        create_dest_path: true,
                        chown: Some(self.chown()),
                        ..Default::default()
                    },
                ),
                named(format!("install vscode plugin {id}")),
            );
        }
        s
    }

    /// Dev: the working directory `/home/envd/<env>`, owned by the owner.
    pub(super) fn dev_workdir(&self, root: State) -> State {
        let wd = self.working_dir();
        root.file(
            FileAction::new().mkdir(
                &wd,
                0o755,
                MkdirOptions {
                    make_parents: true,
                    chown: Some(self.chown()),
                    ..Default::default()
                },
            ),
            named(format!("[internal] create work dir: {wd}")),
        )
    }
}

/// VS Code's platform name for an OCI platform (`linux-x64`, ...).
fn vscode_platform(p: &llb::Platform) -> String {
    let name = match (p.os.as_str(), p.architecture.as_str()) {
        ("linux", "amd64") => "linux-x64",
        ("linux", "arm64") => "linux-arm64",
        ("linux", "arm") => "linux-armhf",
        ("windows", "amd64") => "win32-x64",
        ("windows", "386") => "win32-ia32",
        ("windows", "arm64") => "win32-arm64",
        ("darwin", "amd64") => "darwin-x64",
        ("darwin", "arm64") => "darwin-arm64",
        ("alpine", "amd64") => "alpine-x64",
        (os, arch) => return format!("{os}-{arch}"),
    };
    name.to_string()
}
