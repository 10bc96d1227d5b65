//! evspool against the crates a user would pick instead — yaque, queue-file
//! (Tape's `QueueFile`), SQLite in WAL mode — and the same-run baselines (sled,
//! one key per event; an append-only file), on 300-byte JSON events.
//! The rows and what each peer syncs are documented in `common/peers.rs`.
//!
//! ```text
//! cargo bench --bench peers                         # criterion estimates + the table
//! cargo bench --bench peers -- drain                # one operation
//! EVSPOOL_BENCH_SMALL=1 cargo bench --bench peers   # 100k backlog
//! cargo run --release --example perf_report peers   # the same table without criterion
//! ```
//!
//! Under `cargo test --benches` every row runs once with tiny sizes.

use evspool_testkit::bench as common;

use common::Mode;
use common::peers::{CASES, Ctx, Op, Rates, Sizes, fill_backlog, run_drain, run_write, table};
use criterion::{Criterion, SamplingMode, Throughput};
use std::cell::{OnceCell, RefCell};
use std::time::Duration;

fn main() {
    let mode = Mode::from_args();
    let small = std::env::var("EVSPOOL_BENCH_SMALL").is_ok_and(|v| v != "0" && !v.is_empty());
    let sizes = match mode {
        Mode::Bench if small => Sizes::quick(),
        Mode::Bench => Sizes::full(),
        Mode::Test | Mode::List => Sizes::test(),
    };
    let ctx = Ctx::new(sizes);
    let rates = RefCell::new(Rates::new());
    let mut c = Criterion::default().configure_from_args();
    for (op, group) in [
        (Op::Enqueue, "peers_enqueue"),
        (Op::Durable, "peers_durable"),
        (Op::Drain, "peers_drain"),
    ] {
        let mut g = c.benchmark_group(group);
        g.sample_size(10);
        g.sampling_mode(SamplingMode::Flat);
        if op == Op::Drain {
            // Each iteration copies a filled template (untimed): few, long iterations.
            g.warm_up_time(Duration::from_millis(1));
            g.measurement_time(Duration::from_secs(1));
        }
        for case in CASES.iter().filter(|c| c.op == op) {
            let n = ctx.events(case);
            g.throughput(Throughput::Elements(n as u64));
            let name = case.id.split('/').nth(1).unwrap_or(case.id);
            let template = OnceCell::new();
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = common::temp_dir();
                        let t = if op == Op::Drain {
                            let template = template.get_or_init(|| {
                                let t = common::temp_dir();
                                fill_backlog(&ctx, case, t.path());
                                t
                            });
                            let path = dir.path().join("s");
                            common::copy_dir(template.path(), &path);
                            run_drain(&ctx, case, &path)
                        } else {
                            run_write(&ctx, case, dir.path())
                        };
                        rates
                            .borrow_mut()
                            .entry(case.id)
                            .or_default()
                            .push(n as f64 / t.as_secs_f64().max(1e-9));
                        total += t;
                    }
                    total
                });
            });
        }
        g.finish();
    }
    c.final_summary();
    if mode != Mode::List {
        println!("\n## evspool vs peers ({})\n", ctx.sizes.label);
        println!("{}", table(&ctx, &rates.borrow(), mode == Mode::Bench));
    }
}
