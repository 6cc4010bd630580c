"""The production stack as a client on the internet sees it: through the proxy, over TLS, with
an API token. Shared by the prod and chaos tests; each brings up its own stack with
`up_prod_stack`.
"""
from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest
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


def up_prod_stack(tmp: Path, prefix: str, services: list[str], **override: str) -> Stack:
    """Build and start the production template under a unique project; fail with logs."""
    env_file = prod_env(tmp, **override)
    stack = Stack(files=[PROD_FILE], env_file=str(env_file),
                  project=f"{prefix}-{secrets.token_hex(4)}")
    stack.env_path = env_file
    stack.compose("build", "postgres", "redis", "proxy", "web", "fastapi", timeout=1800)
    proc = stack.compose("up", "-d", "--wait", "--wait-timeout", "240", *services,
                         check=False, timeout=300)
    if proc.returncode != 0:
        logs = "\n".join(stack.logs(s) for s in ["postgres", "redis", "migrate", "proxy",
                                                  *services])
        stack.down()
        pytest.fail(f"the {prefix} stack did not come up:\n{proc.stderr[-2000:]}\n{logs}",
                    pytrace=False)
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
