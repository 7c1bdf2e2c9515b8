#!/usr/bin/env bash
# Builds the pinned test peers from their Go modules and links them into
# .tools/bin. Each build lands in a user-level cache keyed by name and version
# (EDS_TOOLS_CACHE, default ~/.cache/eds-tools), so a fresh clone reuses it.
# With an empty cache everything is built from nothing.
#
#   scripts/tools.sh [nats|etcd|kube|scheduler|kwok|keda|helm|promtool|crossplane|all|keda-bench ...]
#
# Cold build minutes (empty peer cache, 2 cores, wall clock). CI's whole cold
# run (these peers + the Rust build + both test tiers) must stay under 60 of
# its 90 minutes: check this table whenever a peer is added or moved.
#
#   peer                      quiet    loaded   notes
#   nats-server v2.15.2         0.6      0.6
#   etcd v3.6.16                  -      1.7
#   kube v1.35.4 (apiserver,     ~16     12.6   "quiet" for these five together,
#     controller-manager)                       measured with KEDA v2.20.2
#   keda v2.21.0                  -     37.4
#   helm v3.19.0                  -      7.1
#   promtool v0.316.0            ~6       8.3   was ~15 quiet / 19.6 loaded
#     (remove_all_sd)                           with the service-discovery
#                                               plugins; ~6 scales that down
#   crossplane CLI v2.5.0         -      7.7   user+sys 10.1 min for both rows:
#   crossplane core v2.4.0        -      4.0   ~6 min on a quiet machine
#   kube-scheduler v1.35.4       <1       0.8   right after kube, from Go's build
#                                               cache (user+sys 0.2 min)
#   kwok v0.8.0                  ~2       4.8   user+sys 3.6 min
#
# "loaded": measured 2026-12-02 while five Rust builds ran beside them (load
# average 8-14 on 2 cores), so 2-4x a quiet machine. Quiet estimate of the
# whole cold peer build: about 16 + 1 + 2 + 6 + 6 = 31 minutes; the Rust build
# and both test tiers add about 25 (KWOK adds seconds to the e2e tests), so
# about 56 of the 60.
#
# Measured on a fresh machine (2026-12-02, empty peer cache and no Cargo
# registry or target): `scripts/tools.sh all` took 29.0 minutes wall (user+sys
# 33.7) while the cold Rust debug build of both tiers (6.6 minutes wall) and a
# release build ran beside it. With both test tiers (about 10 minutes seeded)
# a cold CI run is therefore about 29 + 7 + 10 = 46 of the 60 minutes.
set -euo pipefail

NATS_SERVER_VERSION=v2.15.2
ETCD_VERSION=v3.6.16
KUBERNETES_VERSION=v1.35.4
KEDA_VERSION=v2.21.0
HELM_VERSION=v3.19.0
# Prometheus 3.x is published as Go module versions v0.3xx.
PROMETHEUS_VERSION=v0.316.0
# Crossplane: the CLI (`crossplane render`) and the core binary it runs
# instead of a Docker image (`--crossplane-binary`).
CROSSPLANE_CLI_VERSION=v2.5.0
CROSSPLANE_VERSION=v2.4.0
# KWOK: fake nodes whose pods "run" (its status stages, no containers).
KWOK_VERSION=v0.8.0

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

