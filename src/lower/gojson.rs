//! JSON as Go's `encoding/json` writes it: object fields in the order given (struct fields in
//! declaration order; callers sort map keys), no whitespace, and `<`, `>`, `&`, U+2028, U+2029
//! escaped. envd's labels are such JSON, so envkit writes them the same way.

use std::collections::BTreeMap;

/// A JSON value with ordered object fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A Go `[]string`: `null` when nil (`None`), else the list.
    pub fn strings<S: AsRef<str>>(list: Option<&[S]>) -> Json {
        match list {
            None => Json::Null,
            Some(l) => Json::Arr(l.iter().map(|s| Json::str(s.as_ref())).collect()),
        }
    }

    /// A non-nil Go `[]string`.
    pub fn string_list<S: AsRef<str>>(list: &[S]) -> Json {
        Json::strings(Some(list))
    }

    /// A Go `[][]string`.
    pub fn string_lists<S: AsRef<str>>(lists: &[Vec<S>]) -> Json {
        Json::Arr(lists.iter().map(|l| Json::string_list(l)).collect())
    }

    /// A Go `*string`.
    pub fn opt_str(s: Option<&str>) -> Json {
        s.map_or(Json::Null, Json::str)
    }

    /// A Go `map[string]string` (keys sorted, as encoding/json does).
    pub fn string_map(m: &BTreeMap<String, String>) -> Json {
        Json::Obj(m.iter().map(|(k, v)| (k.clone(), Json::str(v))).collect())
    }

    /// An object from `(name, value)` pairs in order.
    pub fn obj<I, K>(fields: I) -> Json
    where
        I: IntoIterator<Item = (K, Json)>,
        K: Into<String>,
    {
        Json::Obj(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The encoded text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => out.push_str(&i.to_string()),
            Json::Str(s) => write_str(out, s),
            Json::Arr(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    x.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    crate::llb::json::push_go_string(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_go() {
        let v = Json::obj([
            ("b", Json::Bool(true)),
            ("a", Json::strings::<&str>(None)),
            ("s", Json::str("x<y> & \"z\"\n\u{1}")),
            ("n", Json::Int(-3)),
        ]);
        assert_eq!(
            v.encode(),
            r#"{"b":true,"a":null,"s":"x\u003cy\u003e \u0026 \"z\"\n\u0001","n":-3}"#
        );
    }
}
