//! The `evspool` binary: parse, set up logging, run, map errors to exit codes.

mod admin_api;
mod cli;
mod daemon;
mod demo;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    owner_only_umask();
    fixed_mmap_threshold();
    let cli = cli::Cli::parse();
    // The daemon reports its lifecycle at INFO; one-shot commands stay quiet.
    let daemon = matches!(cli.command, cli::Command::Run(_));
    init_tracing(cli.global.verbose + u8::from(daemon));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("evspool")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("evspool: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::ERROR);
        }
    };
    let result = runtime.block_on(cli::dispatch(cli));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::from(cli::exit::OK);
            }
            if let Some(exit) = err.downcast_ref::<cli::exit::Exit>() {
                if !exit.message.is_empty() {
                    eprintln!("evspool: {}", exit.message);
                }
                return ExitCode::from(exit.code);
            }
            eprintln!("evspool: {err:#}");
            if is_untrusted(&err) {
                return ExitCode::from(cli::exit::UNTRUSTED);
            }
            ExitCode::from(cli::exit::ERROR)
        }
    }
}

/// Everything this process creates (the store's sled files, snapshots written
/// while running, the admin address file, exports) is owner-only from the
/// start: sled creates its files with the process umask, and the library's
/// chmod at open and close cannot cover files created in between.
fn owner_only_umask() {
    // SAFETY: umask(2) only swaps the process's file-creation mask and cannot fail;
    // it runs before any other thread exists.
    unsafe {
        libc::umask(0o077);
    }
}

/// Pins glibc's mmap threshold at its 128 KiB default. glibc raises it to the
/// size of any freed mmapped block; sled frees 4 MiB log buffers all the time,
/// after which mid-sized allocations land in the heap and fragment it: a
/// 10M-event fill peaked at 114–153 MiB RSS instead of 105–110 MiB.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) only changes an allocator tunable; it runs before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// A store refused because this user does not own it (exit code 5).
fn is_untrusted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<evspool::OpenError>(),
            Some(evspool::OpenError::Untrusted { .. })
        )
    })
}

/// A closed stdout (`evspool export | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| cli::output::LogWriter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .try_init();
}

/// Colour only on a terminal, and not when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>): a log file or a journal gets
/// plain text.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))));
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None));
    }
}
