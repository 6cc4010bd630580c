"""schemathesis hooks for tests/test_prod.py (SCHEMATHESIS_HOOKS).

An Idempotency-Key names one task: the same key with another body is a 422, by the gateway's
contract. schemathesis sends its cases independently and repeats values ("0", the longest
string), which would make every repeat with a new body such a 422. So a valid key (1 to 255
characters) is made unique per case; it stays valid. Invalid ones are sent as generated, and
so are the probes that leave a header out (an edit would make schemathesis rebuild them).
"""
import uuid

import schemathesis
from schemathesis.generation.meta import CoverageScenario


@schemathesis.hook
def before_call(context, case, kwargs):
    probe = getattr(getattr(case.meta, "phase", None), "data", None)
    if getattr(probe, "scenario", None) == CoverageScenario.MISSING_PARAMETER:
        return
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255:
        case.headers["Idempotency-Key"] = f"schemathesis-{uuid.uuid4().hex}"
