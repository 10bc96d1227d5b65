//! Drawing one screen of `evspool top` from an [`Overview`]. Pure: the same
//! overview always draws the same cells, so tests render into ratatui's
//! `TestBackend` and read them back.
//!
//! ```text
//!  evspool top · <socket or URL> · pid 4242 · v0.1.0 · up 3m12s                   q quit
//!  queue 1,234 events (1.2 MiB) · dead 3 · ceiling 0.1% of 1,000,000 / 1.0 GiB (drop_newest) · disk 4.0 MiB
//!  <alert: daemon not answering, store failing closed, forwarder inactive>
//!  TOPIC   COLLECTOR     READY  RETRYING  LEASED  DEAD  OLDEST  RATE         LAST 3m00s (5s A BAR)
//!  track   down 45s      1,200        50       0     0  45s     in  120/s    ▁▂▃▅▇█▇▆▇█
//!          breaker open                                          out   0/s   ▁▁▁▁▁▁▁▁▁▁
//!  PROBLEMS
//!  track   last error 2s ago: connect error: ... Connection refused
//!  track   dropped: ceiling_newest 12
//! ```
//!
//! Times ("45s", "2s ago") are measured against the overview's own clock
//! (`at_ms`), so a screen never mixes two clocks.

use crate::admin_api::{HISTORY_SECONDS, Overview, RateHistory};
use evspool::TopicStats;
use evspool::forward::{CollectorState, RouteStats};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Cell, Paragraph, Row, Table};

/// What one screen shows.
pub struct Screen<'a> {
    /// Where the overview came from: the socket's path or the URL.
    pub source: &'a str,
    /// The last overview the daemon answered with, if any.
    pub overview: Option<&'a Overview>,
    /// Why the latest refresh failed, if it did (the overview is then stale).
    pub error: Option<&'a str>,
    /// The refresh interval, for the footer.
    pub interval: std::time::Duration,
}

/// Levels of the sparkline; a zero draws the lowest, anything above zero at
/// least the second, so "nothing" and "a little" look different.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The rate column averages this many seconds.
const RATE_WINDOW: usize = 5;

/// Draws the whole screen.
pub fn render(frame: &mut Frame, s: &Screen) {
    let topics = s.overview.map(rows_of).unwrap_or_default();
    let problems = s.overview.map(problems_of).unwrap_or_default();
    let table_height = 1 + 2 * topics.len().max(1) as u16;
    // Problem lines wrap: a collector's error is most telling at its end.
    let width = frame.area().width.max(1) as usize;
    let problems: Vec<Line> = problems
        .into_iter()
        .flat_map(|l| wrap_chars(l, width))
        .collect();
    let problem_rows = problems.len();
    let [title, summary, alert, table, problems_area, _, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(table_height),
        Constraint::Length(if problems.is_empty() {
            0
        } else {
            problem_rows as u16 + 1
        }),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(title_line(s, title.width), title);
    if let Some(o) = s.overview {
        frame.render_widget(Paragraph::new(summary_line(o)), summary);
    }
    frame.render_widget(Paragraph::new(alert_line(s)), alert);
    let (active, at_ms) = s.overview.map_or((true, 0), |o| (o.active, o.at_ms));
    render_table(frame, table, &topics, active, at_ms);
    if !problems.is_empty() {
        let mut lines = vec![Line::styled("PROBLEMS", Style::new().bold())];
        lines.extend(problems);
        frame.render_widget(Paragraph::new(lines), problems_area);
    }
    frame.render_widget(
        Paragraph::new(Line::styled(
            format!(
                "refreshes every {} · q quit",
                humantime::format_duration(s.interval)
            ),
            Style::new().fg(Color::DarkGray),
        )),
        footer,
    );
}

fn title_line(s: &Screen, width: u16) -> Paragraph<'static> {
    let width = width as usize;
    // The source shortened to its file name when the whole path does not fit.
    let short_source = match s.source.rsplit_once('/') {
        Some((_, name)) if !s.source.starts_with("http") => format!("…/{name}"),
        _ => s.source.to_string(),
    };
    // The fullest title that fits: drop the version, the pid, then shorten
    // the source, then drop the uptime, so nothing is cut mid-word.
    let sets: Vec<Vec<String>> = match s.overview {
        Some(o) => {
            let (pid, version) = (format!("pid {}", o.pid), format!("v{}", o.version));
            let up = format!("up {}", short_age(o.at_ms.saturating_sub(o.started_at_ms)));
            vec![
                vec![pid.clone(), version, up.clone()],
                vec![pid, up.clone()],
                vec![up],
                vec![],
            ]
        }
        None => vec![vec![]],
    };
    let last = sets.len() - 1;
    let with_uptime = last.saturating_sub(1);
    let full = sets[..=with_uptime].iter().map(|set| (s.source, set));
    let short = sets[with_uptime..]
        .iter()
        .map(|set| (short_source.as_str(), set));
    let candidates: Vec<String> = full
        .chain(short)
        .map(|(source, set)| {
            let mut t = format!("evspool top · {source}");
            for fact in set {
                t += " · ";
                t += fact;
            }
            t
        })
        .collect();
    let left = candidates
        .iter()
        .find(|t| t.chars().count() <= width)
        .cloned()
        .unwrap_or_else(|| "evspool top".to_string());
    let fits = left.chars().count() + 1 + "q quit".len() <= width;
    let right = if fits { "q quit" } else { "" };
    let pad = width.saturating_sub(left.chars().count() + right.len());
    Paragraph::new(Line::from(vec![
        Span::styled(left, Style::new().bold()),
        Span::raw(" ".repeat(pad)),
        Span::styled(right, Style::new().fg(Color::DarkGray)),
    ]))
}

