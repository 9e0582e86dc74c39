//! A parser of the command lines a rebuild runs (`build`, `solve`) that needs none of clap.
//!
//! clap builds the arguments of every command (or, for one command, of all its options)
//! before it parses, and a new process pages all of that code in: ~0.3 ms of a warm rebuild
//! that takes ~3 ms. This parser knows the same options and takes only plain forms of them:
//! `--name VALUE`, `--name=VALUE`, `-x VALUE`, flags, and `solve`'s one file. Anything else (a
//! flag given twice, a value it cannot check, `--help`, another command, a mistake) makes it
//! answer `None`, and clap parses the line: what is accepted, refused and printed stays clap's.
//! A unit test parses the same lines both ways and compares the results.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{BuildArgs, BuildCommand, Cli, Command, EngineArgs, Globals, SolveArgs, SourceArgs};

/// What an option is: `Value` options take one, flags none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    Flag,
}

/// Every option of `build` and `solve` (the globals included): its long names (the first is
/// its own, the rest visible aliases), its short letter, and what it is. An option of one
/// command given to the other is refused by [`apply`] (then clap says why).
const OPTIONS: &[(&[&str], Option<char>, Kind)] = &[
    (&["root"], None, Kind::Value),
    (&["config"], None, Kind::Value),
    (&["debug"], None, Kind::Flag),
    (&["context"], None, Kind::Value),
    (&["path"], Some('p'), Kind::Value),
    (&["from"], Some('f'), Kind::Value),
    (&["frontend"], None, Kind::Value),
    (&["build-arg"], None, Kind::Value),
    (&["stage", "dockerfile-target"], None, Kind::Value),
    (&["platform"], None, Kind::Value),
    (&["use-proxy", "proxy"], None, Kind::Flag),
    (&["pull"], None, Kind::Value),
    (&["tag"], Some('t'), Kind::Value),
    (&["output"], Some('o'), Kind::Value),
    (&["platform-tags"], None, Kind::Flag),
    (&["force"], None, Kind::Flag),
    (&["ca-bundle"], None, Kind::Value),
    (&["progress"], None, Kind::Value),
    (&["parallelism"], None, Kind::Value),
    (&["secret"], None, Kind::Value),
    (&["ssh"], None, Kind::Value),
    (&["import-cache", "ic"], None, Kind::Value),
    (&["export-cache", "ec"], None, Kind::Value),
    (&["explain-cache"], None, Kind::Flag),
    (&["no-cache-defaults"], None, Kind::Flag),
    (&["no-cache"], None, Kind::Flag),
    (&["allow"], None, Kind::Value),
    (&["input"], Some('i'), Kind::Value),
    (&["local"], None, Kind::Value),
];

/// The options that may be given more than once (each adds a value).
const REPEATED: &[&str] = &[
    "build-arg",
    "secret",
    "ssh",
    "import-cache",
    "export-cache",
    "allow",
    "local",
];

/// Options only `build` takes, and options only `solve` takes.
const BUILD_ONLY: &[&str] = &[
    "path",
    "from",
    "frontend",
    "build-arg",
    "stage",
    "platform",
    "use-proxy",
    "platform-tags",
    "force",
];
const SOLVE_ONLY: &[&str] = &["input", "local"];

/// The global options' environment variables (clap's `env`).
const GLOBAL_ENV: &[(&str, &str)] = &[
    ("root", "ENVKIT_ROOT"),
    ("config", "ENVKIT_CONFIG"),
    ("context", "ENVKIT_CONTEXT"),
];

