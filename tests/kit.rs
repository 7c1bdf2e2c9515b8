//! The platform kit (slow tier): the Helm chart rendered by the pinned Helm,
//! every manifest of `deploy/` and `examples/` accepted by a real API server,
//! the stream setup and the documented NATS permissions against a real
//! nats-server, and the dashboard and alerts against the metrics eds exports.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use eds::nats::NatsConfig;
use eds::scaler::Tuning;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde::Deserialize as _;
use serde_json::{Value, json};
use support::kube as cluster;
use support::nats::{NatsCluster, NatsServer, eventually};
use support::process::tool;
use support::promql;
use support::scaler::{RunningScaler, lag_of, scaled_object};

/// The Kubernetes version the chart is rendered for: the harness's.
const KUBE_VERSION: &str = "v1.35.4";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/helm/eds")
}

fn full_values() -> PathBuf {
    root().join("tests/fixtures/chart/full-values.yaml")
}

/// `helm template` of the chart: the manifests, or Helm's error output.
fn helm_template(namespace: &str, values: &[PathBuf]) -> Result<String, String> {
    let mut command = Command::new(tool("helm"));
    command
        .args(["template", "eds"])
        .arg(chart())
        .args(["--namespace", namespace, "--kube-version", KUBE_VERSION]);
    for file in values {
        command.arg("--values").arg(file);
    }
    let out = command.output().expect("running helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("UTF-8 manifests"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render(namespace: &str, values: &[PathBuf]) -> Vec<Value> {
    let text = helm_template(namespace, values).unwrap_or_else(|e| panic!("helm template failed:\n{e}"));
    documents(&text)
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn id(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", docs.iter().map(id).collect::<Vec<_>>()))
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The environment variables `eds <subcommand>` reads, from its `--help`.
fn flag_envs(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args([subcommand, "--help"])
        .output()
        .expect("running eds");
    assert!(out.status.success(), "eds {subcommand} --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_string())
        .collect()
}

/// Follows `path` from a container's mounts to the object that provides it:
/// a ConfigMap key (returned) or a Secret key (mounted with an explicit item).
fn resolve_file(docs: &[Value], pod: &Value, container: &Value, path: &str) -> Result<Option<String>, String> {
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .ok_or_else(|| format!("{path}: no volume is mounted there"))?;
    let relative = &path[mount["mountPath"].as_str().unwrap().len() + 1..];
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .ok_or_else(|| format!("{path}: volume {} is not defined", mount["name"]))?;
    let has_item = |items: &Value| items.as_array().into_iter().flatten().any(|i| i["path"] == relative);
    if let Some(name) = volume["configMap"]["name"].as_str() {
        let data = &find(docs, "ConfigMap", name)["data"][relative];
        return data
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| format!("{path}: ConfigMap {name} has no key {relative}"));
    }
    let provided = has_item(&volume["secret"]["items"])
        || volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| has_item(&s["secret"]["items"]));
    if provided {
        Ok(None)
    } else {
        Err(format!("{path}: volume {} provides no such file", mount["name"]))
    }
}

/// Checks that the chart wires each eds container the way eds reads it: only
/// env vars eds has flags for, a connections file eds parses, and every file
/// either of them names mounted from the object that holds it.
fn check_wiring(docs: &[Value]) {
    for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let subcommand = container["args"][0].as_str().expect("the eds subcommand");
        let env = env_of(container);
        let known = flag_envs(subcommand);
        for name in env.keys().filter(|n| n.starts_with("EDS_")) {
            assert!(
                known.contains(name),
                "{}: eds {subcommand} has no flag for {name}",
                id(deployment)
            );
        }
        let config_path = &env["EDS_NATS_CONFIG"];
        let config = resolve_file(docs, pod, container, config_path)
            .unwrap()
            .expect("the connections file comes from a ConfigMap");
        let connections = eds::nats::parse_config(&config)
            .unwrap_or_else(|e| panic!("{}: eds refuses {config_path}: {e}\n{config}", id(deployment)));
        assert!(connections.contains_key("default"), "{config}");
        let mut files: Vec<String> = Vec::new();
        for settings in connections.values() {
            let tls = settings.tls.clone().unwrap_or_default();
            for path in [
                &settings.creds_file,
                &settings.nkey_seed_file,
                &settings.token_file,
                &settings.password_file,
                &tls.ca_file,
                &tls.cert_file,
                &tls.key_file,
            ]
            .into_iter()
            .flatten()
            {
                files.push(path.display().to_string());
            }
        }
        files.extend(
            env.iter()
                .filter(|(name, _)| name.starts_with("EDS_GRPC_TLS_"))
                .map(|(_, path)| path.clone()),
        );
        for file in files {
            resolve_file(docs, pod, container, &file).unwrap_or_else(|e| panic!("{}: {e}", id(deployment)));
        }
        let account = pod["serviceAccountName"].as_str().expect("serviceAccountName");
        find(docs, "ServiceAccount", account);
    }
    for service in docs.iter().filter(|d| d["kind"] == "Service") {
        let selector = service["spec"]["selector"].as_object().unwrap();
        let backends: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .filter(|d| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .collect();
        assert_eq!(
            backends.len(),
            1,
            "{} selects {} Deployments",
            id(service),
            backends.len()
        );
        let ports = &backends[0]["spec"]["template"]["spec"]["containers"][0]["ports"];
        for port in service["spec"]["ports"].as_array().unwrap() {
            assert!(
                ports
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port["targetPort"]),
                "{}: no container port named {}",
                id(service),
                port["targetPort"]
            );
        }
    }
}

#[test]
fn chart_renders_with_default_values() {
    let docs = render("eds-system", &[]);
    let objects: BTreeSet<String> = docs.iter().map(id).collect();
    let expected: BTreeSet<String> = [
        "CustomResourceDefinition/eventdrivenservices.platform.bizmatters.io",
        "ServiceAccount/eds-controller",
        "ServiceAccount/eds-scaler",
        "ClusterRole/eds-controller",
        "ClusterRoleBinding/eds-controller",
        "Role/eds-controller-leader-election",
        "RoleBinding/eds-controller-leader-election",
        "ConfigMap/eds-nats",
        "Deployment/eds-controller",
        "Deployment/eds-scaler",
        "Service/eds-scaler",
        "Service/eds-controller-metrics",
        "PodDisruptionBudget/eds-controller",
        "PodDisruptionBudget/eds-scaler",
        "NetworkPolicy/eds-scaler",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        objects, expected,
        "no ServiceMonitor or PrometheusRule unless asked for"
    );
    check_wiring(&docs);

    for component in ["controller", "scaler"] {
        let deployment = find(&docs, "Deployment", &format!("eds-{component}"));
        assert_eq!(deployment["spec"]["replicas"], 2);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "ghcr.io/bizmatters/eds:0.1.0");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        let pdb = find(&docs, "PodDisruptionBudget", &format!("eds-{component}"));
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (key, value) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[key], value, "the PDB selects the {component} pods");
        }
    }
    let scaler = find(&docs, "Deployment", "eds-scaler");
    assert_eq!(
        scaler["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert_eq!(
        find(&docs, "ServiceAccount", "eds-scaler")["automountServiceAccountToken"],
        false
    );
    let controller_env =
        env_of(&find(&docs, "Deployment", "eds-controller")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(controller_env["EDS_SCALER_ADDRESS"], "eds-scaler.eds-system.svc:9090");

    let policy = find(&docs, "NetworkPolicy", "eds-scaler");
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}],
            "ports": [{"port": "grpc", "protocol": "TCP"}]
        }]),
        "only KEDA's namespace reaches the scaler, and only its gRPC port"
    );
    let service = find(&docs, "Service", "eds-scaler");
    assert_eq!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["port"].as_u64().unwrap()))
            .collect::<Vec<_>>(),
        [("grpc", 9090), ("http", 8080)]
    );
    let config = find(&docs, "ConfigMap", "eds-nats")["data"]["connections.yaml"]
        .as_str()
        .unwrap();
    let connections = eds::nats::parse_config(config).unwrap();
    assert_eq!(connections.keys().collect::<Vec<_>>(), ["default"]);
    assert_eq!(connections["default"].url, "nats://nats.nats.svc.cluster.local:4222");
}