fn summary_line(o: &Overview) -> Line<'static> {
    let st = &o.stats;
    let dead: u64 = st.topics.values().map(|t| t.dead.events).sum();
    let mut text = format!(
        "queue {} events ({}) · dead {} · ceiling {:.1}% of {} / {} ({}) · disk {}",
        thousands(st.total.events),
        crate::cli::output::bytes(st.total.bytes),
        thousands(dead),
        st.ceiling.used_percent,
        thousands(st.ceiling.max_events),
        crate::cli::output::bytes(st.ceiling.max_bytes),
        st.ceiling.policy,
        crate::cli::output::bytes(st.size_on_disk),
    );
    if st.quarantined_records > 0 {
        text += &format!(" · quarantined {}", thousands(st.quarantined_records));
    }
    Line::raw(text)
}

fn alert_line(s: &Screen) -> Line<'static> {
    let bad = Style::new().fg(Color::Red).bold();
    if let Some(e) = s.error {
        let what = if s.overview.is_some() {
            "daemon not answering (showing its last answer)"
        } else {
            "daemon not answering"
        };
        return Line::styled(format!("{what}: {e}"), bad);
    }
    let Some(o) = s.overview else {
        return Line::raw("waiting for the daemon's first answer");
    };
    if let Some(reason) = &o.stats.failed_closed {
        return Line::styled(
            format!("STORE FAILING CLOSED, new events refused: {reason}"),
            bad,
        );
    }
    if !o.active {
        return Line::styled(
            "forwarder inactive (active = false): events are stored, not sent",
            Style::new().fg(Color::Yellow),
        );
    }
    if o.forward.is_empty() {
        return Line::styled(
            "no sink configured: events are stored, not forwarded",
            Style::new().fg(Color::Yellow),
        );
    }
    Line::raw("")
}

/// One topic's row, in the order drawn.
struct TopicRow<'a> {
    name: &'a str,
    queue: Option<&'a TopicStats>,
    forward: Option<&'a RouteStats>,
    rates: Option<&'a RateHistory>,
}

