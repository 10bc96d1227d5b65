//! The store trusts nothing it does not own (issue 22): a directory of
//! another user, or one others can write, is refused with exit code 5 before
//! anything in it is touched; links planted at the files evspool opens at
//! the top of the store are not followed; the CLI sends nothing to an admin
//! socket served by another user; a non-empty directory that is not a store
//! is never changed; every subcommand uses the config file's `dir`; `export
//! -o` leaves its file owner-only.
//!
//! The tests run as root (as CI does) and make `nobody` the other user; where
//! they cannot (not root) they say so and pass, unless
//! `EVSPOOL_REQUIRE_ROOT_TESTS=1`.

use crate::cli_e2e::evspool;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// `nobody` on Debian and most Linux distributions.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let msg = "this security test needs root (to give files to user nobody)";
    if std::env::var("EVSPOOL_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
        panic!("{msg}; EVSPOOL_REQUIRE_ROOT_TESTS=1 requires it");
    }
    eprintln!("{msg}; skipped");
    false
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn output(c: &mut assert_cmd::Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_store_of_another_user_is_refused_with_exit_5_and_its_planted_links_are_not_written() {
    if !is_root() {
        return;
    }
    // The issue's attack: nobody makes `evspool-data/` with links at the
    // lock and the identity's temporary file pointing at root's files.
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let victim_a = tmp.path().join("root-file-a");
    let victim_b = tmp.path().join("root-file-b");
    std::fs::write(&victim_a, "root's a\n").unwrap();
    std::fs::write(&victim_b, "root's b\n").unwrap();
    let dir = tmp.path().join("evspool-data");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&victim_a, dir.join("evspool.lock")).unwrap();
    std::os::unix::fs::symlink(&victim_b, dir.join("evspool.id.tmp")).unwrap();
    std::os::unix::fs::lchown(dir.join("evspool.lock"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::lchown(dir.join("evspool.id.tmp"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    set_mode(&dir, 0o755);

    for args in [
        vec!["stats"],
        vec!["send", "--topic", "events", r#"{"card":"4111"}"#],
    ] {
        let (code, _, err) = output(evspool(&dir).args(&args));
        assert_eq!(code, 5, "{args:?}: {err}");
        assert!(err.contains("belongs to another user"), "{err}");
        assert!(
            err.contains("nobody") && err.contains("uid 65534") && err.contains("0755"),
            "names the owner and the mode: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&victim_a).unwrap(), "root's a\n");
    assert_eq!(std::fs::read_to_string(&victim_b).unwrap(), "root's b\n");
    assert_eq!(mode(&dir), 0o755, "nothing in it was changed");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "nothing created"
    );
    // The library says the same, typed.
    let err = evspool::Queue::open(&dir, evspool::QueueConfig::default()).unwrap_err();
    assert!(
        matches!(
            err,
            evspool::OpenError::Untrusted {
                owner_uid: NOBODY,
                mode: 0o755,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_store_writable_by_group_or_others_or_under_a_world_writable_parent_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (code, _, err) = output(evspool(&dir).args(["send", "--topic", "events", "{}"]));
    assert_eq!(code, 0, "{err}");
    for m in [0o770, 0o707] {
        set_mode(&dir, m);
        let (code, _, err) = output(evspool(&dir).args(["stats"]));
        assert_eq!(code, 5, "{err}");
        assert!(err.contains("writable by its group or by others"), "{err}");
        assert_eq!(mode(&dir), m, "the mode is left for the operator to fix");
    }
    set_mode(&dir, 0o700);
    set_mode(tmp.path(), 0o777);
    let (code, _, err) = output(evspool(&dir).args(["stats"]));
    set_mode(tmp.path(), 0o700);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("sticky"), "{err}");
    let (code, _, err) = output(evspool(&dir).args(["stats"]));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn links_planted_in_our_own_store_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let target = tmp.path().join("target");
    std::fs::write(&target, "keep\n").unwrap();
    let cfg = evspool::QueueConfig::default();
    evspool::Queue::open(&dir, cfg.clone()).unwrap().close();
    // The identity's temporary name: removed and replaced, never written through.
    std::fs::remove_file(dir.join("evspool.id")).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("evspool.id.tmp")).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let q = loop {
        match evspool::Queue::open(&dir, cfg.clone()) {
            Err(evspool::OpenError::Locked { .. }) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    q.close();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    assert!(
        std::fs::symlink_metadata(dir.join("evspool.id"))
            .unwrap()
            .is_file()
    );
    // The lock and the ballast: an open through a link fails and says why.
    for name in ["evspool.lock", "ballast"] {
        std::fs::remove_file(dir.join(name)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(name)).unwrap();
    }
    let err = evspool::Queue::open(&dir, cfg.clone()).unwrap_err();
    assert!(
        format!("{err:#}").contains("evspool.lock")
            || format!("{:?}", err).contains("symbolic link"),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    std::fs::remove_file(dir.join("evspool.lock")).unwrap();
    evspool::Queue::open(&dir, cfg).unwrap().close();
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "keep\n",
        "the ballast link was not filled"
    );
}

#[test]
fn a_directory_holding_only_dotfiles_is_not_taken_for_a_store_nor_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("home");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(".bashrc"), "x").unwrap();
    set_mode(&dir, 0o755);
    set_mode(&dir.join(".bashrc"), 0o644);
    let (code, _, err) = output(evspool(&dir).args(["send", "--topic", "events", "{}"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not an evspool store") && err.contains(".bashrc"),
        "{err}"
    );
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join(".bashrc")), 0o644);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn send_import_and_stats_use_the_config_files_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("configured");
    let cfg = tmp.path().join("evspool.toml");
    std::fs::write(&cfg, format!("dir = {:?}\n", store.to_str().unwrap())).unwrap();
    let input = tmp.path().join("in.ndjson");
    std::fs::write(&input, "{\"n\":1}\n{\"n\":2}\n").unwrap();
    let bin = assert_cmd::cargo::cargo_bin("evspool");
    let run = |args: &[&str]| {
        let mut c = assert_cmd::Command::new(&bin);
        for v in evspool_testkit::daemon::ENV {
            c.env_remove(v);
        }
        c.current_dir(tmp.path())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .timeout(Duration::from_secs(60));
        output(&mut c)
    };
    let (code, _, err) = run(&["send", "--topic", "events", "{}"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["import", "--topic", "events", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(store.join("evspool.id").is_file(), "the configured store");
    assert!(
        !tmp.path().join("evspool-data").exists(),
        "nothing written to ./evspool-data"
    );
    let (code, out, err) = run(&["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let stats: evspool::Stats = serde_json::from_str(&out).unwrap();
    assert_eq!(stats.total.events, 3);
}

#[test]
fn export_into_an_existing_world_readable_file_leaves_it_owner_only_and_refuses_a_link() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let (code, _, err) = output(evspool(&dir).args(["send", "--topic", "events", r#"{"a":1}"#]));
    assert_eq!(code, 0, "{err}");
    let out = tmp.path().join("out.ndjson");
    std::fs::write(&out, "old\n").unwrap();
    set_mode(&out, 0o644);
    let (code, _, err) = output(evspool(&dir).args(["export", "-o", out.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(mode(&out), 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("old") && text.lines().count() == 1, "{text}");
    let link = tmp.path().join("link.ndjson");
    let target = tmp.path().join("target");
    std::fs::write(&target, "keep\n").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, _, err) = output(evspool(&dir).args(["export", "-o", link.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
}

#[test]
fn the_cli_sends_nothing_to_an_admin_socket_served_by_another_user() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    // The store is ours and held (locked) by this test process, as a daemon
    // would hold it; its address file names a socket elsewhere.
    let q = evspool::Queue::open(&dir, evspool::QueueConfig::default()).unwrap();
    let fake_dir = tmp.path().join("fake");
    std::fs::create_dir(&fake_dir).unwrap();
    let fake = fake_dir.join("fake.sock");
    std::fs::write(
        dir.join("evspool.admin"),
        serde_json::json!({"url": "http://127.0.0.1:9", "pid": 1, "socket": fake}).to_string(),
    )
    .unwrap();
    // The fake daemon: a socket listened on by a thread running as nobody
    // (SO_PEERCRED reports the listener's credentials at listen()).
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fake.clone();
    let listener = std::thread::spawn(move || {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
        let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&fd, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        let nobody = rustix::process::Uid::from_raw(NOBODY);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        rustix::net::listen(&fd, 16).unwrap();
        tx.send(()).unwrap();
        let mut received = 0usize;
        let deadline = Instant::now() + Duration::from_secs(30);
        rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK).unwrap();
        while Instant::now() < deadline {
            match rustix::net::accept(&fd) {
                Ok(c) => {
                    let mut s = std::os::unix::net::UnixStream::from(c);
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                        received += n;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if FAKE_DONE.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        received
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (code, out, err) = output(evspool(&dir).args([
        "send",
        "--topic",
        "events",
        r#"{"card":"4111111111111111"}"#,
    ]));
    FAKE_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
    let received = listener.join().unwrap();
    q.close();
    assert_eq!(code, 5, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("nobody") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(out.is_empty(), "no id printed: {out}");
    assert_eq!(received, 0, "the fake daemon got no byte");
}

/// Tells the fake daemon of the peer test to stop.
static FAKE_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[test]
fn the_owner_of_a_store_made_by_root_for_nobody_is_named_in_the_refusal() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), None).unwrap();
    set_mode(&dir, 0o700);
    let err = evspool::Queue::open(&dir, evspool::QueueConfig::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("nobody") && text.contains("0700"), "{text}");
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), NOBODY);
}
