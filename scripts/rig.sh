#!/usr/bin/env bash
# The end-to-end rig, by hand: etcd, kube-apiserver and kube-controller-manager,
# kube-scheduler and KWOK (one fake node: pods are scheduled and turn Running
# and Ready by simulation, no container runs), KEDA's operator and metrics
# adapter, a nats-server, `eds scaler` and `eds controller`, all on loopback
# (the harness the e2e tests use, from the dev-only `testkit` crate). Claim
# files given as arguments are applied, each object to the namespace it names
# (created first; `default` for an object that names none), and their streams
# and durable consumers are created on the rig's NATS. `status` (or Enter)
# shows every claim with its pods (phase, ready, node) and says whether every
# peer still runs, with the log of one that exited. Ctrl-C stops everything.
#
#   scripts/rig.sh [CLAIM.yaml ...]
set -euo pipefail
claims=()
for claim in "$@"; do claims+=("$(realpath "$claim")"); done
cd "$(dirname "$0")/.."
scripts/tools.sh nats etcd kube scheduler kwok keda
cargo build --quiet --bin eds
cargo build --quiet -p testkit --example rig
exec cargo run --quiet -p testkit --example rig -- "${claims[@]}"
