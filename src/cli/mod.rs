//! The command line: clap commands, the only place that prints and that uses `anyhow`.

mod build;
mod debug;
mod envs;
mod images;
mod info;
mod remote;
mod store;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "envkit",
    version,
    about = "Build envd environments into OCI images — no daemon, no Docker, no root"
)]
pub struct Cli {
    /// Store root (default $XDG_DATA_HOME/envkit).
    #[arg(long, global = true, env = "ENVKIT_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Config file (default $XDG_CONFIG_HOME/envkit/config.toml).
    #[arg(long, global = true, env = "ENVKIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// The context (builder) to use instead of the current one (`envkit context ls`).
    #[arg(long, global = true, env = "ENVKIT_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an environment from a build.envd.
    #[command(alias = "b")]
    Build(BuildArgs),
    /// Run an LLB Definition (from any BuildKit client) with envkit's engine.
    Solve(SolveArgs),
    /// Show what the store holds, by kind.
    Du,
    /// Remove build cache no image needs (and then unreferenced blobs).
    Prune(PruneArgs),
    /// Verify the store (blob digests, build cache records and chains, images' blobs,
    /// leftovers of killed processes); exit code 1 when something is wrong.
    Check {
        /// Remove what is broken (a rebuild or pull makes it again).
        #[arg(long)]
        repair: bool,
    },
    /// The images in envkit's image store: list (the default), inspect, remove.
    #[command(alias = "image")]
    Images {
        #[command(subcommand)]
        what: Option<ImagesCommand>,
    },
    /// Write images of the store to an archive (OCI layout by default; `docker load` reads
    /// `--format docker`).
    Save(SaveArgs),
    /// Read images from an archive (OCI layout or `docker save`, plain or gzip) into the store.
    Load(LoadArgs),
    /// Build, start a development environment (rootless, host network, the project mounted)
    /// and open a shell in it.
    #[command(alias = "u")]
    Up(UpArgs),
    /// Run a command (default: the shell) in a running environment.
    Exec(ExecArgs),
    /// Build, run one command in a fresh environment, and remove it; its exit code is ours.
    #[command(alias = "c")]
    Run(RunArgs),
    /// The development environments: list (the default) or describe one.
    #[command(alias = "env")]
    Envs {
        #[command(subcommand)]
        what: Option<EnvsCommand>,
    },
    /// Builders to use: the embedded engine, a buildkitd, or the BuildKit inside a dockerd.
    Context {
        #[command(subcommand)]
        what: ContextCommand,
    },
    /// Stop an environment's processes and remove it (idempotent).
    #[command(alias = "down")]
    Destroy(DestroyArgs),
    /// Push an image of envkit's store to a registry (credentials from docker's config).
    Push(PushArgs),
    /// What the engine is and does here: version, store, snapshotter, the network of build
    /// steps, platforms, and how steps and environments are confined.
    Info {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect what envkit would build.
    Debug {
        #[command(subcommand)]
        what: DebugCommand,
    },
    /// Reference documentation.
    #[command(name = "reference")]
    Reference {
        #[command(subcommand)]
        what: ReferenceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReferenceCommand {
    /// Every envd builtin envkit implements, with its signature and description (Markdown).
    Builtins,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print the LLB Definition a build.envd compiles to.
    Llb(LlbArgs),
}

/// Where the build file is: like envd's `-p` and `-f`.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Build context directory.
    #[arg(short = 'p', long = "path", default_value = ".")]
    pub path: PathBuf,
    /// Build file and function, `file[:func]`.
    #[arg(short = 'f', long = "from", default_value = "build.envd:build")]
    pub from: String,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Image name in envkit's store (default `<basename of path>:dev`).
    #[arg(short = 't', long = "tag")]
    pub tag: Option<String>,
    /// Output, buildctl-style: `type=oci,dest=FILE[,name=REF]` or `type=image,name=REF`.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// What `build` and `solve` tell the engine.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Host CA bundle that build steps trust (overrides `[worker] ca-bundle`).
    #[arg(long = "ca-bundle", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Progress output: `tty` (a live view), `plain` (one line per event, for logs),
    /// `rawjson` (BuildKit SolveStatus JSON lines); `auto` is tty on a terminal, else plain.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tty", "plain", "rawjson"])]
    pub progress: String,
    /// How many steps may run at once (default `[worker] max-parallelism`, else the
    /// number of cores).
    #[arg(long, value_name = "N")]
    pub parallelism: Option<usize>,
    /// A secret for steps that mount one: `id=ID,src=FILE` or `id=ID,env=VAR` (repeatable),
    /// like buildctl's. Secrets never enter a layer, a cache key or a log.
    #[arg(long, value_name = "SPEC")]
    pub secret: Vec<String>,
    /// An ssh agent for steps that mount one: `ID[=SOCKET]` (repeatable; `default` alone
    /// uses $SSH_AUTH_SOCK), like buildctl's.
    #[arg(long, value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Run every step again instead of taking it from the cache (images, local dirs and
    /// downloads with a checksum are content-addressed and stay cached).
    #[arg(long)]
    pub no_cache: bool,
    /// Grant an entitlement a step may ask for: `network.host` or `security.insecure`
    /// (repeatable), as with buildctl.
    #[arg(long, value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images (name, digest, size, created).
    #[command(alias = "list")]
    Ls,
    /// Print an image's record, manifest and config as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove images from the store (their blobs go with the next `envkit prune`).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Add a context.
    Create {
        #[arg(long)]
        name: String,
        /// embedded, buildkitd or dockerd.
        #[arg(long, default_value = "buildkitd")]
        builder: String,
        /// buildkitd: unix:///path or tcp://host:port; dockerd: its API socket (default
        /// $DOCKER_HOST, else unix:///var/run/docker.sock).
        #[arg(long)]
        endpoint: Option<String>,
        /// Make it the current context.
        #[arg(long = "use")]
        use_: bool,
        /// TLS for a tcp:// buildkitd: the CA that signed its certificate (default: the
        /// host's bundle, when any TLS option is given).
        #[arg(long)]
        tlscacert: Option<PathBuf>,
        /// TLS client certificate (with --tlskey).
        #[arg(long)]
        tlscert: Option<PathBuf>,
        /// TLS client key.
        #[arg(long)]
        tlskey: Option<PathBuf>,
        /// The name its certificate carries (default: the endpoint's host).
        #[arg(long)]
        tlsservername: Option<String>,
    },
    /// List the contexts (the current one is starred).
    #[command(alias = "list")]
    Ls,
    /// Make a context the current one.
    Use {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Remove a context (not the current one).
    #[command(alias = "remove")]
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

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

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images of the store (`envkit images`).
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Where to write: a file, or - for stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// oci (an OCI image layout: envkit load, podman load, skopeo) or docker (docker load).
    #[arg(long, default_value = "oci", value_name = "FORMAT")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The archive (default: stdin).
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Name for images the archive leaves unnamed (and the first name of a lone image).
    #[arg(short, long, value_name = "NAME")]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image's name in envkit's store (`envkit images`); also where it goes.
    pub image: String,
    /// Push it under this name instead.
    #[arg(long, value_name = "REF")]
    pub to: Option<String>,
    /// Layer compression: gzip (default), zstd or uncompressed.
    #[arg(long, value_name = "KIND")]
    pub compression: Option<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also empty the cache mounts (apt, pip, … caches of build steps).
    #[arg(long)]
    pub all: bool,
    /// Keep the most recently used build cache up to this size (`10GB`, `512MiB`; a bare
    /// number is MB, like envd's).
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
    /// `until=DURATION`: only what was last used longer ago (`24h`, `7d`, `1h30m`);
    /// `type=exec.cachemount`: only the cache mounts; `type=regular`: only build cache.
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SolveArgs {
    /// The Definition's protobuf bytes (`-` or nothing: stdin).
    #[arg(long = "input", short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// The same as `--input`.
    #[arg(value_name = "FILE", conflicts_with = "input")]
    pub file: Option<PathBuf>,
    /// A local source the Definition names, `NAME=DIR` (repeatable), like buildctl's.
    #[arg(long, value_name = "NAME=DIR")]
    pub local: Vec<String>,
    /// Image name in envkit's store.
    #[arg(short = 't', long = "tag", default_value = "envkit-solve:latest")]
    pub tag: String,
    /// Output, buildctl-style (as for `build`).
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct LlbArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// One JSON object per op (the default).
    #[arg(long, conflicts_with_all = ["dot", "pb", "svg"])]
    pub json: bool,
    /// A Graphviz graph for people: op kinds, names, commands, cache mounts.
    #[arg(long, conflicts_with_all = ["pb", "svg"])]
    pub dot: bool,
    /// The same graph rendered to SVG by Graphviz (`dot` must be on PATH).
    #[arg(long, conflicts_with = "pb")]
    pub svg: bool,
    /// The Definition's protobuf bytes (for `buildctl build` or `envkit solve`).
    #[arg(long)]
    pub pb: bool,
    /// The BuildKit to lower for: `embedded` (what `envkit build` runs), `buildkitd`
    /// (parallel branches joined with Merge/Diff, as envd does) or `dockerd` (no Merge/Diff).
    #[arg(long, default_value = "embedded")]
    pub target: crate::lower::Target,
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.debug {
        "envkit=debug,info"
    } else {
        "warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENVKIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C (or SIGTERM) drops the command's future: running steps are killed with their
    // helpers, uncommitted snapshots are left as `tmp-*` dirs that the next run removes, and
    // nothing half-written is ever committed.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(cli) => Some(r),
            _ = interrupted() => None,
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(10));
    match outcome {
        Some(Ok(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Some(Err(e)) => {
            let _ = std::io::stdout().flush();
            eprintln!("{}", render_error(&e));
            ExitCode::FAILURE
        }
        None => {
            eprintln!("interrupted: running steps were stopped; the store is consistent");
            ExitCode::from(130)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default action (exit) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// `error: <outermost>` then each cause on its own line, leaving out a cause whose text the
/// lines above already show (many errors print their source inline). Frontend errors carry
/// their own `file:line:col` and caret layout and are shown as they are.
fn render_error(e: &anyhow::Error) -> String {
    if let Some(fe) = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::frontend::FrontendError>())
    {
        return fe.to_string();
    }
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
    }
    out
}

/// Runs the command; its exit code (0, or what `exec`/`run`'s command or `check` says).
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let done = match cli.command {
        Command::Build(ref args) => build::build(&cli, args).await,
        Command::Solve(ref args) => build::solve(&cli, args).await,
        Command::Images { ref what } => match what {
            None | Some(ImagesCommand::Ls) => images::list(&cli),
            Some(ImagesCommand::Inspect { names }) => images::inspect(&cli, names),
            Some(ImagesCommand::Rm { names }) => images::remove(&cli, names),
        },
        Command::Save(ref args) => images::save(&cli, args),
        Command::Up(ref args) => envs::up(&cli, args).await,
        Command::Exec(ref args) => return tokio::task::block_in_place(|| envs::exec(&cli, args)),
        Command::Run(ref args) => return envs::run(&cli, args).await,
        Command::Envs { ref what } => envs::envs(&cli, what),
        Command::Context { ref what } => remote::context_cmd(what),
        Command::Destroy(ref args) => envs::destroy(&cli, args).await,
        Command::Load(ref args) => images::load(&cli, args),
        Command::Push(ref args) => images::push(&cli, args).await,
        Command::Du => store::du(&cli),
        Command::Info { json } => info::info(&cli, json).await,
        Command::Prune(ref args) => store::prune(&cli, args).await,
        Command::Check { repair } => return store::check(&cli, repair).await,
        Command::Debug {
            what: DebugCommand::Llb(ref args),
        } => debug::debug_llb(&cli, args).await,
        Command::Reference {
            what: ReferenceCommand::Builtins,
        } => {
            std::io::stdout().write_all(crate::frontend::builtins_reference().as_bytes())?;
            Ok(())
        }
    };
    done.map(|()| 0)
}
