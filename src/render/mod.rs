//! Pure functions: a claim in, its desired children out.
//!
//! The controller and `eds render` share these, so what a platform team
//! diffs in CI is what the cluster gets. Nothing here does I/O: `eds render`
//! (in `cli.rs`) reads the claim file and prints.
mod deployment;
pub mod resources;
mod scaled_object;
mod service;
mod service_account;
pub mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::Deserialize;

pub use deployment::{
    CONTAINER_NAME, DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS, ENV_NATS_CONSUMER, ENV_NATS_STREAM, ENV_NATS_URL,
    INIT_CONTAINER_NAME, NATS_DEFAULT_ACK_WAIT_SECONDS, PORT_NAME, TERMINATION_GRACE_MARGIN_SECONDS,
    desired_deployment, termination_grace_period_seconds,
};
pub use resources::{ResourceError, size_resources};
pub use scaled_object::{
    AdvancedConfig, HorizontalPodAutoscalerConfig, ScaleTargetRef, ScaledObject, ScaledObjectCondition,
    ScaledObjectFallback, ScaledObjectSpec, ScaledObjectStatus, ScaledObjectTrigger, desired_scaled_object,
};
pub use service::desired_service;
pub use service_account::desired_service_account;

use crate::api::{EventDrivenService, check_claim};
use crate::{Error, Result};

/// The scaler Service KEDA reaches when the platform is installed as documented.
pub const DEFAULT_SCALER_ADDRESS: &str = "eds-scaler.eds-system.svc:9090";
/// The `app.kubernetes.io/managed-by` value on every child.
pub const MANAGED_BY: &str = "eds";

/// What the children need to know about the platform rather than the claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// host:port of the eds scaler's gRPC Service, written into every
    /// ScaledObject as KEDA's `scalerAddress`.
    pub scaler_address: String,
    /// A KEDA ClusterTriggerAuthentication holding `caCert` (and, for mutual
    /// TLS, `tlsClientCert` and `tlsClientKey`): set when the scaler serves
    /// TLS, and every trigger connects with TLS through it.
    pub scaler_trigger_authentication: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            scaler_address: DEFAULT_SCALER_ADDRESS.to_string(),
            scaler_trigger_authentication: None,
        }
    }
}

/// Everything one claim renders to.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    pub service: Service,
    pub scaled_object: ScaledObject,
}

/// The four children of a claim. Fails only when the claim's resources
/// cannot be satisfied (a request above its limit).
pub fn desired_children(eds: &EventDrivenService, platform: &Platform) -> Result<Children> {
    Ok(Children {
        service_account: desired_service_account(eds),
        deployment: desired_deployment(eds).map_err(|source| Error::Unrenderable {
            claim: claim_ref(eds),
            source,
        })?,
        service: desired_service(eds),
        scaled_object: desired_scaled_object(eds, platform),
    })
}

impl Children {
    /// Multi-document YAML, in the order a cluster can apply them.
    pub fn to_yaml(&self) -> Result<String> {
        let documents = [
            to_yaml(&self.service_account)?,
            to_yaml(&self.deployment)?,
            to_yaml(&self.service)?,
            to_yaml(&self.scaled_object)?,
        ];
        Ok(documents.iter().map(|d| format!("---\n{d}")).collect())
    }
}

fn to_yaml(object: &impl serde::Serialize) -> Result<String> {
    serde_yaml::to_string(object).map_err(|e| Error::serialize("a child as YAML", e))
}

/// Labels every child (and the pods) carries.
pub fn labels(eds: &EventDrivenService) -> BTreeMap<String, String> {
    let name = eds.name_any();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.clone()),
        ("app.kubernetes.io/instance".to_string(), name),
        ("app.kubernetes.io/component".to_string(), "worker".to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "eventdrivenservice".to_string(),
        ),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

/// The labels that pick the claim's pods: a Deployment's selector cannot
/// change, so it holds only what never does.
pub fn selector_labels(eds: &EventDrivenService) -> BTreeMap<String, String> {
    let name = eds.name_any();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.clone()),
        ("app.kubernetes.io/instance".to_string(), name),
    ])
}

