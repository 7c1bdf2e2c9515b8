//! The Helm chart, rendered by the pinned Helm (fast tier: no cluster): its
//! objects for the default values and with every option on, wired the way
//! `eds` reads its flags and files; `helm lint`; the values schema refusing
//! bad values with the field named; and its CRD and controller roles the same
//! as the tested ones.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use testkit::chart::{documents, id};
use testkit::process::tool;
use testkit::repo::{self, read};
use testkit::{chart, promql};

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
        let data = &chart::find(docs, "ConfigMap", name)["data"][relative];
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
                chart::id(deployment)
            );
        }
        let config_path = &env["EDS_NATS_CONFIG"];
        let config = resolve_file(docs, pod, container, config_path)
            .unwrap()
            .expect("the connections file comes from a ConfigMap");
        let connections = eds::nats::parse_config(&config)
            .unwrap_or_else(|e| panic!("{}: eds refuses {config_path}: {e}\n{config}", chart::id(deployment)));
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
            resolve_file(docs, pod, container, &file).unwrap_or_else(|e| panic!("{}: {e}", chart::id(deployment)));
        }
        let account = pod["serviceAccountName"].as_str().expect("serviceAccountName");
        chart::find(docs, "ServiceAccount", account);
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
            chart::id(service),
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
                chart::id(service),
                port["targetPort"]
            );
        }
    }
}

#[test]
fn chart_renders_with_default_values() {
    let docs = chart::render("eds-system", &[]);
    let objects: BTreeSet<String> = docs.iter().map(chart::id).collect();
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
        let deployment = chart::find(&docs, "Deployment", &format!("eds-{component}"));
        assert_eq!(deployment["spec"]["replicas"], 2);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "registry.example.com/platform/eds:0.1.0");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        let pdb = chart::find(&docs, "PodDisruptionBudget", &format!("eds-{component}"));
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (key, value) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[key], value, "the PDB selects the {component} pods");
        }
    }
    let scaler = chart::find(&docs, "Deployment", "eds-scaler");
    assert_eq!(
        scaler["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert_eq!(
        chart::find(&docs, "ServiceAccount", "eds-scaler")["automountServiceAccountToken"],
        false
    );
    let controller_env =
        env_of(&chart::find(&docs, "Deployment", "eds-controller")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(controller_env["EDS_SCALER_ADDRESS"], "eds-scaler.eds-system.svc:9090");

    let policy = chart::find(&docs, "NetworkPolicy", "eds-scaler");
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}],
            "ports": [{"port": "grpc", "protocol": "TCP"}]
        }]),
        "only KEDA's namespace reaches the scaler, and only its gRPC port"
    );
    let service = chart::find(&docs, "Service", "eds-scaler");
    assert_eq!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["port"].as_u64().unwrap()))
            .collect::<Vec<_>>(),
        [("grpc", 9090), ("http", 8080)]
    );
    let config = chart::find(&docs, "ConfigMap", "eds-nats")["data"]["connections.yaml"]
        .as_str()
        .unwrap();
    let connections = eds::nats::parse_config(config).unwrap();
    assert_eq!(connections.keys().collect::<Vec<_>>(), ["default"]);
    assert_eq!(connections["default"].url, "nats://nats.nats.svc.cluster.local:4222");
}

/// The tenancy rules `deployment` reads from its connections file.
fn access_of(docs: &[Value], deployment: &str) -> eds::tenancy::Access {
    let deployment = chart::find(docs, "Deployment", deployment);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let config = resolve_file(docs, pod, container, &env_of(container)["EDS_NATS_CONFIG"])
        .unwrap()
        .expect("the connections file comes from a ConfigMap");
    let connections = eds::nats::parse_config(&config).unwrap();
    eds::tenancy::Access::new(connections.iter().map(|(n, s)| (n.clone(), s.rules())).collect())
}