#[test]
fn chart_renders_with_every_option_on() {
    let docs = render("eds-system", &[full_values()]);
    check_wiring(&docs);
    let scaler = find(&docs, "Deployment", "eds-scaler");
    let container = &scaler["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/platform/eds@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let env = env_of(container);
    assert_eq!(env["EDS_GRPC_TLS_CLIENT_CA"], "/etc/eds/grpc-tls/ca.crt", "mTLS on");
    let controller_env =
        env_of(&find(&docs, "Deployment", "eds-controller")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(controller_env["EDS_SCALER_ADDRESS"], "eds-scaler.eds-system.svc:9443");

    let config = find(&docs, "ConfigMap", "eds-nats")["data"]["connections.yaml"]
        .as_str()
        .unwrap();
    let connections = eds::nats::parse_config(config).unwrap();
    assert_eq!(
        connections.keys().collect::<Vec<_>>(),
        ["billing", "default", "legacy", "orders"]
    );
    assert!(connections["default"].creds_file.is_some());
    assert!(connections["default"].tls.as_ref().unwrap().key_file.is_some());
    assert!(connections["orders"].nkey_seed_file.is_some());
    assert!(connections["billing"].token_file.is_some());
    assert_eq!(connections["legacy"].user.as_deref(), Some("eds"));
    assert!(connections["legacy"].password_file.is_some());
    assert!(
        !config.contains("password:") && !config.contains("token:"),
        "no secret inline:\n{config}"
    );

    let policy = find(&docs, "NetworkPolicy", "eds-scaler");
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(
        rules[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "platform-keda"
    );
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(rules[1]["ports"][0]["port"], "http");

    let monitor = find(&docs, "ServiceMonitor", "eds");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let rule = find(&docs, "PrometheusRule", "eds");
    let file: Value = serde_yaml::from_str(&read(&promql::rules_path())).unwrap();
    assert_eq!(rule["spec"], file, "the rules reach Prometheus untouched by templating");
}

#[test]
fn chart_passes_helm_lint() {
    for values in [vec![], vec![full_values()]] {
        let mut command = Command::new(tool("helm"));
        command
            .args(["lint", "--strict", "--kube-version", KUBE_VERSION])
            .arg(chart());
        for file in &values {
            command.arg("--values").arg(file);
        }
        let out = command.output().expect("running helm");
        assert!(
            out.status.success(),
            "helm lint {values:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn third_party_values_files_are_mappings() {
    for name in ["nats.yaml", "keda.yaml"] {
        let path = root().join("deploy/values").join(name);
        let values: serde_yaml::Value =
            serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(values.as_mapping().is_some_and(|m| !m.is_empty()), "{}", path.display());
    }
}

#[test]
fn values_schema_refuses_bad_values() {
    // (values, what the error must name)
    let cases = [
        ("scaler:\n  replicas: 0\n", "/scaler/replicas"),
        ("controller:\n  replicas: \"2\"\n", "/controller/replicas"),
        ("logFormat: xml\n", "/logFormat"),
        ("replicas: 2\n", "'replicas' not allowed"),
        ("image:\n  pullPolicy: Sometimes\n", "/image/pullPolicy"),
        ("image:\n  digest: latest\n", "/image/digest"),
        ("nats:\n  default:\n    url: http://nats:4222\n", "/nats/default/url"),
        ("nats:\n  requestTimeout: 2h\n", "/nats/requestTimeout"),
        (
            "nats:\n  default:\n    url: nats://n:4222\n    credsSecret: {name: eds}\n",
            "/nats/default/credsSecret",
        ),
        (
            "nats:\n  default:\n    url: nats://n:4222\n    server: nats://m:4222\n",
            "'server' not allowed",
        ),
        (
            "nats:\n  connections:\n    Orders:\n      url: nats://n:4222\n",
            "'Orders'",
        ),
        (
            "nats:\n  connections:\n    default:\n      url: nats://n:4222\n",
            "'default'",
        ),
        ("nats:\n  connections:\n    orders: {}\n", "/nats/connections/orders"),
        ("scaler:\n  grpcTLS:\n    enabled: true\n", "/scaler/grpcTLS/secretName"),
        (
            "scaler:\n  grpcTLS:\n    enabled: true\n    secretName: t\n",
            "/scaler/grpcTLS/kedaClientSecretName",
        ),
        (
            "scaler:\n  grpcTLS:\n    clientAuth: true\n    secretName: t\n",
            "/scaler/grpcTLS/enabled",
        ),
        ("scaler:\n  cacheTTL: soon\n", "/scaler/cacheTTL"),
        ("scaler:\n  service:\n    grpcPort: 70000\n", "/scaler/service/grpcPort"),
        ("keda:\n  namespace: KEDA\n", "/keda/namespace"),
        (
            "podDisruptionBudget:\n  maxUnavailable: 0\n",
            "/podDisruptionBudget/maxUnavailable",
        ),
        ("serviceMonitor:\n  enabled: \"yes\"\n", "/serviceMonitor/enabled"),
        // Rules across keys, checked by the templates with the same care.
        (
            "nats:\n  default:\n    url: nats://n:4222\n    user: eds\n",
            "nats.default.passwordSecret: required with nats.default.user",
        ),
        (
            "nats:\n  default:\n    url: nats://n:4222\n    tokenSecret: {name: t, key: token}\n    credsSecret: {name: c, key: eds.creds}\n",
            "nats.default: set one auth method, not credsSecret and tokenSecret",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (values, needle)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        match helm_template("eds-system", &[file]) {
            Ok(_) => panic!("helm accepted bad values:\n{values}"),
            Err(message) => assert!(
                message.contains(needle),
                "the error for\n{values}should name {needle:?}, got:\n{message}"
            ),
        }
    }
}

#[test]
fn chart_crd_is_the_generated_one() {
    let name = "eventdrivenservices.platform.bizmatters.io.yaml";
    let generated = root().join("apis").join(name);
    let copy = chart().join("files").join(name);
    assert!(
        read(&generated) == read(&copy),
        "{} differs from {}: run scripts/gen-crd.sh",
        copy.display(),
        generated.display()
    );
}

/// Rules as (apiGroup, resource, resourceName, verb) tuples, so layout does
/// not matter.
fn permissions(rules: &Value) -> BTreeSet<(String, String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        let names = match strings(&rule["resourceNames"]) {
            names if names.is_empty() => vec!["*".to_string()],
            names => names,
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for name in &names {
                    for verb in strings(&rule["verbs"]) {
                        out.insert((group.clone(), resource.clone(), name.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn chart_controller_roles_are_the_tested_ones() {
    let docs = render("eds-system", &[]);
    for (file, kind, name) in [
        ("controller-clusterrole.yaml", "ClusterRole", "eds-controller"),
        (
            "controller-leader-election-role.yaml",
            "Role",
            "eds-controller-leader-election",
        ),
    ] {
        let shipped = documents(&read(&root().join("deploy/rbac").join(file)));
        let shipped = shipped
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} in deploy/rbac/{file}"));
        assert_eq!(
            permissions(&find(&docs, kind, name)["rules"]),
            permissions(&shipped["rules"]),
            "the chart's {kind} must grant exactly what the controller's RBAC test proves enough (deploy/rbac/{file})"
        );
    }
}

#[test]
fn promql_names_skip_strings_and_fold_histogram_series() {
    let names = promql::metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(eds_x_seconds_bucket{code!="eds_fake"}[5m]))) / eds_y_total"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["eds_x_seconds", "eds_y_total"]);
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = promql::exported_metric_names();
    let used = promql::kit_metric_names();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the kit queries metrics eds does not export: {unknown:?}"
    );
    // Every alert and every panel target queries at least one eds metric.
    for expr in promql::rule_expressions() {
        assert!(!promql::metric_names(&expr).is_empty(), "{expr}");
    }
    let queries = promql::dashboard_queries();
    assert!(queries.len() > 20, "{} queries", queries.len());
    for query in &queries {
        assert!(!promql::metric_names(query).is_empty(), "{query}");
    }
}

fn promtool(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("promtool"))
        .args(args)
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(text) } else { Err(text) }
}

/// The items of every `inner` list of every item of the `outer` list.
fn nested<'a>(value: &'a Value, outer: &str, inner: &'a str) -> impl Iterator<Item = &'a Value> {
    value[outer]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(move |item| item[inner].as_array().into_iter().flatten())
}

#[test]
fn alerts_fire_when_they_should_and_only_then() {
    let rules = promql::rules_path();
    promtool(&["check", "rules", rules.to_str().unwrap()]).unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    let tests = root().join("tests/fixtures/prometheus-rules-test.yaml");
    promtool(&["test", "rules", tests.to_str().unwrap()]).unwrap_or_else(|e| panic!("promtool test rules:\n{e}"));

    // Every alert has a case where it fires.
    let rule_file: Value = serde_yaml::from_str(&read(&rules)).unwrap();
    let alerts: BTreeSet<&str> = nested(&rule_file, "groups", "rules")
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    let test_file: Value = serde_yaml::from_str(&read(&tests)).unwrap();
    let firing: BTreeSet<&str> = nested(&test_file, "tests", "alert_rule_test")
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(firing, alerts, "each alert needs a test case in which it fires");
}

#[test]
fn dashboard_queries_are_valid_promql() {
    for query in promql::dashboard_queries() {
        // Grafana's label_values(selector, label) wraps a series selector.
        let promql = match query.strip_prefix("label_values(") {
            Some(rest) => rest
                .rsplit_once(',')
                .map(|(selector, _)| selector)
                .unwrap_or(rest)
                .to_string(),
            None => query.clone(),
        };
        let promql = promql
            .replace("$__rate_interval", "5m")
            .replace("$stream", ".*")
            .replace("$consumer", ".*")
            .replace("$namespace", ".*");
        assert!(
            !promql.contains('$'),
            "a dashboard variable the test does not know: {query}"
        );
        promtool(&["--experimental", "promql", "format", &promql])
            .unwrap_or_else(|e| panic!("not PromQL: {query}\n{e}"));
    }
}

/// Every `eds_*` string literal in `src/`: the names eds registers.
fn names_in_source(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names_in_source(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            for literal in read(&path).split('"').skip(1).step_by(2) {
                if literal.starts_with("eds_") && literal.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    out.insert(literal.to_string());
                }
            }
        }
    }
}

#[test]
fn exported_metric_list_matches_the_source() {
    let mut in_source = BTreeSet::new();
    names_in_source(&root().join("src"), &mut in_source);
    let listed = promql::exported_metric_names();
    let missing: Vec<&String> = listed.difference(&in_source).collect();
    assert!(
        missing.is_empty(),
        "listed in tests/fixtures/exported-metrics.txt but not in src/: {missing:?}"
    );
}

/// YAML files of `deploy/` and `examples/` that are Kubernetes manifests: all
/// of them but the Helm chart's sources (its CRD copy included) and the
/// values files of `deploy/values/`.
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    files.retain(|f| !f.starts_with(chart()) && !f.starts_with(root().join("deploy/values")));
    walk(&root().join("examples"), &mut files);
    files.sort();
    files
}

/// Server-side apply with `dryRun=All`: every admission step runs, nothing is
/// stored. Objects without a namespace land in `namespace`.
async fn dry_run(client: &Client, doc: &Value, namespace: &str) -> Result<(), String> {
    let object: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let types = object.types.clone().ok_or("no apiVersion or kind")?;
    let gvk = GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("unknown kind: {e}"))?;
    let name = object.metadata.name.clone().ok_or("no metadata.name")?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = object.metadata.namespace.as_deref().unwrap_or(namespace);
            ensure_namespace(client, ns, &[]).await;
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    // Strict: a field the schema does not know is an error, not silently pruned.
    let mut params = PatchParams::apply("eds-kit").force().dry_run();
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(&name, &params, &Patch::Apply(&object))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn ensure_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().copied().collect::<BTreeMap<_, _>>()}
    }))
    .unwrap();
    match Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// The pod a workload would create, for the Pod Security admission check.
