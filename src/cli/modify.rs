//! Write commands: `import`, `replay`, `purge`, `compact`, `send`.

use super::Global;
use super::access::{self, Access};
use super::exit::{self, fail};
use super::output;
use crate::admin_api::{Changed, EventRecord, Selection};
use clap::Args;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file to import, or `-` for stdin. Lines are `evspool export`
    /// records (their topic is kept) or bare event objects (need --topic).
    pub file: PathBuf,
    /// Topic for bare event objects (and to override exported records' topics).
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The topic whose dead letters to replay.
    #[arg(long)]
    pub topic: String,
    /// Only dead letters whose reason contains this text.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only events with seq ≥ this.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Only events with seq ≤ this.
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Count what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The topic to purge.
    #[arg(long)]
    pub topic: String,
    /// Purge dead letters instead of queued events.
    #[arg(long)]
    pub dead: bool,
    /// Only dead letters whose reason contains this text (with --dead).
    #[arg(long, requires = "dead")]
    pub reason: Option<String>,
    /// Really delete (required unless --dry-run).
    #[arg(long)]
    pub yes: bool,
    /// Count what would be deleted, change nothing.
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Report the current size only.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// Event JSON objects; read NDJSON from stdin when none are given.
    pub events: Vec<String>,
}

fn print_changed(g: &Global, verb: &str, c: Changed, dry_run: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if g.json {
        output::json_line(
            &mut out,
            &serde_json::json!({"matched": c.matched, verb: c.changed, "dry_run": dry_run}),
        )?;
    } else if dry_run {
        writeln!(
            out,
            "dry run: {} would be {verb}",
            output::count(c.matched, "event")
        )?;
    } else {
        writeln!(out, "{} {verb}", output::count(c.changed, "event"))?;
    }
    Ok(())
}

pub async fn replay(g: &Global, a: ReplayArgs) -> anyhow::Result<u8> {
    let access = access::open(g, false).await?;
    super::inspect::check_topic(&super::inspect::stats_of(&access).await?, &a.topic)?;
    let sel = Selection {
        topic: a.topic,
        dead: true,
        reason: a.reason,
        from_seq: a.from_seq,
        to_seq: a.to_seq,
        dry_run: a.dry_run,
    };
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    spinner.set_message(format!("replaying dead letters of {}", sel.topic));
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    let c = match &access {
        Access::Local(q) => sel.replay(q)?,
        Access::Remote(r) => r.replay(&sel).await?,
    };
    spinner.finish_and_clear();
    print_changed(g, "replayed", c, sel.dry_run)?;
    Ok(exit::OK)
}

pub async fn purge(g: &Global, a: PurgeArgs) -> anyhow::Result<u8> {
    if !a.yes && !a.dry_run {
        return Err(fail(
            exit::USAGE,
            "purge deletes events for good: pass --yes to do it, or --dry-run to count first",
        ));
    }
    let access = access::open(g, false).await?;
    super::inspect::check_topic(&super::inspect::stats_of(&access).await?, &a.topic)?;
    let sel = Selection {
        topic: a.topic,
        dead: a.dead,
        reason: a.reason,
        from_seq: None,
        to_seq: None,
        dry_run: a.dry_run,
    };
    let c = match &access {
        Access::Local(q) => sel.purge(q)?,
        Access::Remote(r) => r.purge(&sel).await?,
    };
    print_changed(g, "purged", c, sel.dry_run)?;
    Ok(exit::OK)
}

