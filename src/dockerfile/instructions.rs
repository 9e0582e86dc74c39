//! Parsed instructions as typed commands, split into stages, by the rules of BuildKit
//! v0.32.2's `instructions` package: each instruction's flags (`--from`, `--chmod`, `--mount`,
//! …: unknown or repeated ones are errors, booleans take `=true|false`), argument counts,
//! here-documents as inline sources, `ARG`s before the first `FROM` as the build's meta
//! arguments. Variables are not expanded here; [`Command::expand`] does it when the command is
//! dispatched, on the fields BuildKit expands.

use std::collections::{BTreeMap, BTreeSet};

use super::parser::{self, Heredoc, Node};

/// An instruction error, with the instruction's lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InstructionError {
    pub line: usize,
    pub end_line: usize,
    pub message: String,
}

/// The flags an instruction accepts, and what was given.
struct Flags<'a> {
    given: &'a [String],
    bools: BTreeMap<&'static str, bool>,
    strings: BTreeMap<&'static str, String>,
    lists: BTreeMap<&'static str, Vec<String>>,
    used: BTreeSet<String>,
}

impl<'a> Flags<'a> {
    fn new(given: &'a [String]) -> Self {
        Flags {
            given,
            bools: BTreeMap::new(),
            strings: BTreeMap::new(),
            lists: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    fn boolean(mut self, name: &'static str) -> Self {
        self.bools.insert(name, false);
        self
    }

    fn string(mut self, name: &'static str, default: &str) -> Self {
        self.strings.insert(name, default.to_string());
        self
    }

    fn list(mut self, name: &'static str) -> Self {
        self.lists.insert(name, Vec::new());
        self
    }

    fn parse(mut self) -> Result<Self, String> {
        for a in self.given {
            if a == "--" {
                break;
            }
            let Some(body) = a.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {a}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let flag_name = format!("--{name}");
            let known = self.bools.contains_key(name)
                || self.strings.contains_key(name)
                || self.lists.contains_key(name);
            if !known {
                return Err(format!("unknown flag: {flag_name}"));
            }
            if !self.used.insert(name.to_string()) && !self.lists.contains_key(name) {
                return Err(format!("duplicate flag specified: {flag_name}"));
            }
            if let Some(b) = self.bools.get_mut(name) {
                if value == Some("") {
                    return Err(format!("missing a value on flag: {flag_name}"));
                }
                *b = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some(v) => {
                        return Err(format!(
                            "expecting boolean value for flag {flag_name}, not: {v}"
                        ));
                    }
                };
            } else if let Some(s) = self.strings.get_mut(name) {
                *s = value
                    .ok_or_else(|| format!("missing a value on flag: {flag_name}"))?
                    .to_string();
            } else if let Some(l) = self.lists.get_mut(name) {
                l.push(
                    value
                        .ok_or_else(|| format!("missing a value on flag: {flag_name}"))?
                        .to_string(),
                );
            }
        }
        Ok(self)
    }

    fn b(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    fn s(&self, name: &str) -> String {
        self.strings.get(name).cloned().unwrap_or_default()
    }

    fn l(&self, name: &str) -> Vec<String> {
        self.lists.get(name).cloned().unwrap_or_default()
    }

    fn was_used(&self, name: &str) -> bool {
        self.used.contains(name)
    }
}

/// `KEY=value` of ENV and LABEL (`no_delim`: the old `KEY value` form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub no_delim: bool,
}

/// An ARG: a name and maybe a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    pub key: String,
    pub value: Option<String>,
}

/// A here-document used as a file (`COPY <<EOF /dst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    pub path: String,
    pub data: String,
    pub expand: bool,
}

/// Sources and the destination of COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    pub dest: String,
    pub sources: Vec<String>,
    pub contents: Vec<SourceContent>,
}

/// A here-document of RUN, CMD or ENTRYPOINT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    pub name: String,
    pub data: String,
    pub chomp: bool,
}

