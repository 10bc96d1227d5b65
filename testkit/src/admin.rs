//! Reaching a daemon's admin API through its owner-only socket in the store
//! directory, as the CLI does.

use std::path::Path;
use std::time::Duration;

/// The base URL of requests on the admin socket (the host is not used).
pub const SOCKET_BASE: &str = "http://evspool";

/// A client whose every request goes to the admin socket of the store in `dir`.
pub fn socket_client(dir: &Path) -> reqwest::Client {
    evspool::forward::sink::http::install_crypto_provider();
    reqwest::Client::builder()
        .unix_socket(dir.join("evspool.sock"))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET path` on the admin socket of `dir`: 200 and JSON, or a panic saying what came back.
pub async fn get(dir: &Path, path: &str) -> serde_json::Value {
    let resp = socket_client(dir)
        .get(format!("{SOCKET_BASE}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the admin socket: {e:#}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {path} on the admin socket: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}
