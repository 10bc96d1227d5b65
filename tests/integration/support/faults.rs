//! A raw TCP server for socket-level faults a real HTTP server will not produce.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fault server does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Read the request, then close without answering.
    CloseBeforeResponse,
    /// Read the request, then reset the connection (SO_LINGER 0).
    Reset,
    /// Read the request and never answer.
    Hang,
    /// Answer 200 with a Content-Length longer than the body, then close.
    TruncatedBody,
    /// Answer 200 with half a status line, then reset.
    ResetMidResponse,
}

pub struct FaultServer {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    // Read headers, then as much body as Content-Length says (bounded).
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return;
            }
        }
    }
}

impl FaultServer {
    pub async fn start(fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    read_request(&mut s).await;
                    match fault {
                        Fault::CloseBeforeResponse => {
                            let _ = s.shutdown().await;
                        }
                        Fault::Reset => {
                            let _ = s.set_zero_linger();
                            drop(s);
                        }
                        Fault::Hang => {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        }
                        Fault::TruncatedBody => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"status\":")
                                .await;
                            let _ = s.shutdown().await;
                        }
                        Fault::ResetMidResponse => {
                            let _ = s.write_all(b"HTTP/1.1 2").await;
                            let _ = s.set_zero_linger();
                            drop(s);
                        }
                    }
                });
            }
        });
        Self {
            url,
            connections,
            task,
        }
    }
}
