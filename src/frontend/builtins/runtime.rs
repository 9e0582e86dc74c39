//! `runtime.*`: what the environment does when it runs — named commands, daemons, init
//! scripts, exposed ports, the environment, and host directories mounted into it.

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::Value;
use starlark::values::dict::UnpackDictEntries;
use starlark::values::list::UnpackList;
use starlark::values::none::NoneType;

use super::data::DataSource;
use super::invalid;
use super::record;
use crate::ir::{Expose, MountDir};

/// Registers the members of the `runtime` namespace.
pub fn register_runtime(builder: &mut GlobalsBuilder) {
    members(builder);
}

/// `~` and `~/x` on the host: the user's home directory.
fn expand_host(path: &str) -> Result<String, String> {
    let rest = if path == "~" {
        ""
    } else if let Some(r) = path.strip_prefix("~/") {
        r
    } else {
        return Ok(path.to_string());
    };
    let home = std::env::var("HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("cannot expand {path:?}: HOME is not set"))?;
    Ok(if rest.is_empty() {
        home
    } else {
        format!("{}/{rest}", home.trim_end_matches('/'))
    })
}

/// `~` and `~/x` inside the environment: `/home/envd`.
fn expand_envd(path: &str) -> String {
    if path == "~" {
        "/home/envd".to_string()
    } else if let Some(r) = path.strip_prefix("~/") {
        format!("/home/envd/{r}")
    } else {
        path.to_string()
    }
}

#[starlark_module]
fn members(builder: &mut GlobalsBuilder) {
    /// `runtime.command(commands={})`: named commands (`name → shell command`) that
    /// `envkit exec --command NAME` runs. Merged over calls.
    fn command(
        #[starlark(default = UnpackDictEntries::default())] commands: UnpackDictEntries<
            String,
            String,
        >,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.runtime_commands.extend(commands.entries))?;
        Ok(NoneType)
    }

    /// `runtime.daemon(commands)`: long-running processes, one argv (a list of strings) each,
    /// started and restarted with the environment.
    fn daemon(
        commands: UnpackList<UnpackList<String>>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| {
            env.runtime_daemon
                .extend(commands.items.into_iter().map(|c| c.items))
        })?;
        Ok(NoneType)
    }

    /// `runtime.expose(envd_port, host_port=0, service="", listen_addr="127.0.0.1")`: a port
    /// of the environment published on the host (`host_port` 0: a free one).
    fn expose(
        envd_port: i64,
        #[starlark(default = 0)] host_port: i64,
        #[starlark(default = "")] service: &str,
        #[starlark(default = "127.0.0.1")] listen_addr: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let envd_port = u16::try_from(envd_port)
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| invalid("envd_port must be a positive integer less than 65535"))?;
        let host_port = u16::try_from(host_port)
            .map_err(|_| invalid("host_port must be a positive integer less than 65535"))?;
        if listen_addr.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "listening_addr must be a valid IP address, got {listen_addr:?}"
            )));
        }
        record(eval, |env| {
            env.runtime_expose.push(Expose {
                envd_port,
                host_port,
                service: service.to_string(),
                listen_addr: listen_addr.to_string(),
            })
        })?;
        Ok(NoneType)
    }

    /// `runtime.environ(env={}, extra_path=[])`: `env` is merged over earlier calls (a later
    /// value wins); `extra_path` entries are appended to PATH. Both apply to build steps and
    /// to the image.
    fn environ(
        #[starlark(default = UnpackDictEntries::default())] env: UnpackDictEntries<String, String>,
        #[starlark(default = UnpackList::default())] extra_path: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |e| {
            e.environ.extend(env.entries);
            e.extra_path.extend(extra_path.items);
        })?;
        Ok(NoneType)
    }

    /// `runtime.mount(host_path, envd_path)`: a host directory (a path, `~` for the home
    /// directory, or a `data.envd(...)` value) mounted at `envd_path` (`~` is `/home/envd`)
    /// when the environment runs. The target directory is created in the image.
    fn mount<'v>(
        #[starlark(default = NoneType)] host_path: Value<'v>,
        #[starlark(default = "")] envd_path: &str,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        let host = if let Some(ds) = DataSource::from_value(host_path) {
            let rec = super::recorder(eval)?;
            // The directory is created here: a memo of this evaluation would not create it.
            rec.trace.opaque();
            let cache = crate::frontend::modules::cache_dir(&rec.cache_dir).map_err(invalid)?;
            ds.host_dir(cache).map_err(invalid)?
        } else if let Some(s) = host_path.unpack_str() {
            expand_host(s).map_err(invalid)?
        } else {
            return Err(invalid(format!(
                "invalid data source: runtime.mount host_path must be a path or data.envd(...), got {}",
                host_path.get_type()
            )));
        };
        if envd_path.is_empty() {
            return Err(invalid("runtime.mount: envd_path is required"));
        }
        record(eval, |env| {
            env.mounts.push(MountDir {
                host_path: host,
                envd_path: expand_envd(envd_path),
            })
        })?;
        Ok(NoneType)
    }

    /// `runtime.init(commands=[])`: shell commands run once when the environment starts,
    /// before daemons and services. One group per call.
    fn init(
        #[starlark(default = UnpackList::default())] commands: UnpackList<String>,
        eval: &mut Evaluator,
    ) -> starlark::Result<NoneType> {
        record(eval, |env| env.runtime_init.push(commands.items))?;
        Ok(NoneType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_expansion() {
        assert_eq!(expand_envd("~"), "/home/envd");
        assert_eq!(expand_envd("~/data"), "/home/envd/data");
        assert_eq!(expand_envd("/x"), "/x");
        assert_eq!(expand_host("/abs").unwrap(), "/abs");
    }
}
