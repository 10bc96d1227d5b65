//! The Mixpanel sink: `/track`, `/engage`, `/groups` and `/import`.
//!
//! - Every track and import event gets `properties.$insert_id` = the event's
//!   stable id and `properties.time` = its enqueue time (ms) when absent;
//!   existing values are never changed. Mixpanel deduplicates on `$insert_id`,
//!   so redeliveries (at-least-once) count once.
//! - `/track` silently drops events older than 5 days, so on the track endpoint
//!   such events go to `/import` in the same send.
//! - `/import` runs with `strict=1`: a 400 lists `failed_records` with index,
//!   field and message; only those are dead-lettered, the rest were imported.
//! - A 200 from `/import` that imported fewer records than sent is retried
//!   (the duplicates are deduplicated downstream) with a WARN.

use super::http::{self, Secret};
use super::{BoxFuture, Delivery, Rejected, Sink};
use crate::Event;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// Mixpanel's documented `/track` limit: 50 events per request.
pub const TRACK_MAX_EVENTS: usize = 50;
/// Defaults to 2000 events per `/import` request: Mixpanel's documented cap.
pub const IMPORT_MAX_EVENTS: usize = 2000;
/// Defaults to 2 MB per `/import` request (Mixpanel allows 10 MB uncompressed;
/// smaller requests retry cheaper).
pub const IMPORT_MAX_BYTES: ByteSize = ByteSize::mb(2);
/// Mixpanel refuses single events over 1 MB.
pub const MAX_EVENT_BYTES: ByteSize = ByteSize::mb(1);
/// `/track` drops events older than this; they go to `/import`.
pub const TRACK_MAX_AGE: Duration = Duration::from_secs(5 * 24 * 3600);

/// Which Mixpanel API a topic feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Events, the ingestion API's `/track`.
    Track,
    /// User profiles, `/engage`.
    Engage,
    /// Group profiles, `/groups`.
    Groups,
    /// Events with authentication and strict validation, `/import`.
    Import,
}

impl Endpoint {
    /// The endpoint a topic named like one (`track`, `engage`, `groups`, `import`) feeds.
    pub fn for_topic(topic: &str) -> Option<Self> {
        match topic {
            "track" => Some(Self::Track),
            "engage" => Some(Self::Engage),
            "groups" => Some(Self::Groups),
            "import" => Some(Self::Import),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Track => "/track",
            Self::Engage => "/engage",
            Self::Groups => "/groups",
            Self::Import => "/import",
        }
    }
}

/// The Mixpanel sink's settings. Secrets come from the environment, never the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixpanelConfig {
    /// The API host (`https://api-eu.mixpanel.com` for EU residency).
    pub api_host: String,
    /// The API this topic feeds (default: from the topic name, else `track`).
    pub endpoint: Option<Endpoint>,
    /// The project token (added to events that lack one; `/import` auth without a service account).
    #[serde(skip)]
    pub token: Secret,
    /// A service account's username for `/import` basic auth.
    pub service_account: Option<String>,
    /// The service account's secret.
    #[serde(skip)]
    pub secret: Secret,
    /// The project id (required with a service account).
    pub project_id: Option<String>,
    /// `strict=1` on `/import` (per-record validation errors).
    pub strict: bool,
    /// Gzip request bodies (level 1).
    pub gzip: bool,
    /// Send `/track` events older than 5 days to `/import` instead.
    pub route_old_to_import: bool,
}

impl Default for MixpanelConfig {
    fn default() -> Self {
        Self {
            api_host: "https://api.mixpanel.com".into(),
            endpoint: None,
            token: Secret::default(),
            service_account: None,
            secret: Secret::default(),
            project_id: None,
            strict: true,
            gzip: false,
            route_old_to_import: true,
        }
    }
}

/// Forwards to Mixpanel.
#[derive(Debug)]
pub struct MixpanelSink {
    client: http::HttpClient,
    cfg: MixpanelConfig,
    endpoint: Endpoint,
}

