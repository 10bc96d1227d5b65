//! Read commands: `stats`, `peek`, `export`, `verify`.

use super::Global;
use super::access::{self, Access};
use super::exit::{self, fail};
use super::output;
use crate::admin_api::EventRecord;
use clap::Args;
use evspool::Stats;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this topic.
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The topic (default: every topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// How many events.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub n: usize,
    /// Show dead letters instead of queued events.
    #[arg(long)]
    pub dead: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The topic (default: every topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// Export dead letters instead of queued events.
    #[arg(long)]
    pub dead: bool,
    /// Write to this file instead of stdout (made 0600, also when it exists; a symlink is refused).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {}

pub async fn stats_of(access: &Access) -> anyhow::Result<Stats> {
    Ok(match access {
        Access::Local(q) => q.stats(),
        Access::Remote(r) => r.stats().await?,
    })
}

/// Fails with exit code 1 naming `topic` and the known ones when the store lacks it.
pub fn check_topic(stats: &Stats, topic: &str) -> anyhow::Result<()> {
    if stats.topics.contains_key(topic) {
        return Ok(());
    }
    let known: Vec<&str> = stats.topics.keys().map(String::as_str).collect();
    Err(fail(
        exit::ERROR,
        format!(
            "unknown topic {topic:?}; the store has {}",
            if known.is_empty() {
                "no topics yet".to_string()
            } else {
                format!("topics {}", known.join(", "))
            }
        ),
    ))
}

fn topics_of(stats: &Stats, topic: &Option<String>) -> anyhow::Result<Vec<String>> {
    match topic {
        Some(t) => {
            check_topic(stats, t)?;
            Ok(vec![t.clone()])
        }
        None => Ok(stats.topics.keys().cloned().collect()),
    }
}

pub async fn stats(g: &Global, a: StatsArgs) -> anyhow::Result<u8> {
    let access = access::open(g, false).await?;
    let mut stats = stats_of(&access).await?;
    if let Some(t) = &a.topic {
        check_topic(&stats, t)?;
        stats.topics.retain(|k, _| k == t);
    }
    let mut out = std::io::stdout().lock();
    if g.json {
        output::json_line(&mut out, &stats)?;
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = stats
        .topics
        .iter()
        .map(|(name, t)| {
            let drops: u64 = t.drops.values().sum();
            vec![
                name.clone(),
                t.ready.events.to_string(),
                t.retrying.events.to_string(),
                t.leased.events.to_string(),
                t.uncommitted.events.to_string(),
                t.dead.events.to_string(),
                output::bytes(
                    t.ready.bytes + t.retrying.bytes + t.leased.bytes + t.uncommitted.bytes,
                ),
                output::age(t.oldest_age_ms),
                drops.to_string(),
            ]
        })
        .collect();
    // Long topic names give way so rows fit the terminal.
    output::table_fit(
        &mut out,
        &[
            "TOPIC",
            "READY",
            "RETRYING",
            "LEASED",
            "UNCOMMITTED",
            "DEAD",
            "BYTES",
            "OLDEST",
            "DROPPED",
        ],
        &rows,
        output::terminal_width(true),
        &[0],
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "total        {} events, {} logical; sled size on disk {}",
        stats.total.events,
        output::bytes(stats.total.bytes),
        output::bytes(stats.size_on_disk)
    )?;
    writeln!(
        out,
        "ceiling      {} events / {} ({}), {:.1}% used",
        stats.ceiling.max_events,
        output::bytes(stats.ceiling.max_bytes),
        stats.ceiling.policy,
        stats.ceiling.used_percent
    )?;
    if !stats.drops.is_empty() {
        let d: Vec<String> = stats
            .drops
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "dropped      {}", d.join(", "))?;
    }
    writeln!(
        out,
        "quarantine   {} records ({})",
        stats.quarantined_records,
        output::bytes(stats.quarantined_bytes)
    )?;
    if let Some(f) = &stats.failed_closed {
        writeln!(out, "FAILING CLOSED: {f}")?;
    }
    for r in &stats.recovered {
        writeln!(out, "recovered    {r}")?;
    }
    writeln!(
        out,
        "instance     {} (format {})",
        stats.instance_id, stats.format
    )?;
    Ok(exit::OK)
}

async fn events(
    access: &Access,
    topic: &str,
    dead: bool,
    from: u64,
    n: usize,
) -> anyhow::Result<Vec<EventRecord>> {
    match access {
        Access::Local(q) => EventRecord::page(q, topic, dead, from, n),
        Access::Remote(r) => r.events(topic, dead, from, n).await,
    }
}

pub async fn peek(g: &Global, a: PeekArgs) -> anyhow::Result<u8> {
    let access = access::open(g, false).await?;
    let stats = stats_of(&access).await?;
    let topics = topics_of(&stats, &a.topic)?;
    // `-n` counts in total: the oldest `n` across the topics shown (each
    // topic's oldest `n`, merged by enqueue time).
    let mut records = Vec::new();
    for topic in topics {
        records.extend(events(&access, &topic, a.dead, 0, a.n).await?);
    }
    oldest_first(&mut records, a.n);
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    for r in records {
        if g.json {
            output::json_line(&mut out, &r)?;
        } else {
            let payload = r.payload_text();
            rows.push(vec![
                r.id.clone(),
                r.topic.clone(),
                output::age(Some(r.age_ms)),
                r.attempts.to_string(),
                r.reason
                    .clone()
                    .or(r.last_error.clone())
                    .unwrap_or_default(),
                payload,
            ]);
        }
    }
    if !g.json {
        let last = if a.dead { "REASON" } else { "LAST ERROR" };
        // The error and the payload give way so rows fit the terminal.
        output::table_fit(
            &mut out,
            &["ID", "TOPIC", "AGE", "ATTEMPTS", last, "PAYLOAD"],
            &rows,
            output::terminal_width(true),
            &[4, 5],
        )?;
    }
    Ok(exit::OK)
}

/// Keeps the `n` oldest records, oldest first (ties in topic and seq order).
fn oldest_first(records: &mut Vec<EventRecord>, n: usize) {
    // RFC 3339 with milliseconds in UTC has a fixed width: text order is time order.
    records.sort_by(|a, b| {
        (a.enqueued_at.as_str(), a.topic.as_str(), a.seq).cmp(&(
            b.enqueued_at.as_str(),
            b.topic.as_str(),
            b.seq,
        ))
    });
    records.truncate(n);
}

pub async fn export(g: &Global, a: ExportArgs) -> anyhow::Result<u8> {
    let access = access::open(g, false).await?;
    let stats = stats_of(&access).await?;
    let topics = topics_of(&stats, &a.topic)?;
    let total: u64 = topics
        .iter()
        .filter_map(|t| stats.topics.get(t))
        .map(|t| {
            if a.dead {
                t.dead.events
            } else {
                t.ready.events + t.retrying.events + t.leased.events + t.uncommitted.events
            }
        })
        .sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting {pos}/{len} events [{elapsed}] {per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut sink: Box<dyn Write> = match &a.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            // Owner-only even when the file was there with a looser mode,
            // and never written through a symlink (`evspool::owned`).
            evspool::owned::create_private_file(path).map_err(|e| {
                fail(
                    exit::ERROR,
                    format!("cannot create {}: {e}", path.display()),
                )
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut written = 0u64;
    for topic in topics {
        let mut from = 0;
        loop {
            let page = events(&access, &topic, a.dead, from, 1000).await?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for r in &page {
                output::json_line(&mut sink, r)?;
            }
            written += page.len() as u64;
            bar.set_position(written);
        }
    }
    sink.flush()?;
    bar.finish_and_clear();
    if let Some(path) = &a.output {
        eprintln!(
            "exported {} to {}",
            output::count(written, "event"),
            path.display()
        );
    }
    Ok(exit::OK)
}

pub async fn verify(g: &Global, _a: VerifyArgs) -> anyhow::Result<u8> {
    let access = access::open(g, false).await?;
    let report = match &access {
        Access::Local(q) => q.verify()?,
        Access::Remote(r) => r.verify().await?,
    };
    let (checked, bad) = (report.checked, report.quarantined);
    let stats = stats_of(&access).await?;
    let mut out = std::io::stdout().lock();
    if g.json {
        output::json_line(
            &mut out,
            &serde_json::json!({
                "checked": checked,
                "quarantined": bad,
                "quarantined_total": stats.quarantined_records,
                "recovered": stats.recovered,
                "recorded": report.recorded,
                "counted": report.counted,
                "drifted_topics": report.drifted_topics,
            }),
        )?;
    } else {
        writeln!(
            out,
            "checked {checked} chunks: {} ok, {bad} damaged and moved to quarantine",
            checked - bad
        )?;
        writeln!(
            out,
            "quarantine holds {} records in total",
            stats.quarantined_records
        )?;
        for r in &stats.recovered {
            writeln!(out, "at open: {r}")?;
        }
        if report.drifted() {
            writeln!(
                out,
                "accounting had drifted: {} live events recorded, {} counted (repaired); topics: {}",
                report.recorded.events,
                report.counted.events,
                report.drifted_topics.join(", ")
            )?;
        }
    }
    Ok(if bad > 0 { exit::PARTIAL } else { exit::OK })
}
