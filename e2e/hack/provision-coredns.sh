#!/usr/bin/env bash
# Builds CoreDNS (static, CGO off) from its Go module and caches it, so only
# the first run pays. No release download or registry is reachable here.
#
#   e2e/hack/provision-coredns.sh      prints the directory holding `coredns`
set -euo pipefail
# shellcheck source=hack/progress.sh
source "$(dirname "$0")/../../hack/progress.sh"

COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE="${LOCALDNS_CACHE:-$HOME/.cache/localdns}"
BIN="$CACHE/coredns/$COREDNS_VERSION"

if [ ! -x "$BIN/coredns" ]; then
  mkdir -p "$BIN"
  start=$(date +%s)
  # Build into a scratch GOBIN and move, so an interrupted build never leaves
  # a half-written binary that later runs would take as cached.
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  module="github.com/coredns/coredns@$COREDNS_VERSION"
  # Outside any module: go install pkg@version resolves CoreDNS's own go.mod;
  # go list, which takes no @version, counts what it will compile from the
  # module's own directory.
  ( cd "$tmp"
    export CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-trimpath
    src="$(go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
    ( cd "$src" && with_progress "provision-coredns: downloading its dependencies" "" go mod download )
    total="$(cd "$src" && stale_packages .)"
    echo "provision-coredns: building coredns $COREDNS_VERSION (${total:-?} packages to compile; once, cached in $BIN)" >&2
    with_progress "provision-coredns: coredns" "$total" go install -v -ldflags "-s -w" "$module" )
  mv "$tmp/coredns" "$BIN/coredns"
  echo "provision-coredns: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$BIN"