fn rows_of(o: &Overview) -> Vec<TopicRow<'_>> {
    let mut names: Vec<&str> = o
        .stats
        .topics
        .keys()
        .chain(o.forward.keys())
        .chain(o.rates.keys())
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| TopicRow {
            name,
            queue: o.stats.topics.get(name),
            forward: o.forward.get(name),
            rates: o.rates.get(name),
        })
        .filter(TopicRow::has_anything)
        .collect()
}

impl TopicRow<'_> {
    /// Whether the topic has anything to show: a built-in topic nobody
    /// posts to stays off the screen.
    fn has_anything(&self) -> bool {
        let queued = self
            .queue
            .is_some_and(|q| live(q) > 0 || q.dead.events > 0 || q.drops.values().any(|n| *n > 0));
        let forwarded = self
            .forward
            .is_some_and(|f| f.requests > 0 || f.collector != CollectorState::Idle);
        let moved = self
            .rates
            .is_some_and(|r| r.ins.iter().chain(&r.outs).any(|n| *n > 0));
        queued || forwarded || moved
    }
}

fn live(q: &TopicStats) -> u64 {
    q.ready.events + q.retrying.events + q.leased.events + q.uncommitted.events
}

fn state_style(state: CollectorState) -> Style {
    match state {
        CollectorState::Up => Style::new().fg(Color::Green),
        CollectorState::Down => Style::new().fg(Color::Red).bold(),
        CollectorState::RateLimited => Style::new().fg(Color::Yellow).bold(),
        CollectorState::Paused => Style::new().fg(Color::Magenta).bold(),
        _ => Style::new().fg(Color::DarkGray),
    }
}

/// The collector column: the state (and for how long) over the breaker.
fn collector_cell(row: &TopicRow, active: bool, at_ms: u64) -> Cell<'static> {
    let Some(f) = row.forward else {
        return Cell::from(Text::from(vec![
            Line::styled("no sink", Style::new().fg(Color::DarkGray)),
            Line::styled("stored only", Style::new().fg(Color::DarkGray)),
        ]));
    };
    if !active {
        return Cell::from(Line::styled("inactive", Style::new().fg(Color::Yellow)));
    }
    let mut state = f.collector.as_str().to_string();
    if let Some(since) = f.collector_since_ms
        && f.collector != CollectorState::Idle
    {
        state += &format!(" {}", short_age(at_ms.saturating_sub(since)));
    }
    let (breaker, style) = match f.breaker.as_str() {
        "open" => ("breaker open", Style::new().fg(Color::Red).bold()),
        "half_open" => ("breaker half-open", Style::new().fg(Color::Yellow)),
        _ => ("breaker closed", Style::new().fg(Color::DarkGray)),
    };
    Cell::from(Text::from(vec![
        Line::styled(state, state_style(f.collector)),
        Line::styled(breaker, style),
    ]))
}

fn number(n: u64) -> Cell<'static> {
    Cell::from(Line::from(thousands(n)).right_aligned())
}

/// The table's columns, in the order drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Topic,
    Collector,
    Ready,
    Retrying,
    Leased,
    Dead,
    Oldest,
    Rate,
    History,
}

/// The narrowest sparkline worth drawing.
const MIN_HISTORY: u16 = 10;

/// The columns that fit `width` and their widths: every one on a wide
/// terminal; on a narrow one the history goes first, then LEASED, OLDEST,
/// RETRYING and RATE, so the columns left are whole, header and all (topic,
/// collector, READY and DEAD always stay).
fn columns(width: u16, topic_width: u16) -> Vec<(Col, u16)> {
    let mut cols = vec![
        (Col::Topic, topic_width),
        (Col::Collector, 17),
        (Col::Ready, 9),
        (Col::Retrying, 9),
        (Col::Leased, 7),
        (Col::Dead, 7),
        (Col::Oldest, 7),
        (Col::Rate, 12),
        (Col::History, MIN_HISTORY),
    ];
    let need =
        |cols: &[(Col, u16)]| cols.iter().map(|(_, w)| *w).sum::<u16>() + cols.len() as u16 - 1;
    for drop in [
        Col::History,
        Col::Leased,
        Col::Oldest,
        Col::Retrying,
        Col::Rate,
    ] {
        if need(&cols) <= width {
            break;
        }
        cols.retain(|(c, _)| *c != drop);
    }
    cols
}

