//! What a test needs that `cargo test` cannot provide, and how a test that
//! cannot run shows up: never as passed.
//!
//! Tests that need root (switching to another user, mounting a tmpfs) are
//! `#[ignore]`d, so a run without root counts them as ignored in its totals.
//! As root, `cargo test --all-targets -- --include-ignored` runs them (`.ci/run`
//! does); included without root, they fail saying why. `EVSPOOL_REQUIRE_ALL=1`
//! (and CI, where `CI` is set) asks for everything: then
//! `requirements::every_suite_runs_when_everything_is_required` fails naming
//! each missing prerequisite, and the power-loss suite fails instead of
//! reporting itself skipped.

/// Whether this run asks for every suite: `EVSPOOL_REQUIRE_ALL=1`, or CI
/// (the `CI` variable set to anything but `false` or `0`).
pub fn everything_required() -> bool {
    std::env::var("EVSPOOL_REQUIRE_ALL").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether this test binary was asked to run its ignored tests too.
pub fn ignored_included() -> bool {
    std::env::args().any(|a| a == "--include-ignored" || a == "--ignored")
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) only reads the process's effective uid.
    unsafe { libc::geteuid() == 0 }
}

/// For a root-only test that was asked to run: fails it, naming `what`
/// needs root, unless the process is root.
pub fn root(what: &str) {
    assert!(
        is_root(),
        "{what} needs root, and this run is not root: it cannot run here (without \
         `--include-ignored` it counts as ignored)"
    );
}

/// Whether `tool` is on `PATH` (or is a path that exists).
pub fn has_tool(tool: &str) -> bool {
    if tool.contains('/') {
        return std::path::Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}
