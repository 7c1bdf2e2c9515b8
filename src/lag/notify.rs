//! New-message notices for idle watched consumers: one shared notifier per
//! stream, whatever the number of consumers watched on it.
//!
//! A notifier is a small ephemeral push consumer on the stream with
//! `deliver_policy: new`, `headers_only` and no acks: the server sends one
//! header-only message per new stored message, and a heartbeat every few
//! seconds while the stream is quiet. Its subject filter is the union of its
//! consumers' filters, or the whole stream when they overlap or are many.
//! Each notice wakes the watchers whose consumer filter matches its subject.
//!
//! One per stream, not one per consumer: a notifier counts against the
//! stream's `max_consumers` (nats-server allows 1,000 per stream by default),
//! so a consumer each would fill the stream's slots and refuse the teams' own
//! durables. It lives while at least one consumer on the stream is idle and
//! watched, and is deleted when dropped; `inactive_threshold` removes it on
//! the server if the scaler dies first.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::StatusCode;
use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{AckPolicy, DeliverPolicy, push},
    stream::{ConsumerError, ConsumerErrorKind},
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, watch};

use super::{ConsumerKey, subject};

/// More distinct filters than this and the notifier takes the whole stream.
const MAX_FILTERS: usize = 256;
/// Server heartbeats on an idle notifier; a missed one means it is gone.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the server keeps a notifier nobody listens to.
const INACTIVE: Duration = Duration::from_secs(30);
/// Quiet time after a registration before the notifier is replaced.
const SETTLE: Duration = Duration::from_millis(10);

/// Which stream a notifier serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StreamKey {
    connection: Arc<str>,
    domain: Option<Arc<str>>,
    stream: Arc<str>,
}

/// Every stream notifier of the process.
#[derive(Default)]
pub struct Notifiers {
    streams: Mutex<HashMap<StreamKey, Arc<Shared>>>,
}

/// What a stream's notifier task and its registrations share.
struct Shared {
    key: StreamKey,
    interests: Mutex<HashMap<u64, Arc<Interest>>>,
    next_id: AtomicU64,
    /// Registrations came or went.
    changed: Notify,
}

/// One idle consumer's wish to hear of new messages.
struct Interest {
    filters: Vec<String>,
    /// The watcher's own wake-up.
    wake: Arc<Notify>,
    /// A live notifier sees every message this consumer counts.
    armed: AtomicBool,
}

/// A watcher's registration with its stream's notifier; dropping it
/// unregisters.
pub struct Registration {
    shared: Arc<Shared>,
    interest: Arc<Interest>,
    id: u64,
}

/// The registrant's `wake` is notified on a new message the consumer
/// counts, and whenever [`Registration::armed`] changes (on arming: a
/// message may have been stored between its last read and the notifier's
/// start).
impl Registration {
    /// Whether a live notifier covers the consumer: if not, poll.
    pub fn armed(&self) -> bool {
        self.interest.armed.load(Ordering::Acquire)
    }

    /// The consumer filters this registration was made for.
    pub fn filters(&self) -> &[String] {
        &self.interest.filters
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.interests.lock().expect("interests lock").remove(&self.id);
        self.shared.changed.notify_one();
    }
}

