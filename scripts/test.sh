#!/usr/bin/env bash
# The whole test suite, from a fresh machine: builds the pinned peers (cached
# under ~/.cache/eds-tools), then runs
#   1. the fast tier, nothing but processes on loopback: unit tests, the
#      nats-server tests, the Helm chart (helm) and the alerts and dashboard
#      (promtool), and the test kit's own tests (`cargo test --workspace`);
#   2. the slow tier: control plane, scheduler and KWOK, KEDA and Crossplane
#      (`--features control-plane`).
# EDS_TEST_TIER=fast or slow runs one tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${EDS_TEST_TIER:-all}

if [ "$tier" != slow ]; then
  scripts/tools.sh nats helm promtool
  echo "== fast tier: unit, NATS, chart and monitoring tests"
  cargo test --locked --workspace
fi
if [ "$tier" != fast ]; then
  scripts/tools.sh nats etcd kube scheduler kwok keda helm crossplane
  echo "== slow tier: control plane, scheduler and KWOK, KEDA and Crossplane"
  # Only the slow targets: the fast ones already ran above.
  cargo test --locked --features control-plane --test controller --test manifests --test e2e --test crossplane
  # scripts/rig.sh's program: it shares the e2e harness, so it must keep building.
  cargo build --locked -p testkit --example rig
fi
