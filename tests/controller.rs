//! The controller against a real control plane (slow tier).
mod support;

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, PostParams};
use support::kube as cluster;

#[tokio::test]
async fn harness_serves_admin_and_service_accounts() {
    let cp = cluster::shared();
    let admin = cp.client().await;
    let ns = cp.namespace(&admin, "harness").await;
    let sa = ServiceAccount {
        metadata: kube::core::ObjectMeta {
            name: Some("nobody".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let nobody = cp.client_for(&ns, "nobody").await;
    let err = Api::<ConfigMap>::namespaced(nobody, &ns)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
}
