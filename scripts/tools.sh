#!/usr/bin/env bash
# Builds the pinned test peers from their Go modules and links them into
# .tools/bin. Each build lands in a user-level cache keyed by name and version
# (EDS_TOOLS_CACHE, default ~/.cache/eds-tools), so a fresh clone reuses it.
# With an empty cache everything is built from nothing.
#
#   scripts/tools.sh [nats|etcd|kube|keda|helm|promtool|all|keda-bench ...]
set -euo pipefail

NATS_SERVER_VERSION=v2.15.2
ETCD_VERSION=v3.6.16
KUBERNETES_VERSION=v1.35.4
KEDA_VERSION=v2.20.2
HELM_VERSION=v3.19.0
# Prometheus 3.x is published as Go module versions v0.3xx.
PROMETHEUS_VERSION=v0.316.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${EDS_TOOLS_CACHE:-$HOME/.cache/eds-tools}
bin="$root/.tools/bin"
mkdir -p "$cache" "$bin"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { printf '[tools] %s\n' "$*" >&2; }

# link NAME DIR: expose every file of DIR/bin in .tools/bin.
link() {
  local f
  for f in "$2"/bin/*; do ln -sfn "$f" "$bin/$(basename "$f")"; done
  log "$1 ready in $2"
}

# Prints `go mod edit -replace` arguments that repeat MODULE@VERSION's own
# replace lines. Local-path replaces (k8s.io/kubernetes points its staging
# repositories at ./staging/src/...) become the published staging version.
replace_args() {
  local gomod
  gomod=$(go mod download -json "$1@$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  go mod edit -json "$gomod" | python3 -c '
import json, sys
staging = sys.argv[1]
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    if new.get("Version"):
        print("-replace=%s=%s@%s" % (old["Path"], new["Path"], new["Version"]))
    elif new["Path"].startswith("./staging/"):
        print("-replace=%s=%s@%s" % (old["Path"], old["Path"], staging))
' "${3:-}"
}

# build_module NAME VERSION MODULE STAGING LDFLAGS PACKAGE...: builds the
# packages of MODULE@VERSION inside a throwaway wrapper module that repeats the
# module's replace lines, into the cache.
build_module() {
  local name=$1 version=$2 module=$3 staging=$4 ldflags=$5
  shift 5
  local dest="$cache/$name-$version"
  if [ -f "$dest/.complete" ]; then link "$name" "$dest"; return; fi
  log "building $name $version from $module (this takes a while once)"
  local work
  work=$(mktemp -d)
  rm -rf "$dest"
  mkdir -p "$dest/bin"
  (
    cd "$work"
    go mod init "eds.local/peer-$name" >/dev/null 2>&1
    mapfile -t reps < <(replace_args "$module" "$version" "$staging")
    [ ${#reps[@]} -eq 0 ] || go mod edit "${reps[@]}"
    go get "$module@$version" "${@/%/@$version}" >/dev/null
    go build -trimpath -ldflags "-s -w $ldflags" -o "$dest/bin/" "$@"
  )
  rm -rf "$work"
  touch "$dest/.complete"
  link "$name" "$dest"
}

nats() {
  build_module nats-server "$NATS_SERVER_VERSION" github.com/nats-io/nats-server/v2 "" "" \
    github.com/nats-io/nats-server/v2
}

etcd() {
  local dest="$cache/etcd-$ETCD_VERSION"
  if [ -f "$dest/.complete" ]; then link etcd "$dest"; return; fi
  log "building etcd $ETCD_VERSION"
  local work
  work=$(mktemp -d)
  mkdir -p "$dest/bin"
  (
    cd "$work"
    go mod init eds.local/peer-etcd >/dev/null 2>&1
    # etcd's binary lives in a module with local replaces; its server module
    # exports the same entry point, so a two-line main is all we need.
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go mod tidy >/dev/null
    go build -trimpath -ldflags "-s -w" -o "$dest/bin/etcd" .
  )
  rm -rf "$work"
  touch "$dest/.complete"
  link etcd "$dest"
}

kube() {
  local v=${KUBERNETES_VERSION#v} staging
  staging="v0.${v#*.}"
  local pkg=k8s.io/component-base/version
  build_module kubernetes "$KUBERNETES_VERSION" k8s.io/kubernetes "$staging" \
    "-X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
}

keda() {
  build_module keda "$KEDA_VERSION" github.com/kedacore/keda/v2 "" \
    "-X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
    github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter
  # KEDA's own CRDs, from the same pinned module, for the API server.
  local src
  src=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$root/.tools/keda-crds"
  cp "$src"/config/crd/bases/keda.sh_*.yaml "$root/.tools/keda-crds/"
  chmod u+w "$root"/.tools/keda-crds/*.yaml
}

helm() {
  build_module helm "$HELM_VERSION" helm.sh/helm/v3 "" "" helm.sh/helm/v3/cmd/helm
}

promtool() {
  build_module prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus "" "" \
    github.com/prometheus/prometheus/cmd/promtool
}

# The load benchmark's baseline (benches/keda-baseline): our own main package
# built against the pinned KEDA module, cached by the hash of its source.
keda-bench() {
  local src="$root/benches/keda-baseline/main.go" hash
  hash=$(sha256sum "$src" | cut -c1-16)
  local dest="$cache/keda-bench-$KEDA_VERSION-$hash"
  if [ -f "$dest/.complete" ]; then link keda-bench "$dest"; return; fi
  log "building the KEDA $KEDA_VERSION baseline harness"
  local work
  work=$(mktemp -d)
  rm -rf "$dest"
  mkdir -p "$dest/bin"
  (
    cd "$work"
    go mod init eds.local/keda-bench >/dev/null 2>&1
    mapfile -t reps < <(replace_args github.com/kedacore/keda/v2 "$KEDA_VERSION")
    [ ${#reps[@]} -eq 0 ] || go mod edit "${reps[@]}"
    cp "$src" main.go
    go get "github.com/kedacore/keda/v2@$KEDA_VERSION" >/dev/null
    go build -trimpath -ldflags "-s -w" -o "$dest/bin/keda-bench" .
  )
  rm -rf "$work"
  touch "$dest/.complete"
  link keda-bench "$dest"
}

all() { nats; etcd; kube; keda; helm; promtool; }

[ $# -gt 0 ] || set -- all
for t in "$@"; do "$t"; done
