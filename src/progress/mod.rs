//! Progress events and their renderers.
//!
//! The solver and the ops report [`Event`]s to a [`Reporter`]; renderers decide what a person
//! sees: [`Plain`] (one line per event, for CI logs), [`Tty`] (a live view of the running
//! steps) and [`RawJson`] (one BuildKit `SolveStatus` JSON object per line).

mod rawjson;
mod tty;

pub use rawjson::RawJson;
pub use tty::Tty;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Something that happened to one vertex of a build graph.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        vertex: usize,
        /// The vertex's stable id (the op digest for LLB) and its inputs' ids.
        digest: String,
        inputs: Vec<String>,
        name: String,
    },
    Log {
        vertex: usize,
        data: Vec<u8>,
    },
    Completed {
        vertex: usize,
        cached: bool,
        elapsed: Duration,
    },
    Failed {
        vertex: usize,
        error: String,
    },
    /// A message that belongs to no vertex (e.g. "exporting to oci").
    Note(String),
}

/// Receives progress events. Implementations must be cheap and never fail the build.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
    /// The build is over (success or not): print a summary, stop live output.
    fn finish(&self) {}
}

/// Passes events on with every vertex number moved up by `base`: several graphs solved at
/// once (one per platform) report into one display without sharing numbers. `finish` is left
/// to the one who owns the display.
pub struct Offset {
    pub inner: Arc<dyn Reporter>,
    pub base: usize,
}

impl Reporter for Offset {
    fn event(&self, event: Event) {
        let b = self.base;
        self.inner.event(match event {
            Event::Started {
                vertex,
                digest,
                inputs,
                name,
            } => Event::Started {
                vertex: vertex + b,
                digest,
                inputs,
                name,
            },
            Event::Log { vertex, data } => Event::Log {
                vertex: vertex + b,
                data,
            },
            Event::Completed {
                vertex,
                cached,
                elapsed,
            } => Event::Completed {
                vertex: vertex + b,
                cached,
                elapsed,
            },
            Event::Failed { vertex, error } => Event::Failed {
                vertex: vertex + b,
                error,
            },
            Event::Note(n) => Event::Note(n),
        });
    }
}

/// Drops everything; for tests and `--quiet` paths.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _event: Event) {}
}

/// Plain text, one line per event, to any writer (stderr in the CLI). Step output is prefixed
/// with its vertex number, like `buildctl --progress plain`.
///
/// [`Plain::new`] writes each event as it comes. [`Plain::coalescing`] (the CLI's) gathers the
/// lines of a burst of events and writes them together a moment later, at
/// [`Reporter::finish`], or when the renderer is dropped: a warm build's twenty lines are one
/// write instead of twenty (written to a log file on ext4, the twenty writes took 0.6-0.9 ms
/// of a 3 ms rebuild here), and a line waits at most that moment.
pub struct Plain<W: Write + Send + 'static> {
    out: Arc<Mutex<PlainState<W>>>,
    /// Where the delayed write of a burst runs, and how long a line may wait.
    later: Option<(tokio::runtime::Handle, Duration)>,
}

struct PlainState<W: Write> {
    out: W,
    start: Instant,
    /// Bytes of a started but unfinished output line, per vertex.
    partial: Vec<(usize, Vec<u8>)>,
    /// Lines formatted but not yet written, and whether a write of them is scheduled.
    pending: Vec<u8>,
    scheduled: bool,
}

impl<W: Write> PlainState<W> {
    fn write_pending(&mut self) {
        self.scheduled = false;
        if !self.pending.is_empty() {
            // Write errors (closed stderr) are not the build's problem.
            let _ = self.out.write_all(&self.pending);
            self.pending.clear();
        }
    }
}

impl<W: Write> Drop for PlainState<W> {
    fn drop(&mut self) {
        self.write_pending();
    }
}

