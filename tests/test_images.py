"""What the images are made of: a python-less minbase underneath, no apt leftovers on top, and a
proxy that runs hardened with no upstream and keeps its certificate.

Cheap on purpose: the app, Postgres and Redis images are the ones the session's dev stack
(conftest.py) already built; only the proxy image is built here, once (about 10 s cold, a cache
hit after), under the tag the production template uses, so the prod stack reuses it.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import docker
import pytest
import requests
from requests.structures import CaseInsensitiveDict

from edge import SECURITY_HEADERS, tls_handshake, wrong_security_headers
from stack import ROOT, StackError, wait_for

pytestmark = pytest.mark.stack

OFFICIAL_BASE = "debian:trixie-slim"
LABEL = {"org.trinity.project": "trinity"}
TAG = os.environ.get("TRINITY_TAG") or "prod"
PROXY_IMAGE = f"trinity/proxy:{TAG}"
# What a leftover of an apt run looks like: package lists (anything in lists/ but its lock and
# the empty partial/ directory) and a validity switch (the bootstrap uses one for its build only).
APT_LEFTOVERS = r"""
find /var/lib/apt/lists -mindepth 1 ! -name lock ! -path /var/lib/apt/lists/partial 2>/dev/null \
  | sed 's/^/apt list: /'
grep -rlis check-valid-until /etc/apt | sed 's/^/validity switch in: /'
exit 0
"""
FINGERPRINT_LINE = re.compile(r"^proxy: TLS certificate (\S+) SHA-256 fingerprint ([0-9A-F:]{95})$", re.M)
# The production template's hardening (x-hardened), as `docker run` options.
HARDENED = dict(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                tmpfs={"/tmp": ""})


@pytest.fixture(scope="module")
def client():
    return docker.from_env()


def base_image_name() -> str:
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    chosen = ROOT / ".base-image"
    return chosen.read_text().strip() if chosen.is_file() else OFFICIAL_BASE


def run_to_exit(client, image: str, timeout: float = 60, **options) -> tuple[int | str, str]:
    """Run `image` in a throw-away container without network until it exits: its exit code (or
    "still running after N s") and its logs. The container goes, with the anonymous volumes of
    its image's VOLUMEs."""
    container = client.containers.run(image, network_disabled=True, detach=True, labels=LABEL,
                                      **options)
    try:
        try:
            code = container.wait(timeout=timeout)["StatusCode"]
        except (requests.exceptions.RequestException, TimeoutError):
            code = f"still running after {timeout:.0f} s"
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True, v=True)


def run_sh(client, image: str, script: str) -> tuple[int, str]:
    """Run `sh -c script` as root in a throw-away container of image, without network; a
    script still running after 60 s fails the test (its callers read any exit code)."""
    code, out = run_to_exit(client, image, entrypoint=["sh", "-c", script], user="0")
    assert isinstance(code, int), f"sh -c in {image}: {code}\n{out}"
    return code, out


@pytest.fixture(scope="module")
def proxy_image(client):
    """The proxy image, built once with the base the bootstrap chose (cached after the first)."""
    started = time.monotonic()
    proc = subprocess.run(
        ["docker", "build", "--quiet", "--build-arg", f"BASE_IMAGE={base_image_name()}",
         "--label", "org.trinity.project=trinity", "-f", "images/proxy/Dockerfile",
         "-t", PROXY_IMAGE, "."], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"building {PROXY_IMAGE} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
                    pytrace=False)
    print(f"\n{PROXY_IMAGE} built in {time.monotonic() - started:.1f}s")
    return client.images.get(PROXY_IMAGE)


# ---- (a) the base ---------------------------------------------------------------------------

def test_the_images_are_built_on_a_base_without_python_or_ca_certificates(client, stack,
                                                                         proxy_image):
    name = base_image_name()
    base = client.images.get(name)
    if name == OFFICIAL_BASE and (base.labels or {}).get("org.trinity.base") != "mmdebstrap":
        pytest.skip(f"the base is Docker's official {OFFICIAL_BASE}, pulled from a registry: "
                    "what it holds is Docker's to promise, not this project's")
    code, out = run_sh(client, name, "python3 -c 1")
    assert code == 127, f"python3 in the base {name}: exit {code} (127 = not found)\n{out}"
    code, out = run_sh(client, name, "dpkg-query -W -f='${Status}\\n' ca-certificates python3; "
                                     "ls /etc/ssl/certs/ca-certificates.crt")
    assert "install ok installed" not in out and code != 0, \
        f"the base {name} has python3 or CA certificates:\n{out}"
    # Every image of the project starts with the base's one layer: built FROM it, not elsewhere.
    (base_layer,) = base.attrs["RootFS"]["Layers"]
    for image in [*stack.images(), proxy_image]:
        assert image.attrs["RootFS"]["Layers"][0] == base_layer, \
            f"{image.tags} is not built on {name}"


