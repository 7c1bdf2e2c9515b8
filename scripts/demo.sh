#!/usr/bin/env bash
# The demo: a local nats-server with JetStream, a bursty publisher, a pool of
# slow workers, and the scaler showing live what KEDA would see. No cluster.
# Extra arguments go to the demo (examples/demo.rs; try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh nats
cargo build --quiet --example demo
exec target/debug/examples/demo --nats-server .tools/bin/nats-server "$@"
