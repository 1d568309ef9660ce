#!/usr/bin/env bash
# Peer benchmark (`make bench`): localdns-nodecache against CoreDNS configured
# like NodeLocal DNSCache, unbound, dnsdist, dnsmasq and a trivial C responder
# (the ceiling), one after the other, on loopback, all in front of the same
# fake kube-dns (hack/fakedns: TTL 5, SOA on negative answers), with the same
# dnsperf load. For each server:
#   1. warm-up: one pass over a 10k-name working set (2500 Services x A, AAAA,
#      search-expansion NXDOMAIN, SRV), then one pass over the hot names;
#      VmRSS is read here ("RSS after the 10k working set");
#   2. measurement: dnsperf -c 8 -T 1 -q 200 -l BENCH_SECONDS over the hot
#      names (bench/queries/hot.txt, 400 names); the server's utime+stime
#      delta (/proc/<pid>/stat) over the answers is its CPU per answer;
#   3. latency pass: the same load for BENCH_P99_SECONDS with dnsperf -v (one
#      line per query, parsed for p99; dnsperf 2.10 has no histogram). Kept
#      apart so that printing does not slow the measurement;
#   4. peak RSS (VmHWM), then the server is stopped.
# Then the "slow kube-dns" section (issue 13), in front of the real CoreDNS as
# kube-dns (bench/slowkubedns kube-dns: cluster.local from a file zone,
# answered at once; ext.test after 200 ms, `erratic { delay 1 200ms }`;
# stuck.test never; big.test a 60,000-byte TXT for every name):
#   5. localdns, CoreDNS like NodeLocal DNSCache (with "." forwarded too),
#      unbound and dnsdist, each fresh: 40 outstanding unique ext.test names
#      (at most 200/s) while 50/s unique cluster names (misses) are timed, for
#      BENCH_SLOW_SECONDS (bench/slowkubedns load);
#   6. localdns alone, fresh for each hostile load (big answers, unique-name
#      flood, TCP flood, stuck misses): its peak RSS against 60% of the
#      DaemonSet's memory limit (manifests/base/nodecache.yaml), and another
#      client's cluster-name misses meanwhile (bench/slowkubedns hostile).
# Writes the tables to stdout and to BENCH_RESULTS (default bench/results.md),
# replacing the sections measured and keeping the others.
#
# Environment: BENCH_TABLES (both: "peers slow"; "slow" measures only the slow
# kube-dns section and keeps the rest of BENCH_RESULTS), BENCH_SECONDS (15),
# BENCH_P99_SECONDS (5), BENCH_ROUNDS (1; each round measures every server,
# the summary takes the median; the slow kube-dns section runs once),
# BENCH_PEERS (all: "localdns coredns unbound dnsdist dnsmasq ceiling"),
# BENCH_SLOW_PEERS (all: "localdns coredns unbound dnsdist"),
# BENCH_SLOW_SECONDS (20), BENCH_HOSTILE (all: "big flood tcp stuck"),
# BENCH_PORT_BASE (25400; ports BASE..BASE+9 on 127.0.0.1), NODECACHE (a
# prebuilt binary; default: built from this tree), COREDNS (default: built
# once by e2e/hack/provision-coredns.sh), BENCH_NICE (0; e.g. -10 on a shared
# machine), BENCH_PROFILE=1 (after the rounds,
# system calls per answer of localdns and the C peers, and `perf record` of
# localdns, under the same load; report in BENCH_PROFILE_OUT, default
# bench/profile.md).
#
# Network: every server listens on 127.0.0.1 and forwards only to the fake
# or to the kube-dns CoreDNS on 127.0.0.1; no configuration names
# /etc/resolv.conf. Every dnsperf run is bounded by -l/-n and by timeout(1),
# every slowkubedns load by its duration, count and limit; every process
# started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN=${BENCH_SECONDS:-15}
P99_SECONDS=${BENCH_P99_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-1}
TABLES=${BENCH_TABLES:-peers slow}
PEERS=${BENCH_PEERS:-localdns coredns unbound dnsdist dnsmasq ceiling}
SLOW_PEERS=${BENCH_SLOW_PEERS:-localdns coredns unbound dnsdist}
SLOW_SECONDS=${BENCH_SLOW_SECONDS:-20}
HOSTILE=${BENCH_HOSTILE:-big flood tcp stuck}
PORT_BASE=${BENCH_PORT_BASE:-25400}
RESULTS=${BENCH_RESULTS:-bench/results.md}
PROFILE=${BENCH_PROFILE:-0}
PROFILE_OUT=${BENCH_PROFILE_OUT:-bench/profile.md}
SERVICES=2500 # x 4 query names = the 10k-name working set
LOAD=(-c 8 -T 1 -q 200)

