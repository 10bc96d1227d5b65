//! Exit codes. Scripts can rely on these; they are listed in README.

/// Success (also when stdout was closed early, e.g. piped into `head`).
pub const OK: u8 = 0;
/// An error: the message on stderr says what and where.
pub const ERROR: u8 = 1;
/// Bad usage: an unknown flag, a missing argument, a destructive command
/// without `--yes` or `--dry-run` (clap also exits 2 for usage errors).
pub const USAGE: u8 = 2;
/// The store directory is locked by another process and no daemon answered
/// on its admin API.
pub const LOCKED: u8 = 3;
/// Partial failure: some of the work failed (bad import lines, a drain that
/// ended with events still queued); the rest was done.
pub const PARTIAL: u8 = 4;

/// Refused for safety: the store directory is not this user's (another
/// owner, or writable by others), or the admin socket is served by another
/// user. Nothing was read, written or sent.
pub const UNTRUSTED: u8 = 5;

/// An error carrying the exit code it should produce.
#[derive(Debug)]
pub struct Exit {
    /// The process exit code.
    pub code: u8,
    /// What to print on stderr (may be empty when output was already printed).
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Builds an error with a specific exit code.
pub fn fail(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        message: message.into(),
    })
}

#[cfg(test)]
mod tests {
    /// README's exit-code table lists every code, in one table.
    #[test]
    fn the_readme_lists_every_exit_code_in_one_table() {
        let readme = include_str!("../../README.md");
        let at = readme
            .find("### Exit codes")
            .expect("README has an exit-code section");
        let table: Vec<&str> = readme[at..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect();
        let codes: Vec<&str> = table
            .iter()
            .skip(2)
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim)
            .collect();
        let expected = [
            super::OK,
            super::ERROR,
            super::USAGE,
            super::LOCKED,
            super::PARTIAL,
            super::UNTRUSTED,
        ]
        .map(|c| c.to_string());
        let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
        want.push("130, 143");
        assert_eq!(codes, want, "{table:#?}");
    }
}