/// `args` (without the program's name) as the whole command line's parser would take them, if
/// they are a `build` or `solve` of the plain kind; `env` reads an environment variable.
pub(super) fn parse(args: &[OsString], env: &dyn Fn(&str) -> Option<OsString>) -> Option<Cli> {
    let mut command: Option<bool> = None; // Some(true): build, Some(false): solve
    let mut given: Vec<(&'static str, String)> = Vec::new();
    let mut file: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg.to_str()?;
        let (&(names, _, kind), inline) = if let Some(long) = arg.strip_prefix("--") {
            let (n, v) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let opt = OPTIONS.iter().find(|(names, _, _)| names.contains(&n))?;
            (opt, v)
        } else if let Some(short) = arg.strip_prefix('-')
            && !short.is_empty()
        {
            let mut chars = short.chars();
            let (c, rest) = (chars.next()?, chars.as_str());
            if !rest.is_empty() {
                return None;
            }
            (OPTIONS.iter().find(|(_, s, _)| *s == Some(c))?, None)
        } else if command.is_none() {
            command = Some(match arg {
                "build" | "b" => true,
                "solve" => false,
                _ => return None,
            });
            continue;
        } else if command == Some(false) && file.is_none() && !arg.is_empty() {
            file = Some(arg.to_string());
            continue;
        } else {
            return None;
        };
        let name = names[0];
        let value = match (kind, inline) {
            (Kind::Flag, None) => String::new(),
            (Kind::Flag, Some(_)) => return None,
            (Kind::Value, Some(v)) => v.to_string(),
            (Kind::Value, None) => it.next()?.to_str()?.to_string(),
        };
        if kind == Kind::Value && (value.is_empty() || (value.starts_with('-') && value != "-")) {
            return None;
        }
        if !REPEATED.contains(&name) && given.iter().any(|(n, _)| *n == name) {
            return None;
        }
        // Before the command only the globals.
        if command.is_none() && !GLOBAL_ENV.iter().any(|(n, _)| *n == name) && name != "debug" {
            return None;
        }
        given.push((name, value));
    }
    let build = command?;
    let refused = if build { SOLVE_ONLY } else { BUILD_ONLY };
    if given.iter().any(|(n, _)| refused.contains(n)) {
        return None;
    }
    if file.is_some() && given.iter().any(|(n, _)| *n == "input") {
        return None;
    }
    apply(build, &given, file, env)
}

