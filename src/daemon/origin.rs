//! Requests a web page could make: refused on TCP unless they name this
//! daemon and come from no other site.
//!
//! A page in a browser can POST a `text/plain` or form body to
//! `http://127.0.0.1:8787` (no preflight), and a DNS-rebinding page can read
//! `/metrics` under its own host name. So on TCP, every request must have:
//!
//! - a `Host` (or HTTP/2 `:authority`) that is the listen address, a
//!   loopback name with its port when listening on loopback (`localhost`,
//!   `127.0.0.1`, `[::1]`), any IP literal with its port when listening on an
//!   unspecified address (`0.0.0.0`), or one in `server.allowed_hosts`;
//! - no `Origin` unless it is one of those hosts or in
//!   `server.allowed_origins` (`Origin: null` is refused);
//! - no `Sec-Fetch-Site` other than `same-origin` or `none`, unless its
//!   `Origin` is allowed.
//!
//! SDKs and `curl` send none of `Origin` and `Sec-Fetch-Site`; browsers send
//! them on every cross-origin request. Refusals are `403` naming the header
//! and the setting that would allow it. The admin socket is not checked (no
//! browser reaches it).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// Which hosts and origins a request may name.
#[derive(Clone, Debug)]
pub struct Allowed {
    listen: SocketAddr,
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Allowed {
    /// The rules for a daemon listening on `listen` (its bound address) with
    /// the configured extra hosts and origins (`"*"` allows any).
    pub fn new(listen: SocketAddr, hosts: &[String], origins: &[String]) -> Self {
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Self {
            listen,
            hosts: lower(hosts),
            origins: lower(origins)
                .into_iter()
                .map(|o: String| o.trim_end_matches('/').to_string())
                .collect(),
        }
    }

    /// Whether `host` (a `Host` header value, `name[:port]`) names this daemon.
    pub fn host(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if self.hosts.iter().any(|h| h == "*" || *h == host) {
            return true;
        }
        let (name, port) = split_port(&host);
        if port != self.listen.port() {
            return false;
        }
        let ip = self.listen.ip();
        let literal = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        if literal == Some(ip) {
            return true;
        }
        if ip.is_loopback() {
            return name == "localhost" || literal.is_some_and(|l| l.is_loopback());
        }
        ip.is_unspecified() && literal.is_some()
    }

    /// Whether `origin` (an `Origin` header value) may post here.
    pub fn origin(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if self.origins.iter().any(|o| o == "*" || *o == origin) {
            return true;
        }
        match origin.strip_prefix("http://") {
            Some(rest) if !rest.contains('/') => {
                let with_port = if rest.contains(']') || rest.contains(':') {
                    rest.to_string()
                } else {
                    format!("{rest}:80")
                };
                self.host(&with_port)
            }
            _ => false,
        }
    }

    /// Why the request with `headers` is refused, if it is.
    pub fn refusal(&self, headers: &HeaderMap, authority: Option<&str>) -> Option<String> {
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if let Some(host) = text("host").or(authority)
            && !self.host(host)
        {
            return Some(format!(
                "Host {host:?} is not this daemon's address ({}); add it to server.allowed_hosts if a proxy or name is meant to reach it",
                self.listen
            ));
        }
        let origin = text("origin");
        if let Some(o) = origin
            && !self.origin(o)
        {
            return Some(format!(
                "requests from the web page at Origin {o:?} are refused; add it to server.allowed_origins to accept them"
            ));
        }
        if let Some(site) = text("sec-fetch-site")
            && site != "same-origin"
            && site != "none"
            && origin.is_none_or(|o| !self.origin(o))
        {
            return Some(format!(
                "a {site} request from a web page (Sec-Fetch-Site) is refused; add its Origin to server.allowed_origins to accept it"
            ));
        }
        None
    }
}

/// `name` and port of a `Host` value (port 80 when absent).
fn split_port(host: &str) -> (&str, u16) {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], host[i + 1..].parse().ok()),
        _ => (host, Some(80)),
    };
    (name, port.unwrap_or(0))
}

/// Middleware on the TCP listener: `403` for a foreign `Host`, `Origin` or
/// `Sec-Fetch-Site`.
pub async fn check(
    State(state): State<Arc<super::AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    if let Some(why) = state.allowed.refusal(req.headers(), authority.as_deref()) {
        metrics::counter!("evspool_requests_refused_total", "reason" => "origin").increment(1);
        tracing::debug!(reason = %why, "Request refused.");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": why })),
        )
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(allowed: &Allowed, headers: &[(&str, &str)]) -> bool {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        allowed.refusal(&h, None).is_none()
    }

    #[test]
    fn hosts_and_origins_are_allowed_as_documented() {
        let a = Allowed::new("127.0.0.1:8787".parse().unwrap(), &[], &[]);
        for (headers, ok) in [
            (vec![], true),
            (vec![("host", "127.0.0.1:8787")], true),
            (vec![("host", "localhost:8787")], true),
            (vec![("host", "[::1]:8787")], true),
            (vec![("host", "127.0.0.1:8788")], false),
            (vec![("host", "evil.example:8787")], false),
            (vec![("host", "127.0.0.1")], false),
            (vec![("origin", "http://127.0.0.1:8787")], true),
            (vec![("origin", "http://evil.example")], false),
            (vec![("origin", "null")], false),
            (vec![("origin", "http://localhost:3000")], false),
            (vec![("sec-fetch-site", "cross-site")], false),
            (vec![("sec-fetch-site", "same-site")], false),
            (vec![("sec-fetch-site", "same-origin")], true),
            (vec![("sec-fetch-site", "none")], true),
        ] {
            assert_eq!(check(&a, &headers), ok, "{headers:?}");
        }
        let a = Allowed::new(
            "0.0.0.0:80".parse().unwrap(),
            &["spool.internal".into()],
            &["https://app.example.com/".into()],
        );
        for (headers, ok) in [
            (vec![("host", "10.1.2.3")], true),
            (vec![("host", "spool.internal")], true),
            (vec![("host", "rebound.example")], false),
            (
                vec![
                    ("origin", "https://app.example.com"),
                    ("sec-fetch-site", "cross-site"),
                ],
                true,
            ),
            (vec![("origin", "https://evil.example")], false),
        ] {
            assert_eq!(check(&a, &headers), ok, "{headers:?}");
        }
    }
}