#[test]
fn chart_tenancy_rules_reach_the_scaler_and_the_controller() {
    // The default: no namespace may use the default connection until the
    // values say which.
    let docs = chart::render("eds-system", &[]);
    for component in ["eds-scaler", "eds-controller"] {
        let access = access_of(&docs, component);
        let denied = access.authorize("team-a", "default", None, "ORDERS").unwrap_err();
        assert!(
            denied.rule.contains("connections.default.namespaces is []"),
            "{component}: {denied}"
        );
    }
    // A user's choice, the same for both.
    let docs = chart::render("eds-system", &[full_values()]);
    for component in ["eds-scaler", "eds-controller"] {
        let access = access_of(&docs, component);
        assert!(access.authorize("anyone", "default", None, "S").is_ok(), "{component}");
        assert!(access.authorize("billing", "orders", None, "S").is_ok(), "{component}");
        assert!(
            access.authorize("team-a", "orders", Some("hub"), "ORDERS-eu").is_ok(),
            "{component}"
        );
        let denied = access.authorize("team-a", "orders", None, "PAYMENTS").unwrap_err();
        assert!(
            denied.rule.contains("connections.orders.reads[0]"),
            "{component}: {denied}"
        );
        let denied = access.authorize("ops", "orders", None, "S").unwrap_err();
        assert!(denied.rule.contains("[team-*, billing]"), "{component}: {denied}");
        let denied = access.authorize("team-a", "billing", None, "S").unwrap_err();
        assert!(
            denied.rule.contains("connections.billing.namespaces is []"),
            "{component}: {denied}"
        );
    }
}

