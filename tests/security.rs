//! The security issue's defects, each as a regression test named after it, run as the
//! unprivileged test user.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::{TestEnv, stderr, stdout};

/// A dev environment project on the python test image (no daemons).
fn devenv_project(env: &TestEnv, name: &str) -> PathBuf {
    env.context_with(
        name,
        "# syntax=v1\ndef build():\n    base(image=\"python:3.11-slim\", dev=False)\n",
    )
}

/// Runs `cmd` (a shell line, as the test user) under a pty made by `script`; returns what the
/// terminal showed.
fn under_a_pty(env: &TestEnv, cmd: &str) -> String {
    let mut child = env
        .user_command("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let stdin = child.stdin.take();
    let out = child.wait_with_output().expect("script");
    drop(stdin);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Defect 3: a process in an environment pushed keystrokes into the user's host shell with
/// TIOCSTI through the terminal `exec` handed it.
#[test]
fn tiocsti_from_an_environment_reaches_no_host_shell() {
    let env = TestEnv::new("tiocsti");
    let name = format!("tiocsti-{}", std::process::id());
    let ctx = devenv_project(&env, &name);
    let out = env.envkit(&[
        "up",
        "--detach",
        "-p",
        ctx.to_str().unwrap(),
        "--name",
        &name,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inject = "import fcntl, termios\n\
                  for c in b'echo INJECTED\\n':\n    \
                  try: fcntl.ioctl(1, termios.TIOCSTI, bytes([c]))\n    \
                  except OSError as e: print('refused', e.errno); break";
    let script = env.dir.join("inject.py");
    std::fs::write(&script, inject).unwrap();
    env.chown(&script);
    let envkit = env!("CARGO_BIN_EXE_envkit");
    for flags in ["", "--no-tty", "-t"] {
        // The host side: after envkit returns, whatever sits in the terminal's input queue is
        // what the user's shell would run next.
        let line = format!(
            "bash -c '{envkit} exec {flags} {name} -- python3 -c \"$(cat {s})\"; \
             read -t 2 got; echo \"host-read:[$got]\"'",
            s = script.display()
        );
        let text = under_a_pty(&env, &line);
        assert!(
            text.contains("host-read:[]"),
            "exec {flags}: the environment typed into the host terminal:\n{text}"
        );
        assert!(!text.contains("host-read:[echo INJECTED"), "{text}");
    }
    // A pty's output and exit code come through.
    let text = under_a_pty(
        &env,
        &format!("{envkit} exec {name} -- sh -c 'tty; echo on-a-pty; exit 7'; echo code=$?"),
    );
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(
        text.contains("on-a-pty") && text.contains("code=7"),
        "{text}"
    );

    let out = env.envkit(&["destroy", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
}
