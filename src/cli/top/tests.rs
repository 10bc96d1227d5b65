//! `evspool top`'s screen, drawn into ratatui's `TestBackend` and read back
//! cell by cell.

use super::view::{self, Screen};
use crate::admin_api::{Overview, RateHistory};
use evspool::forward::{CollectorState, RouteStats};
use evspool::{Stats, TopicStats, Usage};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use std::time::Duration;

const AT: u64 = 1_700_000_000_000;

fn usage(events: u64) -> Usage {
    Usage {
        events,
        bytes: events * 100,
    }
}

/// A daemon 3 minutes up: `track` is in an outage (ready growing, nothing
/// out, breaker open, connection refused, some drops); `engage` is healthy.
fn outage() -> Overview {
    let mut stats = Stats::default();
    stats.topics.insert(
        "track".into(),
        TopicStats {
            ready: usage(12_345),
            retrying: usage(50),
            leased: usage(0),
            dead: usage(7),
            oldest_age_ms: Some(95_000),
            drops: [("ceiling_newest".to_string(), 3u64)].into(),
            ..Default::default()
        },
    );
    stats.topics.insert(
        "engage".into(),
        TopicStats {
            ready: usage(2),
            leased: usage(40),
            oldest_age_ms: Some(300),
            ..Default::default()
        },
    );
    // A built-in topic nobody uses: not drawn.
    stats.topics.insert("groups".into(), TopicStats::default());
    stats.total = usage(12_437);
    stats.ceiling.max_events = 1_000_000;
    stats.ceiling.max_bytes = 1 << 30;
    stats.ceiling.policy = "drop_newest".into();
    stats.ceiling.used_percent = 1.2;
    let track = RouteStats {
        requests: 40,
        breaker: "open".into(),
        collector: CollectorState::Down,
        collector_since_ms: Some(AT - 45_000),
        last_error: Some("connect error: Connection refused (os error 111)".into()),
        last_error_at_ms: Some(AT - 2_000),
        ..Default::default()
    };
    let engage = RouteStats {
        requests: 900,
        delivered: 45_000,
        breaker: "closed".into(),
        collector: CollectorState::Up,
        collector_since_ms: Some(AT - 180_000),
        ..Default::default()
    };
    let groups = RouteStats {
        breaker: "closed".into(),
        ..Default::default()
    };
    Overview {
        version: "0.1.0".into(),
        pid: 4242,
        started_at_ms: AT - 180_000,
        at_ms: AT,
        active: true,
        stats,
        forward: [
            ("track".to_string(), track),
            ("engage".to_string(), engage),
            ("groups".to_string(), groups),
        ]
        .into(),
        rates: [
            (
                "track".to_string(),
                RateHistory {
                    ins: (0..180).map(|i| 100 + i % 7).collect(),
                    outs: (0..180).map(|i| if i < 135 { 100 } else { 0 }).collect(),
                },
            ),
            (
                "engage".to_string(),
                RateHistory {
                    ins: vec![250; 180],
                    outs: vec![250; 180],
                },
            ),
        ]
        .into(),
    }
}

fn draw(width: u16, height: u16, screen: &Screen) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
    t.draw(|f| view::render(f, screen)).unwrap();
    t.backend().buffer().clone()
}

fn screen(o: &Overview) -> Screen<'_> {
    Screen {
        source: "/var/lib/evspool/evspool.sock",
        overview: Some(o),
        error: None,
        interval: Duration::from_secs(1),
    }
}