#[test]
fn chart_renders_with_every_option_on() {
    let docs = chart::render("eds-system", &[chart::full_values()]);
    check_wiring(&docs);
    let scaler = chart::find(&docs, "Deployment", "eds-scaler");
    let container = &scaler["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/platform/eds@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let env = env_of(container);
    assert_eq!(env["EDS_GRPC_TLS_CLIENT_CA"], "/etc/eds/grpc-tls/ca.crt", "mTLS on");
    let controller_env =
        env_of(&chart::find(&docs, "Deployment", "eds-controller")["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(controller_env["EDS_SCALER_ADDRESS"], "eds-scaler.eds-system.svc:9443");

    let config = chart::find(&docs, "ConfigMap", "eds-nats")["data"]["connections.yaml"]
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

    let policy = chart::find(&docs, "NetworkPolicy", "eds-scaler");
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

    let monitor = chart::find(&docs, "ServiceMonitor", "eds");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let rule = chart::find(&docs, "PrometheusRule", "eds");
    let file: Value = serde_yaml::from_str(&read(&promql::rules_path())).unwrap();
    assert_eq!(rule["spec"], file, "the rules reach Prometheus untouched by templating");
}

#[test]
fn chart_passes_helm_lint() {
    for values in [vec![chart::image_values()], vec![chart::full_values()]] {
        let mut command = Command::new(tool("helm"));
        command
            .args(["lint", "--strict", "--kube-version", chart::KUBE_VERSION])
            .arg(chart::dir());
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
        let path = repo::path("deploy/values").join(name);
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
            "nats:\n  default:\n    namespaces: [team a]\n",
            "/nats/default/namespaces/0",
        ),
        (
            "nats:\n  default:\n    reads: [{streams: [S]}]\n",
            "/nats/default/reads/0",
        ),
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
        match chart::template("eds", "eds-system", &[format!("--values={}", file.display())]) {
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
    let generated = repo::path("apis").join(name);
    let copy = chart::dir().join("files").join(name);
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
    let docs = chart::render("eds-system", &[]);
    for (file, kind, name) in [
        ("controller-clusterrole.yaml", "ClusterRole", "eds-controller"),
        (
            "controller-leader-election-role.yaml",
            "Role",
            "eds-controller-leader-election",
        ),
    ] {
        let shipped = chart::documents(&read(&repo::path("deploy/rbac").join(file)));
        let shipped = shipped
            .iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} in deploy/rbac/{file}"));
        assert_eq!(
            permissions(&chart::find(&docs, kind, name)["rules"]),
            permissions(&shipped["rules"]),
            "the chart's {kind} must grant exactly what the controller's RBAC test proves enough (deploy/rbac/{file})"
        );
    }
}

/// The controller's finalizer (issue 12: `deletionPolicy: Delete`) needs
/// `patch` on claims; nothing else about claims grows: no update, no delete,
/// no create.
#[test]
fn chart_controller_patches_claims_for_its_finalizer_and_nothing_more() {
    let docs = chart::render("eds-system", &[]);
    let granted = permissions(&chart::find(&docs, "ClusterRole", "eds-controller")["rules"]);
    let on_claims: BTreeSet<String> = granted
        .iter()
        .filter(|(group, resource, _, _)| group == "platform.bizmatters.io" && resource == "eventdrivenservices")
        .map(|(_, _, _, verb)| verb.clone())
        .collect();
    assert_eq!(
        on_claims,
        ["list", "patch", "watch"].map(String::from).into(),
        "verbs on claims"
    );
}

/// Where Crossplane serves the API (`eds function`), the chart installs the
/// scaler alone: no controller, none of its RBAC, and no CRD (the XRD defines
/// the same API). By default the CRD is in, and kept when the release goes.
#[test]
fn scaler_only_mode_leaves_out_the_controller_and_the_crd() {
    let ids = |docs: &[Value]| docs.iter().map(chart::id).collect::<BTreeSet<String>>();
    let default = chart::render("eds-system", &[]);
    let crd = default
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .expect("the CRD by default");
    assert_eq!(crd["metadata"]["name"], "eventdrivenservices.platform.bizmatters.io");
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    let generated = chart::documents(&read(&repo::path(eds::api::CRD_FILE))).remove(0);
    assert_eq!(crd["spec"], generated["spec"], "the chart's CRD is the generated one");

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("scaler-only.yaml");
    std::fs::write(&values, "crd:\n  install: false\ncontroller:\n  enabled: false\n").unwrap();
    let scaler_only = chart::render("eds-system", &[values]);
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

// Names at their longest, the image the chart requires, and Argo CD's
// projects against what each Application creates.

fn root() -> &'static Path {
    repo::root()
}

fn image_values() -> PathBuf {
    chart::image_values()
}

fn full_values() -> PathBuf {
    chart::full_values()
}

/// `helm template` of the chart exactly as given: release name, namespace,
/// values files in order, and extra arguments.
fn helm_template_as(release: &str, namespace: &str, values: &[PathBuf], extra: &[&str]) -> Result<String, String> {
    let args: Vec<String> = values
        .iter()
        .map(|file| format!("--values={}", file.display()))
        .chain(extra.iter().map(|a| a.to_string()))
        .collect();
    chart::template(release, namespace, &args)
}

/// As [`helm_template_as`] for release `eds`, with an image first.
fn helm_template(namespace: &str, values: &[PathBuf]) -> Result<String, String> {
    let mut all = vec![image_values()];
    all.extend_from_slice(values);
    helm_template_as("eds", namespace, &all, &[])
}

#[test]
fn chart_refuses_to_render_without_an_image() {
    let message = helm_template_as("eds", "eds-system", &[], &[]).expect_err("no image, no manifests");
    for needle in ["image.repository is required", "Dockerfile", "docs/install.md"] {
        assert!(message.contains(needle), "the error should say {needle:?}:\n{message}");
    }
}

/// A DNS-1035 label (Service names): at most 63 lowercase letters, digits
/// and '-', starting with a letter, not ending with '-'.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A DNS-1123 subdomain (most other names): dot-separated parts of
/// lowercase letters, digits and '-', at most 253 characters in all.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A label value: at most 63 characters of [-_.a-zA-Z0-9], alphanumeric at
/// both ends (or empty).
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric())
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
}

/// The name problems of one rendered object, if any.
fn name_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let valid = match doc["kind"].as_str() {
        Some("Service") => is_dns_label(name),
        _ => is_dns_subdomain(name),
    };
    if !valid {
        problems.push(format!("{}: invalid name ({} characters)", id(doc), name.len()));
    }
    let label_sets = [
        &doc["metadata"]["labels"],
        &doc["spec"]["template"]["metadata"]["labels"],
        &doc["spec"]["selector"]["matchLabels"],
    ];
    for labels in label_sets {
        for (key, value) in labels.as_object().into_iter().flatten() {
            let value = value.as_str().unwrap_or_default();
            if !is_label_value(value) {
                problems.push(format!("{}: label {key}={value:?} is not a valid label value", id(doc)));
            }
        }
    }
    problems
}

