//! The one NATS request the scaler makes for lag: `CONSUMER.INFO`.
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;

use super::{ConsumerKey, ConsumerState, LagError, cache::LagSource};
use crate::nats::{Connection, Connections};

/// JetStream API error codes we turn into NOT_FOUND.
const STREAM_NOT_FOUND: u64 = 10059;
const CONSUMER_NOT_FOUND: u64 = 10014;

/// Reads consumer lag over the configured NATS connections.
#[derive(Clone, Debug)]
pub struct JetStreamLag {
    connections: Connections,
}

impl JetStreamLag {
    pub fn new(connections: Connections) -> Self {
        JetStreamLag { connections }
    }

    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Asks the consumer's leader for its info, within the connection's
    /// request timeout. Fails fast while the connection is down.
    pub async fn consumer_state(&self, key: &ConsumerKey) -> Result<ConsumerState, LagError> {
        let conn = self
            .connections
            .get(Some(&key.connection))
            .ok_or_else(|| LagError::UnknownConnection(key.connection.to_string()))?;
        let started = Instant::now();
        let result = request_info(conn, key).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        metrics::counter!(super::metrics::NATS_REQUESTS.name, "connection" => conn.name.clone(), "result" => label)
            .increment(1);
        metrics::histogram!(super::metrics::NATS_REQUEST_DURATION.name, "connection" => conn.name.clone())
            .record(started.elapsed().as_secs_f64());
        result
    }
}

impl LagSource for JetStreamLag {
    fn fetch(&self, key: &ConsumerKey) -> BoxFuture<'static, Result<ConsumerState, LagError>> {
        let this = self.clone();
        let key = key.clone();
        async move { this.consumer_state(&key).await }.boxed()
    }
}

/// The API subject prefix for a domain (`$JS.API` without one).
pub fn api_prefix(domain: Option<&str>) -> String {
    match domain {
        Some(d) => format!("$JS.{d}.API"),
        None => "$JS.API".to_string(),
    }
}

/// The `CONSUMER.INFO` subject of a consumer. Its names were checked by
/// the trigger's name check, so each is exactly one subject token.
pub fn info_subject(key: &ConsumerKey) -> String {
    format!(
        "{}.CONSUMER.INFO.{}.{}",
        api_prefix(key.domain.as_deref()),
        key.stream,
        key.consumer
    )
}

async fn request_info(conn: &Connection, key: &ConsumerKey) -> Result<ConsumerState, LagError> {
    let deadline = tokio::time::Instant::now() + conn.request_timeout;
    if !first_connected(conn, deadline).await {
        return Err(LagError::Disconnected {
            connection: conn.name.to_string(),
            servers: conn.servers.to_string(),
        });
    }
    let subject = info_subject(key);
    let request = conn.client.request(subject, Bytes::new());
    let reply = match tokio::time::timeout_at(deadline, request).await {
        Err(_) => return Err(timeout(conn)),
        Ok(Err(e)) => {
            use async_nats::RequestErrorKind;
            return Err(match e.kind() {
                RequestErrorKind::TimedOut => timeout(conn),
                RequestErrorKind::NoResponders => LagError::Unavailable {
                    connection: conn.name.to_string(),
                    reason: "no responders: JetStream is not enabled for this account or domain".into(),
                },
                _ => LagError::Unavailable {
                    connection: conn.name.to_string(),
                    reason: e.to_string(),
                },
            });
        }
        Ok(Ok(reply)) => reply,
    };
    parse_consumer_info(&reply.payload, &conn.name, key)
}

/// Whether `conn` is connected. The connection is made in the background,
/// so a call that comes before its first connection ever completed (a
/// process that has just started, a client that called as soon as the gRPC
/// port opened) waits for it until `deadline`. Once it has been up, a lost
/// connection answers at once: the caller learns of it within no deadline.
async fn first_connected(conn: &Connection, deadline: tokio::time::Instant) -> bool {
    use async_nats::connection::State;
    if conn.client.connection_state() == State::Connected {
        return true;
    }
    let mut connects = conn.connects.clone();
    if *connects.borrow() > 0 {
        return false;
    }
    let first = tokio::time::timeout_at(deadline, connects.wait_for(|n| *n > 0)).await;
    matches!(first, Ok(Ok(_))) && conn.client.connection_state() == State::Connected
}

fn timeout(conn: &Connection) -> LagError {
    LagError::Timeout {
        connection: conn.name.to_string(),
        millis: conn.request_timeout.as_millis(),
    }
}

/// Only the fields we read; the server sends many more.
#[derive(Deserialize)]
struct InfoReply {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    num_ack_pending: u64,
    #[serde(default)]
    num_redelivered: u64,
    #[serde(default)]
    num_waiting: u64,
    #[serde(default)]
    delivered: Option<SequenceInfo>,
    #[serde(default)]
    config: Option<InfoConfig>,
}