UPSTREAM_PORT=$PORT_BASE
DNS_PORT=$((PORT_BASE + 1))
METRICS_PORT=$((PORT_BASE + 2)) # localdns /metrics, CoreDNS prometheus
HEALTH_PORT=$((PORT_BASE + 3))  # CoreDNS health
KUBEDNS_PORT=$((PORT_BASE + 4)) # the slow kube-dns (real CoreDNS)

for cmd in dnsperf go gcc unbound dnsdist dnsmasq; do
  command -v "$cmd" >/dev/null || { echo "bench: $cmd is needed (hack/install-deps.sh)" >&2; exit 1; }
done
for v in SECONDS_RUN P99_SECONDS ROUNDS PORT_BASE SLOW_SECONDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "bench: $v must be a positive integer" >&2; exit 1; }
done
for t in $TABLES; do
  case $t in peers | slow) ;; *) echo "bench: BENCH_TABLES: $t is neither peers nor slow" >&2; exit 1 ;; esac
done
measuring() { case " $TABLES " in *" $1 "*) return 0 ;; esac; return 1; }
# A negative niceness (root) keeps other work on a shared machine from
# perturbing the servers and dnsperf as much; every process here inherits it.
NICE=${BENCH_NICE:-0}
[ "$NICE" = 0 ] || renice -n "$NICE" -p $$ >/dev/null

work=$(mktemp -d)
fake_pid=
kubedns_pid=
server_pid=
client_pid=
client_pids=()
stop_pid() { # stop_pid PID: TERM, then KILL after 5 s.
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local p
  for p in "${client_pids[@]}"; do stop_pid "$p"; done
  stop_pid "$server_pid"
  stop_pid "$fake_pid"
  stop_pid "$kubedns_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP PIPE

log() { echo "bench: $*" >&2; }

# --- binaries -------------------------------------------------------------
NODECACHE=${NODECACHE:-}
NODECACHE_GIVEN=$NODECACHE
if [ -z "$NODECACHE" ]; then
  NODECACHE=$work/localdns-nodecache
  go build -o "$NODECACHE" ./cmd/localdns-nodecache
fi
COREDNS=${COREDNS:-}
case " $PEERS " in *" coredns "*) measuring peers && COREDNS_NEEDED=1 ;; esac
if [ -n "${COREDNS_NEEDED:-}" ] || measuring slow; then # the slow kube-dns is CoreDNS
  [ -n "$COREDNS" ] || COREDNS="$(e2e/hack/provision-coredns.sh)/coredns"
fi
go build -o "$work/fakedns" ./hack/fakedns
go build -o "$work/slowkubedns" ./bench/slowkubedns
gcc -O2 -Wall -pthread -o "$work/ceiling" bench/ceiling.c

# --- query files ----------------------------------------------------------
hot=bench/queries/hot.txt
hot_services=$(($(wc -l <"$hot") / 4))
{
  for ((i = hot_services; i < SERVICES; i++)); do
    s="svc-$i.default.svc.cluster.local"
    printf '%s A\n%s AAAA\n%s.default.svc.cluster.local A\n_http._tcp.%s SRV\n' "$s" "$s" "$s" "$s"
  done
  cat "$hot" # hot names last: the freshest entries when the measurement starts
} >"$work/working-set"
echo "kubernetes.default.svc.cluster.local A" >"$work/ready"

# --- servers --------------------------------------------------------------
# start_NAME launches one server on 127.0.0.1:DNS_PORT in front of the fake,
# in the foreground of a background job; config files go to $work.
start_localdns() {
  "$NODECACHE" --listen "127.0.0.1:$DNS_PORT" --upstream "127.0.0.1:$UPSTREAM_PORT" \
    --setup-interface=false --setup-rules=false --metrics-addr "127.0.0.1:$METRICS_PORT" \
    2>"$work/server.log" &
  server_pid=$!
}

# NodeLocal DNSCache's Corefile (k8s.io/dns cluster/addons/dns/nodelocaldns),
# its cluster.local and reverse blocks; its "." block forwards to the node's
# resolv.conf, which a benchmark here must not touch, so it is left out. In
# the slow kube-dns section COREDNS_ZONES adds "." forwarded to kube-dns the
# same way, as the external names go there.
COREDNS_ZONES="cluster.local in-addr.arpa ip6.arpa"
start_coredns() {
  local zone
  : >"$work/Corefile"
  for zone in $COREDNS_ZONES; do
    cat >>"$work/Corefile" <<EOF
$zone:$DNS_PORT {
    errors
    cache {
        success 9984 30
        denial 9984 5
    }
    reload
    loop
    bind 127.0.0.1
    forward . 127.0.0.1:$UPSTREAM_PORT {
        force_tcp
    }
    prometheus 127.0.0.1:$METRICS_PORT
    health 127.0.0.1:$HEALTH_PORT
}
EOF
  done
  "$COREDNS" -conf "$work/Corefile" -pidfile "" >"$work/server.log" 2>&1 &
  server_pid=$!
}