/// A command line of RUN, CMD, ENTRYPOINT: JSON (exec) form, or one string for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdLine {
    pub args: Vec<String>,
    pub files: Vec<InlineFile>,
    /// Shell form: run through the image's shell.
    pub prepend_shell: bool,
}

/// HEALTHCHECK's config (durations in nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Env(Vec<KeyValue>),
    Maintainer(String),
    Label(Vec<KeyValue>),
    Add {
        paths: SourcesAndDest,
        chown: String,
        chmod: String,
        link: bool,
        keep_git_dir: Option<bool>,
        checksum: String,
        unpack: Option<bool>,
        exclude: Vec<String>,
    },
    Copy {
        paths: SourcesAndDest,
        from: String,
        chown: String,
        chmod: String,
        link: bool,
        parents: bool,
        exclude: Vec<String>,
    },
    Onbuild(String),
    Workdir(String),
    Run {
        cmd: CmdLine,
        mounts: Vec<String>,
        network: String,
        security: String,
        devices: Vec<String>,
        flags_used: Vec<String>,
    },
    Cmd(CmdLine),
    Entrypoint(CmdLine),
    Healthcheck(Health),
    Expose(Vec<String>),
    User(String),
    Volume(Vec<String>),
    StopSignal(String),
    Arg(Vec<ArgDef>),
    Shell(Vec<String>),
}

/// One instruction of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The instruction as written, trimmed (continuation lines joined).
    pub code: String,
    /// Its name as written.
    pub name: String,
    pub kind: Kind,
    pub start_line: usize,
    pub end_line: usize,
}

/// A `FROM` and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower-cased; empty without one.
    pub name: String,
    /// The image (or stage) it starts from, unexpanded.
    pub base: String,
    /// `--platform`, unexpanded.
    pub platform: String,
    /// The `FROM` line, trimmed.
    pub code: String,
    pub commands: Vec<Command>,
    pub start_line: usize,
    pub end_line: usize,
}

/// A Dockerfile's stages and its meta arguments (the ARGs before the first FROM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instructions {
    pub stages: Vec<Stage>,
    pub meta_args: Vec<Command>,
}

fn exactly_one(cmd: &str) -> String {
    format!("{cmd} requires exactly one argument")
}

fn at_least_one(cmd: &str) -> String {
    format!("{cmd} requires at least one argument")
}

fn kvps(args: &[String], cmd: &str) -> Result<Vec<KeyValue>, String> {
    if args.is_empty() {
        return Err(at_least_one(cmd));
    }
    if !args.len().is_multiple_of(3) {
        return Err(format!("Bad input to {cmd}, too many arguments"));
    }
    args.chunks(3)
        .map(|c| {
            if c[0].is_empty() {
                return Err(format!("{cmd} names can not be blank"));
            }
            Ok(KeyValue {
                key: c[0].clone(),
                value: c[1].clone(),
                no_delim: c[2].is_empty(),
            })
        })
        .collect()
}

fn sources_and_dest(
    args: &[String],
    heredocs: &[Heredoc],
    cmd: &str,
) -> Result<SourcesAndDest, String> {
    let (dest, srcs) = args
        .split_last()
        .ok_or_else(|| format!("{cmd} requires at least two arguments"))?;
    if parser::parse_heredoc(dest).ok().flatten().is_some() {
        return Err(format!("{cmd} cannot accept a heredoc as a destination"));
    }
    let mut out = SourcesAndDest {
        dest: dest.clone(),
        sources: Vec::new(),
        contents: Vec::new(),
    };
    for src in srcs {
        match parser::parse_heredoc(src).ok().flatten() {
            Some(h) => {
                let mut data = heredocs
                    .iter()
                    .find(|d| d.name == h.name)
                    .map(|d| d.content.clone())
                    .unwrap_or_default();
                if h.chomp {
                    data = parser::chomp_heredoc(&data);
                }
                out.contents.push(SourceContent {
                    path: h.name,
                    data,
                    expand: h.expand,
                });
            }
            None => out.sources.push(src.clone()),
        }
    }
    Ok(out)
}

