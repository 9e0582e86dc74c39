//! Shared by the end-to-end tests: runs envkit (and podman) as the unprivileged test user.
//!
//! The tests need the environment that `scripts/test-env.sh` prepares (a registry on 127.0.0.1
//! with offline base images, and an unprivileged user with subordinate ids); `scripts/test.sh`
//! exports `ENVKIT_TEST_REGISTRY` and `ENVKIT_TEST_USER` (and, for the tests that push,
//! `ENVKIT_TEST_AUTH_REGISTRY` and `ENVKIT_TEST_AUTH`). Without them a test fails and says so.
#![allow(dead_code)]

pub mod cache;
pub mod confine;
pub mod dockerfile;
pub mod remote;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct TestEnv {
    pub registry: String,
    pub user: String,
    /// A directory owned by the test user; removed at the end.
    pub dir: PathBuf,
    as_root: bool,
}

fn must_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this end-to-end test needs the environment of scripts/test-env.sh; \
             run the tests through `sudo bash scripts/test.sh`"
        ),
    }
}

/// The registry that wants basic auth, and its `user:password`.
pub fn auth_registry() -> (String, String) {
    (
        must_env("ENVKIT_TEST_AUTH_REGISTRY"),
        must_env("ENVKIT_TEST_AUTH"),
    )
}

/// The fixture dockerd's API socket (its group is the test user's).
pub fn dockerd_socket() -> String {
    must_env("ENVKIT_TEST_DOCKERD")
}

/// The fixture containerd's socket (the test user may use it).
pub fn containerd_socket() -> String {
    must_env("ENVKIT_TEST_CONTAINERD")
}