start_unbound() {
  cat >"$work/unbound.conf" <<EOF
server:
    num-threads: 2
    so-reuseport: yes
    interface: 127.0.0.1
    port: $DNS_PORT
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "$work"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "iterator"
    qname-minimisation: no
    do-not-query-localhost: no
    tcp-upstream: yes
    outgoing-num-tcp: 64
    # .test is reserved (RFC 6761) and unbound answers it locally by
    # default; the slow kube-dns section's external zones live there.
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$UPSTREAM_PORT
    forward-tcp-upstream: yes
EOF
  unbound -d -c "$work/unbound.conf" >"$work/server.log" 2>&1 &
  server_pid=$!
}

start_dnsdist() {
  cat >"$work/dnsdist.conf" <<EOF
setSecurityPollSuffix("")
setLocal("127.0.0.1:$DNS_PORT", {reusePort=true})
addLocal("127.0.0.1:$DNS_PORT", {reusePort=true})
newServer({address="127.0.0.1:$UPSTREAM_PORT", tcpOnly=true, checkName="kubernetes.default.svc.cluster.local."})
getPool(""):setCache(newPacketCache(100000, {maxTTL=86400, minTTL=0}))
EOF
  dnsdist --supervised --disable-syslog -C "$work/dnsdist.conf" >"$work/server.log" 2>&1 &
  server_pid=$!
}

start_dnsmasq() {
  dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
    --server="127.0.0.1#$UPSTREAM_PORT" --listen-address=127.0.0.1 --bind-interfaces \
    --port="$DNS_PORT" --cache-size=10000 --dns-forward-max=1000 --pid-file="$work/dnsmasq.pid" \
    --log-facility=- >"$work/server.log" 2>&1 &
  server_pid=$!
}

start_ceiling() {
  "$work/ceiling" 127.0.0.1 "$DNS_PORT" >"$work/server.log" 2>&1 &
  server_pid=$!
}

# --- measuring ------------------------------------------------------------
# perf_query_start OUT ARGS...: dnsperf at the server in the background,
# bounded; its pid in client_pid (and client_pids, which cleanup stops).
perf_query_start() {
  local out=$1
  shift
  timeout 300 dnsperf -s 127.0.0.1 -p "$DNS_PORT" "$@" >"$out" 2>&1 &
  client_pid=$!
  client_pids+=("$client_pid")
}
perf_query_wait() { # perf_query_wait: waits for client_pid, returns its status.
  local rc=0
  wait "$client_pid" || rc=$?
  unset 'client_pids[-1]'
  return "$rc"
}
# perf_query OUT ARGS...: dnsperf, waited for in the background so that a
# signal stops the script at once.
perf_query() {
  perf_query_start "$@"
  perf_query_wait
}
stat_of() { awk -v k="$2" '$1 == k ":" {print $2}' "$1"; }
cpu_ticks() { awk '{print $14, $15}' "/proc/$server_pid/stat"; } # utime stime
status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$server_pid/status"; }

# wait_ready NAME [PID PORT]: until the server (default: server_pid on
# DNS_PORT) answers a cluster name.
wait_ready() {
  local pid=${2:-$server_pid} port=${3:-$DNS_PORT}
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    if perf_query "$work/ready.out" -d "$work/ready" -n 1 -t 1 -p "$port" &&
      grep -q 'Queries completed: *1 ' "$work/ready.out"; then
      return 0
    fi
    sleep 0.1
  done
  log "$1 did not answer:"
  cat "$work/server.log" "$work/kube-dns.log" >&2 2>/dev/null
  return 1
}