#[test]
fn chart_names_fit_at_their_longest() {
    // Helm allows release names up to 53 characters; the schema allows
    // fullnameOverride up to 44 and nameOverride up to 63.
    let long_release = "r".repeat(53);
    let long_eds_release = format!("eds-{}", "r".repeat(49));
    let fullname_override = format!("fullnameOverride: {}\n", "f".repeat(44));
    let name_override = format!("nameOverride: {}\n", "n".repeat(63));
    let near_name_override = format!("nameOverride: {}\n", "n".repeat(42));
    // (release, values, what the fullname must end with)
    let cases: [(&str, &str, &str); 6] = [
        ("eds", "", "eds"),
        ("eds", &fullname_override, ""),
        (&long_release, "", "-eds"),
        (&long_eds_release, "", ""),
        ("x", &name_override, ""),
        (&long_release, &near_name_override, &near_name_override[14..56]),
    ];
    let namespace = "n".repeat(63);
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let mut objects = 0;
    for (i, (release, values, suffix)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("names-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let files = [image_values(), full_values(), file];
        let text = helm_template_as(release, &namespace, &files, &[])
            .unwrap_or_else(|e| panic!("release {release}, values {values:?}: {e}"));
        let docs = documents(&text);
        objects += docs.len();
        let config_map = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("the NATS ConfigMap");
        let fullname = config_map["metadata"]["name"]
            .as_str()
            .unwrap()
            .strip_suffix("-nats")
            .unwrap();
        assert!(
            fullname.len() <= 44,
            "release {release}: fullname {fullname} is longer than 44"
        );
        assert!(
            fullname.ends_with(suffix),
            "release {release}, values {values:?}: fullname {fullname} should end with {suffix:?}"
        );
        for doc in &docs {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            // The CRD's name is its API's, not the release's.
            if doc["kind"] != "CustomResourceDefinition" && !name.starts_with(fullname) {
                problems.push(format!("release {release}: {} does not start with {fullname}", id(doc)));
            }
            problems.extend(
                name_problems(doc)
                    .into_iter()
                    .map(|p| format!("release {release}: {p}")),
            );
        }
    }
    eprintln!("{objects} objects in {} renderings", cases.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The check can fail: the Service name the chart made before 44.
    let too_long = json!({"kind": "Service", "metadata": {"name": format!("{}-controller-metrics", "f".repeat(52))}});
    assert!(!name_problems(&too_long).is_empty());

    // One character more than the schema allows is refused, naming the value.
    let file = dir.path().join("too-long.yaml");
    std::fs::write(&file, format!("fullnameOverride: {}\n", "f".repeat(45))).unwrap();
    let message = helm_template("eds-system", &[file]).expect_err("a 45-character fullnameOverride");
    assert!(message.contains("/fullnameOverride"), "{message}");
}

/// One object an Argo CD Application would sync: API group, kind, name, and
/// namespace (None for cluster-scoped objects).
#[derive(Debug)]
struct Synced {
    group: String,
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl std::fmt::Display for Synced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        match &self.namespace {
            Some(ns) => write!(f, "{group}/{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{group}/{} {} (cluster-scoped)", self.kind, self.name),
        }
    }
}

/// The cluster-scoped kinds the charts make. An object of any other kind
/// without a namespace fails the test instead of being guessed at.
const CLUSTER_SCOPED: [&str; 7] = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "APIService",
    "ValidatingWebhookConfiguration",
    "ClusterTriggerAuthentication",
];

/// An object of a manifest, as Argo CD places it: no namespace means the
/// Application's destination namespace, unless the kind is cluster-scoped.
fn synced(doc: &Value, destination: Option<&str>) -> Synced {
    let api_version = doc["apiVersion"].as_str().expect("apiVersion");
    let kind = doc["kind"].as_str().expect("kind").to_string();
    let cluster = CLUSTER_SCOPED.contains(&kind.as_str());
    let namespace = doc["metadata"]["namespace"].as_str().or(destination);
    assert!(
        !(cluster && doc["metadata"]["namespace"].is_string()),
        "{}: a cluster-scoped kind with a namespace",
        id(doc)
    );
    assert!(
        cluster || namespace.is_some(),
        "{}: no namespace and not a known cluster-scoped kind",
        id(doc)
    );
    Synced {
        group: api_version.rsplit_once('/').map_or("", |(group, _)| group).to_string(),
        kind,
        name: doc["metadata"]["name"].as_str().unwrap_or("?").to_string(),
        namespace: if cluster { None } else { namespace.map(str::to_string) },
    }
}

/// Argo CD's project patterns: `*` matches any run of characters.
fn glob(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, rest)) => value
            .strip_prefix(head)
            .is_some_and(|tail| (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))),
    }
}

