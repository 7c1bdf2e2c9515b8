//! `eds render` on hostile files (issue 18): every case gets a clear error
//! naming the field, or the limit, in well under a second, from the binary.
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CLAIM: &str = "apiVersion: platform.bizmatters.io/v1alpha1
kind: EventDrivenService
metadata:
  name: a
  namespace: team-a
spec:
  image: ghcr.io/acme/a:1
  nats:
    stream: A
    consumer: a
";

/// The wall-clock bound of one `eds render` here (see [`render`]).
const GENEROUS: Duration = Duration::from_secs(10);

/// Runs `eds render -` on `input`; returns stderr, asserting it failed
/// within [`GENEROUS`].
fn refused(input: &[u8]) -> String {
    let output = render(input);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "rendered: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!stderr.contains("a bug in eds"), "{stderr}");
    stderr
}

fn render(input: &[u8]) -> Output {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(["render", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eds starts");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // eds may stop reading early (over the size limit): a broken pipe is fine.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("eds runs");
    let _ = writer.join();
    let took = started.elapsed();
    println!("eds render took {took:?}");
    // A generous bound on a debug build that shares the machine with other
    // tests: it catches what these inputs used to cost (40 s nested YAML,
    // reading /dev/zero until memory ran out), not the time of a quiet run,
    // which the line above prints (under a second).
    assert!(took < GENEROUS, "took {took:?}");
    output
}

fn with(spec_line: &str) -> String {
    format!("{CLAIM}  {spec_line}\n")
}

#[test]
fn nan_and_inf_are_errors_naming_the_field_not_defaults() {
    for (line, field) in [
        ("port: .nan", "spec.port"),
        ("maxReplicas: .inf", "spec.maxReplicas"),
        ("minReplicas: -.inf", "spec.minReplicas"),
    ] {
        let stderr = refused(with(line).as_bytes());
        assert!(stderr.contains(field), "{line}: {stderr}");
        assert!(stderr.contains("not a finite number"), "{line}: {stderr}");
    }
}

#[test]
fn out_of_range_and_mistyped_metadata_name_the_field() {
    let huge = CLAIM.replace(
        "spec:\n",
        "spec:\n  scaling:\n    activationLagThreshold: 9223372036854775808\n",
    );
    let stderr = refused(huge.as_bytes());
    assert!(stderr.contains("spec.scaling.activationLagThreshold"), "{stderr}");
    let port = with("port: 4294967296");
    assert!(refused(port.as_bytes()).contains("spec.port"));
    let replicas = with("maxReplicas: 18446744073709551616");
    assert!(refused(replicas.as_bytes()).contains("spec.maxReplicas"));
    let namespace = CLAIM.replace("namespace: team-a", "namespace: 123");
    assert!(refused(namespace.as_bytes()).contains("metadata.namespace"));
    let labels = CLAIM.replace("namespace: team-a", "namespace: team-a\n  labels: 5");
    assert!(refused(labels.as_bytes()).contains("metadata.labels"));
    let bad_ns = CLAIM.replace("namespace: team-a", "namespace: Bad NS/..");
    let stderr = refused(bad_ns.as_bytes());
    assert!(
        stderr.contains("metadata.namespace") && stderr.contains("RFC 1123"),
        "{stderr}"
    );
}

#[test]
fn every_bad_claim_is_reported() {
    let first = CLAIM.replace("stream: A", "stream: \"A.B\"");
    let second = CLAIM
        .replace("name: a", "name: b")
        .replace("consumer: a", "consumer: \"a b\"");
    let stderr = refused(format!("{first}---\n{second}").as_bytes());
    assert!(
        stderr.contains("team-a/a") && stderr.contains("spec.nats.stream"),
        "{stderr}"
    );
    assert!(
        stderr.contains("team-a/b") && stderr.contains("spec.nats.consumer"),
        "{stderr}"
    );
}

#[test]
fn a_claim_given_twice_is_an_error() {
    let stderr = refused(format!("{CLAIM}---\n{CLAIM}").as_bytes());
    assert!(
        stderr.contains("team-a/a is given twice (documents 1 and 2)"),
        "{stderr}"
    );
    // The same name in two namespaces is two claims.
    let other = CLAIM.replace("namespace: team-a", "namespace: team-b");
    assert!(render(format!("{CLAIM}---\n{other}").as_bytes()).status.success());
}

#[test]
fn an_input_over_the_size_limit_is_refused_naming_the_limit() {
    let value = "x".repeat(10 * 1024 * 1024);
    let big = CLAIM.replace(
        "spec:\n",
        &format!("spec:\n  env:\n    - name: BIG\n      value: {value}\n"),
    );
    let stderr = refused(big.as_bytes());
    assert!(
        stderr.contains("3145728 bytes, the API server's request limit"),
        "{stderr}"
    );
    let claim_sized = CLAIM.replace(
        "spec:\n",
        &format!(
            "spec:\n  env:\n    - name: BIG\n      value: {}\n",
            "x".repeat(2 * 1024 * 1024)
        ),
    );
    let stderr = refused(claim_sized.as_bytes());
    assert!(stderr.contains("1572864 bytes an object"), "{stderr}");
}

#[test]
fn dev_zero_is_refused_at_the_size_limit() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(["render", "/dev/zero"])
        .output()
        .expect("eds runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("over the limit"), "{stderr}");
    println!("eds render /dev/zero took {:?}", started.elapsed());
    assert!(started.elapsed() < GENEROUS, "{:?}", started.elapsed());
}

#[test]
fn deep_nesting_is_refused_naming_the_limit_at_once() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let stderr = refused(format!("{CLAIM}  command: {deep}\n").as_bytes());
    assert!(stderr.contains("nested at most 64 deep"), "{stderr}");
}

#[test]
fn a_long_bad_value_is_quoted_by_a_prefix() {
    let long = CLAIM.replace("stream: A", &format!("stream: \"{}.\"", "é".repeat(100_000)));
    let stderr = refused(long.as_bytes());
    assert!(stderr.len() < 4096, "{} bytes of error", stderr.len());
    assert!(stderr.contains("spec.nats.stream"), "{stderr}");
}

#[test]
fn names_are_limited_in_bytes_as_nats_counts_them() {
    // 200 characters, 400 bytes: within maxLength, over NATS's 255 bytes.
    let wide = CLAIM.replace("stream: A", &format!("stream: {}", "é".repeat(200)));
    let stderr = refused(wide.as_bytes());
    assert!(
        stderr.contains("spec.nats.stream") && stderr.contains("255 bytes"),
        "{stderr}"
    );
    let fits = CLAIM.replace("consumer: a", &format!("consumer: {}", "é".repeat(127)));
    let output = render(fits.as_bytes());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
