#!/bin/sh
# Starts redis-server with the image's config; REDIS_PASSWORD (optional) is given on stdin so it
# never shows in the process list or in the image.
set -eu
if [ "${1:-}" != "redis-server" ]; then
  exec "$@"  # redis-cli, sh, ... run as given
fi
shift
if [ -n "${REDIS_PASSWORD:-}" ]; then
  exec redis-server /etc/redis/trinity.conf - "$@" <<CONF
requirepass "$REDIS_PASSWORD"
CONF
fi
echo "redis: REDIS_PASSWORD is not set; Redis accepts commands without authentication" >&2
exec redis-server /etc/redis/trinity.conf "$@"