impl MixpanelSink {
    /// A sink for `endpoint` over the shared client.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` for a bad `api_host`, or a service account without `project_id`.
    pub fn new(
        client: http::HttpClient,
        cfg: MixpanelConfig,
        endpoint: Endpoint,
    ) -> Result<Self, crate::ConfigError> {
        http::check_url("api_host", &cfg.api_host)?;
        if cfg.service_account.is_some() && cfg.project_id.is_none() {
            return Err(crate::ConfigError::Invalid {
                name: "project_id".into(),
                reason: "required with service_account (Mixpanel's /import needs it)".into(),
            });
        }
        Ok(Self {
            client,
            cfg,
            endpoint,
        })
    }

    fn url(&self, endpoint: Endpoint) -> String {
        let host = self.cfg.api_host.trim_end_matches('/');
        let mut url = format!("{host}{}", endpoint.path());
        if endpoint == Endpoint::Import {
            url.push_str(if self.cfg.strict {
                "?strict=1"
            } else {
                "?strict=0"
            });
            if let Some(p) = &self.cfg.project_id {
                url.push_str("&project_id=");
                url.push_str(&form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>());
            }
        } else {
            url.push_str("?verbose=1&ip=0");
        }
        url
    }

    /// Prepares one event for `endpoint`: the payload with the stamps added.
    #[doc(hidden)]
    pub fn stamp(&self, event: &Event, endpoint: Endpoint) -> Result<Value, String> {
        let mut v: Value =
            serde_json::from_slice(&event.payload).map_err(|e| format!("invalid_json: {e}"))?;
        let Some(obj) = v.as_object_mut() else {
            return Err("invalid_json: the payload is not a JSON object".into());
        };
        // An origin id carried from another store becomes `$insert_id`; the
        // member itself is evspool's, not an event property (`crate::origin`).
        let id = carried_id(obj).unwrap_or_else(|| event.id.to_string());
        match endpoint {
            Endpoint::Track | Endpoint::Import => {
                let props = obj
                    .entry("properties")
                    .or_insert_with(|| Value::Object(Map::new()));
                let Some(props) = props.as_object_mut() else {
                    return Err("invalid_event: `properties` is not an object".into());
                };
                props
                    .entry("$insert_id")
                    .or_insert_with(|| Value::String(id));
                props
                    .entry("time")
                    .or_insert_with(|| Value::from(event.enqueued_at_ms));
                if !self.cfg.token.0.is_empty() {
                    props
                        .entry("token")
                        .or_insert_with(|| Value::String(self.cfg.token.0.clone()));
                }
            }
            Endpoint::Engage | Endpoint::Groups => {
                if !self.cfg.token.0.is_empty() {
                    obj.entry("$token")
                        .or_insert_with(|| Value::String(self.cfg.token.0.clone()));
                }
            }
        }
        Ok(v)
    }

    async fn post(&self, endpoint: Endpoint, events: &[Value]) -> Delivery {
        let body = serde_json::to_vec(events).unwrap_or_default();
        let mut req = self
            .client
            .post_url(&self.url(endpoint))
            .header("content-type", "application/json")
            .header("accept", "application/json");
        if endpoint == Endpoint::Import {
            req = match &self.cfg.service_account {
                Some(user) => req.basic_auth(user, Some(&self.cfg.secret.0)),
                None => req.basic_auth(&self.cfg.token.0, Some("")),
            };
        }
        req = if self.cfg.gzip {
            req.header("content-encoding", "gzip")
                .body(http::gzip(&body))
        } else {
            req.body(body)
        };
        let (outcome, response) = http::execute(req).await;
        let Some((status, body)) = response else {
            return outcome;
        };
        interpret(endpoint, status, &body, events.len(), outcome)
    }
}

