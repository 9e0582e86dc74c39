//! Word expansion for Dockerfile instructions, with the results BuildKit v0.32.2's Dockerfile
//! frontend gets from its shell lexer (`frontend/dockerfile/shell`).
//!
//! A word is read one character at a time. Single quotes keep their contents literally, double
//! quotes keep them except for `$` expansions and a few escapes, the escape character (`\`, or
//! `` ` `` under `# escape=`) takes the next character literally, and `$NAME`, `${NAME}` and the
//! `${NAME<modifier>word}` forms read the environment. [`Lexer::process_word`] gives the whole
//! word; [`Lexer::process_words`] also splits it on unquoted whitespace after the expansion.
//!
//! Some results are odd on purpose, because BuildKit's are and Dockerfiles depend on the result
//! BuildKit gives, not on what a POSIX shell would do:
//! - `${NAME#pattern}`, `%`, `/` and `//` take glob-like patterns (`*`, `?`, `\` escapes, no
//!   bracket expressions) whose wildcards never match a newline, and `//` expands `$0`, `$$` and
//!   similar references in the replacement (BuildKit runs it through a regexp replacement).
//! - In [`Lexer::process_words`], a `${NAME:-word}` style expansion (one with a modifier) drops
//!   the text the current word had collected before it: `a${X:-b}c` splits into `["bc"]`.
//! - `$1`, `$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`: looked up in the environment under that
//!   name like any variable (so normally empty), never an error.
//! - `<<` plus the blanks after it stays attached to the next word (here-document markers).
//! - Letters and digits in names are Unicode letters (category L) and decimal digits (Nd), as in
//!   Go's `unicode` package (tables below, Unicode 17).

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The variables an expansion may read, in order of definition, with later duplicates winning.
pub trait Env {
    /// The value of `key`, if it is set (an empty value is set).
    fn get(&self, key: &str) -> Option<String>;
    /// The names that are set, each once, in the order they were first defined.
    fn keys(&self) -> Vec<String>;
}