impl<W: Write + Send + 'static> Plain<W> {
    /// Writes every event when it comes.
    pub fn new(out: W) -> Self {
        Plain {
            out: Arc::new(Mutex::new(PlainState {
                out,
                start: Instant::now(),
                partial: Vec::new(),
                pending: Vec::new(),
                scheduled: false,
            })),
            later: None,
        }
    }

    /// Writes the lines of a burst of events together, `within` after the first of them, on
    /// `runtime` (which must have its timers enabled).
    pub fn coalescing(out: W, runtime: tokio::runtime::Handle, within: Duration) -> Self {
        Plain {
            later: Some((runtime, within)),
            ..Plain::new(out)
        }
    }
}

impl<W: Write + Send + 'static> Reporter for Plain<W> {
    fn event(&self, event: Event) {
        let Ok(mut st) = self.out.lock() else {
            return;
        };
        let at = st.start.elapsed().as_secs_f64();
        let st = &mut *st;
        let out = &mut st.pending;
        let _ = match event {
            Event::Started { vertex, name, .. } => {
                writeln!(out, "#{} {}", vertex + 1, one_line(&name))
            }
            Event::Log { vertex, data } => {
                let mut buf = match st.partial.iter().position(|(v, _)| *v == vertex) {
                    Some(i) => st.partial.swap_remove(i).1,
                    None => Vec::new(),
                };
                buf.extend_from_slice(&data);
                let mut res = Ok(());
                let mut rest: &[u8] = &buf;
                while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&rest[..nl]);
                    res = res.and(writeln!(out, "#{} {:>6.2} {}", vertex + 1, at, line));
                    rest = &rest[nl + 1..];
                }
                if !rest.is_empty() {
                    st.partial.push((vertex, rest.to_vec()));
                }
                res
            }
            Event::Completed {
                vertex,
                cached,
                elapsed,
            } => {
                flush_partial(&mut st.partial, out, vertex, at);
                if cached {
                    writeln!(out, "#{} CACHED", vertex + 1)
                } else {
                    writeln!(out, "#{} DONE {:.1}s", vertex + 1, elapsed.as_secs_f64())
                }
            }
            Event::Failed { vertex, error } => {
                flush_partial(&mut st.partial, out, vertex, at);
                writeln!(out, "#{} ERROR: {}", vertex + 1, error)
            }
            Event::Note(msg) => writeln!(out, "=> {msg}"),
        };
        match &self.later {
            Some(_) if st.scheduled || st.pending.is_empty() => {}
            Some((runtime, within)) => {
                st.scheduled = true;
                let (state, within) = (Arc::clone(&self.out), *within);
                runtime.spawn(async move {
                    tokio::time::sleep(within).await;
                    if let Ok(mut st) = state.lock() {
                        st.write_pending();
                    }
                });
            }
            None => st.write_pending(),
        }
    }

    fn finish(&self) {
        if let Ok(mut st) = self.out.lock() {
            st.write_pending();
        }
    }
}