fn lines(b: &Buffer) -> Vec<String> {
    (0..b.area.height)
        .map(|y| {
            (0..b.area.width)
                .map(|x| b[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

/// The row whose text starts (after trimming) with `first`.
fn row_of(lines: &[String], first: &str) -> usize {
    lines
        .iter()
        .position(|l| l.trim_start().starts_with(first))
        .unwrap_or_else(|| panic!("no row starting with {first:?}:\n{}", lines.join("\n")))
}

/// The text of row `y` under the header column `name` (from its first
/// character to the next column's), trimmed.
fn cell(lines: &[String], y: usize, name: &str) -> String {
    let header = &lines[row_of(lines, "TOPIC")];
    let chars: Vec<char> = header.chars().collect();
    let start_byte = header
        .find(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let start = header[..start_byte].chars().count();
    // Right-aligned headers end where their column ends: take the column as
    // the run from the previous column's end to this header's end.
    let end = start + name.chars().count();
    let mut from = start;
    while from > 0 && chars[from - 1] == ' ' {
        from -= 1;
    }
    let row: Vec<char> = lines[y].chars().collect();
    row[from..end.min(row.len())]
        .iter()
        .collect::<String>()
        .trim()
        .to_string()
}

#[test]
fn an_outage_shows_the_numbers_the_state_words_and_sparklines_in_their_cells() {
    let o = outage();
    let b = draw(120, 30, &screen(&o));
    let l = lines(&b);
    let text = l.join("\n");
    let track = row_of(&l, "track");
    let engage = row_of(&l, "engage");
    assert!(engage < track, "topics sorted by name:\n{text}");
    assert_eq!(cell(&l, track, "READY"), "12,345", "{text}");
    assert_eq!(cell(&l, track, "RETRYING"), "50", "{text}");
    assert_eq!(cell(&l, track, "LEASED"), "0", "{text}");
    assert_eq!(cell(&l, track, "DEAD"), "7", "{text}");
    assert_eq!(cell(&l, engage, "LEASED"), "40", "{text}");
    assert!(l[track].contains("down 45s"), "{text}");
    assert!(l[track + 1].contains("breaker open"), "{text}");
    assert!(l[engage].contains("up 3m00s"), "{text}");
    assert!(l[engage + 1].contains("breaker closed"), "{text}");
    assert!(l[track].contains("1m35s"), "oldest age: {text}");
    // Rates over the last 5 s: track takes 100..=104/s in and sends nothing.
    assert!(l[track].contains("in  102/s"), "{text}");
    assert!(l[track + 1].contains("out 0/s"), "{text}");
    assert!(l[engage + 1].contains("out 250/s"), "{text}");
    // The sparklines: track's "out" falls to the floor at the end; its "in" does not.
    let spark_in: String = l[track]
        .chars()
        .filter(|c| ('▁'..='█').contains(c))
        .collect();
    let spark_out: String = l[track + 1]
        .chars()
        .filter(|c| ('▁'..='█').contains(c))
        .collect();
    assert!(spark_in.chars().count() >= 30, "a wide sparkline: {text}");
    assert!(
        text.contains("LAST 3m00s (5s A BAR)"),
        "the time scale: {text}"
    );
    assert!(!spark_in.ends_with('▁'), "in keeps coming: {spark_in}");
    assert!(spark_out.ends_with("▁▁▁"), "out stopped: {spark_out}");
    assert!(
        spark_out.contains('█'),
        "out was flowing before: {spark_out}"
    );
    // The unused built-in topic is not drawn.
    assert!(!text.contains("groups"), "{text}");
    // Problems: the last error with its age, and drops by reason.
    assert!(
        text.contains("last error 2s ago: connect error: Connection refused (os error 111)"),
        "{text}"
    );
    assert!(text.contains("dropped: ceiling_newest 3"), "{text}");
    // Header and summary.
    assert!(l[0].starts_with("evspool top · /var/lib/evspool/evspool.sock · pid 4242"));
    assert!(l[0].contains("up 3m00s") && l[0].trim_end().ends_with("q quit"));
    assert!(l[1].contains("queue 12,437 events"), "{text}");
    assert!(l[1].contains("1.2% of 1,000,000"), "{text}");
}

#[test]
fn each_collector_state_has_its_word() {
    for (state, word) in [
        (CollectorState::Up, "up"),
        (CollectorState::Down, "down"),
        (CollectorState::RateLimited, "rate-limited"),
        (CollectorState::Paused, "paused"),
    ] {
        let mut o = outage();
        let f = o.forward.get_mut("track").unwrap();
        f.collector = state;
        f.breaker = "half_open".into();
        let l = lines(&draw(120, 30, &screen(&o)));
        let track = row_of(&l, "track");
        assert!(
            l[track].contains(&format!("{word} 45s")),
            "{word}:\n{}",
            l.join("\n")
        );
        assert!(
            l[track + 1].contains("breaker half-open"),
            "{}",
            l.join("\n")
        );
    }
}

#[test]
fn a_failed_refresh_keeps_the_last_numbers_under_a_line_saying_why() {
    let o = outage();
    let mut s = screen(&o);
    s.error = Some("no answer from /var/lib/evspool/evspool.sock: Connection refused");
    let l = lines(&draw(120, 30, &s));
    let text = l.join("\n");
    assert!(
        text.contains("daemon not answering (showing its last answer): no answer from"),
        "{text}"
    );
    assert_eq!(cell(&l, row_of(&l, "track"), "READY"), "12,345");
}

#[test]
fn a_topic_without_a_sink_says_so_and_an_inactive_forwarder_is_flagged() {
    let mut o = outage();
    o.forward.remove("track");
    let l = lines(&draw(120, 30, &screen(&o)));
    let track = row_of(&l, "track");
    assert!(l[track].contains("no sink"), "{}", l.join("\n"));
    assert!(l[track + 1].contains("stored only"), "{}", l.join("\n"));

    let mut o = outage();
    o.active = false;
    let text = lines(&draw(120, 30, &screen(&o))).join("\n");
    assert!(
        text.contains("forwarder inactive (active = false)"),
        "{text}"
    );
    assert!(text.contains("inactive"), "{text}");
}

#[test]
fn a_long_last_error_wraps_so_its_end_stays_on_screen() {
    let mut o = outage();
    o.forward.get_mut("track").unwrap().last_error = Some(format!(
        "connect error: {}: tcp connect error: Connection refused (os error 111)",
        "error sending request for url (http://127.0.0.1:9/ingest)".repeat(2)
    ));
    let l = lines(&draw(80, 24, &screen(&o)));
    let problems = row_of(&l, "PROBLEMS");
    // Cut at the width exactly: the rows read back as the whole message.
    let joined: String = l[problems + 1..].concat();
    assert!(
        joined.contains("tcp connect error: Connection refused (os error 111)"),
        "{}",
        l.join("\n")
    );
    assert!(
        joined.contains("dropped: ceiling_newest 3"),
        "{}",
        l.join("\n")
    );
}

#[test]
fn a_store_failing_closed_is_the_alert_line() {
    let mut o = outage();
    o.stats.failed_closed = Some("No space left on device (os error 28)".into());
    let l = lines(&draw(120, 30, &screen(&o)));
    assert!(
        l[2].contains("STORE FAILING CLOSED, new events refused: No space left on device"),
        "{}",
        l.join("\n")
    );
}

#[test]
fn an_idle_daemon_says_nothing_was_posted_yet() {
    let mut o = outage();
    o.stats.topics.clear();
    o.rates.clear();
    o.forward.retain(|t, _| t == "groups");
    let text = lines(&draw(120, 30, &screen(&o))).join("\n");
    assert!(text.contains("no events yet"), "{text}");
}

#[test]
fn an_80_column_terminal_still_shows_every_count_and_state() {
    let o = outage();
    let l = lines(&draw(80, 24, &screen(&o)));
    let text = l.join("\n");
    let track = row_of(&l, "track");
    assert_eq!(cell(&l, track, "READY"), "12,345", "{text}");
    assert!(l[track].contains("down 45s"), "{text}");
}

#[test]
fn a_60_column_terminal_drops_whole_columns_and_keeps_the_title_whole() {
    let o = outage();
    let l = lines(&draw(60, 24, &screen(&o)));
    let text = l.join("\n");
    let header = &l[row_of(&l, "TOPIC")];
    // Every header left is whole; the least needed columns went.
    for name in ["TOPIC", "COLLECTOR", "READY", "DEAD", "RATE"] {
        assert!(header.contains(name), "{name}: {text}");
    }
    for gone in ["RETRYI", "LEASED", "OLDEST", "LAST"] {
        assert!(!header.contains(gone), "{gone}: {text}");
    }
    let track = row_of(&l, "track");
    assert_eq!(cell(&l, track, "READY"), "12,345", "{text}");
    assert_eq!(cell(&l, track, "DEAD"), "7", "{text}");
    // The title drops what does not fit instead of cutting it mid-word.
    let title = l[0].trim_end();
    assert!(title.starts_with("evspool top · "), "{text}");
    assert!(title.contains(" · up "), "the uptime stays: {title}");
    assert!(
        !title.contains("pid 4") || title.contains("pid 4242"),
        "{title}"
    );
    for width in [60u16, 70, 80, 100, 120] {
        let l = lines(&draw(width, 24, &screen(&o)));
        let header = &l[row_of(&l, "TOPIC")];
        for name in ["TOPIC", "COLLECTOR", "READY", "DEAD"] {
            assert!(header.contains(name), "{width}: {name}: {}", l.join("\n"));
        }
        assert!(l[0].trim_end().starts_with("evspool top"), "{width}");
    }
}

#[test]
fn sparklines_scale_to_the_peak_and_bucket_the_history_to_the_width() {
    // A history narrower than the column: a bar per second, right-aligned.
    assert_eq!(view::seconds_per_bar(3, 30), 1);
    assert_eq!(view::sparkline(&[0, 25, 50], 30, 1, 50), "▁▅█");
    // Five minutes into 30 bars: 10 s per bar, the mean of each, newest at the right.
    assert_eq!(view::seconds_per_bar(300, 30), 10);
    assert_eq!(
        view::seconds_per_bar(100_000, 30),
        10,
        "never beyond the history kept"
    );
    let mut v = vec![0u64; 285];
    v.extend([50; 15]);
    let s = view::sparkline(&v, 30, 10, 50);
    assert_eq!(s.chars().count(), 30);
    assert_eq!(s, format!("{}▅█", "▁".repeat(28)));
    // Anything above zero rises off the floor.
    assert_eq!(view::sparkline(&[1], 30, 1, 1_000_000), "▂");
    assert_eq!(view::sparkline(&[], 30, 1, 0), "");
}

#[test]
fn numbers_rates_and_ages_are_short() {
    assert_eq!(view::thousands(0), "0");
    assert_eq!(view::thousands(999), "999");
    assert_eq!(view::thousands(1_000), "1,000");
    assert_eq!(view::thousands(12_345_678), "12,345,678");
    assert_eq!(view::rate(0.0), "0/s");
    assert_eq!(view::rate(2.5), "2.5/s");
    assert_eq!(view::rate(840.4), "840/s");
    assert_eq!(view::rate(12_345.0), "12.3k/s");
    assert_eq!(view::rate(12_345_678.0), "12.3M/s");
    assert_eq!(view::short_age(850), "850ms");
    assert_eq!(view::short_age(45_000), "45s");
    assert_eq!(view::short_age(192_000), "3m12s");
    assert_eq!(view::short_age(7_500_000), "2h05m");
    assert_eq!(view::short_age(273_600_000), "3d04h");
}
