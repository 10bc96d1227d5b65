//! HTTP/2 collectors (ALPN `h2`): reached, reused, and what is sent again
//! when one refuses a stream or goes away (found by the reviews).

use super::*;

/// A TLS server for 127.0.0.1 speaking only HTTP/2 (ALPN `h2`), answering 200.
async fn h2_only_tls_server(dir: &std::path::Path) -> String {
    let (url, _) = tls_listener(dir, &[b"h2"], |_, tls, _| async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"ok",
            ))))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    })
    .await;
    url
}

#[tokio::test]
async fn an_https_collector_that_speaks_only_http2_is_still_reached_as_it_was_with_reqwest() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    let url = h2_only_tls_server(dir.path()).await;
    // The client the sinks had before (http::build_client, reqwest with its
    // `http2` feature), trusting the same CA.
    crate::forward::sink::http::install_crypto_provider();
    let before = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap())
                .unwrap(),
        )
        .build()
        .unwrap();
    let old = before.post(&url).body("[1]").send().await.unwrap();
    assert_eq!(old.status(), 200, "reqwest reached it");
    let ca = CertificateDer::from_pem_file(dir.path().join("ca.pem")).unwrap();
    let c = HttpClient::with(&config(), vec![ca], None).unwrap();
    let r = post(&c, &url, b"[1]").await;
    assert!(
        r.as_ref().is_ok_and(|r| r.status == 200),
        "{:?}",
        r.map(|r| r.status)
    );
}

/// An HTTP/2-only TLS collector (hyper's server) counting connections and
/// requests; `chunked`: each answer in two DATA frames without a length.
/// With `close_idle_after`, each connection is shut down gracefully
/// (GOAWAY) that long after it was accepted.
async fn h2_server(
    dir: &std::path::Path,
    chunked: bool,
    close_idle_after: Option<Duration>,
) -> (String, Arc<Counts>) {
    tls_listener(dir, &[b"h2"], move |_, tls, c| async move {
        use http_body_util::BodyExt;
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let c = c.clone();
            async move {
                c.heads
                    .lock()
                    .unwrap()
                    .push(format!("{} {:?}", req.uri(), req.headers()));
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                c.bodies.lock().unwrap().push(body.to_vec());
                c.requests.fetch_add(1, Ordering::SeqCst);
                let body: http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> =
                    if chunked {
                        // No content-length: DATA frames, then an empty one ending the stream.
                        paced_body(vec![Bytes::from_static(b"o"), Bytes::from_static(b"k")]).boxed()
                    } else {
                        Full::new(Bytes::from_static(b"ok")).boxed()
                    };
                Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
            }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), svc);
        let mut conn = std::pin::pin!(conn);
        if let Some(after) = close_idle_after {
            tokio::select! {
                _ = conn.as_mut() => return,
                () = tokio::time::sleep(after) => conn.as_mut().graceful_shutdown(),
            }
        }
        let _ = conn.await;
    })
    .await
}

/// A body stream of `chunks`, each after a short pause.
fn paced_body(
    chunks: Vec<Bytes>,
) -> impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + 'static
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for ch in chunks {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if tx.send(ch).await.is_err() {
                return;
            }
        }
    });
    struct RxBody(tokio::sync::mpsc::Receiver<Bytes>);
    impl hyper::body::Body for RxBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    RxBody(rx)
}

fn h2_client(dir: &std::path::Path, cfg: &HttpClientConfig) -> HttpClient {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap();
    HttpClient::with(cfg, vec![ca], None).unwrap()
}

#[tokio::test]
async fn sequential_requests_to_an_http2_collector_share_one_connection_whether_answers_have_a_length_or_stream()
 {
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    for streaming in [false, true] {
        let (url, counts) = h2_server(dir.path(), streaming, None).await;
        let c = h2_client(dir.path(), &config());
        for _ in 0..5 {
            let r = post(&c, &url, b"[1]").await.unwrap();
            assert_eq!((r.status, r.body.unwrap().as_ref()), (200, &b"ok"[..]));
        }
        assert_eq!(
            (counts.connections.load(Ordering::SeqCst), c.idle()),
            (1, 1),
            "connections for 5 sequential requests, idle after (streaming: {streaming})"
        );
    }
}

#[tokio::test]
async fn an_http2_request_carries_the_urls_authority_path_and_query_and_the_body() {
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    let (url, counts) = h2_server(dir.path(), false, None).await;
    let c = h2_client(dir.path(), &config());
    let r = post(&c, &format!("{url}?k=1"), b"[1,2]").await.unwrap();
    assert_eq!(r.status, 200);
    let head = counts.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with(&format!("{url}?k=1 ")), "{head}");
    assert!(!head.contains("\"host\""), "{head}");
    assert_eq!(counts.bodies.lock().unwrap()[0], b"[1,2]");
}

#[tokio::test]
async fn a_request_after_an_http2_collector_closed_an_idle_connection_with_goaway_is_sent_on_a_new_one_at_once()
 {
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    let (url, counts) = h2_server(dir.path(), false, Some(Duration::from_millis(300))).await;
    let c = h2_client(
        dir.path(),
        &HttpClientConfig {
            timeout: Duration::from_secs(3),
            ..config()
        },
    );
    assert_eq!(post(&c, &url, b"[1]").await.unwrap().status, 200);
    assert_eq!(c.idle(), 1, "kept alive");
    tokio::time::sleep(Duration::from_millis(700)).await;
    second_post_goes_at_once(&c, &url, "").await;
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
    assert_eq!(counts.requests.load(Ordering::SeqCst), 2);
}

