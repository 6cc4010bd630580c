#!/bin/sh
# Entry point of the proxy. `nginx [ARGS]` (the default): check the variables, render the
# config into /tmp (the root filesystem is read-only), make sure there is a certificate, print
# its fingerprint, then exec nginx. Any other command runs as given.
set -eu

if [ "${1:-}" != nginx ]; then
  exec "$@"
fi
shift

fail() { echo "proxy: $*" >&2; exit 2; }
# matches VALUE ERE: the whole value matches (grep -x), so nothing can break out of the config.
matches() { printf '%s\n' "$1" | grep -Eqx -- "$2"; }

: "${PROXY_SERVER_NAME:=localhost}" "${PROXY_MAX_BODY:=1m}" "${PROXY_RATE:=10r/s}"
: "${PROXY_BURST:=20}" "${PROXY_PUBLIC_HTTPS_PORT:=443}"
matches "$PROXY_SERVER_NAME" '[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?' \
  || fail "PROXY_SERVER_NAME: must be a host name, got '$PROXY_SERVER_NAME'"
matches "$PROXY_MAX_BODY" '[0-9]+[kKmMgG]?' \
  || fail "PROXY_MAX_BODY: must be an nginx size (512k, 1m), got '$PROXY_MAX_BODY'"
matches "$PROXY_RATE" '[1-9][0-9]*r/[sm]' \
  || fail "PROXY_RATE: must be a rate like 10r/s or 600r/m, got '$PROXY_RATE'"
matches "$PROXY_BURST" '[0-9]+' || fail "PROXY_BURST: must be a number, got '$PROXY_BURST'"
matches "$PROXY_PUBLIC_HTTPS_PORT" '[1-9][0-9]{0,4}' \
  || fail "PROXY_PUBLIC_HTTPS_PORT: must be a port number, got '$PROXY_PUBLIC_HTTPS_PORT'"
# The redirect to HTTPS names the public port only when it is not the default one.
if [ "$PROXY_PUBLIC_HTTPS_PORT" = 443 ]; then
  PROXY_HTTPS_PORT_SUFFIX=
else
  PROXY_HTTPS_PORT_SUFFIX=":$PROXY_PUBLIC_HTTPS_PORT"
fi

# Certificate: the operator's files when given (both), else a self-signed one generated once on
# the volume and reused at every later start (clients that pinned it keep working).
if [ -n "${PROXY_TLS_CERT_FILE:-}${PROXY_TLS_KEY_FILE:-}" ]; then
  [ -n "${PROXY_TLS_CERT_FILE:-}" ] && [ -n "${PROXY_TLS_KEY_FILE:-}" ] \
    || fail "PROXY_TLS_CERT_FILE and PROXY_TLS_KEY_FILE: set both or neither"
  [ -r "$PROXY_TLS_CERT_FILE" ] || fail "PROXY_TLS_CERT_FILE: cannot read $PROXY_TLS_CERT_FILE"
  [ -r "$PROXY_TLS_KEY_FILE" ] || fail "PROXY_TLS_KEY_FILE: cannot read $PROXY_TLS_KEY_FILE"
else
  tls_dir=/var/lib/trinity-proxy/tls
  PROXY_TLS_CERT_FILE=$tls_dir/selfsigned.crt PROXY_TLS_KEY_FILE=$tls_dir/selfsigned.key
  if [ ! -s "$PROXY_TLS_CERT_FILE" ] || [ ! -s "$PROXY_TLS_KEY_FILE" ]; then
    san="DNS:$PROXY_SERVER_NAME"
    [ "$PROXY_SERVER_NAME" = localhost ] || san="$san,DNS:localhost"
    (umask 077 && mkdir -p "$tls_dir")
    # 825 days: the longest validity that Apple's clients accept for a TLS server certificate.
    # Written under temporary names and renamed, so an interrupted start leaves no half pair.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
      -subj "/CN=$PROXY_SERVER_NAME" -addext "subjectAltName=$san,IP:127.0.0.1" \
      -addext "extendedKeyUsage=serverAuth" \
      -keyout "$tls_dir/.new.key" -out "$tls_dir/.new.crt" 2>/dev/null \
      || fail "could not generate a self-signed certificate in $tls_dir (is the volume writable?)"
    chmod 0600 "$tls_dir/.new.key"
    mv "$tls_dir/.new.key" "$PROXY_TLS_KEY_FILE"
    mv "$tls_dir/.new.crt" "$PROXY_TLS_CERT_FILE"
    echo "proxy: generated a self-signed certificate for $san,IP:127.0.0.1 (825 days)"
  fi
fi
for path in "$PROXY_TLS_CERT_FILE" "$PROXY_TLS_KEY_FILE"; do
  matches "$path" '/[A-Za-z0-9/._-]+' || fail "TLS file paths must be absolute, [A-Za-z0-9/._-]: '$path'"
done
fingerprint=$(openssl x509 -in "$PROXY_TLS_CERT_FILE" -noout -fingerprint -sha256) \
  || fail "PROXY_TLS_CERT_FILE: $PROXY_TLS_CERT_FILE is not a PEM certificate"
echo "proxy: TLS certificate $PROXY_TLS_CERT_FILE SHA-256 fingerprint ${fingerprint#*=}"

# Only these variables are substituted: nginx's own $variables stay as they are.
export PROXY_SERVER_NAME PROXY_MAX_BODY PROXY_RATE PROXY_BURST PROXY_HTTPS_PORT_SUFFIX \
  PROXY_TLS_CERT_FILE PROXY_TLS_KEY_FILE
mkdir -p /tmp/nginx
envsubst '${PROXY_SERVER_NAME} ${PROXY_MAX_BODY} ${PROXY_RATE} ${PROXY_BURST}
  ${PROXY_HTTPS_PORT_SUFFIX} ${PROXY_TLS_CERT_FILE} ${PROXY_TLS_KEY_FILE}' \
  < /etc/trinity-proxy/nginx.conf.template > /tmp/nginx/nginx.conf
# -e stderr: nginx opens its compiled-in error log (/var/log/nginx) before reading the config.
exec nginx -e stderr -c /tmp/nginx/nginx.conf "$@"
