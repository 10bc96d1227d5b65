//! Long-running commands: `run` (the daemon), `drain`, and `demo`.

use super::Global;
use super::access::{self, Access};
use super::exit::{self, fail};
use super::output;
use crate::daemon::{self, config::DaemonConfig};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on (default 127.0.0.1:8787; port 0 picks a free one).
    #[arg(long, env = "EVSPOOL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The sink for every topic: http, mixpanel, segment or nats.
    #[arg(long, env = "EVSPOOL_SINK", value_parser = ["http", "mixpanel", "segment", "nats"])]
    pub sink: Option<String>,
    /// The sink's URL (the collector endpoint for http, the API host for mixpanel and
    /// segment, the server URLs for nats: `nats://host:4222[,nats://other:4222]`).
    #[arg(long, env = "EVSPOOL_SINK_URL", value_parser = sink_url)]
    pub sink_url: Option<String>,
}

/// Checks `--sink-url` where the user typed it (clap then names the flag).
fn sink_url(s: &str) -> Result<String, String> {
    if ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|p| s.starts_with(p))
    {
        let cfg = evspool::forward::sink::nats::NatsSinkConfig {
            servers: s.split(',').map(|u| u.trim().to_string()).collect(),
            ..Default::default()
        };
        return cfg.validate().map(|()| s.to_string()).map_err(|e| {
            format!("not a NATS server list (e.g. nats://127.0.0.1:4222,nats://other:4222): {e}")
        });
    }
    evspool::forward::sink::http::check_url("--sink-url", s)
        .map(|()| s.to_string())
        .map_err(|_| {
            "not an http:// or https:// URL (e.g. https://collector.example.com/ingest), nor nats:// servers".to_string()
        })
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Give up after this long (events left stay queued).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The sink (as for `run`).
    #[arg(long, env = "EVSPOOL_SINK", value_parser = ["http", "mixpanel", "segment", "nats"])]
    pub sink: Option<String>,
    /// The sink's URL (as for `run`).
    #[arg(long, env = "EVSPOOL_SINK_URL", value_parser = sink_url)]
    pub sink_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long producers run; the outage and rate limiting are scaled to it.
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Events per second the producers aim for.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Keep the demo's store in --dir instead of a temporary directory.
    #[arg(long)]
    pub keep: bool,
}

/// Applies `--sink`/`--sink-url` over the file's `[sink]`.
fn apply_sink_flags(
    cfg: &mut DaemonConfig,
    sink: Option<String>,
    url: Option<String>,
) -> anyhow::Result<()> {
    match (sink, url) {
        (None, None) => Ok(()),
        (Some(kind), url) => {
            cfg.sink = Some(crate::daemon::sinks::from_flags(&kind, url.as_deref())?);
            Ok(())
        }
        (None, Some(url)) => {
            match cfg.sink.as_mut() {
                Some(s) => crate::daemon::sinks::set_url(s, &url),
                None => cfg.sink = Some(crate::daemon::sinks::from_flags("http", Some(&url))?),
            }
            Ok(())
        }
    }
}

pub async fn run(g: &Global, a: RunArgs) -> anyhow::Result<u8> {
    let mut cfg = access::load_config(g)?;
    if let Some(listen) = a.listen {
        cfg.server.listen = listen;
    }
    apply_sink_flags(&mut cfg, a.sink, a.sink_url)?;
    cfg.validate()?;
    let dir = g.dir.clone();
    match daemon::serve(dir, cfg).await {
        Ok(()) => Ok(exit::OK),
        Err(e) => match e.downcast_ref::<evspool::OpenError>() {
            Some(evspool::OpenError::Locked { .. }) => Err(fail(exit::LOCKED, format!("{e:#}"))),
            _ => Err(e),
        },
    }
}

pub async fn drain(g: &Global, a: DrainArgs) -> anyhow::Result<u8> {
    let mut cfg = access::load_config(g)?;
    apply_sink_flags(&mut cfg, a.sink, a.sink_url)?;
    cfg.validate()?;
    let access = access::open(g, false).await?;
    let report = match access {
        Access::Remote(r) => r.drain(a.timeout).await?,
        Access::Local(queue) => {
            if cfg.sink.is_none() && cfg.topics.values().all(|t| t.sink.is_none()) {
                return Err(fail(
                    exit::USAGE,
                    "drain needs a sink: pass --sink and --sink-url, or --config with a [sink] section",
                ));
            }
            let mut fcfg = cfg.clone();
            fcfg.forward.flush_interval = Duration::ZERO;
            fcfg.forward.flush_jitter = Duration::ZERO;
            let forwarder = daemon::build_forwarder(&queue, &fcfg)?.spawn();
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_message("draining");
            bar.enable_steady_tick(Duration::from_millis(100));
            let live = output::live(&bar);
            let report = forwarder.drain(a.timeout).await;
            drop(live);
            bar.finish_and_clear();
            forwarder.shutdown(Duration::from_secs(5)).await;
            tokio::task::spawn_blocking(move || queue.close()).await?;
            report
        }
    };
    let mut out = std::io::stdout().lock();
    if g.json {
        output::json_line(&mut out, &report)?;
    } else {
        writeln!(
            out,
            "drained in {:.1}s: {} delivered, {} dead-lettered, {} retries, {} still queued",
            report.elapsed_ms as f64 / 1000.0,
            report.delivered,
            report.dead,
            report.retried,
            report.remaining
        )?;
    }
    Ok(if report.complete {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

pub async fn demo(g: &Global, a: DemoArgs) -> anyhow::Result<u8> {
    let report = crate::demo::run(&g.dir, a.duration, a.rate, a.keep).await?;
    let mut out = std::io::stdout().lock();
    if g.json {
        output::json_line(&mut out, &report)?;
    } else {
        report.print(&mut out)?;
    }
    Ok(if report.lost == 0 {
        exit::OK
    } else {
        exit::ERROR
    })
}
