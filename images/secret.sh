# secret NAME: prints $NAME, or the contents of the file $NAME_FILE names (compose and Swarm
# secrets), so a password reaches only the process that needs it, never `docker inspect`. Both
# set, or a file it cannot read, is an error naming the variable (exit 1; callers run it as
# `x=$(secret NAME)` under `set -e`). One copy for the shell scripts of the redis, postgres and
# monitoring images, which source it from /usr/local/lib/trinity/.
secret() {
  eval "_value=\${$1:-} _file=\${$1_FILE:-}"
  if [ -n "$_file" ]; then
    if [ -n "$_value" ]; then
      echo "${0##*/}: set either $1 or $1_FILE, not both" >&2; exit 1
    fi
    if ! _value=$(cat "$_file" 2>/dev/null); then
      echo "${0##*/}: $1_FILE: cannot read $_file" >&2; exit 1
    fi
  fi
  printf %s "$_value"
}