pub async fn compact(g: &Global, a: CompactArgs) -> anyhow::Result<u8> {
    if !access::store_exists(&g.dir) {
        return Err(fail(
            exit::ERROR,
            format!("no evspool store at {}", g.dir.display()),
        ));
    }
    let cfg = access::load_config(g)?;
    let mut out = std::io::stdout().lock();
    if a.dry_run {
        let size = evspool::queue::store_size(&g.dir);
        if g.json {
            output::json_line(
                &mut out,
                &serde_json::json!({"size_bytes": size, "dry_run": true}),
            )?;
        } else {
            writeln!(
                out,
                "store takes {} on disk; run without --dry-run to compact",
                output::bytes(size)
            )?;
        }
        return Ok(exit::OK);
    }
    let report = match evspool::compact(&g.dir, &cfg.queue) {
        Ok(r) => r,
        Err(evspool::OpenError::Locked { holder, .. }) => {
            return Err(fail(
                exit::LOCKED,
                format!(
                    "store {} is locked by {holder}; compaction needs the store to itself: stop the daemon, compact, start it again",
                    g.dir.display()
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    if g.json {
        output::json_line(&mut out, &report)?;
    } else {
        writeln!(
            out,
            "compacted: {} -> {} on disk",
            output::bytes(report.before_bytes),
            output::bytes(report.after_bytes)
        )?;
    }
    Ok(exit::OK)
}

/// A parsed import line: its topic, its payload, and the id it came with
/// (export records only).
#[derive(Debug, PartialEq)]
struct ImportLine {
    topic: String,
    payload: Vec<u8>,
    id: Option<String>,
}

/// Parses one import line: an export record (payload byte for byte, its id
/// to carry) or a bare event object (needs `topic`).
fn parse_import_line(line: &str, topic: Option<&str>) -> Result<ImportLine, String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        payload: Option<serde::de::IgnoredAny>,
        id: Option<serde::de::IgnoredAny>,
        topic: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = match serde_json::from_str(line) {
        Ok(p) => p,
        Err(e) if e.is_data() => return Err("expected a JSON object".into()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    if probe.payload.is_some() && (probe.id.is_some() || probe.topic.is_some()) {
        let rec: EventRecord =
            serde_json::from_str(line).map_err(|e| format!("not an export record: {e}"))?;
        let payload = rec.payload_bytes()?;
        return Ok(ImportLine {
            topic: topic.map_or(rec.topic, str::to_owned),
            payload,
            id: Some(rec.id),
        });
    }
    let Some(topic) = topic else {
        return Err("a bare event object needs --topic".into());
    };
    Ok(ImportLine {
        topic: topic.to_string(),
        payload: line.trim().as_bytes().to_vec(),
        id: None,
    })
}

/// The payload to enqueue for an imported record: carrying `id`, the id the
/// collector saw it under, when it can (`evspool::carry_origin_id`). `false`
/// when it cannot (not a JSON object, or no valid id): it gets a new id.
fn carrying(payload: Vec<u8>, id: Option<&str>) -> (Vec<u8>, bool) {
    let Some(id) = id.filter(|id| evspool::is_valid_origin_id(id)) else {
        return (payload, id.is_none());
    };
    match evspool::carry_origin_id(&payload, id) {
        evspool::Carried::Added(p) => (p, true),
        evspool::Carried::Already => (payload, true),
        evspool::Carried::NotAnObject => (payload, false),
    }
}

pub async fn import(g: &Global, a: ImportArgs) -> anyhow::Result<u8> {
    if let Some(t) = &a.topic {
        evspool::Topic::new(t).map_err(|e| fail(exit::USAGE, e.to_string()))?;
    }
    let reader: Box<dyn BufRead> = if a.file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.file).map_err(|e| {
                fail(
                    exit::ERROR,
                    format!("cannot read {}: {e}", a.file.display()),
                )
            })?,
        ))
    };
    let access = access::open(g, true).await?;
    let name = a.file.display().to_string();
    let mut imported = 0u64;
    let mut failed = 0u64;
    // Exported events that could not carry their id (not JSON objects).
    let mut new_ids = 0u64;
    let mut pending: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| fail(exit::ERROR, format!("{name}:{n}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = match parse_import_line(&line, a.topic.as_deref()) {
            Ok(x) => x,
            Err(reason) => {
                eprintln!("{name}:{n}: skipped: {reason}");
                failed += 1;
                continue;
            }
        };
        let topic = parsed.topic;
        let (payload, carried) = carrying(parsed.payload, parsed.id.as_deref());
        match &access {
            Access::Local(q) => match q.enqueue(&topic, payload) {
                Ok(evspool::Enqueued::Accepted(_)) => {
                    imported += 1;
                    new_ids += u64::from(!carried);
                }
                Ok(evspool::Enqueued::Dropped(reason)) => {
                    eprintln!("{name}:{n}: dropped by the ceiling policy ({reason})");
                    failed += 1;
                }
                Err(e) => {
                    eprintln!("{name}:{n}: skipped: {e}");
                    failed += 1;
                }
            },
            Access::Remote(_) => {
                if let Err(e) = evspool::Topic::new(&topic) {
                    eprintln!("{name}:{n}: skipped: {e}");
                    failed += 1;
                    continue;
                }
                // A daemon takes events through its ingest, which accepts
                // JSON objects only.
                if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                    eprintln!(
                        "{name}:{n}: skipped: the payload is not a JSON object, which a running daemon's ingest refuses; stop the daemon to import it"
                    );
                    failed += 1;
                    continue;
                }
                new_ids += u64::from(!carried);
                pending.entry(topic).or_default().push(payload);
            }
        }
        if n % 10_000 == 0 {
            bar.set_message(format!("imported {}", output::count(imported, "event")));
            bar.tick();
        }
    }
    match &access {
        Access::Local(q) => q.sync().await?,
        Access::Remote(r) => {
            for (topic, payloads) in pending {
                for part in payloads.chunks(1000) {
                    let ids = r.enqueue(&topic, part.to_vec()).await?;
                    imported += ids.len() as u64;
                }
            }
        }
    }
    bar.finish_and_clear();
    if new_ids > 0 {
        eprintln!(
            "{}: not JSON objects, so they cannot carry the ids they were exported with; the collector sees new ids for them",
            output::count(new_ids, "exported event")
        );
    }
    let mut out = std::io::stdout().lock();
    if g.json {
        output::json_line(
            &mut out,
            &serde_json::json!({"imported": imported, "failed": failed, "new_ids": new_ids}),
        )?;
    } else {
        writeln!(
            out,
            "imported {}; {} failed",
            output::count(imported, "event"),
            output::count(failed, "line")
        )?;
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}

pub async fn send(g: &Global, a: SendArgs) -> anyhow::Result<u8> {
    evspool::Topic::new(&a.topic).map_err(|e| fail(exit::USAGE, e.to_string()))?;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    let mut check = |text: &str, where_: String| -> anyhow::Result<()> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| fail(exit::USAGE, format!("{where_}: invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(fail(
                exit::USAGE,
                format!("{where_}: expected a JSON object"),
            ));
        }
        payloads.push(text.trim().as_bytes().to_vec());
        Ok(())
    };
    if a.events.is_empty() {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input)?;
        for (i, line) in input.lines().enumerate() {
            if !line.trim().is_empty() {
                check(line, format!("stdin:{}", i + 1))?;
            }
        }
    } else {
        for (i, e) in a.events.iter().enumerate() {
            check(e, format!("argument {}", i + 1))?;
        }
    }
    let access = access::open(g, true).await?;
    let ids: Vec<String> = match &access {
        Access::Local(q) => {
            let mut ids = Vec::new();
            for p in payloads {
                match q.enqueue_durable(&a.topic, p).await? {
                    evspool::Enqueued::Accepted(id) => ids.push(id.to_string()),
                    evspool::Enqueued::Dropped(r) => {
                        eprintln!("event dropped by the ceiling policy ({r})")
                    }
                }
            }
            ids
        }
        Access::Remote(r) => r.enqueue(&a.topic, payloads).await?,
    };
    let mut out = std::io::stdout().lock();
    for id in &ids {
        if g.json {
            output::json_line(&mut out, &serde_json::json!({"id": id, "topic": a.topic}))?;
        } else {
            writeln!(out, "{id}")?;
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_lines_accept_export_records_and_bare_events() {
        let rec = r#"{"id":"a-1","seq":1,"topic":"track","enqueued_at":"2026-01-01T00:00:00.000Z","payload":{"event":"x","n":1.10}}"#;
        let line = parse_import_line(rec, None).unwrap();
        assert_eq!(line.topic, "track");
        assert_eq!(line.payload, br#"{"event":"x","n":1.10}"#);
        assert_eq!(line.id.as_deref(), Some("a-1"));
        let line = parse_import_line(r#"{"event":"y"}"#, Some("t2")).unwrap();
        assert_eq!(
            (line.topic.as_str(), line.payload.as_slice(), line.id),
            ("t2", br#"{"event":"y"}"#.as_slice(), None)
        );
        assert_eq!(
            parse_import_line(r#"{"event":"y"}"#, None).unwrap_err(),
            "a bare event object needs --topic"
        );
        assert!(
            parse_import_line("[1]", Some("t"))
                .unwrap_err()
                .contains("object")
        );
        assert!(
            parse_import_line("{", Some("t"))
                .unwrap_err()
                .starts_with("invalid JSON")
        );
    }

    #[test]
    fn an_imported_record_carries_its_id_when_it_is_an_object() {
        assert_eq!(
            carrying(br#"{"a":1}"#.to_vec(), Some("ab-1")),
            (br#"{"evspool_id":"ab-1","a":1}"#.to_vec(), true)
        );
        // An earlier store's id stays.
        assert_eq!(
            carrying(br#"{"evspool_id":"first-1"}"#.to_vec(), Some("ab-1")),
            (br#"{"evspool_id":"first-1"}"#.to_vec(), true)
        );
        assert_eq!(
            carrying(b"[1]".to_vec(), Some("ab-1")),
            (b"[1]".to_vec(), false)
        );
        // Bare events had no id to keep.
        assert_eq!(
            carrying(br#"{"a":1}"#.to_vec(), None),
            (br#"{"a":1}"#.to_vec(), true)
        );
    }
}