# ---- (b) no apt leftovers -------------------------------------------------------------------

def test_no_image_keeps_apt_lists_or_a_validity_switch(client, stack, proxy_image):
    """The dev stack's images are the -test variants of django/fastapi (every layer of the
    production targets plus the test tools), postgres and redis; and the proxy."""
    images = [*stack.images(), proxy_image]
    names = {tag.split(":")[0] for image in images for tag in image.tags}
    assert {"trinity/postgres", "trinity/redis", "trinity/proxy"} <= names, names
    assert any(n.startswith("trinity/django") for n in names), names
    assert any(n.startswith("trinity/fastapi") for n in names), names
    found = {}
    for image in images:
        code, out = run_sh(client, image.id, APT_LEFTOVERS)
        assert code == 0, f"{image.tags}: the check itself failed ({code}):\n{out}"
        lines = out.strip().splitlines()
        if lines:
            lists = [l for l in lines if l.startswith("apt list:")]
            found[image.tags[0]] = [l for l in lines if l not in lists] + lists[:3] + (
                [f"... {len(lists)} apt list files in all"] if len(lists) > 3 else [])
    assert found == {}, f"apt leftovers: {found}"


# ---- Postgres's first start ------------------------------------------------------------------

def test_a_first_postgres_start_that_failed_half_way_is_redone_on_the_next(client, stack):
    """A role without its password stops the first start after initdb; the next start, given
    it, initialises again, so the volume is never left serving a database without its roles."""
    (image,) = [i for i in stack.images() if any(t.startswith("trinity/postgres:") for t in i.tags)]
    volume = client.volumes.create(labels=LABEL)
    env = {"POSTGRES_PASSWORD": uuid.uuid4().hex, "POSTGRES_DB": "trinity",
           "POSTGRES_APP_USER": "app"}

    def start(**more):
        return client.containers.run(
            image.id, environment={**env, **more}, detach=True, labels=LABEL,
            network_disabled=True, volumes={volume.name: {"bind": "/var/lib/postgresql/data"}})
    try:
        first = start()
        code, logs = first.wait(timeout=120)["StatusCode"], first.logs().decode()
        first.remove()
        assert code == 1 and "POSTGRES_APP_PASSWORD (or POSTGRES_APP_PASSWORD_FILE) is " \
            "required" in logs, logs
        second = start(POSTGRES_APP_PASSWORD=uuid.uuid4().hex)
        try:
            wait_for(lambda: second.exec_run(["pg_isready", "-q"]).exit_code == 0
                     and "initialisation complete" in second.logs().decode(), 120,
                     describe=lambda: second.logs().decode())
            code, out = second.exec_run(["psql", "-U", "postgres", "-tAc",
                                         "SELECT rolname FROM pg_roles WHERE rolname = 'app'"])
            logs = second.logs().decode()
        finally:
            second.remove(force=True)
        assert "an earlier first start did not finish" in logs, logs
        assert (code, out.decode().strip()) == (0, "app"), (code, out, logs)
    finally:
        volume.remove(force=True)


# ---- secrets as files: images/secret.sh -------------------------------------------------------
REDIS_USERS = {"REDIS_ADMIN_PASSWORD": "a", "REDIS_WORKER_PASSWORD": "w", "REDIS_WEB_PASSWORD": "b",
               "REDIS_GATEWAY_PASSWORD": "g"}


@pytest.mark.parametrize("server,env,named", [
    ("postgres", {"POSTGRES_PASSWORD": "x", "POSTGRES_PASSWORD_FILE": "/etc/hostname"},
     "set either POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, not both"),
    ("redis", {**REDIS_USERS, "REDIS_WEB_PASSWORD_FILE": "/etc/hostname"},
     "set either REDIS_WEB_PASSWORD or REDIS_WEB_PASSWORD_FILE, not both"),
    # An optional user's password (the monitoring's) from a file that is not there: Redis must
    # not start without that user as if it had not been asked for.
    ("redis", {**REDIS_USERS, "REDIS_MONITOR_PASSWORD_FILE": "/run/secrets/nothing"},
     "REDIS_MONITOR_PASSWORD_FILE: cannot read /run/secrets/nothing"),
])
def test_a_secret_given_twice_or_unreadable_stops_the_server_naming_it(client, stack, server, env,
                                                                      named):
    (image,) = [i for i in stack.images() if any(t.startswith(f"trinity/{server}:") for t in i.tags)]
    code, logs = run_to_exit(client, image.id, timeout=30, environment=env)
    assert code == 1 and named in logs, (code, logs)


# ---- (c) the proxy, hardened, with no upstream ------------------------------------------------