# measure NAME ROUND: appends one row to $work/rows:
# name round qps mean_us p99_us max_ms cpu_us_per_answer rss_ws_kib hwm_kib lost user_pct rcodes
measure() {
  local name=$1 round=$2
  log "round $round: $name"
  start_warm "$name"
  local rss_ws user_before sys_before user_after sys_after
  rss_ws=$(status_kib VmRSS)

  read -r user_before sys_before < <(cpu_ticks)
  perf_query "$work/run.out" -d "$hot" "${LOAD[@]}" -l "$SECONDS_RUN" ||
    { log "$name: dnsperf failed"; cat "$work/run.out" >&2; return 1; }
  read -r user_after sys_after < <(cpu_ticks)
  perf_query "$work/lat.out" -d "$hot" "${LOAD[@]}" -l "$P99_SECONDS" -v
  local hwm
  hwm=$(status_kib VmHWM)
  stop_server

  local completed lost qps mean max p99 rcodes
  completed=$(awk '/Queries completed:/ {print $3}' "$work/run.out")
  lost=$(awk '/Queries lost:/ {print $3}' "$work/run.out")
  qps=$(awk '/Queries per second:/ {printf "%.0f", $4}' "$work/run.out")
  # "Average Latency (s):  0.000071 (min 0.000010, max 0.004212)"
  read -r mean max < <(awk '/Average Latency/ {gsub(/[(),]/, ""); print $4, $8}' "$work/run.out")
  # "> NOERROR name A 0.000123": the 99th percentile of the last field.
  p99=$(awk '/^> / {print $NF}' "$work/lat.out" | sort -g |
    awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; print (NR ? v[i] : "nan")}')
  rcodes=$(awk -F': *' '/Response codes:/ {gsub(/ /, "_", $2); print $2}' "$work/run.out")
  awk -v n="$name" -v r="$round" -v q="$qps" -v m="$mean" -v p="$p99" -v x="$max" \
    -v u=$((user_after - user_before)) -v t=$((user_after - user_before + sys_after - sys_before)) -v hz="$(getconf CLK_TCK)" -v c="$completed" \
    -v ws="$rss_ws" -v h="$hwm" -v l="$lost" -v rc="$rcodes" 'BEGIN {
      printf "%s %d %d %.1f %.1f %.2f %.2f %d %d %d %.0f %s\n", n, r, q, m * 1e6, p * 1e6, x * 1e3,
        (c > 0 ? t / hz / c * 1e6 : 0), ws, h, l, (t > 0 ? 100 * u / t : 0), rc }' >>"$work/rows"
}

# start_warm NAME: starts the server and runs the warm-up passes.
start_warm() {
  "start_$1"
  wait_ready "$1"
  perf_query "$work/warm.out" -d "$work/working-set" -n 1 "${LOAD[@]}" -t 2
  perf_query "$work/warm-hot.out" -d "$hot" -n 1 "${LOAD[@]}" -t 2
}
stop_server() {
  stop_pid "$server_pid"
  server_pid=
}

# syscall_counts NAME: the server's system calls and context switches per
# answer under the measurement load (perf stat on tracepoints), one table row.
syscall_counts() {
  local events=raw_syscalls:sys_enter,context-switches e
  for e in recvmmsg sendmmsg recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait futex nanosleep; do
    events+=",syscalls:sys_enter_$e"
  done
  start_warm "$1"
  perf_query_start "$work/stat-load.out" -d "$hot" "${LOAD[@]}" -l "$SECONDS_RUN"
  timeout $((SECONDS_RUN + 30)) perf stat -x, -e "$events" -p "$server_pid" -o "$work/stat.csv" -- sleep "$SECONDS_RUN" || true
  perf_query_wait
  stop_server
  awk -F, -v name="$1" -v answers="$(awk '/Queries completed:/ {print $3}' "$work/stat-load.out")" '
    $3 != "" { sub(/^(raw_)?syscalls:sys_enter_?/, "", $3); v[$3] = $1 }
    END {
      printf "| %s | %.3f | %.3f |", name, v[""] / answers, v["context-switches"] / answers
      n = split("recvmmsg sendmmsg recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait futex nanosleep", k, " ")
      for (i = 1; i <= n; i++) printf " %.3f |", v[k[i]] / answers
      print ""
    }' "$work/stat.csv"
}

