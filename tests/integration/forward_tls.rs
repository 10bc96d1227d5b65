//! The daemon forwarding to an HTTPS collector, through the real binary and
//! its HTTP client: trusting the collector's CA as an operator makes the
//! platform's store trust it (`SSL_CERT_FILE`), and holding every event
//! while the certificate is not trusted (certificates made with `openssl`).

use crate::daemon_e2e::{accepted_uids, admin_stats, config};
use evspool_testkit::collector::Collector;
use evspool_testkit::daemon::start;
use evspool_testkit::{client, setup};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A TLS front on 127.0.0.1 for the plain collector at `to`, with the
/// certificate `server.pem` in `dir`; returns its `https://` URL.
async fn tls_front(dir: &Path, to: SocketAddr) -> String {
    let acceptor = evspool_testkit::tls::acceptor(dir, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    url
}

async fn post_uids(url: &str, uids: &[&str]) {
    let body: Vec<String> = uids.iter().map(|u| format!(r#"{{"uid":"{u}"}}"#)).collect();
    let resp = client()
        .post(format!("{url}/v1/events?topic=events"))
        .body(body.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_forwards_to_an_https_collector_its_roots_trust_and_holds_events_for_one_they_do_not()
 {
    let certs = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(certs.path());
    let collector = Collector::start().await;
    let front = tls_front(certs.path(), collector.addr).await;
    let sink_url = format!("{front}/ingest");

    // Trusted: SSL_CERT_FILE names the collector's CA.
    let trusted = setup(&config("", "", Some(&sink_url), ""));
    let ca = certs.path().join("ca.pem");
    let d = start(
        &trusted.dir,
        Some(&trusted.config),
        &[],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    )
    .await;
    post_uids(&d.url, &["tls-0", "tls-1", "tls-2"]).await;
    let want: BTreeSet<String> = (0..3).map(|i| format!("tls-{i}")).collect();
    assert!(
        collector
            .wait_for(Duration::from_secs(20), |_| accepted_uids(&collector)
                == want)
            .await,
        "collector got {:?}; daemon stderr:\n{}",
        accepted_uids(&collector),
        d.stderr()
    );

    // Untrusted: another CA signed nothing here. Events are held, never sent.
    let untrusted = setup(&config("", "", Some(&sink_url), ""));
    let other = certs.path().join("other-ca.pem");
    let u = start(
        &untrusted.dir,
        Some(&untrusted.config),
        &[],
        &[("SSL_CERT_FILE", other.to_str().unwrap())],
    )
    .await;
    post_uids(&u.url, &["held-0", "held-1"]).await;
    let refused = evspool_testkit::wait_until(Duration::from_secs(20), || {
        u.stderr().contains("tls handshake")
    })
    .await;
    assert!(refused, "no TLS refusal logged; stderr:\n{}", u.stderr());
    assert!(u.stderr().contains("certificate"), "{}", u.stderr());
    assert_eq!(
        accepted_uids(&collector),
        want,
        "nothing of the untrusted daemon's arrived"
    );
    let stats = admin_stats(&client(), &u, None).await;
    assert_eq!(stats.total.events, 2, "both events still queued: {stats:?}");
}
