//! NATS auth, TLS, accounts and domains; gRPC TLS and mutual TLS.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use eds::nats::{NatsConfig, TlsSettings};
use eds::scaler::{GrpcTls, Tuning};
use testkit::certs::Pki;
use testkit::js::work_with_lag;
use testkit::nats::NatsServer;
use testkit::scaler::{RunningScaler, lag_of, scaled_object};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn work() -> eds::proto::ScaledObjectRef {
    scaled_object(&[("stream", "WORK"), ("consumer", "c")])
}

async fn lag_through(args: NatsConfig) -> i64 {
    let scaler = RunningScaler::start(args).await;
    let mut client = scaler.client().await;
    lag_of(&mut client, &work()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth() {
    let nats = NatsServer::start_with("authorization { token: \"s3cr3t-t0ken\" }");
    let setup = async_nats::ConnectOptions::with_token("s3cr3t-t0ken".into())
        .connect(nats.url())
        .await
        .unwrap();
    work_with_lag(&jetstream::new(setup), 4).await;
    let mut args = NatsConfig::for_url(nats.url());
    args.default.token = Some("s3cr3t-t0ken".into());
    assert_eq!(lag_through(args).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_password_auth() {
    let nats = NatsServer::start_with("authorization { user: scaler, password: \"pa55\" }");
    let setup = async_nats::ConnectOptions::with_user_and_password("scaler".into(), "pa55".into())
        .connect(nats.url())
        .await
        .unwrap();
    work_with_lag(&jetstream::new(setup), 2).await;
    let mut args = NatsConfig::for_url(nats.url());
    args.default.user = Some("scaler".into());
    args.default.password = Some("pa55".into());
    assert_eq!(lag_through(args).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn nkey_auth() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        user.public_key()
    ));
    let seed = user.seed().unwrap();
    let setup = async_nats::ConnectOptions::with_nkey(seed.clone())
        .connect(nats.url())
        .await
        .unwrap();
    work_with_lag(&jetstream::new(setup), 3).await;
    let seed_file = nats.path("scaler.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let mut args = NatsConfig::for_url(nats.url());
    args.default.nkey_seed_file = Some(seed_file);
    assert_eq!(lag_through(args).await, 3);
}

/// A signed NATS JWT: `issuer` signs claims about `subject`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}-{now}"), "iat": now, "iss": issuer.public_key(),
        "name": name, "sub": subject, "nats": nats,
    });
    let claims = b64(claims.to_string().as_bytes());
    let signature = issuer.sign(format!("{header}.{claims}").as_bytes()).unwrap();
    format!("{header}.{claims}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread")]
async fn creds_file_auth_in_operator_mode() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "team",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    // JetStream needs a system account in operator mode.
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "scaler",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let nats = NatsServer::start_with(&format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{ {}: {account_jwt}, {sys}: {system_jwt} }}",
        account.public_key(),
        sys = system.public_key(),
    ));
    let creds = nats.path("scaler.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let setup = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap();
    work_with_lag(&jetstream::new(setup), 5).await;
    let mut args = NatsConfig::for_url(nats.url());
    args.default.creds_file = Some(creds);
    assert_eq!(lag_through(args).await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "nats");
    let server = pki.server("nats-server");
    let client = pki.client("eds-scaler", &[]);
    let nats = NatsServer::start_with(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 2 }}",
        server.cert, server.key, pki.ca_pem
    ));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let setup = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_pem.clone())
        .add_client_certificate(client.cert.clone(), client.key.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .unwrap();
    work_with_lag(&jetstream::new(setup), 6).await;
    let mut args = NatsConfig::for_url(&url);
    args.default.tls = Some(TlsSettings {
        ca_file: Some(pki.ca_pem.clone()),
        cert_file: Some(client.cert.clone()),
        key_file: Some(client.key.clone()),
    });
    assert_eq!(lag_through(args).await, 6);

    // Without a client certificate the server refuses the connection, and the
    // scaler says so instead of answering.
    let mut no_cert = NatsConfig::for_url(&url);
    no_cert.default.tls = Some(TlsSettings {
        ca_file: Some(pki.ca_pem.clone()),
        ..Default::default()
    });
    let scaler = eds::scaler::Scaler::connect(&no_cert, Tuning::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(scaler.connections.all_connected().is_err());
    let reading = scaler
        .cache
        .get(&eds::lag::ConsumerKey::new("default", None, "WORK", "c"))
        .await;
    assert!(
        matches!(reading.result, Err(eds::lag::LagError::Disconnected { .. })),
        "{reading:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn named_connections_pick_accounts() {
    let nats = NatsServer::start_with(
        "accounts {\n  ORDERS: { jetstream: enabled, users: [ { user: orders, password: o } ] }\n  BILLING: { jetstream: enabled, users: [ { user: billing, password: b } ] }\n}",
    );
    for (user, pass, n) in [("orders", "o", 7), ("billing", "b", 2)] {
        let c = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
            .connect(nats.url())
            .await
            .unwrap();
        work_with_lag(&jetstream::new(c), n).await;
    }
    let config = nats.path("connections.yaml");
    std::fs::write(
        &config,
        format!(
            "connections:\n  orders:\n    url: {}\n    user: orders\n    passwordFile: {:?}\n    namespaces: ['*']\n",
            nats.url(),
            nats.path("orders.pass")
        ),
    )
    .unwrap();
    std::fs::write(nats.path("orders.pass"), "o\n").unwrap();
    let mut args = NatsConfig::for_url(nats.url());
    args.default.user = Some("billing".into());
    args.default.password = Some("b".into());
    args.config_file = Some(config);
    let scaler = RunningScaler::start(args).await;
    let mut client = scaler.client().await;
    assert_eq!(lag_of(&mut client, &work()).await.unwrap(), 2, "default: BILLING");
    let orders = scaled_object(&[("stream", "WORK"), ("consumer", "c"), ("natsConnection", "orders")]);
    assert_eq!(lag_of(&mut client, &orders).await.unwrap(), 7, "orders: ORDERS");
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_domain() {
    let nats = NatsServer::start_with("domain: hub");
    let setup = async_nats::connect(nats.url()).await.unwrap();
    work_with_lag(&jetstream::with_domain(setup.clone(), "hub"), 8).await;
    let scaler = RunningScaler::start(NatsConfig::for_url(nats.url())).await;
    let mut client = scaler.client().await;
    let hub = scaled_object(&[("stream", "WORK"), ("consumer", "c"), ("jsDomain", "hub")]);
    assert_eq!(lag_of(&mut client, &hub).await.unwrap(), 8);
    let elsewhere = scaled_object(&[("stream", "WORK"), ("consumer", "c"), ("jsDomain", "edge")]);
    let err = lag_of(&mut client, &elsewhere).await.unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
        "{err:?}"
    );

    // Push activation through the domain's API too.
    let mut pushed = client.stream_is_active(hub.clone()).await.unwrap().into_inner();
    assert!(pushed.message().await.unwrap().unwrap().result, "8 messages waiting");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_tls_and_mutual_tls() {
    let nats = NatsServer::start();
    work_with_lag(&jetstream::new(async_nats::connect(nats.url()).await.unwrap()), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "grpc");
    let server = pki.server("eds-scaler");
    let keda = pki.client("keda-operator", &[]);
    let ca = Certificate::from_pem(std::fs::read(&pki.ca_pem).unwrap());
    let identity = Identity::from_pem(std::fs::read(&keda.cert).unwrap(), std::fs::read(&keda.key).unwrap());

    for mutual in [false, true] {
        let tls = GrpcTls {
            cert: Some(server.cert.clone()),
            key: Some(server.key.clone()),
            client_ca: mutual.then(|| pki.ca_pem.clone()),
        };
        let scaler = RunningScaler::start_with(
            NatsConfig::for_url(nats.url()),
            Tuning::default(),
            tls.server_config().unwrap(),
        )
        .await;
        let endpoint = |tls: ClientTlsConfig| {
            Endpoint::from_shared(format!("https://localhost:{}", scaler.addr.port()))
                .unwrap()
                .connect_timeout(Duration::from_secs(2))
                .tls_config(tls)
                .unwrap()
        };
        let with_cert = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(identity.clone())
            .domain_name("localhost");
        let channel = endpoint(with_cert).connect().await.unwrap();
        let mut client = eds::proto::external_scaler_client::ExternalScalerClient::new(channel);
        assert_eq!(lag_of(&mut client, &work()).await.unwrap(), 1, "mutual={mutual}");

        let without_cert = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name("localhost");
        let refused = async {
            let channel = endpoint(without_cert).connect().await?;
            let mut client = eds::proto::external_scaler_client::ExternalScalerClient::new(channel);
            client.get_metric_spec(work()).await.map_err(Into::into).map(|_| ())
        };
        let result: Result<(), Box<dyn std::error::Error>> = refused.await;
        assert_eq!(
            result.is_err(),
            mutual,
            "a client without a certificate: mutual={mutual}"
        );

        // Plain text to a TLS server fails.
        let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", scaler.addr.port()))
            .unwrap()
            .connect_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let plain = async {
            let channel = plain.connect().await?;
            let mut client = eds::proto::external_scaler_client::ExternalScalerClient::new(channel);
            tokio::time::timeout(Duration::from_secs(3), client.get_metric_spec(work()))
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { e.into() })?
                .map_err(|e| -> Box<dyn std::error::Error> { e.into() })
                .map(|_| ())
        };
        let result: Result<(), Box<dyn std::error::Error>> = plain.await;
        assert!(result.is_err(), "plain text after {:?}", started.elapsed());
    }
}
