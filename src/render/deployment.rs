//! The worker's pods: one container (and an optional init container) under
//! the Restricted pod security profile.
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction, LocalObjectReference,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretEnvSource, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::resources::{ResourceError, size_resources};
use super::{child_metadata, labels, selector_labels};
use crate::api::{ConsumerConfig, EventDrivenService};

/// The NATS server URL(s) from `spec.nats.url`.
pub const ENV_NATS_URL: &str = "NATS_URL";
/// The stream name from `spec.nats.stream`.
pub const ENV_NATS_STREAM: &str = "NATS_STREAM";
/// The durable consumer name from `spec.nats.consumer`.
pub const ENV_NATS_CONSUMER: &str = "NATS_CONSUMER";
pub const CONTAINER_NAME: &str = "worker";
pub const INIT_CONTAINER_NAME: &str = "init";
/// The name of the worker's port, used by the probes and the Service.
pub const PORT_NAME: &str = "http";

/// NATS's default `ack_wait`, which a consumer created without one has.
pub const NATS_DEFAULT_ACK_WAIT_SECONDS: i64 = 30;
/// Time a stopping worker needs besides its last message: to NAK what it
/// holds, flush its connection and exit.
pub const TERMINATION_GRACE_MARGIN_SECONDS: i64 = 10;
/// The grace period of a claim that states neither one nor its consumer's
/// `ack_wait`: the rule below applied to NATS's default `ack_wait`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 =
    NATS_DEFAULT_ACK_WAIT_SECONDS + TERMINATION_GRACE_MARGIN_SECONDS;

