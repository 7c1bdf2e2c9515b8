//! `eds function` over the wire: Crossplane's RunFunction contract (tag, ttl,
//! pass-through of what the step does not own, Fatal results naming the field)
//! and the mutual TLS Crossplane's function runtime sets up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use eds::function::proto::function_runner_service_client::FunctionRunnerServiceClient;
use eds::function::proto::{Ready, RequestMeta, Resource, RunFunctionRequest, RunFunctionResponse, Severity, State};
use eds::function::structs::{from_json, to_json};
use serde_json::{Value, json};
use testkit::certs::Pki;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A function served on a loopback port until dropped.
struct RunningFunction {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl RunningFunction {
    async fn start(tls: Option<ServerTlsConfig>) -> RunningFunction {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            eds::function::serve(listener, tls, async {
                let _ = stopped.await;
            })
            .await
            .expect("the function serves");
        });
        RunningFunction { addr, _stop: stop }
    }

    async fn plaintext_client(&self) -> FunctionRunnerServiceClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        FunctionRunnerServiceClient::new(channel)
    }
}

fn claim() -> Value {
    json!({
        "apiVersion": "platform.bizmatters.io/v1alpha1",
        "kind": "EventDrivenService",
        "metadata": {"name": "orders-worker", "namespace": "team-a", "uid": "6a1f0c2e-0000-4000-8000-000000000001"},
        "spec": {
            "image": "ghcr.io/acme/orders-worker:1.2.3",
            "nats": {"stream": "ORDERS", "consumer": "orders-workers"},
            "scaling": {"minReplicas": 2, "maxReplicas": 8},
            "crossplane": {"compositionRef": {"name": "eventdrivenservices.platform.bizmatters.io"}},
        },
    })
}

fn resource(object: Value) -> Resource {
    Resource {
        resource: Some(from_json(&object)),
        ..Resource::default()
    }
}

fn request(tag: &str, composite: Value) -> RunFunctionRequest {
    RunFunctionRequest {
        meta: Some(RequestMeta {
            tag: tag.into(),
            capabilities: Vec::new(),
        }),
        observed: Some(State {
            composite: Some(resource(composite)),
            resources: HashMap::new(),
        }),
        ..RunFunctionRequest::default()
    }
}

