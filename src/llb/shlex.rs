//! Word splitting with the rules of github.com/google/shlex, which the Go client's `llb.Shlex`
//! uses. envd relies on its exact behaviour (including the way single quotes nest badly), so it
//! is reproduced here rather than borrowed from a POSIX-shell splitter.

#[derive(Clone, Copy)]
enum St {
    Start,
    Word,
    Escaping,
    QuotingEscaping,
    EscapingQuoted,
    Quoting,
    Comment,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits `s` into words. Like the Go client (which ignores the error), an unterminated quote
/// or trailing backslash drops the unfinished last word and keeps the words before it.
pub fn split(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut st = St::Start;
    let mut is_comment = false;
    for c in s.chars() {
        match st {
            St::Start => match c {
                c if is_space(c) => {}
                '"' => st = St::QuotingEscaping,
                '\'' => st = St::Quoting,
                '\\' => st = St::Escaping,
                '#' => {
                    is_comment = true;
                    st = St::Comment;
                }
                c => {
                    cur.push(c);
                    st = St::Word;
                }
            },
            St::Word => match c {
                c if is_space(c) => {
                    words.push(std::mem::take(&mut cur));
                    st = St::Start;
                }
                '"' => st = St::QuotingEscaping,
                '\'' => st = St::Quoting,
                '\\' => st = St::Escaping,
                c => cur.push(c),
            },
            St::Escaping => {
                cur.push(c);
                st = St::Word;
            }
            St::QuotingEscaping => match c {
                '"' => st = St::Word,
                '\\' => st = St::EscapingQuoted,
                c => cur.push(c),
            },
            St::EscapingQuoted => {
                cur.push(c);
                st = St::QuotingEscaping;
            }
            St::Quoting => match c {
                '\'' => st = St::Word,
                c => cur.push(c),
            },
            St::Comment => {
                if c == '\n' {
                    cur.clear();
                    is_comment = false;
                    st = St::Start;
                }
            }
        }
    }
    match st {
        St::Word => words.push(cur),
        // Unterminated quote / escape: the Go lexer returns an error and drops this word.
        St::Start
        | St::Comment
        | St::Escaping
        | St::QuotingEscaping
        | St::EscapingQuoted
        | St::Quoting => {}
    }
    let _ = is_comment;
    words
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn basic_words_and_quotes() {
        assert_eq!(split("a  b\tc"), vec!["a", "b", "c"]);
        assert_eq!(split(r#"bash -c "x && y""#), vec!["bash", "-c", "x && y"]);
        assert_eq!(split("echo 'a b' c"), vec!["echo", "a b", "c"]);
        assert_eq!(split(r#"a\ b "c\"d""#), vec!["a b", "c\"d"]);
        assert_eq!(split("x # comment\ny"), vec!["x", "y"]);
        assert_eq!(split("a#b"), vec!["a#b"]);
    }

    #[test]
    fn envd_quoting_quirk() {
        // a `'` inside the single-quoted script ends the quote and splits the script.
        let cmd = "bash -c 'set -euo pipefail\necho 'deb http://x main' | tee f\n'";
        assert_eq!(
            split(cmd),
            vec![
                "bash",
                "-c",
                "set -euo pipefail\necho deb",
                "http://x",
                "main | tee f\n"
            ]
        );
    }

    #[test]
    fn unterminated_quote_drops_last_word() {
        assert_eq!(split("a 'b"), vec!["a"]);
        assert_eq!(split("a b\\"), vec!["a"]);
    }
}