# profile: BENCH_PROFILE=1. System calls per answer of localdns, the ceiling
# and the C/C++ peers, then perf record (call graphs through Go's frame
# pointers) of localdns; all under the measurement load after the same
# warm-up, written to bench/profile.md.
profile() {
  command -v perf >/dev/null || { log "BENCH_PROFILE: perf is needed (Debian linux-perf)"; return 1; }
  local name
  {
    echo "# Profile of localdns-nodecache under dnsperf ${LOAD[*]} -l $SECONDS_RUN on loopback"
    echo "# (bench/peers.sh with BENCH_PROFILE=1), $(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "## System calls and context switches per answer (perf stat -p on tracepoints)"
    echo
    echo "| server | all syscalls | ctx switches | recvmmsg | sendmmsg | recvfrom | sendto | recvmsg | sendmsg | epoll_wait | epoll_pwait | futex | nanosleep |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for name in localdns ceiling unbound dnsdist; do
      log "profile: system calls of $name"
      syscall_counts "$name"
    done
    log "profile: localdns under perf record"
    start_warm localdns
    perf_query_start "$work/prof.out" -d "$hot" "${LOAD[@]}" -l "$SECONDS_RUN"
    timeout $((SECONDS_RUN + 30)) perf record -q -F 1999 -g -p "$server_pid" -o "$work/perf.data" -- sleep "$SECONDS_RUN" 2>/dev/null || true
    perf_query_wait
    stop_server
    echo
    echo "## perf record -F 1999 -g of localdns ($(awk '/Queries per second:/ {printf "%.0f QPS", $4}' "$work/prof.out") while recorded)"
    echo
    echo "Flat (self time by symbol; [k] kernel, [.] the process):"
    echo '```'
    perf report -i "$work/perf.data" --stdio --no-children -F overhead,sym -g none --percent-limit 0.7 2>&1 | awk '!/^#/ && NF'
    echo '```'
    echo "Inclusive (each function with its callees):"
    echo '```'
    perf report -i "$work/perf.data" --stdio --children --sort sym -g none --percent-limit 3 2>&1 | awk '!/^#/ && NF'
    echo '```'
  } >"$PROFILE_OUT"
  log "profile written to $PROFILE_OUT"
}

# slow_kube_dns: the slow kube-dns section's measurements, one JSON file per
# run in slow_files (bench/slowkubedns load and hostile).
slow_files=()
slow_kube_dns() {
  local name load out
  "$work/slowkubedns" kube-dns -dir "$work/kube-dns" -listen "127.0.0.1:$KUBEDNS_PORT"
  "$COREDNS" -conf "$work/kube-dns/Corefile" -pidfile "" >"$work/kube-dns.log" 2>&1 &
  kubedns_pid=$!
  wait_ready kube-dns "$kubedns_pid" "$KUBEDNS_PORT"
  # The start_NAME functions see these instead of the fake's port and zones.
  local UPSTREAM_PORT=$KUBEDNS_PORT COREDNS_ZONES="$COREDNS_ZONES ."
  for name in $SLOW_PEERS; do
    log "slow kube-dns: $name"
    "start_$name"
    wait_ready "$name"
    out="$work/slow/load-$name.json"
    "$work/slowkubedns" load -server "127.0.0.1:$DNS_PORT" -name "$name" -duration "${SLOW_SECONDS}s" -out "$out"
    slow_files+=("$out")
    stop_server
  done
  for load in $HOSTILE; do
    log "slow kube-dns: localdns under the $load load"
    start_localdns
    wait_ready localdns
    out="$work/slow/hostile-$load.json"
    "$work/slowkubedns" hostile -server "127.0.0.1:$DNS_PORT" -load "$load" -pid "$server_pid" -out "$out"
    slow_files+=("$out")
    stop_server
  done
  stop_pid "$kubedns_pid"
  kubedns_pid=
}

# --- the run --------------------------------------------------------------
if measuring peers; then
  "$work/fakedns" --listen "127.0.0.1:$UPSTREAM_PORT" --services "$SERVICES" 2>"$work/fakedns.log" &
  fake_pid=$!
  # Every server probes kube-dns as it starts: the fake must answer first.
  wait_ready fakedns "$fake_pid" "$UPSTREAM_PORT"
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  started=$(date -u '+%Y-%m-%d %H:%M UTC')
  : >"$work/rows"
  for ((round = 1; round <= ROUNDS; round++)); do
    for name in $PEERS; do
      measure "$name" "$round"
    done
  done
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  [ "$PROFILE" != 1 ] || profile
  stop_pid "$fake_pid"
  fake_pid=
fi
if measuring slow; then
  slow_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  slow_started=$(date -u '+%Y-%m-%d %H:%M UTC')
  slow_kube_dns
  slow_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
fi

# --- the report -----------------------------------------------------------
version_of() {
  case $1 in
  localdns)
    if [ -n "${NODECACHE_GIVEN:-}" ]; then echo "$NODECACHE_GIVEN"; return; fi
    local paths=(dnsengine nodecache cmd/localdns-nodecache go.mod)
    echo "$(git log -1 --format=%h -- "${paths[@]}" 2>/dev/null || echo "this tree")$(
      [ -z "$(git status --porcelain -- "${paths[@]}" 2>/dev/null)" ] || echo " + uncommitted changes")"
    ;;
  coredns) "$COREDNS" -version 2>/dev/null | head -1 ;;
  unbound) unbound -V 2>/dev/null | awk 'NR == 1 {print $2}' ;;
  dnsdist) dnsdist --version 2>/dev/null | awk 'NR == 1 {print $2}' ;;
  dnsmasq) dnsmasq --version 2>/dev/null | awk 'NR == 1 {print $3}' ;;
  ceiling) echo "bench/ceiling.c" ;;
  esac
}

