//! The claim a service team writes: `EventDrivenService.spec`.
//!
//! Every value rule is a CEL rule in the schema, so the API server and
//! `eds render` refuse the same claims with the same messages (see
//! [`super::validate`]). Messages name the field they are about because the
//! API server reports a rule at the object that carries it.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;
use super::status::EventDrivenServiceStatus;

/// The NATS server the workload connects to when the claim names none.
pub const DEFAULT_NATS_URL: &str = "nats://nats.nats.svc:4222";
pub const DEFAULT_PORT: i32 = 8080;
pub const DEFAULT_LIVENESS_PATH: &str = "/health";
pub const DEFAULT_READINESS_PATH: &str = "/ready";
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
pub const DEFAULT_MAX_REPLICAS: i32 = 10;
pub const DEFAULT_LAG_THRESHOLD: i32 = 5;
/// How long the HPA keeps the highest replica count it was asked for before
/// it removes any: five minutes, so a bursty queue keeps its pool between
/// two bursts (the HPA's own default too).
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 300;
/// At most half the replicas go in one minute: each one removed hands its
/// unfinished messages to the rest, which need time to take them on.
pub const DEFAULT_SCALE_DOWN_PERCENT_PER_MINUTE: i32 = 50;

/// A NATS JetStream worker: one image that consumes one durable consumer,
/// autoscaled by KEDA on that consumer's lag.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "platform.bizmatters.io",
    version = "v1alpha1",
    kind = "EventDrivenService",
    plural = "eventdrivenservices",
    shortname = "eds",
    namespaced,
    status = "EventDrivenServiceStatus",
    derive = "PartialEq",
    doc = "A NATS JetStream worker, autoscaled by KEDA on its consumer's lag.",
    printcolumn(name = "Stream", type_ = "string", json_path = ".spec.nats.stream"),
    printcolumn(name = "Consumer", type_ = "string", json_path = ".spec.nats.consumer"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Every child is named after the claim, and a Service name must be a
    // DNS-1035 label: refuse a claim whose Service could never be created.
    validation = Rule::new(
        "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message("metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a letter), because the Service is named after it")
)]
#[serde(rename_all = "camelCase")]
pub struct EventDrivenServiceSpec {
    /// Container image of the worker.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\p{Z}\\\\p{Cc}]+$')").message("image must not be empty or contain whitespace"))]
    pub image: String,

    /// Resource size: requests and limits for CPU and memory.
    #[serde(default)]
    pub size: Size,

    /// Overrides single values of the size's requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// The JetStream consumer the worker reads.
    pub nats: Nats,

    /// Replica bounds and the lag that drives them.
    #[serde(default)]
    pub scaling: Scaling,

    /// Secret whose keys become environment variables (envFrom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(schema::DNS_SUBDOMAIN_RULE).message("secretName must be a DNS subdomain (lowercase letters, digits, '-' and '.')"))]
    pub secret_name: Option<String>,

    /// More secrets whose keys become environment variables (envFrom), after `secretName`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secret_refs: Vec<SecretReference>,

    /// Plain environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !(e.name in ['NATS_URL', 'NATS_STREAM', 'NATS_CONSUMER']))").message("env must not set NATS_URL, NATS_STREAM or NATS_CONSUMER: they come from spec.nats"))]
    #[x_kube(validation = Rule::new("self.all(e, self.exists_one(f, f.name == e.name))").message("env names must be unique"))]
    pub env: Vec<EnvVar>,

    /// Secrets for pulling the images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<SecretReference>,

    /// Runs before the worker starts (migrations, setup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<InitContainer>,

    /// The port the worker serves its probes (and the Service) on.
    #[serde(default = "default_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: i32,

    /// HTTP paths of the liveness and readiness probes.
    #[serde(default)]
    pub probes: Probes,

    /// Seconds a replica has, after SIGTERM, to finish and acknowledge the
    /// messages it holds and hand the rest back before it is killed.
    /// Unset: 40, NATS's default ack_wait of 30 s plus a 10 s margin (see
    /// docs/worker-contract.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("terminationGracePeriodSeconds must be between 1 and 3600"))]
    pub termination_grace_period_seconds: Option<i64>,
}

/// Requests and limits, by name (see `render::resources`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Micro,
    Small,
    #[default]
    Medium,
    Large,
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Size::Micro => "micro",
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        })
    }
}

