"""One production stack for the whole chaos package (the PROD template, random secrets, its own
project name, HTTP through its proxy with an API token), with a short Redis visibility timeout
so a SIGKILLed worker's task comes back within seconds instead of an hour."""
from __future__ import annotations

import pytest

from chaos.harness import SCAN_INTERVAL, SERVICES, VISIBILITY
from edge import Edge, api_token, prod_stack
from stack import running


@pytest.fixture(scope="package")
def chaos(tmp_path_factory, request):
    # The proxy's per-token rate stays out of the way: these tests send bursts on purpose.
    stack = prod_stack(tmp_path_factory.mktemp("chaos"), "trinity-chaos",
                       CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY),
                       CELERY_STUCK_SCAN_INTERVAL=str(SCAN_INTERVAL),
                       PROXY_RATE="10000r/s", PROXY_BURST="10000")
    with running(stack, SERVICES, show_logs=lambda: request.session.testsfailed) as up:
        edge = Edge(up)
        up.web, up.fastapi = edge.https, edge.https + "/gateway"
        up.token = api_token(up)
        yield up
