//! Keep-alive under the ways a collector shapes its answers (chunked, in
//! several writes, 204), and name resolution (found by the second review).

use super::*;

/// A raw server answering every request on a kept-alive connection with
/// `answer` (written in the given pieces, flushed, `gap` apart).
async fn answering_server(
    pieces: &'static [&'static [u8]],
    gap: Duration,
) -> (String, Arc<Counts>) {
    raw_server(move |_, mut s, counts: Arc<Counts>| async move {
        while next(&mut s, &counts).await.is_some() {
            for p in pieces {
                if s.write_all(p).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
            }
        }
    })
    .await
}

async fn sequential_connections(url: &str, n: usize) -> (usize, Vec<u16>) {
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = post(&c, url, b"[1]").await.unwrap();
        r.body.as_ref().unwrap();
        statuses.push(r.status);
    }
    (c.idle(), statuses)
}

#[tokio::test]
async fn sequential_requests_share_one_connection_however_the_answers_are_written() {
    type Case = (&'static str, &'static [&'static [u8]], u64, u16);
    let cases: [Case; 4] = [
        (
            "chunked, one write",
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            0,
            200,
        ),
        (
            "chunked, three writes",
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"2\r\nok\r\n",
                b"0\r\n\r\n",
            ],
            5,
            200,
        ),
        (
            "a length, the body in two writes",
            &[
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n",
                b"ok",
                b"ok",
            ],
            5,
            200,
        ),
        ("204", &[b"HTTP/1.1 204 No Content\r\n\r\n"], 0, 204),
    ];
    for (name, pieces, gap_ms, status) in cases {
        let (url, counts) = answering_server(pieces, Duration::from_millis(gap_ms)).await;
        let (idle, statuses) = sequential_connections(&url, 5).await;
        assert_eq!(statuses, vec![status; 5], "{name}");
        assert_eq!(
            (counts.connections.load(Ordering::SeqCst), idle),
            (1, 1),
            "{name}: connections for 5 sequential requests, idle after"
        );
    }
}

#[tokio::test]
async fn a_host_that_does_not_resolve_is_a_connect_error_without_the_url() {
    let e = post(
        &client(),
        "http://collector.invalid/secret-path?key=abc",
        b"[1]",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connect, "{e}");
    assert!(e.to_string().starts_with("connect error: "), "{e}");
    for part in ["collector.invalid", "secret-path", "key=abc"] {
        assert!(!e.to_string().contains(part), "{e}");
    }
}