/// Why AppProject `project` would refuse `object`, in Argo CD's words, if it would.
fn project_refuses(project: &Value, server: &str, object: &Synced) -> Option<String> {
    let spec = &project["spec"];
    let name = project["metadata"]["name"].as_str().unwrap();
    let listed = |list: &Value| {
        list.as_array().into_iter().flatten().any(|entry| {
            glob(entry["group"].as_str().unwrap_or(""), &object.group)
                && glob(entry["kind"].as_str().unwrap_or(""), &object.kind)
        })
    };
    let refused = format!(
        "resource {}:{} is not permitted in project {name}",
        object.group, object.kind
    );
    let Some(namespace) = &object.namespace else {
        let allowed = listed(&spec["clusterResourceWhitelist"]) && !listed(&spec["clusterResourceBlacklist"]);
        return (!allowed).then_some(refused);
    };
    let destination = spec["destinations"].as_array().into_iter().flatten().any(|d| {
        glob(d["server"].as_str().unwrap_or("*"), server) && glob(d["namespace"].as_str().unwrap_or(""), namespace)
    });
    if !destination {
        return Some(format!("namespace {namespace} is not permitted in project {name}"));
    }
    let whitelist = &spec["namespaceResourceWhitelist"];
    let whitelisted = whitelist.as_array().is_none_or(|w| w.is_empty()) || listed(whitelist);
    (!whitelisted || listed(&spec["namespaceResourceBlacklist"])).then_some(refused)
}

/// The value at a dotted path of a YAML mapping, if set.
fn value_at<'a>(values: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.').try_fold(values, |v, key| v.get(key))
}

/// The objects an upstream chart source creates, from the hand-kept fixture,
/// after checking that the fixture is for this chart version and values.
fn upstream_objects(source: &Value, values_file: &Path, destination: &str) -> Vec<Synced> {
    let fixture: serde_yaml::Value =
        serde_yaml::from_str(&read(&root().join("tests/fixtures/argocd/upstream-charts.yaml"))).unwrap();
    let chart_name = source["chart"].as_str().unwrap();
    let chart = fixture
        .get(chart_name)
        .unwrap_or_else(|| panic!("tests/fixtures/argocd/upstream-charts.yaml has no chart {chart_name}"));
    assert_eq!(
        chart["version"].as_str(),
        source["targetRevision"].as_str(),
        "tests/fixtures/argocd/upstream-charts.yaml lists the objects of another {chart_name} version: read its templates again"
    );
    let values: serde_yaml::Value = serde_yaml::from_str(&read(values_file)).unwrap();
    for assumption in chart["assumes"].as_sequence().unwrap() {
        let path = assumption["path"].as_str().unwrap();
        let actual = value_at(&values, path).unwrap_or(&assumption["chartDefault"]);
        assert_eq!(
            actual,
            &assumption["is"],
            "{}: {path} changes which objects the {chart_name} chart makes: update tests/fixtures/argocd/upstream-charts.yaml",
            values_file.display()
        );
    }
    chart["objects"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|o| Synced {
            group: o["group"].as_str().unwrap().to_string(),
            kind: o["kind"].as_str().unwrap().to_string(),
            name: o["name"].as_str().unwrap().to_string(),
            namespace: match o["cluster"].as_bool() {
                Some(true) => None,
                _ => Some(o["namespace"].as_str().unwrap_or(destination).to_string()),
            },
        })
        .collect()
}

