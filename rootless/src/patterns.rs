//! Include/exclude patterns (of local sources, `local.includepattern` /
//! `local.excludepatterns`, and of copies), with `.dockerignore` semantics as BuildKit applies them:
//! patterns are cleaned paths relative to the source's root; `*` matches within one path
//! element, `**` across elements, `?` one character, `[...]` a class; a pattern also matches
//! everything under what it matches; for excludes, a later `!pattern` re-includes, and the last
//! matching pattern decides.

/// One pattern, split into path elements.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    parts: Vec<String>,
    negated: bool,
}

impl Pattern {
    fn parse(raw: &str) -> Option<Pattern> {
        let (negated, body) = match raw.trim().strip_prefix('!') {
            Some(b) => (true, b.trim()),
            None => (false, raw.trim()),
        };
        let parts: Vec<String> = body
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_string)
            .collect();
        if parts.is_empty() {
            return None;
        }
        Some(Pattern { parts, negated })
    }

    /// Whether the pattern matches `path` or one of its ancestors.
    fn matches(&self, path: &[&str]) -> bool {
        (1..=path.len()).any(|n| match_parts(&self.parts, &path[..n]))
    }

    /// Whether something under `dir` could match (so a walk must descend into it).
    fn could_match_under(&self, dir: &[&str]) -> bool {
        prefix_could_match(&self.parts, dir)
    }
}

/// `pat` (elements, `**` allowed) against `path` (elements), whole.
fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=path.len()).any(|skip| match_parts(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((first, more)) => glob(p.as_bytes(), first.as_bytes()) && match_parts(rest, more),
            None => false,
        },
    }
}

/// Whether a path starting with `dir` could be matched by `pat`.
fn prefix_could_match(pat: &[String], dir: &[&str]) -> bool {
    match (pat.split_first(), dir.split_first()) {
        (_, None) => true,
        (None, Some(_)) => true, // the pattern matched an ancestor: everything under it
        (Some((p, _)), Some(_)) if p == "**" => true,
        (Some((p, rest)), Some((d, more))) => {
            glob(p.as_bytes(), d.as_bytes()) && prefix_could_match(rest, more)
        }
    }
}

/// One path element against one pattern element: `*`, `?`, `[...]` (with `!`/`^` negation
/// and ranges), `\\` escapes.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some((c, rest)) = s.split_first() else {
                return false;
            };
            let Some(end) = p.iter().skip(1).position(|b| *b == b']').map(|i| i + 1) else {
                return *c == b'[' && glob(&p[1..], rest);
            };
            let class = &p[1..end];
            let (neg, class) = match class.first() {
                Some(b'!') | Some(b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(c);
                    i += 3;
                } else {
                    hit |= class[i] == *c;
                    i += 1;
                }
            }
            hit != neg && glob(&p[end + 1..], rest)
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

/// A [`Filter`]'s verdict on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    No,
    Yes,
    /// A directory kept only because something under it may be.
    Partial,
}

/// The filter of one local source or copy.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Filter {
    /// From lists of patterns (as a copy action carries them).
    pub fn from_lists(include: &[String], exclude: &[String]) -> Filter {
        let parse = |l: &[String]| l.iter().filter_map(|p| Pattern::parse(p)).collect();
        Filter {
            include: parse(include),
            exclude: parse(exclude),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    fn excluded(&self, path: &[&str]) -> bool {
        let mut out = false;
        for p in &self.exclude {
            if p.matches(path) {
                out = !p.negated;
            }
        }
        out
    }

    /// Whether the file or directory at `rel` (relative, `/`-separated) is part of the
    /// source; `is_dir` dirs are kept when something under them might be.
    pub fn keeps(&self, rel: &str, is_dir: bool) -> bool {
        self.decide(rel, is_dir) != Keep::No
    }

    /// What the filter makes of `rel`: kept, dropped, or (a directory) kept only for what
    /// below it may be kept.
    pub fn decide(&self, rel: &str, is_dir: bool) -> Keep {
        let path: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        if path.is_empty() {
            return Keep::Yes;
        }
        let mut keep = if self.include.is_empty() || self.include.iter().any(|p| p.matches(&path)) {
            Keep::Yes
        } else if is_dir && self.include.iter().any(|p| p.could_match_under(&path)) {
            Keep::Partial
        } else {
            return Keep::No;
        };
        if self.excluded(&path) {
            // An excluded dir stays if a later exception could re-include something under it.
            let exception = is_dir
                && self
                    .exclude
                    .iter()
                    .any(|p| p.negated && p.could_match_under(&path));
            if !exception {
                return Keep::No;
            }
            keep = Keep::Partial;
        }
        keep
    }

    /// A stable text of the filter, for cache keys.
    pub fn key(&self) -> String {
        let show = |l: &[Pattern]| {
            l.iter()
                .map(|p| format!("{}{}", if p.negated { "!" } else { "" }, p.parts.join("/")))
                .collect::<Vec<_>>()
                .join("\u{0}")
        };
        format!(
            "inc:{}\u{1}exc:{}",
            show(&self.include),
            show(&self.exclude)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> Filter {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::from_lists(&v(inc), &v(exc))
    }

    #[test]
    fn globs() {
        assert!(glob(b"*.rs", b"main.rs"));
        assert!(!glob(b"*.rs", b"main.rc"));
        assert!(glob(b"ma?n.[a-z]s", b"main.rs"));
        assert!(glob(b"[!x]y", b"zy"));
        assert!(!glob(b"[!x]y", b"xy"));
    }

    #[test]
    fn excludes_like_dockerignore() {
        let x = f(&[], &["target", "**/*.tmp", "!keep.tmp"]);
        assert!(!x.keeps("target", true));
        assert!(!x.keeps("target/debug/app", false));
        assert!(!x.keeps("a/b/c.tmp", false));
        assert!(x.keeps("keep.tmp", false), "a later exception re-includes");
        assert!(x.keeps("src/main.rs", false));
    }

    #[test]
    fn includes_keep_matches_and_their_dirs() {
        let x = f(&["src/**", "Cargo.toml"], &[]);
        assert!(x.keeps("Cargo.toml", false));
        assert!(x.keeps("src", true));
        assert!(x.keeps("src/a/b.rs", false));
        assert!(!x.keeps("README.md", false));
        assert!(!x.keeps("docs", true));
        let y = f(&["a/b/*.txt"], &[]);
        assert!(y.keeps("a", true) && y.keeps("a/b", true));
        assert!(y.keeps("a/b/x.txt", false));
        assert!(!y.keeps("a/c", true));
        assert_eq!(y.decide("a/b", true), Keep::Partial);
        assert_eq!(y.decide("a/b/x.txt", false), Keep::Yes);
        let z = f(&[], &["docs", "!docs/keep.md"]);
        assert_eq!(z.decide("docs", true), Keep::Partial);
        assert_eq!(z.decide("docs/keep.md", false), Keep::Yes);
        assert_eq!(z.decide("docs/other.md", false), Keep::No);
    }
}