@pytest.fixture
def proxy_env(client, proxy_image):
    """A network (Docker's DNS answers on user networks only) and the TLS volume; both removed
    afterwards, with every container the test started on them."""
    suffix = uuid.uuid4().hex[:8]
    network = client.networks.create(f"trinity-imagetest-{suffix}", labels=LABEL)
    volume = client.volumes.create(f"trinity-imagetest-proxy-tls-{suffix}", labels=LABEL)
    started = []

    def start(**env):
        container = client.containers.run(
            proxy_image.id, detach=True, network=network.name, labels=LABEL, environment=env,
            volumes={volume.name: {"bind": "/var/lib/trinity-proxy", "mode": "rw"}},
            ports={"8443/tcp": ("127.0.0.1", None)}, **HARDENED)
        started.append(container)
        return container

    yield start
    for container in started:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    network.remove()
    volume.remove(force=True)


def logs_of(container) -> str:
    try:
        return f"---- logs of {container.name} ----\n{container.logs().decode(errors='replace')}"
    except docker.errors.NotFound:
        return f"({container.name} is gone)"


def curl(container, *args: str) -> tuple[int, str]:
    result = container.exec_run(["curl", "--silent", "--show-error", "--insecure",
                                 "--max-time", "5", *args])
    return result.exit_code, result.output.decode(errors="replace")


def wait_started(container, starts: int) -> str:
    """Wait until the proxy printed its fingerprint line `starts` times and answers its
    healthcheck; return the last fingerprint."""
    def ready():
        container.reload()
        if container.status != "running":
            raise StackError(f"the proxy stopped ({container.status})\n{logs_of(container)}")
        lines = FINGERPRINT_LINE.findall(container.logs().decode(errors="replace"))
        if len(lines) < starts:
            return None
        return lines[-1][1] if container.exec_run(["healthcheck-proxy"]).exit_code == 0 else None
    return wait_for(ready, timeout=30, describe=lambda: logs_of(container))


def published_https_port(container) -> int:
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"]["8443/tcp"][0]["HostPort"])


def answer(container, *args: str) -> tuple[int, CaseInsensitiveDict]:
    """curl inside the proxy's container: (status, headers) of the answer, the body dropped.
    A header sent twice comes back joined with ", ", as requests joins it."""
    code, out = curl(container, "--http1.1", "-o", "/dev/null", "-D", "-", *args)
    assert code == 0, f"curl {args}: {code}: {out}"
    status_line, *lines = out.replace("\r", "").strip().split("\n")
    headers = CaseInsensitiveDict()
    for name, _, value in (line.partition(":") for line in lines):
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(status_line.split()[1]), headers


