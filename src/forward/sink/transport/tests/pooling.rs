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
async fn sequential_requests_answered_with_chunked_bodies_share_one_connection() {
    let (url, counts) = answering_server(
        &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        Duration::ZERO,
    )
    .await;
    let (idle, _) = sequential_connections(&url, 5).await;
    assert_eq!(
        (counts.connections.load(Ordering::SeqCst), idle),
        (1, 1),
        "connections for 5 sequential requests, idle after"
    );
}

#[tokio::test]
async fn sequential_requests_answered_with_chunked_bodies_in_several_writes_share_one_connection() {
    let (url, counts) = answering_server(
        &[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"2\r\nok\r\n",
            b"0\r\n\r\n",
        ],
        Duration::from_millis(5),
    )
    .await;
    let (idle, _) = sequential_connections(&url, 5).await;
    assert_eq!(
        (counts.connections.load(Ordering::SeqCst), idle),
        (1, 1),
        "connections for 5 sequential requests, idle after"
    );
}

#[tokio::test]
async fn sequential_requests_answered_with_a_body_in_several_writes_share_one_connection() {
    let (url, counts) = answering_server(
        &[
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n",
            b"ok",
            b"ok",
        ],
        Duration::from_millis(5),
    )
    .await;
    let (idle, _) = sequential_connections(&url, 5).await;
    assert_eq!(
        (counts.connections.load(Ordering::SeqCst), idle),
        (1, 1),
        "connections for 5 sequential requests, idle after"
    );
}

#[tokio::test]
async fn sequential_requests_answered_204_share_one_connection() {
    let (url, counts) =
        answering_server(&[b"HTTP/1.1 204 No Content\r\n\r\n"], Duration::ZERO).await;
    let (idle, statuses) = sequential_connections(&url, 5).await;
    assert_eq!(statuses, vec![204; 5]);
    assert_eq!(
        (counts.connections.load(Ordering::SeqCst), idle),
        (1, 1),
        "connections for 5 sequential requests, idle after"
    );
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
