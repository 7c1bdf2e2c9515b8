//! Writing to the API server: server-side apply of a child, the claim's
//! status, and the claim's finalizer. Every call has its own deadline, so a hung API server fails one
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

/// Writes the claim's status (server-side apply of the status alone).
pub async fn patch_status(
    client: &Client,
    claim: &EventDrivenService,
    namespace: &str,
    status: &EventDrivenServiceStatus,
) -> Result<()> {
    let name = claim.name_any();
    let body = serde_json::json!({
        "apiVersion": EventDrivenService::api_version(&()),
        "kind": EventDrivenService::kind(&()),
        "status": status,
    });
    let api = Api::<EventDrivenService>::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let what = || format!("writing the status of EventDrivenService {namespace}/{name}");
    within_deadline(what, api.patch_status(&name, &params, &Patch::Apply(body))).await?;
    Ok(())
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
