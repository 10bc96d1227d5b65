//! Scenario 2: a backlog imported with `evspool import`, forwarded by the
//! daemon to a slow collector, SIGKILLed again and again while batches are in
//! flight (the collector has recorded them, the daemon has not had its answer),
//! then drained. Every imported event must arrive, under the id `evspool
//! export` showed before the first start; redeliveries carry the same id.

use crate::collector::{set_collector_delay, start_collector};
use crate::proc::{Cfg, cli, config_text, export, live, start};
use evspool_testkit::ledger::{Ledger, Summary};
use evspool_testkit::{setup, wait_until};
use std::io::Write;
use std::time::{Duration, Instant};

pub async fn run(kills: u64, backlog: u64) -> (Summary, Vec<String>) {
    let collector = start_collector().await;
    set_collector_delay(&collector, Duration::from_millis(40));
    let s = setup(&config_text(&Cfg {
        collector: &collector.url,
        workers: 4,
        batch_size: 50,
        extra_queue: "chunk_max_events = 50",
    }));
    let mut problems = Vec::new();
    let mut summary = Summary::default();

    // The backlog: bare event objects, imported into topic `events`.
    let file = s.tmp.path().join("backlog.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..backlog {
            writeln!(
                f,
                r#"{{"type":"track","event":"backlog","m":"b.{i}","properties":{{"n":{i}}}}}"#
            )
            .unwrap();
        }
    }
    let (code, out, err) = cli(
        &s.dir,
        &s.config,
        &["import", file.to_str().unwrap(), "--topic", "events"],
    )
    .await;
    assert_eq!(code, 0, "import: {out}{err}");
    assert!(
        out.contains(&format!("imported {backlog} events")),
        "import: {out}"
    );
    let mut ledger = Ledger::default();
    for (marker, id, _) in export(&s.dir, &s.config, "events", false).await {
        ledger.posted.insert(marker.clone());
        ledger.acked.insert(marker, id);
    }
    assert_eq!(
        ledger.acked.len() as u64,
        backlog,
        "export lists the backlog"
    );
    summary.sent = backlog;
    summary.acked = backlog;

    let mut in_flight_at_kill = 0u64;
    let mut exhausted = false;
    for run in 0..kills {
        let mut d = start(&s.dir, &s.config).await;
        let busy = wait_until(Duration::from_secs(10), || collector.in_flight() > 0).await;
        if !busy {
            if collector.distinct_markers().len() as u64 >= backlog {
                exhausted = true;
                break;
            }
            problems.push(format!(
                "run {run}: no batch reached the collector within 10 s of the start"
            ));
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=250))).await;
        let busy_now = collector.in_flight() > 0;
        if d.proc.kill9().await {
            summary.kills += 1;
            if busy_now {
                in_flight_at_kill += 1;
            }
        } else {
            problems.push(format!(
                "run {run}: the daemon exited on its own:\n{}",
                d.proc.stderr()
            ));
        }
    }
    let before_drain = collector.distinct_markers().len();

    let drain_started = Instant::now();
    let d = start(&s.dir, &s.config).await;
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let st = d.stats().await;
        if live(&st, "events") == 0 && collector.distinct_markers().len() as u64 >= backlog {
            break;
        }
        if Instant::now() >= until {
            problems.push(format!(
                "the final drain did not finish within 90 s: {} live",
                live(&st, "events")
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    d.stop(Duration::from_secs(20)).await;

    let books = ledger.books(&collector.deliveries());
    problems.extend(books.judge(&mut summary));
    if in_flight_at_kill == 0 {
        problems.push("no kill landed while a batch was in flight".into());
    }
    summary.notes = format!(
        "{in_flight_at_kill} kills with a batch in flight; {before_drain} of {backlog} delivered before the last start{}; final drain {drain_s:.1}s; collector delay 40 ms/request, {} requests",
        if exhausted {
            " (backlog exhausted early)"
        } else {
            ""
        },
        collector.request_count()
    );
    (summary, problems)
}