/// Single values that replace the size's.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    #[x_kube(validation = Rule::new(schema::QUANTITY_RULE).message("resources cpu must be a non-negative quantity such as 500m or 2 (at most 12 digits before the point and 6 after)"))]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::quantity")]
    #[x_kube(validation = Rule::new(schema::QUANTITY_RULE).message("resources memory must be a non-negative quantity such as 512Mi or 2Gi (at most 12 digits before the point and 6 after)"))]
    pub memory: Option<Quantity>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nats {
    /// NATS server URL(s) the workload connects to (comma separated).
    #[serde(default = "default_nats_url")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^(nats|tls|ws|wss)://[^\\\\p{Z}\\\\p{Cc}]+$')").message("nats.url must be a nats://, tls://, ws:// or wss:// URL without whitespace"))]
    pub url: String,

    /// JetStream stream name.
    #[schemars(length(max = 255))]
    #[x_kube(validation = Rule::new(schema::NATS_NAME_RULE).message("nats.stream must be a NATS name: not empty, no '.', '*', '>', '/', '\\' or whitespace"))]
    #[x_kube(validation = Rule::new(schema::NATS_NAME_BYTES_RULE).message("nats.stream must be at most 255 bytes (UTF-8), as NATS counts"))]
    pub stream: String,

    /// Durable consumer name on that stream.
    #[schemars(length(max = 255))]
    #[x_kube(validation = Rule::new(schema::NATS_NAME_RULE).message("nats.consumer must be a NATS name: not empty, no '.', '*', '>', '/', '\\' or whitespace"))]
    #[x_kube(validation = Rule::new(schema::NATS_NAME_BYTES_RULE).message("nats.consumer must be at most 255 bytes (UTF-8), as NATS counts"))]
    pub consumer: String,

    /// The scaler's named NATS connection that reaches this stream
    /// (default: the scaler's default connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new(schema::DNS_LABEL_RULE).message("nats.connection must be a DNS label (lowercase letters, digits and '-')"))]
    pub connection: Option<String>,

    /// The durable consumer's settings. With it, the controller creates the
    /// consumer (stamped as this claim's), keeps it in shape and reports what
    /// it cannot change; without it, the consumer is made elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_config: Option<ConsumerConfig>,

    /// What happens to a consumer this claim created when the claim is
    /// deleted: `Retain` (the default) keeps it, `Delete` deletes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The settings of a durable pull consumer for a scaled worker pool. Acks are
/// always explicit: each replica acknowledges each message it finished.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.backoff) || self.maxDeliver > size(self.backoff)").message("nats.consumerConfig.maxDeliver must be greater than the number of nats.consumerConfig.backoff steps"))]
pub struct ConsumerConfig {
    /// Subjects of the stream the consumer delivers (every subject when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 255)))]
    #[x_kube(validation = Rule::new(schema::NATS_SUBJECTS_RULE).message("nats.consumerConfig.filterSubjects must be NATS subjects: dot-separated tokens, no empty token, no whitespace, '>' only last"))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message("nats.consumerConfig.filterSubjects must be unique"))]
    pub filter_subjects: Vec<String>,

    /// How long a delivered message may stay unacknowledged before it is
    /// redelivered: a number and a unit (ms, s, m, h), from 1s to 1h.
    #[serde(default = "default_ack_wait")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new(schema::CONSUMER_DURATION_RULE).message("nats.consumerConfig.ackWait must be a duration such as 30s, 500ms or 2m, from 1s to 1h"))]
    pub ack_wait: String,

    /// Deliveries of one message before JetStream gives up on it.
    #[serde(default = "default_max_deliver")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("nats.consumerConfig.maxDeliver must be between 1 and 10000"))]
    pub max_deliver: i64,

    /// Waits before each redelivery, in place of `ackWait` (JetStream takes
    /// the first step as the ack wait; the last one repeats): durations such
    /// as 10s or 1m, from 1s to 1h.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 16)))]
    #[x_kube(validation = Rule::new(schema::CONSUMER_BACKOFF_RULE).message("nats.consumerConfig.backoff steps must be durations such as 10s or 1m, from 1s to 1h"))]
    pub backoff: Vec<String>,

    /// Most messages delivered and not yet acknowledged, over all replicas
    /// (default: `scaling.maxReplicas` × `scaling.concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000000").message("nats.consumerConfig.maxAckPending must be between 1 and 1000000"))]
    pub max_ack_pending: Option<i64>,

    /// Where a new consumer starts in the stream. JetStream cannot change it
    /// on an existing consumer.
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
}

/// Where a new consumer starts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeliverPolicy {
    /// The oldest message still in the stream.
    #[default]
    All,
    /// Only messages stored after the consumer was created.
    New,
    /// The last message in the stream.
    Last,
    /// The last message of each subject.
    LastPerSubject,
}

/// What happens to the claim's consumer when the claim is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// The consumer (and its position in the stream) stays.
    #[default]
    Retain,
    /// The controller deletes the consumer it created, then lets the claim go.
    Delete,
}

