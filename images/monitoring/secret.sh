# secret NAME: prints $NAME, or the contents of the file $NAME_FILE names (compose secrets), so
# a password reaches only the process that needs it, never `docker inspect`. Sourced by start-*.
secret() {
  eval "_value=\${$1:-} _file=\${$1_FILE:-}"
  if [ -n "$_file" ]; then
    if [ -n "$_value" ]; then
      echo "monitoring: set either $1 or $1_FILE, not both" >&2; exit 1
    fi
    if ! _value=$(cat "$_file" 2>/dev/null); then
      echo "monitoring: $1_FILE: cannot read $_file" >&2; exit 1
    fi
  fi
  printf %s "$_value"
}