/// A child's metadata: the claim's name and namespace, our labels, and the
/// claim as controlling owner so that deleting the claim deletes the child.
/// A claim read from a file has no uid and so gives no owner reference.
fn child_metadata(eds: &EventDrivenService) -> ObjectMeta {
    ObjectMeta {
        name: Some(eds.name_any()),
        namespace: eds.namespace(),
        labels: Some(labels(eds)),
        owner_references: owner_reference(eds).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

fn owner_reference(eds: &EventDrivenService) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..eds.controller_owner_ref(&())?
    })
}

fn claim_ref(eds: &EventDrivenService) -> String {
    match eds.namespace() {
        Some(ns) => format!("EventDrivenService {ns}/{}", eds.name_any()),
        None => format!("EventDrivenService {}", eds.name_any()),
    }
}

/// The children of every claim in `text` as multi-document YAML; if any
/// claim cannot be rendered, every such claim's error.
pub fn render_text(text: &str, platform: &Platform) -> Result<String> {
    let claims = parse_claims(text)?;
    let mut out = String::new();
    let mut failures = Vec::new();
    for claim in &claims {
        match desired_children(claim, platform).and_then(|children| children.to_yaml()) {
            Ok(yaml) => out.push_str(&yaml),
            Err(e) => failures.push(e),
        }
    }
    match failures.len() {
        0 => Ok(out),
        1 => Err(failures.remove(0)),
        _ => Err(Error::Several(failures)),
    }
}

/// The largest input `eds render` reads: the API server's limit on a
/// request body (3 MiB). A file that size holds many claims.
pub const MAX_INPUT_BYTES: usize = 3 * 1024 * 1024;

/// The largest claim, as JSON: etcd's default request limit (1.5 MiB),
/// which the API server cannot store an object above.
pub const MAX_CLAIM_BYTES: usize = 1536 * 1024;

/// Brackets (`[`, `{`) open at once, at most. A claim needs fewer than 10;
/// the YAML parser takes time quadratic in the depth (100,000 levels: 40 s).
/// Brackets inside quoted strings count too: a string of more than 64
/// unclosed `[` is refused, a price for a scan that cannot be fooled.
pub const MAX_NESTING: usize = 64;

/// Every YAML document in `text`, checked. Empty documents are skipped.
/// Every claim's problems are reported, and a claim given twice is refused.
pub fn parse_claims(text: &str) -> Result<Vec<EventDrivenService>> {
    check_input(text)?;
    let mut claims = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = document_value(document).map_err(|e| Error::NotYaml {
            document: index + 1,
            source: e.into(),
        })?;
        if value.is_null() {
            continue;
        }
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |json| json.len());
        if size > MAX_CLAIM_BYTES {
            return Err(Error::OverLimit {
                what: format!("document {} ({size} bytes as JSON)", index + 1),
                limit: format!("{MAX_CLAIM_BYTES} bytes an object, etcd's default request limit"),
            });
        }
        match check_claim(&value) {
            Ok(claim) => {
                let id = claim_ref(&claim);
                if let Some(first) = seen.insert(id.clone(), index + 1) {
                    return Err(Error::DuplicateClaim {
                        claim: id.trim_start_matches("EventDrivenService ").to_string(),
                        first,
                        second: index + 1,
                    });
                }
                claims.push(claim)
            }
            Err(invalid) => problems.push(invalid),
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidClaims(problems));
    }
    if claims.is_empty() {
        return Err(Error::NoClaim);
    }
    Ok(claims)
}

/// Refuses an input over [`MAX_INPUT_BYTES`] or nested deeper than
/// [`MAX_NESTING`] before the YAML parser sees it.
pub fn check_input(text: &str) -> Result<()> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(over_size(text.len()));
    }
    let mut depth = 0usize;
    for (line, row) in text.lines().enumerate() {
        for byte in row.bytes() {
            match byte {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => continue,
            }
            if depth > MAX_NESTING {
                return Err(Error::OverLimit {
                    what: format!("the input, line {},", line + 1),
                    limit: format!("brackets nested at most {MAX_NESTING} deep"),
                });
            }
        }
    }
    Ok(())
}

/// The error for an input of `bytes` (or more) bytes.
pub fn over_size(bytes: usize) -> Error {
    Error::OverLimit {
        what: format!("the input ({bytes} bytes or more)"),
        limit: format!("{MAX_INPUT_BYTES} bytes, the API server's request limit"),
    }
}