/// The ack wait a consumer gets when the claim states none: NATS's own
/// default, so a consumer made by eds behaves as one made by hand.
pub const DEFAULT_ACK_WAIT: &str = "30s";
/// Deliveries of one message: finite, so one poisonous message cannot occupy
/// the pool for ever.
pub const DEFAULT_MAX_DELIVER: i64 = 5;

impl ConsumerConfig {
    /// The longest a replica may hold one message before JetStream hands it
    /// to another: the longest `backoff` step, or `ackWait` without one.
    pub fn longest_ack_wait(&self) -> Option<Duration> {
        if self.backoff.is_empty() {
            return parse_duration(&self.ack_wait);
        }
        self.backoff.iter().map(|step| parse_duration(step)).max().flatten()
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            filter_subjects: vec![],
            ack_wait: default_ack_wait(),
            max_deliver: DEFAULT_MAX_DELIVER,
            backoff: vec![],
            max_ack_pending: None,
            deliver_policy: DeliverPolicy::default(),
        }
    }
}

/// A duration as the claim writes it: digits and one unit (`ms`, `s`, `m`,
/// `h`), the form the schema's CEL rule for consumer durations admits.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(number.checked_mul(millis)?))
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("scaling.minReplicas must not be greater than scaling.maxReplicas"))]
pub struct Scaling {
    /// Fewest replicas; 0 scales to zero when there is no lag.
    #[serde(default = "default_min_replicas")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("scaling.minReplicas must be between 0 and 1000"))]
    pub min_replicas: i32,

    /// Most replicas.
    #[serde(default = "default_max_replicas")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("scaling.maxReplicas must be between 1 and 1000"))]
    pub max_replicas: i32,

    /// Lag (pending + unacknowledged messages) per replica: an integer or a
    /// decimal string such as "5" or "2.5".
    #[serde(default = "default_lag_threshold")]
    #[schemars(schema_with = "schema::int_or_string")]
    #[x_kube(validation = Rule::new("string(self).matches('^[0-9]{1,9}(\\\\.[0-9]{1,6})?$') && !string(self).matches('^[0.]+$')").message("scaling.lagThreshold must be a positive number below one billion, such as 5 or \"2.5\""))]
    pub lag_threshold: IntOrString,

    /// The time the backlog should take to drain, such as "60s", "5m" or
    /// "1h30m" (1s to 24h). When set, the scaler measures the consumer's
    /// arrival rate and one replica's capacity and streams the HPA a target
    /// that drains the lag in this time (KEDA v2.21 or later); `lagThreshold`
    /// stays the target until a replica's capacity has been measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$') && self != '' && duration(self) >= duration('1s') && duration(self) <= duration('24h')").message("scaling.drainWithin must be a duration from 1s to 24h in hours, minutes and seconds, such as \"60s\", \"5m\" or \"1h30m\""))]
    pub drain_within: Option<String>,

    /// Lag at or below which a scaled-to-zero worker stays at zero.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0").message("scaling.activationLagThreshold must be 0 or more"))]
    pub activation_lag_threshold: i64,

    /// Seconds between KEDA's checks (KEDA's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("scaling.pollingInterval must be between 1 and 3600 seconds"))]
    pub polling_interval: Option<i32>,

    /// Seconds after the last activity before scaling to zero (KEDA's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 86400").message("scaling.cooldownPeriod must be between 0 and 86400 seconds"))]
    pub cooldown_period: Option<i32>,

    /// Replicas to hold while the scaler cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,

    /// The most un-acknowledged messages one replica holds at once, its
    /// client's prefetch included (1 when unset). With the consumer's
    /// `max_ack_pending`, it caps the replicas worth running at
    /// `ceil(max_ack_pending / concurrency)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000000").message("scaling.concurrency must be between 1 and 1000000"))]
    pub concurrency: Option<i32>,

    /// How long a pool with a backlog and ready replicas may acknowledge
    /// nothing before the claim's `ConsumerHealthy` condition says
    /// `Stalled`: a duration such as "5m", "90s" or "1h30m" (5m when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]{1,5}(h|m|s)){1,3}$') && !self.matches('^(0+(h|m|s))+$')").message("scaling.stallAfter must be a positive duration such as 5m, 90s or 1h30m"))]
    pub stall_after: Option<String>,

    /// How fast the HPA may remove replicas (from `maxReplicas` down to 1;
    /// KEDA itself takes the last one away after `cooldownPeriod`).
    #[serde(default)]
    pub scale_down: ScaleDown,
}