fn cmd_line(n: &Node, empty_as_none: bool) -> CmdLine {
    let args = if n.args.is_empty() {
        Vec::new()
    } else if n.json {
        n.args.clone()
    } else {
        vec![n.args.join(" ")]
    };
    let _ = empty_as_none;
    CmdLine {
        args,
        files: n
            .heredocs
            .iter()
            .map(|h| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
            })
            .collect(),
        prepend_shell: !n.json,
    }
}

/// A Go duration (`1m30s`, `500ms`, `1.5h`) in nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            u => return Err(format!("time: unknown unit {u:?} in duration {s:?}")),
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    let v = total.round() as i64;
    Ok(if neg { -v } else { v })
}

fn interval(flags: &Flags, name: &str) -> Result<i64, String> {
    let v = flags.s(name);
    if v.is_empty() {
        return Ok(0);
    }
    let d = parse_duration(&v)?;
    if d == 0 {
        return Ok(0);
    }
    if d < 1_000_000 {
        return Err(format!("Interval {name:?} cannot be less than 1ms"));
    }
    Ok(d)
}

fn healthcheck(n: &Node) -> Result<Health, String> {
    let Some(first) = n.args.first() else {
        return Err(at_least_one("HEALTHCHECK"));
    };
    let typ = first.to_ascii_uppercase();
    let rest = &n.args[1..];
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".into());
        }
        Flags::new(&n.flags).parse()?;
        return Ok(Health {
            test: vec![typ],
            ..Default::default()
        });
    }
    let f = Flags::new(&n.flags)
        .string("interval", "")
        .string("timeout", "")
        .string("start-period", "")
        .string("start-interval", "")
        .string("retries", "")
        .parse()?;
    if typ != "CMD" {
        return Err(format!("Unknown type {typ:?} in HEALTHCHECK (try CMD)"));
    }
    let cmd: Vec<String> = if rest.is_empty() {
        Vec::new()
    } else if n.json {
        rest.to_vec()
    } else {
        vec![rest.join(" ")]
    };
    if cmd.is_empty() {
        return Err("Missing command after HEALTHCHECK CMD".into());
    }
    let mut test = vec![if n.json { "CMD" } else { "CMD-SHELL" }.to_string()];
    test.extend(cmd);
    let retries = match f.s("retries").as_str() {
        "" => 0,
        r => {
            let v: i64 = r
                .parse()
                .map_err(|_| format!("strconv.ParseInt: parsing {r:?}: invalid syntax"))?;
            if v < 0 {
                return Err(format!("--retries cannot be negative ({v})"));
            }
            v
        }
    };
    Ok(Health {
        test,
        interval: interval(&f, "interval")?,
        timeout: interval(&f, "timeout")?,
        start_period: interval(&f, "start-period")?,
        start_interval: interval(&f, "start-interval")?,
        retries,
    })
}