# The summary: per server the median of each column over the rounds, then
# ratios and verdicts. awk reads "name value..." rows sorted by name.
summary() {
  sort -k1,1 -k2,2n "$work/rows" | awk -v peers="$PEERS" -v rounds="$ROUNDS" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n[$1]++; for (c = 3; c <= 11; c++) col[$1, c, n[$1]] = $c; qpsrun[$1] = qpsrun[$1] (qpsrun[$1] == "" ? "" : ", ") $3
      rc = $12; gsub(/_/, " ", rc); rcodes[$1] = rc }
    END {
      np = split(peers, order, " ")
      for (k = 1; k <= np; k++) {
        s = order[k]
        for (c = 3; c <= 11; c++) { delete a; for (i = 1; i <= n[s]; i++) a[i] = col[s, c, i]; med[s, c] = median(a, n[s]) }
      }
      # columns: 3 qps, 4 mean us, 5 p99 us, 6 max ms, 7 cpu us/answer, 8 rss after ws KiB, 9 hwm KiB, 10 lost, 11 user %
      print "| server | QPS | x CoreDNS | x unbound | % of ceiling | mean | p99 | max | CPU/answer | user | RSS after 10k names | peak RSS | lost |"
      print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      for (k = 1; k <= np; k++) {
        s = order[k]
        printf "| %s | %d | %s | %s | %s | %.0f us | %.0f us | %.2f ms | %.2f us | %.0f%% | %.1f MiB | %.1f MiB | %d |\n", s, med[s, 3],
          ratio(med[s, 3], med["coredns", 3]), ratio(med[s, 3], med["unbound", 3]),
          ("ceiling" in n) ? sprintf("%.0f%%", 100 * med[s, 3] / med["ceiling", 3]) : "-",
          med[s, 4], med[s, 5], med[s, 6], med[s, 7], med[s, 11], med[s, 8] / 1024, med[s, 9] / 1024, med[s, 10]
      }
      print ""
      print "Response codes of the last measurement run (the mix is 3/4 NOERROR, 1/4 NXDOMAIN; the ceiling answers NOERROR to all):"
      for (k = 1; k <= np; k++) printf "- %s: %s%s\n", order[k], rcodes[order[k]],
        rcodes[order[k]] ~ /SERVFAIL|REFUSED|FORMERR/ ? " — **failures counted as answers**" : ""
      if (rounds > 1) {
        print ""
        print "QPS of each round:"
        for (k = 1; k <= np; k++) printf "- %s: %s\n", order[k], qpsrun[order[k]]
      }
      if (!("localdns" in n)) exit
      print ""
      print "| target (design.md) | localdns | reference | verdict |"
      print "|---|---:|---:|---|"
      l = "localdns"
      if ("coredns" in n) verdict("QPS >= 2x CoreDNS", med[l, 3], 2 * med["coredns", 3], "%d", ">=")
      best = 0; bestname = ""
      split("unbound dnsdist dnsmasq", cpeers, " ")
      for (k in cpeers) { p = cpeers[k]; if (!(p in n)) continue
        if (med[p, 3] > best) { best = med[p, 3]; bestname = p } }
      if (bestname != "") verdict("QPS >= every C/C++ peer (best: " bestname ")", med[l, 3], best, "%d", ">=")
      if ("ceiling" in n) verdict("QPS >= 90% of the ceiling", med[l, 3], 0.9 * med["ceiling", 3], "%d", ">=")
      if ("ceiling" in n) verdict("CPU/answer <= 1.10x the ceiling (us)", med[l, 7], 1.10 * med["ceiling", 7], "%.2f", "<=")
      lowest = 0; lowname = ""
      split("coredns unbound dnsdist dnsmasq", allpeers, " ")
      for (k in allpeers) { p = allpeers[k]; if (!(p in n)) continue
        if (lowname == "" || med[p, 4] < lowest) { lowest = med[p, 4]; lowname = p } }
      if (lowname != "") verdict("mean latency <= every peer (lowest: " lowname ", us)", med[l, 4], lowest, "%.1f", "<=")
      verdict("RSS after the 10k-name working set < 40 MiB", med[l, 8] / 1024, 40, "%.1f", "<")
      verdict("peak RSS (VmHWM) < 40 MiB", med[l, 9] / 1024, 40, "%.1f", "<")
    }
    function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "-" }
    function verdict(what, v, ref, f, op,   ok) {
      ok = (op == ">=" && v >= ref) || (op == "<=" && v <= ref) || (op == "<" && v < ref)
      printf "| %s | " f " | " f " | %s |\n", what, v, ref, ok ? "met" : "**missed**"
    }'
}

