#!/usr/bin/env bash
# The demo: a local nats-server with JetStream, a bursty publisher, a pool of
# slow workers, and the scaler showing live what KEDA would see. No cluster.
# Extra arguments go to `eds demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh nats
cargo build --quiet --bin eds
exec target/debug/eds demo --nats-server .tools/bin/nats-server "$@"
