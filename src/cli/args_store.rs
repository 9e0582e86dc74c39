//! The arguments of the store, image and context commands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    /// Also empty the cache mounts (apt, pip, … caches of build steps) and drop what only
    /// speeds builds up: stat caches of build contexts, kept evaluations of build files,
    /// `--explain-cache` records.
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
