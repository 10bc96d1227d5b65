//! A collector's URL, parsed once: where to connect, what to put in the
//! request line and `Host`, and the credentials its user info holds.

use http::header::HeaderValue;
use std::sync::Arc;

/// Where connections go: scheme, host (without IPv6 brackets) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
}

#[derive(Debug)]
pub(super) struct TargetInner {
    pub(super) origin: Origin,
    /// The whole URL without user info, for the proxy matcher and reqwest.
    pub(super) url: reqwest::Url,
    pub(super) uri: http::Uri,
    /// Origin form: path and query.
    pub(super) path: http::Uri,
    pub(super) host: HeaderValue,
    /// Basic credentials from the URL's user info, if any.
    pub(super) auth: Option<HeaderValue>,
}

/// A collector's URL, parsed once (a sink keeps it for every request).
#[derive(Clone, Debug)]
pub struct Target(pub(super) Arc<TargetInner>);

impl Target {
    /// Parses an absolute `http://` or `https://` URL.
    ///
    /// # Errors
    ///
    /// What is wrong with it, without the URL itself.
    pub fn parse(url: &str) -> Result<Self, String> {
        let mut u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let tls = match u.scheme() {
            "http" => false,
            "https" => true,
            s => return Err(format!("scheme {s:?} is not http or https")),
        };
        let host = u.host_str().ok_or("the URL has no host")?.to_string();
        let port = u.port_or_known_default().ok_or("the URL has no port")?;
        let authority = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let auth = if u.username().is_empty() && u.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let value = basic(&decode(u.username()), u.password().map(decode).as_deref());
            let _ = u.set_username("");
            let _ = u.set_password(None);
            Some(value)
        };
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        };
        let bad = |what: &str| format!("the URL's {what} is not valid in a request");
        Ok(Self(Arc::new(TargetInner {
            origin: Origin {
                tls,
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port,
            },
            uri: u.as_str().parse().map_err(|_| bad("text"))?,
            url: u,
            path: path.parse().map_err(|_| bad("path"))?,
            host: HeaderValue::from_str(&authority).map_err(|_| bad("host"))?,
            auth,
        })))
    }
}

/// `Basic base64(user:password)`, marked sensitive.
pub(super) fn basic(user: &str, password: Option<&str>) -> HeaderValue {
    use base64::Engine;
    let raw = format!("{user}:{}", password.unwrap_or(""));
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}
