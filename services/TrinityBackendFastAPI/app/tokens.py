"""API tokens: the ones Django issues (table tenants_apitoken), checked against Postgres.

One connection per process (gunicorn forks after import, so it opens on first use), in
autocommit, read as the least-privilege gateway role. The blocking lookup runs in a thread under
a deadline, so the event loop never waits on Postgres; a token verified once is trusted for
API_TOKEN_CACHE_SECONDS (a bounded in-process cache of hashes, never of tokens).

While Postgres does not answer, a token verified within the last STALE_IF_ERROR_SECONDS is still
trusted (stale-if-error), so a database restart does not turn every request into a 503. The
price: a token revoked in that window before an outage works until Postgres answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg

from app.settings import settings

log = logging.getLogger("trinity.gateway.tokens")

LOOKUP_SQL = (
    "SELECT c.schema_name FROM tenants_apitoken t JOIN tenants_client c ON c.id = t.tenant_id"
    " WHERE t.key_hash = %s AND t.revoked_at IS NULL"
)
CONNECT_TIMEOUT = 3  # seconds (libpq's connect_timeout)
STATEMENT_TIMEOUT_MS = 3000
# Outer guard of one lookup: a connect, or a kept connection found broken plus one reconnect.
LOOKUP_TIMEOUT = 5.0
CACHE_MAX_ENTRIES = 4096
STALE_IF_ERROR_SECONDS = 300
MAX_TOKEN_LENGTH = 256  # "trn_" + 43 characters today


class TokenStoreUnavailable(Exception):
    """Postgres did not answer the lookup (down, timed out, no grant, no table)."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenCache:
    """key_hash -> schema, fresh for ``ttl`` seconds and kept ``stale`` seconds longer for
    when the store cannot answer; at most ``max_entries`` (oldest dropped first).

    Used only from the event loop's thread, so it needs no lock."""

    def __init__(self, ttl: float, max_entries: int = CACHE_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic,
                 stale: float = STALE_IF_ERROR_SECONDS):
        self.ttl = ttl
        self.stale = stale
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()  # (schema, verified)

    def _age(self, key: str) -> tuple[str, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        schema, verified = entry
        age = self.clock() - verified
        if age >= self.ttl + self.stale:
            del self._entries[key]
            return None
        return schema, age

    def get(self, key: str) -> str | None:
        """The schema of a token verified less than ``ttl`` seconds ago."""
        found = self._age(key)
        return found[0] if found and found[1] < self.ttl else None

    def get_stale(self, key: str) -> str | None:
        """The schema of a token verified less than ``ttl + stale`` seconds ago."""
        found = self._age(key)
        return found[0] if found else None

    def put(self, key: str, schema: str) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (schema, self.clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class TokenStore:
    def __init__(self, database_url: str, cache_seconds: float):
        self.database_url = database_url
        self.cache = TokenCache(cache_seconds)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._pid: int | None = None
        self._inherited: list = []  # a parent's connection: never used, never closed here
        # Lookups have a thread of their own (one connection, one thread): a Postgres that
        # hangs ties up this thread only, never the pool that publishes tasks, and a lookup
        # whose request gave up while it was queued never runs. (Threads start on first use,
        # after gunicorn's fork.)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-store")

    # -- blocking part (runs in a worker thread) --------------------------------------------

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(
            self.database_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
            application_name="trinity-gateway",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            # A peer that vanished without a FIN is noticed in seconds, not at TCP's default.
            keepalives=1, keepalives_idle=10, keepalives_interval=3, keepalives_count=3,
            tcp_user_timeout=CONNECT_TIMEOUT * 1000,
        )
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _query(self, sql: str, params: tuple) -> tuple | None:
        if self._conn is not None and self._pid != os.getpid():
            # Forked after a lookup: the socket is the parent's. Keep the object alive so
            # its finalizer never sends a Terminate on the parent's session.
            self._inherited.append(self._conn)
            self._conn = None
        fresh = self._conn is None
        conn = self._conn or self._connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError):
            if fresh or not (conn.broken or conn.closed):
                raise
        # The kept connection broke (Postgres restarted, idle link cut): reconnect once.
        self._drop()
        with self._connect().cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def query(self, sql: str, params: tuple = (), wait: float = LOOKUP_TIMEOUT) -> tuple | None:
        """Run one statement on the process's connection; TokenStoreUnavailable on failure."""
        if not self._lock.acquire(timeout=wait):
            raise TokenStoreUnavailable(f"busy: no connection free within {wait:g} s")
        try:
            return self._query(sql, params)
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._drop()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise TokenStoreUnavailable(f"{type(exc).__name__}: {reason}") from None
        finally:
            self._lock.release()

    def lookup_hash(self, key_hash: str) -> str | None:
        row = self.query(LOOKUP_SQL, (key_hash,))
        return row[0] if row else None

    def ping(self, timeout: float = 1.0) -> None:
        """SELECT 1 (for /healthz); raises TokenStoreUnavailable."""
        self.query("SELECT 1", wait=timeout)

    # -- async part (event loop) -------------------------------------------------------------

    async def tenant_for(self, token: str) -> str | None:
        """The schema of the token's tenant, or None for an unknown or revoked token.

        Raises TokenStoreUnavailable when Postgres cannot answer within LOOKUP_TIMEOUT."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable():
            return None
        key = token_hash(token)
        schema = self.cache.get(key)
        if schema is not None:
            return schema
        loop = asyncio.get_running_loop()
        try:
            try:
                schema = await asyncio.wait_for(
                    loop.run_in_executor(self._executor, self.lookup_hash, key), LOOKUP_TIMEOUT)
            except TimeoutError:
                raise TokenStoreUnavailable(f"no answer within {LOOKUP_TIMEOUT:g} s") from None
        except TokenStoreUnavailable as exc:
            schema = self.cache.get_stale(key)
            if schema is None:
                raise
            log.warning("token store unavailable (%s): trusting a token verified in the last "
                        "%d s", exc, self.cache.ttl + self.cache.stale)
            return schema
        if schema is None:
            self.cache.discard(key)  # revoked: not even a stale entry is trusted any more
        else:
            self.cache.put(key, schema)
        return schema


token_store = TokenStore(settings.database_url, settings.token_cache_seconds)