impl Notifiers {
    /// Registers `key`'s consumer (with `filters`, empty for the whole
    /// stream) with its stream's notifier, starting the notifier if needed.
    pub fn register(
        self: &Arc<Self>,
        key: &ConsumerKey,
        client: &async_nats::Client,
        connects: &watch::Receiver<u64>,
        filters: &[String],
        wake: Arc<Notify>,
    ) -> Registration {
        let stream_key = StreamKey {
            connection: key.connection.clone(),
            domain: key.domain.clone(),
            stream: key.stream.clone(),
        };
        let mut streams = self.streams.lock().expect("notifiers lock");
        let shared = match streams.get(&stream_key) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(Shared {
                    key: stream_key.clone(),
                    interests: Mutex::default(),
                    next_id: AtomicU64::new(0),
                    changed: Notify::new(),
                });
                streams.insert(stream_key, shared.clone());
                metrics::gauge!(super::metrics::PUSH_NOTIFIERS.name).set(streams.len() as f64);
                tokio::spawn(Arc::clone(self).run(shared.clone(), client.clone(), connects.clone()));
                shared
            }
        };
        let interest = Arc::new(Interest {
            filters: filters.to_vec(),
            wake,
            armed: AtomicBool::new(false),
        });
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared
            .interests
            .lock()
            .expect("interests lock")
            .insert(id, interest.clone());
        shared.changed.notify_one();
        Registration { shared, interest, id }
    }

    /// How many streams have a notifier task now.
    pub fn len(&self) -> usize {
        self.streams.lock().expect("notifiers lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the stream's entry if nobody is registered. Under the map
    /// lock, so a registration arriving now finds a live task or starts one.
    fn retire_if_unused(&self, shared: &Arc<Shared>) -> bool {
        let mut streams = self.streams.lock().expect("notifiers lock");
        if !shared.interests.lock().expect("interests lock").is_empty() {
            return false;
        }
        if streams.get(&shared.key).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            streams.remove(&shared.key);
        }
        metrics::gauge!(super::metrics::PUSH_NOTIFIERS.name).set(streams.len() as f64);
        true
    }

    /// Removes the stream's entry, registered or not.
    fn forget(&self, shared: &Arc<Shared>) {
        let mut streams = self.streams.lock().expect("notifiers lock");
        if streams.get(&shared.key).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            streams.remove(&shared.key);
        }
        metrics::gauge!(super::metrics::PUSH_NOTIFIERS.name).set(streams.len() as f64);
    }

    /// One stream's notifier: keeps a push consumer that sees every
    /// registered consumer's messages, and routes its notices.
    async fn run(self: Arc<Self>, shared: Arc<Shared>, client: async_nats::Client, mut connects: watch::Receiver<u64>) {
        // Only later (re)connects matter: the one that made the client ready
        // may still be unseen by this copy of the receiver.
        connects.borrow_and_update();
        let mut live: Option<Box<Live>> = None;
        let mut retry = Backoff::default();
        let mut routes = Routes::default();
        let mut settled = false;
        loop {
            let interests: Vec<Arc<Interest>> = shared
                .interests
                .lock()
                .expect("interests lock")
                .values()
                .cloned()
                .collect();
            if interests.is_empty() && self.retire_if_unused(&shared) {
                return;
            }
            let covered = |live: &Option<Box<Live>>| {
                live.as_ref().is_some_and(|l| {
                    interests
                        .iter()
                        .all(|i| subject::sees_all(l.filters.as_deref(), &i.filters))
                })
            };
            let replace_now = !interests.is_empty() && !covered(&live) && retry.due();
            if replace_now && !settled {
                // Let a burst of registrations (many ScaledObjects opening
                // their streams at start) settle into one replacement.
                settled = true;
                tokio::time::sleep(SETTLE).await;
                continue;
            }
            if replace_now {
                settled = false;
                // The first notifier takes exactly its consumers' subjects; a
                // replacement (a consumer it does not cover came) takes the
                // whole stream, so one stream sees at most one replacement
                // while its notifier lives, however many consumers come.
                let wanted = match live {
                    None => subject::union(interests.iter().map(|i| i.filters.as_slice()), MAX_FILTERS),
                    Some(_) => None,
                };
                match replace(&client, &shared.key, &mut live, wanted, &interests, &mut routes).await {
                    Ok(()) => retry = Backoff::default(),
                    Err(e) => {
                        let wait = retry.failed();
                        tracing::warn!(stream = %shared.key.stream, connection = %shared.key.connection,
                            error = %e, retry_in = ?wait,
                            "cannot watch the stream for new messages; its idle consumers are polled until then");
                    }
                }
            }
            routes.rebuild(&interests, live.as_ref().map(|l| l.filters.as_deref()));
            drop(interests);
            let retry_at = retry.next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shared.changed.notified() => {}
                _ = tokio::time::sleep_until(retry_at.into()), if !routes.all_armed => {}
                changed = connects.changed() => {
                    // A restarted server has lost the ephemeral consumer.
                    live = None;
                    if changed.is_err() {
                        // The connection is closed for good (shutdown).
                        routes.rebuild(&[], None);
                        self.forget(&shared);
                        return;
                    }
                }
                lost = route_notices(&mut live, &routes) => {
                    tracing::debug!(stream = %shared.key.stream, reason = lost, "notifier lost; recreating");
                    live = None;
                }
            }
        }
    }
}

