//! The kinds of child a claim has, and one value per kind by name: the
//! reconcile reads "the Deployment" from a field, never from a position.
use std::sync::LazyLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::ApiResource;

use crate::render::ScaledObject;

/// A kind of child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChildKind {
    ServiceAccount,
    Deployment,
    Service,
    ScaledObject,
}

impl ChildKind {
    /// The order children are applied in: the ServiceAccount before the
    /// Deployment that runs as it, the Deployment before the ScaledObject
    /// that scales it.
    pub const APPLY_ORDER: [ChildKind; 4] = [
        ChildKind::ServiceAccount,
        ChildKind::Deployment,
        ChildKind::Service,
        ChildKind::ScaledObject,
    ];

    /// How to reach objects of this kind: its group, version, kind and
    /// plural, made once per process.
    pub fn resource(self) -> &'static ApiResource {
        static RESOURCES: LazyLock<ByKind<ApiResource>> = LazyLock::new(|| {
            ByKind::from_fn(|kind| match kind {
                ChildKind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
                ChildKind::Deployment => ApiResource::erase::<Deployment>(&()),
                ChildKind::Service => ApiResource::erase::<Service>(&()),
                ChildKind::ScaledObject => ApiResource::erase::<ScaledObject>(&()),
            })
        });
        RESOURCES.get(self)
    }
}

/// One `T` per kind of child.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ByKind<T> {
    pub service_account: T,
    pub deployment: T,
    pub service: T,
    pub scaled_object: T,
}

impl<T> ByKind<T> {
    pub fn from_fn(mut value: impl FnMut(ChildKind) -> T) -> Self {
        ByKind {
            service_account: value(ChildKind::ServiceAccount),
            deployment: value(ChildKind::Deployment),
            service: value(ChildKind::Service),
            scaled_object: value(ChildKind::ScaledObject),
        }
    }

    pub fn get(&self, kind: ChildKind) -> &T {
        match kind {
            ChildKind::ServiceAccount => &self.service_account,
            ChildKind::Deployment => &self.deployment,
            ChildKind::Service => &self.service,
            ChildKind::ScaledObject => &self.scaled_object,
        }
    }

    /// Each kind with its value, in [`ChildKind::APPLY_ORDER`].
    pub fn into_array(self) -> [(ChildKind, T); 4] {
        [
            (ChildKind::ServiceAccount, self.service_account),
            (ChildKind::Deployment, self.deployment),
            (ChildKind::Service, self.service),
            (ChildKind::ScaledObject, self.scaled_object),
        ]
    }

    pub fn get_mut(&mut self, kind: ChildKind) -> &mut T {
        match kind {
            ChildKind::ServiceAccount => &mut self.service_account,
            ChildKind::Deployment => &mut self.deployment,
            ChildKind::Service => &mut self.service,
            ChildKind::ScaledObject => &mut self.scaled_object,
        }
    }
}

impl<A, B> ByKind<(A, B)> {
    pub fn unzip(self) -> (ByKind<A>, ByKind<B>) {
        let ByKind {
            service_account: (sa_a, sa_b),
            deployment: (d_a, d_b),
            service: (s_a, s_b),
            scaled_object: (so_a, so_b),
        } = self;
        (
            ByKind {
                service_account: sa_a,
                deployment: d_a,
                service: s_a,
                scaled_object: so_a,
            },
            ByKind {
                service_account: sa_b,
                deployment: d_b,
                service: s_b,
                scaled_object: so_b,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_field_and_resource() {
        let kinds = ByKind::from_fn(|kind| kind);
        let mut names = Vec::new();
        for kind in ChildKind::APPLY_ORDER {
            assert_eq!(*kinds.get(kind), kind);
            assert_eq!(kind.resource().kind, format!("{kind:?}"));
            names.push(kind.resource().kind.clone());
        }
        assert_eq!(names, ["ServiceAccount", "Deployment", "Service", "ScaledObject"]);
        let mut counts = ByKind::from_fn(|_| 0);
        *counts.get_mut(ChildKind::Deployment) += 1;
        assert_eq!((counts.deployment, counts.service), (1, 0));
        let order: Vec<ChildKind> = ByKind::from_fn(|kind| kind).into_array().map(|(k, _)| k).into();
        assert_eq!(order, ChildKind::APPLY_ORDER);
        let (kinds, names) = ByKind::from_fn(|kind| (kind, kind.resource().kind.clone())).unzip();
        assert_eq!(
            (kinds.scaled_object, names.scaled_object.as_str()),
            (ChildKind::ScaledObject, "ScaledObject")
        );
    }
}
