//! Frontend errors and their rustc-like rendering.
//!
//! Every mistake in a build file becomes a [`FrontendError`] whose [`Diagnostic`] carries the
//! message and, where the file has one, the [`Location`]: file, 1-based line and column, the
//! source line and the length of the caret underline. `Display` renders the whole report:
//!
//! ```text
//! error: Variable `bse` not found
//!  --> build.envd:3:5
//!   |
//! 3 |     bse(image="python:3.11-slim")
//!   |     ^^^
//! ```

use std::fmt;

use starlark::codemap::FileSpan;
use thiserror::Error;

/// Where in a build file an error points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as envkit opened it (`<context>/build.envd`, or the path given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    /// The text of that line, without its line terminator.
    pub source_line: String,
    /// Number of `^` under the line (at least 1; a span running past the line ends there).
    pub caret_len: usize,
}

impl Location {
    /// Location of the byte range `begin..end` of `source` (clamped to the text, and moved back
    /// to a character boundary, so it never panics).
    pub fn from_byte_span(file: &str, source: &str, begin: usize, end: usize) -> Location {
        let begin = floor_char_boundary(source, begin.min(source.len()));
        let end = floor_char_boundary(source, end.clamp(begin, source.len()));
        let line_start = source[..begin].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[begin..]
            .find('\n')
            .map_or(source.len(), |i| begin + i);
        let line = source[..begin].matches('\n').count() + 1;
        let col = source[line_start..begin].chars().count() + 1;
        let source_line = source[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        let caret_end = end.min(line_end);
        let caret_len = source[begin..caret_end].chars().count().max(1);
        Location {
            file: file.to_string(),
            line,
            col,
            source_line,
            caret_len,
        }
    }

    /// Location of a starlark span.
    pub(crate) fn from_file_span(span: &FileSpan) -> Location {
        Location::from_byte_span(
            span.filename(),
            span.file.source(),
            span.span.begin().get() as usize,
            span.span.end().get() as usize,
        )
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// One error message, with the place in the build file it is about (if there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, location: Option<Location>) -> Self {
        Diagnostic {
            message: message.into(),
            location,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        let Some(loc) = &self.location else {
            return Ok(());
        };
        let number = loc.line.to_string();
        let pad = " ".repeat(number.len());
        write!(f, "\n{pad}--> {}:{}:{}", loc.file, loc.line, loc.col)?;
        write!(f, "\n{pad} |")?;
        write!(f, "\n{number} | {}", loc.source_line)?;
        // Keep tabs before the span so the caret lines up in a terminal.
        let lead: String = loc
            .source_line
            .chars()
            .take(loc.col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "\n{pad} | {lead}{}", "^".repeat(loc.caret_len))
    }
}

/// An error from reading or evaluating a build file. The variant says what kind of mistake it
/// is; every variant carries a [`Diagnostic`], and `Display` renders it (starting `error: `).
#[derive(Debug, Error)]
pub enum FrontendError {
    /// A malformed `-f file[:func]` value.
    #[error("{0}")]
    FromSpec(Box<Diagnostic>),
    /// The build file does not exist or cannot be read.
    #[error("{0}")]
    Read(Box<Diagnostic>),
    /// `# syntax=v0` on the first line.
    #[error("{0}")]
    UnsupportedVersion(Box<Diagnostic>),
    /// The file does not parse, or breaks envd's dialect (top-level `for`, global re-assignment).
    #[error("{0}")]
    Syntax(Box<Diagnostic>),
    /// An unknown variable, or an attribute a namespace does not have.
    #[error("{0}")]
    Name(Box<Diagnostic>),
    /// A call with wrong arguments: type, missing, extra positional or unexpected keyword.
    #[error("{0}")]
    Argument(Box<Diagnostic>),
    /// A builtin refused its arguments, or the recorded environment is inconsistent.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    /// The entry function is not defined.
    #[error("{0}")]
    MissingEntry(Box<Diagnostic>),
    /// The entry name is bound to something that is not a `def` function.
    #[error("{0}")]
    NotAFunction(Box<Diagnostic>),
    /// Any other evaluation error (`fail()`, operations on wrong types, recursion limits, ...).
    #[error("{0}")]
    Runtime(Box<Diagnostic>),
}

impl FrontendError {
    /// The message and location.
    pub fn diagnostic(&self) -> &Diagnostic {
        match self {
            FrontendError::FromSpec(d)
            | FrontendError::Read(d)
            | FrontendError::UnsupportedVersion(d)
            | FrontendError::Syntax(d)
            | FrontendError::Name(d)
            | FrontendError::Argument(d)
            | FrontendError::Invalid(d)
            | FrontendError::MissingEntry(d)
            | FrontendError::NotAFunction(d)
            | FrontendError::Runtime(d) => d,
        }
    }

    /// The message alone, without `error: ` and location.
    pub fn message(&self) -> &str {
        &self.diagnostic().message
    }

    /// Where the error points, if the file has a place for it.
    pub fn location(&self) -> Option<&Location> {
        self.diagnostic().location.as_ref()
    }

    /// `(line, col)`, both 1-based, if the error has a location.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        self.location().map(|l| (l.line, l.col))
    }
}

/// Errors the builtins raise; they reach the user through [`FrontendError`].
#[derive(Debug, Error)]
pub(crate) enum BuiltinError {
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: an envd builtin was called outside an envkit evaluation")]
    NoRecorder,
}

impl BuiltinError {
    pub(crate) fn into_starlark(self) -> starlark::Error {
        starlark::Error::new_native(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let src = "# syntax=v1\ndef build():\n    bàse(image=1)\n";
        let begin = src.find("bàse").unwrap_or(0);
        let loc = Location::from_byte_span("b.envd", src, begin, begin + "bàse".len());
        assert_eq!((loc.line, loc.col, loc.caret_len), (3, 5, 4));
        assert_eq!(loc.source_line, "    bàse(image=1)");
    }

    #[test]
    fn location_clamps_bad_offsets() {
        let loc = Location::from_byte_span("b.envd", "é", 1, 99);
        assert_eq!((loc.line, loc.col, loc.caret_len), (1, 1, 1));
    }

    #[test]
    fn renders_like_rustc() {
        let src = "def build():\n    run(commands=1)\n";
        let begin = src.find("run").unwrap_or(0);
        let d = Diagnostic::new(
            "bad",
            Some(Location::from_byte_span("x.envd", src, begin, begin + 15)),
        );
        assert_eq!(
            d.to_string(),
            "error: bad\n --> x.envd:2:5\n  |\n2 |     run(commands=1)\n  |     ^^^^^^^^^^^^^^^"
        );
    }

    #[test]
    fn renders_without_location() {
        let d = Diagnostic::new("no such file", None);
        assert_eq!(d.to_string(), "error: no such file");
    }
}