/// Replaces the notifier by one with `filters`. The new one starts before the
/// old one goes, so no notice falls between them. On a stream whose consumer
/// limit leaves no room for both, the old one goes first: everyone is
/// disarmed, and re-armed (so woken, to re-read) once the new one is up,
/// which covers a message stored in between.
async fn replace(
    client: &async_nats::Client,
    key: &StreamKey,
    live: &mut Option<Box<Live>>,
    filters: Option<Vec<String>>,
    interests: &[Arc<Interest>],
    routes: &mut Routes,
) -> Result<(), ConsumerError> {
    let started = match Box::pin(Live::start(client, key, filters.clone())).await {
        Err(e) if is_consumer_limit(&e) && live.is_some() => {
            routes.rebuild(interests, None);
            if let Some(old) = live.take() {
                old.delete().await;
            }
            Box::pin(Live::start(client, key, filters)).await
        }
        other => other,
    };
    let started = started?;
    if let Some(mut old) = live.take() {
        // Notices the old one already received still count.
        while let Some(Some(message)) = old.messages.next().now_or_never() {
            if message.status.is_none() {
                routes.wake(message.subject.as_str());
            }
        }
        old.delete().await;
    }
    *live = Some(Box::new(started));
    Ok(())
}

fn is_consumer_limit(error: &ConsumerError) -> bool {
    matches!(error.kind(), ConsumerErrorKind::JetStream(e) if e.error_code() == ErrorCode::MAXIMUM_CONSUMERS_LIMIT)
}

/// Wakes the matching consumers for every notice, until the notifier fails.
async fn route_notices(live: &mut Option<Box<Live>>, routes: &Routes) -> &'static str {
    let Some(live) = live else {
        return std::future::pending().await;
    };
    loop {
        // Anything at all (a notice or a heartbeat) within two heartbeats,
        // or the notifier is gone (deleted, or its server restarted).
        // (Measured from the last one heard, not from this call: the caller
        // restarts it whenever registrations change.)
        let deadline = live.heard + 2 * HEARTBEAT;
        let next = tokio::time::timeout_at(deadline.into(), live.messages.next()).await;
        live.heard = Instant::now();
        match next {
            Err(_) => return "no heartbeat",
            Ok(None) => return "closed",
            // Notices are plain messages on their own subject; the server's
            // idle heartbeats carry status 100; any other status (409: the
            // consumer was deleted) ends this notifier.
            Ok(Some(message)) => match message.status {
                None => routes.wake(message.subject.as_str()),
                Some(status) if status == StatusCode::IDLE_HEARTBEAT => {}
                Some(_) => return "status",
            },
        }
    }
}

/// Which registered consumers a notice's subject concerns.
#[derive(Default)]
struct Routes {
    literal: HashMap<String, Vec<Arc<Interest>>>,
    patterns: Vec<(String, Arc<Interest>)>,
    everything: Vec<Arc<Interest>>,
    all_armed: bool,
}

impl Routes {
    /// Indexes the consumers the live notifier covers and arms them;
    /// disarms the rest. `live` is the notifier's filters (`Some(None)`: the
    /// whole stream), `None` without a notifier. Every consumer whose arming
    /// changes is woken.
    fn rebuild(&mut self, interests: &[Arc<Interest>], live: Option<Option<&[String]>>) {
        self.literal.clear();
        self.patterns.clear();
        self.everything.clear();
        self.all_armed = true;
        for interest in interests {
            let armed = live.is_some_and(|filters| subject::sees_all(filters, &interest.filters));
            if interest.armed.swap(armed, Ordering::AcqRel) != armed {
                interest.wake.notify_one();
            }
            if !armed {
                self.all_armed = false;
                continue;
            }
            if interest.filters.is_empty() {
                self.everything.push(interest.clone());
            }
            for filter in &interest.filters {
                if filter.split('.').any(|t| t == "*" || t == ">") {
                    self.patterns.push((filter.clone(), interest.clone()));
                } else {
                    self.literal.entry(filter.clone()).or_default().push(interest.clone());
                }
            }
        }
    }

    fn wake(&self, subject: &str) {
        let literal = self.literal.get(subject).into_iter().flatten();
        let patterns = self
            .patterns
            .iter()
            .filter(|(filter, _)| subject::matches(filter, subject))
            .map(|(_, interest)| interest);
        for interest in literal.chain(patterns).chain(&self.everything) {
            interest.wake.notify_one();
        }
    }
}

/// A live notifier consumer: deleted when dropped.
struct Live {
    js: jetstream::Context,
    stream: Arc<str>,
    name: String,
    /// Its subject filters; `None` for the whole stream.
    filters: Option<Vec<String>>,
    /// The deliver subject's subscription: notices and heartbeats.
    messages: async_nats::Subscriber,
    /// When it last heard anything (a notice or a heartbeat).
    heard: Instant,
}

