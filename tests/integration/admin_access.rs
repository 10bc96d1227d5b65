//! The admin API is the store owner's: on the admin socket (owner-only by the
//! store directory's `0700` and the socket's own `0600`), and on TCP only with
//! a token. Tried as another local user: the tests run as root and drop to
//! `nobody` for the client (`curl` under util-linux's `setpriv`, with no
//! supplementary groups; `setpriv` rather than `CommandExt::uid`, so the
//! spawn stays a `posix_spawn` and this process's descriptors, such as a
//! store lock another test is about to release, are not held by a forked
//! copy of it).
//!
//! Dropping to another user needs root: that test is `#[ignore]`d, so a run
//! without root counts it as ignored; as root, `-- --include-ignored` runs it
//! (`.ci/run` does). See `evspool_testkit::requires`.

use crate::daemon_e2e::config;
use evspool_testkit::daemon::start;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

/// `nobody` on Debian and most Linux distributions.
const NOBODY: u32 = 65534;

/// `curl ARGS`, as user `uid` (and group `uid`, no others) when given, else as ourselves.
fn curl(uid: Option<u32>, args: &[&str]) -> Output {
    let mut c = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    c.args([
        "--silent",
        "--show-error",
        "--max-time",
        "10",
        "--noproxy",
        "*",
    ])
    .args(args);
    let out = c.output().unwrap_or_else(|e| {
        panic!(
            "cannot run curl ({e}): this test needs curl and setpriv (apt-get install curl util-linux; .ci/run does)"
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("setpriv:") && !stderr.contains("No such file"),
        "cannot run curl as user {uid:?}: {stderr}"
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `GET`/`POST` `url` through the admin socket of `dir`.
fn socket_request(uid: Option<u32>, dir: &Path, method: &str, path: &str) -> Output {
    let socket = dir.join("evspool.sock");
    let url = format!("http://evspool{path}");
    let mut args = vec![
        "--unix-socket",
        socket.to_str().unwrap(),
        "-X",
        method,
        "--fail-with-body",
    ];
    if method == "POST" {
        args.extend(["-H", "content-type: application/json", "--data"]);
        args.push(r#"{"topic":"events"}"#);
    }
    args.push(&url);
    curl(uid, &args)
}

/// The HTTP status of `method url` over TCP (as `nobody` when `uid` is given).
fn tcp_status(uid: Option<u32>, method: &str, url: &str, body: Option<&str>) -> u16 {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "-X", method];
    if let Some(b) = body {
        args.extend(["-H", "content-type: application/json", "--data", b]);
    }
    args.push(url);
    let out = curl(uid, &args);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{method} {url}: {}", text(&out)))
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: as root, run with `-- --include-ignored` (.ci/run does)"]
async fn another_user_is_refused_the_admin_api_on_the_socket_and_on_tcp_while_the_owners_cli_works()
{
    evspool_testkit::requires::root("switching to user nobody");
    // The parent is world-traversable, so what keeps `nobody` out is the
    // store directory's mode and the socket's, not the temp dir's.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("store");
    let cfg = tmp.path().join("evspool.toml");
    std::fs::write(&cfg, config("active = false", "", None, "")).unwrap();
    let d = start(&dir, Some(&cfg), &[], &[]).await;

    // The switch is real: curl runs as nobody (it cannot read a root-only file).
    let secret = tmp.path().join("root-only");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let probe = curl(Some(NOBODY), &[&format!("file://{}", secret.display())]);
    assert!(
        !probe.status.success(),
        "curl still runs as root: {}",
        text(&probe)
    );

    // Two events from the owner; ingest on loopback is open to every local user,
    // as documented, so nobody's event is accepted too.
    let ingest = format!("{}/v1/events?topic=events", d.url);
    let posted = tcp_status(None, "POST", &ingest, Some(r#"[{"n":1},{"n":2}]"#));
    assert_eq!(posted, 202);
    let posted = tcp_status(Some(NOBODY), "POST", &ingest, Some(r#"{"n":3}"#));
    assert_eq!(posted, 202, "ingest stays open on loopback");

    // The socket: owner-only twice over.
    let socket = dir.join("evspool.sock");
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(&socket), 0o600, "the socket itself is owner-only");
    assert_eq!(mode(&dir), 0o700, "the store directory is owner-only");

    let owner = socket_request(None, &dir, "GET", "/admin/stats");
    assert!(
        owner.status.success(),
        "the owner reaches it: {}",
        text(&owner)
    );
    let stats: serde_json::Value = serde_json::from_slice(&owner.stdout).unwrap();
    assert_eq!(stats["total"]["events"], 3);

    for (method, path) in [
        ("GET", "/admin/stats"),
        ("GET", "/admin/events?topic=events"),
        ("POST", "/admin/purge"),
    ] {
        let other = socket_request(Some(NOBODY), &dir, method, path);
        assert_eq!(
            other.status.code(),
            Some(7),
            "{method} {path} on the socket as nobody must fail to connect: {}",
            text(&other)
        );
    }
    // Even with the directory opened for traversal, the socket's 0600 refuses.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let other = socket_request(Some(NOBODY), &dir, "POST", "/admin/purge");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        other.status.code(),
        Some(7),
        "the socket's own mode refuses nobody: {}",
        text(&other)
    );

    // TCP without a token serves no admin route at all, to anybody.
    for uid in [Some(NOBODY), None] {
        let who = if uid.is_some() { "nobody" } else { "root" };
        for (method, path, body) in [
            ("GET", "/admin/stats", None),
            ("GET", "/admin/events?topic=events&n=100", None),
            ("GET", "/admin/overview", None),
            ("POST", "/admin/purge", Some(r#"{"topic":"events"}"#)),
            (
                "POST",
                "/admin/replay",
                Some(r#"{"topic":"events","dead":true}"#),
            ),
            ("POST", "/admin/drain?timeout_ms=100", None),
        ] {
            let status = tcp_status(uid, method, &format!("{}{path}", d.url), body);
            assert_eq!(status, 404, "{method} {path} over TCP as {who}");
        }
    }

    // Nothing was read or destroyed; the owner's CLI works through the socket.
    let out = crate::cli_e2e::evspool(&dir)
        .args(["stats", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: evspool::Stats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        stats.topics["events"].ready.events, 3,
        "all three events kept"
    );
    let out = crate::cli_e2e::evspool(&dir)
        .args(["purge", "--topic", "events", "--yes"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 events purged"),
        "the owner may purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_admin_api_is_served_on_tcp_to_bearers_of_it_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let cfg = tmp.path().join("evspool.toml");
    std::fs::write(&cfg, config("active = false", "", None, "")).unwrap();
    const TOKEN: &str = "admin-access-token";
    let d = start(&dir, Some(&cfg), &[], &[("EVSPOOL_TOKEN", TOKEN)]).await;
    let c = evspool_testkit::client();
    let url = format!("{}/admin/overview", d.url);
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no token");
    let resp = c.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401, "wrong token");
    let resp = c.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let overview: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(overview["pid"], d.pid());
    // The socket needs no token: the file system already checked who connects.
    let v = evspool_testkit::admin::get(&dir, "/admin/overview").await;
    assert_eq!(v["pid"], d.pid());
}
