//! A request being built and sent, and the response read in full.

use super::HttpClient;
use super::error::{Error, ErrorKind, reqwest_error};
use super::target::{Target, basic};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// A response read in full.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The response's headers.
    pub headers: HeaderMap,
    /// The body, or why it could not be read in full (a `body error`).
    pub body: Result<Bytes, Error>,
}

/// A request being built; [`Self::send`] sends it.
pub struct RequestBuilder {
    pub(super) client: HttpClient,
    pub(super) target: Result<Target, String>,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The first invalid header, reported by `send`.
    pub(super) error: Option<String>,
}

impl RequestBuilder {
    /// Sets a header (replacing one of the same name).
    #[must_use]
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        HeaderValue: TryFrom<V>,
    {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            (Err(_), _) => {
                self.error
                    .get_or_insert_with(|| "a header name is not valid".to_string());
            }
            (Ok(n), Err(_)) => {
                self.error
                    .get_or_insert_with(|| format!("the value of header {n} is not valid"));
            }
        }
        self
    }

    /// `Authorization: Basic …`.
    #[must_use]
    pub fn basic_auth(mut self, user: &str, password: Option<&str>) -> Self {
        self.headers
            .insert(header::AUTHORIZATION, basic(user, password));
        self
    }

    /// `Authorization: Bearer …`.
    #[must_use]
    pub fn bearer_auth(self, token: &str) -> Self {
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(mut v) => {
                v.set_sensitive(true);
                let mut s = self;
                s.headers.insert(header::AUTHORIZATION, v);
                s
            }
            Err(_) => {
                let mut s = self;
                s.error.get_or_insert_with(|| {
                    "the bearer token is not a valid header value".to_string()
                });
                s
            }
        }
    }

    /// The body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request and reads the response in full.
    ///
    /// # Errors
    ///
    /// A transport [`Error`]; any status is a response.
    pub async fn send(self) -> Result<Response, Error> {
        let target = self
            .target
            .map_err(|e| Error::new(ErrorKind::Request, format!("invalid URL: {e}")))?;
        if let Some(e) = self.error {
            return Err(Error::new(ErrorKind::Request, e));
        }
        let inner = &self.client.0;
        let mut headers = self.headers;
        if let Some(auth) = &target.0.auth {
            headers.entry(header::AUTHORIZATION).or_insert(auth.clone());
        }
        if let Some(p) = &inner.proxied
            && p.matcher.intercept(&target.0.uri).is_some()
        {
            return via_reqwest(&p.client, &target, headers, self.body).await;
        }
        headers
            .entry(header::USER_AGENT)
            .or_insert(inner.user_agent.clone());
        tokio::time::timeout(
            inner.timeout,
            self.client.round_trip(&target, headers, self.body),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no response within {}",
                    humantime::format_duration(inner.timeout)
                ),
            ))
        })
    }
}

/// Sends through reqwest (a proxy applies to the URL).
async fn via_reqwest(
    client: &reqwest::Client,
    target: &Target,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let resp = client
        .post(target.0.url.clone())
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| reqwest_error(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|e| reqwest_error(&e));
    Ok(Response {
        status,
        headers,
        body,
    })
}
