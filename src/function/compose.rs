//! One pipeline step, pure: Crossplane's request in, our response out.
//!
//! The observed composite is checked as a claim with [`check_claim`] (the
//! CRD's schema and CEL rules, as `eds render` does) and rendered with
//! [`desired_children`], so both paths give the same children. Readiness and
//! the composite's status come from the controller's own pure status code.
use std::time::Duration;

use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::structs::{from_json, to_json};
use crate::api::{CONDITION_DEPLOYMENT_AVAILABLE, CONDITION_SCALER_READY, check_claim};
use crate::function::proto::{
    Condition, Ready, Resource, ResponseMeta, Result as StepResult, RunFunctionRequest, RunFunctionResponse, Severity,
    State, Status, Target,
};
use crate::render::status::{Observed, desired_status, keda_conditions};
use crate::render::{Children, Platform, desired_children};

/// How long Crossplane may reuse a response for the same request.
pub const RESPONSE_TTL: Duration = Duration::from_secs(60);

/// The `apiVersion` and `kind` of the step's `input` in a Composition.
pub const INPUT_API_VERSION: &str = "fn.platform.bizmatters.io/v1alpha1";
pub const INPUT_KIND: &str = "Input";

/// The names the pipeline gives our four composed resources.
pub const SERVICE_ACCOUNT: &str = "service-account";
pub const DEPLOYMENT: &str = "deployment";
pub const SERVICE: &str = "service";
pub const SCALED_OBJECT: &str = "scaled-object";

/// Runs the step. Anything the step has no opinion on (other composed
/// resources, their connection details, fields set by earlier steps, the
/// pipeline context) is handed back as it came.
pub fn run_function(request: &RunFunctionRequest, now: Timestamp) -> RunFunctionResponse {
    let tag = request.meta.as_ref().map(|m| m.tag.clone()).unwrap_or_default();
    let mut response = RunFunctionResponse {
        meta: Some(ResponseMeta {
            tag,
            ttl: prost_types::Duration::try_from(RESPONSE_TTL).ok(),
        }),
        desired: Some(request.desired.clone().unwrap_or_default()),
        results: Vec::new(),
        context: request.context.clone(),
        conditions: Vec::new(),
    };
    match compose(request, now) {
        Ok(composed) => composed.write_into(&mut response),
        // Nothing is composed from a claim that `eds render` would refuse:
        // a Fatal result stops the pipeline before anything is applied.
        Err(message) => response.results.push(StepResult {
            severity: Severity::Fatal as i32,
            message,
            reason: Some("InvalidClaim".into()),
            target: Some(Target::Composite as i32),
        }),
    }
    response
}

/// The platform settings from the step's input; none gives the defaults.
pub fn platform_from_input(input: Option<&Value>) -> Result<Platform, String> {
    let mut platform = Platform::default();
    let Some(input) = input else {
        return Ok(platform);
    };
    let Some(fields) = input.as_object() else {
        return Err("input: must be an object".into());
    };
    for (key, value) in fields {
        match key.as_str() {
            "apiVersion" if value == INPUT_API_VERSION => {}
            "kind" if value == INPUT_KIND => {}
            "apiVersion" | "kind" => {
                return Err(format!(
                    "input.{key}: Unsupported value: {value}: the input is apiVersion: {INPUT_API_VERSION}, kind: {INPUT_KIND}"
                ));
            }
            "metadata" => {}
            "scalerAddress" => platform.scaler_address = non_empty(key, value)?,
            "scalerTriggerAuthentication" => platform.scaler_trigger_authentication = Some(non_empty(key, value)?),
            _ => return Err(format!("input.{key}: unknown field \"input.{key}\"")),
        }
    }
    Ok(platform)
}

fn non_empty(key: &str, value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some(text) if !text.trim().is_empty() => Ok(text.to_string()),
        _ => Err(format!("input.{key}: must be a non-empty string")),
    }
}