/// A vertex name on one line: newlines and other control characters shown escaped (a `run()`
/// group's script has several lines).
pub(crate) fn one_line(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn flush_partial(partial: &mut Vec<(usize, Vec<u8>)>, out: &mut Vec<u8>, vertex: usize, at: f64) {
    if let Some(i) = partial.iter().position(|(v, _)| *v == vertex) {
        let (_, rest) = partial.swap_remove(i);
        let _ = writeln!(
            out,
            "#{} {:>6.2} {}",
            vertex + 1,
            at,
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Keeps the last `max` lines of a step's output for error messages.
#[derive(Debug, Clone)]
pub struct LogTail {
    max: usize,
    lines: std::collections::VecDeque<String>,
    partial: Vec<u8>,
}

impl LogTail {
    pub fn new(max: usize) -> Self {
        LogTail {
            max,
            lines: Default::default(),
            partial: Vec::new(),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.partial[..nl]).into_owned();
            self.partial.drain(..=nl);
            self.lines.push_back(line);
            if self.lines.len() > self.max {
                self.lines.pop_front();
            }
        }
    }

    /// The kept lines, including an unterminated last line.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            out.push(String::from_utf8_lossy(&self.partial).into_owned());
            if out.len() > self.max {
                out.remove(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each write as it was made.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<String>>>);
    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .push(String::from_utf8_lossy(b).into_owned());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Writes {
        fn made(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn plain_prefixes_lines_and_joins_partial_writes() {
        let buf = Writes::default();
        let p = Plain::new(buf.clone());
        p.event(Event::Started {
            vertex: 0,
            digest: "sha256:aa".into(),
            inputs: vec![],
            name: "step".into(),
        });
        p.event(Event::Log {
            vertex: 0,
            data: b"hel".to_vec(),
        });
        p.event(Event::Log {
            vertex: 0,
            data: b"lo\nwor".to_vec(),
        });
        p.event(Event::Completed {
            vertex: 0,
            cached: false,
            elapsed: Duration::from_millis(100),
        });
        let text = buf.made().concat();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#1 step");
        assert!(
            lines[1].starts_with("#1 ") && lines[1].ends_with(" hello"),
            "{text}"
        );
        assert!(lines[2].ends_with(" wor"), "{text}");
        assert_eq!(lines[3], "#1 DONE 0.1s");
    }

    fn cached_step(p: &dyn Reporter, vertex: usize) {
        p.event(Event::Started {
            vertex,
            digest: format!("sha256:{vertex}"),
            inputs: vec![],
            name: format!("step {vertex}"),
        });
        p.event(Event::Completed {
            vertex,
            cached: true,
            elapsed: Duration::ZERO,
        });
    }

    #[tokio::test]
    async fn coalescing_plain_writes_a_burst_once_and_soon() {
        let w = Writes::default();
        let p = Plain::coalescing(
            w.clone(),
            tokio::runtime::Handle::current(),
            Duration::from_millis(20),
        );
        for v in 0..3 {
            cached_step(&p, v);
        }
        assert!(w.made().is_empty(), "{:?}", w.made());
        let waited = Instant::now();
        while w.made().is_empty() && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            w.made(),
            vec!["#1 step 0\n#1 CACHED\n#2 step 1\n#2 CACHED\n#3 step 2\n#3 CACHED\n"]
        );
        // Lines wait no longer than the build: `finish` writes them.
        p.event(Event::Note("exporting".into()));
        p.finish();
        assert_eq!(w.made().len(), 2);
        assert_eq!(w.made()[1], "=> exporting\n");
    }

    #[test]
    fn what_a_coalescing_plain_holds_is_written_when_its_runtime_ends() {
        // An interrupted build: the command's future and the runtime go, `finish` never comes.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let w = Writes::default();
        let p = Plain::coalescing(w.clone(), rt.handle().clone(), Duration::from_secs(3600));
        cached_step(&p, 0);
        drop(p);
        assert!(w.made().is_empty());
        drop(rt);
        assert_eq!(w.made(), vec!["#1 step 0\n#1 CACHED\n"]);
    }

    #[test]
    fn uncoalesced_plain_writes_each_event() {
        let w = Writes::default();
        let p = Plain::new(w.clone());
        cached_step(&p, 4);
        assert_eq!(w.made(), vec!["#5 step 4\n", "#5 CACHED\n"]);
    }

    #[test]
    fn vertex_names_are_shown_on_one_line() {
        let buf = Writes::default();
        let p = Plain::new(buf.clone());
        p.event(Event::Started {
            vertex: 1,
            digest: "sha256:bb".into(),
            inputs: vec![],
            name: "exec: bash -c set -e\necho é\n".into(),
        });
        let text = buf.made().concat();
        assert_eq!(text, "#2 exec: bash -c set -e\\necho é\\n\n");
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let mut t = LogTail::new(2);
        t.push(b"a\nb\nc\nd");
        assert_eq!(t.lines(), vec!["c".to_string(), "d".to_string()]);
        t.push(b"\n");
        assert_eq!(t.lines(), vec!["c".to_string(), "d".to_string()]);
    }
}
