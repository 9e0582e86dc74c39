//! A Dockerfile's text into instructions, by the rules of BuildKit v0.32.2's parser: parser
//! directives at the top (`# syntax=`, `# escape=`, `# check=`), the escape character as line
//! continuation, comments and blank lines inside continued instructions, builder flags
//! (`--from=…`) split off before the arguments, each instruction's arguments in its own shape
//! (JSON or shell form, key=value pairs, whitespace-separated words, `ONBUILD`'s
//! instruction), and here-documents after `RUN`, `COPY` and `ADD`.

use std::collections::BTreeMap;

use thiserror::Error;

use super::shell::Lexer;

/// A parse error at a line of the Dockerfile (1-based; 0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ParseError {
    pub line: usize,
    pub end_line: usize,
    pub message: String,
}

fn err(line: usize, end_line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        end_line: end_line.max(line),
        message: message.into(),
    }
}

/// A here-document of an instruction (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub file_descriptor: u32,
    /// Variables in the content are expanded (the name was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are removed from the content's lines.
    pub chomp: bool,
    pub content: String,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The instruction's name as written (`RUN`, `run`, …).
    pub cmd: String,
    /// Builder flags (`--mount=…`), as written minus quotes.
    pub flags: Vec<String>,
    /// Its arguments, in the shape of the instruction: the JSON array's strings, the words,
    /// the whole rest of the line, or `key, value, separator` triples for ENV and LABEL
    /// (separator `=` or empty for the old `KEY value` form); HEALTHCHECK: the type, then
    /// the command.
    pub args: Vec<String>,
    /// The arguments were a JSON array.
    pub json: bool,
    /// ONBUILD's instruction.
    pub sub: Option<Box<Node>>,
    pub heredocs: Vec<Heredoc>,
    /// The instruction's line, continuation lines joined (and their comments left out).
    pub original: String,
    pub start_line: usize,
    pub end_line: usize,
}

