//! Helpers shared by the benches: how the binary was invoked and how big a run
//! is, the payloads, a registry of measured rates for the closing table, and
//! process memory. The baselines live in [`baseline`]; the peer crates
//! (yaque, queue-file, SQLite) in [`peers`]; the durable-enqueue goals in
//! [`goals`], the sidecar's ingest in [`sidecar`], the cost of a topic in [`topics`].

pub mod baseline;
pub mod goals;
pub mod peers;
pub mod sidecar;
pub mod topics;

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The one topic every scenario writes to.
pub const TOPIC: &str = "track";
/// Size of every payload: a typical Mixpanel `/track` event.
pub const PAYLOAD_BYTES: usize = 300;
/// Events per lease, per sled removal batch and per `fdatasync` of the append log.
/// Defaults to 50: Mixpanel's batch limit and evspool's default chunk size.
pub const BATCH: usize = 50;
/// Distinct payloads cycled through by the producers.
pub const DISTINCT_PAYLOADS: usize = 4096;

/// How the bench binary was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `cargo bench`: measure.
    Bench,
    /// `cargo test --benches` (or `-- --test`): run every scenario once, tiny.
    Test,
    /// `-- --list`: criterion only lists the benchmarks.
    List,
}

impl Mode {
    /// Reads the mode from the arguments the way criterion does.
    pub fn from_args() -> Mode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        if has("--list") {
            Mode::List
        } else if has("--bench") && !has("--test") {
            Mode::Bench
        } else {
            Mode::Test
        }
    }
}

/// How much work each scenario does per iteration.
#[derive(Clone, Debug)]
pub struct Scale {
    /// Printed in the report.
    pub label: &'static str,
    /// Whether figures mean anything (not under `cargo test`): targets are judged.
    pub judged: bool,
    /// Buffered events per iteration.
    pub buffered_events: usize,
    /// Records per iteration of the append-log baselines.
    pub file_records: usize,
    /// Events in the backlog that is drained, measured for RSS and reopened.
    pub backlog: usize,
    /// Durable events each producer writes per iteration, by producer count.
    pub durable_per_producer: fn(usize) -> usize,
}

impl Scale {
    /// The sizes for `mode`; `EVSPOOL_BENCH_SMALL=1` shrinks the backlog to 100k.
    pub fn new(mode: Mode) -> Scale {
        let small = std::env::var("EVSPOOL_BENCH_SMALL").is_ok_and(|v| v != "0" && !v.is_empty());
        match mode {
            Mode::Test | Mode::List => Scale {
                label: "test (tiny sizes, figures meaningless)",
                judged: false,
                buffered_events: 2_000,
                file_records: 500,
                backlog: 2_000,
                durable_per_producer: |_| 4,
            },
            Mode::Bench => Scale {
                label: if small {
                    "small (EVSPOOL_BENCH_SMALL=1): 100k backlog"
                } else {
                    "full: 1M backlog"
                },
                judged: true,
                buffered_events: 100_000,
                file_records: 20_000,
                backlog: if small { 100_000 } else { 1_000_000 },
                // Enough that one iteration takes ~0.1–0.5 s at the expected rates.
                durable_per_producer: |p| match p {
                    1 => 500,
                    2..=16 => 200,
                    _ => 100,
                },
            },
        }
    }
}

/// `n`-th payload: a Mixpanel-style event, valid JSON, exactly [`PAYLOAD_BYTES`] long.
pub fn payload(n: usize) -> Bytes {
    const NAMES: [&str; 4] = ["Viewed Page", "Signed Up", "Added To Cart", "Checkout"];
    let head = format!(
        concat!(
            r#"{{"event":"{name}","properties":{{"token":"e3bc4100330c35722740fb8c6f5abddc","#,
            r#""distinct_id":"user-{user:08}","time":{time},"$insert_id":"{insert:016x}","#,
            r#""$os":"Linux","$browser":"Firefox","$current_url":"https://example.com/p","#,
            r#""plan":"pro","pad":""#
        ),
        name = NAMES[n % NAMES.len()],
        user = n.wrapping_mul(7919) % 100_000_000,
        time = 1_700_000_000_000u64 + n as u64,
        insert = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let tail = r#""}}"#;
    let pad = PAYLOAD_BYTES
        .checked_sub(head.len() + tail.len())
        .expect("the event template fits in PAYLOAD_BYTES");
    let mut s = head;
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    debug_assert_eq!(s.len(), PAYLOAD_BYTES);
    Bytes::from(s)
}

/// [`DISTINCT_PAYLOADS`] payloads, checked to be valid JSON of the right size.
///
/// Static (leaked once, 1.2 MB): cloning one to hand it to evspool costs
/// nothing, as the peers borrow theirs as `&[u8]`; a refcounted `Bytes`
/// would make 16 producers contend on the payloads' counters, a cost of the
/// harness, not of either store.
pub fn payloads() -> Vec<Bytes> {
    let all: Vec<Bytes> = (0..DISTINCT_PAYLOADS)
        .map(|i| Bytes::from_static(Box::leak(payload(i).to_vec().into_boxed_slice())))
        .collect();
    for p in all.iter().take(8) {
        assert_eq!(p.len(), PAYLOAD_BYTES);
        serde_json::from_slice::<serde_json::Value>(p).expect("payload is valid JSON");
    }
    all
}

/// Peak resident set size of this process so far (`VmHWM`), in KiB.
pub fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes this process has handed to `write`-family syscalls so far (`wchar` in
/// `/proc/self/io`): with the payload bytes, the write amplification.
pub fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let line = io.lines().find(|l| l.starts_with("wchar:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A fresh directory for one iteration, under `EVSPOOL_BENCH_DIR` if set
/// (default: the system temp dir; use a real disk, not tmpfs, or `fsync` is free).
pub fn temp_dir() -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("evspool-bench-");
    match std::env::var_os("EVSPOOL_BENCH_DIR") {
        Some(base) => b.tempdir_in(base),
        None => b.tempdir(),
    }
    .expect("create a temp dir")
}

/// Copies the tree at `src` into `dst` (which must not exist yet).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create copy target");
    for entry in std::fs::read_dir(src).expect("read template dir") {
        let entry = entry.expect("template dir entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).expect("copy template file");
        }
    }
}

/// Events per second of every timed iteration, by criterion benchmark id.
///
/// Criterion keeps its own statistics; this registry exists so the closing
/// table can put each figure beside its baseline. Warm-up iterations are
/// included (they do the same work), and the table shows the median.
static RATES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Records one timed iteration of benchmark `id`.
pub fn record(id: &str, events: u64, elapsed: Duration) {
    let rate = events as f64 / elapsed.as_secs_f64().max(1e-9);
    RATES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id.to_string())
        .or_default()
        .push(rate);
}

/// Median events per second of benchmark `id`, if it ran.
pub fn median_rate(id: &str) -> Option<f64> {
    let rates = RATES.lock().unwrap_or_else(|e| e.into_inner());
    let mut v = rates.get(id)?.clone();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// `1234567.8` → `"1,234,568"`.
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
