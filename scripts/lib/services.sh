# Shared by scripts/test and the benchmark scripts: finds or starts a real PostgreSQL and starts a
# throwaway Garage (S3) on loopback. Source it after `set -euo pipefail`; it installs an EXIT trap
# that stops what it started.

GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
WORK="$(mktemp -d -t media-api-test.XXXXXX)"
GARAGE_PID=""
PG_STARTED=""
SERVICES_STARTED=()  # pids from start_media_service, stopped at exit even when a run fails partway

log() { printf "[%s] %s\n" "$(basename "$0")" "$*" >&2; }

# BENCH_CPUS=split: PostgreSQL (a throwaway cluster) and Garage run on the last CPU alone, and this
# script with everything it starts (the service, the load clients, pgbench) on the others. That is
# how the service is deployed — S3 and the database are other machines, so the service's CPU does
# not come out of theirs — and on a 2-core machine it is the only way to see whether the service
# keeps up with them rather than how three processes share two cores. BENCH_CPUS=shared (the
# default): everything shares every CPU.
BENCH_CPUS="${BENCH_CPUS:-shared}"
BACKEND_PIN=()
case "$BENCH_CPUS" in
  shared) ;;
  split)
    cpus="$(nproc)"
    [ "$cpus" -ge 2 ] || { log "BENCH_CPUS=split needs at least 2 CPUs; this machine has $cpus"; exit 1; }
    command -v taskset >/dev/null || { log "BENCH_CPUS=split needs taskset (util-linux)"; exit 1; }
    BACKEND_PIN=(taskset -c "$((cpus - 1))")
    taskset -p -c "0-$((cpus - 2))" $$ >/dev/null
    log "CPUs split: PostgreSQL and Garage on CPU $((cpus - 1)), the service and its clients on 0-$((cpus - 2))"
    ;;
  *) log "BENCH_CPUS must be shared or split, not $BENCH_CPUS"; exit 1 ;;
esac

cleanup() {
  local status=$?
  local pid
  for pid in "${SERVICES_STARTED[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  if [ -n "$GARAGE_PID" ] && kill -0 "$GARAGE_PID" 2>/dev/null; then
    kill "$GARAGE_PID" 2>/dev/null || true
    wait "$GARAGE_PID" 2>/dev/null || true
    log "stopped Garage"
  fi
  if [ -n "$PG_STARTED" ]; then
    as_pg_owner pg_ctl -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
    log "stopped the throwaway PostgreSQL cluster"
  fi
  if [ "$status" -ne 0 ] && [ -f "$WORK/garage/garage.log" ]; then
    log "last lines of the Garage log:"
    tail -n 20 "$WORK/garage/garage.log" >&2 || true
  fi
  if [ "$status" -ne 0 ] && [ -f "$WORK/server.log" ]; then
    log "last lines of the media-api log (every service started here):"
    tail -n 40 "$WORK/server.log" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---------------------------------------------------------------- PostgreSQL
pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -d "$1"; }

ensure_postgres() {
  if [ "$BENCH_CPUS" = split ]; then
    # A cluster of its own, started on the backend CPU (the machine's server shares every CPU).
    command -v initdb >/dev/null 2>&1 || { log "BENCH_CPUS=split needs initdb and pg_ctl on PATH"; exit 1; }
    start_throwaway_postgres
    return
  fi
  if [ -n "${DATABASE_URL:-}" ]; then
    log "PostgreSQL: using \$DATABASE_URL"
    return
  fi
  local local_url="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_ready "$local_url" || (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    export DATABASE_URL="$local_url"
    log "PostgreSQL: using the server on 127.0.0.1:5432"
    return
  fi
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    start_throwaway_postgres
    return
  fi
  log "No PostgreSQL found. Set DATABASE_URL, run a server on 127.0.0.1:5432 (user postgres, trust auth),"
  log "or install the server binaries (Debian: apt-get install postgresql) so a throwaway cluster can be made."
  exit 1
}

# initdb refuses to run as root: as root, the cluster is owned by the `postgres` system user.
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_throwaway_postgres() {
  local port; port="$(free_port)"
  mkdir -p "$WORK/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$WORK" "$WORK/pg"
  as_pg_owner initdb -D "$WORK/pg" -U postgres -A trust >/dev/null
  as_pg_owner "${BACKEND_PIN[@]}" pg_ctl -D "$WORK/pg" -o "-p $port -k $WORK -c listen_addresses=127.0.0.1" -l "$WORK/pg/server.log" -w start >/dev/null
  PG_STARTED=1
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  log "PostgreSQL: started a throwaway cluster on 127.0.0.1:$port"
}

drop_stale_test_databases() {
  command -v psql >/dev/null 2>&1 || return 0
  local stale
  stale="$(psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'mediatest\_%'" 2>/dev/null || true)"
  for db in $stale; do
    # Without FORCE: a database another run (a concurrent scripts/test) is using is left alone.
    psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
  done
}

