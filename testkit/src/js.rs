//! JetStream fixtures: streams, durable consumers and published work.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

pub async fn js(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

pub async fn stream_with(js: &jetstream::Context, name: &str, subjects: &[&str]) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A stream on `prefix.>` holding `n` durable pull consumers `c0`..,
/// each filtered to its own subject `prefix.<i>`, with room for `spare`
/// more consumers (nats-server allows 1,000 per stream unless told).
pub async fn stream_of_consumers(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
    n: usize,
    spare: usize,
) -> stream::Stream {
    let s = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            max_consumers: i32::try_from(n + spare).expect("a test-sized count"),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..n {
        pull_consumer(&s, &format!("c{i}"), &format!("{prefix}.{i}"), Duration::from_secs(30)).await;
    }
    s
}

/// A durable pull consumer with explicit acks; `filter` "" reads everything.
pub async fn pull_consumer(
    stream: &stream::Stream,
    name: &str,
    filter: &str,
    ack_wait: Duration,
) -> consumer::Consumer<consumer::pull::Config> {
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            filter_subject: filter.into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Takes up to `n` messages as a worker would, neither acknowledging nor
/// refusing them: those there now (async-nats' `fetch` answers at once with
/// what the consumer has, and does not wait for `n`).
pub async fn take(consumer: &consumer::Consumer<consumer::pull::Config>, n: usize) -> Vec<jetstream::Message> {
    use futures::StreamExt;
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut taken = Vec::new();
    while let Some(message) = batch.next().await {
        taken.push(message.unwrap());
    }
    taken
}

/// Takes `n` messages, fetching until they are all in hand (at most 5 s): a
/// message just refused may be back only after the first fetch.
pub async fn take_exactly(consumer: &consumer::Consumer<consumer::pull::Config>, n: usize) -> Vec<jetstream::Message> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut taken = Vec::new();
    while taken.len() < n && std::time::Instant::now() < deadline {
        let more = take(consumer, n - taken.len()).await;
        if more.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        taken.extend(more);
    }
    taken
}

/// Publishes `n` messages and waits for each to be stored.
pub async fn publish(js: &jetstream::Context, subject: &str, n: usize) {
    for i in 0..n {
        js.publish(subject.to_string(), format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Stream `WORK` (subjects `work.>`), durable `c`, and `n` messages waiting.
pub async fn work_with_lag(js: &jetstream::Context, n: usize) {
    let s = stream_with(js, "WORK", &["work.>"]).await;
    pull_consumer(&s, "c", "", Duration::from_secs(30)).await;
    publish(js, "work.x", n).await;
}
