//! What the controller reports: `EventDrivenService.status`.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::{Deserialize, Serialize};

use super::schema;

/// The claim's children are applied and healthy: `Reconciled`,
/// `DeploymentAvailable` and `ScalerReady` all hold.
pub const CONDITION_READY: &str = "Ready";
/// The last reconcile applied every child without error.
pub const CONDITION_RECONCILED: &str = "Reconciled";
/// The ScaledObject's own `Ready` condition (with `Active` in its message).
pub const CONDITION_SCALER_READY: &str = "ScalerReady";
/// The Deployment's `Available` condition.
pub const CONDITION_DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
/// Whether the JetStream consumer can be drained by adding replicas: False
/// with a reason (`ConsumerMissing`, `Saturated`, `PoisonMessages`,
/// `Stalled`, `Misconfigured`...) when it cannot. Only the controller, which
/// reads NATS, sets it; it does not feed `Ready`.
pub const CONDITION_CONSUMER_HEALTHY: &str = "ConsumerHealthy";
/// The reason `Reconciled` and `Ready` are False when the claim's namespace
/// may not use the NATS connection (or read the stream) it names: nothing
/// is applied and NATS is not read for it. The message names the namespace,
/// the connection and the rule.
pub const REASON_NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDrivenServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciled`, `ScalerReady`, `DeploymentAvailable` and, from
    /// the controller, `ConsumerHealthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// The Deployment's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// The Deployment's ready replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// The consumer's lag (pending + unacknowledged messages) when last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}