/// One YAML document as JSON. Through `serde_yaml::Value` rather than
/// straight into JSON, because its mappings refuse a key given twice where
/// JSON's keep the last: the API server refuses such a manifest, and two
/// claims concatenated without `---` between them are exactly that.
fn document_value(document: serde_yaml::Deserializer<'_>) -> std::result::Result<serde_json::Value, String> {
    let yaml = serde_yaml::Value::deserialize(document).map_err(|e| {
        let message = e.to_string();
        let top_level = ["apiVersion", "kind"].map(|key| format!("duplicate entry with key \"{key}\""));
        if top_level.iter().any(|d| message.starts_with(d.as_str())) {
            format!("{message}: two manifests without a `---` line between them?")
        } else {
            message
        }
    })?;
    if let Some(field) = non_finite(&yaml, String::new()) {
        // JSON has no NaN or infinity: converted, they would become null,
        // and a null field takes its default.
        return Err(format!("{field}: Invalid value: not a finite number (.nan or .inf)"));
    }
    serde_json::to_value(yaml).map_err(|e| format!("not a Kubernetes manifest: {e}"))
}

/// The path of the first `.nan` or `.inf` in a document.
fn non_finite(value: &serde_yaml::Value, path: String) -> Option<String> {
    use serde_yaml::Value;
    match value {
        Value::Number(n) if n.as_f64().is_some_and(|f| !f.is_finite()) => Some(path),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| non_finite(item, format!("{path}[{i}]"))),
        Value::Mapping(map) => map.iter().find_map(|(key, item)| {
            let key = match key {
                Value::String(s) => crate::quote::shorten(s).into_owned(),
                other => crate::quote::shorten(&format!("{other:?}")).into_owned(),
            };
            let path = if path.is_empty() { key } else { format!("{path}.{key}") };
            non_finite(item, path)
        }),
        Value::Tagged(tagged) => non_finite(&tagged.value, path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIM: &str = "apiVersion: platform.bizmatters.io/v1alpha1\nkind: EventDrivenService\nmetadata:\n  name: a\n  namespace: team-a\nspec:\n  image: ghcr.io/acme/a:1\n  nats:\n    stream: A\n    consumer: a\n";

    #[test]
    fn a_key_given_twice_is_refused_as_the_api_server_would() {
        assert_eq!(parse_claims(CLAIM).unwrap().len(), 1);
        let twice = CLAIM.replace("spec:\n", "spec:\n  image: ghcr.io/acme/b:1\n");
        let message = parse_claims(&twice).unwrap_err().to_string();
        assert!(
            message.contains("spec: duplicate entry with key \"image\""),
            "{message}"
        );
    }

    #[test]
    fn two_claims_without_a_separator_are_refused_not_merged() {
        let second = CLAIM.replace("name: a", "name: b");
        assert_eq!(parse_claims(&format!("{CLAIM}---\n{second}")).unwrap().len(), 2);
        let message = parse_claims(&format!("{CLAIM}{second}")).unwrap_err().to_string();
        assert!(
            message.contains("document 1: not YAML: duplicate entry with key \"apiVersion\""),
            "{message}"
        );
        assert!(message.contains("`---`"), "{message}");
    }

    fn children(eds: &EventDrivenService) -> Children {
        desired_children(eds, &Platform::default()).unwrap()
    }

    fn metadata_of(children: &Children) -> [&ObjectMeta; 4] {
        [
            &children.service_account.metadata,
            &children.deployment.metadata,
            &children.service.metadata,
            &children.scaled_object.metadata,
        ]
    }

    #[test]
    fn every_child_is_named_after_the_claim_in_its_namespace_with_our_labels() {
        let eds = EventDrivenService::test()
            .with_name("billing")
            .with_namespace(Some("team-b"));
        let children = children(&eds);
        for meta in metadata_of(&children) {
            assert_eq!(meta.name.as_deref(), Some("billing"));
            assert_eq!(meta.namespace.as_deref(), Some("team-b"));
            let labels = meta.labels.as_ref().unwrap();
            for (key, value) in [
                ("app.kubernetes.io/name", "billing"),
                ("app.kubernetes.io/instance", "billing"),
                ("app.kubernetes.io/component", "worker"),
                ("app.kubernetes.io/part-of", "eventdrivenservice"),
                ("app.kubernetes.io/managed-by", "eds"),
            ] {
                assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
            }
        }
    }

    #[test]
    fn a_claim_from_the_cluster_controls_its_children() {
        let eds = EventDrivenService::test();
        let children = children(&eds);
        for meta in metadata_of(&children) {
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            let owner = &owners[0];
            assert_eq!(owner.api_version, "platform.bizmatters.io/v1alpha1");
            assert_eq!(owner.kind, "EventDrivenService");
            assert_eq!(owner.name, "orders-worker");
            assert_eq!(Some(&owner.uid), eds.metadata.uid.as_ref());
            assert_eq!(owner.controller, Some(true));
            assert_eq!(owner.block_owner_deletion, Some(true));
        }
    }

    #[test]
    fn a_claim_from_a_file_has_no_uid_and_gives_no_owner() {
        let eds = EventDrivenService::test().without_uid().with_namespace(None);
        let children = children(&eds);
        for meta in metadata_of(&children) {
            assert_eq!(meta.owner_references, None);
            assert_eq!(meta.namespace, None);
        }
    }

    #[test]
    fn selectors_pick_the_pods_and_only_by_what_never_changes() {
        let children = children(&EventDrivenService::test());
        let deployment = children.deployment.spec.unwrap();
        let pod_labels = deployment.template.metadata.unwrap().labels.unwrap();
        let match_labels = deployment.selector.match_labels.unwrap();
        assert_eq!(match_labels.len(), 2, "{match_labels:?}");
        assert_eq!(children.service.spec.unwrap().selector.unwrap(), match_labels);
        for (key, value) in &match_labels {
            assert_eq!(pod_labels.get(key), Some(value));
        }
    }

    #[test]
    fn the_service_account_mounts_no_token() {
        let children = children(&EventDrivenService::test());
        assert_eq!(children.service_account.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_request_above_its_limit_is_refused_naming_the_claim() {
        let eds = EventDrivenService::test().with_spec(|s| {
            s.resources = Some(crate::api::Resources {
                requests: Some(crate::api::ResourceAmounts {
                    cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("3".into())),
                    memory: None,
                }),
                limits: None,
            })
        });
        let err = desired_children(&eds, &Platform::default()).unwrap_err().to_string();
        assert!(err.contains("team-a/orders-worker"), "{err}");
        assert!(
            err.contains("spec.resources: the cpu request 3 is above its limit 2 (size medium)"),
            "{err}"
        );
    }

    const DESIGN_EXAMPLE: &str = include_str!("../../examples/design-example.yaml");

    fn documents(yaml: &str) -> Vec<serde_json::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn render_prints_the_four_children_of_each_claim() {
        let two = format!(
            "{DESIGN_EXAMPLE}\n---\n{}",
            DESIGN_EXAMPLE.replace("name: my-service", "name: other")
        );
        let docs = documents(&render_text(&two, &Platform::default()).unwrap());
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "Deployment", "Service", "ScaledObject"].repeat(2)
        );
        assert_eq!(docs[0]["metadata"]["name"], "my-service");
        assert_eq!(docs[4]["metadata"]["name"], "other");
    }

    #[test]
    fn render_refuses_every_invalid_claim_and_renders_none() {
        let bad = DESIGN_EXAMPLE.replace("MY_SERVICE_STREAM", "MY.STREAM");
        let also_bad = DESIGN_EXAMPLE.replace("minReplicas: 1", "minReplicas: 20");
        let text = format!("{DESIGN_EXAMPLE}\n---\n{bad}\n---\n{also_bad}");
        let err = render_text(&text, &Platform::default()).unwrap_err().to_string();
        assert!(
            err.contains("spec.nats.stream: Invalid value: \"MY.STREAM\": nats.stream must be a NATS name"),
            "{err}"
        );
        assert!(
            err.contains(
                "spec.scaling: Invalid value: scaling.minReplicas must not be greater than scaling.maxReplicas"
            ),
            "{err}"
        );
    }

    #[test]
    fn render_refuses_input_without_a_claim() {
        for text in ["", "---\n", "# nothing\n"] {
            let err = render_text(text, &Platform::default()).unwrap_err().to_string();
            assert!(err.contains("no EventDrivenService"), "{text:?}: {err}");
        }
        let err = render_text("spec: [unclosed", &Platform::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("document 1: not YAML"), "{err}");
    }
}
