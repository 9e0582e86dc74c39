//! The command line: clap commands, the only place that prints and that uses `anyhow`.

mod args;
mod args_env;
mod args_store;
mod build;
mod debug;
mod envs;
mod images;
mod info;
mod quick;
mod remote;
mod store;
mod up;

pub use args::*;
pub use args_env::*;
pub use args_store::*;

use std::io::Write;

use clap::Parser as _;

/// Runs the CLI; returns the process exit code.
pub fn main() -> u8 {
    // A rebuild's command line parses in microseconds (`quick.rs`) and the runtime is built
    // next; clap's parse of any other takes ~0.5 ms, and the runtime starts on a thread of its
    // own meanwhile (a thread takes 0.1-0.3 ms to start on this kind of machine).
    let (cli, rt) = match Cli::parse_quick() {
        Some(cli) => (cli, runtime()),
        None => {
            let starting = std::thread::spawn(runtime);
            let cli = Cli::parse();
            let rt = starting
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("its thread panicked")));
            (cli, rt)
        }
    };
    init_logging(cli.globals.debug);
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    // Ctrl-C (or SIGTERM) drops the command's future: running steps are killed with their
    // helpers, uncommitted snapshots are left as `tmp-*` dirs that the next run removes, and
    // nothing half-written is ever committed.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(cli) => Some(r),
            _ = interrupted() => None,
        }
    });
    match outcome {
        // Everything the command started has ended: the worker threads end with the process.
        Some(Ok(_)) => rt.shutdown_background(),
        // An interrupted or failed command's blocking work (a step's helper being killed, say)
        // is waited for.
        _ => rt.shutdown_timeout(std::time::Duration::from_secs(10)),
    }
    match outcome {
        Some(Ok(code)) => u8::try_from(code).unwrap_or(1),
        Some(Err(e)) => {
            let _ = std::io::stdout().flush();
            eprintln!("{}", render_error(&e));
            1
        }
        None => {
            eprintln!("interrupted: running steps were stopped; the store is consistent");
            130
        }
    }
}

/// The async runtime: one worker thread beside the main one, I/O and timers. A build's tasks
/// mostly wait: on the registry (a download hashes and writes its bytes as they arrive), on
/// steps' processes and the helpers that unpack, on blocking threads that walk, copy and
/// compress with threads per core of their own. A worker per core cost every command ~0.1 ms
/// per extra thread to start and end, and asked the cgroup's files for the core count up
/// front.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// Log lines go to stderr: warnings and errors, or what `--debug` or `ENVKIT_LOG` (a filter
/// such as `envkit=debug`) asks for. The plain level needs no filter to be parsed (most runs).
fn init_logging(debug: bool) {
    let filter = std::env::var("ENVKIT_LOG")
        .ok()
        .filter(|f| !f.is_empty())
        .or_else(|| debug.then(|| "envkit=debug,info".to_string()));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match filter {
        Some(f) => logs
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .try_init(),
        None => logs.with_max_level(tracing::Level::WARN).try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default action (exit) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// `error: <outermost>` then each cause on its own line, leaving out a cause whose text the
/// lines above already show (many errors print their source inline). Frontend errors carry
/// their own `file:line:col` and caret layout and are shown as they are.
fn render_error(e: &anyhow::Error) -> String {
    if let Some(fe) = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::frontend::FrontendError>())
    {
        return fe.to_string();
    }
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
    }
    out
}

/// Runs the command; its exit code (0, or what `exec`/`run`'s command or `check` says).
async fn run(mut cli: Cli) -> anyhow::Result<i32> {
    build::apply_cache_defaults(&mut cli)?;
    let done = match cli.command {
        Command::Build(ref cmd) => build::build(&cli, &cmd.args).await,
        Command::Solve(ref args) => build::solve(&cli, args).await,
        Command::Images { ref what } => match what {
            None | Some(ImagesCommand::Ls) => images::list(&cli),
            Some(ImagesCommand::Inspect { names }) => images::inspect(&cli, names),
            Some(ImagesCommand::Rm { names }) => images::remove(&cli, names),
        },
        Command::Save(ref args) => images::save(&cli, args),
        Command::Up(ref args) => up::up(&cli, args).await,
        Command::Exec(ref args) => return tokio::task::block_in_place(|| envs::exec(&cli, args)),
        Command::Run(ref args) => return up::run(&cli, args).await,
        Command::Envs { ref what } => envs::envs(&cli, what),
        Command::Context { ref what } => remote::context_cmd(what),
        Command::Destroy(ref args) => envs::destroy(&cli, args).await,
        Command::Load(ref args) => images::load(&cli, args),
        Command::Push(ref args) => images::push(&cli, args).await,
        Command::Du => store::du(&cli),
        Command::Info { json } => info::info(&cli, json).await,
        Command::Prune(ref args) => store::prune(&cli, args).await,
        Command::Check { repair } => return store::check(&cli, repair).await,
        Command::Debug {
            what: DebugCommand::Llb(ref args),
        } => debug::debug_llb(&cli, args).await,
        Command::Reference {
            what: ReferenceCommand::Builtins,
        } => {
            std::io::stdout().write_all(crate::frontend::builtins_reference().as_bytes())?;
            Ok(())
        }
    };
    done.map(|()| 0)
}
