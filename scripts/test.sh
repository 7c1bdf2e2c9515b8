#!/usr/bin/env bash
# The whole test suite, from a fresh machine: builds the pinned peers (cached
# under ~/.cache/eds-tools), then runs
#   1. the fast tier: unit tests and the NATS tests (`cargo test`);
#   2. the slow tier: control plane, KEDA and Crossplane (`--features control-plane`).
# EDS_TEST_TIER=fast or slow runs one tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${EDS_TEST_TIER:-all}

scripts/tools.sh nats
if [ "$tier" != slow ]; then
  echo "== fast tier: unit + NATS tests"
  cargo test --locked
fi
if [ "$tier" != fast ]; then
  scripts/tools.sh etcd kube keda helm promtool crossplane
  echo "== slow tier: control plane and KEDA"
  # Only the slow targets: the fast ones already ran above.
  cargo test --locked --features control-plane --test controller --test kit --test e2e --test crossplane
  # scripts/rig.sh's program: it shares the e2e harness, so it must keep building.
  cargo build --locked --features control-plane --example rig
fi