impl Node {
    pub fn name(&self) -> String {
        self.cmd.to_ascii_lowercase()
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub nodes: Vec<Node>,
    pub escape: char,
    /// Parser directives by name (`syntax`, `escape`, `check`).
    pub directives: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// The parser directives at the top of a file.
struct Directives {
    escape: char,
    done: bool,
    seen: BTreeMap<String, String>,
}

impl Directives {
    /// Looks at one line while directives may still come (they stop at the first line that is
    /// not one); whether it was one.
    fn line(&mut self, line: &str, at: usize) -> Result<bool, ParseError> {
        if self.done {
            return Ok(false);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(false);
        };
        let rest = rest.trim_start();
        // `name = value`, the name a letter then letters and digits.
        let Some((k, v)) = rest.split_once('=') else {
            self.done = true;
            return Ok(false);
        };
        let k = k.trim_end();
        let v = v.trim();
        let name_ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && k.chars().all(|c| c.is_ascii_alphanumeric());
        if !name_ok || v.is_empty() {
            self.done = true;
            return Ok(false);
        }
        let k = k.to_ascii_lowercase();
        if !["syntax", "escape", "check"].contains(&k.as_str()) {
            self.done = true;
            return Ok(false);
        }
        if self.seen.contains_key(&k) {
            return Err(err(
                at,
                at,
                format!("only one {k} parser directive can be used"),
            ));
        }
        if k == "escape" {
            self.escape = match v {
                "`" => '`',
                "\\" => '\\',
                _ => {
                    return Err(err(
                        at,
                        at,
                        format!("invalid escape token '{v}' does not match ` or \\"),
                    ));
                }
            };
        }
        self.seen.insert(k, v.to_string());
        Ok(true)
    }
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// The line without its trailing `\r`/`\n`s.
fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// A line ending in the escape character (then only blanks) continues on the next: the line
/// without it, and whether the instruction ends here. An escaped escape character does not
/// continue the line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else {
        return (line.to_string(), true);
    };
    if before.is_empty() {
        return (String::new(), false);
    }
    if before.ends_with(escape) {
        return (line.to_string(), true);
    }
    (before.to_string(), false)
}

/// Splits the instruction's name, its builder flags and its arguments.
fn split_command(line: &str, escape: char) -> (String, Vec<String>, String) {
    let line = line.trim_matches(is_space);
    let ws = |c: char| matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ');
    let Some(at) = line.find(ws) else {
        return (line.to_string(), Vec::new(), String::new());
    };
    let cmd = line[..at].to_string();
    let rest = line[at..].trim_start_matches(ws);
    let (args, flags) = builder_flags(rest, escape);
    (cmd, flags, args.trim_matches(is_space).to_string())
}

/// The leading `--flag[=value]` words of an instruction's arguments, and what follows them.
fn builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut phase = Phase::Spaces;
    let mut blank_ok = false;
    let mut i = 0;
    while i <= chars.len() {
        let at_end = i == chars.len();
        let (pos, ch) = chars.get(i).copied().unwrap_or((line.len(), '\0'));
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                i += 1;
                continue;
            }
            let next_dash = chars.get(i + 1).is_some_and(|&(_, c)| c == '-');
            if ch != '-' || !next_dash {
                return (line[pos..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        match phase {
            Phase::Word => {
                if is_space(ch) {
                    if word == "--" {
                        return (line[pos..].to_string(), words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    phase = Phase::Spaces;
                    i += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    i += 1;
                    continue;
                }
                let mut c = ch;
                if ch == escape {
                    if i + 1 == chars.len() {
                        i += 1;
                        continue;
                    }
                    i += 1;
                    c = chars[i].1;
                }
                word.push(c);
                i += 1;
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                    i += 1;
                    continue;
                }
                let mut c = ch;
                if ch == escape {
                    if i + 1 == chars.len() {
                        phase = Phase::Word;
                        i += 1;
                        continue;
                    }
                    i += 1;
                    c = chars[i].1;
                }
                word.push(c);
                i += 1;
            }
            Phase::Spaces => unreachable!("handled above"),
        }
    }
    (String::new(), words)
}

/// Words separated by blanks, quotes kept (they are removed when the words are expanded);
/// the escape character keeps the character after it in the word.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if !in_word {
            if is_space(ch) {
                i += 1;
                continue;
            }
            in_word = true;
        }
        match quote {
            None => {
                if is_space(ch) {
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    in_word = false;
                    i += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    quote = Some(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    if i + 1 == chars.len() {
                        i += 1;
                        continue;
                    }
                    word.push(ch);
                    i += 1;
                    word.push(chars[i]);
                    i += 1;
                    continue;
                }
                word.push(ch);
            }
            Some(q) => {
                if ch == q {
                    quote = None;
                }
                if ch == escape && q != '\'' {
                    if i + 1 == chars.len() {
                        quote = None;
                        i += 1;
                        continue;
                    }
                    word.push(ch);
                    i += 1;
                    word.push(chars[i]);
                    i += 1;
                    continue;
                }
                word.push(ch);
            }
        }
        i += 1;
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// Words separated by runs of blanks (the rest of the line is already trimmed).
fn split_ws(rest: &str) -> Vec<String> {
    rest.split(['\t', '\u{b}', '\u{c}', '\r', ' '])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// `KEY value` (the old form) or `KEY=value …`.
fn parse_name_val(rest: &str, what: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let ws = |c: char| matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ');
        let Some(at) = rest.find(ws) else {
            return Err(format!("{what} must have two arguments"));
        };
        let value = rest[at..].trim_start_matches(ws);
        return Ok(vec![
            rest[..at].to_string(),
            value.to_string(),
            String::new(),
        ]);
    }
    let mut out = Vec::new();
    for w in &words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        out.extend([k.to_string(), v.to_string(), "=".to_string()]);
    }
    Ok(out)
}

/// A JSON array of strings: `Ok(Some)`; not a JSON array: `Ok(None)`; an array with something
/// else than strings: an error.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(items) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => {
                Err("when using JSON array syntax, arrays must be comprised of strings only".into())
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An instruction's arguments, whether they were JSON, and ONBUILD's instruction.
type Dispatched = (Vec<String>, bool, Option<Box<Node>>);

/// An instruction's arguments in its shape.
fn dispatch(cmd: &str, rest: &str, escape: char) -> Result<Dispatched, String> {
    let maybe_json = |rest: &str| -> Result<(Vec<String>, bool), String> {
        if rest.is_empty() {
            return Ok((Vec::new(), false));
        }
        Ok(match parse_json(rest)? {
            Some(v) => (v, true),
            None => (vec![rest.to_string()], false),
        })
    };
    let maybe_json_list = |rest: &str| -> Result<(Vec<String>, bool), String> {
        Ok(match parse_json(rest)? {
            Some(v) => (v, true),
            None if rest.is_empty() => (Vec::new(), false),
            None => (split_ws(rest), false),
        })
    };
    let string = |rest: &str| {
        if rest.is_empty() {
            Vec::new()
        } else {
            vec![rest.to_string()]
        }
    };
    Ok(match cmd {
        "add" | "copy" | "volume" => {
            let (a, j) = maybe_json_list(rest)?;
            (a, j, None)
        }
        "arg" => (parse_words(rest, escape), false, None),
        "cmd" | "entrypoint" | "run" | "shell" => {
            let (a, j) = maybe_json(rest)?;
            (a, j, None)
        }
        "env" => (parse_name_val(rest, "ENV", escape)?, false, None),
        "label" => (parse_name_val(rest, "LABEL", escape)?, false, None),
        "expose" | "from" => (
            if rest.is_empty() {
                Vec::new()
            } else {
                split_ws(rest)
            },
            false,
            None,
        ),
        "healthcheck" => {
            let sep = rest.find(is_space).unwrap_or(rest.len());
            if sep == 0 {
                return Ok((Vec::new(), false, None));
            }
            let next = rest[sep..].trim_start_matches(is_space);
            let (mut cmd, j) = maybe_json(next)?;
            let mut out = vec![rest[..sep].to_string()];
            out.append(&mut cmd);
            (out, j, None)
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => (string(rest), false, None),
        "onbuild" => {
            if rest.is_empty() {
                return Ok((Vec::new(), false, None));
            }
            let child = node_from_line(rest, escape)?;
            (Vec::new(), false, Some(Box::new(child)))
        }
        _ => (Vec::new(), false, None),
    })
}

fn node_from_line(line: &str, escape: char) -> Result<Node, String> {
    let (cmd, flags, rest) = split_command(line, escape);
    let (args, json, sub) = dispatch(&cmd.to_ascii_lowercase(), &rest, escape)?;
    Ok(Node {
        cmd,
        flags,
        args,
        json,
        sub,
        heredocs: Vec::new(),
        original: line.to_string(),
        start_line: 0,
        end_line: 0,
    })
}

/// Whether an instruction may have here-documents (RUN, COPY, ADD in shell form, also as
/// ONBUILD's instruction).
fn can_have_heredoc(n: &Node) -> bool {
    let n = match &n.sub {
        Some(sub) if n.name() == "onbuild" => sub,
        _ => n,
    };
    matches!(n.name().as_str(), "add" | "copy" | "run") && !n.json
}

/// The here-document a word starts (`<<EOF`, `<<-EOF`, `3<<"EOF"`), if it is one.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    // `^(\d*)<<(-?)\s*([^<]*)$`
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(rest) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_space);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let fd = word[..digits].parse::<u32>().unwrap_or(0);
    let mut lex = Lexer::new('\\');
    lex.skip_unset_env = true;
    let env: Vec<(String, String)> = Vec::new();
    let words = lex
        .process_words(rest, env.as_slice())
        .map_err(|e| e.to_string())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex
        .process_words(rest, env.as_slice())
        .map_err(|e| e.to_string())?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some(Heredoc {
        name: words[0].clone(),
        file_descriptor: fd,
        expand: quotes(&words[0]) == quotes(&raw[0]),
        chomp,
        content: String::new(),
    }))
}

fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    let env: Vec<(String, String)> = Vec::new();
    let words = lex.process_words(line, env.as_slice()).unwrap_or_default();
    let mut out = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            out.push(h);
        }
    }
    Ok(out)
}

/// Leading tabs removed from every line (`<<-`).
pub fn chomp_heredoc(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut d = Directives {
        escape: '\\',
        done: false,
        seen: BTreeMap::new(),
    };
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0; // the next line to read (0-based); the line number read last is `i`
    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        let line = trim_newline(raw).trim_start_matches(is_space);
        d.line(line, i)?;
        let processed = if is_comment(line) { "" } else { line };
        let start = i;
        let (first, mut ended) = trim_continuation(processed, d.escape);
        if ended && first.is_empty() {
            continue;
        }
        let mut buf = first;
        let mut empty_continuation = false;
        while !ended && i < lines.len() {
            let raw = lines[i];
            i += 1;
            let line = trim_newline(raw);
            d.line(line, i)?;
            if is_comment(raw) {
                continue;
            }
            if line.trim_start_matches(is_space).is_empty() {
                empty_continuation = true;
                continue;
            }
            let (more, end) = trim_continuation(line, d.escape);
            buf.push_str(&more);
            ended = end;
        }
        if empty_continuation {
            warnings.push(format!("Empty continuation line found in: {buf}"));
        }
        let mut node = node_from_line(&buf, d.escape).map_err(|m| err(start, i, m))?;
        if can_have_heredoc(&node) && buf.contains("<<") {
            for mut h in heredocs_from_line(&buf).map_err(|m| err(start, i, m))? {
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    let mut candidate = trim_newline(raw);
                    if h.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == h.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(raw);
                }
                if !terminated {
                    return Err(err(start, i, "unterminated heredoc"));
                }
                h.content = content;
                node.heredocs.push(h);
            }
        }
        node.start_line = start;
        node.end_line = i;
        if let Some(sub) = node.sub.as_mut() {
            sub.start_line = start;
            sub.end_line = i;
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(err(i, i, "file with no instructions"));
    }
    Ok(Parsed {
        nodes,
        escape: d.escape,
        directives: d.seen,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let p = parse(text).expect("parse");
        assert_eq!(p.nodes.len(), 1, "{p:?}");
        p.nodes.into_iter().next().expect("node")
    }

    #[test]
    fn continuation_comments_and_blank_lines() {
        let p =
            parse("# syntax=docker/dockerfile:1\n\nFROM a \\\n  # c\n  AS b\nRUN x \\\n\n  y\n")
                .expect("parse");
        assert_eq!(
            p.directives.get("syntax").map(String::as_str),
            Some("docker/dockerfile:1")
        );
        assert_eq!(p.nodes[0].args, vec!["a", "AS", "b"]);
        assert_eq!((p.nodes[0].start_line, p.nodes[0].end_line), (3, 5));
        assert_eq!(p.nodes[1].args, vec!["x   y"]);
        assert_eq!(p.warnings.len(), 1);
        // An escaped escape does not continue the line.
        assert_eq!(one("RUN a \\\\\n").args, vec!["a \\\\"]);
    }

    #[test]
    fn the_escape_directive_changes_continuation() {
        let p = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  /w\n").expect("parse");
        assert_eq!(p.escape, '`');
        assert_eq!(p.nodes[1].args, vec!["dir c:\\   /w"]);
        let e = parse("# escape=x\nFROM a\n").expect_err("bad escape");
        assert!(e.message.contains("invalid escape token"), "{e}");
        let e = parse("# escape=`\n# escape=\\\nFROM a\n").expect_err("twice");
        assert!(e.message.contains("only one escape"), "{e}");
        // Directives stop at the first other line.
        let p = parse("FROM a\n# escape=`\nRUN b \\\n c\n").expect("parse");
        assert_eq!(p.escape, '\\');
        assert_eq!(p.nodes[1].args, vec!["b  c"]);
    }

    #[test]
    fn flags_and_argument_shapes() {
        let n = one("COPY --from=build --chmod=755 a b /dst/");
        assert_eq!(n.flags, vec!["--from=build", "--chmod=755"]);
        assert_eq!(n.args, vec!["a", "b", "/dst/"]);
        let n = one(r#"RUN ["echo", "hi"]"#);
        assert!(n.json);
        assert_eq!(n.args, vec!["echo", "hi"]);
        assert!(parse("CMD [\"a\", 1]\n").is_err());
        let n = one("CMD [not json");
        assert_eq!(n.args, vec!["[not json"]);
        let n = one("ENV A=1 B=\"two words\"");
        assert_eq!(n.args, vec!["A", "1", "=", "B", "\"two words\"", "="]);
        let n = one("ENV A  one two");
        assert_eq!(n.args, vec!["A", "one two", ""]);
        assert!(parse("ENV A=1 B\n").is_err());
        let n = one("LABEL a=b");
        assert_eq!(n.args, vec!["a", "b", "="]);
        let n = one("EXPOSE 80  443/udp");
        assert_eq!(n.args, vec!["80", "443/udp"]);
        let n = one("HEALTHCHECK --interval=5s CMD curl -f x");
        assert_eq!(n.flags, vec!["--interval=5s"]);
        assert_eq!(n.args, vec!["CMD", "curl -f x"]);
        let n = one("ONBUILD RUN make");
        let sub = n.sub.expect("sub");
        assert_eq!(
            (sub.cmd.as_str(), sub.args.clone()),
            ("RUN", vec!["make".to_string()])
        );
        let n = one("ARG A B=2 \"C=x y\"");
        assert_eq!(n.args, vec!["A", "B=2", "\"C=x y\""]);
        let n = one("WORKDIR  /a b ");
        assert_eq!(n.args, vec!["/a b"]);
        let n = one("VOLUME /a /b");
        assert_eq!(n.args, vec!["/a", "/b"]);
        let n = one("RUN --mount=type=cache,target=/x -- echo --not-a-flag");
        assert_eq!(n.flags, vec!["--mount=type=cache,target=/x"]);
        assert_eq!(n.args, vec!["echo --not-a-flag"]);
        let n = one("BOGUS x");
        assert!(n.args.is_empty());
    }

    #[test]
    fn heredocs() {
        let p = parse("FROM a\nRUN <<EOF\necho $A\n  two\nEOF\nRUN <<-'X' cat\n\tq\n\tX\n")
            .expect("parse");
        let h = &p.nodes[1].heredocs[0];
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", true, false));
        assert_eq!(h.content, "echo $A\n  two\n");
        assert_eq!((p.nodes[1].start_line, p.nodes[1].end_line), (2, 5));
        let h = &p.nodes[2].heredocs[0];
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("X", false, true));
        assert_eq!(h.content, "\tq\n");
        assert_eq!(chomp_heredoc("\tq\n\t\tr"), "q\nr");
        let e = parse("FROM a\nRUN <<EOF\nnever ends\n").expect_err("unterminated");
        assert_eq!((e.message.as_str(), e.line), ("unterminated heredoc", 2));
        let h = parse_heredoc("3<<\"EOF\"").expect("ok").expect("one");
        assert_eq!((h.file_descriptor, h.expand), (3, false));
        assert_eq!(parse_heredoc("<<").expect("ok"), None);
        // JSON form has none.
        let p = parse("FROM a\nRUN [\"<<EOF\"]\n").expect("parse");
        assert!(p.nodes[1].heredocs.is_empty());
    }

    #[test]
    fn empty_files_and_crlf() {
        assert_eq!(
            parse("# just a comment\n\n").expect_err("empty").message,
            "file with no instructions"
        );
        let p = parse("\u{feff}FROM a\r\nRUN b\r\n").expect("parse");
        assert_eq!(p.nodes[1].args, vec!["b"]);
    }
}
