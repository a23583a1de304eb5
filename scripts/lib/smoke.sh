# shellcheck shell=bash
# Checks shared by scripts/dev-smoke.sh, scripts/prod-smoke.sh and scripts/check-artifacts.sh
# (sourced, not run).
# Each check prints what it verified, or fails the script with `smoke_fail`.

# A script may define smoke_on_fail (e.g. to print the proxy's log) before failing.
smoke_fail() {
  if declare -F smoke_on_fail >/dev/null; then smoke_on_fail >&2 || true; fi
  echo "SMOKE FAILED: $*" >&2
  exit 1
}

smoke_ok() {
  echo "ok: $*"
}

# HTTP status of a request; extra arguments go to curl. Prints 000 when nothing answers.
smoke_code() {
  local url=$1
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" "$url" || true
}

# Polls until `url` answers `code`, for at most `seconds`; fails at once when the process
# smoke_start started has exited.
smoke_wait_code() {
  local url=$1 code=$2 seconds=$3 got
  local deadline=$((SECONDS + seconds))
  while :; do
    got=$(smoke_code "$url")
    [ "$got" = "$code" ] && return 0
    if [ -n "${SMOKE_PID:-}" ] && ! kill -0 "$SMOKE_PID" 2>/dev/null; then
      smoke_fail "the process under test exited while waiting for $url to answer $code"
    fi
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# Sum of the samples of `name` whose labels include every given `label="value"`.
# Prints nothing when no sample matches.
smoke_sum() {
  local file=$1 name=$2
  shift 2
  awk -v name="$name" -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    /^#/ { next }
    {
      split($0, parts, /[{ ]/)
      if (parts[1] != name) next
      labels = ($0 ~ /{/) ? substr($0, index($0, "{"), index($0, "}") - index($0, "{") + 1) : ""
      for (i = 1; i <= n; i++) if (index(labels, w[i]) == 0) next
      sum += $NF; found = 1
    }
    END { if (found) printf "%.17g\n", sum }
  ' "$file"
}

# Fails unless the sum of the matching samples satisfies `op value` (awk comparison).
smoke_expect() {
  local file=$1 name=$2 op=$3 value=$4
  shift 4
  local got
  got=$(smoke_sum "$file" "$name" "$@")
  [ -n "$got" ] || smoke_fail "no sample of $name{$*} in the scrape"
  awk -v g="$got" -v v="$value" "BEGIN { exit !(g $op v) }" ||
    smoke_fail "$name{$*} is $got, expected $op $value"
  smoke_ok "$name{$*} = $got ($op $value)"
}

# Fails unless the scrape has the family (a TYPE line).
smoke_family() {
  grep -q "^# TYPE $2 " "$1" || smoke_fail "family $2 missing from the scrape"
}

# Families the proxy exports from its first scrape on, whatever the traffic.
SMOKE_ALWAYS_FAMILIES="codex_worker_ready codex_worker_restarts_total codex_worker_backoff_ms codex_streams_active codex_maintenance_mode process_cpu_seconds_total"

smoke_check_always_families() {
  local f
  for f in $SMOKE_ALWAYS_FAMILIES; do smoke_family "$1" "$f"; done
  smoke_ok "families present: $SMOKE_ALWAYS_FAMILIES"
}

# Every histogram's +Inf bucket equals its _count; no label value is over 64 characters.
smoke_check_consistency() {
  local file=$1 bad
  bad=$(awk '
    function key(line, prefix) {
      sub(prefix, "", line); sub(/ [^ ]*$/, "", line); sub(/le="\+Inf"/, "", line)
      gsub(/\{,/, "{", line); gsub(/,,/, ",", line); gsub(/,\}/, "}", line); sub(/^\{\}$/, "", line)
      return line
    }
    /^codex_http_latency_ms_bucket\{.*le="\+Inf"/ { inf[key($0, "^codex_http_latency_ms_bucket")] = $NF }
    /^codex_http_latency_ms_count/ { cnt[key($0, "^codex_http_latency_ms_count")] = $NF }
    END { for (k in cnt) if (inf[k] != cnt[k]) print "codex_http_latency_ms" k ": +Inf bucket " inf[k] " != count " cnt[k] }
  ' "$file")
  [ -z "$bad" ] || smoke_fail "$bad"
  bad=$(grep -v '^#' "$file" | grep -oE '="[^"]{65,}"' | head -1 || true)
  [ -z "$bad" ] || smoke_fail "a label value is over 64 characters: $bad"
  smoke_ok "latency +Inf buckets equal their counts; no label value over 64 characters"
}

# Lint the exposition with promtool when it is installed: only the findings the parity
# names force (docs/metrics.md) are accepted.
smoke_check_promtool() {
  local file=$1 findings
  if ! command -v promtool >/dev/null; then
    echo "note: promtool not installed, exposition lint skipped"
    return 0
  fi
  findings=$(promtool check metrics <"$file" 2>&1 || true)
  findings=$(printf '%s\n' "$findings" | grep -v '^$' |
    grep -vE '^codex_[a-z_]+_ms:? metric names should not contain abbreviated units$' |
    grep -vE "^codex_http_latency_summary_ms:? metric names? should not include type 'summary'$" || true)
  [ -z "$findings" ] || smoke_fail "promtool check metrics: $findings"
  smoke_ok "promtool check metrics: only the documented parity findings"
}

# codex_worker_ready agrees with /readyz, and codex_worker_restarts_total with the restart
# count that /readyz (or /healthz) reports. The scrape is taken again on a mismatch, since a
# restart may fall between the two requests. Leaves the scrape in `scrape` and the restart
# count in SMOKE_RESTARTS.
smoke_check_worker_state() {
  local base=$1 scrape=$2 tries=0 code ready restarts body reported
  shift 2
  while :; do
    code=$(curl -s -o "$scrape.readyz" -w '%{http_code}' --max-time 10 "$base/readyz" || true)
    curl -s --max-time 10 "$base/healthz" >"$scrape.healthz" || true
    "$@" >"$scrape" || smoke_fail "scrape failed"
    ready=$(smoke_sum "$scrape" codex_worker_ready)
    restarts=$(smoke_sum "$scrape" codex_worker_restarts_total)
    body=$(cat "$scrape.readyz" "$scrape.healthz")
    reported=$(printf '%s' "$body" | grep -oE '"restarts"[[:space:]]*:[[:space:]]*[0-9]+' | head -1 | grep -oE '[0-9]+$' || true)
    local problem=""
    case "$code" in
      200) [ "$ready" = 1 ] || problem="/readyz is 200 but codex_worker_ready is ${ready:-missing}" ;;
      503) [ "$ready" = 0 ] || problem="/readyz is 503 but codex_worker_ready is ${ready:-missing}" ;;
      *) problem="/readyz answered $code" ;;
    esac
    [ -n "$restarts" ] || problem="codex_worker_restarts_total missing"
    if [ -z "$problem" ] && [ -n "$reported" ] && [ "$reported" != "${restarts%.*}" ]; then
      problem="/readyz or /healthz reports $reported restarts, codex_worker_restarts_total is $restarts"
    fi
    [ -z "$problem" ] && break
    tries=$((tries + 1))
    [ "$tries" -lt 3 ] || smoke_fail "$problem"
    sleep 1
  done
  smoke_ok "/readyz $code agrees with codex_worker_ready $ready; restarts $restarts${reported:+ (reported $reported)}"
  # shellcheck disable=SC2034 # read by the sourcing script
  SMOKE_RESTARTS=${restarts%.*}
}

# A port nothing listens on at the moment, below the kernel's ephemeral range: a port in
# that range can be taken as the local end of any outgoing connection (curl's, the test
# servers') between this check and the proxy's bind, which made a CI run fail with
# "Address already in use".
smoke_free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "${low:-0}" -gt 21000 ] 2>/dev/null || low=32768
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % (low - 20000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# Runs a command in the background in `dir`, output to dir/proxy.log; sets SMOKE_PID.
smoke_start() {
  local dir=$1
  shift
  (cd "$dir" && exec "$@" >"$dir/proxy.log" 2>&1) &
  SMOKE_PID=$!
}

# Stops what smoke_start started: SIGTERM, up to 5 s for a graceful exit, then SIGKILL.
smoke_stop() {
  local pid=${SMOKE_PID:-}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  SMOKE_PID=""
}