# ---------------------------------------------------------------- Garage
find_garage() {
  if [ -n "${GARAGE_BIN:-}" ]; then echo "$GARAGE_BIN"; return; fi
  if command -v garage >/dev/null 2>&1; then command -v garage; return; fi
  if [ -x "$HOME/.cargo/bin/garage" ]; then echo "$HOME/.cargo/bin/garage"; return; fi
  log "Garage not found: installing garage $GARAGE_VERSION from crates.io (about 8 minutes, once per machine)"
  cargo install garage --locked --version "$GARAGE_VERSION" >&2
  echo "$HOME/.cargo/bin/garage"
}

start_garage() {
  local bin="$1" dir="$WORK/garage"
  mkdir -p "$dir"
  local s3_port rpc_port admin_port
  s3_port="$(free_port)"; rpc_port="$(free_port)"; admin_port="$(free_port)"
  cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
  local garage=("$bin" -c "$dir/garage.toml")
  RUST_LOG=warn "${BACKEND_PIN[@]}" "${garage[@]}" server >"$dir/garage.log" 2>&1 &
  GARAGE_PID=$!
  export GARAGE_BIN="$bin"
  for _ in $(seq 1 60); do
    if "${garage[@]}" status >/dev/null 2>&1; then break; fi
    kill -0 "$GARAGE_PID" 2>/dev/null || { log "Garage exited at start"; exit 1; }
    sleep 0.5
  done
  local node; node="$("${garage[@]}" node id -q 2>/dev/null | cut -d@ -f1)"
  "${garage[@]}" layout assign -z dc1 -c 1G "$node" >/dev/null
  "${garage[@]}" layout apply --version 1 >/dev/null
  local key_id="GK$(random_hex 12)" secret; secret="$(random_hex 32)"
  "${garage[@]}" key import --yes -n media-api-test "$key_id" "$secret" >/dev/null
  "${garage[@]}" bucket create media-test >/dev/null
  "${garage[@]}" bucket allow --read --write --owner media-test --key "$key_id" >/dev/null
  export MEDIA_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  export MEDIA_TEST_S3_REGION="garage"
  export MEDIA_TEST_S3_BUCKET="media-test"
  export MEDIA_TEST_S3_ACCESS_KEY="$key_id"
  export MEDIA_TEST_S3_SECRET_KEY="$secret"
  log "Garage: $("$bin" --version 2>/dev/null | head -n1) serving S3 on $MEDIA_TEST_S3_ENDPOINT (bucket media-test)"
}


# ---------------------------------------------------------------- the service (benchmarks)
# Starts $CARGO_TARGET_DIR (default target)/release/media-api on a free port against $DATABASE_URL (a fresh database) and the
# Garage above, with the rate limits and the per-IP connection cap off (capacity is measured, not the
# limits: every load client is 127.0.0.1). Extra VAR=value
# arguments are added to its environment. Sets SERVER (pid), BASE, TOKEN and BENCH_URL;
# stop_media_service stops it and drops the database.
start_media_service() {
  local db="mediabench_$(random_hex 4)"
  psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
  BENCH_URL="${DATABASE_URL%/*}/$db"
  local port; port="$(free_port)"
  env MEDIA_API_HOST=127.0.0.1 MEDIA_API_PORT="$port" MEDIA_DATABASE_URL="$BENCH_URL" \
    MEDIA_KEYS_DIR="$WORK/keys" MEDIA_DATA_DIR="$WORK/data" MEDIA_STORAGE_PREFIX="bench-$(random_hex 4)" \
    MEDIA_S3_ENDPOINT="$MEDIA_TEST_S3_ENDPOINT" MEDIA_S3_REGION="$MEDIA_TEST_S3_REGION" \
    MEDIA_S3_BUCKET="$MEDIA_TEST_S3_BUCKET" MEDIA_S3_ACCESS_KEY="$MEDIA_TEST_S3_ACCESS_KEY" \
    MEDIA_S3_SECRET_KEY="$MEDIA_TEST_S3_SECRET_KEY" MEDIA_PRESIGN_MAX_TTL=1h LOG_LEVEL=error \
    MEDIA_RATE_LIMIT_RPS=0 MEDIA_RATE_LIMIT_IP_RPS=0 MEDIA_RATE_LIMIT_READYZ_RPS=0 MEDIA_MAX_CONNECTIONS_PER_IP=0 "$@" \
    "${CARGO_TARGET_DIR:-target}/release/media-api" >>"$WORK/server.log" 2>&1 &
  SERVER=$!
  SERVICES_STARTED+=("$SERVER")
  BASE="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  TOKEN="$(MEDIA_KEYS_DIR="$WORK/keys" "${CARGO_TARGET_DIR:-target}/release/media-api" token --tenant bench --sub bench --ttl 2h 2>/dev/null)"
}

stop_media_service() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  local kept=() pid
  for pid in "${SERVICES_STARTED[@]}"; do [ "$pid" = "$SERVER" ] || kept+=("$pid"); done
  SERVICES_STARTED=("${kept[@]}")
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS ${BENCH_URL##*/} WITH (FORCE)" >/dev/null 2>&1 || true
}

