#!/usr/bin/env bash
# The node cache in front of a fake kube-dns, on loopback, as any user:
# a miss, hits with the TTL counting down, NXDOMAIN, TCP, then the upstream
# dies and an expired answer is served stale. Prints the metrics; ~10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

DNS_PORT=${DEMO_DNS_PORT:-5300}
UPSTREAM_PORT=${DEMO_UPSTREAM_PORT:-5301}
METRICS_PORT=${DEMO_METRICS_PORT:-9300}
NODECACHE=${NODECACHE:-bin/localdns-nodecache}
FAKEDNS=${FAKEDNS:-}   # a prebuilt hack/fakedns; built into a temp dir when empty

PROG=demo
# shellcheck source=hack/lib.sh
source hack/lib.sh

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
# ask NAME TYPE [dig options...]: one query to the node cache, answer and timing.
ask() {
  local name=$1 type=$2; shift 2
  echo "\$ dig @127.0.0.1 -p $DNS_PORT${*:+ $*} $name $type"
  dig @127.0.0.1 -p "$DNS_PORT" +time=2 +tries=1 +nocookie "$@" "$name" "$type" 2>&1 |
    grep -E 'status:|^[^;].*IN|Query time' | grep -v '^;; WARNING' | sed 's/^/    /'
}

need dig go
build

say "Fake kube-dns on 127.0.0.1:$UPSTREAM_PORT (CoreDNS-like: TTL 5, SOA on negative answers)"
start_fakedns 100

say "localdns-nodecache on 127.0.0.1:$DNS_PORT (node setup off: no root needed)"
echo "\$ ${nodecache_cmd[*]}"
start_nodecache
echo "/readyz: ok (listening, and kube-dns answered the start-up probe)"

say "First query: a cache miss, forwarded to kube-dns over TCP"
ask svc-1.default.svc.cluster.local A
say "Again, twice: cache hits; the TTL counts down from the stored expiry"
sleep 1; ask svc-1.default.svc.cluster.local A
sleep 1; ask svc-1.default.svc.cluster.local A
say "A search-list expansion that does not exist: NXDOMAIN with the SOA (cached for 5 s)"
ask svc-1.default.svc.cluster.local.default.svc.cluster.local A +noall +authority +comments +stats
say "Over TCP"
ask _http._tcp.svc-2.default.svc.cluster.local SRV +tcp

say "Kill kube-dns, wait for the cached answer to expire, ask again: served stale (RFC 8767), within --stale-max"
kill "$upstream"; wait "$upstream" 2>/dev/null || true
sleep 3.5
ask svc-1.default.svc.cluster.local A
say "A name never seen: kube-dns is gone and nothing is cached, so SERVFAIL"
ask svc-9.default.svc.cluster.local A

say "Metrics (http://127.0.0.1:$METRICS_PORT/metrics), the interesting part"
http_get /metrics | grep -E '^localdns_nodecache_(requests_total|cache_(hits|misses|stale|entries)|upstream_(requests_total|healthy)|coalesced)' || true

say "Node cache log"
sed 's/^/    /' "$work/nodecache.log"
echo
echo "demo: done (everything it started is stopped)"
