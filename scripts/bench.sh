#!/usr/bin/env bash
# Runs every benchmark and writes the results to target/bench (or EDS_BENCH_OUT):
#   machine.txt  the machine: cores, CPU model, memory, load before the run
#   core.txt     criterion micro-benchmarks (benches/core.rs)
#   load.md      the load benchmark's tables (benches/load); load.json has every figure
#   names.md     RSS while 1,000,000 distinct names arrive over gRPC, against the
#                stated ceiling (benches/names.rs); names.json has every sample
#   e2e-activation.md  publish -> replicas 1 through real KEDA on a control
#                plane, eds's push beside KEDA's built-in trigger (benches/e2e_activation.rs)
#   drain.md, drain.png  drainWithin against fixed lagThresholds on a simulated
#                worker pool (benches/drain: its own crate, so the plotting
#                crate stays out of the workspace and of scripts/test.sh)
#   controller-scale.md, .json, .png  the controller at 100, 1,000 and 10,000
#                claims on a real control plane, against a plain client
#                creating the same objects (benches/controller_scale; the plot
#                by benches/convergence-plot, its own crate like benches/drain)
#
#   scripts/bench.sh
#
# It builds the pinned nats-server, the KEDA baseline harness and the control
# plane's peers (etcd, Kubernetes, KEDA) if they are not cached, then builds
# everything in release mode (cargo's bench profile).
# Optional: EDS_BENCH_NAMES (default 1000000) sets the distinct names,
# EDS_BENCH_SIZES (default 1,100,1000,10000) and EDS_BENCH_WINDOW_SECS
# (default 30) shorten a run, EDS_BENCH_E2E_TRIALS (default 3) sets the
# end-to-end trials per path, EDS_BENCH_CTL_SIZES (default 100,1000,10000)
# the controller benchmark's claim counts; docs/benchmarks.md explains the figures.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${EDS_BENCH_OUT:-$root/target/bench}
export EDS_BENCH_OUT=$out
mkdir -p "$out"

scripts/tools.sh nats keda-bench etcd kube keda

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  lscpu | grep -E '^(Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\))'
  free -h | sed -n 1,2p
  echo "kernel: $(uname -r)"
  echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rustc: $(rustc --version)"
  echo "go: $(go version)"
} | tee "$out/machine.txt"

cargo bench --features control-plane --bench core --bench load --bench names --bench e2e_activation --bench controller_scale --no-run
cargo bench --bench core 2>&1 | tee "$out/core.txt"
cargo bench --bench load
cargo bench --bench names
cargo bench --features control-plane --bench e2e_activation
(cd benches/drain && CARGO_TARGET_DIR="$root/target/drain-sim" cargo run --locked --release -- "$out")
cargo bench --features control-plane --bench controller_scale
(cd benches/convergence-plot && CARGO_TARGET_DIR="$root/target/convergence-plot" cargo run --locked --release -- "$out")
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
echo "results in $out"