async fn call(client: &mut FunctionRunnerServiceClient<Channel>, request: RunFunctionRequest) -> RunFunctionResponse {
    client.run_function(request).await.expect("RunFunction").into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_response_carries_the_requests_tag_and_a_ttl() {
    let function = RunningFunction::start(None).await;
    let mut client = function.plaintext_client().await;
    for tag in ["a1b2", "another-tag"] {
        let response = call(&mut client, request(tag, claim())).await;
        let meta = response.meta.expect("response meta");
        assert_eq!(meta.tag, tag);
        let ttl = meta.ttl.expect("a ttl");
        assert!(ttl.seconds > 0, "{ttl:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_four_children_are_composed_and_integers_stay_integers() {
    let function = RunningFunction::start(None).await;
    let mut client = function.plaintext_client().await;
    let response = call(&mut client, request("t", claim())).await;
    assert!(response.results.is_empty(), "{:?}", response.results);
    let desired = response.desired.unwrap();
    let mut names: Vec<&str> = desired.resources.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["deployment", "scaled-object", "service", "service-account"]);
    let scaled_object = to_json(desired.resources["scaled-object"].resource.as_ref().unwrap());
    assert_eq!(scaled_object["spec"]["minReplicaCount"], json!(2));
    assert_eq!(scaled_object["spec"]["maxReplicaCount"], json!(8));
    let deployment = to_json(desired.resources["deployment"].resource.as_ref().unwrap());
    assert_eq!(deployment["metadata"]["name"], "orders-worker");
    assert_eq!(deployment["metadata"]["namespace"], "team-a");
}

#[tokio::test(flavor = "multi_thread")]
async fn unrelated_desired_resources_and_the_context_pass_through() {
    let function = RunningFunction::start(None).await;
    let mut client = function.plaintext_client().await;
    let mut req = request("t", claim());
    let mut bucket = resource(
        json!({"apiVersion": "s3.aws.upbound.io/v1beta1", "kind": "Bucket", "spec": {"forProvider": {"region": "eu-west-1"}}}),
    );
    bucket
        .connection_details
        .insert("endpoint".into(), b"https://bucket.example".to_vec());
    bucket.ready = Ready::True as i32;
    req.desired = Some(State {
        composite: None,
        resources: HashMap::from([
            ("bucket".to_string(), bucket.clone()),
            (
                "service".to_string(),
                resource(json!({"metadata": {"annotations": {"from-an-earlier-step": "kept"}}})),
            ),
        ]),
    });
    req.context = Some(from_json(
        &json!({"example.org/shared": {"region": "eu-west-1", "zones": 3}}),
    ));
    let response = call(&mut client, req.clone()).await;
    let desired = response.desired.unwrap();
    assert_eq!(
        desired.resources["bucket"], bucket,
        "an unrelated resource is untouched"
    );
    let service = to_json(desired.resources["service"].resource.as_ref().unwrap());
    assert_eq!(service["metadata"]["annotations"]["from-an-earlier-step"], "kept");
    assert_eq!(service["kind"], "Service");
    assert_eq!(response.context, req.context);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_composite_gets_a_fatal_result_naming_the_field() {
    let function = RunningFunction::start(None).await;
    let mut client = function.plaintext_client().await;
    for (patch, needle) in [
        (
            json!({"spec": {"nats": {"stream": "orders.v1"}}}),
            "spec.nats.stream: Invalid value: \"orders.v1\": nats.stream must be a NATS name",
        ),
        (
            json!({"spec": {"scaling": {"minReplicas": 9, "maxReplicas": 8}}}),
            "spec.scaling: Invalid value: scaling.minReplicas must not be greater than scaling.maxReplicas",
        ),
        (
            json!({"spec": {"size": "huge"}}),
            "spec.size: Unsupported value: \"huge\"",
        ),
        (json!({"spec": {"image": null}}), "spec.image: Required value"),
    ] {
        let mut composite = claim();
        json_merge(&mut composite, &patch);
        let response = call(&mut client, request("t", composite)).await;
        let fatal: Vec<&str> = response
            .results
            .iter()
            .filter(|r| r.severity == Severity::Fatal as i32)
            .map(|r| r.message.as_str())
            .collect();
        assert_eq!(fatal.len(), 1, "{patch}: {:?}", response.results);
        assert!(fatal[0].contains(needle), "{patch}: {}", fatal[0]);
        assert!(
            response.desired.unwrap_or_default().resources.is_empty(),
            "{patch}: nothing is composed"
        );
    }
}

fn json_merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Crossplane's function runtime: the function serves `tls.crt`/`tls.key`
/// from its certs directory and accepts only clients whose certificate
/// `ca.crt` signed.
#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_accepts_only_clients_the_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "crossplane");
    let server = pki.server("function-eds");
    let crossplane = pki.client("crossplane", &[]);
    let certs = dir.path().join("server-certs");
    std::fs::create_dir(&certs).unwrap();
    for (from, to) in [
        (&server.cert, "tls.crt"),
        (&server.key, "tls.key"),
        (&pki.ca_pem, "ca.crt"),
    ] {
        std::fs::copy(from, certs.join(to)).unwrap();
    }
    let function = RunningFunction::start(Some(eds::function::tls_config(&certs).unwrap())).await;

    let ca = Certificate::from_pem(std::fs::read(&pki.ca_pem).unwrap());
    let identity = |leaf: &testkit::certs::Leaf| Identity::from_pem(read(&leaf.cert), read(&leaf.key));
    let connect = |tls: ClientTlsConfig| {
        let endpoint = Endpoint::from_shared(format!("https://localhost:{}", function.addr.port()))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .tls_config(tls)
            .unwrap();
        async move {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            FunctionRunnerServiceClient::new(channel)
                .run_function(request("mtls", claim()))
                .await
                .map(|r| r.into_inner())
                .map_err(|e| e.to_string())
        }
    };
    let base = || {
        ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name("localhost")
    };

    let response = connect(base().identity(identity(&crossplane)))
        .await
        .expect("Crossplane's client is served");
    assert_eq!(response.meta.unwrap().tag, "mtls");

    assert!(
        connect(base()).await.is_err(),
        "a client without a certificate is refused"
    );

    let other = Pki::new(dir.path(), "other");
    let stranger = other.client("stranger", &[]);
    assert!(
        connect(base().identity(identity(&stranger))).await.is_err(),
        "a certificate from another CA is refused"
    );

    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{}", function.addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let plain = async {
        let channel = plaintext.connect().await.map_err(|e| e.to_string())?;
        FunctionRunnerServiceClient::new(channel)
            .run_function(request("plain", claim()))
            .await
            .map_err(|e| e.to_string())
    };
    assert!(plain.await.is_err(), "plaintext to a TLS function fails");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The binary refuses to serve without certificates unless told `--insecure`,
/// and names the flags.
#[test]
fn the_binary_needs_certificates_or_insecure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(["function", "--address", "127.0.0.1:0"])
        .env_remove("TLS_SERVER_CERTS_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-certs-dir") && stderr.contains("--insecure"),
        "{stderr}"
    );
}
