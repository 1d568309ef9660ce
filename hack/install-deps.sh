#!/usr/bin/env bash
# Installs everything `make test` and `make demo` need on a fresh Debian 12
# machine, as root: Debian packages and Go tools. Idempotent and fast when all
# is present.
set -euo pipefail

APT_PACKAGES=(
  etcd-server                 # envtest's etcd
  dnsutils                    # dig, for the integration tests
  dnsperf                     # make bench
  unbound dnsdist dnsmasq-base # benchmark peers
  musl-tools                  # a real musl client for resolver tests
  iptables nftables conntrack iproute2 # node setup tests in network namespaces
  curl                        # e2e: the node cache's metrics, read on the node
  tcpdump
  containerd runc containernetworking-plugins # the single-node cluster of e2e/
  busybox-static              # e2e client images
  gcc libc6-dev               # the glibc load client
)
STATICCHECK_VERSION=v0.8.2
# The chart's tests (manifests/) and `make manifests` render with it.
HELM_VERSION=v4.3.2

need=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${need[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  # unbound's package enables a system service that would hold port 53.
  systemctl disable --now unbound 2>/dev/null || true
fi

gobin="$(go env GOPATH)/bin"
if ! "$gobin/staticcheck" -version 2>/dev/null | grep -q "(${STATICCHECK_VERSION#v})"; then
  echo "install-deps: installing staticcheck $STATICCHECK_VERSION" >&2
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" >&2
fi
# Built from the Go module proxy like staticcheck; `go version -m` names the
# module version it was built from (helm's own `version` says only v4.3).
if ! go version -m "$gobin/helm" 2>/dev/null | grep -qE "^\s+mod\s+helm.sh/helm/v4\s+${HELM_VERSION}\s"; then
  echo "install-deps: installing helm $HELM_VERSION" >&2
  go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
fi
