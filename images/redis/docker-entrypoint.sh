#!/bin/sh
# Starts redis-server with the image's config plus what the environment asks for, handed over
# on stdin so that no password shows in the process list or in the image:
#   REDIS_ADMIN_PASSWORD[_FILE] set  -> ACL mode: the default user is off; one user per role
#     (users below), each needing its own REDIS_<ROLE>_PASSWORD[_FILE]; `monitor` only when
#     REDIS_MONITOR_PASSWORD[_FILE] is given, `backup` when REDIS_BACKUP_PASSWORD[_FILE] is.
#     Production.
#   else REDIS_PASSWORD[_FILE] set   -> one password for everything (requirepass). Development.
#   else                             -> no authentication (a warning says so).
#   REDIS_MAXMEMORY (e.g. 256mb)     -> a memory limit; with noeviction a write past it is refused.
# NAME_FILE is the path of a file holding NAME's value (compose and Swarm secrets).
set -eu
if [ "${1:-}" != "redis-server" ]; then
  exec "$@"  # redis-cli, redis-admin, sh, ... run as given
fi
shift
. /usr/local/lib/trinity/secret.sh

config=""  # lines for redis-server, given on stdin below
add() { config="$config$*
"; }
if [ -n "${REDIS_MAXMEMORY:-}" ]; then
  add "maxmemory $REDIS_MAXMEMORY"
fi
admin=$(secret REDIS_ADMIN_PASSWORD)
if [ -n "$admin" ]; then
  # Passwords go in as SHA-256 hashes (#...): not even the config holds them in clear.
  hash() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
  user() {  # user NAME VARIABLE RULES...
    name=$1 variable=$2; shift 2
    password=$(secret "$variable")
    if [ -z "$password" ]; then
      echo "redis: $variable (or ${variable}_FILE) is required when REDIS_ADMIN_PASSWORD is set" >&2
      exit 1
    fi
    add "user $name on #$(hash "$password") $*"
  }
  # Off: no client can log in as default. Its rules stay all-allowing because Redis replays the
  # append-only file's MULTI/EXEC blocks under them at start: with "nocommands" every
  # transaction (RedBeat's schedule, kombu's unacked index, results) was refused with NOPERM
  # and lost at each restart.
  add "user default off resetpass ~* &* +@all"
  # Operators (redis-admin in this container): everything.
  user admin REDIS_ADMIN_PASSWORD '~* &* +@all'
  # Celery workers, beat and flower: every key and channel (queues, pidbox replies, results,
  # RedBeat's lock), nothing that can wipe, reconfigure or stop the server; INFO, because
  # `manage.py enqueue` and validate_stack run in a worker container and check Redis's memory.
  user worker REDIS_WORKER_PASSWORD '~* &* +@all -@dangerous +info'
  # web and fastapi publish tasks and read results, and nothing else: no channel at all, so no
  # Celery remote control (a broadcast is a PUBLISH on the pidbox channel), no pub/sub. INFO
  # (read-only) tells them how full Redis is, so they stop enqueueing before it is.
  user web REDIS_WEB_PASSWORD '~* resetchannels +@all -@dangerous -@pubsub -@scripting +info'
  user gateway REDIS_GATEWAY_PASSWORD '~* resetchannels +@all -@dangerous -@pubsub -@scripting +info'
  # The monitoring profile's exporter, when its password is given: server statistics (INFO,
  # LATENCY LATEST) and a read of the few keys it reports (the queues' lengths, RedBeat's lock,
  # the last backup's time), nothing else: no other key, no channel, no SLOWLOG or CONFIG
  # (they show commands' arguments and settings). EVAL runs images/monitoring/redis-keys.lua,
  # whose commands Redis checks against these same rules.
  if [ -n "${REDIS_MONITOR_PASSWORD:-}${REDIS_MONITOR_PASSWORD_FILE:-}" ]; then
    user monitor REDIS_MONITOR_PASSWORD 'resetkeys %R~trinity.tasks %R~trinity.tasks.* %R~trinity.redbeat::lock %R~trinity.backup.last_success resetchannels -@all +ping +hello +select +client|setname +info +latency|latest +eval +llen +exists +get'
  fi
  # The scheduled backup, when its password is given: it writes the time of its last verified
  # dump, and may do nothing else (not even read it back).
  if [ -n "${REDIS_BACKUP_PASSWORD:-}${REDIS_BACKUP_PASSWORD_FILE:-}" ]; then
    user backup REDIS_BACKUP_PASSWORD 'resetkeys %W~trinity.backup.last_success resetchannels -@all +ping +set'
  fi
else
  password=$(secret REDIS_PASSWORD)
  if [ -n "$password" ]; then
    add "requirepass \"$password\""
  else
    echo "redis: neither REDIS_ADMIN_PASSWORD nor REDIS_PASSWORD is set; Redis accepts commands" \
         "without authentication" >&2
  fi
fi
# redis-server reads "-" as the config from stdin, after the image's file.
exec redis-server /etc/redis/trinity.conf - "$@" <<CONF
$config
CONF
