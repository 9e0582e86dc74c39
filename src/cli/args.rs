//! The command line's arguments: the top level, and building (`build`, `solve`, `debug llb`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{
    ContextCommand, DestroyArgs, EnvsCommand, ExecArgs, ImagesCommand, LoadArgs, PruneArgs,
    PushArgs, RunArgs, SaveArgs, UpArgs,
};

#[derive(Debug, Parser)]
#[command(
    name = "envkit",
    version,
    about = "Build envd environments into OCI images — no daemon, no Docker, no root"
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes.
#[derive(Debug, Args)]
pub struct Globals {
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
    /// The config file once read (a build reads it for the cache defaults, then the engine).
    #[arg(skip)]
    pub(super) loaded: std::sync::OnceLock<crate::config::Config>,
}

impl Globals {
    /// The config file (`--config`, else its default place), read once per command.
    pub fn load_config(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        if let Some(c) = self.loaded.get() {
            return Ok(c.clone());
        }
        let c = crate::config::Config::load(self.config.as_deref())?;
        Ok(self.loaded.get_or_init(|| c).clone())
    }
}

impl Cli {
    /// A rebuild's command line (`build`, `solve`), parsed without clap (`quick.rs`: clap
    /// builds every argument before it parses, ~0.3 ms of a new process); `None` for anything
    /// else, which is clap's (`Cli::parse`) to parse.
    pub fn parse_quick() -> Option<Cli> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        super::quick::parse(&args, &|var| std::env::var_os(var))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an environment from a build.envd.
    #[command(alias = "b")]
    Build(BuildCommand),
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
    /// Build file and function, `file[:func]`; a file named `Dockerfile`, `Containerfile` or
    /// `*.Dockerfile` is a Dockerfile (without `-f`, a context that has a Dockerfile and no
    /// build.envd builds the Dockerfile).
    #[arg(short = 'f', long = "from", default_value = "build.envd:build")]
    pub from: String,
    /// `envd`, `dockerfile`, or `auto` (by the file's name).
    #[arg(long, default_value = "auto", value_parser = ["auto", "envd", "dockerfile"])]
    pub frontend: String,
    /// A Dockerfile's build argument, `KEY=VALUE` (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_arg: Vec<String>,
    /// The Dockerfile stage to build (default: the last), as `docker build --target`.
    #[arg(
        long = "stage",
        visible_alias = "dockerfile-target",
        value_name = "STAGE"
    )]
    pub stage: Option<String>,
    /// The platform to build for, `os/arch[/variant]` (default: this machine's); `build`
    /// takes a comma list and makes one multi-platform image (an OCI index). Steps of another
    /// architecture run under QEMU user emulation (`envkit info` lists what runs).
    #[arg(long, value_name = "PLATFORM[,PLATFORM…]")]
    pub platform: Option<String>,
    /// Give build steps this shell's `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (envd's flag):
    /// a Dockerfile gets them as build arguments (every RUN sees them, as in BuildKit), a build
    /// file's steps as their proxy variables. Either way they stay out of cache keys.
    #[arg(long = "use-proxy", visible_alias = "proxy")]
    pub use_proxy: bool,
    /// How a base image's tag is resolved: `always` asks the registry what it names on every
    /// build (BuildKit's default); `missing` uses what it named last time when the store
    /// still has that image, and asks only otherwise (BuildKit's `local` resolve mode,
    /// buildah's `--pull=missing`: no network on a rebuild, but a moved tag is not seen).
    #[arg(long, value_name = "POLICY", default_value = "always", value_parser = ["always", "missing"])]
    pub pull: String,
}

impl SourceArgs {
    /// `--pull` as the registry's resolve mode.
    pub fn resolve_mode(&self) -> crate::registry::ResolveMode {
        match self.pull.as_str() {
            "missing" => crate::registry::ResolveMode::PreferLocal,
            _ => crate::registry::ResolveMode::Default,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Image name in envkit's store (default `<basename of path>:dev`).
    #[arg(short = 't', long = "tag")]
    pub tag: Option<String>,
    /// Output, buildctl-style: `type=oci,dest=FILE[,name=REF]` or `type=image,name=REF`.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
    /// With several platforms: build each in turn as an image of its own, its tag ending in
    /// `-<os>-<arch>` (what envd does), instead of one multi-platform image.
    #[arg(long = "platform-tags")]
    pub platform_tags: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `envkit build`: [`BuildArgs`] and what only `build` takes.
#[derive(Debug, Args)]
pub struct BuildCommand {
    #[command(flatten)]
    pub args: BuildArgs,
    /// Accepted for envd's `--force`: envd skips a build whose image looks current; envkit
    /// always builds, and its cache makes an unchanged build quick.
    #[arg(long)]
    pub force: bool,
}

/// What `build` and `solve` tell the engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Host CA bundle that build steps trust (overrides `[worker] ca-bundle`).
    #[arg(long = "ca-bundle", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Progress output: `tty` (a live view), `plain` (one line per event, for logs),
    /// `rawjson` (BuildKit SolveStatus JSON lines); `auto` is tty on a terminal, else plain.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tty", "plain", "rawjson"])]
    pub progress: String,
    /// How many steps may run at once (default `[worker] max-parallelism`, else 64: steps
    /// mostly wait, so the number of cores is no limit of theirs).
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
    /// Import a build cache, buildctl-style (repeatable): `type=local,src=DIR[,tag=T]`,
    /// `type=registry,ref=REF` (or a bare REF). A cache that cannot be read is a warning.
    #[arg(long = "import-cache", visible_alias = "ic", value_name = "SPEC")]
    pub import_cache: Vec<String>,
    /// Export the build cache in BuildKit's format (repeatable): `type=local,dest=DIR`,
    /// `type=registry,ref=REF` or `type=inline`, with `mode=min|max`, `compression=…`,
    /// `ignore-error=true` as in buildctl.
    #[arg(long = "export-cache", visible_alias = "ec", value_name = "SPEC")]
    pub export_cache: Vec<String>,
    /// Say for every step whether it comes from the cache and, for one that runs, what
    /// changed since the last build of the same image: the step (which fields), an input, a
    /// file of the context (which, and how), the base image.
    #[arg(long = "explain-cache")]
    pub explain_cache: bool,
    /// Leave out the `[cache]` imports and exports of config.toml.
    #[arg(long = "no-cache-defaults")]
    pub no_cache_defaults: bool,
    /// Run every step again instead of taking it from the cache (images, local dirs and
    /// downloads with a checksum are content-addressed and stay cached).
    #[arg(long)]
    pub no_cache: bool,
    /// Grant an entitlement a step may ask for: `network.host` or `security.insecure`
    /// (repeatable), as with buildctl.
    #[arg(long, value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
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
    /// How the Definition's image tags are resolved where its ops do not say: `always` asks
    /// the registry (BuildKit's default); `missing` uses what a tag named last time when the
    /// store still has that image (the ops get `image.resolvemode=local`, as from
    /// `llb.Image(ref, llb.ResolveModePreferLocal)`; a remote BuildKit gets that Definition).
    #[arg(long, value_name = "POLICY", default_value = "always", value_parser = ["always", "missing"])]
    pub pull: String,
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

#[cfg(test)]
mod tests {
    /// clap's own checks of the whole command line (a flag flattened twice into one command,
    /// say), which otherwise only fire when that command runs.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
