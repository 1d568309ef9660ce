# Sourced by hack/demo.sh and hack/bench-dnsperf.sh: the node cache on
# loopback in front of the fake kube-dns (hack/fakedns), node setup off, so no
# root is needed. The caller sets PROG (message prefix), DNS_PORT,
# UPSTREAM_PORT, METRICS_PORT and NODECACHE (built when missing); FAKEDNS, a
# prebuilt hack/fakedns, is built into the work directory when empty;
# LOOPBACK, where both serve DNS, is 127.0.0.1 unless set (::1: over IPv6).
# Everything started is killed, and the work directory removed, on exit.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM HUP PIPE

die() { echo "$PROG: $*" >&2; exit 1; }

LOOPBACK=${LOOPBACK:-127.0.0.1}
# hostport PORT: LOOPBACK:PORT, an IPv6 address in brackets.
hostport() {
  case $LOOPBACK in
    *:*) printf '[%s]:%s' "$LOOPBACK" "$1" ;;
    *) printf '%s:%s' "$LOOPBACK" "$1" ;;
  esac
}

# need CMD...: every command must be on PATH.
need() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null || die "$cmd is needed (hack/install-deps.sh)"
  done
}

# http_get PATH: GET from the node cache's ops listener (bash /dev/tcp; no curl).
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$1" "$PROG" >&3
  cat <&3
  exec 3<&-
}

# build: the node cache when $NODECACHE is missing, fakedns when $FAKEDNS is empty.
build() {
  [ -x "$NODECACHE" ] || { echo "$PROG: building $NODECACHE"; go build -o "$NODECACHE" ./cmd/localdns-nodecache; }
  if [ -z "${FAKEDNS:-}" ]; then FAKEDNS="$work/fakedns"; go build -o "$FAKEDNS" ./hack/fakedns; fi
}

# start_fakedns SERVICES: the fake kube-dns on LOOPBACK:$UPSTREAM_PORT; its pid in $upstream.
start_fakedns() {
  "$FAKEDNS" --listen "$(hostport "$UPSTREAM_PORT")" --services "$1" 2>"$work/fakedns.log" &
  upstream=$!
  pids+=("$upstream")
}

# The node cache's command line.
nodecache_cmd=("$NODECACHE" --listen "$(hostport "$DNS_PORT")" --upstream "$(hostport "$UPSTREAM_PORT")"
               --setup-interface=false --setup-rules=false --metrics-addr "127.0.0.1:$METRICS_PORT")

# start_nodecache: runs nodecache_cmd, its log in $work/nodecache.log and its
# pid in $cache, and waits up to 10 s for /readyz (listening, and kube-dns
# answered the start-up probe); fails at once if it exits meanwhile.
start_nodecache() {
  "${nodecache_cmd[@]}" 2>"$work/nodecache.log" &
  cache=$!
  pids+=("$cache")
  for _ in $(seq 100); do
    if http_get /readyz 2>/dev/null | grep -q '^ok'; then return 0; fi
    kill -0 "$cache" 2>/dev/null || { cat "$work/nodecache.log" >&2; die "the node cache exited"; }
    sleep 0.1
  done
  http_get /readyz | grep -q '^ok' || { cat "$work/nodecache.log" >&2; die "the node cache is not ready after 10 s"; }
}
