"""What a TaskRun payload may hold: JSON that PostgreSQL's jsonb can store.

Shared by Django's and FastAPI's POST endpoints (copied into the FastAPI image like
celery_settings.py), so both refuse the same bodies with the same 400 reason instead of
accepting them and failing later in the database. Standard library only.
"""

from __future__ import annotations

import math
from typing import Any

# Deeper nesting than this is refused. jsonb itself stops near 6,400 levels and Python's json
# parser recurses per level; no operation needs more than a few, so keep far below both.
MAX_DEPTH = 32
# An Idempotency-Key header: TaskRun.idempotency_key's length.
IDEMPOTENCY_KEY_MAX = 255


def check_storable(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ValueError (one line, says what and where) if jsonb cannot store ``value``:
    NUL characters or lone surrogates in strings or keys, NaN or infinities, nesting deeper
    than ``max_depth``."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth > max_depth:
            raise ValueError(f"nesting deeper than {max_depth} levels")
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, nested in item.items():
                _check_text(key)
                stack.append((nested, depth + 1))
        elif isinstance(item, list):
            stack.extend((nested, depth + 1) for nested in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"numbers must be finite, got {item!r}")


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("strings must not contain NUL (\\u0000) characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("strings must not contain lone surrogates") from None


def check_idempotency_key(key: str) -> None:
    """Raise ValueError (one line) unless ``key`` is 1 to IDEMPOTENCY_KEY_MAX characters."""
    if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
        raise ValueError(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters, "
                         f"got {len(key)}")