impl TestEnv {
    pub fn new(label: &str) -> TestEnv {
        let registry = must_env("ENVKIT_TEST_REGISTRY");
        let as_root = nix_is_root();
        let user = if as_root {
            must_env("ENVKIT_TEST_USER")
        } else {
            std::env::var("USER").unwrap_or_default()
        };
        let dir = std::env::temp_dir().join(format!("envkit-e2e-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let env = TestEnv {
            registry,
            user,
            dir,
            as_root,
        };
        // Registry credentials of this test only (DOCKER_CONFIG): none to begin with.
        let docker = env.dir.join(".docker");
        std::fs::create_dir_all(&docker).expect("create .docker");
        std::fs::write(docker.join("config.json"), "{}").expect("write docker config");
        env.chown(&env.dir);
        std::fs::write(env.config_path(), env.config_text()).expect("write config");
        env.chown(&env.config_path());
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn config_text(&self) -> String {
        format!(
            "[registry.\"docker.io\"]\nmirrors = [\"{r}\"]\n\n[registry.\"{r}\"]\nhttp = true\n\n\
             [worker]\nca-bundle = \"/etc/ssl/certs/ca-certificates.crt\"\n",
            r = self.registry
        )
    }

    /// Hands a path (recursively) to the test user.
    pub fn chown(&self, path: &Path) {
        if self.as_root {
            let st = Command::new("chown")
                .args(["-R", &format!("{u}:{u}", u = self.user)])
                .arg(path)
                .status()
                .expect("chown");
            assert!(st.success(), "chown {}", path.display());
        }
    }

    /// Copies an example (or any dir) into the test dir, owned by the test user.
    pub fn copy_context(&self, src: &Path, name: &str) -> PathBuf {
        let dest = self.dir.join(name);
        let st = Command::new("cp")
            .arg("-r")
            .arg(src)
            .arg(&dest)
            .status()
            .expect("cp");
        assert!(st.success());
        self.chown(&dest);
        dest
    }

    /// Writes a build context with one build.envd.
    pub fn context_with(&self, name: &str, build_envd: &str) -> PathBuf {
        let dest = self.dir.join(name);
        std::fs::create_dir_all(&dest).expect("mkdir context");
        std::fs::write(dest.join("build.envd"), build_envd).expect("write build.envd");
        self.chown(&dest);
        dest
    }

    /// Writes a marshalled Definition into the test dir (owned by the test user) as
    /// `<name>.pb`.
    pub fn def_file(&self, name: &str, def: &envkit::llb::Definition) -> PathBuf {
        let p = self.dir.join(format!("{name}.pb"));
        std::fs::write(&p, def.to_bytes()).expect("write the Definition");
        self.chown(&p);
        p
    }

    /// `envkit solve --progress plain EXTRA… PB`, which must succeed: its log (stderr).
    pub fn solve_log(&self, pb: &Path, extra: &[&str]) -> String {
        let mut args = vec!["solve", "--progress", "plain"];
        args.extend_from_slice(extra);
        let pb = pb.to_str().expect("a UTF-8 path");
        args.push(pb);
        let out = self.envkit(&args);
        let log = stderr(&out);
        assert!(out.status.success(), "envkit {}: {log}", args.join(" "));
        log
    }

    /// A command that runs as the test user, with a clean, predictable environment.
    pub fn user_command(&self, program: &str) -> Command {
        let uid = self.uid();
        let runtime_dir = format!("/tmp/envkit-run-{uid}");
        let _ = std::fs::create_dir_all(&runtime_dir);
        let mut cmd = if self.as_root {
            let _ = Command::new("chown")
                .args([&self.user, &runtime_dir])
                .status();
            let mut c = Command::new("runuser");
            c.args(["-u", &self.user, "--", program]);
            c
        } else {
            Command::new(program)
        };
        cmd.current_dir(&self.dir)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &self.dir)
            .env("USER", &self.user)
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("ENVKIT_ROOT", self.store())
            .env("ENVKIT_CONFIG", self.config_path())
            // Registry credentials of this test only (runuser resets HOME to the user's).
            .env("DOCKER_CONFIG", self.dir.join(".docker"))
            // envkit's contexts of this test only, for the same reason.
            .env("XDG_CONFIG_HOME", self.dir.join(".config"));
        cmd
    }

    pub fn uid(&self) -> u32 {
        let out = Command::new("id")
            .args(["-u", &self.user])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("uid")
    }

    /// Runs envkit as the test user.
    pub fn envkit(&self, args: &[&str]) -> Output {
        let out = self
            .user_command(envkit_bin())
            .args(args)
            .output()
            .expect("run envkit");
        eprintln!(
            "$ envkit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `envkit build --progress plain ARGS`, which must succeed; its log.
    pub fn build_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        let out = self.envkit(&all);
        assert!(
            out.status.success(),
            "envkit {}: {}",
            all.join(" "),
            stderr(&out)
        );
        stderr(&out)
    }

    /// Loads an image archive into the test's podman; the name podman gives the image.
    pub fn podman_load(&self, archive: &Path) -> String {
        let out = self.podman(&["load", "-i", archive.to_str().expect("utf-8")]);
        assert!(out.status.success(), "podman load: {}", stderr(&out));
        let loaded = stdout(&out);
        loaded
            .lines()
            .find_map(|l| {
                l.strip_prefix("Loaded image: ")
                    .or_else(|| l.strip_prefix("Loaded image(s): "))
            })
            .map(|s| s.trim().split(',').next().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no image name in podman's output: {loaded}"))
    }

    /// `ctr` as the test user against the containerd at `sock`, namespace `ns`, which must
    /// succeed; its stdout.
    pub fn ctr(&self, sock: &str, ns: &str, args: &[&str]) -> String {
        let out = self
            .user_command("ctr")
            .args(["--address", sock, "-n", ns])
            .args(args)
            .output()
            .expect("ctr");
        assert!(out.status.success(), "ctr {args:?}: {}", stderr(&out));
        stdout(&out)
    }

    /// Runs podman as the test user with the options these hosts need (ROOTLESS.md).
    pub fn podman(&self, args: &[&str]) -> Output {
        let root = self.dir.join("podman-root");
        let runroot = self.dir.join("podman-runroot");
        let out = self
            .user_command("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
            ])
            .args(args)
            .output()
            .expect("run podman");
        eprintln!(
            "$ podman {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::env::var_os("ENVKIT_KEEP_TEST_DIRS").is_some() {
            return;
        }
        // The store and podman's storage hold files of subordinate ids: root removes them
        // directly, an unprivileged user from inside its user namespace.
        if !self.as_root {
            let _ = self
                .user_command("podman")
                .args(["unshare", "rm", "-rf"])
                .arg(&self.dir)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nix_is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The envkit binary the tests run: this build's, or `ENVKIT_TEST_BIN` (scripts/test.sh runs
/// the e2e suite again on the release binary as it is installed, `scripts/release.sh`).
pub fn envkit_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("ENVKIT_TEST_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_envkit").to_string())
    })
}
