#!/usr/bin/env bash
# Start (or stop) the services scale-out needs, on loopback only, with authentication and no secret on a command line:
#   a throw-away PostgreSQL cluster (Debian packages) with databases `optuna` and `mlflow`, password (scram-sha-256)
#   over TCP; an `mlflow server` with MLflow's basic-auth app (admin + a `worker` user) on that PostgreSQL.
# Passwords are generated here and kept in DIR/secrets (mode 0700, files 0600): `postgres` (the database),
# `mlflow-admin`, `mlflow-worker`, and `pgpass` (libpq's password file: clients connect with PGPASSFILE set).
# Usage: tools/services.sh start DIR   -> prints export lines (no secret in them: the password is read from its file)
#        tools/services.sh stop DIR
set -euo pipefail
action=${1:?start|stop}
dir=$(realpath -m "${2:?state directory}")
PG_PORT=${PG_PORT:-55432}
MLFLOW_PORT=${MLFLOW_PORT:-55000}
VENV=$(realpath -m "${VENV:-.venv}")
secrets="$dir/secrets"

pg_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && echo "$found"
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

new_secret() {  # a random password in a file only its owner reads
  [ -s "$1" ] || (umask 077; "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$1")
}

case "$action" in
start)
  if [ -z "$(pg_bin)" ]; then
    echo "installing PostgreSQL (Debian packages)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  fi
  bin=$(pg_bin)
  mkdir -p "$dir" "$secrets" "$dir/run"
  chmod 700 "$dir" "$secrets" "$dir/run"
  new_secret "$secrets/postgres"
  new_secret "$secrets/mlflow-admin"
  new_secret "$secrets/mlflow-worker"
  # printf is a shell builtin: the password never appears in a process's command line
  (umask 077; printf '127.0.0.1:%s:*:postgres:%s\n' "$PG_PORT" "$(cat "$secrets/postgres")" >"$secrets/pgpass")
  new_secret "$secrets/flask-secret"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir" "$dir/run"; fi  # the cluster's owner; secrets/ stays ours
  if [ ! -f "$dir/pg/PG_VERSION" ]; then
    mkdir -p "$dir/pg" && chmod 700 "$dir/pg"
    pwfile="$dir/run/initdb.pw"
    (umask 077; cp "$secrets/postgres" "$pwfile")
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pg" "$pwfile"; fi
    # TCP needs the password; the Unix socket sits in a folder only the cluster's owner can enter
    as_postgres "$bin/initdb" -D "$dir/pg" -U postgres --auth-host=scram-sha-256 --auth-local=trust \
      --pwfile="$pwfile" >/dev/null
    rm -f "$pwfile"
  fi
  as_postgres "$bin/pg_ctl" -D "$dir/pg" -l "$dir/run/pg.log" -w \
    -o "-p $PG_PORT -k $dir/run -c listen_addresses=127.0.0.1" start >/dev/null
  for db in optuna mlflow; do
    as_postgres "$bin/psql" -h "$dir/run" -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
      | grep -q 1 || as_postgres "$bin/createdb" -h "$dir/run" -p "$PG_PORT" -U postgres "$db"
  done
  cat >"$secrets/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$secrets/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# a checked password is trusted for 30 s per server worker (MLflow hashes it with PBKDF2 on every request otherwise)
auth_cache_ttl_seconds = 30
INI
  mkdir -p "$dir/artifacts"
  PGPASSFILE="$secrets/pgpass" MLFLOW_AUTH_CONFIG_PATH="$secrets/basic_auth.ini" \
  MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$secrets/mlflow-admin")" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$secrets/flask-secret")" \
    nohup "$VENV/bin/mlflow" server --app-name basic-auth \
    --backend-store-uri "postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "$dir/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 \
    >"$dir/run/mlflow.log" 2>&1 &
  echo $! >"$dir/run/mlflow.pid"
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/run/mlflow.pid")" 2>/dev/null || break
    sleep 1
  done
  curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null || { echo "mlflow server did not start:" >&2; tail -20 "$dir/run/mlflow.log" >&2; exit 1; }
  # the worker user: READ everywhere by default; it owns (MANAGE) the experiments and models it creates
  MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(cat "$secrets/mlflow-admin")" \
    "$VENV/bin/python" "$(dirname "$0")/mlflow_users.py" "http://127.0.0.1:$MLFLOW_PORT" worker "$secrets/mlflow-worker"
  echo "export PGPASSFILE=$secrets/pgpass"
  echo "export BLOODML_TEST_PG_URL=postgresql+psycopg2://postgres@127.0.0.1:$PG_PORT/optuna"
  echo "export BLOODML_TEST_MLFLOW_URI=http://127.0.0.1:$MLFLOW_PORT"
  echo "export BLOODML_TEST_SECRETS=$secrets"
  echo "export MLFLOW_TRACKING_USERNAME=worker"
  echo "export MLFLOW_TRACKING_PASSWORD=\"\$(cat $secrets/mlflow-worker)\""
  ;;
stop)
  [ -f "$dir/run/mlflow.pid" ] && { pkill -P "$(cat "$dir/run/mlflow.pid")" 2>/dev/null || true; kill "$(cat "$dir/run/mlflow.pid")" 2>/dev/null || true; rm -f "$dir/run/mlflow.pid"; }
  bin=$(pg_bin) && [ -f "$dir/pg/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null || true
  ;;
esac