# A small PNG uploaded to the service started above; prints its id.
small_media() {
  curl -fsS -H "Authorization: Bearer $TOKEN" -H 'content-type: image/png' \
    --data-binary @<(printf '\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR'; head -c 4096 /dev/urandom) "$BASE/v1/media" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# A wrk Lua script that presigns the given ids in turn (each wrk thread from its own offset).
presign_script() {
  printf 'local ids = {'; printf '"%s",' "$@"; printf '}\n'
  cat <<'LUA'
i = 0
setup = function(thread) thread:set("i", math.random(#ids)) end
request = function()
  i = i + 1
  return wrk.format("GET", "/v1/media/" .. ids[(i % #ids) + 1] .. "/presign")
end
LUA
}

# Resident set (VmRSS) and its peak (VmHWM) of a process, in KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# CPU ticks (user + system) process $1 has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Waits (10 s at most) until process $1 is idle: under 5 % of a CPU over half a second. A benchmark
# step that starts while Garage still works through the last one's aftermath (a delete's metadata,
# a completed upload's copy) pays for it.
wait_idle() {
  local pid="$1" hz before after
  hz="$(getconf CLK_TCK)"
  for _ in $(seq 1 20); do
    before="$(cpu_ticks "$pid")"; sleep 0.5; after="$(cpu_ticks "$pid")"
    [ $(((after - before) * 100)) -lt $((hz * 5 / 2)) ] && return 0
  done
  log "process $pid still busy after 10 s; going on"
}

# ---------------------------------------------------------------- Redis (shared limits)
# A throwaway redis-server (Debian's `redis-server`, installed with apt-get when missing) on a free
# loopback port, for the tests of limits shared across replicas (MEDIA_REDIS_URL). We always start
# our own rather than reuse one on 6379: the tests write keys, and an instance of our own cannot
# hold another run's (or another program's) buckets and leases. No persistence (--save '',
# --appendonly no); its files live under $WORK and it is stopped by the EXIT trap.
# Exports MEDIA_TEST_REDIS_URL and REDIS_SERVER_BIN (tests start and stop their own from it).
REDIS_PID=""

find_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    log "redis-server not found: installing Debian's redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
      || { log "could not install redis-server (apt-get install redis-server)"; exit 1; }
  fi
  command -v redis-server
}

start_redis() {
  local bin="$1" dir="$WORK/redis" port
  mkdir -p "$dir"
  port="$(free_port)"
  "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no --dir "$dir" \
    >"$dir/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ]; then break; fi
    kill -0 "$REDIS_PID" 2>/dev/null || { log "redis-server exited at start:"; cat "$dir/redis.log" >&2; exit 1; }
    sleep 0.1
  done
  [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] || { log "redis-server did not answer on port $port"; exit 1; }
  export MEDIA_TEST_REDIS_URL="redis://127.0.0.1:$port"
  export REDIS_SERVER_BIN="$bin"
  log "Redis: $("$bin" --version | cut -d' ' -f3) on $MEDIA_TEST_REDIS_URL"
}

# Stops the Redis above; keeps $? for the cleanup that runs after it.
stop_redis() {
  local status=$?
  if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    log "stopped Redis"
  fi
  return "$status"
}

# Chain onto the EXIT trap set above (whatever it is), Redis first. The handlers run with errexit
# off and see the script's own exit status: under `set -e` a failing script's status made the chain
# stop after `stop_redis`, so `cleanup` never ran (Garage, services and $WORK were left behind).
_redis_previous_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
# shellcheck disable=SC2064
trap "_exit_status=\$?; set +e; stop_redis; (exit \$_exit_status); ${_redis_previous_trap:-:}" EXIT INT TERM
# ---------------------------------------------------------------- HAProxy (the multi-replica tests)
# Exports HAPROXY_BIN for tests/it/fleet.rs: haproxy on PATH or /usr/sbin/haproxy, else Debian's
# package. Installing it may start a system haproxy service; the tests ignore it (they run their
# own haproxy in the foreground, with their own configuration, on free loopback ports).
find_haproxy() {
  if [ -n "${HAPROXY_BIN:-}" ] && [ -x "$HAPROXY_BIN" ]; then export HAPROXY_BIN; return; fi
  local bin; bin="$(command -v haproxy 2>/dev/null || true)"
  if [ -z "$bin" ] && [ -x /usr/sbin/haproxy ]; then bin=/usr/sbin/haproxy; fi
  if [ -z "$bin" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      log "HAProxy not found: install it (Debian: apt-get install haproxy) or set HAPROXY_BIN"
      exit 1
    fi
    log "HAProxy not found: installing Debian's haproxy package"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >&2
    bin="$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)"
  fi
  export HAPROXY_BIN="$bin"
  log "HAProxy: $("$bin" -v 2>/dev/null | head -n1)"
}
