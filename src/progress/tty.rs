//! `--progress tty`: a live view for a terminal. Finished steps scroll up as one line each
//! (`#3 apt-get install curl  DONE 4.1s` / `CACHED`); below them, one line per running step
//! with its elapsed time and the last line of its output, redrawn in place; a summary at the
//! end. A background ticker keeps the timers moving while steps are quiet.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Event, Reporter, one_line};

struct Running {
    vertex: usize,
    name: String,
    since: Instant,
    last_line: String,
}

struct State<W> {
    out: W,
    width: usize,
    running: Vec<Running>,
    /// Lines of the live area drawn last time (to move back up over them).
    drawn: usize,
    /// When the live area was last drawn (output redraws it at most every 50 ms).
    last_draw: Option<Instant>,
    started: Instant,
    done: usize,
    cached: usize,
    failed: usize,
    finished: bool,
}

/// The tty renderer; [`Tty::finish`] prints the summary.
pub struct Tty<W: Write + Send + 'static> {
    state: Arc<Mutex<State<W>>>,
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

impl<W: Write + Send + 'static> State<W> {
    /// Erases the live area.
    fn clear(&mut self) {
        for _ in 0..self.drawn {
            let _ = write!(self.out, "\x1b[1A\x1b[2K");
        }
        self.drawn = 0;
    }

    /// Draws the running steps below the finished ones.
    fn draw(&mut self) {
        let width = self.width;
        let lines: Vec<String> = self
            .running
            .iter()
            .flat_map(|r| {
                let head = clip(
                    &format!(
                        "#{} {} {:.1}s",
                        r.vertex + 1,
                        one_line(&r.name),
                        r.since.elapsed().as_secs_f64()
                    ),
                    width,
                );
                let mut v = vec![format!("\x1b[1m{head}\x1b[0m")];
                if !r.last_line.is_empty() {
                    v.push(format!(
                        "\x1b[2m  {}\x1b[0m",
                        clip(&r.last_line, width.saturating_sub(2))
                    ));
                }
                v
            })
            .collect();
        for l in &lines {
            let _ = writeln!(self.out, "{l}");
        }
        self.drawn = lines.len();
        self.last_draw = Some(Instant::now());
        let _ = self.out.flush();
    }

    fn finished_line(&mut self, line: String) {
        self.clear();
        let width = self.width;
        let _ = writeln!(self.out, "{}", clip(&line, width));
        self.draw();
    }
}

impl<W: Write + Send + 'static> Tty<W> {
    /// A renderer drawing to `out` (a terminal `width` columns wide).
    pub fn new(out: W, width: usize) -> Self {
        let state = Arc::new(Mutex::new(State {
            out,
            width: width.max(20),
            running: Vec::new(),
            drawn: 0,
            last_draw: None,
            started: Instant::now(),
            done: 0,
            cached: 0,
            failed: 0,
            finished: false,
        }));
        let ticker = Arc::downgrade(&state);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let Some(state) = ticker.upgrade() else {
                    return;
                };
                let Ok(mut st) = state.lock() else { return };
                if st.finished {
                    return;
                }
                if !st.running.is_empty() {
                    st.clear();
                    st.draw();
                }
            }
        });
        Tty { state }
    }

    /// The width of the terminal on stderr, or 80.
    pub fn stderr_width() -> usize {
        use std::os::fd::AsFd;
        match rootless::terminal_size(std::io::stderr().as_fd()) {
            Some((_, cols)) if cols > 0 => cols as usize,
            _ => 80,
        }
    }
}

impl<W: Write + Send + 'static> Reporter for Tty<W> {
    fn event(&self, event: Event) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match event {
            Event::Started { vertex, name, .. } => {
                st.clear();
                st.running.push(Running {
                    vertex,
                    name,
                    since: Instant::now(),
                    last_line: String::new(),
                });
                st.draw();
            }
            Event::Log { vertex, data } => {
                let text = String::from_utf8_lossy(&data);
                if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty())
                    && let Some(r) = st.running.iter_mut().find(|r| r.vertex == vertex)
                {
                    let first = r.last_line.is_empty();
                    r.last_line = one_line(last.trim_end());
                    let stale = st
                        .last_draw
                        .is_none_or(|t| t.elapsed() >= Duration::from_millis(50));
                    if first || stale {
                        st.clear();
                        st.draw();
                    }
                }
            }
            Event::Completed {
                vertex,
                cached,
                elapsed,
            } => {
                let Some(i) = st.running.iter().position(|r| r.vertex == vertex) else {
                    return;
                };
                let r = st.running.remove(i);
                let status = if cached {
                    st.cached += 1;
                    "CACHED".to_string()
                } else {
                    st.done += 1;
                    format!("DONE {:.1}s", elapsed.as_secs_f64())
                };
                st.finished_line(format!("#{} {}  {status}", vertex + 1, one_line(&r.name)));
            }
            Event::Failed { vertex, error } => {
                let name = match st.running.iter().position(|r| r.vertex == vertex) {
                    Some(i) => st.running.remove(i).name,
                    None => String::new(),
                };
                st.failed += 1;
                st.finished_line(format!(
                    "#{} {}  \x1b[31mERROR\x1b[0m {}",
                    vertex + 1,
                    one_line(&name),
                    one_line(&error)
                ));
            }
            Event::Note(msg) => st.finished_line(format!("=> {msg}")),
        }
    }

    fn finish(&self) {
        self.summary();
    }
}

impl<W: Write + Send + 'static> Tty<W> {
    /// Prints the summary line and stops the ticker.
    fn summary(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.clear();
        st.finished = true;
        let total = st.done + st.cached + st.failed;
        let secs = st.started.elapsed().as_secs_f64();
        let (done, cached, failed) = (st.done, st.cached, st.failed);
        let _ = writeln!(
            st.out,
            "{total} steps: {done} run, {cached} cached{}, {secs:.1}s",
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
        let _ = st.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn finished_steps_stay_and_the_summary_counts_them() {
        let buf = Buf::default();
        let t = Tty::new(buf.clone(), 60);
        for (v, cached) in [(0, true), (1, false)] {
            t.event(Event::Started {
                vertex: v,
                digest: format!("d{v}"),
                inputs: vec![],
                name: format!("step {v}"),
            });
            t.event(Event::Log {
                vertex: v,
                data: b"working\n".to_vec(),
            });
            t.event(Event::Completed {
                vertex: v,
                cached,
                elapsed: Duration::from_millis(1500),
            });
        }
        t.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("#1 step 0  CACHED"), "{text:?}");
        assert!(text.contains("#2 step 1  DONE 1.5s"), "{text:?}");
        assert!(text.contains("  working"), "{text:?}");
        assert!(
            text.ends_with("2 steps: 1 run, 1 cached, 0.0s\n"),
            "{text:?}"
        );
    }
}
