//! `scripts/rig.sh`: the end-to-end rig for a person. Starts the control
//! plane, kube-scheduler and KWOK (a fake node whose pods turn Running and
//! Ready by simulation), KEDA, nats-server, `eds scaler` and `eds controller`
//! on loopback (the harness the e2e tests use), applies the claim files given as
//! arguments with a stream and durable consumer for each, prints where
//! everything is, then takes commands on stdin until Ctrl-C stops it all.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use eds::api::EventDrivenService;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde::Deserialize as _;
use testkit::{control_plane, js, kwok, rig::Rig};

const DEFAULT_NAMESPACE: &str = "default";
const HELP: &str = "commands: `pub N [CLAIM]` publishes N messages to the claim's stream, \
`work N [CLAIM]` takes and acks N as a worker would, `status` (or Enter) shows every claim and its pods, Ctrl-C stops";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let files: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    // Cargo puts examples in `<target>/<profile>/examples/` and the `eds`
    // binary one level up; scripts/rig.sh builds both.
    let exe = std::env::current_exe().expect("own path");
    let eds = exe.parent().and_then(|d| d.parent()).expect("target dir").join("eds");
    assert!(
        eds.exists(),
        "{} is missing: build it first (scripts/rig.sh does)",
        eds.display()
    );

    let started = std::time::Instant::now();
    let control_plane = control_plane::shared();
    let rig = Rig::start(&control_plane, &eds);
    let client = rig.client().await;
    let js = js::js(&rig.nats_url).await;
    let mut claims = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        for namespace in namespaces(&text) {
            let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
            control_plane::apply_yaml(&client, &yaml, None).await;
        }
        for object in control_plane::apply_yaml(&client, &text, Some(DEFAULT_NAMESPACE)).await {
            let kind = object.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            println!("applied {kind} {}", object.name_any());
            if kind == "EventDrivenService" {
                let claim: EventDrivenService = object.try_parse().expect("an EventDrivenService");
                ensure_consumer(&js, &claim).await;
                claims.push(claim);
            }
        }
    }

    println!(
        "\nrig ready in {:.1?} (scheduler and KWOK, KEDA, NATS, scaler and controller: {:.1?})\n",
        started.elapsed(),
        rig.started_in
    );
    println!("  export KUBECONFIG={}", rig.kubeconfig.display());
    println!("  API server           {}", rig.api_url);
    println!("  NATS                 {}", rig.nats_url);
    println!("  NATS monitoring      http://{}", rig.nats_monitoring);
    println!(
        "  eds scaler gRPC      {}  (every ScaledObject's scalerAddress)",
        rig.scaler_address
    );
    println!("  eds scaler HTTP      http://{}/metrics", rig.scaler_http);
    println!("  eds controller HTTP  http://{}/metrics", rig.controller_http);
    println!(
        "  KEDA metrics adapter https://127.0.0.1:{}  (registered as the external metrics API)",
        rig.adapter_port
    );
    println!("  logs                 {}", rig.dir().display());
    println!(
        "\nWith kubectl: kubectl get eds,scaledobject,hpa,deployment,pods -A\n\
         A claim applied by hand needs its stream and durable consumer on the NATS above.\n\
         Pods are scheduled onto the fake node {} and turn Running and Ready at once: KWOK \
         simulates that, no container runs and no probe is called.\n\n{HELP}",
        kwok::NODE
    );

    let mut lines = stdin_lines();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            line = lines.recv() => match line {
                Some(line) => {
                    if matches!(line.trim(), "" | "status") {
                        print_peers(&rig, &control_plane);
                    }
                    run_command(&client, &js, &claims, line.trim()).await
                }
                // stdin closed (not a terminal): keep running until Ctrl-C.
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                    break;
                }
            },
        }
    }
    println!("stopping");
    drop(rig);
}

/// Whether every peer still runs; a peer that exited by itself is named,
/// with the end of its log (nothing works as it should without it).
fn print_peers(rig: &Rig, control_plane: &control_plane::ControlPlane) {
    let report = rig.report(control_plane);
    let running = report.iter().filter(|line| line.ends_with(": running")).count();
    if running == report.len() {
        println!("peers: all {running} running");
        return;
    }
    println!("peers: {running} of {} running", report.len());
    for line in report.iter().filter(|line| !line.ends_with(": running")) {
        println!("{line}");
    }
}