/// Limits on scale-in, rendered into the HPA's `behavior.scaleDown`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    /// Seconds the HPA looks back and keeps the highest replica count it
    /// computed in that time.
    #[serde(default = "default_scale_down_stabilization")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 3600").message("scaling.scaleDown.stabilizationWindowSeconds must be between 0 and 3600"))]
    pub stabilization_window_seconds: i32,

    /// Most replicas removed in one minute, in percent of the count at the
    /// start of that minute (100: no limit but `maxPodsPerMinute`).
    #[serde(default = "default_scale_down_percent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("scaling.scaleDown.maxPercentPerMinute must be between 1 and 100"))]
    pub max_percent_per_minute: i32,

    /// Most replicas removed in one minute, as a count. When both limits are
    /// set, the stricter one applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("scaling.scaleDown.maxPodsPerMinute must be between 1 and 1000"))]
    pub max_pods_per_minute: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Failed scaler reads in a row before the fallback applies.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("scaling.fallback.failureThreshold must be between 1 and 1000"))]
    pub failure_threshold: i32,
    /// Replicas while falling back.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("scaling.fallback.replicas must be between 1 and 1000"))]
    pub replicas: i32,
}

/// A Secret in the claim's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct SecretReference {
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(schema::DNS_SUBDOMAIN_RULE).message("secret names must be DNS subdomains (lowercase letters, digits, '-' and '.')"))]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
pub struct EnvVar {
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$')").message("env names must be letters, digits, '_', '-' or '.', not starting with a digit"))]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.image) || has(self.command)").message("initContainer needs a command or an image: the main image's own entrypoint would never finish"))]
pub struct InitContainer {
    /// Defaults to the main image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\p{Z}\\\\p{Cc}]+$')").message("initContainer.image must not be empty or contain whitespace"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// Liveness probe path (HTTP GET on `port`).
    #[serde(default = "default_liveness_path")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(schema::HTTP_PATH_RULE).message("probes.livenessPath must start with '/' and contain no whitespace"))]
    pub liveness_path: String,
    /// Readiness probe path (HTTP GET on `port`).
    #[serde(default = "default_readiness_path")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(schema::HTTP_PATH_RULE).message("probes.readinessPath must start with '/' and contain no whitespace"))]
    pub readiness_path: String,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            min_replicas: DEFAULT_MIN_REPLICAS,
            max_replicas: DEFAULT_MAX_REPLICAS,
            lag_threshold: default_lag_threshold(),
            drain_within: None,
            activation_lag_threshold: 0,
            polling_interval: None,
            cooldown_period: None,
            fallback: None,
            concurrency: None,
            stall_after: None,
            scale_down: ScaleDown::default(),
        }
    }
}

/// How long a pool with a backlog and ready replicas may go without an
/// acknowledgement before it is `Stalled` (`scaling.stallAfter` unset).
pub const DEFAULT_STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl Scaling {
    /// `stallAfter` as a duration; the default where it is unset (or, in a
    /// claim that skipped validation, unreadable).
    pub fn stall_after(&self) -> std::time::Duration {
        self.stall_after
            .as_deref()
            .and_then(|text| text.parse::<jiff::SignedDuration>().ok())
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_STALL_AFTER)
    }
}

impl Default for ScaleDown {
    fn default() -> Self {
        ScaleDown {
            stabilization_window_seconds: DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS,
            max_percent_per_minute: DEFAULT_SCALE_DOWN_PERCENT_PER_MINUTE,
            max_pods_per_minute: None,
        }
    }
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            liveness_path: default_liveness_path(),
            readiness_path: default_readiness_path(),
        }
    }
}

fn default_nats_url() -> String {
    DEFAULT_NATS_URL.to_string()
}
fn default_ack_wait() -> String {
    DEFAULT_ACK_WAIT.to_string()
}
fn default_max_deliver() -> i64 {
    DEFAULT_MAX_DELIVER
}
fn default_port() -> i32 {
    DEFAULT_PORT
}
fn default_min_replicas() -> i32 {
    DEFAULT_MIN_REPLICAS
}
fn default_max_replicas() -> i32 {
    DEFAULT_MAX_REPLICAS
}
fn default_lag_threshold() -> IntOrString {
    IntOrString::Int(DEFAULT_LAG_THRESHOLD)
}
fn default_liveness_path() -> String {
    DEFAULT_LIVENESS_PATH.to_string()
}
fn default_readiness_path() -> String {
    DEFAULT_READINESS_PATH.to_string()
}
fn default_scale_down_stabilization() -> i32 {
    DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS
}
fn default_scale_down_percent() -> i32 {
    DEFAULT_SCALE_DOWN_PERCENT_PER_MINUTE
}
