//! The worker's own identity, with no API token mounted.
use k8s_openapi::api::core::v1::ServiceAccount;

use super::child_metadata;
use crate::api::EventDrivenService;

/// A ServiceAccount per claim, so RBAC can be granted to one worker; the
/// worker talks to NATS, not to Kubernetes, so no token is mounted.
pub fn desired_service_account(eds: &EventDrivenService) -> ServiceAccount {
    ServiceAccount {
        metadata: child_metadata(eds),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
