# Sourced by hack/provision-k8s.sh and e2e/hack/provision-coredns.sh, whose
# first run compiles for many minutes: reports what is being built, how far
# it is and for how long, so a first build does not look hung.
#
# PROGRESS_EVERY (seconds, default 20) is how often a report is printed.

# stale_packages PKG [FLAG...]: how many packages building PKG with the
# build flags FLAG would compile (what go list calls stale, given the build
# cache); empty when go list cannot tell.
stale_packages() {
  local listed
  listed="$(go list -deps -f '{{if .Stale}}.{{end}}' "$@" 2>/dev/null)" || return 0
  grep -c . <<<"$listed" || true
}

# with_progress LABEL TOTAL CMD...: runs CMD, typically `go build -v` or
# `go install -v`, whose lines that are import paths are the packages it
# compiled; every PROGRESS_EVERY seconds, prints on stderr
#   LABEL: 412/1790 packages compiled, 3m05s
# (without "/TOTAL" when TOTAL is empty or exceeded; just the time when
# nothing is counted), one line rewritten in place on a terminal. CMD's
# other lines (errors, "go: downloading") pass through. Returns CMD's
# status.
with_progress() {
  local label=$1 total=$2
  shift 2
  "$@" 2>&1 | _progress_filter "$label" "$total"
  return "${PIPESTATUS[0]}"
}

_progress_filter() {
  local label=$1 total=$2 every=${PROGRESS_EVERY:-20}
  local start=$SECONDS last=$SECONDS compiled=0 line status tty=false pending=false
  [ -t 2 ] && tty=true
  _progress_report() {
    local elapsed=$((SECONDS - start)) text
    text="$label: $(printf '%dm%02ds' $((elapsed / 60)) $((elapsed % 60)))"
    if [ -n "$total" ] && [ "$compiled" -le "$total" ]; then
      text="$label: $compiled/$total packages compiled, ${text#"$label: "}"
    elif [ "$compiled" -gt 0 ]; then # no estimate, or it fell short
      text="$label: $compiled packages compiled, ${text#"$label: "}"
    fi
    if $tty; then printf '\r\033[K%s' "$text" >&2; pending=true; else printf '%s\n' "$text" >&2; fi
  }
  while :; do
    if IFS= read -r -t "$every" line; then
      if [[ $line =~ ^[A-Za-z0-9._~/+-]+$ ]]; then
        compiled=$((compiled + 1))
      else
        if $pending; then printf '\r\033[K' >&2; pending=false; fi
        printf '%s\n' "$line" >&2
      fi
    else
      status=$?
      [ "$status" -gt 128 ] || break # end of input; above 128: the timeout
    fi
    if ((SECONDS - last >= every)); then
      _progress_report
      last=$SECONDS
    fi
  done
  if $pending; then printf '\n' >&2; fi
}
