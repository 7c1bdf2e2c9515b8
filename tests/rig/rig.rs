//! `scripts/rig.sh`: the end-to-end rig for a person. Starts the control
//! plane, KEDA, nats-server, `eds scaler` and `eds controller` on loopback
//! (the same harness the e2e tests use), applies the claim files given as
//! arguments, prints where everything is, and stops it all on Ctrl-C.
#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;

use support::{kube as control_plane, rig::Rig};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let claims: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
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
    for claim in &claims {
        for object in control_plane::apply_file(&client, claim, Some("default")).await {
            println!(
                "applied {} {}",
                object.types.map(|t| t.kind).unwrap_or_default(),
                object.metadata.name.unwrap_or_default()
            );
        }
    }

    println!(
        "\nrig ready in {:.1?} (KEDA, NATS, scaler and controller: {:.1?})\n",
        started.elapsed(),
        rig.started_in
    );
    println!("  export KUBECONFIG={}", rig.kubeconfig.display());
    println!("  API server           {}", rig.api_url);
    println!("  NATS                 {}", rig.nats_url);
    println!("  NATS monitoring      http://{}", rig.nats_monitoring);
    println!(
        "  eds scaler gRPC      {}   (every ScaledObject's scalerAddress)",
        rig.scaler_address
    );
    println!("  eds scaler HTTP      http://{}/metrics", rig.scaler_http);
    println!("  eds controller HTTP  http://{}/metrics", rig.controller_http);
    println!(
        "  KEDA metrics adapter https://127.0.0.1:{} (registered as the external metrics API)",
        rig.adapter_port
    );
    println!("  logs                 {}", rig.dir().display());
    println!(
        "\nApply a claim (its stream and durable consumer must exist on the NATS above; no pods run, replica counts do change):\n\
         \n  kubectl apply -f examples/scale-to-zero.yaml\
         \n  kubectl get eds,scaledobject,hpa,deployment\
         \n  kubectl get --raw '/apis/external.metrics.k8s.io/v1beta1/namespaces/default/<metric>?labelSelector=scaledobject.keda.sh/name=<claim>'\
         \n\nCtrl-C stops everything."
    );
    let _ = tokio::signal::ctrl_c().await;
    println!("stopping");
    drop(rig);
}
