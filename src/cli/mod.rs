//! The `evspool` command line: one file per subcommand family.
//!
//! Flags map into library configuration (never the other way round). Data goes
//! to stdout, diagnostics and progress bars to stderr; `--json` switches data
//! to JSON (one object, or NDJSON for event streams).

pub mod access;
pub mod exit;
pub mod inspect;
pub mod modify;
pub mod output;
pub mod run;
pub mod top;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// A durable store-and-forward queue for events.
#[derive(Debug, Parser)]
#[command(name = "evspool", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// The store directory [default: the config file's `dir`, else ./evspool-data].
    #[arg(long = "dir", id = "dir", global = true, env = "EVSPOOL_DIR")]
    pub dir_flag: Option<PathBuf>,
    /// The store directory every command uses: `--dir` (or `EVSPOOL_DIR`),
    /// else the config file's `dir`, else [`DEFAULT_DIR`] ([`Global::resolve`]).
    #[arg(skip)]
    pub dir: PathBuf,
    /// A TOML config file (the daemon's); its [queue] section applies to every command.
    #[arg(long, global = true, env = "EVSPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The store directory when neither `--dir`, `EVSPOOL_DIR` nor the config
/// file names one.
pub const DEFAULT_DIR: &str = "./evspool-data";

impl Global {
    /// Settles [`Global::dir`] once for every subcommand, so that `send`,
    /// `import` and the rest use the same store as `run` with the same
    /// `--config`: the flag (or `EVSPOOL_DIR`), else the config file's `dir`,
    /// else [`DEFAULT_DIR`].
    ///
    /// # Errors
    ///
    /// The config file cannot be read or is invalid.
    pub fn resolve(mut self) -> anyhow::Result<Self> {
        self.dir = match &self.dir_flag {
            Some(d) => d.clone(),
            None => access::load_config(&self)?
                .dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)),
        };
        Ok(self)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Per-topic counts, drops, quarantine, disk use and ceiling use.
    Stats(inspect::StatsArgs),
    /// Show queued events (or dead letters) without removing them.
    Peek(inspect::PeekArgs),
    /// Write events (or dead letters) as NDJSON.
    Export(inspect::ExportArgs),
    /// Enqueue events from an NDJSON file or stdin.
    Import(modify::ImportArgs),
    /// Move dead letters back to the queue for delivery.
    Replay(modify::ReplayArgs),
    /// Delete queued events or dead letters.
    Purge(modify::PurgeArgs),
    /// Decode every stored chunk; quarantine the damaged ones.
    Verify(inspect::VerifyArgs),
    /// Rewrite the store to reclaim disk space (the daemon must be stopped).
    Compact(modify::CompactArgs),
    /// Enqueue events given as arguments or on stdin.
    Send(modify::SendArgs),
    /// Forward everything now and exit with a report.
    Drain(run::DrainArgs),
    /// Run the sidecar daemon: local HTTP ingest, forwarding, admin API, metrics.
    Run(run::RunArgs),
    /// A self-contained demonstration: outage, rate limits, and nothing lost.
    Demo(run::DemoArgs),
    /// A live view of a running daemon: per topic, queue, rates, collector state, errors.
    Top(top::TopArgs),
}

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let g = cli.global.resolve()?;
    match cli.command {
        Command::Stats(a) => inspect::stats(&g, a).await,
        Command::Peek(a) => inspect::peek(&g, a).await,
        Command::Export(a) => inspect::export(&g, a).await,
        Command::Verify(a) => inspect::verify(&g, a).await,
        Command::Import(a) => modify::import(&g, a).await,
        Command::Replay(a) => modify::replay(&g, a).await,
        Command::Purge(a) => modify::purge(&g, a).await,
        Command::Compact(a) => modify::compact(&g, a).await,
        Command::Send(a) => modify::send(&g, a).await,
        Command::Drain(a) => run::drain(&g, a).await,
        Command::Run(a) => run::run(&g, a).await,
        Command::Demo(a) => run::demo(&g, a).await,
        Command::Top(a) => top::top(&g, a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
