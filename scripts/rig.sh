#!/usr/bin/env bash
# The end-to-end rig, by hand: etcd, kube-apiserver and kube-controller-manager,
# KEDA's operator and metrics adapter, a nats-server, `eds scaler` and
# `eds controller`, all on loopback (the harness the e2e tests use). Claim files
# given as arguments are applied, each object to the namespace it names (created
# first; `default` for an object that names none), and their streams and
# durable consumers are created on the rig's NATS. Ctrl-C stops everything.
#
#   scripts/rig.sh [CLAIM.yaml ...]
set -euo pipefail
claims=()
for claim in "$@"; do claims+=("$(realpath "$claim")"); done
cd "$(dirname "$0")/.."
scripts/tools.sh nats etcd kube keda
cargo build --quiet --features control-plane --bin eds --example rig
exec cargo run --quiet --features control-plane --example rig -- "${claims[@]}"
