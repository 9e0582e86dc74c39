//! A memo of evaluations: a build file evaluated again, with nothing it read changed, gives
//! the environment it gave last time without running the interpreter (whose set-up alone is
//! a few milliseconds, most of a warm build).
//!
//! An evaluation is traced: every file it read (by content hash), every existence check
//! made to find a file (`load()`'s two places, the build file's two), and what it printed.
//! A memo is kept under a key naming everything else the evaluation depends on (see
//! [`key`]); it is used only when each traced read gives the same answer again, and its
//! printed lines are printed again. An evaluation that did anything the trace cannot check
//! (`include()` of a repository, `data.envd()` creating a directory) is not kept.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use starlark::PrintHandler;

use crate::ir::Environment;

/// Where memos are kept between processes (a note store); both sides are best effort.
pub trait MemoStore {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn put(&self, key: &str, bytes: &[u8]);
}

/// One thing an evaluation read, with its answer then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Read {
    /// `path.exists()`.
    Exists { path: PathBuf, yes: bool },
    /// `path.is_file()`.
    IsFile { path: PathBuf, yes: bool },
    /// The text of a file, by its SHA-256.
    Text { path: PathBuf, sha256: String },
}

impl Read {
    /// Whether the answer is still the same.
    fn holds(&self) -> bool {
        match self {
            Read::Exists { path, yes } => path.exists() == *yes,
            Read::IsFile { path, yes } => path.is_file() == *yes,
            Read::Text { path, sha256 } => {
                std::fs::read(path).is_ok_and(|bytes| crate::content::sha256_hex(&bytes) == *sha256)
            }
        }
    }
}

/// What one evaluation read and printed; reads go through it.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    reads: RefCell<Vec<Read>>,
    printed: RefCell<Vec<String>>,
    /// Something was done that a memo could not repeat or check.
    opaque: Cell<bool>,
}

impl Trace {
    pub(crate) fn exists(&self, path: &Path) -> bool {
        let yes = path.exists();
        self.reads.borrow_mut().push(Read::Exists {
            path: path.to_path_buf(),
            yes,
        });
        yes
    }

    pub(crate) fn is_file(&self, path: &Path) -> bool {
        let yes = path.is_file();
        self.reads.borrow_mut().push(Read::IsFile {
            path: path.to_path_buf(),
            yes,
        });
        yes
    }

    /// Reads a file as UTF-8 text (an error is not traced: a failed evaluation is not kept).
    pub(crate) fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        let text = std::fs::read_to_string(path)?;
        self.reads.borrow_mut().push(Read::Text {
            path: path.to_path_buf(),
            sha256: crate::content::sha256_hex(text.as_bytes()),
        });
        Ok(text)
    }

    /// The evaluation did something a memo cannot stand for.
    pub(crate) fn opaque(&self) {
        self.opaque.set(true);
    }
}

/// `print()`: to stderr (as the starlark crate's own handler does), and remembered.
impl PrintHandler for Trace {
    fn println(&self, text: &str) -> starlark::Result<()> {
        eprintln!("{text}");
        self.printed.borrow_mut().push(text.to_string());
        Ok(())
    }
}

/// A kept evaluation.
#[derive(Serialize, Deserialize)]
struct Entry {
    reads: Vec<Read>,
    printed: Vec<String>,
    env: Environment,
}

/// The memo's key of an evaluation of `file:func` in `context_dir` with `options`: a hash
/// of those; of the running envkit binary (its device, inode, size, modification and change
/// times: another build of envkit evaluates anew, even one copied over it with its times);
/// of the current directory (relative paths resolve against it), `HOME` (`~` expands to it)
/// and the user and group. `None` when the binary or the current directory cannot be found:
/// nothing is kept or used then.
pub(crate) fn key(
    context_dir: &Path,
    file: &str,
    func: &str,
    options: &super::Options,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata(std::env::current_exe().ok()?).ok()?;
    let cwd = std::env::current_dir().ok()?;
    let mut parts: Vec<Vec<u8>> = vec![
        b"envkit evaluation memo 1".to_vec(),
        format!(
            "{} {} {} {}.{} {}.{}",
            exe.dev(),
            exe.ino(),
            exe.size(),
            exe.mtime(),
            exe.mtime_nsec(),
            exe.ctime(),
            exe.ctime_nsec()
        )
        .into_bytes(),
        cwd.as_os_str().as_encoded_bytes().to_vec(),
        context_dir.as_os_str().as_encoded_bytes().to_vec(),
        file.as_bytes().to_vec(),
        func.as_bytes().to_vec(),
        std::env::var_os("HOME")
            .map(|h| h.as_encoded_bytes().to_vec())
            .unwrap_or_default(),
        format!(
            "{} {}",
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw()
        )
        .into_bytes(),
    ];
    for p in &options.prelude {
        parts.push(p.as_os_str().as_encoded_bytes().to_vec());
    }
    parts.push(
        options
            .cache_dir
            .as_ref()
            .map(|d| d.as_os_str().as_encoded_bytes().to_vec())
            .unwrap_or_default(),
    );
    let mut joined = Vec::new();
    for p in parts {
        joined.extend_from_slice(&(p.len() as u64).to_le_bytes());
        joined.extend_from_slice(&p);
    }
    Some(crate::content::sha256_hex(&joined))
}

