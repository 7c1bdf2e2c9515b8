//! The NATS side of the claim's consumer: read it, create it, put drifted
//! fields back, delete it. Three JetStream API requests on
//! `$JS.API.CONSUMER.{INFO,CREATE,DELETE}.<stream>.<consumer>`, nothing else
//! (see deploy/nats/eds-permissions.conf).
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, Context};
use serde_json::json;

use super::{Deletion, Outcome, Owner, Ownership, deletes_consumer, desired_consumer, drift, ownership};
use crate::api::EventDrivenService;
use crate::nats::Connection;

/// JetStream's error codes for a missing consumer and a missing stream.
const CONSUMER_NOT_FOUND: u64 = 10014;
const STREAM_NOT_FOUND: u64 = 10059;

/// A consumer request that did not get an answer we can act on.
#[derive(Debug, thiserror::Error)]
#[error("{action} consumer {consumer:?} on stream {stream:?} over NATS connection {connection:?}: {message}")]
pub struct ConsumerError {
    pub action: &'static str,
    pub connection: String,
    pub stream: String,
    pub consumer: String,
    pub message: String,
}

/// Keeps the claim's consumer in shape (see [`ensure`]); `None`, with no
/// request to NATS, when the claim has no `consumerConfig` or is not stored.
pub async fn reconcile(conn: &Connection, claim: &EventDrivenService) -> Result<Option<Outcome>, ConsumerError> {
    let Some(owner) = Owner::of(claim) else { return Ok(None) };
    let Some(desired) = desired_consumer(claim, &owner) else {
        return Ok(None);
    };
    ensure(conn, &claim.spec.nats.stream, desired, &owner).await.map(Some)
}

/// What the claim's deletion does to its consumer: deleted (if this claim's
/// own) under `deletionPolicy: Delete`; `None`, with no request to NATS,
/// under `Retain` or without `consumerConfig`.
pub async fn release(conn: &Connection, claim: &EventDrivenService) -> Result<Option<Deletion>, ConsumerError> {
    let Some(owner) = Owner::of(claim) else { return Ok(None) };
    if !deletes_consumer(claim) {
        return Ok(None);
    }
    let nats = &claim.spec.nats;
    delete_owned(conn, &nats.stream, &nats.consumer, &owner).await.map(Some)
}

/// Creates the claim's consumer, or puts back what drifted on a consumer
/// stamped as this claim's. A consumer that is not this claim's, or that
/// differs in a field JetStream cannot change, is left exactly as it is.
pub async fn ensure(
    conn: &Connection,
    stream: &str,
    desired: pull::Config,
    owner: &Owner,
) -> Result<Outcome, ConsumerError> {
    let name = desired.durable_name.clone().unwrap_or_default();
    let request = Request::new(conn, stream, &name);
    let Some(live) = request.info().await? else {
        let context = request.context();
        context
            .create_consumer_strict_on_stream(desired, stream)
            .await
            .map_err(|e| request.error("creating", e))?;
        return Ok(Outcome::Created);
    };
    match ownership(&live.metadata, owner) {
        Ownership::Ours => {}
        other => return Ok(Outcome::NotOwned(other)),
    }
    let found = drift(&desired, &live);
    if !found.immutable.is_empty() {
        return Ok(Outcome::Misconfigured(found.immutable));
    }
    if found.updatable.is_empty() {
        return Ok(Outcome::InShape);
    }
    request
        .context()
        .update_consumer_on_stream(desired, stream)
        .await
        .map_err(|e| request.error("updating", e))?;
    Ok(Outcome::Updated(found.updatable))
}

/// Deletes the claim's consumer if it carries this claim's stamp.
pub async fn delete_owned(
    conn: &Connection,
    stream: &str,
    name: &str,
    owner: &Owner,
) -> Result<Deletion, ConsumerError> {
    let request = Request::new(conn, stream, name);
    let Some(live) = request.info().await? else {
        return Ok(Deletion::Absent);
    };
    match ownership(&live.metadata, owner) {
        Ownership::Ours => {}
        other => return Ok(Deletion::NotOwned(other)),
    }
    let reply: Response<serde_json::Value> = request
        .context()
        .request(format!("CONSUMER.DELETE.{stream}.{name}"), &json!({}))
        .await
        .map_err(|e| request.error("deleting", e))?;
    match reply {
        Response::Ok(_) => Ok(Deletion::Deleted),
        Response::Err { error } if error.error_code().0 == CONSUMER_NOT_FOUND => Ok(Deletion::Absent),
        Response::Err { error } => Err(request.error("deleting", error)),
    }
}

/// One consumer's requests over one connection.
struct Request<'a> {
    conn: &'a Connection,
    stream: &'a str,
    consumer: &'a str,
}

impl<'a> Request<'a> {
    fn new(conn: &'a Connection, stream: &'a str, consumer: &'a str) -> Self {
        Request { conn, stream, consumer }
    }

    /// Each request is bounded by the connection's request timeout.
    fn context(&self) -> Context {
        jetstream::ContextBuilder::new()
            .timeout(self.conn.request_timeout)
            .build(self.conn.client.clone())
    }

    /// The live consumer's config, `None` when there is no such consumer. A
    /// missing stream is an error: the claim's consumer cannot be made.
    async fn info(&self) -> Result<Option<consumer::Config>, ConsumerError> {
        let reply: Response<consumer::Info> = self
            .context()
            .request(format!("CONSUMER.INFO.{}.{}", self.stream, self.consumer), &json!({}))
            .await
            .map_err(|e| self.error("reading", e))?;
        match reply {
            Response::Ok(info) => Ok(Some(info.config)),
            Response::Err { error } if error.error_code().0 == CONSUMER_NOT_FOUND => Ok(None),
            Response::Err { error } if error.error_code().0 == STREAM_NOT_FOUND => Err(self.error(
                "reading",
                format!("stream {:?} not found: create the stream first", self.stream),
            )),
            Response::Err { error } => Err(self.error("reading", error)),
        }
    }

    fn error(&self, action: &'static str, message: impl std::fmt::Display) -> ConsumerError {
        ConsumerError {
            action,
            connection: self.conn.name.to_string(),
            stream: self.stream.to_string(),
            consumer: self.consumer.to_string(),
            message: message.to_string(),
        }
    }
}