impl Live {
    async fn start(
        client: &async_nats::Client,
        key: &StreamKey,
        filters: Option<Vec<String>>,
    ) -> Result<Self, ConsumerError> {
        let js = match &key.domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain.as_ref()),
            None => jetstream::new(client.clone()),
        };
        let inbox = client.new_inbox();
        let name = format!("eds-watch-{}", inbox.rsplit('.').next().unwrap_or_default());
        let mut config = push::Config {
            name: Some(name.clone()),
            description: Some("eds push activation: new-message notices".into()),
            deliver_subject: inbox,
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            headers_only: true,
            idle_heartbeat: HEARTBEAT,
            inactive_threshold: INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        match filters.as_deref() {
            None | Some([]) => {}
            Some([one]) => config.filter_subject = one.clone(),
            Some(many) => config.filter_subjects = many.to_vec(),
        }
        // Subscribed, and the server told so, before the consumer exists: a
        // push consumer created before its deliver subject has interest
        // starts delivering only once the server notices the interest (about
        // 100 ms later), and a message stored in between would wait for it.
        let messages = client
            .subscribe(config.deliver_subject.clone())
            .await
            .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Other, e))?;
        client
            .flush()
            .await
            .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Other, e))?;
        js.create_consumer_on_stream(config, key.stream.as_ref()).await?;
        Ok(Live {
            js,
            stream: key.stream.clone(),
            name,
            filters: filters.filter(|f| !f.is_empty()),
            messages,
            heard: Instant::now(),
        })
    }
}

impl Live {
    /// Deletes the consumer now, rather than in the background on drop.
    async fn delete(mut self: Box<Self>) {
        let name = std::mem::take(&mut self.name);
        if let Err(e) = self.js.delete_consumer_from_stream(&name, self.stream.as_ref()).await {
            tracing::debug!(consumer = %name, error = %e, "notifier left for the server to expire");
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let (js, stream, name) = (self.js.clone(), self.stream.clone(), std::mem::take(&mut self.name));
        tokio::spawn(async move {
            if let Err(e) = js.delete_consumer_from_stream(&name, stream.as_ref()).await {
                tracing::debug!(consumer = %name, error = %e, "notifier left for the server to expire");
            }
        });
    }
}

/// Doubling retry delay for notifier creation (e.g. missing permissions):
/// 1 s, then twice as long per failure in a row, at most a minute.
struct Backoff {
    next: Option<Instant>,
    delays: backon::ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        let delays = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(60))
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            next: None,
            delays: backon::BackoffBuilder::build(delays),
        }
    }
}

impl Backoff {
    fn due(&self) -> bool {
        self.next.is_none_or(|next| Instant::now() >= next)
    }

    fn failed(&mut self) -> Duration {
        let delay = self.delays.next().unwrap_or(Duration::from_secs(60));
        self.next = Some(Instant::now() + delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(filters: &[&str]) -> Arc<Interest> {
        Arc::new(Interest {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            wake: Arc::new(Notify::new()),
            armed: AtomicBool::new(false),
        })
    }

    /// Whether `interest` holds a wake-up, consuming it.
    fn woken(interest: &Interest) -> bool {
        use futures::FutureExt;
        interest.wake.notified().now_or_never().is_some()
    }

    #[test]
    fn notices_wake_only_the_consumers_they_concern() {
        let created = interest(&["orders.created"]);
        let any_order = interest(&["orders.*"]);
        let everything = interest(&[]);
        let payments = interest(&["payments.>"]);
        let all = [created.clone(), any_order.clone(), everything.clone(), payments.clone()];
        let mut routes = Routes::default();
        // No live notifier: nobody is armed, nobody routed.
        routes.rebuild(&all, None);
        assert!(!routes.all_armed);
        assert!(all.iter().all(|i| !woken(i)), "nothing changed yet");
        routes.wake("orders.created");
        assert!(all.iter().all(|i| !woken(i)));

        // Arming wakes each consumer once, so it re-reads.
        routes.rebuild(&all, Some(None));
        assert!(routes.all_armed);
        assert!(all.iter().all(|i| woken(i)), "arming wakes");

        routes.wake("orders.created");
        assert!(woken(&created) && woken(&any_order) && woken(&everything));
        assert!(!woken(&payments));
        routes.wake("payments.card.eu");
        assert!(woken(&payments) && woken(&everything));
        assert!(!woken(&created) && !woken(&any_order));

        // A notifier on `orders.>` only does not arm the others.
        let wide = Some(vec!["orders.>".to_string()]);
        routes.rebuild(&all, Some(wide.as_deref()));
        assert!(!routes.all_armed);
        assert!(
            !everything.armed.load(Ordering::Acquire) && woken(&everything),
            "disarming wakes"
        );
        assert!(
            created.armed.load(Ordering::Acquire) && !woken(&created),
            "no change, no wake"
        );
    }
}