fn stage_name(args: &[String]) -> Result<String, String> {
    match args {
        [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_ascii_lowercase();
            let ok = lower.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && lower
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(format!(
                    "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                ));
            }
            Ok(lower)
        }
        [_] => Ok(String::new()),
        _ => Err("FROM requires either one or three arguments".into()),
    }
}

/// One parsed instruction: a stage start or a command.
enum Parsed {
    Stage(Stage),
    Command(Command),
}

fn kind_of(n: &Node) -> Result<Option<Kind>, String> {
    let plain = || Flags::new(&n.flags).parse().map(|_| ());
    Ok(Some(match n.name().as_str() {
        "env" => {
            plain()?;
            Kind::Env(kvps(&n.args, "ENV")?)
        }
        "maintainer" => {
            if n.args.len() != 1 {
                return Err(exactly_one("MAINTAINER"));
            }
            plain()?;
            Kind::Maintainer(n.args[0].clone())
        }
        "label" => {
            plain()?;
            Kind::Label(kvps(&n.args, "LABEL")?)
        }
        "add" => {
            if n.args.len() < 2 {
                return Err("ADD requires at least two arguments, but only one was provided. Destination could not be determined".into());
            }
            let f = Flags::new(&n.flags)
                .string("chown", "")
                .string("chmod", "")
                .boolean("link")
                .boolean("keep-git-dir")
                .string("checksum", "")
                .boolean("unpack")
                .list("exclude")
                .parse()?;
            Kind::Add {
                paths: sources_and_dest(&n.args, &n.heredocs, "ADD")?,
                chown: f.s("chown"),
                chmod: f.s("chmod"),
                link: f.b("link"),
                keep_git_dir: f.was_used("keep-git-dir").then(|| f.b("keep-git-dir")),
                checksum: f.s("checksum"),
                unpack: f.was_used("unpack").then(|| f.b("unpack")),
                exclude: f.l("exclude"),
            }
        }
        "copy" => {
            if n.args.len() < 2 {
                return Err("COPY requires at least two arguments, but only one was provided. Destination could not be determined".into());
            }
            let f = Flags::new(&n.flags)
                .string("chown", "")
                .string("from", "")
                .string("chmod", "")
                .boolean("link")
                .list("exclude")
                .boolean("parents")
                .parse()?;
            Kind::Copy {
                paths: sources_and_dest(&n.args, &n.heredocs, "COPY")?,
                from: f.s("from"),
                chown: f.s("chown"),
                chmod: f.s("chmod"),
                link: f.b("link"),
                parents: f.b("parents"),
                exclude: f.l("exclude"),
            }
        }
        "onbuild" => {
            let Some(sub) = &n.sub else {
                return Err(at_least_one("ONBUILD"));
            };
            plain()?;
            let trigger = sub.cmd.trim().to_ascii_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
                }
                "MAINTAINER" | "FROM" => {
                    return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"));
                }
                _ => {}
            }
            // The line without `ONBUILD` (any case) and the blanks after it.
            let orig = n.original.trim_start();
            let mut expr = if orig.len() >= 7 && orig[..7].eq_ignore_ascii_case("onbuild") {
                orig[7..].trim_start().to_string()
            } else {
                orig.to_string()
            };
            for h in &n.heredocs {
                expr.push('\n');
                expr.push_str(&h.content);
                expr.push_str(&h.name);
            }
            Kind::Onbuild(expr)
        }
        "workdir" => {
            if n.args.len() != 1 {
                return Err(exactly_one("WORKDIR"));
            }
            plain()?;
            Kind::Workdir(n.args[0].clone())
        }
        "run" => {
            let f = Flags::new(&n.flags)
                .list("device")
                .list("mount")
                .string("network", "default")
                .string("security", "sandbox")
                .parse()?;
            Kind::Run {
                cmd: cmd_line(n, false),
                mounts: f.l("mount"),
                network: f.s("network"),
                security: f.s("security"),
                devices: f.l("device"),
                flags_used: f.used.iter().cloned().collect(),
            }
        }
        "cmd" => {
            plain()?;
            Kind::Cmd(cmd_line(n, false))
        }
        "entrypoint" => {
            plain()?;
            Kind::Entrypoint(cmd_line(n, true))
        }
        "healthcheck" => Kind::Healthcheck(healthcheck(n)?),
        "expose" => {
            if n.args.is_empty() {
                return Err(at_least_one("EXPOSE"));
            }
            plain()?;
            let mut ports = n.args.clone();
            ports.sort();
            Kind::Expose(ports)
        }
        "user" => {
            if n.args.len() != 1 {
                return Err(exactly_one("USER"));
            }
            plain()?;
            Kind::User(n.args[0].clone())
        }
        "volume" => {
            if n.args.is_empty() {
                return Err(at_least_one("VOLUME"));
            }
            plain()?;
            let mut v = Vec::new();
            for a in &n.args {
                let a = a.trim();
                if a.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                v.push(a.to_string());
            }
            Kind::Volume(v)
        }
        "stopsignal" => {
            if n.args.len() != 1 {
                return Err(exactly_one("STOPSIGNAL"));
            }
            Kind::StopSignal(n.args[0].clone())
        }
        "arg" => {
            if n.args.is_empty() {
                return Err(at_least_one("ARG"));
            }
            let mut out = Vec::new();
            for a in &n.args {
                match a.split_once('=') {
                    Some(("", _)) => return Err("ARG names can not be blank".into()),
                    Some((k, v)) => out.push(ArgDef {
                        key: k.to_string(),
                        value: Some(v.to_string()),
                    }),
                    None => out.push(ArgDef {
                        key: a.clone(),
                        value: None,
                    }),
                }
            }
            Kind::Arg(out)
        }
        "shell" => {
            plain()?;
            if n.args.is_empty() {
                return Err(at_least_one("SHELL"));
            }
            if !n.json {
                return Err("SHELL requires the arguments to be in JSON form".to_string());
            }
            Kind::Shell(n.args.clone())
        }
        _ => return Ok(None),
    }))
}