# command_line: how this run was started, with the settings that differ.
command_line() {
  local cmd="bench/peers.sh" v
  for v in BENCH_TABLES BENCH_PEERS BENCH_SLOW_PEERS BENCH_HOSTILE BENCH_PROFILE BENCH_SECONDS BENCH_P99_SECONDS \
    BENCH_SLOW_SECONDS BENCH_ROUNDS BENCH_NICE; do
    [ -z "${!v:-}" ] || cmd="$v=${!v@Q} $cmd"
  done
  echo "$cmd"
}

report() {
  cat <<EOF
# localdns — peer benchmark

Produced by \`$(command_line)\` (\`make bench\`) on $started.

Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r);
load average (1/5/15 min) $load_before at the start, $load_after at the end; niceness $NICE.
dnsperf $(dnsperf -h 2>&1 | awk '/^Version/ {print $2}'), load \`dnsperf ${LOAD[*]} -l $SECONDS_RUN\`
on 127.0.0.1 over \`bench/queries/hot.txt\` (400 names: A, AAAA, search-expansion NXDOMAIN, SRV
of 100 Services), after a warm-up pass over a 10k-name working set; every server in front of the same
\`hack/fakedns\` (TTL 5, SOA on negative answers). $ROUNDS round(s); the table holds medians.

Versions: $(for p in $PEERS; do printf '%s %s; ' "$p" "$(version_of "$p")"; done | sed 's/; $//').

EOF
  summary
  cat <<'EOF'

## How to read it
- **QPS**, **mean**, **max**: dnsperf's own figures for the measurement run. **p99**: from a separate
  run of the same load with `dnsperf -v` (one line per query; dnsperf 2.10 prints no percentiles), kept
  apart because printing every query costs the client CPU that the QPS run must not lose.
- **CPU/answer**: the server process's utime+stime delta (`/proc/<pid>/stat`, all threads) over the
  measurement run, divided by the answers dnsperf received. It does not depend on how fast dnsperf is, so
  it still ranks the servers when they all saturate the client (dnsperf and the server share the CPUs).
  **user**: the share of that CPU time spent in user space (the rest is the kernel: the socket calls,
  and on loopback the delivery of each reply to dnsperf's socket, which the sender pays for).
- On a shared machine the QPS of a round swings with the other work running (see the QPS of each
  round, and the load average above): dnsperf and the server get whatever CPU is left. CPU per answer
  is the steadier figure; compare QPS only within a round or over several rounds.
- **RSS after 10k names**: VmRSS right after the warm-up (the 10k-name working set and the hot names);
  **peak RSS**: VmHWM at the end.
- Ratios are of medians; `x CoreDNS` / `x unbound` are QPS ratios, `% of ceiling` is the share of the C
  responder's QPS.

## The servers
- **localdns**: `localdns-nodecache --listen 127.0.0.1:P --upstream 127.0.0.1:F --setup-interface=false
  --setup-rules=false` (TCP to the upstream, prefetch, defaults otherwise).
- **coredns**: NodeLocal DNSCache's Corefile for `cluster.local`, `in-addr.arpa`, `ip6.arpa`: errors,
  cache (success 9984 30, denial 9984 5), reload, loop, bind, forward with `force_tcp`, prometheus,
  health. Its `.` block (forward to the node's resolv.conf) is left out: nothing here may use it.
- **unbound**: 2 threads, SO_REUSEPORT, `module-config: "iterator"` (no DNSSEC validation), forward-zone
  `.` to the fake over TCP (`forward-tcp-upstream`), `do-not-query-localhost: no`, no chroot, no remote
  control, no root hints used (everything is forwarded), qname minimisation off, 64 upstream TCP
  connections per thread (the default 10 queues the warm-up's misses), `local-zone: "test." nodefault`
  (unbound answers the reserved `.test` itself by default; the slow kube-dns section's zones are there).
- **dnsdist**: 2 listeners on the same address (SO_REUSEPORT), a packet cache of 100k entries, the fake
  as its one backend over TCP (`tcpOnly`), health-checked with a cluster name,
  `setSecurityPollSuffix("")` (no security-poll query to a public name).
- **dnsmasq**: `--no-resolv --no-hosts --server=127.0.0.1#F --cache-size=10000` (single-threaded; it
  forwards over UDP, it has no TCP-upstream option).
