//! SIGTERM and SIGINT. The first asks the daemon to stop: it stops accepting
//! requests and delivers what it can while delivery makes progress. The
//! second exits at once with 128 + the signal's number (143 for SIGTERM, 130
//! for SIGINT): events not yet delivered stay on disk, and batches in flight
//! are sent again after the next start (same ids).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

/// Resolves once a stop was asked for.
pub struct StopRequest {
    rx: watch::Receiver<bool>,
}

impl StopRequest {
    /// Waits for the first signal (at once if it came already).
    pub async fn requested(mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }
}

/// Listens for SIGTERM and SIGINT from now on, on the current runtime.
///
/// # Errors
///
/// When a signal handler cannot be installed.
pub fn listen(deadline: std::time::Duration) -> std::io::Result<StopRequest> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let first = next(&mut term, &mut int).await;
        tracing::info!(
            signal = name(first),
            deadline = %humantime::format_duration(deadline),
            "Stopping: no longer accepting requests; delivering what can be delivered while the collector takes it. Send the signal again (Ctrl-C) to stop at once."
        );
        let _ = tx.send(true);
        let second = next(&mut term, &mut int).await;
        tracing::warn!(
            signal = name(second),
            "Second signal: exiting now. Undelivered events stay on disk for the next start; batches in flight will be sent again."
        );
        std::process::exit(128 + second);
    });
    Ok(StopRequest { rx })
}

async fn next(term: &mut Signal, int: &mut Signal) -> i32 {
    tokio::select! {
        _ = term.recv() => libc::SIGTERM,
        _ = int.recv() => libc::SIGINT,
    }
}

fn name(signal: i32) -> &'static str {
    if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    }
}
