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

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP PIPE

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
# http_get PATH: GET from the metrics listener (bash /dev/tcp; no curl needed).
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: demo\r\n\r\n' "$1" >&3
  cat <&3
  exec 3<&-
}
# ask NAME TYPE [dig options...]: one query to the node cache, answer and timing.
ask() {
  local name=$1 type=$2; shift 2
  echo "\$ dig @127.0.0.1 -p $DNS_PORT${*:+ $*} $name $type"
  dig @127.0.0.1 -p "$DNS_PORT" +time=2 +tries=1 +nocookie "$@" "$name" "$type" 2>&1 |
    grep -E 'status:|^[^;].*IN|Query time' | grep -v '^;; WARNING' | sed 's/^/    /'
}

for cmd in dig go; do
  command -v "$cmd" >/dev/null || { echo "demo: $cmd is needed" >&2; exit 1; }
done
[ -x "$NODECACHE" ] || { echo "demo: building $NODECACHE"; go build -o "$NODECACHE" ./cmd/localdns-nodecache; }
if [ -z "$FAKEDNS" ]; then FAKEDNS="$work/fakedns"; go build -o "$FAKEDNS" ./hack/fakedns; fi

say "Fake kube-dns on 127.0.0.1:$UPSTREAM_PORT (CoreDNS-like: TTL 5, SOA on negative answers)"
"$FAKEDNS" --listen "127.0.0.1:$UPSTREAM_PORT" --services 100 2>"$work/fakedns.log" &
upstream=$!
pids+=("$upstream")

say "localdns-nodecache on 127.0.0.1:$DNS_PORT (node setup off: no root needed)"
cmd=("$NODECACHE" --listen "127.0.0.1:$DNS_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT"
     --setup-interface=false --setup-rules=false --metrics-addr "127.0.0.1:$METRICS_PORT")
echo "\$ ${cmd[*]}"
"${cmd[@]}" 2>"$work/nodecache.log" &
pids+=("$!")

for _ in $(seq 100); do
  if http_get /readyz 2>/dev/null | grep -q '^ok'; then break; fi
  kill -0 "${pids[1]}" 2>/dev/null || { echo "demo: the node cache exited:"; cat "$work/nodecache.log"; exit 1; }
  sleep 0.1
done
http_get /readyz | grep -q '^ok' || { echo "demo: not ready after 10 s"; cat "$work/nodecache.log"; exit 1; }
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