#[derive(Deserialize)]
struct SequenceInfo {
    #[serde(default)]
    consumer_seq: u64,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct InfoConfig {
    #[serde(default)]
    filter_subject: Option<String>,
    #[serde(default)]
    filter_subjects: Option<Vec<String>>,
    /// -1 (or absent, or 0) is unlimited.
    #[serde(default)]
    max_ack_pending: Option<i64>,
    #[serde(default)]
    ack_policy: Option<String>,
    /// -1 (or absent, or 0) is unlimited.
    #[serde(default)]
    max_deliver: Option<i64>,
}

/// Turns a `CONSUMER.INFO` reply into a state or a precise error.
pub fn parse_consumer_info(payload: &[u8], connection: &str, key: &ConsumerKey) -> Result<ConsumerState, LagError> {
    let reply: InfoReply = serde_json::from_slice(payload)
        .map_err(|e| LagError::Internal(format!("decoding CONSUMER.INFO for {key}: {e}")))?;
    if let Some(error) = reply.error {
        return Err(match error.err_code {
            STREAM_NOT_FOUND => LagError::StreamNotFound {
                connection: connection.to_string(),
                stream: key.stream.to_string(),
            },
            CONSUMER_NOT_FOUND => LagError::ConsumerNotFound {
                connection: connection.to_string(),
                stream: key.stream.to_string(),
                consumer: key.consumer.to_string(),
            },
            _ if error.code == 503 => LagError::Unavailable {
                connection: connection.to_string(),
                reason: error.description,
            },
            err_code => LagError::Api {
                connection: connection.to_string(),
                code: error.code,
                err_code,
                description: error.description,
            },
        });
    }
    let limit = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
    let mut filter_subjects = Vec::new();
    let (mut max_ack_pending, mut max_deliver, mut ack_policy) = (None, None, String::new());
    if let Some(config) = reply.config {
        filter_subjects.extend(config.filter_subject.filter(|s| !s.is_empty()));
        filter_subjects.extend(config.filter_subjects.unwrap_or_default());
        max_ack_pending = limit(config.max_ack_pending);
        max_deliver = limit(config.max_deliver);
        ack_policy = config.ack_policy.unwrap_or_default();
    }
    Ok(ConsumerState {
        pending: reply.num_pending,
        ack_pending: reply.num_ack_pending,
        redelivered: reply.num_redelivered,
        waiting: reply.num_waiting,
        delivered_consumer_seq: reply.delivered.map_or(0, |d| d.consumer_seq),
        max_ack_pending,
        filter_subjects,
        ack_policy,
        max_deliver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ConsumerKey {
        ConsumerKey::new("default", None, "ORDERS", "workers")
    }

    #[test]
    fn parses_counts_and_filters() {
        let payload =
            br#"{"type":"io.nats.jetstream.api.v1.consumer_info_response","stream_name":"ORDERS","name":"workers",
            "config":{"durable_name":"workers","filter_subjects":["orders.eu.>","orders.us.>"],
                "ack_policy":"explicit","max_deliver":-1},
            "delivered":{"consumer_seq":57,"stream_seq":90},"ack_floor":{"consumer_seq":50,"stream_seq":53},
            "num_ack_pending":3,"num_redelivered":1,"num_waiting":2,"num_pending":40}"#;
        let s = parse_consumer_info(payload, "default", &key()).unwrap();
        assert_eq!(
            s.delivered_consumer_seq, 57,
            "the consumer's own sequence, not the stream's"
        );
        assert_eq!((s.ack_policy.as_str(), s.max_deliver), ("explicit", None));
        assert_eq!((s.pending, s.ack_pending, s.redelivered, s.waiting), (40, 3, 1, 2));
        assert_eq!(s.lag(), 43);
        assert_eq!(s.filter_subjects, vec!["orders.eu.>", "orders.us.>"]);
        assert_eq!(s.max_ack_pending, None, "no limit in the config");
    }

    #[test]
    fn max_ack_pending_is_a_limit_only_when_positive() {
        for (config, expected) in [
            (r#"{"max_ack_pending":4}"#, Some(4)),
            (r#"{"max_ack_pending":-1}"#, None),
            (r#"{"max_ack_pending":0}"#, None),
            (r#"{}"#, None),
        ] {
            let payload = format!(r#"{{"config":{config},"num_pending":1}}"#);
            let s = parse_consumer_info(payload.as_bytes(), "default", &key()).unwrap();
            assert_eq!(s.max_ack_pending, expected, "{config}");
        }
    }

    #[test]
    fn max_deliver_is_a_limit_only_when_positive() {
        for (config, expected) in [
            (r#"{"max_deliver":5}"#, Some(5)),
            (r#"{"max_deliver":-1}"#, None),
            (r#"{}"#, None),
        ] {
            let payload = format!(r#"{{"config":{config}}}"#);
            let s = parse_consumer_info(payload.as_bytes(), "default", &key()).unwrap();
            assert_eq!(s.max_deliver, expected, "{config}");
        }
    }

    #[test]
    fn maps_not_found_codes() {
        let stream = br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        assert!(matches!(
            parse_consumer_info(stream, "default", &key()),
            Err(LagError::StreamNotFound { .. })
        ));
        let consumer = br#"{"error":{"code":404,"err_code":10014,"description":"consumer not found"}}"#;
        assert!(matches!(
            parse_consumer_info(consumer, "default", &key()),
            Err(LagError::ConsumerNotFound { .. })
        ));
        let other = br#"{"error":{"code":500,"err_code":10999,"description":"boom"}}"#;
        assert!(matches!(
            parse_consumer_info(other, "default", &key()),
            Err(LagError::Api { err_code: 10999, .. })
        ));
        assert!(matches!(
            parse_consumer_info(b"not json", "default", &key()),
            Err(LagError::Internal(_))
        ));
    }

    #[test]
    fn domain_prefix() {
        assert_eq!(api_prefix(None), "$JS.API");
        assert_eq!(api_prefix(Some("hub")), "$JS.hub.API");
    }
}