# module_field MODULE@VERSION FIELD: one field (Dir, GoMod) of `go mod download -json`.
module_field() {
  go mod download -json "$1" | sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# Prints `go mod edit -replace` arguments that repeat MODULE@VERSION's own
# replace lines. Local-path replaces (k8s.io/kubernetes points its staging
# repositories at ./staging/src/..., Crossplane core its APIs at ./apis) become
# the published module at the version given as the third argument.
replace_args() {
  local gomod
  gomod=$(module_field "$1@$2" GoMod)
  # `go mod edit -print` writes every replace as `OLD [V] => NEW [V]`, in a
  # block or on single lines.
  go mod edit -print "$gomod" | awk -v staging="${3:-}" '
    /^replace[[:space:]]*\($/ { block = 1; next }
    block && /^\)/ { block = 0; next }
    block || /^replace / {
      line = $0; sub(/^replace[[:space:]]+/, "", line)
      n = split(line, f, /[[:space:]]+/)
      for (i = 1; i <= n; i++) if (f[i] == "=>") arrow = i
      if (f[1] == "") { for (i = 1; i < n; i++) f[i] = f[i + 1]; n--; arrow-- }
      old = f[1]; new = f[arrow + 1]; ver = (arrow + 2 <= n) ? f[arrow + 2] : ""
      if (ver != "") printf "-replace=%s=%s@%s\n", old, new, ver
      else if (new ~ /^\.\// && staging != "") printf "-replace=%s=%s@%s\n", old, old, staging
    }'
}

# build_module NAME VERSION MODULE STAGING LDFLAGS PACKAGE...: builds the
# packages of MODULE@VERSION inside a throwaway wrapper module that repeats the
# module's replace lines, into the cache. With BUILD_OUT set, the one
# PACKAGE is built under that name (two modules may both name theirs
# `crossplane`).
build_module() {
  local name=$1 version=$2 module=$3 staging=$4 ldflags=$5
  shift 5
  # Link-time flags are part of the key: a binary built with other flags is
  # another binary.
  local dest="$cache/$name-$version" flags="$ldflags${BUILD_TAGS:+ tags:$BUILD_TAGS}"
  [ -z "$flags" ] || dest="$dest-$(printf '%s' "$flags" | sha256sum | cut -c1-8)"
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
    go build -trimpath -tags "${BUILD_TAGS:-}" -ldflags "-s -w $ldflags" -o "$dest/bin/${BUILD_OUT:-}" "$@"
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

# kube_module NAME PACKAGE...: packages of the pinned k8s.io/kubernetes,
# with its staging repositories at their published versions and the
# version stamped as a release build does.
kube_module() {
  local name=$1 v=${KUBERNETES_VERSION#v} staging
  shift
  staging="v0.${v#*.}"
  local pkg=k8s.io/component-base/version
  build_module "$name" "$KUBERNETES_VERSION" k8s.io/kubernetes "$staging" \
    "-X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean" \
    "$@"
}

kube() {
  kube_module kubernetes k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
}

# A cache entry of its own, so the apiserver's stays valid; after `kube`,
# Go's build cache holds most of it.
scheduler() {
  kube_module kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
}

kwok() {
  build_module kwok "$KWOK_VERSION" sigs.k8s.io/kwok "" "" sigs.k8s.io/kwok/cmd/kwok
}

keda() {
  build_module keda "$KEDA_VERSION" github.com/kedacore/keda/v2 "" \
    "-X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
    github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter
  # KEDA's own CRDs, from the same pinned module, for the API server.
  local src
  # Every CRD it ships (keda.sh and eventing.keda.sh): KEDA's manager waits
  # for a cache of each kind it watches, and exits when one never syncs.
  src=$(module_field "github.com/kedacore/keda/v2@$KEDA_VERSION" Dir)
  rm -rf "$root/.tools/keda-crds"
  mkdir -p "$root/.tools/keda-crds"
  cp "$src"/config/crd/bases/*keda.sh_*.yaml "$root/.tools/keda-crds/"
  chmod u+w "$root"/.tools/keda-crds/*.yaml
}

helm() {
  # As Helm's own release build does: its version, and the Kubernetes version
  # it assumes without a cluster (`helm template`) taken from the client-go it
  # is built with (v0.34.x -> 1.34), not the v1.20 fallback.
  local gomod client_go k8s_minor pkg=helm.sh/helm/v3
  gomod=$(module_field "helm.sh/helm/v3@$HELM_VERSION" GoMod)
  client_go=$(go mod edit -print "$gomod" | awk '$1 == "k8s.io/client-go" { print $2; exit }')
  k8s_minor=$(echo "$client_go" | cut -d. -f2)
  build_module helm "$HELM_VERSION" helm.sh/helm/v3 "" \
    "-X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$k8s_minor -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$k8s_minor" \
    helm.sh/helm/v3/cmd/helm
}

promtool() {
  # Only `promtool test rules` and `check rules` are used: without the
  # service-discovery plugins (every cloud SDK) it builds in a fraction of the
  # time.
  BUILD_TAGS=remove_all_sd build_module prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus "" "" \
    github.com/prometheus/prometheus/cmd/promtool
}

crossplane() {
  local pkg=github.com/crossplane/crossplane-runtime/v2/pkg/version.version
  build_module crossplane-cli "$CROSSPLANE_CLI_VERSION" github.com/crossplane/cli/v2 "" \
    "-X $pkg=$CROSSPLANE_CLI_VERSION" github.com/crossplane/cli/v2/cmd/crossplane
  # Core points its APIs module at ./apis; the published one of the same
  # version is that directory.
  BUILD_OUT=crossplane-core build_module crossplane-core "$CROSSPLANE_VERSION" \
    github.com/crossplane/crossplane/v2 "$CROSSPLANE_VERSION" "-X $pkg=$CROSSPLANE_VERSION" \
    github.com/crossplane/crossplane/v2/cmd/crossplane
  # Crossplane's own CRDs, from the same pinned module, for the API server.
  local src
  src=$(module_field "github.com/crossplane/crossplane/v2@$CROSSPLANE_VERSION" Dir)
  rm -rf "$root/.tools/crossplane-crds"
  mkdir -p "$root/.tools/crossplane-crds"
  cp "$src"/cluster/crds/*.yaml "$root/.tools/crossplane-crds/"
  chmod u+w "$root"/.tools/crossplane-crds/*.yaml
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

all() { nats; etcd; kube; scheduler; kwok; keda; helm; promtool; crossplane; }

[ $# -gt 0 ] || set -- all
for t in "$@"; do "$t"; done