/// `key=value` pairs; when a key appears more than once, the last pair counts.
impl Env for [(String, String)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn keys(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.iter()
            .filter(|(k, _)| seen.insert(k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<String> {
        Env::get(self.as_slice(), key)
    }

    fn keys(&self) -> Vec<String> {
        Env::keys(self.as_slice())
    }
}

impl<T: Env + ?Sized> Env for &T {
    fn get(&self, key: &str) -> Option<String> {
        (**self).get(key)
    }

    fn keys(&self) -> Vec<String> {
        (**self).keys()
    }
}

/// The result of [`Lexer::process_word`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The word with its quotes removed and its variables expanded.
    pub result: String,
    /// Names the word referenced that the environment has.
    pub matched: BTreeSet<String>,
    /// Names the word referenced that the environment lacks.
    pub unmatched: BTreeSet<String>,
}

/// Why a word could not be expanded. [`Lexer::process_word`] and [`Lexer::process_words`]
/// always return [`ShellError::Process`], which names the word and holds one of the others;
/// the messages are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// The word that failed and what went wrong in it.
    #[error("failed to process {}: {cause}", go_quote(.word))]
    Process {
        word: String,
        cause: Box<ShellError>,
    },
    /// The input ended before the `}` or `/` that closes part of a `${...}`.
    #[error("unexpected end of statement while looking for matching {0}")]
    UnexpectedEnd(char),
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${}`, `${{...`, `${:...`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// `${NAME/pattern` without the `/` before the replacement.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// The text after the name in `${NAME...}` (U+FFFD standing for the end of the input).
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${NAME?message}` or `${NAME:?message}` with the variable unset (or empty).
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    /// A pattern with `\` before something other than `*`, `?` or `\` (U+FFFD: the end).
    #[error("invalid pattern ({pattern}) in substitution: invalid escape '\\{escaped}'")]
    InvalidPattern { pattern: String, escaped: char },
}

/// How words are expanded; BuildKit's `shell.Lex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lexer {
    /// The escape character: `\` unless a `# escape=` directive chose `` ` ``.
    pub escape: char,
    /// Keep the quote characters in the result (the quoting still applies).
    pub raw_quotes: bool,
    /// Keep escape characters in the result (what they escape is still taken literally).
    pub raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them to nothing.
    pub skip_unset_env: bool,
    /// Treat `'` and `"` as ordinary characters.
    pub skip_process_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer with `escape` as its escape character and every other option off.
    pub fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// One word: quotes removed, escapes and variables resolved, whitespace kept. Also says
    /// which variables the word used and which of those were unset (BuildKit's
    /// `ProcessWordWithMatches`). Takes any [`Env`], `&dyn Env` included.
    pub fn process_word<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Expanded, ShellError> {
        let env: &dyn Env = &env;
        let mut run = Expansion::new(self, word, env, true);
        let (result, _) = run.whole(word)?;
        Ok(Expanded {
            result,
            matched: run.matched,
            unmatched: run.unmatched,
        })
    }

    /// The word expanded as [`Lexer::process_word`] does, then split on whitespace that came
    /// neither from quotes nor from escapes (BuildKit's `ProcessWords`).
    pub fn process_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, ShellError> {
        let env: &dyn Env = &env;
        let mut run = Expansion::new(self, word, env, false);
        run.whole(word).map(|(_, words)| words)
    }
}

/// Reads a string a character at a time; a byte order mark at its start is skipped, as Go's
/// `text/scanner` does.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor {
            rest: text.strip_prefix('\u{FEFF}').unwrap_or(text),
        }
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next();
        self.rest = chars.as_str();
        c
    }
}

/// How an end of input shows in messages: Go prints its `EOF` rune as U+FFFD.
fn shown(c: Option<char>) -> char {
    c.unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Words collected while a piece of text is expanded. The text of the word in progress lives
/// in [`Expansion::word_buf`], which every nesting level shares (see `scan`).
#[derive(Default)]
struct Splitter {
    words: Vec<String>,
    in_word: bool,
}

impl Splitter {
    fn push_char(&mut self, buf: &mut String, c: char) {
        if is_space(c) {
            if self.in_word && !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else {
            self.push_literal_char(buf, c);
        }
    }

    fn push_literal_char(&mut self, buf: &mut String, c: char) {
        buf.push(c);
        self.in_word = true;
    }

    fn push_str(&mut self, buf: &mut String, s: &str) {
        for c in s.chars() {
            self.push_char(buf, c);
        }
    }

    fn push_literal_str(&mut self, buf: &mut String, s: &str) {
        buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
        }
        self.in_word = false;
        self.words
    }
}

/// The state of one `process_word`/`process_words` call.
struct Expansion<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    cursor: Cursor<'a>,
    /// Whether escape characters are kept, at the current nesting level.
    raw_escapes: bool,
    /// Whether to record names in `matched`/`unmatched`.
    capture: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    /// The text of the word being split. One buffer for all nesting levels, as in BuildKit: a
    /// nested `scan` (the word in `${NAME:-word}` and the like) clears it when it starts and
    /// takes it when it ends, so the level around it loses what it had collected of its word.
    word_buf: String,
}

impl<'a> Expansion<'a> {
    fn new(lexer: &'a Lexer, text: &'a str, env: &'a dyn Env, capture: bool) -> Self {
        Expansion {
            lexer,
            env,
            cursor: Cursor::new(text),
            raw_escapes: lexer.raw_escapes,
            capture,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            word_buf: String::new(),
        }
    }

    fn whole(&mut self, word: &str) -> Result<(String, Vec<String>), ShellError> {
        let raw_escapes = self.lexer.raw_escapes;
        self.scan(None, raw_escapes)
            .map_err(|cause| ShellError::Process {
                word: word.to_string(),
                cause: Box::new(cause),
            })
    }

    /// Expands text up to (and consuming) `stop`, or to the end when `stop` is `None`, with
    /// escape characters kept when `raw_escapes`. Returns the text and its words.
    fn scan(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let outer = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.scan_inner(stop);
        self.raw_escapes = outer;
        out
    }

    fn scan_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ShellError> {
        let mut text = String::new();
        // Shared with the levels around this one on purpose: see `word_buf`.
        self.word_buf.clear();
        let mut words = Splitter::default();
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(c) = self.cursor.peek() {
            if stop == Some(c) {
                self.cursor.next();
                return Ok((text, words.finish(&mut self.word_buf)));
            }
            match c {
                '$' => {
                    let value = self.dollar()?;
                    words.push_str(&mut self.word_buf, &value);
                    text.push_str(&value);
                }
                '<' => {
                    let value = self.angle();
                    words.push_literal_str(&mut self.word_buf, &value);
                    text.push_str(&value);
                }
                '\'' if quotes => {
                    let value = self.single_quoted()?;
                    words.push_literal_str(&mut self.word_buf, &value);
                    text.push_str(&value);
                }
                '"' if quotes => {
                    let value = self.double_quoted()?;
                    words.push_literal_str(&mut self.word_buf, &value);
                    text.push_str(&value);
                }
                _ => {
                    self.cursor.next();
                    if c == self.lexer.escape {
                        if self.raw_escapes {
                            words.push_literal_char(&mut self.word_buf, c);
                            text.push(c);
                        }
                        // An escape character at the very end is dropped (or kept, raw).
                        let Some(escaped) = self.cursor.next() else {
                            break;
                        };
                        words.push_literal_char(&mut self.word_buf, escaped);
                        text.push(escaped);
                    } else {
                        words.push_char(&mut self.word_buf, c);
                        text.push(c);
                    }
                }
            }
        }
        match stop {
            Some(c) => Err(ShellError::UnexpectedEnd(c)),
            None => Ok((text, words.finish(&mut self.word_buf))),
        }
    }

    /// `'...'`: everything up to the next `'` as it is; there is no escaping inside.
    fn single_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        self.cursor.next();
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.cursor.next() {
                None => return Err(ShellError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: `$` expands; the escape character escapes only `"`, `$` and itself and is
    /// kept before anything else.
    fn double_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        self.cursor.next();
        if self.lexer.raw_quotes {
            out.push('"');
        }
        loop {
            match self.cursor.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.cursor.next();
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    out.push_str(&value);
                }
                Some(c) => {
                    self.cursor.next();
                    let mut c = c;
                    if c == self.lexer.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.cursor.peek() {
                            // The end of the input: the next round reports the open quote.
                            None => continue,
                            Some(next)
                                if next == '"' || next == '$' || next == self.lexer.escape =>
                            {
                                self.cursor.next();
                                c = next;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// `<`, or `<<` with the blanks after it (kept with the here-document's name).
    fn angle(&mut self) -> String {
        self.cursor.next();
        if self.cursor.peek() != Some('<') {
            return "<".to_string();
        }
        self.cursor.next();
        let mut out = "<<".to_string();
        while let Some(c) = self
            .cursor
            .peek()
            .filter(|c| matches!(c, ' ' | '\t' | '\r'))
        {
            self.cursor.next();
            out.push(c);
        }
        out
    }

    /// A variable's value, noting the name as matched or unmatched.
    fn lookup(&mut self, name: &str) -> Option<String> {
        let value = self.env.get(name);
        if self.capture {
            let set = if value.is_some() {
                &mut self.matched
            } else {
                &mut self.unmatched
            };
            set.insert(name.to_string());
        }
        value
    }

    /// A name after `$` or `${`: a run of digits, one special parameter character, or letters,
    /// digits and underscores. Empty when none of those follows.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.cursor.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.cursor.peek().filter(|d| is_digit(*d)) {
                    self.cursor.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_parameter(c) {
                self.cursor.next();
                return c.to_string();
            }
            if !is_letter(c) && !is_digit(c) && c != '_' {
                break;
            }
            self.cursor.next();
            name.push(c);
        }
        name
    }

    /// Everything from a `$` on.
    fn dollar(&mut self) -> Result<String, ShellError> {
        self.cursor.next();
        if self.cursor.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.cursor.next();
        match self.cursor.peek() {
            None => return Err(ShellError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        let first = self.cursor.next();
        let mut modifier = shown(first).to_string();
        match first {
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => {
                let op = self.cursor.next();
                modifier.push(shown(op));
                self.modified(&name, op, true, &modifier)
            }
            Some('+' | '-' | '?' | '#' | '%') => self.modified(&name, first, false, &modifier),
            Some('/') => self.replaced(&name),
            _ => Err(ShellError::UnsupportedModifier(modifier)),
        }
    }

    /// `${NAME<op>word}` and `${NAME:<op>word}` (`null_is_unset`): the cursor is at `word`.
    fn modified(
        &mut self,
        name: &str,
        op: Option<char>,
        null_is_unset: bool,
        modifier: &str,
    ) -> Result<String, ShellError> {
        let unsupported = || ShellError::UnsupportedModifier(modifier.to_string());
        // Patterns keep their escapes, for the pattern's own `\*`, `\?` and `\\`.
        let pattern = matches!(op, Some('#' | '%'));
        if null_is_unset && pattern {
            return Err(unsupported());
        }
        let word = match self.scan(Some('}'), pattern) {
            Ok((word, _)) => word,
            Err(_) if self.cursor.peek().is_none() => return Err(ShellError::MissingBrace),
            Err(e) => return Err(e),
        };
        let value = self.lookup(name);
        if self.lexer.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let present = value
            .as_ref()
            .is_some_and(|v| !(null_is_unset && v.is_empty()));
        match op {
            Some('-') => Ok(if present {
                value.unwrap_or_default()
            } else {
                word
            }),
            Some('+') => Ok(if present { word } else { String::new() }),
            Some('?') => match value {
                Some(value) if present => Ok(value),
                _ => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_string()
                    } else {
                        "is not allowed to be empty".to_string()
                    };
                    Err(ShellError::Required {
                        name: name.to_string(),
                        message,
                    })
                }
            },
            Some(c @ ('#' | '%')) => {
                let (pattern, longest) = match word.strip_prefix(c) {
                    Some(rest) => (rest, true),
                    None => (word.as_str(), false),
                };
                let value = value.unwrap_or_default();
                if c == '#' {
                    trim_prefix(pattern, &value, longest)
                } else {
                    trim_suffix(pattern, &value, longest)
                }
            }
            _ => Err(unsupported()),
        }
    }

    /// `${NAME/pattern/replacement}` and `${NAME//pattern/replacement}`: the cursor is after
    /// the first `/`.
    fn replaced(&mut self, name: &str) -> Result<String, ShellError> {
        let all = self.cursor.peek() == Some('/');
        if all {
            self.cursor.next();
        }
        let pattern = match self.scan(Some('/'), true) {
            Ok((pattern, _)) => pattern,
            Err(_) if self.cursor.peek().is_none() => return Err(ShellError::MissingSlash),
            Err(e) => return Err(e),
        };
        let replacement = match self.scan(Some('}'), true) {
            Ok((replacement, _)) => replacement,
            Err(_) if self.cursor.peek().is_none() => return Err(ShellError::MissingBrace),
            Err(e) => return Err(e),
        };
        let value = self.lookup(name);
        if self.lexer.skip_unset_env && value.is_none() {
            // BuildKit writes one `/` back even for `//`.
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        // Unset is empty here, and an empty value can still match (`*` and the empty pattern).
        let value = value.unwrap_or_default();
        let glob = Glob::compile(&pattern, true)?;
        if all {
            return Ok(glob.replace_all(&value, &replacement));
        }
        Ok(match glob.find_at(&value, 0, false) {
            Some((start, end)) => format!("{}{replacement}{}", &value[..start], &value[end..]),
            None => value,
        })
    }
}

/// The parameters POSIX calls special (`$@`, `$*`, `$#`, ...): a name of one character.
fn is_special_parameter(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// Whitespace for word splitting: Unicode `White_Space`, as Go's `unicode.IsSpace`.
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// A letter as Go's `unicode.IsLetter` has it (general category L).
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_ranges(LETTERS, c)
}

/// A digit as Go's `unicode.IsDigit` has it (general category Nd).
fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    in_ranges(DIGITS, c)
}

fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `${NAME#pattern}` (`longest`: `##`): the value without the part at its start that the
/// pattern matches.
fn trim_prefix(pattern: &str, value: &str, longest: bool) -> Result<String, ShellError> {
    let glob = Glob::compile(pattern, longest)?;
    Ok(match glob.find_at(value, 0, true) {
        Some((_, end)) => value[end..].to_string(),
        None => value.to_string(),
    })
}

/// `${NAME%pattern}` (`longest`: `%%`): the value without the part at its end that the pattern
/// matches. Done as a prefix trim of the reversed value with the reversed pattern, as BuildKit
/// does (errors then quote the reversed pattern).
fn trim_suffix(pattern: &str, value: &str, longest: bool) -> Result<String, ShellError> {
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reverse_chars(value), longest)?;
    Ok(reverse_chars(&trimmed))
}

fn reverse_chars(s: &str) -> String {
    s.chars().rev().collect()
}

/// A pattern back to front, each `\x` pair kept in its order.
fn reverse_pattern(pattern: &str) -> String {
    let mut units: Vec<&str> = Vec::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        let mut len = c.len_utf8();
        if c == '\\' {
            len += rest[len..].chars().next().map_or(0, char::len_utf8);
        }
        units.push(&rest[..len]);
        rest = &rest[len..];
    }
    units.into_iter().rev().collect()
}

/// One element of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// This character.
    Char(char),
    /// `?`: one character other than a newline.
    AnyChar,
    /// `*`: any number of characters other than newlines.
    AnyRun,
}

/// A step of the matcher: a small program in the style of a regular expression VM.
#[derive(Debug, Clone, Copy)]
enum Step {
    Char(char),
    /// Any character but `\n`.
    Any,
    /// Try both; the first has priority.
    Fork(usize, usize),
    Jump(usize),
    Match,
}

/// A compiled shell pattern. Matches are the ones Go's regexp (leftmost, then first by
/// priority) finds for the regular expression BuildKit makes of the pattern: each `*` prefers
/// the longest run when `greedy`, the shortest otherwise.
#[derive(Debug)]
struct Glob {
    steps: Vec<Step>,
}

impl Glob {
    fn parse(pattern: &str) -> Result<Vec<Piece>, ShellError> {
        let mut cursor = Cursor::new(pattern);
        let mut pieces = Vec::new();
        while let Some(c) = cursor.next() {
            match c {
                '*' => pieces.push(Piece::AnyRun),
                '?' => pieces.push(Piece::AnyChar),
                '\\' => {
                    // `\}` and `\/` protected the `${...}` syntax: the character itself
                    // follows as a plain one.
                    if matches!(cursor.peek(), Some('}' | '/')) {
                        continue;
                    }
                    match cursor.next() {
                        Some(e @ ('*' | '?' | '\\')) => pieces.push(Piece::Char(e)),
                        other => {
                            return Err(ShellError::InvalidPattern {
                                pattern: pattern.to_string(),
                                escaped: shown(other),
                            });
                        }
                    }
                }
                c => pieces.push(Piece::Char(c)),
            }
        }
        Ok(pieces)
    }

    fn compile(pattern: &str, greedy: bool) -> Result<Glob, ShellError> {
        let mut steps = Vec::new();
        for piece in Glob::parse(pattern)? {
            match piece {
                Piece::Char(c) => steps.push(Step::Char(c)),
                Piece::AnyChar => steps.push(Step::Any),
                Piece::AnyRun => {
                    let at = steps.len();
                    let (more, done) = (at + 1, at + 3);
                    steps.push(if greedy {
                        Step::Fork(more, done)
                    } else {
                        Step::Fork(done, more)
                    });
                    steps.push(Step::Any);
                    steps.push(Step::Jump(at));
                }
            }
        }
        steps.push(Step::Match);
        Ok(Glob { steps })
    }

    /// Adds the thread at `pc` (and what it leads to without reading) to `list`, in priority
    /// order, skipping steps already there.
    fn add(
        &self,
        list: &mut Vec<(usize, usize)>,
        seen: &mut [usize],
        mark: usize,
        pc: usize,
        start: usize,
    ) {
        let mut todo = vec![pc];
        while let Some(pc) = todo.pop() {
            if seen[pc] == mark {
                continue;
            }
            seen[pc] = mark;
            match self.steps[pc] {
                Step::Jump(to) => todo.push(to),
                Step::Fork(first, second) => {
                    todo.push(second);
                    todo.push(first);
                }
                _ => list.push((pc, start)),
            }
        }
    }

    /// The first match starting at or after byte `from` (only at `from` when `anchored`), as
    /// `(start, end)` byte offsets.
    fn find_at(&self, text: &str, from: usize, anchored: bool) -> Option<(usize, usize)> {
        let mut seen = vec![0usize; self.steps.len()];
        let mut mark = 1;
        let mut current: Vec<(usize, usize)> = Vec::new();
        let mut next: Vec<(usize, usize)> = Vec::new();
        let mut found = None;
        let mut pos = from;
        loop {
            if found.is_none() && (!anchored || pos == from) {
                self.add(&mut current, &mut seen, mark, 0, pos);
            }
            if current.is_empty() {
                break;
            }
            let c = text.get(pos..).and_then(|rest| rest.chars().next());
            mark += 1;
            for &(pc, start) in &current {
                let advance = match self.steps[pc] {
                    Step::Match => {
                        // Threads after this one have lower priority: they are dropped.
                        found = Some((start, pos));
                        break;
                    }
                    Step::Char(want) => c == Some(want),
                    Step::Any => c.is_some_and(|c| c != '\n'),
                    Step::Fork(..) | Step::Jump(_) => false,
                };
                if advance {
                    self.add(&mut next, &mut seen, mark, pc + 1, start);
                }
            }
            let Some(c) = c else {
                break;
            };
            pos += c.len_utf8();
            std::mem::swap(&mut current, &mut next);
            next.clear();
        }
        found
    }

    /// Every match replaced by `template`, in which `$0`/`${0}` stand for the match, `$$` for
    /// `$`, and other `$name` references for nothing (Go's `Regexp.ReplaceAllString`).
    fn replace_all(&self, text: &str, template: &str) -> String {
        let mut out = String::new();
        let mut last_end = 0;
        let mut search = 0;
        while search <= text.len() {
            let Some((start, end)) = self.find_at(text, search, false) else {
                break;
            };
            out.push_str(&text[last_end..start]);
            // An empty match right after the previous match is not replaced again.
            if end > last_end || start == 0 {
                expand_template(&mut out, template, &text[start..end]);
            }
            last_end = end;
            let width = text[search..].chars().next().map_or(0, char::len_utf8);
            if search + width > end {
                search += width;
            } else if search + 1 > end {
                search += 1;
            } else {
                search = end;
            }
        }
        out.push_str(&text[last_end..]);
        out
    }
}

/// Appends `template` with its `$` references resolved against a match without groups.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_reference(rest) {
            Some((name, after)) => {
                rest = after;
                if name == "0" {
                    out.push_str(matched);
                }
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// A `name` or `{name}` at the start of `s` (letters, digits, `_`), and the text after it.
fn template_reference(s: &str) -> Option<(&str, &str)> {
    let (body, braced) = match s.strip_prefix('{') {
        Some(body) => (body, true),
        None => (s, false),
    };
    let len = body
        .char_indices()
        .find(|&(_, c)| !is_letter(c) && !is_digit(c) && c != '_')
        .map_or(body.len(), |(i, _)| i);
    if len == 0 {
        return None;
    }
    let (name, after) = body.split_at(len);
    if braced {
        return after.strip_prefix('}').map(|after| (name, after));
    }
    Some((name, after))
}

/// `s` in double quotes the way Go's `%q` writes it (`strconv.Quote`), for messages.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if go_printable(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.IsPrint`, except that unassigned code points count as printable.
fn go_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    let n = u32::from(c);
    let private = (0xE000..=0xF8FF).contains(&n) || n >= 0xF0000;
    let noncharacter = (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE;
    !(c.is_control() || c.is_whitespace() || private || noncharacter || in_ranges(FORMAT, c))
}

/// General category Cf outside ASCII (Unicode 17).
const FORMAT: &[(u32, u32)] = &[
    (0xAD, 0xAD),
    (0x600, 0x605),
    (0x61C, 0x61C),
    (0x6DD, 0x6DD),
    (0x70F, 0x70F),
    (0x890, 0x891),
    (0x8E2, 0x8E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

// Generated from Go's `unicode` tables (Unicode 17.0.0): inclusive ranges outside ASCII.
#[rustfmt::skip]
const LETTERS: &[(u32, u32)] = &[
    (0xAA, 0xAA), (0xB5, 0xB5), (0xBA, 0xBA), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x2C1),
    (0x2C6, 0x2D1), (0x2E0, 0x2E4), (0x2EC, 0x2EC), (0x2EE, 0x2EE), (0x370, 0x374), (0x376, 0x377),
    (0x37A, 0x37D), (0x37F, 0x37F), (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1),
    (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556), (0x559, 0x559), (0x560, 0x588),
    (0x5D0, 0x5EA), (0x5EF, 0x5F2), (0x620, 0x64A), (0x66E, 0x66F), (0x671, 0x6D3), (0x6D5, 0x6D5),
    (0x6E5, 0x6E6), (0x6EE, 0x6EF), (0x6FA, 0x6FC), (0x6FF, 0x6FF), (0x710, 0x710), (0x712, 0x72F),
    (0x74D, 0x7A5), (0x7B1, 0x7B1), (0x7CA, 0x7EA), (0x7F4, 0x7F5), (0x7FA, 0x7FA), (0x800, 0x815),
    (0x81A, 0x81A), (0x824, 0x824), (0x828, 0x828), (0x840, 0x858), (0x860, 0x86A), (0x870, 0x887),
    (0x889, 0x88F), (0x8A0, 0x8C9), (0x904, 0x939), (0x93D, 0x93D), (0x950, 0x950), (0x958, 0x961),
    (0x971, 0x980), (0x985, 0x98C), (0x98F, 0x990), (0x993, 0x9A8), (0x9AA, 0x9B0), (0x9B2, 0x9B2),
    (0x9B6, 0x9B9), (0x9BD, 0x9BD), (0x9CE, 0x9CE), (0x9DC, 0x9DD), (0x9DF, 0x9E1), (0x9F0, 0x9F1),
    (0x9FC, 0x9FC), (0xA05, 0xA0A), (0xA0F, 0xA10), (0xA13, 0xA28), (0xA2A, 0xA30), (0xA32, 0xA33),
    (0xA35, 0xA36), (0xA38, 0xA39), (0xA59, 0xA5C), (0xA5E, 0xA5E), (0xA72, 0xA74), (0xA85, 0xA8D),
    (0xA8F, 0xA91), (0xA93, 0xAA8), (0xAAA, 0xAB0), (0xAB2, 0xAB3), (0xAB5, 0xAB9), (0xABD, 0xABD),
    (0xAD0, 0xAD0), (0xAE0, 0xAE1), (0xAF9, 0xAF9), (0xB05, 0xB0C), (0xB0F, 0xB10), (0xB13, 0xB28),
    (0xB2A, 0xB30), (0xB32, 0xB33), (0xB35, 0xB39), (0xB3D, 0xB3D), (0xB5C, 0xB5D), (0xB5F, 0xB61),
    (0xB71, 0xB71), (0xB83, 0xB83), (0xB85, 0xB8A), (0xB8E, 0xB90), (0xB92, 0xB95), (0xB99, 0xB9A),
    (0xB9C, 0xB9C), (0xB9E, 0xB9F), (0xBA3, 0xBA4), (0xBA8, 0xBAA), (0xBAE, 0xBB9), (0xBD0, 0xBD0),
    (0xC05, 0xC0C), (0xC0E, 0xC10), (0xC12, 0xC28), (0xC2A, 0xC39), (0xC3D, 0xC3D), (0xC58, 0xC5A),
    (0xC5C, 0xC5D), (0xC60, 0xC61), (0xC80, 0xC80), (0xC85, 0xC8C), (0xC8E, 0xC90), (0xC92, 0xCA8),
    (0xCAA, 0xCB3), (0xCB5, 0xCB9), (0xCBD, 0xCBD), (0xCDC, 0xCDE), (0xCE0, 0xCE1), (0xCF1, 0xCF2),
    (0xD04, 0xD0C), (0xD0E, 0xD10), (0xD12, 0xD3A), (0xD3D, 0xD3D), (0xD4E, 0xD4E), (0xD54, 0xD56),
    (0xD5F, 0xD61), (0xD7A, 0xD7F), (0xD85, 0xD96), (0xD9A, 0xDB1), (0xDB3, 0xDBB), (0xDBD, 0xDBD),
    (0xDC0, 0xDC6), (0xE01, 0xE30), (0xE32, 0xE33), (0xE40, 0xE46), (0xE81, 0xE82), (0xE84, 0xE84),
    (0xE86, 0xE8A), (0xE8C, 0xEA3), (0xEA5, 0xEA5), (0xEA7, 0xEB0), (0xEB2, 0xEB3), (0xEBD, 0xEBD),
    (0xEC0, 0xEC4), (0xEC6, 0xEC6), (0xEDC, 0xEDF), (0xF00, 0xF00), (0xF40, 0xF47), (0xF49, 0xF6C),
    (0xF88, 0xF8C), (0x1000, 0x102A), (0x103F, 0x103F), (0x1050, 0x1055), (0x105A, 0x105D), (0x1061, 0x1061),
    (0x1065, 0x1066), (0x106E, 0x1070), (0x1075, 0x1081), (0x108E, 0x108E), (0x10A0, 0x10C5), (0x10C7, 0x10C7),
    (0x10CD, 0x10CD), (0x10D0, 0x10FA), (0x10FC, 0x1248), (0x124A, 0x124D), (0x1250, 0x1256), (0x1258, 0x1258),
    (0x125A, 0x125D), (0x1260, 0x1288), (0x128A, 0x128D), (0x1290, 0x12B0), (0x12B2, 0x12B5), (0x12B8, 0x12BE),
    (0x12C0, 0x12C0), (0x12C2, 0x12C5), (0x12C8, 0x12D6), (0x12D8, 0x1310), (0x1312, 0x1315), (0x1318, 0x135A),
    (0x1380, 0x138F), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1401, 0x166C), (0x166F, 0x167F), (0x1681, 0x169A),
    (0x16A0, 0x16EA), (0x16F1, 0x16F8), (0x1700, 0x1711), (0x171F, 0x1731), (0x1740, 0x1751), (0x1760, 0x176C),
    (0x176E, 0x1770), (0x1780, 0x17B3), (0x17D7, 0x17D7), (0x17DC, 0x17DC), (0x1820, 0x1878), (0x1880, 0x1884),
    (0x1887, 0x18A8), (0x18AA, 0x18AA), (0x18B0, 0x18F5), (0x1900, 0x191E), (0x1950, 0x196D), (0x1970, 0x1974),
    (0x1980, 0x19AB), (0x19B0, 0x19C9), (0x1A00, 0x1A16), (0x1A20, 0x1A54), (0x1AA7, 0x1AA7), (0x1B05, 0x1B33),
    (0x1B45, 0x1B4C), (0x1B83, 0x1BA0), (0x1BAE, 0x1BAF), (0x1BBA, 0x1BE5), (0x1C00, 0x1C23), (0x1C4D, 0x1C4F),
    (0x1C5A, 0x1C7D), (0x1C80, 0x1C8A), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1CE9, 0x1CEC), (0x1CEE, 0x1CF3),
    (0x1CF5, 0x1CF6), (0x1CFA, 0x1CFA), (0x1D00, 0x1DBF), (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45),
    (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D),
    (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3),
    (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2071, 0x2071), (0x207F, 0x207F),
    (0x2090, 0x209C), (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D),
    (0x2124, 0x2124), (0x2126, 0x2126), (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2139), (0x213C, 0x213F),
    (0x2145, 0x2149), (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3),
    (0x2D00, 0x2D25), (0x2D27, 0x2D27), (0x2D2D, 0x2D2D), (0x2D30, 0x2D67), (0x2D6F, 0x2D6F), (0x2D80, 0x2D96),
    (0x2DA0, 0x2DA6), (0x2DA8, 0x2DAE), (0x2DB0, 0x2DB6), (0x2DB8, 0x2DBE), (0x2DC0, 0x2DC6), (0x2DC8, 0x2DCE),
    (0x2DD0, 0x2DD6), (0x2DD8, 0x2DDE), (0x2E2F, 0x2E2F), (0x3005, 0x3006), (0x3031, 0x3035), (0x303B, 0x303C),
    (0x3041, 0x3096), (0x309D, 0x309F), (0x30A1, 0x30FA), (0x30FC, 0x30FF), (0x3105, 0x312F), (0x3131, 0x318E),
    (0x31A0, 0x31BF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0xA48C), (0xA4D0, 0xA4FD), (0xA500, 0xA60C),
    (0xA610, 0xA61F), (0xA62A, 0xA62B), (0xA640, 0xA66E), (0xA67F, 0xA69D), (0xA6A0, 0xA6E5), (0xA717, 0xA71F),
    (0xA722, 0xA788), (0xA78B, 0xA7DC), (0xA7F1, 0xA801), (0xA803, 0xA805), (0xA807, 0xA80A), (0xA80C, 0xA822),
    (0xA840, 0xA873), (0xA882, 0xA8B3), (0xA8F2, 0xA8F7), (0xA8FB, 0xA8FB), (0xA8FD, 0xA8FE), (0xA90A, 0xA925),
    (0xA930, 0xA946), (0xA960, 0xA97C), (0xA984, 0xA9B2), (0xA9CF, 0xA9CF), (0xA9E0, 0xA9E4), (0xA9E6, 0xA9EF),
    (0xA9FA, 0xA9FE), (0xAA00, 0xAA28), (0xAA40, 0xAA42), (0xAA44, 0xAA4B), (0xAA60, 0xAA76), (0xAA7A, 0xAA7A),
    (0xAA7E, 0xAAAF), (0xAAB1, 0xAAB1), (0xAAB5, 0xAAB6), (0xAAB9, 0xAABD), (0xAAC0, 0xAAC0), (0xAAC2, 0xAAC2),
    (0xAADB, 0xAADD), (0xAAE0, 0xAAEA), (0xAAF2, 0xAAF4), (0xAB01, 0xAB06), (0xAB09, 0xAB0E), (0xAB11, 0xAB16),
    (0xAB20, 0xAB26), (0xAB28, 0xAB2E), (0xAB30, 0xAB5A), (0xAB5C, 0xAB69), (0xAB70, 0xABE2), (0xAC00, 0xD7A3),
    (0xD7B0, 0xD7C6), (0xD7CB, 0xD7FB), (0xF900, 0xFA6D), (0xFA70, 0xFAD9), (0xFB00, 0xFB06), (0xFB13, 0xFB17),
    (0xFB1D, 0xFB1D), (0xFB1F, 0xFB28), (0xFB2A, 0xFB36), (0xFB38, 0xFB3C), (0xFB3E, 0xFB3E), (0xFB40, 0xFB41),
    (0xFB43, 0xFB44), (0xFB46, 0xFBB1), (0xFBD3, 0xFD3D), (0xFD50, 0xFD8F), (0xFD92, 0xFDC7), (0xFDF0, 0xFDFB),
    (0xFE70, 0xFE74), (0xFE76, 0xFEFC), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0xFF66, 0xFFBE), (0xFFC2, 0xFFC7),
    (0xFFCA, 0xFFCF), (0xFFD2, 0xFFD7), (0xFFDA, 0xFFDC), (0x10000, 0x1000B), (0x1000D, 0x10026), (0x10028, 0x1003A),
    (0x1003C, 0x1003D), (0x1003F, 0x1004D), (0x10050, 0x1005D), (0x10080, 0x100FA), (0x10280, 0x1029C), (0x102A0, 0x102D0),
    (0x10300, 0x1031F), (0x1032D, 0x10340), (0x10342, 0x10349), (0x10350, 0x10375), (0x10380, 0x1039D), (0x103A0, 0x103C3),
    (0x103C8, 0x103CF), (0x10400, 0x1049D), (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10500, 0x10527), (0x10530, 0x10563),
    (0x10570, 0x1057A), (0x1057C, 0x1058A), (0x1058C, 0x10592), (0x10594, 0x10595), (0x10597, 0x105A1), (0x105A3, 0x105B1),
    (0x105B3, 0x105B9), (0x105BB, 0x105BC), (0x105C0, 0x105F3), (0x10600, 0x10736), (0x10740, 0x10755), (0x10760, 0x10767),
    (0x10780, 0x10785), (0x10787, 0x107B0), (0x107B2, 0x107BA), (0x10800, 0x10805), (0x10808, 0x10808), (0x1080A, 0x10835),
    (0x10837, 0x10838), (0x1083C, 0x1083C), (0x1083F, 0x10855), (0x10860, 0x10876), (0x10880, 0x1089E), (0x108E0, 0x108F2),
    (0x108F4, 0x108F5), (0x10900, 0x10915), (0x10920, 0x10939), (0x10940, 0x10959), (0x10980, 0x109B7), (0x109BE, 0x109BF),
    (0x10A00, 0x10A00), (0x10A10, 0x10A13), (0x10A15, 0x10A17), (0x10A19, 0x10A35), (0x10A60, 0x10A7C), (0x10A80, 0x10A9C),
    (0x10AC0, 0x10AC7), (0x10AC9, 0x10AE4), (0x10B00, 0x10B35), (0x10B40, 0x10B55), (0x10B60, 0x10B72), (0x10B80, 0x10B91),
    (0x10C00, 0x10C48), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x10D00, 0x10D23), (0x10D4A, 0x10D65), (0x10D6F, 0x10D85),
    (0x10E80, 0x10EA9), (0x10EB0, 0x10EB1), (0x10EC2, 0x10EC7), (0x10F00, 0x10F1C), (0x10F27, 0x10F27), (0x10F30, 0x10F45),
    (0x10F70, 0x10F81), (0x10FB0, 0x10FC4), (0x10FE0, 0x10FF6), (0x11003, 0x11037), (0x11071, 0x11072), (0x11075, 0x11075),
    (0x11083, 0x110AF), (0x110D0, 0x110E8), (0x11103, 0x11126), (0x11144, 0x11144), (0x11147, 0x11147), (0x11150, 0x11172),
    (0x11176, 0x11176), (0x11183, 0x111B2), (0x111C1, 0x111C4), (0x111DA, 0x111DA), (0x111DC, 0x111DC), (0x11200, 0x11211),
    (0x11213, 0x1122B), (0x1123F, 0x11240), (0x11280, 0x11286), (0x11288, 0x11288), (0x1128A, 0x1128D), (0x1128F, 0x1129D),
    (0x1129F, 0x112A8), (0x112B0, 0x112DE), (0x11305, 0x1130C), (0x1130F, 0x11310), (0x11313, 0x11328), (0x1132A, 0x11330),
    (0x11332, 0x11333), (0x11335, 0x11339), (0x1133D, 0x1133D), (0x11350, 0x11350), (0x1135D, 0x11361), (0x11380, 0x11389),
    (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3),
    (0x11400, 0x11434), (0x11447, 0x1144A), (0x1145F, 0x11461), (0x11480, 0x114AF), (0x114C4, 0x114C5), (0x114C7, 0x114C7),
    (0x11580, 0x115AE), (0x115D8, 0x115DB), (0x11600, 0x1162F), (0x11644, 0x11644), (0x11680, 0x116AA), (0x116B8, 0x116B8),
    (0x11700, 0x1171A), (0x11740, 0x11746), (0x11800, 0x1182B), (0x118A0, 0x118DF), (0x118FF, 0x11906), (0x11909, 0x11909),
    (0x1190C, 0x11913), (0x11915, 0x11916), (0x11918, 0x1192F), (0x1193F, 0x1193F), (0x11941, 0x11941), (0x119A0, 0x119A7),
    (0x119AA, 0x119D0), (0x119E1, 0x119E1), (0x119E3, 0x119E3), (0x11A00, 0x11A00), (0x11A0B, 0x11A32), (0x11A3A, 0x11A3A),
    (0x11A50, 0x11A50), (0x11A5C, 0x11A89), (0x11A9D, 0x11A9D), (0x11AB0, 0x11AF8), (0x11BC0, 0x11BE0), (0x11C00, 0x11C08),
    (0x11C0A, 0x11C2E), (0x11C40, 0x11C40), (0x11C72, 0x11C8F), (0x11D00, 0x11D06), (0x11D08, 0x11D09), (0x11D0B, 0x11D30),
    (0x11D46, 0x11D46), (0x11D60, 0x11D65), (0x11D67, 0x11D68), (0x11D6A, 0x11D89), (0x11D98, 0x11D98), (0x11DB0, 0x11DDB),
    (0x11EE0, 0x11EF2), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x11FB0, 0x11FB0), (0x12000, 0x12399),
    (0x12480, 0x12543), (0x12F90, 0x12FF0), (0x13000, 0x1342F), (0x13441, 0x13446), (0x13460, 0x143FA), (0x14400, 0x14646),
    (0x16100, 0x1611D), (0x16800, 0x16A38), (0x16A40, 0x16A5E), (0x16A70, 0x16ABE), (0x16AD0, 0x16AED), (0x16B00, 0x16B2F),
    (0x16B40, 0x16B43), (0x16B63, 0x16B77), (0x16B7D, 0x16B8F), (0x16D40, 0x16D6C), (0x16E40, 0x16E7F), (0x16EA0, 0x16EB8),
    (0x16EBB, 0x16ED3), (0x16F00, 0x16F4A), (0x16F50, 0x16F50), (0x16F93, 0x16F9F), (0x16FE0, 0x16FE1), (0x16FE3, 0x16FE3),
    (0x16FF2, 0x16FF3), (0x17000, 0x18CD5), (0x18CFF, 0x18D1E), (0x18D80, 0x18DF2), (0x1AFF0, 0x1AFF3), (0x1AFF5, 0x1AFFB),
    (0x1AFFD, 0x1AFFE), (0x1B000, 0x1B122), (0x1B132, 0x1B132), (0x1B150, 0x1B152), (0x1B155, 0x1B155), (0x1B164, 0x1B167),
    (0x1B170, 0x1B2FB), (0x1BC00, 0x1BC6A), (0x1BC70, 0x1BC7C), (0x1BC80, 0x1BC88), (0x1BC90, 0x1BC99), (0x1D400, 0x1D454),
    (0x1D456, 0x1D49C), (0x1D49E, 0x1D49F), (0x1D4A2, 0x1D4A2), (0x1D4A5, 0x1D4A6), (0x1D4A9, 0x1D4AC), (0x1D4AE, 0x1D4B9),
    (0x1D4BB, 0x1D4BB), (0x1D4BD, 0x1D4C3), (0x1D4C5, 0x1D505), (0x1D507, 0x1D50A), (0x1D50D, 0x1D514), (0x1D516, 0x1D51C),
    (0x1D51E, 0x1D539), (0x1D53B, 0x1D53E), (0x1D540, 0x1D544), (0x1D546, 0x1D546), (0x1D54A, 0x1D550), (0x1D552, 0x1D6A5),
    (0x1D6A8, 0x1D6C0), (0x1D6C2, 0x1D6DA), (0x1D6DC, 0x1D6FA), (0x1D6FC, 0x1D714), (0x1D716, 0x1D734), (0x1D736, 0x1D74E),
    (0x1D750, 0x1D76E), (0x1D770, 0x1D788), (0x1D78A, 0x1D7A8), (0x1D7AA, 0x1D7C2), (0x1D7C4, 0x1D7CB), (0x1DF00, 0x1DF1E),
    (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E100, 0x1E12C), (0x1E137, 0x1E13D), (0x1E14E, 0x1E14E), (0x1E290, 0x1E2AD),
    (0x1E2C0, 0x1E2EB), (0x1E4D0, 0x1E4EB), (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2),
    (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x1E7E0, 0x1E7E6), (0x1E7E8, 0x1E7EB),
    (0x1E7ED, 0x1E7EE), (0x1E7F0, 0x1E7FE), (0x1E800, 0x1E8C4), (0x1E900, 0x1E943), (0x1E94B, 0x1E94B), (0x1EE00, 0x1EE03),
    (0x1EE05, 0x1EE1F), (0x1EE21, 0x1EE22), (0x1EE24, 0x1EE24), (0x1EE27, 0x1EE27), (0x1EE29, 0x1EE32), (0x1EE34, 0x1EE37),
    (0x1EE39, 0x1EE39), (0x1EE3B, 0x1EE3B), (0x1EE42, 0x1EE42), (0x1EE47, 0x1EE47), (0x1EE49, 0x1EE49), (0x1EE4B, 0x1EE4B),
    (0x1EE4D, 0x1EE4F), (0x1EE51, 0x1EE52), (0x1EE54, 0x1EE54), (0x1EE57, 0x1EE57), (0x1EE59, 0x1EE59), (0x1EE5B, 0x1EE5B),
    (0x1EE5D, 0x1EE5D), (0x1EE5F, 0x1EE5F), (0x1EE61, 0x1EE62), (0x1EE64, 0x1EE64), (0x1EE67, 0x1EE6A), (0x1EE6C, 0x1EE72),
    (0x1EE74, 0x1EE77), (0x1EE79, 0x1EE7C), (0x1EE7E, 0x1EE7E), (0x1EE80, 0x1EE89), (0x1EE8B, 0x1EE9B), (0x1EEA1, 0x1EEA3),
    (0x1EEA5, 0x1EEA9), (0x1EEAB, 0x1EEBB), (0x20000, 0x2A6DF), (0x2A700, 0x2B81D), (0x2B820, 0x2CEAD), (0x2CEB0, 0x2EBE0),
    (0x2EBF0, 0x2EE5D), (0x2F800, 0x2FA1D), (0x30000, 0x3134A), (0x31350, 0x33479),
];
#[rustfmt::skip]
const DIGITS: &[(u32, u32)] = &[
    (0x660, 0x669), (0x6F0, 0x6F9), (0x7C0, 0x7C9), (0x966, 0x96F), (0x9E6, 0x9EF), (0xA66, 0xA6F),
    (0xAE6, 0xAEF), (0xB66, 0xB6F), (0xBE6, 0xBEF), (0xC66, 0xC6F), (0xCE6, 0xCEF), (0xD66, 0xD6F),
    (0xDE6, 0xDEF), (0xE50, 0xE59), (0xED0, 0xED9), (0xF20, 0xF29), (0x1040, 0x1049), (0x1090, 0x1099),
    (0x17E0, 0x17E9), (0x1810, 0x1819), (0x1946, 0x194F), (0x19D0, 0x19D9), (0x1A80, 0x1A89), (0x1A90, 0x1A99),
    (0x1B50, 0x1B59), (0x1BB0, 0x1BB9), (0x1C40, 0x1C49), (0x1C50, 0x1C59), (0xA620, 0xA629), (0xA8D0, 0xA8D9),
    (0xA900, 0xA909), (0xA9D0, 0xA9D9), (0xA9F0, 0xA9F9), (0xAA50, 0xAA59), (0xABF0, 0xABF9), (0xFF10, 0xFF19),
    (0x104A0, 0x104A9), (0x10D30, 0x10D39), (0x10D40, 0x10D49), (0x11066, 0x1106F), (0x110F0, 0x110F9), (0x11136, 0x1113F),
    (0x111D0, 0x111D9), (0x112F0, 0x112F9), (0x11450, 0x11459), (0x114D0, 0x114D9), (0x11650, 0x11659), (0x116C0, 0x116C9),
    (0x116D0, 0x116E3), (0x11730, 0x11739), (0x118E0, 0x118E9), (0x11950, 0x11959), (0x11BF0, 0x11BF9), (0x11C50, 0x11C59),
    (0x11D50, 0x11D59), (0x11DA0, 0x11DA9), (0x11DE0, 0x11DE9), (0x11F50, 0x11F59), (0x16130, 0x16139), (0x16A60, 0x16A69),
    (0x16AC0, 0x16AC9), (0x16B50, 0x16B59), (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D7CE, 0x1D7FF), (0x1E140, 0x1E149),
    (0x1E2F0, 0x1E2F9), (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA), (0x1E950, 0x1E959), (0x1FBF0, 0x1FBF9),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `KEY=value` strings the way BuildKit's `EnvsFromSlice` reads them (no `=`: empty value).
    fn from_assignments(list: &[&str]) -> Vec<(String, String)> {
        list.iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// The regular expression BuildKit writes for a pattern (anchored, greedy), rebuilt from
    /// the parsed pieces.
    fn regex_of(pattern: &str) -> Result<String, ShellError> {
        let mut out = "^".to_string();
        for piece in Glob::parse(pattern)? {
            match piece {
                Piece::AnyRun => out.push_str(".*"),
                Piece::AnyChar => out.push('.'),
                Piece::Char(c) => {
                    if "*?\\[]{}.+()|^$".contains(c) {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn patterns_become_buildkits_regular_expressions() {
        let cases = [
            ("*", "^.*"),
            ("?", "^."),
            (r"\*", r"^\*"),
            (r"(()[]{\}^$.\*\?|\\", r"^\(\(\)\[\]\{\}\^\$\.\*\?\|\\"),
        ];
        for (pattern, want) in cases {
            assert_eq!(regex_of(pattern).ok().as_deref(), Some(want), "{pattern}");
        }
        for pattern in [r"\", r"\x", r"\\\"] {
            assert!(regex_of(pattern).is_err(), "{pattern}");
        }
        assert_eq!(
            Glob::parse(r"a\x").err(),
            Some(ShellError::InvalidPattern {
                pattern: r"a\x".into(),
                escaped: 'x'
            })
        );
        assert_eq!(
            Glob::parse(r"a\").err(),
            Some(ShellError::InvalidPattern {
                pattern: r"a\".into(),
                escaped: '\u{FFFD}'
            })
        );
    }

    #[test]
    fn reversing() {
        assert_eq!(reverse_chars("54321"), "12345");
        assert_eq!(reverse_chars("🖖🚀👽"), "👽🚀🖖");
        let cases = [
            (r"a\*c", r"c\*a"),
            (r"\\\ab", r"b\a\\"),
            (r"ab\", r"\ba"),
            (r"👽\🚀🖖", r"🖖\🚀👽"),
            (r"\\b", r"b\\"),
            ("", ""),
        ];
        for (pattern, want) in cases {
            assert_eq!(reverse_pattern(pattern), want, "{pattern}");
        }
    }

    #[test]
    fn mandatory_variables() {
        let lex = Lexer::new('\\');
        let set_env = from_assignments(&["VAR=plain", "ARG=x"]);
        let empty_env = from_assignments(&["VAR=", "ARG=x"]);
        let unset_env = from_assignments(&["ARG=x"]);
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";

        let word = |w: &str, env: &Vec<(String, String)>| lex.process_word(w, env);
        assert_eq!(
            word(no_empty, &set_env).map(|e| e.result),
            Ok("plain".into())
        );
        for env in [&empty_env, &unset_env] {
            let err = word(no_empty, env).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("message herex")));
        }

        assert_eq!(
            word(no_unset, &set_env).map(|e| e.result),
            Ok("plain".into())
        );
        assert_eq!(
            word(no_unset, &empty_env).map(|e| e.result),
            Ok(String::new())
        );
        let err = word(no_unset, &unset_env).err();
        assert_eq!(
            err,
            Some(ShellError::Process {
                word: no_unset.into(),
                cause: Box::new(ShellError::Required {
                    name: "VAR".into(),
                    message: "message herex".into()
                }),
            })
        );
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some(r#"failed to process "${VAR?message here$ARG}": VAR: message herex"#)
        );
    }

    #[test]
    fn buildkit_env_var_test() {
        let lex = Lexer::new('\\');
        let env = from_assignments(&["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]);
        for (input, want) in ENV_VAR_TEST {
            let got = lex.process_word(input, &env).map(|e| e.result);
            match want {
                Some(want) => assert_eq!(got.as_deref(), Ok(*want), "{input}"),
                None => assert!(got.is_err(), "{input} gave {got:?}"),
            }
        }
    }

    enum WordsLine {
        Env(&'static str, &'static str),
        Words(&'static str, Option<&'static [&'static str]>),
    }

    #[test]
    fn buildkit_words_test() {
        let lex = Lexer::new('\\');
        let mut env = Vec::new();
        for line in WORDS_TEST {
            match line {
                WordsLine::Env(k, v) => env.push((k.to_string(), v.to_string())),
                WordsLine::Words(input, want) => {
                    let got = lex.process_words(input, &env);
                    match want {
                        Some(want) => assert_eq!(
                            got,
                            Ok(want.iter().map(|w| w.to_string()).collect()),
                            "{input}"
                        ),
                        None => assert!(got.is_err(), "{input} gave {got:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn env_lookup() {
        let get = |list: &[&str], key: &str| from_assignments(list).get(key);
        assert_eq!(get(&[], "foo"), None);
        assert_eq!(get(&["foo"], "foo"), Some(String::new()));
        assert_eq!(get(&["foo="], "foo"), Some(String::new()));
        assert_eq!(get(&["foo=bar"], "foo"), Some("bar".into()));
        assert_eq!(get(&["foo=bar", "car=hat"], "foo"), Some("bar".into()));
        assert_eq!(get(&["foo=bar", "car=hat"], "car"), Some("hat".into()));
        assert_eq!(
            get(&["foo=bar", "car=hat", "car=bike"], "car"),
            Some("bike".into())
        );
        assert_eq!(get(&["foo=bar"], "FOO"), None);

        let env = from_assignments(&["b=1", "a=2", "b=3", "c=4"]);
        assert_eq!(env.keys(), ["b", "a", "c"]);
        let slice: &[(String, String)] = &env;
        let dynamic: &dyn Env = &slice;
        assert_eq!(dynamic.get("b"), Some("3".into()));
        assert_eq!(dynamic.keys(), ["b", "a", "c"]);
        // Any of these can be handed to the lexer.
        let lex = Lexer::default();
        let via_dyn = lex.process_word("$b$a", dynamic).map(|e| e.result);
        let via_slice = lex.process_word("$b$a", slice).map(|e| e.result);
        let via_vec = lex.process_word("$b$a", &env).map(|e| e.result);
        assert_eq!(via_dyn, Ok("32".into()));
        assert_eq!(via_slice, via_dyn);
        assert_eq!(via_vec, via_dyn);
    }

    struct MatchCase {
        input: &'static str,
        env: &'static [(&'static str, &'static str)],
        #[allow(clippy::type_complexity)]
        expect: Result<
            (
                &'static str,
                &'static [&'static str],
                &'static [&'static str],
            ),
            (),
        >,
    }

    #[test]
    fn buildkit_process_with_matches() {
        let lex = Lexer::new('\\');
        for case in PROCESS_WITH_MATCHES {
            let got = lex.process_word(case.input, &pairs(case.env));
            match case.expect {
                Ok((result, matched, unmatched)) => {
                    let want = Expanded {
                        result: result.to_string(),
                        matched: set(matched),
                        unmatched: set(unmatched),
                    };
                    assert_eq!(got, Ok(want), "{}", case.input);
                }
                Err(()) => assert!(got.is_err(), "{} gave {got:?}", case.input),
            }
        }
    }

    #[test]
    fn buildkit_release_file_names() {
        let lex = Lexer::new('\\');
        let word = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let base = [
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm"),
        ];
        let mut env = pairs(&base);
        env.push(("TARGETVARIANT".into(), "v7".into()));
        let got = lex.process_word(word, &env).map(|e| e.result);
        assert_eq!(got.as_deref(), Ok("something-v1.2.3.linux-arm-v7.tar.gz"));

        let mut env = pairs(&base);
        env[2].1 = "arm64".into();
        let unset = lex.process_word(word, &env).map(|e| e.result);
        env.push(("TARGETVARIANT".into(), String::new()));
        let empty = lex.process_word(word, &env).map(|e| e.result);
        assert_eq!(unset.as_deref(), Ok("something-v1.2.3.linux-arm64.tar.gz"));
        assert_eq!(empty, unset);
    }

    struct Case {
        input: &'static str,
        env: &'static [(&'static str, &'static str)],
        flags: &'static str,
        #[allow(clippy::type_complexity)]
        word: Result<
            (
                &'static str,
                &'static [&'static str],
                &'static [&'static str],
            ),
            &'static str,
        >,
        words: Result<&'static [&'static str], &'static str>,
    }

    fn lexer_for(flags: &str) -> Lexer {
        Lexer {
            escape: if flags.contains('`') { '`' } else { '\\' },
            raw_quotes: flags.contains('Q'),
            raw_escapes: flags.contains('E'),
            skip_unset_env: flags.contains('U'),
            skip_process_quotes: flags.contains('S'),
        }
    }

    #[test]
    fn more_cases_as_buildkit_gives_them() {
        for case in MORE {
            let lex = lexer_for(case.flags);
            let env = pairs(case.env);
            let word = lex
                .process_word(case.input, &env)
                .map_err(|e| e.to_string());
            let want = case.word.map(|(result, matched, unmatched)| Expanded {
                result: result.to_string(),
                matched: set(matched),
                unmatched: set(unmatched),
            });
            assert_eq!(
                word,
                want.map_err(str::to_string),
                "{:?} [{}]",
                case.input,
                case.flags
            );
            let words = lex
                .process_words(case.input, &env)
                .map_err(|e| e.to_string());
            let want = case
                .words
                .map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(
                words,
                want.map_err(str::to_string),
                "{:?} [{}]",
                case.input,
                case.flags
            );
        }
    }

    #[test]
    fn errors_name_the_word_and_the_cause() {
        let lex = Lexer::default();
        let env: Vec<(String, String)> = Vec::new();
        let err = lex.process_word("a ${b", &env).err();
        assert_eq!(
            err,
            Some(ShellError::Process {
                word: "a ${b".into(),
                cause: Box::new(ShellError::UnsupportedModifier("\u{FFFD}".into())),
            })
        );
        let err = lex.process_words("${x/a", &env).err();
        assert!(matches!(
            err,
            Some(ShellError::Process { cause, .. }) if *cause == ShellError::MissingSlash
        ));
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\u{b}\u{7f}\u{85}\u{e000}\u{10ffff}\u{1f600}é"),
            r#""\a\b\f\v\x7f\u0085\ue000\U0010ffff😀é""#
        );
    }

    #[test]
    fn character_classes_follow_go() {
        // Category L and Nd only: not Rust's wider `is_alphabetic`/`is_numeric`.
        assert!(is_letter('é') && is_letter('한') && is_letter('ª'));
        assert!(!is_letter('Ⅰ') && !is_letter('\u{301}') && !is_letter('Ⓐ'));
        assert!(is_digit('٣') && is_digit('9') && !is_digit('²') && !is_digit('Ⅰ'));
        assert!(is_space('\u{a0}') && is_space('\u{85}') && !is_space('\u{200b}'));
    }

    #[test]
    fn long_values_and_patterns_stay_fast() {
        let lex = Lexer::default();
        let value = "ab".repeat(5000);
        let env = pairs(&[("V", value.as_str()), ("P", "*a*a*a*a*a*a*a*a*c")]);
        let got = lex
            .process_word("${V#$P}${V%%$P}${V/$P/x}", &env)
            .map(|e| e.result);
        assert_eq!(got.map(|r| r.len()), Ok(value.len() * 3));
        let got = lex.process_word("${V//?b/x}", &env).map(|e| e.result);
        assert_eq!(got, Ok("x".repeat(5000)));
    }

    /// BuildKit's `envVarTest` (Unix and all-platform lines): input and result, `None` for an error.
    /// Environment: PWD=/home, SHELL=bash, KOREAN=한국어, NULL= (empty).
    const ENV_VAR_TEST: &[(&str, Option<&str>)] = &[
        ("hello", Some("hello")),
        ("he'll'o", Some("hello")),
        ("he'llo", None),
        (r#"he\'llo"#, Some("he'llo")),
        (r#"he\\'llo"#, None),
        (r#"abc\tdef"#, Some("abctdef")),
        (r#""abc\tdef""#, Some(r#"abc\tdef"#)),
        (r#""abc\\tdef""#, Some(r#"abc\tdef"#)),
        (r#"'abc\tdef'"#, Some(r#"abc\tdef"#)),
        (r#"hello\"#, Some("hello")),
        (r#"hello\\"#, Some(r#"hello\"#)),
        (r#""hello"#, None),
        (r#""hello\""#, None),
        (r#""hel'lo""#, Some("hel'lo")),
        ("'hello", None),
        (r#"'hello\'"#, Some(r#"hello\"#)),
        (r#"'hello\there'"#, Some(r#"hello\there"#)),
        (r#"'hello\\there'"#, Some(r#"hello\\there"#)),
        (r#""''""#, Some("''")),
        ("$.", Some("$.")),
        ("he$1x", Some("hex")),
        ("he$.x", Some("he$.x")),
        ("he$pwd.", Some("he.")),
        // Windows only (case-insensitive names): he$pwd. -> he/home.
        ("he$PWD", Some("he/home")),
        (r#"he\$PWD"#, Some("he$PWD")),
        (r#"he\\$PWD"#, Some(r#"he\/home"#)),
        (r#""he\$PWD""#, Some("he$PWD")),
        (r#""he\\$PWD""#, Some(r#"he\/home"#)),
        (r#"\${}"#, Some("${}")),
        (r#"\${}aaa"#, Some("${}aaa")),
        (r#"he\${}"#, Some("he${}")),
        (r#"he\${}xx"#, Some("he${}xx")),
        ("${}", None),
        ("${}aaa", None),
        ("he${}", None),
        ("he${}xx", None),
        ("he${hi}", Some("he")),
        ("he${hi}xx", Some("hexx")),
        ("he${PWD}", Some("he/home")),
        ("he${.}", None),
        ("he${XXX:-000}xx", Some("he000xx")),
        ("he${PWD:-000}xx", Some("he/homexx")),
        ("he${XXX:-$PWD}xx", Some("he/homexx")),
        ("he${XXX:-${PWD:-yyy}}xx", Some("he/homexx")),
        ("he${XXX:-${YYY:-yyy}}xx", Some("heyyyxx")),
        ("he${XXX:YYY}", None),
        ("he${XXX?}", None),
        ("he${XXX:?}", None),
        ("he${PWD?}", Some("he/home")),
        ("he${PWD:?}", Some("he/home")),
        ("he${NULL?}", Some("he")),
        ("he${NULL:?}", None),
        ("he${XXX:+${PWD}}xx", Some("hexx")),
        ("he${PWD:+${XXX}}xx", Some("hexx")),
        ("he${PWD:+${SHELL}}xx", Some("hebashxx")),
        ("he${XXX:+000}xx", Some("hexx")),
        ("he${PWD:+000}xx", Some("he000xx")),
        ("'he${XX}'", Some("he${XX}")),
        (r#""he${PWD}""#, Some("he/home")),
        (r#""he'$PWD'""#, Some("he'/home'")),
        (r#""$PWD""#, Some("/home")),
        ("'$PWD'", Some("$PWD")),
        (r#"'\$PWD'"#, Some(r#"\$PWD"#)),
        (r#"'"hello"'"#, Some(r#""hello""#)),
        (r#"he\$PWD"#, Some("he$PWD")),
        (r#""he\$PWD""#, Some("he$PWD")),
        (r#"'he\$PWD'"#, Some(r#"he\$PWD"#)),
        ("he${PWD", None),
        ("he${PWD:=000}xx", None),
        ("he${PWD:+${PWD}:}xx", Some("he/home:xx")),
        (r#"he${XXX:-\$PWD:}xx"#, Some("he$PWD:xx")),
        (r#"he${XXX:-\${PWD}z}xx"#, Some("he${PWDz}xx")),
        ("안녕하세요", Some("안녕하세요")),
        ("안'녕'하세요", Some("안녕하세요")),
        ("안'녕하세요", None),
        (r#"안녕\'하세요"#, Some("안녕'하세요")),
        (r#"안\\'녕하세요"#, None),
        (r#"안녕\t하세요"#, Some("안녕t하세요")),
        (r#""안녕\t하세요""#, Some(r#"안녕\t하세요"#)),
        (r#"'안녕\t하세요"#, None),
        (r#"안녕하세요\"#, Some("안녕하세요")),
        (r#"안녕하세요\\"#, Some(r#"안녕하세요\"#)),
        (r#""안녕하세요"#, None),
        (r#""안녕하세요\""#, None),
        (r#""안녕'하세요""#, Some("안녕'하세요")),
        ("'안녕하세요", None),
        (r#"'안녕하세요\'"#, Some(r#"안녕하세요\"#)),
        ("안녕$1x", Some("안녕x")),
        ("안녕$.x", Some("안녕$.x")),
        ("안녕$pwd.", Some("안녕.")),
        // Windows only (case-insensitive names): 안녕$pwd. -> 안녕/home.
        ("안녕$PWD", Some("안녕/home")),
        (r#"안녕\$PWD"#, Some("안녕$PWD")),
        (r#"안녕\\$PWD"#, Some(r#"안녕\/home"#)),
        (r#"안녕\${}"#, Some("안녕${}")),
        (r#"안녕\${}xx"#, Some("안녕${}xx")),
        ("안녕${}", None),
        ("안녕${}xx", None),
        ("안녕${hi}", Some("안녕")),
        ("안녕${hi}xx", Some("안녕xx")),
        ("안녕${PWD}", Some("안녕/home")),
        ("안녕${.}", None),
        ("안녕${XXX:-000}xx", Some("안녕000xx")),
        ("안녕${PWD:-000}xx", Some("안녕/homexx")),
        ("안녕${XXX:-$PWD}xx", Some("안녕/homexx")),
        ("안녕${XXX:-${PWD:-yyy}}xx", Some("안녕/homexx")),
        ("안녕${XXX:-${YYY:-yyy}}xx", Some("안녕yyyxx")),
        ("안녕${XXX:YYY}", None),
        ("안녕${XXX:+${PWD}}xx", Some("안녕xx")),
        ("안녕${PWD:+${XXX}}xx", Some("안녕xx")),
        ("안녕${PWD:+${SHELL}}xx", Some("안녕bashxx")),
        ("안녕${XXX:+000}xx", Some("안녕xx")),
        ("안녕${PWD:+000}xx", Some("안녕000xx")),
        ("'안녕${XX}'", Some("안녕${XX}")),
        (r#""안녕${PWD}""#, Some("안녕/home")),
        (r#""안녕'$PWD'""#, Some("안녕'/home'")),
        (r#"'"안녕"'"#, Some(r#""안녕""#)),
        (r#"안녕\$PWD"#, Some("안녕$PWD")),
        (r#""안녕\$PWD""#, Some("안녕$PWD")),
        (r#"'안녕\$PWD'"#, Some(r#"안녕\$PWD"#)),
        ("안녕${PWD", None),
        ("안녕${PWD:=000}xx", None),
        ("안녕${PWD:+${PWD}:}xx", Some("안녕/home:xx")),
        (r#"안녕${XXX:-\$PWD:}xx"#, Some("안녕$PWD:xx")),
        (r#"안녕${XXX:-\${PWD}z}xx"#, Some("안녕${PWDz}xx")),
        ("$KOREAN", Some("한국어")),
        ("안녕$KOREAN", Some("안녕한국어")),
        ("${{aaa}", None),
        ("${aaa}}", Some("}")),
        ("${aaa", None),
        ("${{aaa:-bbb}", None),
        ("${aaa:-bbb}}", Some("bbb}")),
        ("${aaa:-bbb", None),
        ("${aaa:-bbb}", Some("bbb")),
        ("${aaa:-${bbb:-ccc}}", Some("ccc")),
        ("${aaa:-bbb ${foo}", None),
        ("${aaa:-bbb {foo}", Some("bbb {foo")),
        ("${:}", None),
        ("${:-bbb}", None),
        ("${:+bbb}", None),
        // Positional parameters: a Dockerfile never sets them.
        ("$1", Some("")),
        ("${1}", Some("")),
        ("${1:+bbb}", Some("")),
        ("${1:-bbb}", Some("bbb")),
        ("$2", Some("")),
        ("${2}", Some("")),
        ("${2:+bbb}", Some("")),
        ("${2:-bbb}", Some("bbb")),
        ("$3", Some("")),
        ("${3}", Some("")),
        ("${3:+bbb}", Some("")),
        ("${3:-bbb}", Some("bbb")),
        ("$4", Some("")),
        ("${4}", Some("")),
        ("${4:+bbb}", Some("")),
        ("${4:-bbb}", Some("bbb")),
        ("$5", Some("")),
        ("${5}", Some("")),
        ("${5:+bbb}", Some("")),
        ("${5:-bbb}", Some("bbb")),
        ("$6", Some("")),
        ("${6}", Some("")),
        ("${6:+bbb}", Some("")),
        ("${6:-bbb}", Some("bbb")),
        ("$7", Some("")),
        ("${7}", Some("")),
        ("${7:+bbb}", Some("")),
        ("${7:-bbb}", Some("bbb")),
        ("$8", Some("")),
        ("${8}", Some("")),
        ("${8:+bbb}", Some("")),
        ("${8:-bbb}", Some("bbb")),
        ("$9", Some("")),
        ("${9}", Some("")),
        ("${9:+bbb}", Some("")),
        ("${9:-bbb}", Some("bbb")),
        ("$999", Some("")),
        ("${999}", Some("")),
        ("${999:+bbb}", Some("")),
        ("${999:-bbb}", Some("bbb")),
        ("$999aaa", Some("aaa")),
        ("${999}aaa", Some("aaa")),
        ("${999:+bbb}aaa", Some("aaa")),
        ("${999:-bbb}aaa", Some("bbbaaa")),
        ("$001", Some("")),
        ("${001}", Some("")),
        ("${001:+bbb}", Some("")),
        ("${001:-bbb}", Some("bbb")),
        ("$001aaa", Some("aaa")),
        ("${001}aaa", Some("aaa")),
        ("${001:+bbb}aaa", Some("aaa")),
        ("${001:-bbb}aaa", Some("bbbaaa")),
        // Special parameters: a Dockerfile never sets them either.
        ("$@", Some("")),
        ("${@}", Some("")),
        ("${@:+bbb}", Some("")),
        ("${@:-bbb}", Some("bbb")),
        ("$@@@", Some("@@")),
        ("$@aaa", Some("aaa")),
        ("${@}aaa", Some("aaa")),
        ("${@:+bbb}aaa", Some("aaa")),
        ("${@:-bbb}aaa", Some("bbbaaa")),
        ("$*", Some("")),
        ("${*}", Some("")),
        ("${*:+bbb}", Some("")),
        ("${*:-bbb}", Some("bbb")),
        ("$#", Some("")),
        ("${#}", Some("")),
        ("${#:+bbb}", Some("")),
        ("${#:-bbb}", Some("bbb")),
        ("$?", Some("")),
        ("${?}", Some("")),
        ("${?:+bbb}", Some("")),
        ("${?:-bbb}", Some("bbb")),
        ("$-", Some("")),
        ("${-}", Some("")),
        ("${-:+bbb}", Some("")),
        ("${-:-bbb}", Some("bbb")),
        ("$$", Some("")),
        ("${$}", Some("")),
        ("${$:+bbb}", Some("")),
        ("${$:-bbb}", Some("bbb")),
        ("$!", Some("")),
        ("${!}", Some("")),
        ("${!:+bbb}", Some("")),
        ("${!:-bbb}", Some("bbb")),
        ("$0", Some("")),
        ("${0}", Some("")),
        ("${0:+bbb}", Some("")),
        ("${0:-bbb}", Some("bbb")),
    ];

    /// BuildKit's `wordsTest`: `Env` lines add to the environment of the lines after them;
    /// `Words` lines give the input and the words, `None` for an error.
    const WORDS_TEST: &[WordsLine] = &[
        WordsLine::Words("hello", Some(&["hello"])),
        WordsLine::Words("hello${hi}bye", Some(&["hellobye"])),
        WordsLine::Env("hi", "hi"),
        WordsLine::Words("hello${hi}bye", Some(&["hellohibye"])),
        WordsLine::Env("space", "abc  def"),
        WordsLine::Words("hello${space}bye", Some(&["helloabc", "defbye"])),
        WordsLine::Words(r#"hello"${space}"bye"#, Some(&["helloabc  defbye"])),
        WordsLine::Words(r#"hello "${space}"bye"#, Some(&["hello", "abc  defbye"])),
        WordsLine::Env("leading", "  ab c"),
        WordsLine::Words("hello${leading}def", Some(&["hello", "ab", "cdef"])),
        WordsLine::Words(r#"hello"${leading}" def"#, Some(&["hello  ab c", "def"])),
        WordsLine::Words(r#"hello"${leading}""#, Some(&["hello  ab c"])),
        WordsLine::Words("hello${leading}", Some(&["hello", "ab", "c"])),
        WordsLine::Env("trailing", "ab c   "),
        WordsLine::Words("hello${trailing}", Some(&["helloab", "c"])),
        WordsLine::Words("hello${trailing}d", Some(&["helloab", "c", "d"])),
        WordsLine::Words(r#"hello"${trailing}"d"#, Some(&["helloab c   d"])),
        WordsLine::Words(r#"hel"lo${trailing}""#, Some(&["helloab c   "])),
        WordsLine::Words(r#"hello" there  ""#, Some(&["hello there  "])),
        WordsLine::Words("hello there", Some(&["hello", "there"])),
        WordsLine::Words(r#"hello\ there"#, Some(&["hello there"])),
        WordsLine::Words(r#"hello" there"#, None),
        WordsLine::Words(r#"hello\" there"#, Some(&[r#"hello""#, "there"])),
        WordsLine::Words(r#"hello"\\there""#, Some(&[r#"hello\there"#])),
        WordsLine::Words(r#"hello"\there""#, Some(&[r#"hello\there"#])),
        WordsLine::Words(r#"hello'\\there'"#, Some(&[r#"hello\\there"#])),
        WordsLine::Words(r#"hello'\there'"#, Some(&[r#"hello\there"#])),
        WordsLine::Words("hello'$there'", Some(&["hello$there"])),
    ];

    /// BuildKit's `TestProcessWithMatches` table: input, environment, then the result with the
    /// names matched and unmatched, or `Err(())` where BuildKit only expects an error.
    const PROCESS_WITH_MATCHES: &[MatchCase] = &[
        MatchCase {
            input: "x",
            env: &[("DUMMY", "dummy")],
            expect: Ok(("x", &[], &[])),
        },
        MatchCase {
            input: "x ${UNUSED}",
            env: &[("DUMMY", "dummy")],
            expect: Ok(("x ", &[], &["UNUSED"])),
        },
        MatchCase {
            input: "x ${FOO}",
            env: &[("FOO", "y")],
            expect: Ok(("x y", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("xxx  ccc", &["BAR", "FOO"], &["BAZ"])),
        },
        MatchCase {
            input: "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("xxx bbb ccc", &["BAR", "FOO"], &["BAZ"])),
        },
        MatchCase {
            input: "${FOO:-}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("xxx", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO:-}",
            env: &[],
            expect: Ok(("", &[], &["FOO"])),
        },
        MatchCase {
            input: "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("aaa bbb ", &["BAR", "FOO"], &["BAZ"])),
        },
        MatchCase {
            input: "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("aaa  ", &["BAR", "FOO"], &["BAZ"])),
        },
        MatchCase {
            input: "${FOO?aaa}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("xxx", &["FOO"], &[])),
        },
        MatchCase {
            input: "${BAR?bbb}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("", &["BAR"], &[])),
        },
        MatchCase {
            input: "${BAZ?ccc}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO:?aaa}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Ok(("xxx", &["FOO"], &[])),
        },
        MatchCase {
            input: "${BAR:?bbb}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Err(()),
        },
        MatchCase {
            input: "${BAZ:?ccc}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Err(()),
        },
        MatchCase {
            input: "${BAZ:?}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO=aaa}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO=:aaa}",
            env: &[("BAR", ""), ("FOO", "xxx")],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO=}",
            env: &[],
            expect: Err(()),
        },
        MatchCase {
            input: r#"${FOO#()[]{\}^$.\*\?|\\}"#,
            env: &[("FOO", r#"()[]{}^$.*?|\x"#)],
            expect: Ok(("x", &["FOO"], &[])),
        },
        MatchCase {
            input: r#"${FOO%%\**}"#,
            env: &[("FOO", "xx**")],
            expect: Ok(("xx", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO#*x*y}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("y", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO#*}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("xxyy", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO#$BAR}",
            env: &[("BAR", "x"), ("FOO", "xxyy")],
            expect: Ok(("xyy", &["BAR", "FOO"], &[])),
        },
        MatchCase {
            input: "${FOO#$BAR}",
            env: &[("BAR", ""), ("FOO", "xxyy")],
            expect: Ok(("xxyy", &["BAR", "FOO"], &[])),
        },
        MatchCase {
            input: "${FOO#}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("xxyy", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO##*x}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("yy", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO##}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("xxyy", &["FOO"], &[])),
        },
        MatchCase {
            input: r#"${FOO#?\?}"#,
            env: &[("FOO", "???y")],
            expect: Ok(("?y", &["FOO"], &[])),
        },
        MatchCase {
            input: "${ABC:-.}${FOO%x}${ABC:-.}",
            env: &[("FOO", "xxyy")],
            expect: Ok((".xxyy.", &["FOO"], &["ABC"])),
        },
        MatchCase {
            input: r#"${FOO%%\**\*}"#,
            env: &[("FOO", "a***yy*")],
            expect: Ok(("a", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO%}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("xxyy", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO%%$BAR}",
            env: &[("BAR", ""), ("FOO", "xxyy")],
            expect: Ok(("xxyy", &["BAR", "FOO"], &[])),
        },
        MatchCase {
            input: "${FOO:#}",
            env: &[],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO:##}",
            env: &[],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO:%}",
            env: &[],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO:%%}",
            env: &[],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            env: &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", r#"\*/"#)],
            expect: Ok(("/foo.*/*.txt - /foo..*.txt", &["FOO", "NEEDLE"], &[])),
        },
        MatchCase {
            input: "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
            env: &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
            expect: Ok(("/tmp/bar.txt - /bar.txt", &["FOO", "NEEDLE"], &[])),
        },
        MatchCase {
            input: "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
            env: &[
                ("FOO", "/a/foo/b/c.txt"),
                ("NEEDLE", "/?/"),
                ("REPLACEMENT", "/"),
            ],
            expect: Ok((
                "/foo/b/c.txt - /foo/c.txt",
                &["FOO", "NEEDLE", "REPLACEMENT"],
                &[],
            )),
        },
        MatchCase {
            input: "${FOO/$NEEDLE/$REPLACEMENT}",
            env: &[
                ("FOO", "http://google.de"),
                ("NEEDLE", "http://"),
                ("REPLACEMENT", "https://"),
            ],
            expect: Ok(("https://google.de", &["FOO", "NEEDLE", "REPLACEMENT"], &[])),
        },
        MatchCase {
            input: r#"${FOO//\//\/}"#,
            env: &[("FOO", "/tmp/foo.txt")],
            expect: Ok((r#"\/tmp\/foo.txt"#, &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO/$BAR/ww}",
            env: &[("BAR", ""), ("FOO", "xxyy")],
            expect: Ok(("wwxxyy", &["BAR", "FOO"], &[])),
        },
        MatchCase {
            input: "${FOO//ww}",
            env: &[("FOO", "xxyy")],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO//}",
            env: &[("FOO", "xxyy")],
            expect: Err(()),
        },
        MatchCase {
            input: "${FOO///}",
            env: &[("FOO", "xxyy")],
            expect: Ok(("xxyy", &["FOO"], &[])),
        },
        MatchCase {
            input: "${FOO///}",
            env: &[],
            expect: Ok(("", &[], &["FOO"])),
        },
    ];

    /// More cases, with the results BuildKit v0.32.2's lexer gives for them (errors: the message).
    /// Flags: `` ` `` escape character, `Q` raw_quotes, `E` raw_escapes, `U` skip_unset_env,
    /// `S` skip_process_quotes.
    const MORE: &[Case] = &[
        // Backtick escape.
        Case {
            input: "he`$PWD",
            env: &[("PWD", "/home")],
            flags: "`",
            word: Ok(("he$PWD", &[], &[])),
            words: Ok(&["he$PWD"]),
        },
        Case {
            input: r#"`t`\n\"#,
            env: &[],
            flags: "`",
            word: Ok((r#"t\n\"#, &[], &[])),
            words: Ok(&[r#"t\n\"#]),
        },
        Case {
            input: r#""a`"b`$c``d`e""#,
            env: &[],
            flags: "`",
            word: Ok((r#"a"b$c`d`e"#, &[], &[])),
            words: Ok(&[r#"a"b$c`d`e"#]),
        },
        Case {
            input: r#"C:\Users\app`$X"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "`",
            word: Ok((r#"C:\Users\app$X"#, &[], &[])),
            words: Ok(&[r#"C:\Users\app$X"#]),
        },
        Case {
            input: "${U:-a`}b}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "`",
            word: Ok(("a}b", &[], &["U"])),
            words: Ok(&["a}b"]),
        },
        Case {
            input: "${X#`*}",
            env: &[("X", "*x")],
            flags: "`",
            word: Ok(("*x", &["X"], &[])),
            words: Ok(&["*x"]),
        },
        Case {
            input: r#"${X#\*}"#,
            env: &[("X", "*x")],
            flags: "`",
            word: Ok(("x", &["X"], &[])),
            words: Ok(&["x"]),
        },
        // Escaped blanks stay in the word.
        Case {
            input: r#"a\ b"#,
            env: &[],
            flags: "",
            word: Ok(("a b", &[], &[])),
            words: Ok(&["a b"]),
        },
        // Raw quotes.
        Case {
            input: r#"'a b' "c $X" d\ e"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "Q",
            word: Ok((r#"'a b' "c x" d e"#, &["X"], &[])),
            words: Ok(&["'a b'", r#""c x""#, "d e"]),
        },
        // Raw escapes.
        Case {
            input: r#"'a b' "c $X" d\ e"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "E",
            word: Ok((r#"a b c x d\ e"#, &["X"], &[])),
            words: Ok(&["a b", "c x", r#"d\ e"#]),
        },
        Case {
            input: r#"a\ b "c\$X\d" \$X \"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "E",
            word: Ok((r#"a\ b c\$X\\d \$X \"#, &[], &[])),
            words: Ok(&[r#"a\ b"#, r#"c\$X\\d"#, r#"\$X"#, r#"\"#]),
        },
        // Modifier words never keep escapes.
        Case {
            input: r#"${U:-\$X}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "E",
            word: Ok(("$X", &[], &["U"])),
            words: Ok(&["$X"]),
        },
        Case {
            input: r#"${X:+\$X}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "QE",
            word: Ok(("$X", &["X"], &[])),
            words: Ok(&["$X"]),
        },
        Case {
            input: r#"${P#\/}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "E",
            word: Ok(("home", &["P"], &[])),
            words: Ok(&["home"]),
        },
        Case {
            input: r#"'a b' "c $X" d\ e"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "QEU",
            word: Ok((r#"'a b' "c x" d\ e"#, &["X"], &[])),
            words: Ok(&["'a b'", r#""c x""#, r#"d\ e"#]),
        },
        // Unset variables left as written.
        Case {
            input: "$U ${U} ${U:-x} ${U-x} ${U:+x} ${U+x} ${U?x} ${U:?x} ${U#x} ${U%x} ${U/a/b} ${U//a/b} ${U:=x} $X ${X:-y}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "U",
            word: Ok((
                "$U ${U} ${U:-x} ${U-x} ${U:+x} ${U+x} ${U?x} ${U:?x} ${U#x} ${U%x} ${U/a/b} ${U/a/b} ${U:=x} x x",
                &["X"],
                &["U"],
            )),
            words: Ok(&[
                "$U", "${U}", "${U:-x}", "${U-x}", "${U:+x}", "${U+x}", "${U?x}", "${U:?x}",
                "${U#x}", "${U%x}", "${U/a/b}", "${U/a/b}", "${U:=x}", "x", "x",
            ]),
        },
        Case {
            input: r#"$U$X'$U'"$U""#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "U",
            word: Ok(("$Ux$U$U", &["X"], &["U"])),
            words: Ok(&["$Ux$U$U"]),
        },
        Case {
            input: "${U=x}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "U",
            word: Err(r#"failed to process "${U=x}": unsupported modifier (=) in substitution"#),
            words: Err(r#"failed to process "${U=x}": unsupported modifier (=) in substitution"#),
        },
        // Quotes as plain characters.
        Case {
            input: r#"'a b' "c d" e"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "S",
            word: Ok((r#"'a b' "c d" e"#, &[], &[])),
            words: Ok(&["'a", "b'", r#""c"#, r#"d""#, "e"]),
        },
        Case {
            input: "a'$X'b",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "S",
            word: Ok(("a'x'b", &["X"], &[])),
            words: Ok(&["a'x'b"]),
        },
        Case {
            input: r#""unterminated"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "S",
            word: Ok((r#""unterminated"#, &[], &[])),
            words: Ok(&[r#""unterminated"#]),
        },
        // Here-document markers.
        Case {
            input: "cat <<EOF",
            env: &[],
            flags: "",
            word: Ok(("cat <<EOF", &[], &[])),
            words: Ok(&["cat", "<<EOF"]),
        },
        Case {
            input: "cat << EOF > out",
            env: &[],
            flags: "",
            word: Ok(("cat << EOF > out", &[], &[])),
            words: Ok(&["cat", "<< EOF", ">", "out"]),
        },
        Case {
            input: "cat <<-\t'EOF' a<b <",
            env: &[],
            flags: "",
            word: Ok(("cat <<-\tEOF a<b <", &[], &[])),
            words: Ok(&["cat", "<<-", "EOF", "a<b", "<"]),
        },
        Case {
            input: "<<EOF",
            env: &[],
            flags: "Q",
            word: Ok(("<<EOF", &[], &[])),
            words: Ok(&["<<EOF"]),
        },
        // A modified expansion drops the word collected before it.
        Case {
            input: "abc${X:-def}ghi",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("abcxghi", &["X"], &[])),
            words: Ok(&["xghi"]),
        },
        Case {
            input: "a b${X:+c}d ${U-e}f",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("a bcd ef", &["X"], &["U"])),
            words: Ok(&["a", "cd", "ef"]),
        },
        Case {
            input: "abc${X}def",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("abcxdef", &["X"], &[])),
            words: Ok(&["abcxdef"]),
        },
        Case {
            input: r#"ab"${U:-c d}"e"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("abc de", &[], &["U"])),
            words: Ok(&["c de"]),
        },
        Case {
            input: "${X:-a b}c",
            env: &[("X", "")],
            flags: "",
            word: Ok(("a bc", &["X"], &[])),
            words: Ok(&["a", "bc"]),
        },
        // Positional and special parameters.
        Case {
            input: "$1 $@ $* $# $? $- $$ $! $0 $ ${@}",
            env: &[],
            flags: "",
            word: Ok((
                "         $ ",
                &[],
                &["!", "#", "$", "*", "-", "0", "1", "?", "@"],
            )),
            words: Ok(&["$"]),
        },
        Case {
            input: "$1 $@ $* $# $? $- $$ $! $0 $01",
            env: &[
                ("@", "at"),
                ("1", "one"),
                ("*", "star"),
                ("0", "zero"),
                ("01", "z1"),
                ("$", "pid"),
            ],
            flags: "",
            word: Ok((
                "one at star    pid  zero z1",
                &["$", "*", "0", "01", "1", "@"],
                &["!", "#", "-", "?"],
            )),
            words: Ok(&["one", "at", "star", "pid", "zero", "z1"]),
        },
        Case {
            input: "$@@@ ${#:-n} ${10}x $12ab",
            env: &[],
            flags: "",
            word: Ok(("@@ n x ab", &[], &["#", "10", "12", "@"])),
            words: Ok(&["@@", "n", "x", "ab"]),
        },
        // Unicode letters and digits in names.
        Case {
            input: "$한국어 ${é}x $a١٢ $١x $Ⅰ",
            env: &[
                ("한국어", "ko"),
                ("é", "e"),
                ("a١٢", "arabic digits"),
                ("١", "one"),
                ("Ⅰ", "roman"),
            ],
            flags: "",
            word: Ok((
                "ko ex arabic digits onex $Ⅰ",
                &["a١٢", "é", "١", "한국어"],
                &[],
            )),
            words: Ok(&["ko", "ex", "arabic", "digits", "onex", "$Ⅰ"]),
        },
        // The replacement of // expands $0.
        Case {
            input: "${F//?/<'$0'>}",
            env: &[("F", "ab")],
            flags: "",
            word: Ok(("<a><b>", &["F"], &[])),
            words: Ok(&["<a><b>"]),
        },
        Case {
            input: "${F//a/'$$ $1 ${0} ${0 $ $x ${x}'}",
            env: &[("F", "bab")],
            flags: "",
            word: Ok(("b$  a ${0 $  b", &["F"], &[])),
            words: Ok(&["b$", "a", "${0", "$", "b"]),
        },
        Case {
            input: "${F/a/'$0'}",
            env: &[("F", "bab")],
            flags: "",
            word: Ok(("b$0b", &["F"], &[])),
            words: Ok(&["b$0b"]),
        },
        // Empty patterns.
        Case {
            input: "${F///-}",
            env: &[("F", "ab")],
            flags: "",
            word: Ok(("-a-b-", &["F"], &[])),
            words: Ok(&["-a-b-"]),
        },
        Case {
            input: "${F//*/-}",
            env: &[("F", "ab")],
            flags: "",
            word: Ok(("-", &["F"], &[])),
            words: Ok(&["-"]),
        },
        Case {
            input: "${U//*/z} ${U/*/z} ${U/a/z}",
            env: &[],
            flags: "",
            word: Ok(("z z ", &[], &["U"])),
            words: Ok(&["z", "z"]),
        },
        // Wildcards do not match newlines.
        Case {
            input: "${F#*} ${F##*} ${F%*} ${F%%*} ${F#?} ${F%?}",
            env: &[("F", "a\nb")],
            flags: "",
            word: Ok(("a\nb \nb a\nb a\n \nb a\n", &["F"], &[])),
            words: Ok(&["a", "b", "b", "a", "b", "a", "b", "a"]),
        },
        Case {
            input: "${F//?/.} ${F/*/.}",
            env: &[("F", "a\nbc\n")],
            flags: "",
            word: Ok((".\n..\n .\nbc\n", &["F"], &[])),
            words: Ok(&[".", "..", ".", "bc"]),
        },
        Case {
            input: "${F#a*b} ${F##a*b} ${F%b*c} ${F%%b*c}",
            env: &[("F", "abcabc")],
            flags: "",
            word: Ok(("cabc c abca a", &["F"], &[])),
            words: Ok(&["cabc", "c", "abca", "a"]),
        },
        Case {
            input: "${F#*/} ${F##*/} ${F%/*} ${F%%/*}",
            env: &[("F", "/usr/local/bin")],
            flags: "",
            word: Ok(("usr/local/bin bin /usr/local ", &["F"], &[])),
            words: Ok(&["usr/local/bin", "bin", "/usr/local"]),
        },
        Case {
            input: "${F/?/x}",
            env: &[("F", "한국")],
            flags: "",
            word: Ok(("x국", &["F"], &[])),
            words: Ok(&["x국"]),
        },
        Case {
            input: "${F%%한*}",
            env: &[("F", "a한b한c")],
            flags: "",
            word: Ok(("a", &["F"], &[])),
            words: Ok(&["a"]),
        },
        // Escapes in patterns from variables.
        Case {
            input: "${F#$P} ${F/$P/<$R>} ${F//$P/<$R>}",
            env: &[("F", r#"a*b?c\d"#), ("P", r#"\*b\?c\\"#), ("R", "[$0]")],
            flags: "",
            word: Ok((r#"a*b?c\d a<[$0]>d a<[*b?c\]>d"#, &["F", "P", "R"], &[])),
            words: Ok(&[r#"a*b?c\d"#, "a<[$0]>d", r#"a<[*b?c\]>d"#]),
        },
        Case {
            input: r#"${F//\//\/} ${F/\}/x}"#,
            env: &[("F", "/a}/")],
            flags: "",
            word: Ok((r#"\/a}\/ /ax/"#, &["F"], &[])),
            words: Ok(&[r#"\/a}\/"#, "/ax/"]),
        },
        // A byte order mark at the start is dropped.
        Case {
            input: "\u{feff}$X",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("x", &["X"], &[])),
            words: Ok(&["x"]),
        },
        Case {
            input: "${F#\u{feff}a}",
            env: &[("F", "ab")],
            flags: "",
            word: Ok(("b", &["F"], &[])),
            words: Ok(&["b"]),
        },
        Case {
            input: "x\u{feff}$X",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("x\u{feff}x", &["X"], &[])),
            words: Ok(&["x\u{feff}x"]),
        },
        Case {
            input: "'abc",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "'abc": unexpected end of statement while looking for matching single-quote"#,
            ),
            words: Err(
                r#"failed to process "'abc": unexpected end of statement while looking for matching single-quote"#,
            ),
        },
        Case {
            input: r#""abc"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "\"abc": unexpected end of statement while looking for matching double-quote"#,
            ),
            words: Err(
                r#"failed to process "\"abc": unexpected end of statement while looking for matching double-quote"#,
            ),
        },
        Case {
            input: r#""abc\"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "\"abc\\": unexpected end of statement while looking for matching double-quote"#,
            ),
            words: Err(
                r#"failed to process "\"abc\\": unexpected end of statement while looking for matching double-quote"#,
            ),
        },
        Case {
            input: "${",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${": syntax error: missing '}'"#),
        },
        Case {
            input: "${}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${}": syntax error: bad substitution"#),
            words: Err(r#"failed to process "${}": syntax error: bad substitution"#),
        },
        Case {
            input: "${:}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${:}": syntax error: bad substitution"#),
            words: Err(r#"failed to process "${:}": syntax error: bad substitution"#),
        },
        Case {
            input: "${{X}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${{X}": syntax error: bad substitution"#),
            words: Err(r#"failed to process "${{X}": syntax error: bad substitution"#),
        },
        Case {
            input: "${X",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X": unsupported modifier (�) in substitution"#),
            words: Err(r#"failed to process "${X": unsupported modifier (�) in substitution"#),
        },
        Case {
            input: "${X:",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X:": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X:": syntax error: missing '}'"#),
        },
        Case {
            input: "${X:-a",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X:-a": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X:-a": syntax error: missing '}'"#),
        },
        Case {
            input: "${X/a",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X/a": syntax error: missing '/' in ${}"#),
            words: Err(r#"failed to process "${X/a": syntax error: missing '/' in ${}"#),
        },
        Case {
            input: "${X//a",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X//a": syntax error: missing '/' in ${}"#),
            words: Err(r#"failed to process "${X//a": syntax error: missing '/' in ${}"#),
        },
        Case {
            input: "${X/a/b",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X/a/b": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X/a/b": syntax error: missing '}'"#),
        },
        Case {
            input: "${X//}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X//}": syntax error: missing '/' in ${}"#),
            words: Err(r#"failed to process "${X//}": syntax error: missing '/' in ${}"#),
        },
        Case {
            input: r#"${X#\x}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "${X#\\x}": invalid pattern (\x) in substitution: invalid escape '\x'"#,
            ),
            words: Err(
                r#"failed to process "${X#\\x}": invalid pattern (\x) in substitution: invalid escape '\x'"#,
            ),
        },
        Case {
            input: r#"${X%a\x}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "${X%a\\x}": invalid pattern (\xa) in substitution: invalid escape '\x'"#,
            ),
            words: Err(
                r#"failed to process "${X%a\\x}": invalid pattern (\xa) in substitution: invalid escape '\x'"#,
            ),
        },
        Case {
            input: r#"${X%\}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X%\\}": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X%\\}": syntax error: missing '}'"#),
        },
        Case {
            input: "${X:#a}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X:#a}": unsupported modifier (:#) in substitution"#),
            words: Err(r#"failed to process "${X:#a}": unsupported modifier (:#) in substitution"#),
        },
        Case {
            input: "${X:%a}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X:%a}": unsupported modifier (:%) in substitution"#),
            words: Err(r#"failed to process "${X:%a}": unsupported modifier (:%) in substitution"#),
        },
        Case {
            input: "${X=a}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X=a}": unsupported modifier (=) in substitution"#),
            words: Err(r#"failed to process "${X=a}": unsupported modifier (=) in substitution"#),
        },
        Case {
            input: "${X:=a}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X:=a}": unsupported modifier (:=) in substitution"#),
            words: Err(r#"failed to process "${X:=a}": unsupported modifier (:=) in substitution"#),
        },
        Case {
            input: "${X:}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X:}": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X:}": syntax error: missing '}'"#),
        },
        Case {
            input: "${X.}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X.}": unsupported modifier (.) in substitution"#),
            words: Err(r#"failed to process "${X.}": unsupported modifier (.) in substitution"#),
        },
        Case {
            input: "${U?}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U?}": U: is not allowed to be unset"#),
            words: Err(r#"failed to process "${U?}": U: is not allowed to be unset"#),
        },
        Case {
            input: "${U:?}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U:?}": U: is not allowed to be unset"#),
            words: Err(r#"failed to process "${U:?}": U: is not allowed to be unset"#),
        },
        Case {
            input: "${E:?}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${E:?}": E: is not allowed to be empty"#),
            words: Err(r#"failed to process "${E:?}": E: is not allowed to be empty"#),
        },
        Case {
            input: "${E?}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Ok(("", &["E"], &[])),
            words: Ok(&[]),
        },
        Case {
            input: "${U?custom $X}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U?custom $X}": U: custom x"#),
            words: Err(r#"failed to process "${U?custom $X}": U: custom x"#),
        },
        Case {
            input: "${U:-'x}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U:-'x}": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${U:-'x}": syntax error: missing '}'"#),
        },
        Case {
            input: r#"${U:-"x}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U:-\"x}": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${U:-\"x}": syntax error: missing '}'"#),
        },
        Case {
            input: "${U:-${V:?inner}}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U:-${V:?inner}}": V: inner"#),
            words: Err(r#"failed to process "${U:-${V:?inner}}": V: inner"#),
        },
        Case {
            input: "${U:-${V:?inner}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${U:-${V:?inner}": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${U:-${V:?inner}": syntax error: missing '}'"#),
        },
        Case {
            input: "a\"b\nc\t\u{a0}\u{200b}\u{1}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "a\"b\nc\t\u00a0\u200b\x01": unexpected end of statement while looking for matching double-quote"#,
            ),
            words: Err(
                r#"failed to process "a\"b\nc\t\u00a0\u200b\x01": unexpected end of statement while looking for matching double-quote"#,
            ),
        },
        Case {
            input: r#"${X/\x/y}"#,
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(
                r#"failed to process "${X/\\x/y}": invalid pattern (\x) in substitution: invalid escape '\x'"#,
            ),
            words: Err(
                r#"failed to process "${X/\\x/y}": invalid pattern (\x) in substitution: invalid escape '\x'"#,
            ),
        },
        Case {
            input: "${X//a/b",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "",
            word: Err(r#"failed to process "${X//a/b": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X//a/b": syntax error: missing '}'"#),
        },
        Case {
            input: "${X:-`}",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "`",
            word: Err(r#"failed to process "${X:-`}": syntax error: missing '}'"#),
            words: Err(r#"failed to process "${X:-`}": syntax error: missing '}'"#),
        },
        Case {
            input: "${X#$B} ${X%$B}",
            env: &[("X", "x"), ("E", ""), ("P", "/home"), ("B", r#"\"#)],
            flags: "",
            word: Err(
                r#"failed to process "${X#$B} ${X%$B}": invalid pattern (\) in substitution: invalid escape '\�'"#,
            ),
            words: Err(
                r#"failed to process "${X#$B} ${X%$B}": invalid pattern (\) in substitution: invalid escape '\�'"#,
            ),
        },
        Case {
            input: "${X%$B}",
            env: &[("X", "x"), ("E", ""), ("P", "/home"), ("B", r#"\"#)],
            flags: "",
            word: Err(
                r#"failed to process "${X%$B}": invalid pattern (\) in substitution: invalid escape '\�'"#,
            ),
            words: Err(
                r#"failed to process "${X%$B}": invalid pattern (\) in substitution: invalid escape '\�'"#,
            ),
        },
        Case {
            input: "${X/$B/y}",
            env: &[("X", "x"), ("E", ""), ("P", "/home"), ("B", r#"\"#)],
            flags: "",
            word: Err(
                r#"failed to process "${X/$B/y}": invalid pattern (\) in substitution: invalid escape '\�'"#,
            ),
            words: Err(
                r#"failed to process "${X/$B/y}": invalid pattern (\) in substitution: invalid escape '\�'"#,
            ),
        },
        Case {
            input: "'abc",
            env: &[("X", "x"), ("E", ""), ("P", "/home")],
            flags: "Q",
            word: Err(
                r#"failed to process "'abc": unexpected end of statement while looking for matching single-quote"#,
            ),
            words: Err(
                r#"failed to process "'abc": unexpected end of statement while looking for matching single-quote"#,
            ),
        },
    ];
}
