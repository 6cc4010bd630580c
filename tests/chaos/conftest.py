"""One production stack for the whole chaos package (the PROD template, random secrets, its own
project name, HTTP through its proxy with an API token), with a short Redis visibility timeout
so a SIGKILLed worker's task comes back within seconds instead of an hour."""
from __future__ import annotations

import time

import pytest

from chaos.harness import SCAN_INTERVAL, SERVICES, VISIBILITY
from edge import Edge, api_token, up_prod_stack


@pytest.fixture(scope="package")
def chaos(tmp_path_factory, request):
    started = time.monotonic()
    # The proxy's per-token rate stays out of the way: these tests send bursts on purpose.
    stack = up_prod_stack(tmp_path_factory.mktemp("chaos"), "trinity-chaos", SERVICES,
                          CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY),
                          CELERY_STUCK_SCAN_INTERVAL=str(SCAN_INTERVAL),
                          PROXY_RATE="10000r/s", PROXY_BURST="10000")
    try:
        edge = Edge(stack)
        stack.web, stack.fastapi = edge.https, edge.https + "/gateway"
        stack.token = api_token(stack)
        print(f"\nchaos stack {stack.project} healthy in {time.monotonic() - started:.1f}s")
        yield stack
    finally:
        if request.session.testsfailed:
            for s in ["redis", "postgres", "proxy", *SERVICES]:
                print(stack.logs(s, tail=80))
        stack.down()
