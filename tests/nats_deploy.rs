//! The NATS side of an installation (`deploy/nats/`), against real
//! nats-servers (fast tier): the stream setup Job's configs are accepted by
//! JetStream as written, and the scaler needs no more than the documented
//! permissions.
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use eds::api::check_claim;
use eds::consumer::{self as owned, Deletion, Outcome};
use eds::nats::{Connections, NatsConfig};
use eds::scaler::Tuning;
use serde_json::{Value, json};
use testkit::nats::{NatsCluster, NatsServer};
use testkit::repo::{self, read};
use testkit::scaler::{RunningScaler, lag_of, scaled_object};
use testkit::{chart, eventually};

/// How long a cluster may take to elect a stream's leader.
const SETTLE: Duration = Duration::from_secs(30);

/// One JetStream API request; the reply's `error`, if any, as Err.
async fn js_api(client: &async_nats::Client, subject: String, body: Vec<u8>) -> Result<Value, String> {
    let reply = client
        .request(subject.clone(), Bytes::from(body))
        .await
        .map_err(|e| format!("{subject}: {e}"))?;
    let value: Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    match value.get("error") {
        Some(error) => Err(format!("{subject}: {error}")),
        None => Ok(value),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_setup_configs_are_accepted_by_jetstream() {
    let docs = chart::documents(&read(&repo::path("deploy/nats/stream-setup-job.yaml")));
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("the ConfigMap");
    let stream: Value = serde_json::from_str(config_map["data"]["stream.json"].as_str().unwrap()).unwrap();
    let consumer: Value = serde_json::from_str(config_map["data"]["consumer.json"].as_str().unwrap()).unwrap();
    let stream_name = stream["name"].as_str().unwrap();
    let durable = consumer["durable_name"].as_str().unwrap();
    let job = docs.iter().find(|d| d["kind"] == "Job").expect("the Job");
    let script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap();
    assert!(script.contains(&format!("stream={stream_name}\n")), "{script}");
    assert!(script.contains(&format!("consumer={durable}\n")), "{script}");

    // Three servers: the stream asks for three replicas.
    let nats = NatsCluster::start(3);
    let client = async_nats::connect(nats.servers[0].url()).await.unwrap();
    let body = serde_json::to_vec(&stream).unwrap();
    eventually("creating the stream", SETTLE, || {
        js_api(&client, format!("$JS.API.STREAM.CREATE.{stream_name}"), body.clone())
    })
    .await;
    // What `nats stream edit` sends on a re-run: the same config is accepted.
    js_api(&client, format!("$JS.API.STREAM.UPDATE.{stream_name}"), body)
        .await
        .unwrap();

    let request = serde_json::to_vec(&json!({"stream_name": stream_name, "config": consumer})).unwrap();
    let subject = format!("$JS.API.CONSUMER.CREATE.{stream_name}.{durable}");
    eventually("creating the consumer", SETTLE, || {
        js_api(&client, subject.clone(), request.clone())
    })
    .await;
    let info = js_api(&client, subject, request)
        .await
        .expect("re-creating with the same config");
    // The server keeps the settings as written, so a re-run finds nothing to change.
    for key in [
        "ack_policy",
        "ack_wait",
        "max_deliver",
        "backoff",
        "max_ack_pending",
        "filter_subjects",
    ] {
        assert_eq!(info["config"][key], consumer[key], "consumer {key}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scaler_needs_only_the_documented_nats_permissions() {
    let permissions = read(&repo::path("deploy/nats/eds-permissions.conf"));
    let nats = NatsServer::start_with(&format!(
        "{permissions}\nauthorization {{\n  users: [\n    {{user: eds, password: eds-pass, permissions: $EDS_PERMISSIONS}}\n    {{user: admin, password: admin-pass}}\n  ]\n}}\n"
    ));
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pass".into())
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(admin);
    let work = js
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec!["work.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for name in ["busy", "idle"] {
        work.create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            filter_subject: format!("work.{name}"),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for _ in 0..3 {
        js.publish("work.busy", "job".into()).await.unwrap().await.unwrap();
    }

    let mut args = NatsConfig::for_url(nats.url());
    args.default.user = Some("eds".into());
    args.default.password = Some("eds-pass".into());
    let tuning = Tuning {
        cache_ttl: Duration::from_millis(200),
        ..Tuning::default()
    };
    let scaler = RunningScaler::start_with(args, tuning, None).await;
    let mut client = scaler.client().await;
    let busy = scaled_object(&[("stream", "WORK"), ("consumer", "busy")]);
    assert_eq!(lag_of(&mut client, &busy).await.unwrap(), 3);

    let idle = scaled_object(&[("stream", "WORK"), ("consumer", "idle")]);
    let mut pushed = client.stream_is_active(idle).await.unwrap().into_inner();
    let first = pushed.message().await.unwrap().expect("the current activity");
    assert!(!first.result);
    // Give the watcher time to set up its notifier (a JetStream consumer of its
    // own), then wake the consumer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    js.publish("work.idle", "job".into()).await.unwrap().await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), pushed.message())
        .await
        .expect("push activation within 5 s")
        .unwrap()
        .expect("stream open");
    assert!(woke.result);
    // Closing the stream deletes the watcher's consumer: that needs permission
    // too. The server logs every request the permissions refused.
    drop(pushed);
    drop(client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = nats.peer.log();
    assert!(
        !log.contains("Violation"),
        "eds needed more than deploy/nats/eds-permissions.conf grants:\n{}",
        log.lines()
            .filter(|l| l.contains("Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The controller's consumer writes (issue 12) under the same permissions:
/// create, repair and delete a claim's consumer as user `eds`, and nothing
/// the server refuses on the way. A stream change is refused: the
/// permissions grant no more than consumers.
#[tokio::test(flavor = "multi_thread")]
async fn controller_consumer_writes_need_only_the_documented_nats_permissions() {
    let permissions = read(&repo::path("deploy/nats/eds-permissions.conf"));
    let nats = NatsServer::start_with(&format!(
        "{permissions}\nauthorization {{\n  users: [\n    {{user: eds, password: eds-pass, permissions: $EDS_PERMISSIONS}}\n    {{user: admin, password: admin-pass}}\n  ]\n}}\n"
    ));
    let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pass".into())
        .connect(nats.url())
        .await
        .unwrap();
    let js = jetstream::new(admin);
    let work = js
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec!["work.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut args = NatsConfig::for_url(nats.url());
    args.default.user = Some("eds".into());
    args.default.password = Some("eds-pass".into());
    let connections = Connections::connect(&args, "eds-controller").await.unwrap();
    let conn = connections.get(None).unwrap();
    let mut claim = check_claim(&json!({
        "apiVersion": "platform.bizmatters.io/v1alpha1",
        "kind": "EventDrivenService",
        "metadata": {"name": "worker", "namespace": "team-a", "uid": "1d2c3b4a"},
        "spec": {"image": "busybox", "nats": {
            "stream": "WORK", "consumer": "workers", "deletionPolicy": "Delete",
            "consumerConfig": {"filterSubjects": ["work.a", "work.b"]},
        }},
    }))
    .unwrap();

    assert_eq!(owned::reconcile(conn, &claim).await.unwrap(), Some(Outcome::Created));
    claim.spec.nats.consumer_config.as_mut().unwrap().max_deliver = 9;
    assert!(matches!(
        owned::reconcile(conn, &claim).await.unwrap(),
        Some(Outcome::Updated(_))
    ));
    assert_eq!(work.consumer_info("workers").await.unwrap().config.max_deliver, 9);
    assert_eq!(owned::release(conn, &claim).await.unwrap(), Some(Deletion::Deleted));

    // What the permissions keep out: the stream itself.
    let refused = conn.client.request("$JS.API.STREAM.DELETE.WORK", Bytes::new()).await;
    assert!(refused.is_err(), "deleting a stream must be refused: {refused:?}");
    assert!(js.get_stream("WORK").await.is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = nats.peer.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.len() == 1 && violations[0].contains("STREAM.DELETE"),
        "only the stream deletion may be refused; eds needed more than deploy/nats/eds-permissions.conf grants:\n{}",
        violations.join("\n")
    );
    connections.close().await;
}