/// The environment kept under `key`, when every read it traced still holds; its printed
/// lines are printed again.
pub(crate) fn recall(store: &dyn MemoStore, key: &str) -> Option<Environment> {
    let bytes = store.get(key)?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    if !entry.reads.iter().all(Read::holds) {
        return None;
    }
    for line in &entry.printed {
        eprintln!("{line}");
    }
    Some(entry.env)
}

/// Keeps `env` under `key` with what `trace` saw, unless the evaluation was opaque.
pub(crate) fn keep(store: &dyn MemoStore, key: &str, trace: Trace, env: &Environment) {
    if trace.opaque.get() {
        return;
    }
    let entry = Entry {
        reads: trace.reads.into_inner(),
        printed: trace.printed.into_inner(),
        env: env.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec(&entry) {
        store.put(key, &bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Memos in memory.
    #[derive(Default)]
    struct Notes(RefCell<HashMap<String, Vec<u8>>>);

    impl MemoStore for Notes {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().get(key).cloned()
        }
        fn put(&self, key: &str, bytes: &[u8]) {
            self.0.borrow_mut().insert(key.to_string(), bytes.to_vec());
        }
    }

    struct Case {
        ctx: tempfile::TempDir,
        cache: tempfile::TempDir,
        notes: Notes,
    }

    impl Case {
        fn new(files: &[(&str, &str)]) -> Case {
            let case = Case {
                ctx: tempfile::tempdir().unwrap(),
                cache: tempfile::tempdir().unwrap(),
                notes: Notes::default(),
            };
            for (name, text) in files {
                case.write(name, text);
            }
            case
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.ctx.path().join(name), text).unwrap();
        }

        fn options(&self) -> super::super::Options {
            super::super::Options::hermetic(self.cache.path())
        }

        fn key(&self) -> String {
            key(self.ctx.path(), "build.envd", "build", &self.options()).unwrap()
        }

        fn recall(&self) -> Option<Environment> {
            recall(&self.notes, &self.key())
        }

        /// Evaluates and keeps; returns the environment.
        fn evaluate(&self) -> Environment {
            let (env, trace) = super::super::program::run_traced(
                self.ctx.path(),
                "build.envd",
                "build",
                &self.options(),
            )
            .unwrap();
            keep(&self.notes, &self.key(), trace, &env);
            env
        }
    }

    const BUILD: &str = "# syntax=v1\nload(\"lib.envd\", \"image\")\ndef build():\n    base(image=image(), dev=False)\n    print(\"chose\", image())\n";

    #[test]
    fn a_memo_stands_until_a_file_the_evaluation_read_changes() {
        let case = Case::new(&[
            ("build.envd", BUILD),
            ("lib.envd", "def image():\n    return \"debian:bookworm\"\n"),
        ]);
        assert_eq!(case.recall(), None, "nothing kept yet");
        let env = case.evaluate();
        assert_eq!(env.image, "debian:bookworm");
        assert_eq!(case.recall(), Some(env.clone()));
        let entry: Entry = serde_json::from_slice(&case.notes.get(&case.key()).unwrap()).unwrap();
        assert_eq!(entry.printed, ["chose debian:bookworm"]);
        assert!(
            entry
                .reads
                .iter()
                .any(|r| matches!(r, Read::Text { path, .. } if path.ends_with("lib.envd"))),
            "{:?}",
            entry.reads
        );

        // The loaded module changes: evaluated again, and the new answer kept.
        case.write("lib.envd", "def image():\n    return \"ubuntu:22.04\"\n");
        assert_eq!(case.recall(), None);
        assert_eq!(case.evaluate().image, "ubuntu:22.04");
        assert_eq!(case.recall().map(|e| e.image), Some("ubuntu:22.04".into()));

        // So does the build file itself (same length, same second).
        case.write("build.envd", &BUILD.replace("dev=False", "dev=Fals0"));
        assert_eq!(case.recall(), None);

        // Another function of the same file is another memo.
        let other = key(case.ctx.path(), "build.envd", "serve", &case.options()).unwrap();
        assert_ne!(other, case.key());
    }

    #[test]
    fn a_path_that_was_absent_and_appears_breaks_the_memo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.envd");
        let trace = Trace::default();
        assert!(!trace.is_file(&path));
        assert!(!trace.exists(&path));
        let reads = trace.reads.into_inner();
        assert!(reads.iter().all(Read::holds));
        std::fs::write(&path, "x = 1\n").unwrap();
        assert!(reads.iter().all(|r| !r.holds()));
    }

    #[test]
    fn evaluations_a_memo_cannot_check_again_are_not_kept() {
        let case = Case::new(&[(
            "build.envd",
            "# syntax=v1\ndef build():\n    base(image=\"debian:bookworm\", dev=False)\n    runtime.mount(host_path=data.envd(name=\"mnist\"), envd_path=\"/data\")\n",
        )]);
        case.evaluate();
        assert!(case.cache.path().join("data/mnist").is_dir());
        assert_eq!(case.recall(), None, "data.envd() creates a directory");

        let lib = tempfile::tempdir().unwrap();
        std::fs::write(
            lib.path().join("a.envd"),
            "def image():\n    return \"x\"\n",
        )
        .unwrap();
        let case = Case::new(&[(
            "build.envd",
            &format!(
                "# syntax=v1\nlib = include(git=\"{}\")\ndef build():\n    base(image=lib.image(), dev=False)\n",
                lib.path().display()
            ),
        )]);
        assert_eq!(case.evaluate().image, "x");
        assert_eq!(case.recall(), None, "include() reads a repository");
    }
}
