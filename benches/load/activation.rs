//! Activation latency: from a publish on an idle consumer to the first
//! `true` KEDA sees, pushed on StreamIsActive or found by polling IsActive.
use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::driver::{Keda, ScaledObject};
use crate::stats::SplitMix;
use testkit::js::{pull_consumer, stream_with};

/// Long enough that no message is redelivered during a trial.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// Push: one StreamIsActive per idle consumer of a new stream `name`, then
/// one publish at a time, each to a different consumer, timed until its
/// stream says `true`.
pub async fn push(keda: &Keda, js: &jetstream::Context, name: &str, trials: usize) -> Vec<Duration> {
    let prefix = name.to_lowercase();
    let stream = stream_with(js, name, &[&format!("{prefix}.>")]).await;
    let mut streams = Vec::new();
    for i in 0..trials {
        pull_consumer(&stream, &format!("w{i}"), &format!("{prefix}.{i}"), ACK_WAIT).await;
        let so = ScaledObject::new(name, &format!("w{i}"));
        let mut active = keda
            .client()
            .stream_is_active(so.reference)
            .await
            .expect("opens")
            .into_inner();
        let first = active.message().await.expect("stream").expect("first value");
        assert!(!first.result, "w{i} starts idle");
        streams.push(active);
    }
    // Each watcher puts its notifier in place after its first read.
    sleep(Duration::from_secs(2)).await;
    let mut latencies = Vec::with_capacity(trials);
    for (i, active) in streams.iter_mut().enumerate() {
        sleep(Duration::from_millis(100)).await;
        let published = Instant::now();
        let ack = js
            .publish(format!("{prefix}.{i}"), "work".into())
            .await
            .expect("publish");
        let reply = timeout(Duration::from_secs(20), active.message())
            .await
            .expect("a push within 20 s")
            .expect("stream")
            .expect("a value");
        latencies.push(published.elapsed());
        assert!(reply.result, "w{i} pushed active");
        ack.await.expect("stored");
    }
    latencies
}

/// Polling IsActive every `period`, as KEDA does without push: one poller
/// per idle consumer, each from a random phase, and one publish that every
/// consumer sees. Each poller times the publish to its first `true`.
pub async fn polled(keda: &Keda, js: &jetstream::Context, trials: usize, period: Duration) -> Vec<Duration> {
    let name = format!("POLL{}", period.as_secs());
    let subject = format!("poll{}.x", period.as_secs());
    let stream = stream_with(js, &name, &[&subject]).await;
    let mut scaled_objects = Vec::new();
    for i in 0..trials {
        pull_consumer(&stream, &format!("p{i}"), "", ACK_WAIT).await;
        scaled_objects.push(ScaledObject::new(&name, &format!("p{i}")));
    }
    let start = Instant::now();
    // A full period after the start every poller is in its cycle, so the
    // publish lands at a uniformly random point of each one's interval.
    let publish_at = start + period;
    let mut rng = SplitMix::from_time();
    let pollers = scaled_objects.into_iter().map(|so| {
        let mut client = keda.client();
        let mut next = start + rng.phase(period);
        async move {
            loop {
                sleep_until(next).await;
                let active = client
                    .is_active(so.reference.clone())
                    .await
                    .expect("IsActive")
                    .into_inner();
                if active.result {
                    assert!(Instant::now() >= publish_at, "active before the publish");
                    return Instant::now() - publish_at;
                }
                next += period;
            }
        }
    });
    let publisher = async {
        sleep_until(publish_at).await;
        js.publish(subject.clone(), "work".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    };
    let (latencies, ()) = tokio::join!(join_all(pollers), publisher);
    latencies
}
