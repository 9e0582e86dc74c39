//! envkit's config file (`$XDG_CONFIG_HOME/envkit/config.toml`), buildkitd.toml-shaped.
