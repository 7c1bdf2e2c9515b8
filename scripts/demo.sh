#!/usr/bin/env bash
# The demo: a local nats-server with JetStream, a bursty publisher, a pool of
# slow workers, and the scaler showing live what KEDA would see. No cluster.
# Extra arguments go to the demo (examples/demo.rs; try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh nats
if [ ! -e target/debug/examples/demo ]; then
  echo "[demo] building the demo: the first build compiles every Rust dependency (up to 15 minutes on 2 cores); later runs start in seconds" >&2
fi
cargo build --quiet --example demo
exec target/debug/examples/demo --nats-server .tools/bin/nats-server "$@"
