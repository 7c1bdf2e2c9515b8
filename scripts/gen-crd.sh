#!/usr/bin/env bash
# Regenerates the committed EventDrivenService CRD from the Rust types in src/api,
# and the Helm chart's copy of it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p apis
cargo run --quiet -- crd > apis/eventdrivenservices.platform.bizmatters.io.yaml
cp apis/eventdrivenservices.platform.bizmatters.io.yaml deploy/helm/eds/crds/