/// What Application `app` would sync, by source: the objects of each
/// rendering (our chart is rendered twice: with the Application's values,
/// and with every option on as well).
fn application_objects(app: &Value, dir: &Path) -> Vec<(String, Vec<Synced>)> {
    let spec = &app["spec"];
    let destination = spec["destination"]["namespace"].as_str();
    let sources: Vec<&Value> = match spec["sources"].as_array() {
        Some(sources) => sources.iter().collect(),
        None => vec![&spec["source"]],
    };
    let mut out = Vec::new();
    let mut namespace = Vec::new();
    if spec["syncPolicy"]["syncOptions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o == "CreateNamespace=true")
    {
        let doc = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": destination}});
        namespace.push(synced(&doc, None));
    }
    out.push(("CreateNamespace".to_string(), namespace));
    for source in sources {
        if source["chart"].is_string() {
            let values = source["helm"]["valueFiles"][0].as_str().expect("a values file");
            let values = root().join(values.strip_prefix("$values/").expect("from the values source"));
            let objects = upstream_objects(source, &values, destination.unwrap());
            out.push((format!("chart {}", source["chart"]), objects));
        } else if source["path"] == "deploy/helm/eds" {
            let namespace = destination.unwrap();
            let release = source["helm"]["releaseName"].as_str().unwrap();
            let values = dir.join(format!("{release}-values.yaml"));
            std::fs::write(&values, serde_yaml::to_string(&source["helm"]["valuesObject"]).unwrap()).unwrap();
            for (label, files) in [
                ("its values", vec![values.clone()]),
                ("every option on", vec![values.clone(), full_values()]),
            ] {
                let text = helm_template_as(release, namespace, &files, &["--include-crds"])
                    .unwrap_or_else(|e| panic!("helm template for Application {}: {e}", app["metadata"]["name"]));
                let objects = documents(&text).iter().map(|d| synced(d, Some(namespace))).collect();
                out.push((format!("deploy/helm/eds with {label}"), objects));
            }
        } else if source["path"] == "claims" {
            // The teams' repository: the examples stand in for its claims.
            let mut objects = Vec::new();
            for entry in std::fs::read_dir(root().join("examples")).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "yaml") {
                    continue;
                }
                objects.extend(documents(&read(&path)).iter().map(|d| synced(d, destination)));
            }
            out.push(("the claims (examples/)".to_string(), objects));
        } else if source["ref"].is_null() {
            panic!(
                "Application {}: a source the test does not know: {source}",
                app["metadata"]["name"]
            );
        }
    }
    out
}

#[test]
fn argocd_projects_permit_what_their_applications_create() {
    let apps_dir = root().join("deploy/argocd/apps");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&apps_dir).unwrap() {
        docs.extend(documents(&read(&entry.unwrap().path())));
    }
    let projects: BTreeMap<&str, &Value> = docs
        .iter()
        .filter(|d| d["kind"] == "AppProject")
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), d))
        .collect();
    let apps: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Application").collect();
    assert_eq!(apps.len(), 4, "nats, keda, eds and apis");

    let dir = tempfile::tempdir().unwrap();
    let mut refused = Vec::new();
    let mut checked = 0;
    for app in &apps {
        let name = app["metadata"]["name"].as_str().unwrap();
        let project_name = app["spec"]["project"].as_str().unwrap();
        let project = projects
            .get(project_name)
            .unwrap_or_else(|| panic!("Application {name}: no AppProject {project_name}"));
        let server = app["spec"]["destination"]["server"].as_str().unwrap();
        let repos: Vec<&Value> = match app["spec"]["sources"].as_array() {
            Some(sources) => sources.iter().collect(),
            None => vec![&app["spec"]["source"]],
        };
        for source in repos {
            let url = source["repoURL"].as_str().unwrap();
            let permitted = project["spec"]["sourceRepos"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| glob(r.as_str().unwrap(), url));
            if !permitted {
                refused.push(format!(
                    "{name}: repository {url} is not permitted in project {project_name}"
                ));
            }
        }
        for (label, objects) in application_objects(app, dir.path()) {
            for object in objects {
                checked += 1;
                if let Some(why) = project_refuses(project, server, &object) {
                    refused.push(format!("{name} ({label}): {object}: {why}"));
                }
            }
        }
    }
    eprintln!(
        "{checked} objects of {} Applications checked against their AppProjects",
        apps.len()
    );
    assert!(refused.is_empty(), "Argo CD would refuse:\n{}", refused.join("\n"));

    // The check can fail: the `apis` project refuses KEDA's kube-system binding.
    let binding = Synced {
        group: "rbac.authorization.k8s.io".into(),
        kind: "RoleBinding".into(),
        name: "keda-operator-auth-reader".into(),
        namespace: Some("kube-system".into()),
    };
    let why = project_refuses(projects["apis"], "https://kubernetes.default.svc", &binding).expect("refused");
    assert_eq!(
        why,
        "resource rbac.authorization.k8s.io:RoleBinding is not permitted in project apis"
    );
    assert!(glob("team-*", "team-orders") && !glob("team-*", "nats") && glob("*", ""));
}