/// The claim inside an observed composite: Crossplane's own parts
/// (`spec.crossplane`, `status`) and the server's metadata are not the
/// claim's. Without a uid the children get no owner reference from us;
/// Crossplane sets its own.
pub fn claim_from_composite(composite: &Value) -> Value {
    let mut claim = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(value) = composite.get(key) {
            claim.insert(key.into(), value.clone());
        }
    }
    let mut metadata = Map::new();
    for key in ["name", "namespace"] {
        if let Some(value) = composite.pointer(&format!("/metadata/{key}")) {
            metadata.insert(key.into(), value.clone());
        }
    }
    claim.insert("metadata".into(), Value::Object(metadata));
    if let Some(spec) = composite.get("spec") {
        let mut spec = spec.clone();
        if let Some(fields) = spec.as_object_mut() {
            fields.remove("crossplane");
        }
        claim.insert("spec".into(), spec);
    }
    Value::Object(claim)
}

/// What the step decided.
struct Composed {
    children: [(&'static str, Value, bool); 4],
    status: Map<String, Value>,
    conditions: Vec<Condition>,
}

fn compose(request: &RunFunctionRequest, now: Timestamp) -> Result<Composed, String> {
    let input = request.input.as_ref().map(to_json);
    let platform = platform_from_input(input.as_ref())?;
    let observed = request.observed.as_ref();
    let composite = observed
        .and_then(|o| o.composite.as_ref())
        .and_then(|c| c.resource.as_ref())
        .map(to_json)
        .ok_or("the request has no observed composite resource")?;
    let claim = check_claim(&claim_from_composite(&composite)).map_err(|invalid| invalid.to_string())?;
    // The controller creates and owns a claim's consumer; this step reads
    // and writes no NATS. Half-applying such a claim would leave a worker
    // waiting on a consumer nobody makes.
    if claim.spec.nats.consumer_config.is_some() {
        return Err(
            "spec.nats.consumerConfig: Forbidden: the Crossplane path does not create consumers; \
                    create the durable consumer elsewhere and remove consumerConfig, or use the eds controller"
                .into(),
        );
    }
    let children = desired_children(&claim, &platform).map_err(|e| e.to_string())?;

    let observed_child = |name: &str| {
        observed
            .and_then(|o| o.resources.get(name))
            .and_then(|r| r.resource.as_ref())
            .map(to_json)
    };
    let deployment = observed_child(DEPLOYMENT);
    let scaled_object = observed_child(SCALED_OBJECT);
    let status = desired_status(
        &claim,
        &Observed {
            applied: Ok(()),
            deployment: deployment
                .as_ref()
                .and_then(|d| d.get("status"))
                .and_then(|s| serde_json::from_value::<DeploymentStatus>(s.clone()).ok()),
            scaler: scaled_object.as_ref().map(keda_conditions).unwrap_or_default(),
            lag: None,
            // The function reads no NATS: no `ConsumerHealthy` condition.
            consumer: None,
        },
        now,
    );
    let holds = |type_: &str| status.conditions.iter().any(|c| c.type_ == type_ && c.status == "True");
    let [service_account, deployment_object, service, scaled_object_object] = objects(&children)?;
    let composed_children = [
        (
            SERVICE_ACCOUNT,
            service_account,
            observed_child(SERVICE_ACCOUNT).is_some(),
        ),
        (DEPLOYMENT, deployment_object, holds(CONDITION_DEPLOYMENT_AVAILABLE)),
        (SERVICE, service, observed_child(SERVICE).is_some()),
        (SCALED_OBJECT, scaled_object_object, holds(CONDITION_SCALER_READY)),
    ];

    // Crossplane owns `Ready` and `Synced` on the composite; ours that say
    // what the scaler and the Deployment report go beside them.
    let conditions = status
        .conditions
        .iter()
        .filter(|c| [CONDITION_SCALER_READY, CONDITION_DEPLOYMENT_AVAILABLE].contains(&c.type_.as_str()))
        .map(|c| Condition {
            r#type: c.type_.clone(),
            status: (match c.status.as_str() {
                "True" => Status::ConditionTrue,
                "False" => Status::ConditionFalse,
                _ => Status::ConditionUnknown,
            }) as i32,
            reason: c.reason.clone(),
            message: Some(c.message.clone()).filter(|m| !m.is_empty()),
            target: Some(Target::Composite as i32),
        })
        .collect();

    let mut status_fields = Map::new();
    if let Some(replicas) = status.replicas {
        status_fields.insert("replicas".into(), json!(replicas));
    }
    if let Some(ready) = status.ready_replicas {
        status_fields.insert("readyReplicas".into(), json!(ready));
    }
    Ok(Composed {
        children: composed_children,
        status: status_fields,
        conditions,
    })
}

fn objects(children: &Children) -> Result<[Value; 4], String> {
    let json = |object: Result<Value, serde_json::Error>| object.map_err(|e| format!("serializing a child: {e}"));
    Ok([
        json(serde_json::to_value(&children.service_account))?,
        json(serde_json::to_value(&children.deployment))?,
        json(serde_json::to_value(&children.service))?,
        json(serde_json::to_value(&children.scaled_object))?,
    ])
}

impl Composed {
    fn write_into(self, response: &mut RunFunctionResponse) {
        let desired = response.desired.get_or_insert_with(State::default);
        for (name, object, ready) in self.children {
            let resource = desired.resources.entry(name.to_string()).or_default();
            // Fields an earlier step set and we do not render stay; ours win.
            let mut merged = resource.resource.as_ref().map_or_else(|| json!({}), to_json);
            json_patch::merge(&mut merged, &object);
            resource.resource = Some(from_json(&merged));
            resource.ready = (if ready { Ready::True } else { Ready::False }) as i32;
        }
        let composite = desired.composite.get_or_insert_with(Resource::default);
        let mut merged = composite.resource.as_ref().map_or_else(|| json!({}), to_json);
        json_patch::merge(&mut merged, &json!({ "status": self.status }));
        composite.resource = Some(from_json(&merged));
        response.conditions.extend(self.conditions);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::api::EventDrivenService;
    use crate::api::fixtures::{invalid_cases, valid_claim};
    use crate::function::proto::RequestMeta;

    fn resource(object: Value) -> Resource {
        Resource {
            resource: Some(from_json(&object)),
            ..Resource::default()
        }
    }

    /// The composite as Crossplane observes it: the claim plus Crossplane's
    /// own spec.crossplane, a uid and a status.
    fn observed_composite(claim: Value) -> Value {
        let mut composite = claim;
        composite["metadata"]["uid"] = json!("0b7e6c1e-2f3a-4c1d-9a57-4f1e2d3c4b5a");
        composite["metadata"]["generation"] = json!(3);
        composite["spec"]["crossplane"] =
            json!({"compositionRef": {"name": "eventdrivenservices.platform.bizmatters.io"}});
        composite["status"] = json!({"conditions": [{"type": "Synced", "status": "True", "reason": "ReconcileSuccess", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        composite
    }

    fn request(composite: Value) -> RunFunctionRequest {
        RunFunctionRequest {
            meta: Some(RequestMeta {
                tag: "tag-1".into(),
                capabilities: Vec::new(),
            }),
            observed: Some(State {
                composite: Some(resource(composite)),
                resources: HashMap::new(),
            }),
            ..RunFunctionRequest::default()
        }
    }

    fn run(request: &RunFunctionRequest) -> RunFunctionResponse {
        run_function(request, Timestamp::UNIX_EPOCH)
    }

    fn desired_object(response: &RunFunctionResponse, name: &str) -> Value {
        let desired = response.desired.as_ref().unwrap();
        to_json(desired.resources[name].resource.as_ref().unwrap())
    }

    fn fatal(response: &RunFunctionResponse) -> Option<&str> {
        response
            .results
            .iter()
            .find(|r| r.severity == Severity::Fatal as i32)
            .map(|r| r.message.as_str())
    }

    #[test]
    fn the_children_are_what_eds_render_gives_for_the_same_claim() {
        let response = run(&request(observed_composite(valid_claim())));
        assert_eq!(fatal(&response), None);
        let claim = crate::api::check_claim(&valid_claim()).unwrap();
        let children = desired_children(&claim, &Platform::default()).unwrap();
        let expected = objects(&children).unwrap();
        for (name, want) in [SERVICE_ACCOUNT, DEPLOYMENT, SERVICE, SCALED_OBJECT]
            .iter()
            .zip(expected)
        {
            assert_eq!(desired_object(&response, name), want, "{name}");
        }
    }

    #[test]
    fn the_composites_uid_gives_no_owner_reference_crossplane_sets_its_own() {
        let response = run(&request(observed_composite(valid_claim())));
        let deployment = desired_object(&response, DEPLOYMENT);
        assert_eq!(deployment["metadata"].get("ownerReferences"), None);
    }

    #[test]
    fn the_scaler_address_comes_from_the_input() {
        let mut request = request(observed_composite(valid_claim()));
        request.input = Some(from_json(&json!({
            "apiVersion": INPUT_API_VERSION,
            "kind": INPUT_KIND,
            "scalerAddress": "scaler.platform.svc:7000",
            "scalerTriggerAuthentication": "eds-scaler-tls",
        })));
        let response = run(&request);
        let scaled_object = desired_object(&response, SCALED_OBJECT);
        let trigger = &scaled_object["spec"]["triggers"][0];
        assert_eq!(trigger["metadata"]["scalerAddress"], "scaler.platform.svc:7000");
        assert_eq!(trigger["authenticationRef"]["name"], "eds-scaler-tls");
    }

    #[test]
    fn a_bad_input_is_fatal_naming_its_field() {
        for (input, field) in [
            (json!({"scalerAdress": "x:1"}), "input.scalerAdress"),
            (json!({"scalerAddress": ""}), "input.scalerAddress"),
            (json!({"kind": "Other"}), "input.kind"),
        ] {
            let mut request = request(observed_composite(valid_claim()));
            request.input = Some(from_json(&input));
            let response = run(&request);
            let message = fatal(&response).unwrap_or_else(|| panic!("{input} was accepted"));
            assert!(message.starts_with(field), "{input}: {message}");
        }
    }

    #[test]
    fn a_claim_owned_consumer_is_fatal_on_this_path() {
        let mut claim = valid_claim();
        claim["spec"]["nats"]["consumerConfig"] = json!({"maxDeliver": 5});
        let response = run(&request(observed_composite(claim)));
        let message = fatal(&response).expect("refused");
        assert!(message.starts_with("spec.nats.consumerConfig: "), "{message}");
        assert!(response.desired.as_ref().unwrap().resources.is_empty());
    }

    #[test]
    fn every_claim_eds_render_refuses_is_fatal_naming_the_field() {
        for case in invalid_cases() {
            let response = run(&request(observed_composite(case.claim())));
            let message = fatal(&response).unwrap_or_else(|| panic!("{}: composed", case.case));
            assert!(
                case.field.is_empty() || message.contains(&format!("* {}: ", case.field)),
                "{}: {message}",
                case.case
            );
            assert!(message.contains(&case.message), "{}: {message}", case.case);
            assert!(
                response.desired.as_ref().unwrap().resources.is_empty(),
                "{}: nothing is composed",
                case.case
            );
        }
    }

    #[test]
    fn tag_ttl_and_context_come_back() {
        let mut request = request(observed_composite(valid_claim()));
        request.context = Some(from_json(
            &json!({"apiextensions.crossplane.io/environment": {"a": "b"}}),
        ));
        let response = run(&request);
        let meta = response.meta.unwrap();
        assert_eq!(meta.tag, "tag-1");
        assert_eq!(meta.ttl, Some(prost_types::Duration { seconds: 60, nanos: 0 }));
        assert_eq!(response.context, request.context);
    }

    #[test]
    fn other_desired_resources_and_fields_set_by_earlier_steps_stay() {
        let mut request = request(observed_composite(valid_claim()));
        let mut other = resource(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}));
        other.connection_details.insert("password".into(), b"s3cr3t".to_vec());
        other.ready = Ready::True as i32;
        let earlier = resource(json!({"metadata": {"annotations": {"team": "payments"}}}));
        request.desired = Some(State {
            composite: Some(resource(json!({"status": {"owner": "payments"}}))),
            resources: HashMap::from([("config".to_string(), other.clone()), (DEPLOYMENT.to_string(), earlier)]),
        });
        let response = run(&request);
        let desired = response.desired.as_ref().unwrap();
        assert_eq!(desired.resources["config"], other);
        let deployment = desired_object(&response, DEPLOYMENT);
        assert_eq!(deployment["metadata"]["annotations"]["team"], "payments");
        assert_eq!(deployment["kind"], "Deployment");
        let composite = to_json(desired.composite.as_ref().unwrap().resource.as_ref().unwrap());
        assert_eq!(composite["status"]["owner"], "payments");
    }

    #[test]
    fn readiness_and_status_follow_what_is_observed() {
        let mut request = request(observed_composite(valid_claim()));
        let response = run(&request);
        let ready =
            |response: &RunFunctionResponse, name: &str| response.desired.as_ref().unwrap().resources[name].ready;
        for name in [SERVICE_ACCOUNT, DEPLOYMENT, SERVICE, SCALED_OBJECT] {
            assert_eq!(
                ready(&response, name),
                Ready::False as i32,
                "{name}: nothing observed yet"
            );
        }

        let observed = request.observed.as_mut().unwrap();
        for (name, object) in [
            (SERVICE_ACCOUNT, json!({"kind": "ServiceAccount"})),
            (SERVICE, json!({"kind": "Service"})),
            (
                DEPLOYMENT,
                json!({"kind": "Deployment", "status": {"replicas": 3, "readyReplicas": 2,
                    "conditions": [{"type": "Available", "status": "True", "message": "ok"}]}}),
            ),
            (
                SCALED_OBJECT,
                json!({"kind": "ScaledObject", "status": {"conditions": [
                    {"type": "Ready", "status": "True", "message": "ScaledObject is defined correctly"},
                    {"type": "Active", "status": "False"}]}}),
            ),
        ] {
            observed.resources.insert(name.into(), resource(object));
        }
        let response = run(&request);
        for name in [SERVICE_ACCOUNT, DEPLOYMENT, SERVICE, SCALED_OBJECT] {
            assert_eq!(ready(&response, name), Ready::True as i32, "{name}");
        }
        let composite = to_json(
            response
                .desired
                .as_ref()
                .unwrap()
                .composite
                .as_ref()
                .unwrap()
                .resource
                .as_ref()
                .unwrap(),
        );
        assert_eq!(composite["status"], json!({"replicas": 3, "readyReplicas": 2}));
        let types: Vec<(&str, i32)> = response
            .conditions
            .iter()
            .map(|c| (c.r#type.as_str(), c.status))
            .collect();
        assert_eq!(
            types,
            [
                (CONDITION_SCALER_READY, Status::ConditionTrue as i32),
                (CONDITION_DEPLOYMENT_AVAILABLE, Status::ConditionTrue as i32)
            ]
        );
        assert!(
            response.conditions.iter().all(|c| c.r#type != "Ready"),
            "Crossplane owns Ready"
        );
    }

    #[test]
    fn a_composite_without_a_claim_is_refused_not_guessed() {
        let mut request = request(json!({}));
        request.observed = None;
        assert!(fatal(&run(&request)).unwrap().contains("no observed composite"));
        let mut wrong_kind = valid_claim();
        wrong_kind["kind"] = json!("XEventDrivenService");
        let response = run(&request_for(wrong_kind));
        assert!(
            fatal(&response).unwrap().contains("kind: Unsupported value"),
            "{response:?}"
        );
    }

    fn request_for(claim: Value) -> RunFunctionRequest {
        request(observed_composite(claim))
    }

    #[test]
    fn the_claim_is_the_composite_without_crossplanes_parts() {
        let claim = claim_from_composite(&observed_composite(valid_claim()));
        assert_eq!(claim, valid_claim_without_defaults_removed());
        let eds: EventDrivenService = serde_json::from_value(claim).unwrap();
        assert_eq!(eds.metadata.uid, None);
    }

    fn valid_claim_without_defaults_removed() -> Value {
        let mut claim = valid_claim();
        let metadata = claim["metadata"].as_object().unwrap();
        claim["metadata"] = json!({"name": metadata["name"], "namespace": metadata["namespace"]});
        claim
    }
}
