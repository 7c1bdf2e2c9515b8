//! Push activation: tell KEDA a sleeping consumer has work the moment the
//! first message is stored, without polling every consumer all the time.
//!
//! While a consumer is idle, its watcher holds a small ephemeral push consumer
//! on the stream with the same subject filter, `deliver_policy: new` and
//! `headers_only`: the server sends one header-only message per new stored
//! message and nothing while the stream is quiet (apart from a heartbeat every
//! few seconds). A notification triggers one fresh `CONSUMER.INFO`. As soon
//! as every subscriber is active the notifier is dropped, so a busy stream
//! costs one cached read per `active_poll`, not a message per message.
//!
//! A slow re-check (`idle_recheck`) and a re-check on every reconnect catch
//! what no new message announces (a consumer reset, a server restart).
//! Watchers are shared by every stream open on the same consumer and stop when
//! the last one closes.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, push},
};
use futures::StreamExt;
use tokio::sync::watch;

use super::{ConsumerKey, LagCache, cache::Reading};
use crate::nats::Connections;

/// How often watchers re-read.
#[derive(Clone, Copy, Debug)]
pub struct WatchConfig {
    /// Re-read interval while every subscriber is active (through the cache).
    pub active_poll: Duration,
    /// Re-read interval while idle with a notifier in place.
    pub idle_recheck: Duration,
    /// Least time between two notification-driven reads of one consumer.
    pub min_spacing: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            active_poll: Duration::from_secs(1),
            idle_recheck: Duration::from_secs(15),
            min_spacing: Duration::from_millis(20),
        }
    }
}

/// Every consumer watched for push activation.
pub struct Watchers {
    cache: Arc<LagCache>,
    connections: Connections,
    config: WatchConfig,
    watches: Mutex<HashMap<ConsumerKey, Arc<Watch>>>,
}

struct Watch {
    readings: watch::Sender<Option<Reading>>,
    /// The highest activation threshold among subscribers: the watcher keeps
    /// its notifier while the lag is at or below it.
    max_threshold: Mutex<f64>,
}

/// One subscriber's view: every new reading of the consumer.
pub struct Subscription {
    pub readings: watch::Receiver<Option<Reading>>,
}

impl Watchers {
    pub fn new(cache: Arc<LagCache>, connections: Connections, config: WatchConfig) -> Arc<Self> {
        Arc::new(Watchers {
            cache,
            connections,
            config,
            watches: Mutex::default(),
        })
    }

    /// Subscribes to `key`, starting its watcher if none runs.
    pub fn subscribe(self: &Arc<Self>, key: &ConsumerKey, activation_threshold: f64) -> Subscription {
        let mut watches = self.watches.lock().expect("watchers lock");
        if let Some(existing) = watches.get(key) {
            let mut max = existing.max_threshold.lock().expect("threshold lock");
            *max = max.max(activation_threshold);
            return Subscription {
                readings: existing.readings.subscribe(),
            };
        }
        let (readings, rx) = watch::channel(None);
        let watch = Arc::new(Watch {
            readings,
            max_threshold: Mutex::new(activation_threshold),
        });
        watches.insert(key.clone(), watch.clone());
        metrics::gauge!("eds_push_watchers").set(watches.len() as f64);
        tokio::spawn(Arc::clone(self).run(key.clone(), watch));
        Subscription { readings: rx }
    }

