#!/usr/bin/env bash
# Builds Kubernetes binaries from the k8s.io/kubernetes Go module (no release
# download is reachable from CI) and caches them, so only the first run pays.
#
#   hack/provision-k8s.sh [component...]   default: kube-apiserver kubectl
#
# Prints the bin directory on stdout. Components: kube-apiserver kubectl
# kubelet kube-proxy kube-controller-manager kube-scheduler.
set -euo pipefail
# shellcheck source=hack/progress.sh
source "$(dirname "$0")/progress.sh"

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
CACHE="${LOCALDNS_CACHE:-$HOME/.cache/localdns}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kube-apiserver kubectl)

# envtest wants etcd beside kube-apiserver; Debian's etcd-server provides it.
mkdir -p "$BIN"
if [ ! -x "$BIN/etcd" ]; then
  etcd_bin="$(command -v etcd || true)"
  [ -n "$etcd_bin" ] || { echo "provision-k8s: etcd not found; run hack/install-deps.sh (Debian package etcd-server)" >&2; exit 1; }
  ln -sf "$etcd_bin" "$BIN/etcd"
fi

missing=()
for c in "${components[@]}"; do
  [ -x "$BIN/$c" ] || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$BIN"
  exit 0
fi

staging_version="v0${K8S_VERSION#v1}"   # v1.37.2 -> v0.37.2
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
mod="$CACHE/k8s/$K8S_VERSION/module"
mkdir -p "$mod"

if [ ! -f "$mod/go.sum" ]; then
  echo "provision-k8s: preparing k8s.io/kubernetes $K8S_VERSION (staging $staging_version)" >&2
  ( cd "$mod"
    cat > go.mod <<MOD
module localdns.local/k8sbuild

go 1.26
MOD
    # k8s.io/kubernetes replaces its staging modules with ./staging paths that
    # do not exist in the module zip; pin each to the matching tagged release.
    gomod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    with_progress "provision-k8s: downloading k8s.io/kubernetes $K8S_VERSION" "" go mod download "k8s.io/kubernetes@$K8S_VERSION"
    grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$gomod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace "$m=$m@$staging_version"
    done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
    cat > tools.go <<'GO'
//go:build tools

package k8sbuild

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    GOFLAGS=-mod=mod with_progress "provision-k8s: resolving its dependencies" "" go mod tidy -e || true
    GOFLAGS=-mod=mod with_progress "provision-k8s: downloading its dependencies" "" go mod download
  )
fi

ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

i=0
for c in "${missing[@]}"; do
  i=$((i + 1))
  start=$(date +%s)
  ( cd "$mod"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod
    pkg="k8s.io/kubernetes/cmd/$c"
    total="$(stale_packages -trimpath -tags tools "$pkg")"
    echo "provision-k8s: building $c $K8S_VERSION ($i/${#missing[@]}: ${total:-?} packages to compile; once, cached in $BIN)" >&2
    with_progress "provision-k8s: $c ($i/${#missing[@]})" "$total" \
      go build -v -trimpath -tags tools -ldflags "$ldflags" -o "$BIN/$c.tmp" "$pkg" )
  mv "$BIN/$c.tmp" "$BIN/$c"
  echo "provision-k8s: $c built in $(( $(date +%s) - start ))s" >&2
done
echo "$BIN"