/// The claim's stream (subjects `<stream>.>`) and durable pull consumer.
async fn ensure_consumer(js: &jetstream::Context, claim: &EventDrivenService) {
    let nats = &claim.spec.nats;
    let stream = js
        .get_or_create_stream(stream::Config {
            name: nats.stream.clone(),
            subjects: vec![format!("{}.>", nats.stream)],
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("stream {}: {e}", nats.stream));
    stream
        .get_or_create_consumer(
            &nats.consumer,
            consumer::pull::Config {
                durable_name: Some(nats.consumer.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("consumer {} on {}: {e}", nats.consumer, nats.stream));
    println!(
        "  stream {} (subjects {0}.>), durable consumer {}",
        nats.stream, nats.consumer
    );
}

/// The namespaces the documents of `yaml` name, which must exist first.
fn namespaces(yaml: &str) -> Vec<String> {
    let mut names: Vec<String> = serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
        .filter_map(|value| value["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn run_command(client: &Client, js: &jetstream::Context, claims: &[EventDrivenService], line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let pick = |name: Option<&&str>| match name {
        Some(name) => claims.iter().find(|c| c.name_any() == *name),
        None => claims.first(),
    };
    match words.as_slice() {
        [] | ["status"] => {
            for claim in claims {
                println!("{}", status(client, js, claim).await);
                print_pods(client, claim).await;
            }
        }
        [verb @ ("pub" | "work"), n, rest @ ..] => {
            let (Ok(n), Some(claim)) = (n.parse::<usize>(), pick(rest.first())) else {
                println!("{HELP}");
                return;
            };
            let nats = &claim.spec.nats;
            if *verb == "pub" {
                js::publish(js, &format!("{}.work", nats.stream), n).await;
            } else {
                take_and_ack(js, &nats.stream, &nats.consumer, n).await;
            }
            println!("{}", status(client, js, claim).await);
            print_pods(client, claim).await;
        }
        _ => println!("{HELP}"),
    }
}

async fn take_and_ack(js: &jetstream::Context, stream: &str, consumer: &str, n: usize) {
    let Ok(consumer) = js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(consumer, stream)
        .await
    else {
        println!("no consumer {consumer} on {stream}");
        return;
    };
    let Ok(mut batch) = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(1))
        .messages()
        .await
    else {
        return;
    };
    while let Some(Ok(message)) = batch.next().await {
        let _ = message.ack().await;
    }
}

/// One line: the claim's lag in NATS, its Deployment's replicas, KEDA's HPA
/// and the claim's own conditions.
async fn status(client: &Client, js: &jetstream::Context, claim: &EventDrivenService) -> String {
    let name = claim.name_any();
    let namespace = claim.namespace().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let nats = &claim.spec.nats;
    let lag = match js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(&nats.consumer, &nats.stream)
        .await
    {
        Ok(mut consumer) => match consumer.info().await {
            Ok(info) => format!("pending {} ack-pending {}", info.num_pending, info.num_ack_pending),
            Err(e) => format!("lag unknown ({e})"),
        },
        Err(e) => format!("lag unknown ({e})"),
    };
    let replicas = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.spec?.replicas);
    let desired = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace)
        .get_opt(&format!("keda-hpa-{name}"))
        .await
        .ok()
        .flatten()
        .and_then(|h| h.status)
        .map(|s| s.desired_replicas);
    let conditions = Api::<EventDrivenService>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.status)
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "{namespace}/{name}: {lag} | Deployment replicas {} | HPA desired {} | {conditions}",
        shown(replicas),
        shown(desired)
    )
}

/// One line per pod of the claim's Deployment: name, phase, ready, node.
async fn print_pods(client: &Client, claim: &EventDrivenService) {
    let namespace = claim.namespace().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    for pod in kwok::deployment_pods(client, &namespace, &claim.name_any()).await {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("-");
        let phase = match pod.metadata.deletion_timestamp {
            Some(_) => "Terminating",
            None => phase,
        };
        let ready = if kwok::is_ready(&pod) { "ready" } else { "not ready" };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("-");
        println!("  pod {}  {phase}  {ready}  node {node}", pod.name_any());
    }
}

fn shown(value: Option<i32>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}
