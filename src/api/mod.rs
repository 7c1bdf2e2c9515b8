//! The `EventDrivenService` API (platform.bizmatters.io/v1alpha1): the types,
//! their defaults, the generated CRD and the offline check of a claim.
#[cfg(any(test, feature = "test-fixtures"))]
#[doc(hidden)]
pub mod fixtures;
mod schema;
mod spec;
mod status;
mod validate;

pub use spec::*;
pub use status::*;
pub use validate::{FieldError, InvalidClaim, check_claim};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::CustomResourceExt;

use crate::{Error, Result};

/// The CustomResourceDefinition, as installed in a cluster. Use this rather
/// than `EventDrivenService::crd()`.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = EventDrivenService::crd();
    for version in &mut crd.spec.versions {
        let spec = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|properties| properties.get_mut("spec"));
        if let Some(spec) = spec {
            not_nullable(spec);
        }
    }
    crd
}

/// kube marks every `Option` field nullable. A stored `null` is kept as is:
/// not defaulted, yet `has()` is true for it in CEL, so `initContainer:
/// {image: null}` would pass the "command or image" rule. We never write
/// `null`, and without `nullable` the API server drops a user's `null` as if
/// the field were absent, which is what it means.
fn not_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        not_nullable(property);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => not_nullable(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(not_nullable),
        None => {}
    }
}

/// Where the generated CRD is committed, relative to the repository root.
pub const CRD_FILE: &str = "apis/eventdrivenservices.platform.bizmatters.io.yaml";

/// The CRD as YAML, exactly as committed at [`CRD_FILE`].
pub fn crd_yaml() -> Result<String> {
    let yaml = serde_yaml::to_string(&crd()).map_err(|e| Error::serialize("the CRD", e))?;
    Ok(format!(
        "# Generated from src/api by `eds crd` (scripts/gen-crd.sh). Do not edit.\n{yaml}"
    ))
}
