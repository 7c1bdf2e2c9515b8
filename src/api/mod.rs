//! The `EventDrivenService` API (platform.bizmatters.io/v1alpha1): the types,
//! their defaults, the generated CRD and the offline check of a claim.
mod schema;
mod spec;
mod status;

pub use spec::*;
pub use status::*;

use kube::CustomResourceExt;

use crate::{Error, Result};

/// The CustomResourceDefinition, as installed in a cluster.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    EventDrivenService::crd()
}

/// The CRD as YAML, exactly as committed under `apis/`.
pub fn crd_yaml() -> Result<String> {
    serde_yaml::to_string(&crd()).map_err(|e| Error::Serialize(format!("the CRD: {e}")))
}

/// Prints the CRD as YAML.
pub fn print_crd() -> Result<()> {
    print!("{}", crd_yaml()?);
    Ok(())
}
