#!/usr/bin/env bash
# Builds CoreDNS (static, CGO off) from its Go module and caches it, so only
# the first run pays. No release download or registry is reachable here.
#
#   e2e/hack/provision-coredns.sh      prints the directory holding `coredns`
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE="${LOCALDNS_CACHE:-$HOME/.cache/localdns}"
BIN="$CACHE/coredns/$COREDNS_VERSION"

if [ ! -x "$BIN/coredns" ]; then
  mkdir -p "$BIN"
  start=$(date +%s)
  echo "provision-coredns: building coredns $COREDNS_VERSION (once; cached in $BIN)" >&2
  # Build into a scratch GOBIN and move, so an interrupted build never leaves
  # a half-written binary that later runs would take as cached.
  tmp="$(mktemp -d "$BIN/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # Outside any module: go install pkg@version resolves CoreDNS's own go.mod.
  ( cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-trimpath \
      go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" )
  mv "$tmp/coredns" "$BIN/coredns"
  echo "provision-coredns: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$BIN"