/// The topic table; `active` and `at_ms` are the overview's.
fn render_table(frame: &mut Frame, area: Rect, topics: &[TopicRow], active: bool, at_ms: u64) {
    let topic_width = topics
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 24) as u16;
    let cols = columns(area.width, topic_width);
    // The sparkline's width: what the other columns and the spacing leave.
    let fixed: u16 = cols
        .iter()
        .filter(|(c, _)| *c != Col::History)
        .map(|(_, w)| *w + 1)
        .sum();
    let spark_width = area.width.saturating_sub(fixed).max(1) as usize;
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|(c, w)| match c {
            Col::History => Constraint::Fill(1),
            _ => Constraint::Length(*w),
        })
        .collect();
    // One time scale for every topic, so their bars line up.
    let longest = topics
        .iter()
        .filter_map(|t| t.rates)
        .map(|r| r.ins.len().max(r.outs.len()))
        .max()
        .unwrap_or(0);
    let per_bar = seconds_per_bar(longest, spark_width);
    let span = longest.min(HISTORY_SECONDS) as u64 * 1000;
    let history = if per_bar > 1 {
        format!("LAST {} ({per_bar}s A BAR)", short_age(span))
    } else {
        format!("LAST {}", short_age(span))
    };
    let header = Row::new(cols.iter().map(|(c, _)| {
        let h = match c {
            Col::Topic => "TOPIC",
            Col::Collector => "COLLECTOR",
            Col::Ready => "READY",
            Col::Retrying => "RETRYING",
            Col::Leased => "LEASED",
            Col::Dead => "DEAD",
            Col::Oldest => "OLDEST",
            Col::Rate => "RATE",
            Col::History => history.as_str(),
        };
        if matches!(c, Col::Ready | Col::Retrying | Col::Leased | Col::Dead) {
            Cell::from(Line::from(h.to_string()).right_aligned())
        } else {
            Cell::from(h.to_string())
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let rows: Vec<Row> = topics
        .iter()
        .map(|t| {
            let q = t.queue.cloned().unwrap_or_default();
            let h = t.rates.cloned().unwrap_or_default();
            let (rin, rout) = h.recent(RATE_WINDOW);
            let peak = h.ins.iter().chain(&h.outs).copied().max().unwrap_or(0);
            Row::new(cols.iter().map(|(c, _)| match c {
                Col::Topic => Cell::from(Line::styled(t.name.to_string(), Style::new().bold())),
                Col::Collector => collector_cell(t, active, at_ms),
                Col::Ready => number(q.ready.events + q.uncommitted.events),
                Col::Retrying => number(q.retrying.events),
                Col::Leased => number(q.leased.events),
                Col::Dead => number(q.dead.events),
                Col::Oldest => {
                    Cell::from(q.oldest_age_ms.map(short_age).unwrap_or_else(|| "-".into()))
                }
                Col::Rate => Cell::from(Text::from(vec![
                    Line::raw(format!("in  {}", rate(rin))),
                    Line::raw(format!("out {}", rate(rout))),
                ])),
                Col::History => Cell::from(Text::from(vec![
                    Line::styled(
                        sparkline(&h.ins, spark_width, per_bar, peak),
                        Style::new().fg(Color::Cyan),
                    ),
                    Line::styled(
                        sparkline(&h.outs, spark_width, per_bar, peak),
                        Style::new().fg(Color::Green),
                    ),
                ])),
            }))
            .height(2)
        })
        .collect();
    frame.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        area,
    );
    if topics.is_empty() {
        let below = Rect {
            y: area.y + 1,
            height: area.height.saturating_sub(1),
            ..area
        };
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no events yet: topics show here once something is posted (POST /v1/events, /track, /v1/batch)",
                Style::new().fg(Color::DarkGray),
            )),
            below,
        );
    }
}

