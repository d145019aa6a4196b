#!/usr/bin/env bash
# Run the whole test suite against real Redis, PostgreSQL and Chromium: use what answers,
# start (or, as root on Debian, install) what does not.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
RUN_DIR=$(mktemp -d -t flowsite-test-XXXXXX)
cleanup() {
  [ -f "$RUN_DIR/redis.pid" ] && kill "$(cat "$RUN_DIR/redis.pid")" 2>/dev/null || true
  if [ -f "$RUN_DIR/pg/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$RUN_DIR/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

say() { echo "test.sh: $*"; }
free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $* with apt-get"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    say "please install: $* (Debian/Ubuntu: sudo apt-get install $*)"; exit 1
  fi
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# --- Redis ---------------------------------------------------------------------------------------
command -v redis-server >/dev/null || apt_install redis-server
if [ -z "${REDIS_URL:-}" ]; then
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    export REDIS_URL=redis://127.0.0.1:6379/15
  else
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
      --dir "$RUN_DIR" --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log"
    export REDIS_URL=redis://127.0.0.1:$port/15
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi
say "Redis: $REDIS_URL"

# --- PostgreSQL ----------------------------------------------------------------------------------
if [ -z "${DATABASE_URL:-}" ]; then
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/flowsite
  else
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
    PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
    port=$(free_port)
    mkdir -p "$RUN_DIR/pg" && chmod 777 "$RUN_DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$RUN_DIR/pg"
    as_pg "$PG_BIN/initdb" -D "$RUN_DIR/pg" -U postgres -A trust >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$RUN_DIR/pg" -o "-p $port -k $RUN_DIR -c listen_addresses=127.0.0.1" \
      -l "$RUN_DIR/pg.log" -w start >/dev/null
    export DATABASE_URL=postgres://postgres@127.0.0.1:$port/flowsite
  fi
fi
say "PostgreSQL: ${DATABASE_URL%%@*}@…"

# --- Chromium for the browser tests --------------------------------------------------------------
[ -x /usr/bin/chromium ] || apt_install chromium
export CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}

exec "$VENV/bin/pytest" tests -q -p no:cacheprovider "$@"
