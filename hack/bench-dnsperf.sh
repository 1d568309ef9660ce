#!/usr/bin/env bash
# dnsperf against localdns-nodecache on loopback, in front of the fake
# kube-dns (TTL 5 like CoreDNS: hot names are kept fresh by prefetch during
# the run). Query files hold, for each Service, an A, an AAAA, a search-list
# expansion that is NXDOMAIN and an SRV query.
#   1. working set: one pass over BENCH_SERVICES x 4 names (default 10k) fills the cache;
#   2. measurement: dnsperf -c 8 -T 1 -q 200 -l BENCH_SECONDS over the hot
#      names (BENCH_HOT_SERVICES x 4, all cached).
# Prints QPS, mean/max latency, the cache's CPU per answer and its RSS (peak
# = VmHWM). Bounded (about BENCH_SECONDS + 20 s); kills all it starts on exit.
# BENCH_LOOPBACK=::1 runs it all over IPv6 loopback (default 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES=${BENCH_SERVICES:-2500}
HOT_SERVICES=${BENCH_HOT_SERVICES:-100}
SECONDS_RUN=${BENCH_SECONDS:-10}
DNS_PORT=${BENCH_DNS_PORT:-5310}
UPSTREAM_PORT=${BENCH_UPSTREAM_PORT:-5311}
METRICS_PORT=${BENCH_METRICS_PORT:-9310}
NODECACHE=${NODECACHE:-bin/localdns-nodecache}
LOOPBACK=${BENCH_LOOPBACK:-127.0.0.1}

PROG=bench
# shellcheck source=hack/lib.sh
source hack/lib.sh

need dnsperf go
[ "$HOT_SERVICES" -le "$SERVICES" ] || die "BENCH_HOT_SERVICES > BENCH_SERVICES"
# queries FIRST COUNT: the four queries of Services FIRST..FIRST+COUNT-1.
queries() {
  local i svc
  for ((i = $1; i < $1 + $2; i++)); do
    svc="svc-$i.default.svc.cluster.local"
    printf '%s A\n%s AAAA\n%s.default.svc.cluster.local A\n_http._tcp.%s SRV\n' "$svc" "$svc" "$svc" "$svc"
  done
}
upstream_requests() { http_get /metrics | awk '/^localdns_nodecache_upstream_requests_total/ {s += $2} END {print s + 0}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$cache/stat"; }
kib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

build
start_fakedns "$SERVICES"
start_nodecache

# Hot names last, so they are the freshest entries when the measurement starts.
{ queries "$HOT_SERVICES" $((SERVICES - HOT_SERVICES)); queries 0 "$HOT_SERVICES"; } >"$work/working-set"
queries 0 "$HOT_SERVICES" >"$work/hot"
timeout 120 dnsperf -s "$LOOPBACK" -p "$DNS_PORT" -d "$work/working-set" -n 1 -c 8 -q 200 >"$work/warm.out" 2>&1 ||
  { echo "bench: warm-up failed:"; cat "$work/warm.out"; exit 1; }
ws_rss=$(awk '/VmRSS/ {print $2}' "/proc/$cache/status")
ws_names=$(wc -l <"$work/working-set")

up_before=$(upstream_requests)
cpu_before=$(cpu_ticks)
timeout $((SECONDS_RUN + 30)) dnsperf -s "$LOOPBACK" -p "$DNS_PORT" -d "$work/hot" \
  -c 8 -T 1 -l "$SECONDS_RUN" -q 200 >"$work/run.out" 2>&1 || { cat "$work/run.out"; exit 1; }
cpu_after=$(cpu_ticks)
up_after=$(upstream_requests)

completed=$(awk '/Queries completed:/ {print $3}' "$work/run.out")
lost=$(awk '/Queries lost:/ {print $3}' "$work/run.out")
qps=$(awk '/Queries per second:/ {printf "%.0f", $4}' "$work/run.out")
# "Average Latency (s):  0.000071 (min 0.000010, max 0.004212)"
read -r mean max < <(awk '/Average Latency/ {gsub(/[(),]/, ""); print $4, $8}' "$work/run.out")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$cache/status")

echo "localdns-nodecache: dnsperf -c 8 -T 1 -q 200 -l $SECONDS_RUN on loopback $LOOPBACK, $(wc -l <"$work/hot") hot cached names, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg) at the end"
printf '  %-34s %s\n' \
  "queries completed / lost" "$completed / $lost" \
  "QPS" "$qps" \
  "latency mean / max" "$(awk -v m="$mean" -v x="$max" 'BEGIN {printf "%.0f us / %.2f ms", m * 1e6, x * 1e3}')" \
  "CPU per answer (user+sys)" "$(awk -v t=$((cpu_after - cpu_before)) -v hz="$(getconf CLK_TCK)" -v n="$completed" 'BEGIN {printf "%.2f us", t / hz / n * 1e6}')" \
  "upstream requests during the run" "$((up_after - up_before)) (refreshes of TTL-5 names: prefetch or miss)" \
  "RSS after a $ws_names-name working set" "$(kib "$ws_rss")" \
  "peak RSS (VmHWM)" "$(kib "$hwm")"
