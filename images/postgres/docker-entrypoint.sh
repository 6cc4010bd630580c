#!/bin/bash
# First start: initdb into the volume, create the database and the application roles, run
# /docker-entrypoint-initdb.d once. Every start: exec the server as PID 1 so it gets the stop
# signal. Any NAME_PASSWORD below may be given as NAME_PASSWORD_FILE (compose/Swarm secrets).
#   POSTGRES_USER / POSTGRES_PASSWORD    the superuser (for operators and this script only)
#   POSTGRES_DB                          the database
#   POSTGRES_APP_USER / _APP_PASSWORD    optional: the role the apps use, not superuser; it owns
#                                        the database, so it owns the schemas it creates (the
#                                        tenants') and the public schema
#   POSTGRES_GATEWAY_USER / _GATEWAY_PASSWORD   optional: a role that may only connect; the
#                                        migrate service grants it the few columns it reads
#   POSTGRES_BACKUP_USER / _BACKUP_PASSWORD     optional: the scheduled backup's role, which
#                                        may read every table (pg_read_all_data) and write none
#   POSTGRES_MONITOR_USER / _MONITOR_PASSWORD   optional: the monitoring exporter's role:
#                                        connect, pg_monitor (the server's statistics views);
#                                        migrate lets it call the TaskRun statistics function
set -euo pipefail

. /usr/local/lib/trinity/secret.sh  # secret NAME: $NAME or the file $NAME_FILE names

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

if [ "${1:-}" != "postgres" ]; then
  exec "$@"  # anything else (psql, bash, ...) runs as given
fi

# Present from initdb to the end of the first start: a first start that failed half-way (a
# missing role password, say) is redone on the next, instead of serving a database without its
# roles. Nothing outside ever connected to it (the temporary server listens on no port).
initialising="$PGDATA/.initialising"
if [ -e "$initialising" ]; then
  echo "postgres: an earlier first start did not finish; initialising again"
  find "$PGDATA" -mindepth 1 -delete
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  POSTGRES_PASSWORD=$(secret POSTGRES_PASSWORD)
  if [ -z "$POSTGRES_PASSWORD" ]; then
    echo "postgres: POSTGRES_PASSWORD is not set; refusing to initialise a database without a" \
         "password (set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE)" >&2
    exit 1
  fi
  echo "postgres: initialising $PGDATA for user '$POSTGRES_USER', database '$POSTGRES_DB'"
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
         --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  : > "$initialising"
  # Remote clients need the password; the local socket (inside this container only) trusts.
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

  # A temporary server on the socket only, so nothing outside sees a half-initialised database.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [ "$POSTGRES_DB" != "postgres" ]; then
    "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  role() {  # role NAME PASSWORD_VARIABLE: a role that may log in and connect, nothing else
    local password
    password=$(secret "$2")
    [ -n "$password" ] || { echo "postgres: $2 (or ${2}_FILE) is required with its user" >&2; exit 1; }
    "${psql[@]}" --dbname postgres --set role="$1" --set password="$password" \
                 --set db="$POSTGRES_DB" >/dev/null <<'SQL'
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO :"role";
SQL
    echo "postgres: role '$1' created"
  }
  # Only the roles named here may connect to the database (and none to the maintenance one).
  "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" >/dev/null \
    <<<'REVOKE ALL ON DATABASE :"db" FROM PUBLIC; REVOKE ALL ON DATABASE postgres FROM PUBLIC;'
  if [ -n "${POSTGRES_APP_USER:-}" ]; then
    role "$POSTGRES_APP_USER" POSTGRES_APP_PASSWORD
    "${psql[@]}" --dbname postgres --set role="$POSTGRES_APP_USER" --set db="$POSTGRES_DB" \
      >/dev/null <<<'ALTER DATABASE :"db" OWNER TO :"role";'
    "${psql[@]}" --dbname "$POSTGRES_DB" --set role="$POSTGRES_APP_USER" >/dev/null \
      <<<'ALTER SCHEMA public OWNER TO :"role";'
  fi
  if [ -n "${POSTGRES_GATEWAY_USER:-}" ]; then
    role "$POSTGRES_GATEWAY_USER" POSTGRES_GATEWAY_PASSWORD
  fi
  if [ -n "${POSTGRES_BACKUP_USER:-}" ]; then
    role "$POSTGRES_BACKUP_USER" POSTGRES_BACKUP_PASSWORD
    "${psql[@]}" --dbname postgres --set role="$POSTGRES_BACKUP_USER" >/dev/null \
      <<<'GRANT pg_read_all_data TO :"role";'
  fi
  if [ -n "${POSTGRES_MONITOR_USER:-}" ]; then
    role "$POSTGRES_MONITOR_USER" POSTGRES_MONITOR_PASSWORD
    "${psql[@]}" --dbname postgres --set role="$POSTGRES_MONITOR_USER" >/dev/null \
      <<<'GRANT pg_monitor TO :"role";'
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)     echo "postgres: running $f"; . "$f" ;;
      *.sql)    echo "postgres: running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "postgres: running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
      *)        [ -e "$f" ] && echo "postgres: ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  rm "$initialising"
  echo "postgres: initialisation complete"
fi

exec "$@"