/// The parsed command from the options given.
fn apply(
    build: bool,
    given: &[(&'static str, String)],
    file: Option<String>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<Cli> {
    let one = |name: &str| {
        given
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    let all = |name: &str| -> Vec<String> {
        given
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let flag = |name: &str| given.iter().any(|(n, _)| *n == name);
    let checked = |name: &str, default: &str, allowed: &[&str]| -> Option<String> {
        let v = one(name).unwrap_or_else(|| default.to_string());
        allowed.contains(&v.as_str()).then_some(v)
    };
    // A global from its variable: clap refuses an empty one (the value parser), so clap says so.
    let global = |name: &str| -> Option<Option<String>> {
        if let Some(v) = one(name) {
            return Some(Some(v));
        }
        let var = GLOBAL_ENV.iter().find(|(n, _)| *n == name)?.1;
        match env(var) {
            None => Some(None),
            Some(v) if v.is_empty() => None,
            Some(v) => Some(Some(v.into_string().ok()?)),
        }
    };
    let globals = Globals {
        root: global("root")?.map(PathBuf::from),
        config: global("config")?.map(PathBuf::from),
        debug: flag("debug"),
        context: global("context")?,
        loaded: Default::default(),
    };
    let parallelism = match one("parallelism") {
        Some(n) => Some(n.parse::<usize>().ok()?),
        None => None,
    };
    let engine = EngineArgs {
        ca_bundle: one("ca-bundle").map(PathBuf::from),
        progress: checked("progress", "auto", &["auto", "tty", "plain", "rawjson"])?,
        parallelism,
        secret: all("secret"),
        ssh: all("ssh"),
        import_cache: all("import-cache"),
        export_cache: all("export-cache"),
        explain_cache: flag("explain-cache"),
        no_cache_defaults: flag("no-cache-defaults"),
        no_cache: flag("no-cache"),
        allow: all("allow"),
    };
    let pull = checked("pull", "always", &["always", "missing"])?;
    let command = if build {
        Command::Build(BuildCommand {
            args: BuildArgs {
                source: SourceArgs {
                    path: PathBuf::from(one("path").unwrap_or_else(|| ".".into())),
                    from: one("from").unwrap_or_else(|| "build.envd:build".into()),
                    frontend: checked("frontend", "auto", &["auto", "envd", "dockerfile"])?,
                    build_arg: all("build-arg"),
                    stage: one("stage"),
                    platform: one("platform"),
                    use_proxy: flag("use-proxy"),
                    pull,
                },
                tag: one("tag"),
                output: one("output"),
                platform_tags: flag("platform-tags"),
                engine,
            },
            force: flag("force"),
        })
    } else {
        Command::Solve(SolveArgs {
            input: one("input").map(PathBuf::from),
            file: file.map(PathBuf::from),
            local: all("local"),
            tag: one("tag").unwrap_or_else(|| "envkit-solve:latest".into()),
            pull,
            output: one("output"),
            engine,
        })
    };
    Some(Cli { globals, command })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::{CommandFactory as _, Parser as _};

    use super::super::Cli;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn quick(line: &[&str], env: &dyn Fn(&str) -> Option<OsString>) -> Option<Cli> {
        let args: Vec<OsString> = line.iter().map(OsString::from).collect();
        super::parse(&args, env)
    }

    /// What the quick parser takes, it takes as clap does; with no environment variable set
    /// (the test's process may have some: clap's side is given each line's globals).
    #[test]
    fn the_quick_parser_agrees_with_clap() {
        let lines: &[&[&str]] = &[
            &["build"],
            &["b", "-p", "x", "-t", "a:b", "--pull", "missing"],
            &[
                "--root",
                "/r",
                "--config",
                "/c",
                "--context",
                "ctx",
                "build",
                "--debug",
                "--progress",
                "plain",
                "--no-cache",
            ],
            &[
                "build",
                "-f",
                "build.envd:gpu",
                "--platform",
                "linux/arm64",
                "--allow",
                "network.host",
                "--allow=security.insecure",
            ],
            &[
                "build",
                "--frontend",
                "dockerfile",
                "--build-arg",
                "A=1",
                "--build-arg=B",
                "--stage",
                "s",
                "--proxy",
                "--platform-tags",
                "--force",
                "-o",
                "type=oci,dest=x",
            ],
            &[
                "build",
                "--dockerfile-target=s",
                "--use-proxy",
                "--ca-bundle",
                "/ca",
                "--parallelism",
                "3",
                "--secret",
                "id=a,src=b",
                "--ssh",
                "default",
                "--ic",
                "type=local,src=d",
                "--import-cache",
                "r",
                "--ec",
                "type=inline",
                "--export-cache=type=local,dest=e",
                "--explain-cache",
                "--no-cache-defaults",
                "--root=/r2",
            ],
            &[
                "solve", "-t", "n:t", "def.pb", "--local", "a=b", "--local", "c=d",
            ],
            &["solve", "--pull", "missing", "-"],
            &[
                "build",
                "--from=Dockerfile",
                "--path=ctx",
                "--tag=t",
                "--pull=always",
            ],
            &["solve", "-i", "-", "--output", "type=oci,dest=f"],
            &[
                "--context",
                "c",
                "solve",
                "-i",
                "f",
                "--export-cache",
                "type=inline",
                "--progress=rawjson",
                "--debug",
            ],
        ];
        for line in lines {
            let ours = quick(line, &no_env).unwrap_or_else(|| panic!("{line:?}: not taken"));
            // clap would read the globals' variables from the test's environment: it is
            // given each one the line lacks, and the result has it taken out again.
            let lacking: Vec<&str> = super::GLOBAL_ENV
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| !line.iter().any(|a| a.starts_with(&format!("--{name}"))))
                .collect();
            let mut argv: Vec<String> = vec!["envkit".into()];
            argv.extend(line.iter().map(|a| a.to_string()));
            for name in &lacking {
                argv.extend([format!("--{name}"), "x".into()]);
            }
            let mut whole = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            for name in lacking {
                match name {
                    "root" => whole.globals.root = None,
                    "config" => whole.globals.config = None,
                    _ => whole.globals.context = None,
                }
            }
            assert_eq!(format!("{ours:?}"), format!("{whole:?}"), "{line:?}");
        }
    }

    /// What it does not take goes to clap: mistakes, help, other commands, forms it leaves
    /// to clap.
    #[test]
    fn the_quick_parser_leaves_the_rest_to_clap() {
        let refused: &[&[&str]] = &[
            &[],
            &["images"],
            &["--version"],
            &["build", "--help"],
            &["build", "-h"],
            &["build", "--bogus"],
            &["build", "--pull", "never"],
            &["build", "--progress", "fancy"],
            &["build", "--parallelism", "many"],
            &["build", "--no-cache", "--no-cache"],
            &["build", "-t", "a", "-t", "b"],
            &["build", "-f", "a", "--from=b"],
            &["build", "-ta"],
            &["build", "-t"],
            &["build", "-t", "--no-cache"],
            &["build", "--path="],
            &["build", "--force=yes"],
            &["build", "file"],
            &["build", "--local", "a=b"],
            &["solve", "--platform", "linux/arm64"],
            &["solve", "a", "-i", "b"],
            &["solve", "a", "b"],
            &["--tag", "x", "build"],
            &["build", "--", "x"],
        ];
        for line in refused {
            assert!(quick(line, &no_env).is_none(), "{line:?}");
        }
        // An empty global variable is clap's to refuse.
        let empty = |v: &str| (v == "ENVKIT_ROOT").then(OsString::new);
        assert!(quick(&["build"], &empty).is_none());
    }

    /// The globals come from their variables when the line does not give them.
    #[test]
    fn the_quick_parser_reads_the_globals_variables() {
        let env = |v: &str| match v {
            "ENVKIT_ROOT" => Some(OsString::from("/from-env")),
            "ENVKIT_CONTEXT" => Some(OsString::from("remote")),
            _ => None,
        };
        let cli = quick(&["solve", "--root", "/given"], &env).unwrap();
        assert_eq!(
            cli.globals.root.as_deref(),
            Some(std::path::Path::new("/given"))
        );
        assert_eq!(cli.globals.context.as_deref(), Some("remote"));
        assert_eq!(cli.globals.config, None);
    }

    /// Every option clap knows for `build` and `solve`, under every name, is in the table, as
    /// a flag or as an option with a value, with the same short letter; and the table has
    /// nothing clap lacks.
    #[test]
    fn the_quick_parsers_options_are_claps() {
        let mut whole = Cli::command();
        whole.build();
        let mut seen = std::collections::BTreeSet::new();
        for cmd in ["build", "solve"] {
            let sub = whole.find_subcommand(cmd).unwrap();
            let globals = whole.get_arguments().filter(|a| a.is_global_set());
            for arg in sub.get_arguments().chain(globals) {
                if ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                let Some(long) = arg.get_long() else {
                    assert!(arg.is_positional(), "{cmd}: {:?}", arg.get_id());
                    continue;
                };
                let (names, short, kind) = super::OPTIONS
                    .iter()
                    .find(|(n, _, _)| n[0] == long)
                    .unwrap_or_else(|| panic!("{cmd} --{long}: not in the quick parser"));
                let aliases: Vec<&str> = arg.get_visible_aliases().unwrap_or_default();
                assert_eq!(&names[1..], &aliases[..], "--{long}");
                assert_eq!(*short, arg.get_short(), "--{long}");
                let takes = arg.get_num_args().is_some_and(|n| n.takes_values());
                assert_eq!(*kind == super::Kind::Value, takes, "--{long}");
                let repeated = matches!(arg.get_action(), clap::ArgAction::Append);
                assert_eq!(super::REPEATED.contains(&long), repeated, "--{long}");
                seen.insert(long.to_string());
            }
        }
        for (names, _, _) in super::OPTIONS {
            assert!(
                seen.contains(names[0]),
                "--{}: clap has no such option",
                names[0]
            );
        }
    }
}
