//! The `EventDrivenService` API (platform.bizmatters.io/v1alpha1).
use crate::Result;

/// Prints the CRD as YAML.
pub fn print_crd() -> Result<()> {
    Err(crate::Error::Config("the CRD is not generated yet".into()))
}
