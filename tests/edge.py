"""The production stack as a client on the internet sees it: through the proxy, over TLS, with
an API token. Shared by the prod and chaos tests; their fixtures (conftest.py) start the stack
that `prod_stack` describes.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import socket
import ssl
import time
from pathlib import Path
from typing import Mapping, NamedTuple

import requests
import urllib3

import prod_secrets
from stack import ROOT, Stack, free_port

PROD_FILE = "docker-compose.example.yml"
WORKERS = ["celery", "celery-cpu", "celery-io"]
# The proxy's certificate is self-signed (made at its first start): the tests check its
# fingerprint against the proxy's log instead of a CA.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def prod_env(tmp: Path, **override: str) -> Path:
    """envs/prod.env with `override` applied, its own secrets folder (random values, made by
    the same code as `make prod-secrets`), and the proxy on free loopback ports."""
    values = {"SECRETS_DIR": str(tmp / "secrets"), "PROXY_BIND": "127.0.0.1",
              "PROXY_HTTP_PORT": str(free_port()), "PROXY_HTTPS_PORT": str(free_port()),
              **override}
    lines = []
    for line in (ROOT / "envs/prod.env").read_text().splitlines():
        name, sep, _ = line.partition("=")
        if sep and not line.startswith("#") and name in values:
            line = f"{name}={values.pop(name)}"
        lines.append(line)
    lines += [f"{name}={value}" for name, value in values.items()]
    path = tmp / "prod-test.env"
    path.write_text("\n".join(lines) + "\n")
    prod_secrets.create(prod_secrets.compose_secrets(PROD_FILE, str(path)))
    return path


def env_value(path: Path, name: str) -> str:
    return next(line.split("=", 1)[1] for line in path.read_text().splitlines()
                if line.startswith(name + "="))


def secret_values(env_file: Path) -> dict[str, str]:
    folder = Path(env_value(env_file, "SECRETS_DIR"))
    return {p.name: p.read_text().strip() for p in folder.iterdir()}


def prod_stack(tmp: Path, prefix: str, **override: str) -> Stack:
    """The production template under a unique project, with its own env file (`prod_env`);
    not started yet (conftest.py's fixtures start it with stack.running)."""
    env_file = prod_env(tmp, **override)
    stack = Stack(files=[PROD_FILE], env_file=str(env_file),
                  project=f"{prefix}-{secrets.token_hex(4)}")
    stack.env_path = env_file
    return stack


def api_token(stack: Stack, tenant: str = "public", name: str | None = None) -> str:
    """A new API token of `tenant`, made the operator's way (its last line is the token)."""
    name = name or f"test-{secrets.token_hex(3)}"
    code, out = stack.exec("web", ["python", "manage.py", "create_api_token", "--tenant", tenant,
                                   "--name", name])
    assert code == 0, out
    return out.strip().splitlines()[-1]


def create_tenant(stack: Stack, name: str) -> None:
    code, out = stack.exec("web", ["python", "manage.py", "create_tenant_schema", name])
    assert code == 0, out


class Edge:
    """HTTP(S) to the proxy of a stack: `edge.post("/api/task-runs/", token, json=...)`."""

    def __init__(self, stack: Stack):
        self.https = f"https://127.0.0.1:{env_value(stack.env_path, 'PROXY_HTTPS_PORT')}"
        self.http = f"http://127.0.0.1:{env_value(stack.env_path, 'PROXY_HTTP_PORT')}"
        self.session = requests.Session()

    def request(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 15)
        # Per request: a session-wide verify=False loses to REQUESTS_CA_BUNDLE in the environment.
        kwargs.setdefault("verify", False)
        return self.session.request(method, self.https + path, headers=headers, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs):
        return self.request("POST", path, token, **kwargs)

    def get(self, path: str, token: str | None = None, **kwargs):
        return self.request("GET", path, token, **kwargs)


FINGERPRINT = re.compile(r"proxy: TLS certificate \S+ SHA-256 fingerprint ([0-9A-Fa-f:]+)")

# What the proxy adds to every answer, its own (405, 413, 429, 502, redirects) and proxied ones
# (images/proxy/security-headers.conf). Exactly these values, each once: a header sent twice
# arrives here joined with ", " and no longer equals its value.
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def wrong_security_headers(headers: Mapping[str, str]) -> dict[str, str | None]:
    """The security headers missing or different in `headers` (case-insensitive names), with
    what was received instead; also a Server header that names a version."""
    lower = {name.lower(): value for name, value in headers.items()}
    wrong = {name: lower.get(name.lower()) for name, value in SECURITY_HEADERS.items()
             if lower.get(name.lower()) != value}
    if re.search(r"\d", lower.get("server", "")):
        wrong["Server"] = lower["server"]
    return wrong


class Handshake(NamedTuple):
    alpn: str | None  # the protocol the server chose: "h2" or "http/1.1"
    version: str  # "TLSv1.3"
    fingerprint: str  # SHA-256 of the served certificate as the proxy logs it: "AB:CD:..."


def tls_handshake(port: int, host: str = "127.0.0.1", server_name: str = "localhost",
                  timeout: float = 10) -> Handshake:
    """Connect as a browser would (offering h2 and http/1.1) and report what was served. The
    certificate is not verified: it is self-signed, and its fingerprint is what callers compare
    with the one the proxy logged at start."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            digest = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest().upper()
            return Handshake(tls.selected_alpn_protocol(), tls.version(),
                             ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)))


def wait_for_token_rejected(edge: Edge, path: str, token: str, timeout: float) -> float:
    """Seconds until `token` gets 401 at `path` (a revoked token may be cached briefly)."""
    started = time.monotonic()
    while True:
        status = edge.get(path, token).status_code
        if status == 401:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{path} still answers {status} to a revoked token")
        time.sleep(0.5)