    /// How many consumers are watched now.
    pub fn len(&self) -> usize {
        self.watches.lock().expect("watchers lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes `key` if nobody listens any more. Under the map lock, so a
    /// subscriber arriving now either finds the watch alive or starts anew.
    fn retire_if_unused(&self, key: &ConsumerKey, watch: &Arc<Watch>) -> bool {
        let mut watches = self.watches.lock().expect("watchers lock");
        if watch.readings.receiver_count() > 0 {
            return false;
        }
        if watches.get(key).is_some_and(|w| Arc::ptr_eq(w, watch)) {
            watches.remove(key);
        }
        metrics::gauge!("eds_push_watchers").set(watches.len() as f64);
        true
    }

    async fn run(self: Arc<Self>, key: ConsumerKey, watch: Arc<Watch>) {
        let Some(conn) = self.connections.get(Some(&key.connection)).cloned() else {
            // Metadata parsing refuses unknown connections; keep the
            // subscriber informed anyway rather than hanging it.
            let result = Err(super::LagError::UnknownConnection(key.connection.to_string()));
            watch.readings.send_replace(Some(Reading {
                at: Instant::now(),
                result,
            }));
            while !self.retire_if_unused(&key, &watch) {
                watch.readings.closed().await;
            }
            return;
        };
        let mut connects = conn.connects.clone();
        // Boxed, as is its start below: a watcher's task is sized for its
        // largest state, and thousands of active watchers hold no notifier.
        let mut notifier: Option<Box<Notifier>> = None;
        let mut retry = Backoff::default();
        let mut since = Instant::now();
        let mut last_notified: Option<Instant> = None;
        loop {
            let reading = self.cache.get_newer_than(&key, since).await;
            let state = reading.result.as_ref().ok().cloned();
            watch.readings.send_replace(Some(reading));
            let threshold = *watch.max_threshold.lock().expect("threshold lock");
            let all_active = state.as_ref().is_some_and(|s| s.lag() as f64 > threshold);
            if all_active {
                notifier = None;
            } else if let (None, Some(state)) = (&notifier, &state)
                && retry.due()
            {
                match Box::pin(Notifier::start(&conn.client, &key, &state.filter_subjects)).await {
                    Ok(created) => {
                        notifier = Some(Box::new(created));
                        retry = Backoff::default();
                        // Re-read: a message stored between the read above and
                        // the notifier's start would otherwise go unseen.
                        since = Instant::now();
                        continue;
                    }
                    Err(e) => {
                        let wait = retry.failed();
                        tracing::warn!(consumer = %key, error = %e, retry_in = ?wait,
                            "cannot watch the stream for new messages; polling until then");
                    }
                }
            }
            let wait = match (&state, &notifier) {
                (Some(_), Some(_)) if !all_active => self.config.idle_recheck,
                _ => self.config.active_poll,
            };
            tokio::select! {
                _ = watch.readings.closed() => {
                    if self.retire_if_unused(&key, &watch) {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    since = Instant::now().checked_sub(self.cache.ttl()).unwrap_or(since);
                }
                changed = connects.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A restarted server has lost our ephemeral consumer.
                    notifier = None;
                    since = Instant::now();
                }
                message = next_or_pending(&mut notifier) => {
                    match message {
                        Some(Ok(_)) => {
                            // Bound the read rate on a stream that is busy but
                            // still below the activation threshold.
                            if let Some(last) = last_notified {
                                let gap = last.elapsed();
                                if gap < self.config.min_spacing {
                                    tokio::time::sleep(self.config.min_spacing - gap).await;
                                }
                            }
                            last_notified = Some(Instant::now());
                            since = Instant::now();
                        }
                        Some(Err(e)) => {
                            tracing::debug!(consumer = %key, error = %e, "notifier lost; recreating");
                            notifier = None;
                            since = Instant::now();
                        }
                        None => notifier = None,
                    }
                }
            }
        }
    }
}

/// Doubling retry delay for notifier creation (e.g. missing permissions).
#[derive(Default)]
struct Backoff {
    next: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    fn due(&self) -> bool {
        self.next.is_none_or(|next| Instant::now() >= next)
    }

    fn failed(&mut self) -> Duration {
        self.delay = (self.delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.next = Some(Instant::now() + self.delay);
        self.delay
    }
}

/// An ephemeral, header-only push consumer that announces new messages. It
/// is deleted when dropped; `inactive_threshold` removes it on the server if
/// the scaler dies first.
struct Notifier {
    js: jetstream::Context,
    stream: Arc<str>,
    name: String,
    messages: push::Messages,
}

impl Notifier {
    async fn start(
        client: &async_nats::Client,
        key: &ConsumerKey,
        filters: &[String],
    ) -> Result<Self, async_nats::Error> {
        let js = match &key.domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain.as_ref()),
            None => jetstream::new(client.clone()),
        };
        let inbox = client.new_inbox();
        let name = format!("eds-watch-{}", inbox.rsplit('.').next().unwrap_or_default());
        let mut config = push::Config {
            name: Some(name.clone()),
            description: Some(format!("eds push activation for {}", key.consumer)),
            deliver_subject: inbox,
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            headers_only: true,
            idle_heartbeat: NOTIFIER_HEARTBEAT,
            inactive_threshold: NOTIFIER_INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        match filters {
            [] => {}
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        let consumer = js.create_consumer_on_stream(config, key.stream.as_ref()).await?;
        let messages = consumer.messages().await?;
        Ok(Notifier {
            js,
            stream: key.stream.clone(),
            name,
            messages,
        })
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let (js, stream, name) = (self.js.clone(), self.stream.clone(), std::mem::take(&mut self.name));
        tokio::spawn(async move {
            if let Err(e) = js.delete_consumer_from_stream(&name, stream.as_ref()).await {
                tracing::debug!(consumer = %name, error = %e, "notifier left for the server to expire");
            }
        });
    }
}

/// Server heartbeats on an idle notifier; a missed one means it is gone.
const NOTIFIER_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the server keeps a notifier nobody listens to.
const NOTIFIER_INACTIVE: Duration = Duration::from_secs(30);

/// The notifier's next message, or never when there is no notifier.
async fn next_or_pending(
    notifier: &mut Option<Box<Notifier>>,
) -> Option<Result<jetstream::Message, push::MessagesError>> {
    match notifier {
        Some(n) => n.messages.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lag::{ConsumerState, LagError, cache::LagSource};
    use futures::future::BoxFuture;

    struct Idle;

    impl LagSource for Idle {
        fn fetch(&self, _key: &ConsumerKey) -> BoxFuture<'static, Result<ConsumerState, LagError>> {
            Box::pin(async { Ok(ConsumerState::default()) })
        }
    }

    /// Every watched consumer holds one watcher task for as long as KEDA
    /// keeps its stream open: at 10,000 consumers each KiB is 10 MiB.
    #[test]
    fn a_watcher_task_stays_small() {
        let cache = LagCache::new(Arc::new(Idle), Duration::from_secs(1));
        let watchers = Watchers::new(cache, Connections::default(), WatchConfig::default());
        let (readings, _rx) = watch::channel(None);
        let state = Arc::new(Watch {
            readings,
            max_threshold: Mutex::new(0.0),
        });
        let task = watchers.run(ConsumerKey::new("default", None, "S", "C"), state);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a watcher task takes {size} bytes");
    }
}