fn parse_node(n: &Node) -> Result<Parsed, String> {
    if n.name() == "from" {
        let name = stage_name(&n.args)?;
        let f = Flags::new(&n.flags).string("platform", "").parse()?;
        return Ok(Parsed::Stage(Stage {
            name,
            base: n.args.first().cloned().unwrap_or_default(),
            platform: f.s("platform"),
            code: n.original.trim().to_string(),
            commands: Vec::new(),
            start_line: n.start_line,
            end_line: n.end_line,
        }));
    }
    match kind_of(n)? {
        Some(kind) => Ok(Parsed::Command(Command {
            code: n.original.trim().to_string(),
            name: n.cmd.clone(),
            kind,
            start_line: n.start_line,
            end_line: n.end_line,
        })),
        None => Err(format!("unknown instruction: {}", n.cmd)),
    }
}

/// One ONBUILD trigger (`RUN make`, as kept in an image's config) as a command; `line` is
/// where it is reported (the stage that runs it).
pub fn parse_trigger(expr: &str, line: usize) -> Result<Command, InstructionError> {
    let at = |message: String| InstructionError {
        line,
        end_line: line,
        message,
    };
    let parsed = parser::parse(expr).map_err(|e| at(e.message))?;
    let [node] = parsed.nodes.as_slice() else {
        return Err(at("onbuild trigger should be a single expression".into()));
    };
    match parse_node(node).map_err(&at)? {
        Parsed::Command(mut c) => {
            c.start_line = line;
            c.end_line = line;
            Ok(c)
        }
        Parsed::Stage(_) => Err(at("FROM isn't allowed as an ONBUILD trigger".into())),
    }
}

