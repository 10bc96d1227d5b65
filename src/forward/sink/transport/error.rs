//! Transport errors: their kind first, never the URL.

use std::fmt;

/// What failed, first in every reason (see the module's invariants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The whole request took longer than `timeout`.
    Timeout,
    /// DNS, TCP or TLS.
    Connect,
    /// Writing the request or reading the response's head.
    Request,
    /// Reading the response's body.
    Body,
}

/// A transport failure: its kind and what happened, without the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What failed.
    pub kind: ErrorKind,
    detail: String,
}

impl Error {
    pub(super) fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect error",
            ErrorKind::Request => "request error",
            ErrorKind::Body => "body error",
        };
        write!(f, "{kind}: {}", self.detail)
    }
}

impl std::error::Error for Error {}

/// An error and its sources, `: `-joined.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.ends_with(&s_text) {
            msg.push_str(": ");
            msg.push_str(&s_text);
        }
        src = s.source();
    }
    msg
}

/// A reqwest error as a transport error, without the request's URL.
pub(super) fn reqwest_error(e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_body() || e.is_decode() {
        ErrorKind::Body
    } else {
        ErrorKind::Request
    };
    let mut text = chain(e);
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
        text = text.replace(url.as_str(), "<collector>");
    }
    Error::new(kind, text)
}