def test_the_hardened_proxy_serves_tls_and_http2_without_any_upstream(proxy_env):
    proxy = proxy_env()
    fingerprint = wait_started(proxy, starts=1)
    assert all(p[1] != "0" for p in proxy.top(ps_args="-o pid,uid,comm")["Processes"]), \
        f"a proxy process runs as root: {proxy.top(ps_args='-o pid,uid,comm')}\n{logs_of(proxy)}"

    code, out = curl(proxy, "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                     "https://127.0.0.1:8443/proxy-healthz")
    assert (code, out) == (0, "2 200"), f"{code}: {out}\n{logs_of(proxy)}"
    served = tls_handshake(published_https_port(proxy))
    assert served.alpn == "h2" and served.version in ("TLSv1.2", "TLSv1.3"), served
    assert served.fingerprint == fingerprint, \
        "the fingerprint printed at start is not the served certificate"

    # Plain HTTP: redirected to HTTPS, the default public port 443 left out of the Location.
    code, out = curl(proxy, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                     "-H", "Host: trinity.example", "http://127.0.0.1:8080/api/task-runs/?a=1")
    assert (code, out) == (0, "301 https://trinity.example/api/task-runs/?a=1"), \
        f"{code}: {out}\n{logs_of(proxy)}"
    code, out = curl(proxy, "-w", " %{http_code}", "http://127.0.0.1:8080/proxy-healthz")
    assert (code, out) == (0, '{"status": "ok"}\n 200'), f"{code}: {out}"

    # No web running: an answer in JSON at once, not a hang and not a crash.
    started = time.monotonic()
    code, out = curl(proxy, "-w", " %{http_code}", "https://127.0.0.1:8443/api/task-runs/")
    assert code == 0 and out.endswith(" 502") and '"error"' in out, f"{code}: {out}"
    assert time.monotonic() - started < 4, "a missing upstream took too long to answer"


def test_the_proxys_own_answers_carry_the_security_headers(proxy_env):
    """Every answer nginx makes itself, with no upstream at all: the same headers as proxied
    ones (tests/test_prod.py checks those, and these again, in the full stack)."""
    proxy = proxy_env()
    wait_started(proxy, starts=1)
    https = "https://127.0.0.1:8443"
    cases = {
        "healthz": (200, [f"{https}/proxy-healthz"]),
        "TRACE": (405, ["-X", "TRACE", f"{https}/api/task-runs/"]),
        # Content-Length alone is judged against PROXY_MAX_BODY before any body is read.
        "body too large": (413, ["-X", "POST", "-H", "Content-Length: 2000000",
                                 f"{https}/api/task-runs/"]),
        "no upstream": (502, [f"{https}/api/task-runs/"]),
        "http redirect": (301, ["http://127.0.0.1:8080/api/task-runs/"]),
        "http body too large": (413, ["-X", "POST", "-H", "Content-Length: 2000000",
                                      "http://127.0.0.1:8080/api/task-runs/"]),
        "plain http on the https port": (400, ["http://127.0.0.1:8443/"]),
    }
    got = {what: answer(proxy, *args) for what, (_, args) in cases.items()}
    assert {what: status for what, (status, _) in got.items()} == \
        {what: status for what, (status, _) in cases.items()}, got
    wrong = {what: bad for what, (_, headers) in got.items()
             if (bad := wrong_security_headers(headers))}
    assert wrong == {}, f"answers without the security headers: {wrong}\n{logs_of(proxy)}"
    assert got["TRACE"][1].get("Allow") == "GET, HEAD, POST", got["TRACE"]


def nginx_blocks(text: str) -> list[tuple[str, list[str]]]:
    """Each block of an nginx config as (its header, its own statements, nested blocks left
    out). Quotes are respected ('{' in a return body), comments dropped."""
    blocks, stack, current, quote, comment = [], [("(main)", [])], "", None, False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            current += ch
            quote = None if ch == quote else quote
        elif ch in "'\"":
            current, quote = current + ch, ch
        elif ch == "#":
            comment = True
        elif ch == "{":
            stack.append((" ".join(current.split()), []))
            current = ""
        elif ch == "}":
            blocks.append(stack.pop())
        elif ch == ";":
            stack[-1][1].append(" ".join(current.split()))
            current = ""
        else:
            current += ch
    assert len(stack) == 1 and not current.strip(), "unbalanced nginx config"
    return blocks + [stack[0]]


def test_every_block_with_an_add_header_includes_the_security_headers():
    """nginx: an add_header in a block drops every inherited one. So each server, and each
    location that adds a header of its own, includes the one file that holds the set; and no
    security header is set anywhere else."""
    include = "include /etc/trinity-proxy/security-headers.conf"
    # The entrypoint's ${PROXY_...} placeholders are not nginx blocks.
    template = re.sub(r"\$\{(PROXY_\w+)\}", r"\1",
                      (ROOT / "images/proxy/nginx.conf.template").read_text())
    missing, elsewhere = [], []
    for header, statements in nginx_blocks(template):
        adds = [s for s in statements if s.startswith("add_header ")]
        needs = header.startswith("server") or adds
        if needs and include not in statements:
            missing.append(header)
        elsewhere += [f"{header}: {s}" for s in adds
                      if s.split()[1].lower() in {h.lower() for h in SECURITY_HEADERS}]
    assert missing == [], f"blocks that drop the security headers: {missing}"
    assert elsewhere == [], f"security headers set outside security-headers.conf: {elsewhere}"
    servers = [h for h, _ in nginx_blocks(template) if h.startswith("server")]
    assert len(servers) == 2, servers
    in_file = (ROOT / "images/proxy/security-headers.conf").read_text()
    for name, value in SECURITY_HEADERS.items():
        pattern = rf"^add_header {name} \"?{re.escape(value)}\"? always;$"
        assert re.search(pattern, in_file, re.M), name


def test_the_proxy_keeps_its_generated_certificate_across_restarts(proxy_env):
    proxy = proxy_env()
    first = wait_started(proxy, starts=1)
    assert "generated a self-signed certificate" in proxy.logs().decode()

    proxy.restart(timeout=10)
    assert wait_started(proxy, starts=2) == first, logs_of(proxy)
    assert proxy.logs().decode().count("generated a self-signed certificate") == 1, logs_of(proxy)

    # A new container on the same volume (compose recreating it after an edit) reuses it too,
    # and names a non-default public HTTPS port in its redirect.
    proxy.remove(force=True)
    again = proxy_env(PROXY_PUBLIC_HTTPS_PORT="8443")
    assert wait_started(again, starts=1) == first, logs_of(again)
    assert tls_handshake(published_https_port(again)).fingerprint == first
    code, out = curl(again, "-o", "/dev/null", "-w", "%{redirect_url}",
                     "-H", "Host: trinity.example", "http://127.0.0.1:8080/admin/")
    assert (code, out) == (0, "https://trinity.example:8443/admin/"), f"{code}: {out}"