/// The stages of a parsed Dockerfile.
pub fn parse(nodes: &[Node]) -> Result<Instructions, InstructionError> {
    let mut out = Instructions {
        stages: Vec::new(),
        meta_args: Vec::new(),
    };
    for n in nodes {
        let at = |message: String| InstructionError {
            line: n.start_line,
            end_line: n.end_line,
            message,
        };
        match parse_node(n).map_err(&at)? {
            Parsed::Stage(s) => out.stages.push(s),
            Parsed::Command(c) => match out.stages.last_mut() {
                Some(s) => s.commands.push(c),
                None if matches!(c.kind, Kind::Arg(_)) => out.meta_args.push(c),
                None => {
                    return Err(at("no build stage in current context".into()));
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(text: &str) -> Instructions {
        let p = parser::parse(text).expect("parse");
        parse(&p.nodes).expect("instructions")
    }

    fn error(text: &str) -> String {
        let p = parser::parse(text).expect("parse");
        parse(&p.nodes).expect_err("an error").message
    }

    #[test]
    fn stages_meta_args_and_commands() {
        let i = stages(
            "ARG V=1\nFROM --platform=$BUILDPLATFORM img:$V AS Build\nRUN --mount=type=cache,target=/c make\nCOPY --from=build --link a b /d/\nFROM scratch\nCMD [\"x\"]\n",
        );
        assert_eq!(i.meta_args.len(), 1);
        assert_eq!(i.stages.len(), 2);
        let s = &i.stages[0];
        assert_eq!(
            (s.name.as_str(), s.base.as_str(), s.platform.as_str()),
            ("build", "img:$V", "$BUILDPLATFORM")
        );
        match &s.commands[0].kind {
            Kind::Run {
                cmd,
                mounts,
                network,
                security,
                ..
            } => {
                assert_eq!(cmd.args, vec!["make"]);
                assert!(cmd.prepend_shell);
                assert_eq!(mounts, &vec!["type=cache,target=/c".to_string()]);
                assert_eq!(
                    (network.as_str(), security.as_str()),
                    ("default", "sandbox")
                );
            }
            k => panic!("{k:?}"),
        }
        match &s.commands[1].kind {
            Kind::Copy {
                paths, from, link, ..
            } => {
                assert_eq!((from.as_str(), *link), ("build", true));
                assert_eq!(paths.sources, vec!["a", "b"]);
                assert_eq!(paths.dest, "/d/");
            }
            k => panic!("{k:?}"),
        }
        match &i.stages[1].commands[0].kind {
            Kind::Cmd(c) => assert!(!c.prepend_shell),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn flag_and_argument_errors() {
        assert_eq!(error("FROM a\nCOPY --nope=1 a b\n"), "unknown flag: --nope");
        assert_eq!(
            error("FROM a\nCOPY --from=x --from=y a b\n"),
            "duplicate flag specified: --from"
        );
        assert_eq!(
            error("FROM a\nCOPY --link=maybe a b\n"),
            "expecting boolean value for flag --link, not: maybe"
        );
        assert_eq!(
            error("FROM a\nCOPY --from a b\n"),
            "missing a value on flag: --from"
        );
        assert!(error("FROM a\nCOPY a\n").contains("requires at least two arguments"));
        assert_eq!(
            error("FROM a\nWORKDIR\n"),
            "WORKDIR requires exactly one argument"
        );
        assert_eq!(
            error("FROM a b\n"),
            "FROM requires either one or three arguments"
        );
        assert!(error("FROM a AS 1x\n").contains("invalid name for build stage"));
        assert_eq!(error("RUN x\n"), "no build stage in current context");
        assert_eq!(error("FROM a\nBOGUS x\n"), "unknown instruction: BOGUS");
        assert_eq!(
            error("FROM a\nONBUILD FROM b\n"),
            "FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            error("FROM a\nSHELL bash -c\n"),
            "SHELL requires the arguments to be in JSON form"
        );
    }

    #[test]
    fn healthcheck_onbuild_heredoc_sources() {
        let i = stages(
            "FROM a\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f x\nHEALTHCHECK NONE\nonbuild   RUN make\nCOPY <<-EOF /f\n\thi\n\tEOF\nEXPOSE 8080 443\n",
        );
        let c = &i.stages[0].commands;
        match &c[0].kind {
            Kind::Healthcheck(h) => {
                assert_eq!(h.test, vec!["CMD-SHELL", "curl -f x"]);
                assert_eq!((h.interval, h.retries), (90_000_000_000, 3));
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(
            c[1].kind,
            Kind::Healthcheck(Health {
                test: vec!["NONE".into()],
                ..Default::default()
            })
        );
        assert_eq!(c[2].kind, Kind::Onbuild("RUN make".into()));
        match &c[3].kind {
            Kind::Copy { paths, .. } => {
                assert!(paths.sources.is_empty());
                assert_eq!(
                    paths.contents[0],
                    SourceContent {
                        path: "EOF".into(),
                        data: "hi\n".into(),
                        expand: true
                    }
                );
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(c[4].kind, Kind::Expose(vec!["443".into(), "8080".into()]));
        assert_eq!(parse_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert!(parse_duration("5").is_err());
        assert!(
            error("FROM a\nHEALTHCHECK --interval=10us CMD x\n")
                .contains("cannot be less than 1ms")
        );
    }
}

/// The kind of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// A `RUN --mount=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    pub from: String,
    pub source: String,
    pub target: String,
    pub readonly: bool,
    pub size: i64,
    pub id: String,
    /// `shared`, `private`, `locked`; empty: not given.
    pub sharing: String,
    pub required: bool,
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid value for {key}: {v}")),
    }
}

/// Comma-separated fields, double quotes around a field keeping its commas (`""`: a quote).
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            ',' => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
            }
            c => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("failed to parse csv mounts: extraneous or missing \" in quoted-field".into());
    }
    out.push(cur);
    Ok(out)
}

/// Docker's `RAMInBytes`: `64m`, `1g`, `512k`, plain bytes.
fn ram_in_bytes(v: &str) -> Option<i64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let n: f64 = v[..split].parse().ok()?;
    let mult: f64 = match v[split..].to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024f64.powi(4),
        "p" | "pb" | "pib" => 1024f64.powi(5),
        _ => return None,
    };
    Some((n * mult) as i64)
}

/// Parses one `--mount` value; `expand` expands each value (at dispatch time). Without it,
/// values are left alone and only `from` is checked (it may not use variables).
/// Expands one value of a mount (the dispatching state's variables).
pub type Expander<'a> = &'a dyn Fn(&str) -> Result<String, String>;

pub fn parse_mount(val: &str, expand: Option<Expander>) -> Result<MountSpec, String> {
    let mut m = MountSpec {
        kind: MountKind::Bind,
        from: String::new(),
        source: String::new(),
        target: String::new(),
        readonly: false,
        size: 0,
        id: String::new(),
        sharing: String::new(),
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    let kind_name = |k: MountKind| match k {
        MountKind::Bind => "bind",
        MountKind::Cache => "cache",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Secret => "secret",
        MountKind::Ssh => "ssh",
    };
    for field in csv_fields(val)? {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(mut value) = value else {
            if expand.is_none() {
                continue;
            }
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountKind::Secret | MountKind::Ssh) => {
                    m.required = true;
                }
                "required" => {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(m.kind)
                    ));
                }
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        match expand {
            Some(f) => value = f(&value)?,
            None if key == "from" => {
                if let Some(i) = value.find('$')
                    && i != value.len() - 1
                {
                    return Err(format!(
                        "'{key}' doesn't support variable expansion, define alias stage instead"
                    ));
                }
            }
            None => continue,
        }
        match key.as_str() {
            "type" => {
                m.kind = match value.to_ascii_lowercase().as_str() {
                    "bind" => MountKind::Bind,
                    "cache" => MountKind::Cache,
                    "tmpfs" => MountKind::Tmpfs,
                    "secret" => MountKind::Secret,
                    "ssh" => MountKind::Ssh,
                    _ => return Err(format!("unsupported mount type {value:?}")),
                }
            }
            "from" => m.from = value,
            "source" | "src" => m.source = value,
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.readonly = parse_go_bool(&key, &value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_go_bool(&key, &value)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.kind, MountKind::Secret | MountKind::Ssh) {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(m.kind)
                    ));
                }
                m.required = parse_go_bool(&key, &value)?;
            }
            "size" => {
                if m.kind != MountKind::Tmpfs {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(m.kind)
                    ));
                }
                m.size = ram_in_bytes(&value)
                    .ok_or_else(|| format!("invalid value for {key}: {value}"))?;
            }
            "id" => m.id = value,
            "sharing" => {
                let v = value.to_ascii_lowercase();
                if !["shared", "private", "locked"].contains(&v.as_str()) {
                    return Err(format!("unsupported sharing value {value:?}"));
                }
                m.sharing = v;
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&value, 8)
                        .map_err(|_| format!("invalid value {value} for mode"))?,
                );
            }
            "uid" => {
                m.uid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for uid"))?,
                );
            }
            "gid" => {
                m.gid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for gid"))?,
                );
            }
            "env" => m.env = Some(value),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    let file_info = matches!(
        m.kind,
        MountKind::Secret | MountKind::Ssh | MountKind::Cache
    );
    if !file_info {
        for (what, set) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if set {
                return Err(format!(
                    "{what} not allowed for {:?} type mounts",
                    kind_name(m.kind)
                ));
            }
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountKind::Cache | MountKind::Tmpfs);
    }
    if m.kind == MountKind::Secret {
        if !m.from.is_empty() {
            return Err("secret mount should not have a from".into());
        }
        if !m.sharing.is_empty() {
            return Err("secret mount should not define sharing".into());
        }
        if m.source.is_empty() && m.target.is_empty() && m.id.is_empty() {
            return Err("invalid secret mount. one of source, target required".into());
        }
        if !m.source.is_empty() && !m.id.is_empty() {
            return Err("both source and id can't be set".into());
        }
    }
    if !m.sharing.is_empty() && m.kind != MountKind::Cache {
        return Err(format!(
            "invalid cache sharing set for {} mount",
            kind_name(m.kind)
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    fn id(s: &str) -> Result<String, String> {
        Ok(s.replace("$X", "x"))
    }

    #[test]
    fn mounts_parse_with_buildkits_defaults_and_checks() {
        let m = parse_mount(
            "type=cache,target=/root/.cache/$X,sharing=locked",
            Some(&id),
        )
        .expect("cache");
        assert_eq!(
            (m.kind, m.target.as_str(), m.sharing.as_str(), m.readonly),
            (MountKind::Cache, "/root/.cache/x", "locked", false)
        );
        let m = parse_mount("source=uv.lock,target=uv.lock", Some(&id)).expect("bind");
        assert_eq!((m.kind, m.readonly), (MountKind::Bind, true));
        let m = parse_mount("type=bind,target=/x,rw", Some(&id)).expect("rw");
        assert!(!m.readonly);
        let m = parse_mount("type=tmpfs,target=/t,size=64m", Some(&id)).expect("tmpfs");
        assert_eq!(m.size, 64 << 20);
        let m = parse_mount("type=secret,id=tok,env=TOKEN,required", Some(&id)).expect("secret");
        assert_eq!((m.env.as_deref(), m.required), (Some("TOKEN"), true));
        let m = parse_mount("type=cache,target=/c,uid=1000,mode=0755", Some(&id)).expect("uid");
        assert_eq!((m.uid, m.mode), (Some(1000), Some(0o755)));
        let m = parse_mount("\"type=bind,source=a,b\",target=/t", Some(&id));
        assert!(m.is_err(), "a quoted field with a comma is one field");
        assert!(
            parse_mount("type=bind,target=/x,uid=1", Some(&id))
                .unwrap_err()
                .contains("uid not allowed")
        );
        assert!(
            parse_mount("type=nope", Some(&id))
                .unwrap_err()
                .contains("unsupported mount type")
        );
        assert!(
            parse_mount("type=secret", Some(&id))
                .unwrap_err()
                .contains("one of source, target")
        );
        assert!(
            parse_mount("type=bind,bogus=1", Some(&id))
                .unwrap_err()
                .contains("unexpected key")
        );
        assert!(
            parse_mount("from=$STAGE", None)
                .unwrap_err()
                .contains("doesn't support variable expansion")
        );
        assert_eq!(
            csv_fields("a=\"x,y\",b").expect("csv"),
            vec!["a=\"x", "y\"", "b"]
        );
        assert_eq!(csv_fields("\"a=x,y\",b").expect("csv"), vec!["a=x,y", "b"]);
    }
}
