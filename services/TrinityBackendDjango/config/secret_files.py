"""Secrets from files: every secret variable NAME may instead be given as NAME_FILE, the path of
a file that holds the value (compose and Swarm `secrets:` mount them under /run/secrets/).

A value in a file never shows in `docker inspect` or in the process environment. Standard
library only: the FastAPI image carries this module beside celery_settings.py, without Django.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote, urlsplit


class SecretError(ValueError):
    """A secret variable is set twice or its file cannot be read; the message names it."""


def read_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of NAME, or the contents of the file NAME_FILE names (one trailing newline
    dropped); None when neither is set. Both set, or an unreadable file, raise SecretError."""
    environ = os.environ if environ is None else environ
    value = (environ.get(name) or "").strip()
    path = (environ.get(f"{name}_FILE") or "").strip()
    if value and path:
        raise SecretError(f"{name}: set either {name} or {name}_FILE, not both")
    if not path:
        return value or None
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except OSError as exc:
        raise SecretError(f"{name}_FILE: cannot read {path!r} ({exc.strerror})") from None
    content = content[:-1] if content.endswith("\n") else content
    if not content:
        raise SecretError(f"{name}_FILE: {path!r} is empty")
    return content


def url_with_password(url: str, password: str | None, username: str | None = None) -> str:
    """``url`` with ``password`` put in for its user: scheme://user@host -> scheme://user:pw@host,
    or, given ``username``, scheme://host -> scheme://username:pw@host.

    A URL that already holds a password, or no password to add, is returned unchanged."""
    parts = urlsplit(url)
    if not password or parts.password is not None:
        return url
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at:
        userinfo = quote(username or "", safe="")
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostinfo}"
    return parts._replace(netloc=netloc).geturl()