fn pod_of(doc: &Value) -> Option<Value> {
    let template = match doc["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &doc["spec"]["template"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    let name = format!(
        "{}-{}",
        doc["kind"].as_str()?.to_lowercase(),
        doc["metadata"]["name"].as_str()?
    );
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_manifest_passes_server_side_dry_run() {
    let cp = cluster::shared();
    let client = cp.client().await;
    for crds in ["monitoring.coreos.com.yaml", "argoproj.io.yaml"] {
        cluster::apply_file(&client, &root().join("tests/fixtures/crds").join(crds), None).await;
    }
    // Workloads must meet the Restricted profile: the namespace enforces it
    // and every pod template is submitted as a Pod.
    let ns = format!("kit-{}", std::process::id());
    ensure_namespace(&client, &ns, &[("pod-security.kubernetes.io/enforce", "restricted")]).await;

    let mut manifests: Vec<(String, Value)> = Vec::new();
    for (label, values) in [
        ("chart (defaults)", vec![]),
        ("chart (full values)", vec![full_values()]),
    ] {
        manifests.extend(render(&ns, &values).into_iter().map(|d| (label.to_string(), d)));
    }
    let files = manifest_files();
    for file in &files {
        let label = file.strip_prefix(root()).unwrap().display().to_string();
        manifests.extend(documents(&read(file)).into_iter().map(|d| (label.clone(), d)));
    }
    // What each example claim renders to, as the controller applies it.
    let examples = root().join("examples");
    for file in files.iter().filter(|f| f.starts_with(&examples)) {
        let label = format!("eds render {}", file.strip_prefix(root()).unwrap().display());
        let rendered = eds::render::render_text(&read(file), &eds::render::Platform::default())
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        manifests.extend(documents(&rendered).into_iter().map(|d| (label.clone(), d)));
    }
    let rendered = manifests
        .iter()
        .filter(|(label, _)| label.starts_with("eds render"))
        .count();
    assert!(
        rendered >= 20,
        "five example files render four children per claim: {rendered}"
    );
    let pods: Vec<(String, Value)> = manifests
        .iter()
        .filter_map(|(label, doc)| pod_of(doc).map(|pod| (format!("{label} {}", id(doc)), pod)))
        .collect();
    assert!(pods.len() >= 5, "two charts' two Deployments and the stream setup Job");

    // Pods need their ServiceAccounts to exist; create those for real.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    for (_, pod) in &pods {
        let name = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
        let account = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("creating ServiceAccount {name}: {e}"),
        }
    }

    let mut failures = Vec::new();
    for (label, doc) in manifests.iter().chain(&pods) {
        if let Err(e) = dry_run(&client, doc, &ns).await {
            failures.push(format!("{label}: {}: {e}", id(doc)));
        }
    }
    eprintln!(
        "dry-run: {} objects (two chart renderings, {} files, and the {rendered} children the example claims render to) and {} pods",
        manifests.len(),
        files.len(),
        pods.len()
    );
    assert!(
        failures.is_empty(),
        "refused by the API server:\n{}",
        failures.join("\n")
    );

    // The check can fail: a pod that may run as root is refused there.
    let mut bad = pods[0].1.clone();
    bad["metadata"]["name"] = json!("may-run-as-root");
    bad["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
    let refused = dry_run(&client, &bad, &ns).await.expect_err("Pod Security refuses it");
    assert!(refused.contains("PodSecurity \"restricted"), "{refused}");
}

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
    let docs = documents(&read(&root().join("deploy/nats/stream-setup-job.yaml")));
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
    eventually("creating the stream", || {
        js_api(&client, format!("$JS.API.STREAM.CREATE.{stream_name}"), body.clone())
    })
    .await;
    // What `nats stream edit` sends on a re-run: the same config is accepted.
    js_api(&client, format!("$JS.API.STREAM.UPDATE.{stream_name}"), body)
        .await
        .unwrap();

    let request = serde_json::to_vec(&json!({"stream_name": stream_name, "config": consumer})).unwrap();
    let subject = format!("$JS.API.CONSUMER.CREATE.{stream_name}.{durable}");
    eventually("creating the consumer", || {
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
    let permissions = read(&root().join("deploy/nats/eds-permissions.conf"));
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

/// Where Crossplane serves the API (`eds function`), the chart installs the
/// scaler alone: no controller, none of its RBAC, and no CRD (the XRD defines
/// the same API). By default the CRD is in, and kept when the release goes.
#[test]
fn scaler_only_mode_leaves_out_the_controller_and_the_crd() {
    let ids = |docs: &[Value]| docs.iter().map(id).collect::<BTreeSet<String>>();
    let default = render("eds-system", &[]);
    let crd = default
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .expect("the CRD by default");
    assert_eq!(crd["metadata"]["name"], "eventdrivenservices.platform.bizmatters.io");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let generated = documents(&read(&root().join(eds::api::CRD_FILE))).remove(0);
    assert_eq!(crd["spec"], generated["spec"], "the chart's CRD is the generated one");

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("scaler-only.yaml");
    std::fs::write(&values, "crd:\n  install: false\ncontroller:\n  enabled: false\n").unwrap();
    let scaler_only = render("eds-system", &[values]);
    let left_out: Vec<String> = ids(&default).difference(&ids(&scaler_only)).cloned().collect();
    assert!(
        scaler_only.iter().all(|d| {
            d["kind"] != "CustomResourceDefinition"
                && d["metadata"]["labels"]["app.kubernetes.io/component"] != "controller"
        }),
        "scaler-only still has {:?}",
        ids(&scaler_only)
    );
    assert!(
        left_out.iter().any(|i| i.starts_with("ClusterRole/")) && left_out.iter().any(|i| i.starts_with("Deployment/")),
        "{left_out:?}"
    );
    let scaler = scaler_only
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the scaler Deployment");
    assert_eq!(scaler["metadata"]["labels"]["app.kubernetes.io/component"], "scaler");
    assert!(ids(&scaler_only).iter().any(|i| i.starts_with("Service/")));
}
