//! Test builders (`EventDrivenService::test().with_x()`) and the shared table
//! of invalid claims, for unit tests and the control-plane tests.
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

use super::*;

impl EventDrivenService {
    /// A valid claim as the API server hands it to the controller: named,
    /// namespaced, with a uid, and with every default filled in.
    pub fn test() -> Self {
        let spec = EventDrivenServiceSpec {
            image: "ghcr.io/acme/orders-worker:1.2.3".into(),
            size: Size::default(),
            resources: None,
            nats: Nats {
                url: DEFAULT_NATS_URL.into(),
                stream: "ORDERS".into(),
                consumer: "orders-workers".into(),
                connection: None,
                consumer_config: None,
                deletion_policy: DeletionPolicy::Retain,
            },
            scaling: Scaling::default(),
            secret_name: None,
            secret_refs: vec![],
            env: vec![],
            image_pull_secrets: vec![],
            init_container: None,
            port: DEFAULT_PORT,
            probes: Probes::default(),
            termination_grace_period_seconds: None,
        };
        EventDrivenService {
            metadata: ObjectMeta {
                name: Some("orders-worker".into()),
                namespace: Some("team-a".into()),
                uid: Some("6f1c2c52-5a8e-4b8e-9a43-1d2f3e4a5b6c".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            ..EventDrivenService::new("orders-worker", spec)
        }
    }

    pub fn with_name(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }

    pub fn with_namespace(mut self, namespace: Option<&str>) -> Self {
        self.metadata.namespace = namespace.map(Into::into);
        self
    }

    /// As read from a file rather than from the API server.
    pub fn without_uid(mut self) -> Self {
        self.metadata.uid = None;
        self.metadata.generation = None;
        self
    }

    /// Any change to the spec the named builders do not cover.
    pub fn with_spec(mut self, change: impl FnOnce(&mut EventDrivenServiceSpec)) -> Self {
        change(&mut self.spec);
        self
    }

    pub fn with_image(self, image: &str) -> Self {
        self.with_spec(|s| s.image = image.into())
    }

    pub fn with_size(self, size: Size) -> Self {
        self.with_spec(|s| s.size = size)
    }

    pub fn with_connection(self, connection: &str) -> Self {
        self.with_spec(|s| s.nats.connection = Some(connection.into()))
    }

    /// The controller creates and keeps the consumer, with these settings.
    pub fn with_consumer_config(self, config: ConsumerConfig) -> Self {
        self.with_spec(|s| s.nats.consumer_config = Some(config))
    }

    pub fn with_deletion_policy(self, policy: DeletionPolicy) -> Self {
        self.with_spec(|s| s.nats.deletion_policy = policy)
    }

    pub fn with_replicas(self, min: i32, max: i32) -> Self {
        self.with_spec(|s| {
            s.scaling.min_replicas = min;
            s.scaling.max_replicas = max;
        })
    }

    pub fn with_lag_threshold(self, threshold: IntOrString) -> Self {
        self.with_spec(|s| s.scaling.lag_threshold = threshold)
    }

    pub fn with_env(self, name: &str, value: &str) -> Self {
        self.with_spec(|s| {
            s.env.push(EnvVar {
                name: name.into(),
                value: value.into(),
            })
        })
    }

    pub fn with_secret_name(self, name: &str) -> Self {
        self.with_spec(|s| s.secret_name = Some(name.into()))
    }

    pub fn with_secret_ref(self, name: &str) -> Self {
        self.with_spec(|s| s.secret_refs.push(SecretReference { name: name.into() }))
    }

    pub fn with_image_pull_secret(self, name: &str) -> Self {
        self.with_spec(|s| s.image_pull_secrets.push(SecretReference { name: name.into() }))
    }

    pub fn with_init_container(self, init: InitContainer) -> Self {
        self.with_spec(|s| s.init_container = Some(init))
    }
}

/// A valid claim as a user writes it (no uid), as JSON.
pub fn valid_claim() -> Value {
    serde_json::to_value(EventDrivenService::test().without_uid()).expect("a claim serializes")
}

/// One claim that must be refused, and how (see `tests/data/invalid-claims.yaml`).
#[derive(Clone, Debug, Deserialize)]
pub struct InvalidCase {
    pub case: String,
    pub patch: Value,
    /// The field the error is reported at; empty for the whole object.
    pub field: String,
    pub message: String,
}

impl InvalidCase {
    /// The invalid claim: [`valid_claim`] with the patch merged in.
    pub fn claim(&self) -> Value {
        let mut claim = valid_claim();
        json_patch::merge(&mut claim, &self.patch);
        claim
    }
}

pub fn invalid_cases() -> Vec<InvalidCase> {
    serde_yaml::from_str(include_str!("../../tests/data/invalid-claims.yaml")).expect("the invalid-claims table parses")
}
