//! `--progress rawjson`: one JSON object per line shaped like BuildKit's `SolveStatus`
//! (`buildctl --progress rawjson`): `vertexes` (`digest`, `inputs`, `name`, `started`,
//! `completed`, `cached`, `error`), `statuses` (envkit's notes, e.g. exporting), `logs`
//! (`vertex`, `stream`, base64 `data`, `timestamp`). Times are RFC 3339 with nanoseconds.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{Event, Reporter};

pub(crate) use crate::timefmt::rfc3339_nano;

#[derive(Clone)]
struct VertexInfo {
    digest: String,
    inputs: Vec<String>,
    name: String,
    started: String,
}

pub struct RawJson<W: Write + Send> {
    state: Mutex<(W, HashMap<usize, VertexInfo>)>,
}

impl<W: Write + Send> RawJson<W> {
    pub fn new(out: W) -> Self {
        RawJson {
            state: Mutex::new((out, HashMap::new())),
        }
    }
}

fn vertex_json(v: &VertexInfo) -> serde_json::Map<String, Value> {
    let mut o = serde_json::Map::new();
    o.insert("digest".into(), json!(v.digest));
    if !v.inputs.is_empty() {
        o.insert("inputs".into(), json!(v.inputs));
    }
    o.insert("name".into(), json!(v.name));
    o.insert("started".into(), json!(v.started));
    o
}

impl<W: Write + Send> Reporter for RawJson<W> {
    fn event(&self, event: Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let (out, vertices) = &mut *st;
        let now = rfc3339_nano(SystemTime::now());
        let line = match event {
            Event::Started {
                vertex,
                digest,
                inputs,
                name,
            } => {
                let info = VertexInfo {
                    digest,
                    inputs,
                    name,
                    started: now,
                };
                let v = vertex_json(&info);
                vertices.insert(vertex, info);
                json!({ "vertexes": [v] })
            }
            Event::Completed { vertex, cached, .. } => {
                let Some(info) = vertices.get(&vertex) else {
                    return;
                };
                let mut v = vertex_json(info);
                v.insert("completed".into(), json!(now));
                if cached {
                    v.insert("cached".into(), json!(true));
                }
                json!({ "vertexes": [v] })
            }
            Event::Failed { vertex, error } => {
                let Some(info) = vertices.get(&vertex) else {
                    return;
                };
                let mut v = vertex_json(info);
                v.insert("completed".into(), json!(now));
                v.insert("error".into(), json!(error));
                json!({ "vertexes": [v] })
            }
            Event::Log { vertex, data } => {
                let digest = vertices.get(&vertex).map(|v| v.digest.clone());
                json!({ "logs": [{
                    "vertex": digest,
                    "stream": 1,
                    "data": base64::engine::general_purpose::STANDARD.encode(&data),
                    "timestamp": now,
                }]})
            }
            Event::Note(msg) => json!({ "statuses": [{
                "id": msg,
                "name": msg,
                "current": 0,
                "timestamp": now,
            }]}),
        };
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_like_go() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.12Z");
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn events_become_solve_status_lines() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let r = RawJson::new(buf.clone());
        r.event(Event::Started {
            vertex: 0,
            digest: "sha256:aa".into(),
            inputs: vec!["sha256:bb".into()],
            name: "step".into(),
        });
        r.event(Event::Log {
            vertex: 0,
            data: b"hi\n".to_vec(),
        });
        r.event(Event::Completed {
            vertex: 0,
            cached: true,
            elapsed: Duration::ZERO,
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["vertexes"][0]["digest"], "sha256:aa");
        assert_eq!(lines[0]["vertexes"][0]["inputs"][0], "sha256:bb");
        assert_eq!(lines[1]["logs"][0]["data"], "aGkK");
        assert_eq!(lines[1]["logs"][0]["vertex"], "sha256:aa");
        assert_eq!(lines[2]["vertexes"][0]["cached"], true);
        assert!(lines[2]["vertexes"][0]["completed"].is_string());
    }
}
