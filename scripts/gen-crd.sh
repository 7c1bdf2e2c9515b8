#!/usr/bin/env bash
# Regenerates the committed EventDrivenService CRD and Crossplane XRD from the
# Rust types in src/api, and the Helm chart's copy of the CRD.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p apis/crossplane
cargo run --quiet -- crd > apis/eventdrivenservices.platform.bizmatters.io.yaml
cp apis/eventdrivenservices.platform.bizmatters.io.yaml deploy/helm/eds/files/
cargo run --quiet -- xrd > apis/crossplane/definition.yaml
