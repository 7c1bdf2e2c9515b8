//! KEDA's ScaledObject: the Deployment scaled on the consumer's lag, as
//! served by the platform's eds scaler through an `external-push` trigger.
use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior};
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{Platform, child_metadata};
use crate::api::{EventDrivenService, ScaleDown};
use crate::trigger::{TRIGGER_TYPE, claim_metadata};

/// The part of KEDA's `keda.sh/v1alpha1` ScaledObject we write. Every field we
/// do not set is left out of what we apply, so server-side apply never makes
/// us the owner of KEDA's defaults.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "keda.sh",
    version = "v1alpha1",
    kind = "ScaledObject",
    namespaced,
    status = "ScaledObjectStatus",
    schema = "disabled",
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ScaledObjectFallback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advanced: Option<AdvancedConfig>,
    pub triggers: Vec<ScaledObjectTrigger>,
}

/// KEDA's `advanced`: we set only the HPA's behaviour.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdvancedConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizontal_pod_autoscaler_config: Option<HorizontalPodAutoscalerConfig>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscalerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectFallback {
    pub failure_threshold: i32,
    pub replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectTrigger {
    #[serde(rename = "type")]
    pub type_: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_ref: Option<AuthenticationRef>,
}

/// The KEDA (Cluster)TriggerAuthentication a trigger takes secrets from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// What the controller reads back: KEDA's `Ready`, `Active` and `Fallback`
/// conditions. Other status fields are ignored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ScaledObjectCondition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub fn desired_scaled_object(eds: &EventDrivenService, platform: &Platform) -> ScaledObject {
    let scaling = &eds.spec.scaling;
    let tls = platform.scaler_trigger_authentication.is_some();
    let metadata = claim_metadata(eds, &platform.scaler_address, tls);
    // TLS material for KEDA's side of the gRPC connection lives in one
    // platform-wide ClusterTriggerAuthentication, never in the claim.
    let authentication_ref = platform
        .scaler_trigger_authentication
        .as_ref()
        .map(|name| AuthenticationRef {
            name: name.clone(),
            kind: Some("ClusterTriggerAuthentication".into()),
        });
    ScaledObject {
        metadata: child_metadata(eds),
        spec: ScaledObjectSpec {
            scale_target_ref: ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: eds.name_any(),
            },
            polling_interval: scaling.polling_interval,
            cooldown_period: scaling.cooldown_period,
            min_replica_count: Some(scaling.min_replicas),
            max_replica_count: Some(scaling.max_replicas),
            // KEDA applies a fallback only to AverageValue metrics, which is
            // what an external trigger without `metricType` reports.
            fallback: scaling.fallback.as_ref().map(|f| ScaledObjectFallback {
                failure_threshold: f.failure_threshold,
                replicas: f.replicas,
            }),
            advanced: Some(AdvancedConfig {
                horizontal_pod_autoscaler_config: Some(HorizontalPodAutoscalerConfig {
                    behavior: Some(HorizontalPodAutoscalerBehavior {
                        scale_down: Some(scale_down_rules(&scaling.scale_down)),
                        scale_up: None,
                    }),
                }),
            }),
            triggers: vec![ScaledObjectTrigger {
                type_: TRIGGER_TYPE.into(),
                metadata,
                authentication_ref,
            }],
        },
        status: None,
    }
}

/// The period both scale-down limits count over: the claim words them per minute.
const SCALE_DOWN_PERIOD_SECONDS: i32 = 60;

