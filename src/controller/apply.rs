//! Writing to the API server: a child by server-side apply, the claim's
//! status by a merge patch, and the claim's finalizer by a JSON patch. Every call has its own deadline, so a hung API server fails one
//! reconcile (and is retried) instead of holding it, and shutdown, for ever.
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, ValidationDirective};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use super::children::ChildKind;
use super::live::LiveChild;
use super::metrics::CHILD_APPLIES;
use super::{FIELD_MANAGER, FINALIZER};
use crate::api::{EventDrivenService, EventDrivenServiceStatus};
use crate::{Error, Result};

/// The longest one apply or status write may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Server-side applies one child; with `force`, whatever another manager
/// changed in our fields comes back. Strict validation makes the API server
/// refuse a field its schema does not know (KEDA's, for the ScaledObject)
/// instead of dropping it.
pub async fn apply_child(
    client: &Client,
    kind: ChildKind,
    namespace: &str,
    name: &str,
    object: &Value,
    force: bool,
) -> Result<LiveChild> {
    let api = Api::<LiveChild>::namespaced_with(client.clone(), namespace, &kind);
    let resource = kind.resource();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        force,
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::default()
    };
    let what = || format!("applying {} {namespace}/{name}", resource.kind);
    let applied = within_deadline(what, api.patch(name, &params, &Patch::Apply(object))).await?;
    metrics::counter!(CHILD_APPLIES.name, "kind" => resource.kind.clone()).increment(1);
    tracing::info!(kind = %resource.kind, %namespace, %name, "applied");
    Ok(applied)
}

/// Writes the claim's status: a JSON merge patch of the whole status, with
/// `null` for every field the cached status has and this one has not.
///
/// Not a server-side apply: the API server parses an apply's body as YAML
/// and merges it field by field, about a third of the CPU a status write
/// costs it (docs/benchmarks.md, "Where the clients wait"). The status is
/// the controller's alone, and the patch names every field of it. When the
/// cached status is behind the server's (a field our last write added has
/// not come back through the watch yet), a field this status drops may
/// survive this write; the watch event of the earlier write brings another
/// reconcile, whose patch nulls it. Unlike an apply, only fields that
/// [`EventDrivenServiceStatus`] knows are ever nulled: a field written by
/// another version of the controller and unknown to this one stays until
/// that version's successor drops it.
pub async fn patch_status(
    client: &Client,
    claim: &EventDrivenService,
    namespace: &str,
    status: &EventDrivenServiceStatus,
) -> Result<()> {
    let name = claim.name_any();
    let json = |status: &EventDrivenServiceStatus| {
        serde_json::to_value(status).map_err(|e| Error::serialize("a claim's status as JSON", e))
    };
    let cached = claim.status.as_ref().map(json).transpose()?;
    let body = json!({ "status": merge_patch(cached.as_ref(), json(status)?) });
    let api = Api::<EventDrivenService>::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let what = || format!("writing the status of EventDrivenService {namespace}/{name}");
    within_deadline(what, api.patch_status(&name, &params, &Patch::Merge(body))).await?;
    Ok(())
}

/// A JSON merge patch (RFC 7386) that turns `old` into `new`: `new` itself,
/// with `null` for each key of `old` that `new` lacks, in every object the
/// two share. Arrays are replaced whole, as a merge patch does.
fn merge_patch(old: Option<&Value>, new: Value) -> Value {
    match (old, new) {
        (Some(Value::Object(old)), Value::Object(mut new)) => {
            for (key, was) in old {
                match new.get_mut(key) {
                    Some(now) => *now = merge_patch(Some(was), now.take()),
                    None => {
                        new.insert(key.clone(), Value::Null);
                    }
                }
            }
            Value::Object(new)
        }
        (_, new) => new,
    }
}

/// Adds our finalizer to the claim. The JSON patch tests the list it
/// appends to, so a finalizer someone else added meanwhile is never lost:
/// the patch fails instead, and the reconcile is retried.
pub async fn add_finalizer(client: &Client, claim: &EventDrivenService) -> Result<()> {
    let ops = match claim.meta().finalizers.as_deref() {
        None | Some([]) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(current) => json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    patch_metadata(client, claim, ops, "adding the finalizer to").await
}

/// Removes our finalizer from the claim, by index, testing that the index
/// still holds it.
pub async fn remove_finalizer(client: &Client, claim: &EventDrivenService) -> Result<()> {
    let Some(index) = claim.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let ops = json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    patch_metadata(client, claim, ops, "removing the finalizer from").await
}

async fn patch_metadata(client: &Client, claim: &EventDrivenService, ops: Value, doing: &str) -> Result<()> {
    let namespace = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| Error::serialize("a JSON patch", e))?;
    let api = Api::<EventDrivenService>::namespaced(client.clone(), &namespace);
    let what = || format!("{doing} EventDrivenService {namespace}/{name}");
    within_deadline(
        what,
        api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)),
    )
    .await?;
    tracing::info!(%namespace, %name, finalizer = FINALIZER, "{doing} the claim");
    Ok(())
}

/// Runs one API call within [`CALL_TIMEOUT`]; `what` names it in the error.
async fn within_deadline<T>(what: impl FnOnce() -> String, call: impl Future<Output = kube::Result<T>>) -> Result<T> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::KubeCall { what: what(), source }),
        Err(_) => Err(Error::Timeout {
            what: what(),
            after: CALL_TIMEOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_patch;

    #[test]
    fn a_merge_patch_nulls_what_the_new_status_dropped_at_every_depth() {
        let old = json!({
            "observedGeneration": 1,
            "lag": 12,
            "drain": {"target": 100.0, "arrivalsPerSecond": 3.5},
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "Reconciled", "status": "True"}],
        });
        let new = json!({
            "observedGeneration": 2,
            "drain": {"target": 80.0},
            "conditions": [{"type": "Ready", "status": "True"}],
            "replicas": 3,
        });
        assert_eq!(
            merge_patch(Some(&old), new),
            json!({
                "observedGeneration": 2,
                "lag": null,
                "drain": {"target": 80.0, "arrivalsPerSecond": null},
                "conditions": [{"type": "Ready", "status": "True"}],
                "replicas": 3,
            })
        );
    }

    #[test]
    fn without_a_cached_status_the_patch_is_the_status() {
        let new = json!({"observedGeneration": 1, "conditions": []});
        assert_eq!(merge_patch(None, new.clone()), new);
    }

    #[test]
    fn applying_the_patch_gives_the_new_status() {
        let old = json!({"lag": 12, "drain": {"target": 1.0, "unsupported": "KEDA 2.18"}, "replicas": 1});
        let new = json!({"drain": {"target": 2.0}, "replicas": 2});
        let mut doc = old.clone();
        json_patch::merge(&mut doc, &merge_patch(Some(&old), new.clone()));
        assert_eq!(doc, new);
    }
}