- **ceiling**: `bench/ceiling.c`, one SO_REUSEPORT socket and thread per CPU, recvmmsg/sendmmsg batches
  of 64, every query answered with one canned A record (its question echoed, EDNS dropped); no lookup,
  no allocation. No DNS server can answer faster on this machine.

## Targets (design.md)
QPS >= 2x CoreDNS, >= every C/C++ peer (unbound, dnsdist, dnsmasq), >= 90% of the ceiling; CPU per
answer <= 1.10x the ceiling's; mean latency no worse than any peer's; RSS under 40 MiB after a
10k-name working set.
EOF
}

slow_report() {
  local limit
  limit=$(awk '$1 == "limits:" {l = 1} l && $1 == "memory:" {print $2; exit}' manifests/base/nodecache.yaml)
  cat <<EOF
## Slow kube-dns

Produced by \`$(command_line)\` (\`make bench\`) on $slow_started; $(nproc) CPUs, load average (1/5/15 min)
$slow_load_before at the start, $slow_load_after at the end; niceness $NICE.

kube-dns is the real CoreDNS on 127.0.0.1 (\`bench/slowkubedns kube-dns\`): \`cluster.local\` from a file zone (the
fake kube-dns's zone, 10,000 Services, TTL 5) answered at once, as the kubernetes plugin does; \`ext.test\` after
200 ms (\`erratic { delay 1 200ms }\`, which like the forward plugin waiting on a slow resolver holds up the TCP
connection's next query); \`stuck.test\` never (\`erratic { drop 1 }\`); \`big.test\` a 60,000-byte TXT record for
every name. Each server, fresh, in front of it for ${SLOW_SECONDS} s (\`bench/slowkubedns load\`): 40 outstanding unique
\`ext.test\` names (at most 200/s, from 8 client addresses) while 50/s unique cluster names, all misses, from
another address are timed. Clients use UDP and wait 5 s for a reply. The servers are set up as in the peer table
(TCP to kube-dns), except that CoreDNS also forwards \`.\` to kube-dns the same way (\`force_tcp\`, its cache);
localdns, unbound and dnsdist forward every name there anyway.

Versions: kube-dns $("$COREDNS" -version 2>/dev/null | head -1); $(for p in $SLOW_PEERS; do printf '%s %s; ' "$p" "$(version_of "$p")"; done | sed 's/; $//').

$("$work/slowkubedns" report -memory-limit "$limit" "${slow_files[@]}")

How to read it: **cluster-name misses**: the timed queries; p50/p99/max of their replies' latency; **other**:
replies neither NOERROR nor SERVFAIL, and broken connections; **no reply**: nothing within 5 s. **external
names**: the \`ext.test\` queries answered or not (kube-dns answers every one with NOERROR after 200 ms). Under
the hostile loads, the hostile client is 127.0.3.1 and the other client 127.0.2.1; each load is bounded in
count and time (\`bench/slowkubedns hostile\`). Peak RSS counts the pages a process has touched: buffers
allocated but never written (a TCP flood's) add to the Go heap but little to a fresh process's RSS.
unbound pipelines up to \`max-reuse-tcp-queries\` (default 200) queries on a reused TCP stream, so its misses
wait behind slow names on CoreDNS's serial connections, as localdns's did before it kept one query per connection.

Targets (design.md): cluster-name misses p99 <= 20 ms, max < 200 ms, 0 SERVFAIL under the external load;
external names answered when kube-dns answers them; RSS under 60% of the DaemonSet's memory limit under
every hostile load.
EOF
}

# section NAME: the part of the existing results file that NAME (peers, slow
# or cluster) wrote, without trailing blank lines; empty when absent.
section() {
  [ -f "$RESULTS" ] || return 0
  awk -v want="$1" '
    BEGIN { s = "peers" }
    /^## Slow kube-dns/ { s = "slow" }
    /^## In the cluster/ { s = "cluster" }
    s != want { next }
    /^$/ { blank++; next }
    { for (; blank > 0; blank--) print ""; print }' "$RESULTS"
}

# The sections measured now replace their old text; the others, and the
# in-cluster section of `make bench-cluster`, are kept.
if measuring peers; then peers_part=$(report); else peers_part=$(section peers); fi
if measuring slow; then slow_part=$(slow_report); else slow_part=$(section slow); fi
cluster_part=$(section cluster)
! measuring peers || echo "$peers_part"
! measuring slow || printf '\n%s\n' "$slow_part"
for part in "$peers_part" "$slow_part" "$cluster_part"; do
  [ -z "$part" ] || printf '%s\n\n' "$part"
done | sed '$d' >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
log "written to $RESULTS"