pub fn desired_deployment(eds: &EventDrivenService) -> Result<Deployment, ResourceError> {
    let spec = &eds.spec;
    let resources = size_resources(spec.size, spec.resources.as_ref())?;
    let env = Some(env(eds));
    let env_from = env_from(eds);
    let worker = Container {
        name: CONTAINER_NAME.into(),
        image: Some(spec.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: env.clone(),
        env_from: env_from.clone(),
        liveness_probe: Some(http_probe(&spec.probes.liveness_path, 30, 10)),
        readiness_probe: Some(http_probe(&spec.probes.readiness_path, 10, 5)),
        resources: Some(resources.clone()),
        security_context: Some(container_security_context()),
        ..Container::default()
    };
    let init = spec.init_container.as_ref().map(|init| Container {
        name: INIT_CONTAINER_NAME.into(),
        image: Some(init.image.clone().unwrap_or_else(|| spec.image.clone())),
        command: non_empty(&init.command),
        args: non_empty(&init.args),
        env,
        env_from,
        // A namespace quota may demand limits on every container; the init
        // container runs alone, so the worker's size fits it.
        resources: Some(resources.clone()),
        security_context: Some(container_security_context()),
        ..Container::default()
    });
    let pod = PodSpec {
        service_account_name: Some(eds.name_any()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: non_empty(
            &spec
                .image_pull_secrets
                .iter()
                .map(|s| LocalObjectReference { name: s.name.clone() })
                .collect::<Vec<_>>(),
        ),
        init_containers: init.map(|c| vec![c]),
        containers: vec![worker],
        // The ack wait the claim states, never one read from NATS: rendering
        // stays offline, and a change on the NATS side never rolls the pods.
        termination_grace_period_seconds: Some(termination_grace_period_seconds(
            spec.termination_grace_period_seconds,
            spec.nats
                .consumer_config
                .as_ref()
                .and_then(ConsumerConfig::longest_ack_wait),
        )),
        ..PodSpec::default()
    };
    Ok(Deployment {
        metadata: child_metadata(eds),
        spec: Some(DeploymentSpec {
            // `replicas` is left out on purpose: KEDA's HPA owns the replica
            // count. If we applied it, every reconcile would reset what the
            // autoscaler decided, and server-side apply would make us its
            // owner. Left out, the API server defaults it to 1 on create and
            // nobody but the HPA changes it afterwards.
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector_labels(eds)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(eds)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// Seconds between SIGTERM and SIGKILL for a replica: the claim's own value;
/// else the consumer's `ack_wait` (rounded up) plus a margin, because a
/// message held longer than `ack_wait` is redelivered anyway, so no message a
/// worker may still finish needs more; else that rule on NATS's default.
pub fn termination_grace_period_seconds(claimed: Option<i64>, ack_wait: Option<Duration>) -> i64 {
    claimed.unwrap_or_else(|| match ack_wait {
        Some(ack_wait) => {
            let seconds = ack_wait
                .as_secs()
                .saturating_add(u64::from(ack_wait.subsec_nanos() > 0));
            i64::try_from(seconds)
                .unwrap_or(i64::MAX)
                .saturating_add(TERMINATION_GRACE_MARGIN_SECONDS)
        }
        None => DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS,
    })
}

/// The platform's variables first, then the claim's (which the CRD forbids
/// from reusing the platform's names).
fn env(eds: &EventDrivenService) -> Vec<EnvVar> {
    let nats = &eds.spec.nats;
    [
        (ENV_NATS_URL, &nats.url),
        (ENV_NATS_STREAM, &nats.stream),
        (ENV_NATS_CONSUMER, &nats.consumer),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.clone()))
    .chain(eds.spec.env.iter().map(|e| (e.name.clone(), e.value.clone())))
    .map(|(name, value)| EnvVar {
        name,
        value: Some(value),
        ..EnvVar::default()
    })
    .collect()
}

/// `secretName` first, then `secretRefs` in order: a key in a later secret
/// wins over the same key in an earlier one.
fn env_from(eds: &EventDrivenService) -> Option<Vec<EnvFromSource>> {
    let sources: Vec<EnvFromSource> = eds
        .spec
        .secret_name
        .iter()
        .chain(eds.spec.secret_refs.iter().map(|r| &r.name))
        .map(|name| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.clone(),
                ..SecretEnvSource::default()
            }),
            ..EnvFromSource::default()
        })
        .collect();
    non_empty(&sources)
}

fn http_probe(path: &str, initial_delay_seconds: i32, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay_seconds),
        period_seconds: Some(period_seconds),
        ..Probe::default()
    }
}

/// The Restricted pod security profile, container by container.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Container;

    use super::*;
    use crate::api::{InitContainer, Size};

    fn pod(eds: &EventDrivenService) -> PodSpec {
        desired_deployment(eds).unwrap().spec.unwrap().template.spec.unwrap()
    }

    fn init_container(eds: &EventDrivenService) -> Container {
        pod(eds).init_containers.unwrap().remove(0)
    }

    fn migrations() -> InitContainer {
        InitContainer {
            command: vec!["/bin/sh".into(), "-c".into(), "migrate".into()],
            ..InitContainer::default()
        }
    }

    fn env_names(container: &Container) -> Vec<String> {
        container.env.iter().flatten().map(|e| e.name.clone()).collect()
    }

    fn env_from_secrets(container: &Container) -> Vec<String> {
        container
            .env_from
            .iter()
            .flatten()
            .map(|e| e.secret_ref.as_ref().unwrap().name.clone())
            .collect()
    }

    #[test]
    fn replicas_are_never_set() {
        let eds = EventDrivenService::test().with_replicas(3, 7);
        let deployment = desired_deployment(&eds).unwrap();
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, None);
        let applied = serde_json::to_value(&deployment).unwrap();
        assert!(applied["spec"].get("replicas").is_none(), "{applied}");
    }

    #[test]
    fn pods_meet_the_restricted_profile_in_every_container() {
        let eds = EventDrivenService::test().with_init_container(migrations());
        let pod = pod(&eds);
        let pod_context = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_context.run_as_non_root, Some(true));
        assert_eq!(pod_context.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
        let mut seen = 0;
        for container in containers {
            seen += 1;
            let context = container.security_context.as_ref().unwrap();
            assert_eq!(context.run_as_non_root, Some(true), "{}", container.name);
            assert_eq!(context.allow_privilege_escalation, Some(false), "{}", container.name);
            assert_eq!(context.privileged, None, "{}", container.name);
            let capabilities = context.capabilities.as_ref().unwrap();
            assert_eq!(
                capabilities.drop.as_deref(),
                Some(&["ALL".to_string()][..]),
                "{}",
                container.name
            );
            assert_eq!(capabilities.add, None, "{}", container.name);
            assert_eq!(context.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        }
        assert_eq!(seen, 2);
    }

    #[test]
    fn the_worker_serves_its_probes_on_the_named_port() {
        let eds = EventDrivenService::test().with_spec(|s| {
            s.port = 9000;
            s.probes.liveness_path = "/livez".into();
        });
        let worker = pod(&eds).containers.remove(0);
        assert_eq!(worker.name, "worker");
        assert_eq!(worker.image.as_deref(), Some("ghcr.io/acme/orders-worker:1.2.3"));
        let port = &worker.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some("http"), 9000));
        for (probe, path) in [(&worker.liveness_probe, "/livez"), (&worker.readiness_probe, "/ready")] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("http".into()));
        }
    }

    #[test]
    fn the_worker_learns_its_stream_and_consumer_from_the_environment() {
        let eds = EventDrivenService::test()
            .with_env("LOG_LEVEL", "debug")
            .with_env("REGION", "eu");
        let worker = pod(&eds).containers.remove(0);
        assert_eq!(
            env_names(&worker),
            ["NATS_URL", "NATS_STREAM", "NATS_CONSUMER", "LOG_LEVEL", "REGION"]
        );
        let values: Vec<&str> = worker
            .env
            .iter()
            .flatten()
            .map(|e| e.value.as_deref().unwrap())
            .collect();
        assert_eq!(
            values,
            ["nats://nats.nats.svc:4222", "ORDERS", "orders-workers", "debug", "eu"]
        );
    }

    #[test]
    fn secrets_become_the_environment_in_order() {
        let plain = pod(&EventDrivenService::test()).containers.remove(0);
        assert_eq!(plain.env_from, None);
        let eds = EventDrivenService::test()
            .with_secret_ref("db")
            .with_secret_name("config")
            .with_secret_ref("api-keys");
        let worker = pod(&eds).containers.remove(0);
        assert_eq!(env_from_secrets(&worker), ["config", "db", "api-keys"]);
        let only_refs = EventDrivenService::test().with_secret_ref("db");
        assert_eq!(env_from_secrets(&pod(&only_refs).containers[0]), ["db"]);
    }

    #[test]
    fn image_pull_secrets_and_the_service_account_are_set() {
        let eds = EventDrivenService::test()
            .with_image_pull_secret("ghcr")
            .with_image_pull_secret("ecr");
        let pod = pod(&eds);
        let names: Vec<&str> = pod
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["ghcr", "ecr"]);
        assert_eq!(pod.service_account_name.as_deref(), Some("orders-worker"));
    }

    #[test]
    fn no_init_container_unless_asked() {
        let pod = pod(&EventDrivenService::test());
        assert_eq!(pod.init_containers, None);
        assert_eq!(pod.image_pull_secrets, None);
    }

    #[test]
    fn the_init_container_defaults_to_the_main_image_and_shares_its_environment() {
        let eds = EventDrivenService::test()
            .with_secret_name("config")
            .with_secret_ref("db")
            .with_env("LOG_LEVEL", "info")
            .with_init_container(migrations());
        let pod = pod(&eds);
        let (worker, init) = (&pod.containers[0], &pod.init_containers.as_ref().unwrap()[0]);
        assert_eq!(init.name, "init");
        assert_eq!(init.image, worker.image);
        assert_eq!(init.command.as_deref().unwrap(), ["/bin/sh", "-c", "migrate"]);
        assert_eq!(init.args, None);
        assert_eq!(init.env, worker.env);
        assert_eq!(init.env_from, worker.env_from);
        assert_eq!(env_from_secrets(init), ["config", "db"]);
        assert_eq!(init.resources, worker.resources);
        assert_eq!(init.liveness_probe, None);
        assert_eq!(init.ports, None);
    }

    #[test]
    fn the_init_container_may_bring_its_own_image_and_args() {
        let eds = EventDrivenService::test().with_init_container(InitContainer {
            image: Some("ghcr.io/acme/migrations:7".into()),
            command: vec![],
            args: vec!["--once".into()],
        });
        let init = init_container(&eds);
        assert_eq!(init.image.as_deref(), Some("ghcr.io/acme/migrations:7"));
        assert_eq!(init.command, None);
        assert_eq!(init.args.as_deref().unwrap(), ["--once"]);
    }

    #[test]
    fn resources_follow_the_size() {
        let eds = EventDrivenService::test().with_size(Size::Small);
        let resources = pod(&eds).containers.remove(0).resources.unwrap();
        let get = |list: &Option<std::collections::BTreeMap<String, _>>, key: &str| {
            list.as_ref()
                .unwrap()
                .get(key)
                .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
        };
        assert_eq!(get(&resources.requests, "cpu").as_deref(), Some("250m"));
        assert_eq!(get(&resources.limits, "memory").as_deref(), Some("2Gi"));
    }

    #[test]
    fn the_grace_period_is_the_claims_when_it_states_one() {
        let default = pod(&EventDrivenService::test());
        assert_eq!(default.termination_grace_period_seconds, Some(40));
        let eds = EventDrivenService::test().with_spec(|s| s.termination_grace_period_seconds = Some(95));
        assert_eq!(pod(&eds).termination_grace_period_seconds, Some(95));
    }

    #[test]
    fn the_grace_period_follows_ack_wait_plus_a_margin_unless_the_claim_states_one() {
        let grace = termination_grace_period_seconds;
        assert_eq!(
            grace(None, None),
            NATS_DEFAULT_ACK_WAIT_SECONDS + TERMINATION_GRACE_MARGIN_SECONDS
        );
        assert_eq!(grace(None, Some(Duration::from_secs(60))), 70);
        // Part of a second still needs the whole second.
        assert_eq!(grace(None, Some(Duration::from_millis(2_500))), 13);
        assert_eq!(grace(Some(5), Some(Duration::from_secs(60))), 5);
        assert_eq!(grace(None, Some(Duration::MAX)), i64::MAX);
    }

    #[test]
    fn the_grace_period_follows_the_claims_consumer_config() {
        let config = |ack_wait: &str, backoff: &[&str]| ConsumerConfig {
            ack_wait: ack_wait.into(),
            backoff: backoff.iter().map(|s| s.to_string()).collect(),
            ..ConsumerConfig::default()
        };
        let grace =
            |config| pod(&EventDrivenService::test().with_consumer_config(config)).termination_grace_period_seconds;
        assert_eq!(grace(config("2m", &[])), Some(130));
        assert_eq!(grace(config("1500ms", &[])), Some(12));
        // A backoff step longer than ackWait is the longest a message is held.
        assert_eq!(grace(config("30s", &["10s", "5m"])), Some(310));
        let stated = EventDrivenService::test()
            .with_consumer_config(config("2m", &[]))
            .with_spec(|s| s.termination_grace_period_seconds = Some(20));
        assert_eq!(pod(&stated).termination_grace_period_seconds, Some(20));
    }
}
