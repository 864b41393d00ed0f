#!/usr/bin/env bash
# Start (or stop) the services the scale-out test needs, on loopback only:
#   a throw-away PostgreSQL cluster (Debian packages) with databases `optuna` and `mlflow`,
#   and an `mlflow server` whose backend store is that PostgreSQL.
# Usage: tools/services.sh start DIR   -> prints the export lines for BLOODML_TEST_PG_URL / BLOODML_TEST_MLFLOW_URI
#        tools/services.sh stop DIR
set -euo pipefail
action=${1:?start|stop}
dir=$(realpath -m "${2:?state directory}")
PG_PORT=${PG_PORT:-55432}
MLFLOW_PORT=${MLFLOW_PORT:-55000}
VENV=${VENV:-.venv}

pg_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && echo "$found"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$action" in
start)
  if [ -z "$(pg_bin)" ]; then
    echo "installing PostgreSQL (Debian packages)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  fi
  bin=$(pg_bin)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/pg/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$dir/pg" -U postgres --auth=trust >/dev/null
  fi
  as_postgres "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w \
    -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
  for db in optuna mlflow; do
    as_postgres "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
      | grep -q 1 || as_postgres "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db"
  done
  mkdir -p "$dir/artifacts"
  nohup "$VENV/bin/mlflow" server --backend-store-uri "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "$dir/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 \
    >"$dir/mlflow.log" 2>&1 &
  echo $! >"$dir/mlflow.pid"
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null || break
    sleep 1
  done
  curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null || { echo "mlflow server did not start:" >&2; tail -20 "$dir/mlflow.log" >&2; exit 1; }
  echo "export BLOODML_TEST_PG_URL=postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/optuna"
  echo "export BLOODML_TEST_MLFLOW_URI=http://127.0.0.1:$MLFLOW_PORT"
  ;;
stop)
  [ -f "$dir/mlflow.pid" ] && { pkill -P "$(cat "$dir/mlflow.pid")" 2>/dev/null || true; kill "$(cat "$dir/mlflow.pid")" 2>/dev/null || true; rm -f "$dir/mlflow.pid"; }
  bin=$(pg_bin) && [ -f "$dir/pg/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null || true
  ;;
esac
