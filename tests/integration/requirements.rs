//! The prerequisites of the whole suite, checked when a run asks for every
//! suite (`EVSPOOL_REQUIRE_ALL=1`, or CI): a suite that cannot run then fails
//! the run instead of being skipped or ignored. See `evspool_testkit::requires`.

use evspool_testkit::requires;

/// Everything the suite needs beyond `cargo test`, and why; empty when all is there.
fn missing() -> Vec<String> {
    let mut out = Vec::new();
    for (tool, why) in [
        ("tmux", "`evspool top` end to end (top_e2e)"),
        ("curl", "the admin API as another user (admin_access)"),
        (
            "setpriv",
            "switching to user nobody (admin_access; util-linux)",
        ),
        ("strace", "`evspool send`'s system calls (queue_durability)"),
        (
            "promtool",
            "checking `/metrics` (first_hour; Debian's `prometheus` package)",
        ),
    ] {
        if !requires::has_tool(tool) {
            out.push(format!("{tool}: for {why}"));
        }
    }
    let nats = std::env::var("EVSPOOL_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    if !requires::has_tool(&nats) {
        out.push(format!(
            "{nats}: for the NATS sink's tests (nats_sink; apt-get install nats-server, or EVSPOOL_NATS_SERVER)"
        ));
    }
    if !requires::is_root() {
        out.push(
            "root: for the tests that switch user or mount a tmpfs (admin_access, full_disk) and the power-loss suite"
                .into(),
        );
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        out.push("/dev/fuse: for the power-loss suite (LazyFS)".into());
    }
    if !requires::ignored_included() {
        out.push(
            "`-- --include-ignored`: the root-only tests are #[ignore]d unless it is given".into(),
        );
    }
    out
}

#[test]
fn every_suite_runs_when_everything_is_required() {
    let missing = missing();
    if !requires::everything_required() {
        // Not asked for everything: the suites that cannot run show as
        // ignored (root-only), skipped (power loss) or failed (a missing tool).
        if !missing.is_empty() {
            eprintln!("not everything can run here:\n  {}", missing.join("\n  "));
        }
        return;
    }
    assert!(
        missing.is_empty(),
        "EVSPOOL_REQUIRE_ALL=1 (or CI) asks for every suite, and these are missing:\n  {}",
        missing.join("\n  ")
    );
}