/// The claim's limits as HPA policies. With two policies the HPA would take
/// the larger step by default; both are limits, so the stricter one wins.
fn scale_down_rules(scale_down: &ScaleDown) -> HPAScalingRules {
    let policy = |type_: &str, value: i32| HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds: SCALE_DOWN_PERIOD_SECONDS,
    };
    let mut policies = vec![policy("Percent", scale_down.max_percent_per_minute)];
    policies.extend(scale_down.max_pods_per_minute.map(|pods| policy("Pods", pods)));
    HPAScalingRules {
        select_policy: (policies.len() > 1).then(|| "Min".into()),
        policies: Some(policies),
        stabilization_window_seconds: Some(scale_down.stabilization_window_seconds),
        tolerance: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use serde_json::{Value, json};

    use super::*;
    use crate::api::Fallback;

    fn platform() -> Platform {
        Platform {
            scaler_address: "scaler.platform.svc:7000".into(),
            scaler_trigger_authentication: None,
        }
    }

    fn metadata(eds: &EventDrivenService) -> BTreeMap<String, String> {
        let mut triggers = desired_scaled_object(eds, &platform()).spec.triggers;
        assert_eq!(triggers.len(), 1);
        let trigger = triggers.remove(0);
        assert_eq!(trigger.type_, "external-push");
        trigger.metadata
    }

    #[test]
    fn scales_the_deployment_between_the_claims_bounds() {
        let eds = EventDrivenService::test().with_replicas(0, 7);
        let spec = desired_scaled_object(&eds, &platform()).spec;
        assert_eq!(
            spec.scale_target_ref,
            ScaleTargetRef {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: "orders-worker".into(),
            }
        );
        assert_eq!((spec.min_replica_count, spec.max_replica_count), (Some(0), Some(7)));
        assert_eq!((spec.polling_interval, spec.cooldown_period), (None, None));
        assert_eq!(spec.fallback, None);
        let applied = serde_json::to_value(&spec).unwrap();
        for absent in ["pollingInterval", "cooldownPeriod", "fallback", "idleReplicaCount"] {
            assert!(applied.get(absent).is_none(), "{absent} in {applied}");
        }
    }

    #[test]
    fn polling_cooldown_and_fallback_when_set() {
        let eds = EventDrivenService::test().with_spec(|s| {
            s.scaling.polling_interval = Some(15);
            s.scaling.cooldown_period = Some(0);
            s.scaling.fallback = Some(Fallback {
                failure_threshold: 3,
                replicas: 4,
            });
        });
        let spec = desired_scaled_object(&eds, &platform()).spec;
        assert_eq!((spec.polling_interval, spec.cooldown_period), (Some(15), Some(0)));
        assert_eq!(
            spec.fallback,
            Some(ScaledObjectFallback {
                failure_threshold: 3,
                replicas: 4
            })
        );
    }

    #[test]
    fn the_trigger_names_the_scaler_and_the_consumer_and_nothing_secret() {
        let eds = EventDrivenService::test()
            .with_secret_name("config")
            .with_spec(|s| s.scaling.activation_lag_threshold = 3);
        let expected: BTreeMap<String, String> = [
            ("scalerAddress", "scaler.platform.svc:7000"),
            ("stream", "ORDERS"),
            ("consumer", "orders-workers"),
            ("lagThreshold", "5"),
            ("activationLagThreshold", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(metadata(&eds), expected);
    }

    #[test]
    fn tls_to_the_scaler_through_the_platforms_trigger_authentication() {
        let eds = EventDrivenService::test();
        let plain = &desired_scaled_object(&eds, &platform()).spec.triggers[0];
        assert_eq!(plain.authentication_ref, None);
        assert!(!plain.metadata.contains_key("enableTLS"));

        let tls = Platform {
            scaler_trigger_authentication: Some("eds-scaler-tls".into()),
            ..platform()
        };
        let trigger = &desired_scaled_object(&eds, &tls).spec.triggers[0];
        assert_eq!(trigger.metadata["enableTLS"], "true");
        assert_eq!(
            trigger.authentication_ref,
            Some(AuthenticationRef {
                name: "eds-scaler-tls".into(),
                kind: Some("ClusterTriggerAuthentication".into()),
            })
        );
    }

    #[test]
    fn the_connection_name_only_when_set() {
        assert!(!metadata(&EventDrivenService::test()).contains_key("natsConnection"));
        let eds = EventDrivenService::test().with_connection("hub-eu");
        assert_eq!(metadata(&eds)["natsConnection"], "hub-eu");
    }

    #[test]
    fn lag_threshold_as_string_or_integer_renders_the_same() {
        for (threshold, text) in [
            (IntOrString::String("5".into()), "5"),
            (IntOrString::Int(5), "5"),
            (IntOrString::String("2.5".into()), "2.5"),
        ] {
            let eds = EventDrivenService::test().with_lag_threshold(threshold);
            assert_eq!(metadata(&eds)["lagThreshold"], text);
        }
    }

    fn scale_down(eds: &EventDrivenService) -> Value {
        let spec = serde_json::to_value(desired_scaled_object(eds, &platform()).spec).unwrap();
        assert_eq!(
            spec["advanced"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["horizontalPodAutoscalerConfig"],
            "only the behaviour: {spec}"
        );
        let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
        assert!(behavior.get("scaleUp").is_none(), "{behavior}");
        behavior["scaleDown"].clone()
    }

    #[test]
    fn scale_down_defaults_suit_queue_workers() {
        assert_eq!(
            scale_down(&EventDrivenService::test()),
            json!({
                "stabilizationWindowSeconds": 300,
                "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
            })
        );
    }

    #[test]
    fn scale_down_limits_from_the_claim_and_the_stricter_one_wins() {
        let eds = EventDrivenService::test().with_spec(|s| {
            s.scaling.scale_down = ScaleDown {
                stabilization_window_seconds: 0,
                max_percent_per_minute: 100,
                max_pods_per_minute: Some(2),
            }
        });
        assert_eq!(
            scale_down(&eds),
            json!({
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Min",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 60},
                    {"type": "Pods", "value": 2, "periodSeconds": 60},
                ],
            })
        );
    }
}