/// What a raw HTTP/2 collector does with a request.
#[derive(Clone, Copy, Debug)]
enum H2Answer {
    /// `:status 200`, end of stream.
    Ok,
    /// RST_STREAM(REFUSED_STREAM): not processed (RFC 9113 §8.7), safe to retry.
    Refuse,
    /// `:status 200`, then GOAWAY(NO_ERROR, last stream = this one), as nginx
    /// does on the last of `keepalive_requests`; the socket stays open.
    OkThenGoaway,
    /// No answer: GOAWAY(NO_ERROR) whose last stream is the one before, so
    /// this request was not processed (RFC 9113 §6.8, safe to retry).
    GoawayBeforeIt,
}

/// A raw HTTP/2-only TLS collector: connection 0 answers its requests as
/// `script` says (in order), later connections answer 200. `requests` counts
/// the requests answered 200; `heads` records "refused" per refused stream.
async fn raw_h2_server(
    dir: &std::path::Path,
    script: &'static [H2Answer],
) -> (String, Arc<Counts>) {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    tls_listener(dir, &[b"h2"], move |n, mut tls, c| async move {
        let mut preface = [0u8; 24];
        if tls.read_exact(&mut preface).await.is_err() {
            return;
        }
        if tls.write_all(&frame(4, 0, 0, &[])).await.is_err() {
            return;
        }
        let _ = tls.flush().await;
        let mut answered = 0usize;
        loop {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if tls.read_exact(&mut payload).await.is_err() {
                return;
            }
            let out = match kind {
                4 if flags & 1 == 0 => frame(4, 1, 0, &[]),
                6 if flags & 1 == 0 => frame(6, 1, 0, &payload),
                7 => return,
                0 | 1 if flags & 1 == 1 => {
                    let answer = if n == 0 {
                        script.get(answered).copied().unwrap_or(H2Answer::Ok)
                    } else {
                        H2Answer::Ok
                    };
                    answered += 1;
                    match answer {
                        H2Answer::Ok | H2Answer::OkThenGoaway => {
                            c.requests.fetch_add(1, Ordering::SeqCst);
                            let mut out = frame(1, 0x5, stream, &[0x88]);
                            if matches!(answer, H2Answer::OkThenGoaway) {
                                let mut g = stream.to_be_bytes().to_vec();
                                g.extend_from_slice(&0u32.to_be_bytes());
                                out.extend(frame(7, 0, 0, &g));
                            }
                            out
                        }
                        H2Answer::Refuse => {
                            c.heads.lock().unwrap().push("refused".into());
                            frame(3, 0, stream, &7u32.to_be_bytes())
                        }
                        H2Answer::GoawayBeforeIt => {
                            c.heads.lock().unwrap().push("goaway".into());
                            let mut g = stream.saturating_sub(2).to_be_bytes().to_vec();
                            g.extend_from_slice(&0u32.to_be_bytes());
                            frame(7, 0, 0, &g)
                        }
                    }
                }
                _ => continue,
            };
            if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_request_an_http2_collector_refused_with_refused_stream_is_sent_again_on_a_new_connection()
 {
    // reqwest (the sinks' client before) retried REFUSED_STREAM at once: the
    // collector says it did not process the stream (RFC 9113 §8.7).
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    let (url, counts) = raw_h2_server(dir.path(), &[H2Answer::Ok, H2Answer::Refuse]).await;
    let c = h2_client(dir.path(), &config());
    assert_eq!(post(&c, &url, b"[1]").await.unwrap().status, 200);
    let r = post(&c, &url, b"[2]").await;
    assert!(
        r.as_ref().is_ok_and(|r| r.status == 200),
        "{:?}",
        r.as_ref().map(|r| r.status)
    );
    assert_eq!(counts.requests.load(Ordering::SeqCst), 2);
    assert_eq!(counts.heads.lock().unwrap().len(), 1, "refused once");
}

#[tokio::test]
async fn a_request_after_an_http2_collector_said_goaway_with_its_last_answer_goes_on_a_new_connection()
 {
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    let (url, counts) = raw_h2_server(dir.path(), &[H2Answer::OkThenGoaway]).await;
    let c = h2_client(
        dir.path(),
        &HttpClientConfig {
            timeout: Duration::from_secs(3),
            ..config()
        },
    );
    assert_eq!(post(&c, &url, b"[1]").await.unwrap().status, 200);
    second_post_goes_at_once(&c, &url, "").await;
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_an_http2_collector_left_unprocessed_by_a_graceful_goaway_is_sent_again_on_a_new_connection()
 {
    // The GOAWAY crosses the request (its stream is above the last one the
    // collector will process): reqwest retried this at once (its default
    // policy: a remote GOAWAY with NO_ERROR).
    let dir = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(dir.path());
    let (url, counts) = raw_h2_server(dir.path(), &[H2Answer::Ok, H2Answer::GoawayBeforeIt]).await;
    let c = h2_client(
        dir.path(),
        &HttpClientConfig {
            timeout: Duration::from_secs(3),
            ..config()
        },
    );
    assert_eq!(post(&c, &url, b"[1]").await.unwrap().status, 200);
    second_post_goes_at_once(&c, &url, "").await;
    assert_eq!(counts.requests.load(Ordering::SeqCst), 2);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
}