/// Takes the carried origin id member out of an event object; its value when
/// it is a valid id (see `crate::origin`).
/// A member of that name that is not a valid id is the application's: kept.
pub(crate) fn carried_id(obj: &mut Map<String, Value>) -> Option<String> {
    match obj.get(crate::ORIGIN_ID_FIELD)? {
        Value::String(id) if crate::is_valid_origin_id(id) => {}
        _ => return None,
    }
    match obj.remove(crate::ORIGIN_ID_FIELD)? {
        Value::String(id) => Some(id),
        _ => None,
    }
}

/// Refines the generic classification with Mixpanel's response bodies.
#[doc(hidden)]
pub fn interpret(
    endpoint: Endpoint,
    status: u16,
    body: &[u8],
    sent: usize,
    generic: Delivery,
) -> Delivery {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    match (endpoint, status) {
        (Endpoint::Import, 200) => {
            let imported = json
                .as_ref()
                .and_then(|j| j.get("num_records_imported"))
                .and_then(Value::as_u64);
            match imported {
                Some(n) if (n as usize) < sent => {
                    tracing::warn!(
                        imported = n,
                        sent,
                        "Mixpanel imported fewer records than sent; resending the batch (duplicates are deduplicated by $insert_id)."
                    );
                    Delivery::Retry {
                        after: None,
                        reason: format!("mixpanel imported {n} of {sent} records"),
                    }
                }
                _ => Delivery::Delivered,
            }
        }
        (Endpoint::Import, 400) => {
            let failed = json
                .as_ref()
                .and_then(|j| j.get("failed_records"))
                .and_then(Value::as_array);
            match failed {
                Some(records) if !records.is_empty() => {
                    let mut rejected: Vec<Rejected> = records
                        .iter()
                        .filter_map(|r| {
                            let index = r.get("index")?.as_u64()? as usize;
                            let field = r.get("field").and_then(Value::as_str).unwrap_or("");
                            let message = r
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("rejected");
                            let id = r
                                .get("$insert_id")
                                .or_else(|| r.get("insert_id"))
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            (index < sent).then(|| Rejected {
                                index,
                                reason: if field.is_empty() {
                                    format!("{message} (insert_id {id})")
                                } else {
                                    format!("{field}: {message}")
                                },
                            })
                        })
                        .collect();
                    rejected.sort_by_key(|r| r.index);
                    rejected.dedup_by_key(|r| r.index);
                    if rejected.is_empty() {
                        return Delivery::Reject {
                            reason: "mixpanel 400 with unusable failed_records".into(),
                        };
                    }
                    Delivery::Partial {
                        rejected,
                        retry: vec![],
                        after: None,
                        reason: String::new(),
                    }
                }
                _ => generic,
            }
        }
        (_, 200) => {
            // verbose=1: {"status":1,"error":null}; plain: "1" / "0".
            let ok = match &json {
                Some(Value::Number(n)) => n.as_u64() == Some(1),
                Some(Value::Object(o)) => o.get("status").and_then(Value::as_u64) == Some(1),
                _ => false,
            };
            if ok {
                Delivery::Delivered
            } else {
                let error = json
                    .as_ref()
                    .and_then(|j| j.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("mixpanel answered status 0")
                    .to_string();
                match json {
                    // An unreadable 200 may have been a proxy page: retry, never drop.
                    None => Delivery::Retry {
                        after: None,
                        reason: format!(
                            "mixpanel 200 with an unreadable body: {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ),
                    },
                    Some(_) => Delivery::Reject { reason: error },
                }
            }
        }
        _ => generic,
    }
}

/// Folds per-request outcomes (each over a subset given as batch indexes) into one.
fn merge(parts: Vec<(Vec<usize>, Delivery)>, pre_rejected: Vec<Rejected>) -> Delivery {
    let mut rejected = pre_rejected;
    let mut retry = Vec::new();
    let mut after: Option<Duration> = None;
    let mut reason = String::new();
    for (idx, d) in &parts {
        match d {
            // A whole-subset outcome the worker must act on for the whole batch
            // (split, bisect, pause): resending the delivered part too is safe,
            // Mixpanel deduplicates on $insert_id.
            Delivery::Split { .. } | Delivery::Reject { .. } | Delivery::ConfigFault { .. } => {
                return d.clone();
            }
            Delivery::Delivered => {}
            Delivery::Retry {
                after: a,
                reason: r,
            } => {
                retry.extend(idx.iter().copied());
                after = after.max(*a);
                reason.clone_from(r);
            }
            Delivery::Partial {
                rejected: rj,
                retry: rt,
                after: a,
                reason: r,
            } => {
                rejected.extend(rj.iter().filter_map(|x| {
                    idx.get(x.index).map(|&i| Rejected {
                        index: i,
                        reason: x.reason.clone(),
                    })
                }));
                retry.extend(rt.iter().filter_map(|&i| idx.get(i).copied()));
                after = after.max(*a);
                if !r.is_empty() {
                    reason.clone_from(r);
                }
            }
        }
    }
    if rejected.is_empty() && retry.is_empty() {
        return Delivery::Delivered;
    }
    if rejected.is_empty() && parts.len() == 1 && retry.len() == parts[0].0.len() {
        return Delivery::Retry { after, reason };
    }
    Delivery::Partial {
        rejected,
        retry,
        after,
        reason,
    }
}

impl Sink for MixpanelSink {
    fn name(&self) -> &str {
        "mixpanel"
    }

    fn max_batch_events(&self) -> usize {
        match self.endpoint {
            Endpoint::Import => IMPORT_MAX_EVENTS,
            _ => TRACK_MAX_EVENTS,
        }
    }

    fn max_batch_bytes(&self) -> u64 {
        match self.endpoint {
            Endpoint::Import => IMPORT_MAX_BYTES.as_u64(),
            _ => ByteSize::mib(1).as_u64(),
        }
    }

    fn max_event_bytes(&self) -> u64 {
        MAX_EVENT_BYTES.as_u64()
    }

    fn endpoint(&self) -> String {
        format!(
            "{}{}",
            http::display_url(&self.cfg.api_host).trim_end_matches('/'),
            self.endpoint.path()
        )
    }

    fn config_fault_hint(&self, status: Option<u16>, _reason: &str) -> String {
        let credentials = match self.endpoint {
            Endpoint::Import if self.cfg.service_account.is_some() => {
                "the Mixpanel service account, its secret and project_id"
            }
            Endpoint::Import => "the Mixpanel project token (/import authenticates with it)",
            _ => "the Mixpanel project token",
        };
        super::config_fault_hint(status, credentials)
    }

    fn send<'a>(&'a self, batch: &'a [Event]) -> BoxFuture<'a, Delivery> {
        Box::pin(async move {
            let now = crate::event::now_ms();
            let old_cutoff = now.saturating_sub(TRACK_MAX_AGE.as_millis() as u64);
            let mut rejected = Vec::new();
            let mut groups: Vec<(Endpoint, Vec<usize>, Vec<Value>)> = Vec::new();
            for (i, e) in batch.iter().enumerate() {
                let endpoint = if self.endpoint == Endpoint::Track
                    && self.cfg.route_old_to_import
                    && e.enqueued_at_ms < old_cutoff
                {
                    Endpoint::Import
                } else {
                    self.endpoint
                };
                match self.stamp(e, endpoint) {
                    Ok(v) => match groups.iter_mut().find(|g| g.0 == endpoint) {
                        Some(g) => {
                            g.1.push(i);
                            g.2.push(v);
                        }
                        None => groups.push((endpoint, vec![i], vec![v])),
                    },
                    Err(reason) => rejected.push(Rejected { index: i, reason }),
                }
            }
            let mut parts = Vec::with_capacity(groups.len());
            for (endpoint, idx, events) in groups {
                let d = self.post(endpoint, &events).await;
                parts.push((idx, d));
            }
            merge(parts, rejected)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use std::sync::Arc;

    fn sink(endpoint: Endpoint) -> MixpanelSink {
        let cfg = MixpanelConfig {
            token: Secret("tok".into()),
            ..MixpanelConfig::default()
        };
        MixpanelSink::new(
            http::build_client(&Default::default()).unwrap(),
            cfg,
            endpoint,
        )
        .unwrap()
    }

    fn event(seq: u64, payload: &str, at: u64) -> Event {
        Event {
            id: EventId::new(crate::event::Instance::intern("abc123def456"), seq),
            enqueued_at_ms: at,
            attempts: 0,
            payload: bytes::Bytes::from(payload.to_string()),
        }
    }

    #[test]
    fn stamping_adds_insert_id_time_and_token_but_never_overwrites() {
        let s = sink(Endpoint::Track);
        let v = s
            .stamp(&event(7, r#"{"event":"a"}"#, 1234), Endpoint::Track)
            .unwrap();
        assert_eq!(v["properties"]["$insert_id"], "abc123def456-7");
        assert_eq!(v["properties"]["time"], 1234);
        assert_eq!(v["properties"]["token"], "tok");
        let v = s
            .stamp(
                &event(
                    7,
                    r#"{"event":"a","properties":{"$insert_id":"mine","time":5,"token":"t2"}}"#,
                    1234,
                ),
                Endpoint::Track,
            )
            .unwrap();
        assert_eq!(v["properties"]["$insert_id"], "mine");
        assert_eq!(v["properties"]["time"], 5);
        assert_eq!(v["properties"]["token"], "t2");
        // The id is stable: the same event stamps the same id every time.
        let again = s
            .stamp(&event(7, r#"{"event":"a"}"#, 9999), Endpoint::Track)
            .unwrap();
        assert_eq!(again["properties"]["$insert_id"], "abc123def456-7");
        // An origin id carried from another store (`evspool import`) is the
        // insert id, and the carrier member is not sent.
        let v = s
            .stamp(
                &event(7, r#"{"evspool_id":"0f0f0f0f0f0f-3","event":"a"}"#, 1),
                Endpoint::Track,
            )
            .unwrap();
        assert_eq!(v["properties"]["$insert_id"], "0f0f0f0f0f0f-3");
        assert!(v.get("evspool_id").is_none(), "{v}");
        // A member of that name that is no id is the application's: kept.
        let v = s
            .stamp(
                &event(7, r#"{"evspool_id":42,"event":"a"}"#, 1),
                Endpoint::Track,
            )
            .unwrap();
        assert_eq!(v["properties"]["$insert_id"], "abc123def456-7");
        assert_eq!(v["evspool_id"], 42);
        assert!(
            s.stamp(&event(1, "[1]", 0), Endpoint::Track)
                .unwrap_err()
                .starts_with("invalid_json")
        );
        assert!(
            s.stamp(&event(1, r#"{"properties":3}"#, 0), Endpoint::Track)
                .is_err()
        );
        let v = s
            .stamp(&event(1, r#"{"$distinct_id":"u"}"#, 0), Endpoint::Engage)
            .unwrap();
        assert_eq!(v["$token"], "tok");
    }

    #[test]
    fn strict_import_failures_become_per_record_rejections() {
        for key in ["$insert_id", "insert_id"] {
            let body = format!(
                r#"{{"code":400,"error":"some data points in the request failed validation","failed_records":[{{"index":1,"{key}":"x-2","field":"properties.time","message":"'properties.time' is invalid"}}],"num_records_imported":2,"status":"Bad Request"}}"#
            );
            let generic = Delivery::Reject {
                reason: "http 400".into(),
            };
            match interpret(Endpoint::Import, 400, body.as_bytes(), 3, generic) {
                Delivery::Partial {
                    rejected, retry, ..
                } => {
                    assert_eq!(rejected.len(), 1);
                    assert_eq!(rejected[0].index, 1);
                    assert_eq!(
                        rejected[0].reason,
                        "properties.time: 'properties.time' is invalid"
                    );
                    assert!(retry.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
        let generic = Delivery::Reject {
            reason: "http 400".into(),
        };
        assert_eq!(
            interpret(Endpoint::Import, 400, b"", 3, generic.clone()),
            generic
        );
    }

    #[test]
    fn an_import_that_imported_fewer_records_is_retried() {
        let d = interpret(
            Endpoint::Import,
            200,
            br#"{"code":200,"num_records_imported":2,"status":"OK"}"#,
            3,
            Delivery::Delivered,
        );
        assert!(matches!(d, Delivery::Retry { .. }), "{d:?}");
        let d = interpret(
            Endpoint::Import,
            200,
            br#"{"code":200,"num_records_imported":3,"status":"OK"}"#,
            3,
            Delivery::Delivered,
        );
        assert_eq!(d, Delivery::Delivered);
    }

    #[test]
    fn track_status_bodies_are_read() {
        assert_eq!(
            interpret(Endpoint::Track, 200, b"1", 1, Delivery::Delivered),
            Delivery::Delivered
        );
        assert_eq!(
            interpret(
                Endpoint::Track,
                200,
                br#"{"status":1,"error":null}"#,
                1,
                Delivery::Delivered
            ),
            Delivery::Delivered
        );
        assert!(matches!(
            interpret(Endpoint::Track, 200, br#"{"status":0,"error":"bad token"}"#, 1, Delivery::Delivered),
            Delivery::Reject { reason } if reason == "bad token"
        ));
        assert!(matches!(
            interpret(
                Endpoint::Track,
                200,
                b"<html>proxy</html>",
                1,
                Delivery::Delivered
            ),
            Delivery::Retry { .. }
        ));
    }

    #[test]
    fn outcomes_of_the_track_and_import_requests_merge_by_index() {
        // Fresh events 0 and 2 went to /track and were delivered; old event 1 went
        // to /import, which failed transiently: only 1 is retried.
        let d = merge(
            vec![
                (vec![0, 2], Delivery::Delivered),
                (
                    vec![1],
                    Delivery::Retry {
                        after: Some(Duration::from_secs(1)),
                        reason: "503".into(),
                    },
                ),
            ],
            vec![],
        );
        assert_eq!(
            d,
            Delivery::Partial {
                rejected: vec![],
                retry: vec![1],
                after: Some(Duration::from_secs(1)),
                reason: "503".into()
            }
        );
        let d = merge(
            vec![(
                vec![0, 1],
                Delivery::Retry {
                    after: None,
                    reason: "x".into(),
                },
            )],
            vec![],
        );
        assert!(matches!(d, Delivery::Retry { .. }));
    }

    #[tokio::test]
    async fn old_track_events_go_to_import_with_auth() {
        use std::sync::Mutex;
        type Seen = Vec<(String, Option<String>, usize)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let s2 = s2.clone();
                async move {
                    let n = serde_json::from_slice::<Vec<Value>>(&body)
                        .map(|v| v.len())
                        .unwrap_or(0);
                    let auth = headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string());
                    s2.lock().unwrap().push((uri.path().to_string(), auth, n));
                    if uri.path() == "/import" {
                        axum::Json(
                            serde_json::json!({"code":200,"num_records_imported":n,"status":"OK"}),
                        )
                    } else {
                        axum::Json(serde_json::json!({"status":1,"error":null}))
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cfg = MixpanelConfig {
            api_host: host,
            token: Secret("tok".into()),
            ..MixpanelConfig::default()
        };
        let s = MixpanelSink::new(
            http::build_client(&Default::default()).unwrap(),
            cfg,
            Endpoint::Track,
        )
        .unwrap();
        let now = crate::event::now_ms();
        let batch = [
            event(1, r#"{"event":"new"}"#, now),
            event(2, r#"{"event":"old"}"#, now - 6 * 24 * 3600 * 1000),
        ];
        assert_eq!(s.send(&batch).await, Delivery::Delivered);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter()
                .any(|(p, a, n)| p == "/track" && a.is_none() && *n == 1)
        );
        assert!(seen.iter().any(|(p, a, n)| p == "/import"
            && a.as_deref().is_some_and(|a| a.starts_with("Basic "))
            && *n == 1));
    }
}
