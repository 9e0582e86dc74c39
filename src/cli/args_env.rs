//! The arguments of the development-environment commands (`up`, `exec`, `run`, `envs`,
//! `destroy`).

use clap::{Args, Subcommand};

use super::BuildArgs;

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Start this image instead of building (from envkit's store, else pulled from its
    /// registry); its envd labels say what runs in it. `--path` is the project mounted.
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// The environment's name (default: the project directory's name, as envd normalizes it).
    #[arg(long)]
    pub name: Option<String>,
    /// Start it and return, without a shell.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Extra bind mounts, `HOST:CONTAINER` (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER")]
    pub volume: Vec<String>,
    /// Size of /dev/shm in MB (default `config.shm_size`, else 2048).
    #[arg(long = "shm-size", value_name = "MB")]
    pub shm_size: Option<u64>,
    /// Replace an environment of the same name that is running.
    #[arg(long)]
    pub force: bool,
    /// GPUs: `all` (or a count; envkit gives every NVIDIA device) — overrides `config.gpu`.
    #[arg(long, value_name = "N|all")]
    pub gpus: Option<String>,
    /// No GPUs even if the build file asks for them.
    #[arg(long = "no-gpu")]
    pub no_gpu: bool,
    /// Give the command a pseudo-terminal of the environment's own (default: when stdin and
    /// stdout are terminals); the caller's terminal itself is never passed in.
    #[arg(long = "tty", conflicts_with = "no_tty")]
    pub tty: bool,
    /// No pseudo-terminal: stdin, stdout and stderr as they are (never as a controlling
    /// terminal of the command).
    #[arg(long = "no-tty")]
    pub no_tty: bool,
}

/// The pty choice of `-t` / `--no-tty`.
pub(crate) fn tty_mode(tty: bool, no_tty: bool) -> rootless::TtyMode {
    match (tty, no_tty) {
        (true, _) => rootless::TtyMode::Always,
        (_, true) => rootless::TtyMode::Never,
        _ => rootless::TtyMode::Auto,
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The environment (default: the current directory's name).
    pub name: Option<String>,
    /// Run the `runtime.command` of this name instead.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "NAME",
        conflicts_with = "args"
    )]
    pub command: Option<String>,
    /// Give the command a pseudo-terminal of the environment's own (default: when stdin and
    /// stdout are terminals); the caller's terminal itself is never passed in.
    #[arg(short = 't', long = "tty", conflicts_with = "no_tty")]
    pub tty: bool,
    /// No pseudo-terminal: stdin, stdout and stderr as they are (never as a controlling
    /// terminal of the command).
    #[arg(long = "no-tty")]
    pub no_tty: bool,
    /// Keep stdin attached, as `docker exec -i`: alone it means no pseudo-terminal (like
    /// `--no-tty`), with `-t` (`-it`) a pseudo-terminal.
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// Keep the environment afterwards (default: it is removed, like `--rm`).
    #[arg(long, conflicts_with = "rm")]
    pub keep: bool,
    /// Remove the environment afterwards (the default).
    #[arg(long)]
    pub rm: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EnvsCommand {
    /// NAME IMAGE STATUS PORTS PID CREATED.
    #[command(alias = "list", alias = "l")]
    Ls {
        /// `table` (default) or `json`.
        #[arg(long, short = 'f')]
        format: Option<String>,
    },
    /// Image, mounts, ports, daemons and processes of one environment.
    #[command(alias = "d")]
    Describe {
        /// Default: the current directory's name.
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The environment (default: the current directory's name).
    #[arg(conflicts_with = "name_flag")]
    pub name: Option<String>,
    /// The same, as envd spells it.
    #[arg(long = "name", short = 'n', value_name = "NAME")]
    pub name_flag: Option<String>,
}