fn problems_of(o: &Overview) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let width = o
        .stats
        .topics
        .keys()
        .chain(o.forward.keys())
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(5);
    for (topic, f) in &o.forward {
        if let Some(e) = &f.last_error {
            let ago = f
                .last_error_at_ms
                .map(|t| format!(" {} ago", short_age(o.at_ms.saturating_sub(t))))
                .unwrap_or_default();
            lines.push(Line::from(vec![
                Span::styled(format!("{topic:<width$}  "), Style::new().bold()),
                Span::styled(format!("last error{ago}: "), Style::new().fg(Color::Red)),
                Span::raw(e.replace('\n', " ")),
            ]));
        }
    }
    for (topic, t) in &o.stats.topics {
        let drops: Vec<String> = t
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| format!("{reason} {}", thousands(*n)))
            .collect();
        if !drops.is_empty() {
            lines.push(Line::from(vec![
                Span::styled(format!("{topic:<width$}  "), Style::new().bold()),
                Span::styled("dropped: ", Style::new().fg(Color::Yellow)),
                Span::raw(drops.join(" · ")),
            ]));
        }
    }
    lines
}

/// How many one-second samples each sparkline bar spans so that the longest
/// history fits `width` bars: one second per bar until the history is wider
/// than the column, then more, up to the whole [`HISTORY_SECONDS`].
pub fn seconds_per_bar(longest: usize, width: usize) -> usize {
    longest.min(HISTORY_SECONDS).div_ceil(width.max(1)).max(1)
}

/// `values` (one per second, oldest first) as a sparkline of at most `width`
/// bars, newest at the right, each bar the mean of `per_bar` seconds; `peak`
/// is the full-height value.
pub fn sparkline(values: &[u64], width: usize, per_bar: usize, peak: u64) -> String {
    let mut bars: Vec<char> = values
        .rchunks(per_bar.max(1))
        .take(width.max(1))
        .map(|chunk| {
            let mean = chunk.iter().sum::<u64>() as f64 / chunk.len() as f64;
            if mean <= 0.0 || peak == 0 {
                BARS[0]
            } else {
                let level = 1 + (mean / peak as f64 * 6.0).round() as usize;
                BARS[level.min(BARS.len() - 1)]
            }
        })
        .collect();
    bars.reverse();
    bars.into_iter().collect()
}

/// Cuts `line` into lines of at most `width` characters, keeping each
/// span's style (a character-exact wrap, so the height is known in advance).
fn wrap_chars(line: Line<'static>, width: usize) -> Vec<Line<'static>> {
    let mut out = vec![Line::default()];
    let mut used = 0;
    for span in line.spans {
        let mut rest: &str = &span.content;
        while !rest.is_empty() {
            if used == width {
                out.push(Line::default());
                used = 0;
            }
            let take = rest
                .char_indices()
                .nth(width - used)
                .map_or(rest.len(), |(i, _)| i);
            let (head, tail) = rest.split_at(take);
            used += head.chars().count();
            if let Some(last) = out.last_mut() {
                last.spans.push(Span::styled(head.to_string(), span.style));
            }
            rest = tail;
        }
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Events per second, short: `0/s`, `2.5/s`, `840/s`, `12.3k/s`, `1.2M/s`.
pub fn rate(per_sec: f64) -> String {
    if per_sec <= 0.0 {
        "0/s".into()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1}/s")
    } else if per_sec < 10_000.0 {
        format!("{per_sec:.0}/s")
    } else if per_sec < 10_000_000.0 {
        format!("{:.1}k/s", per_sec / 1000.0)
    } else {
        format!("{:.1}M/s", per_sec / 1_000_000.0)
    }
}

/// A duration in ms, short: `850ms`, `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn short_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}
