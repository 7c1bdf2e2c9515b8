//! A stable in-cluster address for the worker's HTTP port.
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{PORT_NAME, child_metadata, selector_labels};
use crate::api::EventDrivenService;

pub fn desired_service(eds: &EventDrivenService) -> Service {
    Service {
        metadata: child_metadata(eds),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(eds)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: eds.spec.port,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_ip_service_with_a_port_named_http() {
        let eds = EventDrivenService::test().with_spec(|s| s.port = 9000);
        let spec = desired_service(&eds).spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(ports[0].port, 9000);
        assert_eq!(ports[0].target_port, Some(IntOrString::String("http".into())));
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    }
}
