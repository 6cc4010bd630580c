"""The token store: cache expiry and bound, one connection per process, one reconnect."""

import asyncio
from unittest import mock

import psycopg
import pytest

from app import tokens
from app.tokens import LOOKUP_SQL, TokenCache, TokenStore, TokenStoreUnavailable, token_hash
from tests.helpers import SCHEMAS, TOKEN_A, TOKEN_B


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_hash_is_sha256_hex_of_the_whole_token():
    import hashlib
    assert token_hash("trn_abc") == hashlib.sha256(b"trn_abc").hexdigest()


def test_cache_entries_expire_after_the_ttl_and_stay_stale_for_a_while():
    clock = Clock()
    cache = TokenCache(10, clock=clock, stale=60)
    cache.put("k", "public")
    clock.now += 9.9
    assert cache.get("k") == "public"
    clock.now += 0.2
    assert cache.get("k") is None
    assert cache.get_stale("k") == "public"
    clock.now += 60
    assert cache.get_stale("k") is None
    assert len(cache) == 0


def test_cache_is_bounded_and_drops_the_oldest():
    cache = TokenCache(10, max_entries=3)
    for key in "abcd":
        cache.put(key, key.upper())
    assert len(cache) == 3
    assert cache.get("a") is None and cache.get("d") == "D"


def test_a_ttl_of_zero_caches_nothing():
    cache = TokenCache(0)
    cache.put("k", "public")
    assert cache.get("k") is None


def test_a_revoked_token_is_refused_once_its_cache_entry_expired():
    store = TokenStore("postgres://g@h/d", cache_seconds=10)
    clock = Clock()
    store.cache.clock = clock
    table = dict(SCHEMAS)
    with mock.patch.object(store, "lookup_hash", side_effect=lambda key: table.get(key)) as lookup:
        assert asyncio.run(store.tenant_for(TOKEN_A)) == "public"
        del table[token_hash(TOKEN_A)]  # revoked
        clock.now += 5
        assert asyncio.run(store.tenant_for(TOKEN_A)) == "public"  # cached
        assert lookup.call_count == 1
        clock.now += 6
        assert asyncio.run(store.tenant_for(TOKEN_A)) is None
        assert lookup.call_count == 2


def test_while_the_store_is_down_a_recently_verified_token_is_still_trusted():
    store = TokenStore("postgres://g@h/d", cache_seconds=10)
    clock = Clock()
    store.cache.clock = clock
    down = TokenStoreUnavailable("OperationalError: connection refused")
    with mock.patch.object(store, "lookup_hash", return_value="public"):
        assert asyncio.run(store.tenant_for(TOKEN_A)) == "public"
    with mock.patch.object(store, "lookup_hash", side_effect=down) as lookup:
        clock.now += 30  # past the TTL: the store is asked, and does not answer
        assert asyncio.run(store.tenant_for(TOKEN_A)) == "public"
        assert lookup.call_count == 1
        with pytest.raises(TokenStoreUnavailable):  # never verified: no stale entry
            asyncio.run(store.tenant_for(TOKEN_B))
        clock.now += store.cache.stale
        with pytest.raises(TokenStoreUnavailable):  # verified too long ago
            asyncio.run(store.tenant_for(TOKEN_A))


def test_a_token_found_revoked_is_not_trusted_stale():
    store = TokenStore("postgres://g@h/d", cache_seconds=10)
    clock = Clock()
    store.cache.clock = clock
    with mock.patch.object(store, "lookup_hash", return_value="public"):
        asyncio.run(store.tenant_for(TOKEN_A))
    clock.now += 11
    with mock.patch.object(store, "lookup_hash", return_value=None):
        assert asyncio.run(store.tenant_for(TOKEN_A)) is None  # revoked
    down = TokenStoreUnavailable("OperationalError: connection refused")
    with mock.patch.object(store, "lookup_hash", side_effect=down):
        with pytest.raises(TokenStoreUnavailable):
            asyncio.run(store.tenant_for(TOKEN_A))


def test_unknown_tokens_are_not_cached():
    store = TokenStore("postgres://g@h/d", cache_seconds=10)
    with mock.patch.object(store, "lookup_hash", return_value=None) as lookup:
        asyncio.run(store.tenant_for("trn_nope"))
        asyncio.run(store.tenant_for("trn_nope"))
    assert lookup.call_count == 2 and len(store.cache) == 0


class FakeConnection:
    def __init__(self, rows=(("public",),), error=None):
        self.rows, self.error = list(rows), error
        self.broken = self.closed = False
        self.executed = []

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params):
        self.executed.append((sql, params))
        if self.error:
            self.broken = True
            raise self.error

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def close(self):
        self.closed = True


def test_one_connection_is_kept_and_opened_as_asked():
    conn = FakeConnection()
    store = TokenStore("postgres://g@h/d", 10)
    with mock.patch("psycopg.connect", return_value=conn) as connect:
        assert store.lookup_hash("a" * 64) == "public"
        assert store.lookup_hash("b" * 64) == "public"
    connect.assert_called_once()
    kwargs = connect.call_args.kwargs
    assert kwargs["autocommit"] is True and kwargs["connect_timeout"] == 3
    assert conn.executed == [(LOOKUP_SQL, ("a" * 64,)), (LOOKUP_SQL, ("b" * 64,))]


def test_a_broken_connection_is_replaced_once():
    broken = FakeConnection(error=psycopg.OperationalError("server closed the connection"))
    fresh = FakeConnection(rows=[("tenant_b",)])
    store = TokenStore("postgres://g@h/d", 10)
    store._conn, store._pid = broken, __import__("os").getpid()
    with mock.patch("psycopg.connect", return_value=fresh) as connect:
        assert store.lookup_hash("a" * 64) == "tenant_b"
    connect.assert_called_once()
    assert broken.closed


def test_a_second_failure_is_unavailable_not_a_loop():
    store = TokenStore("postgres://g@h/d", 10)
    store._conn = FakeConnection(error=psycopg.OperationalError("server closed the connection"))
    store._pid = __import__("os").getpid()
    again = FakeConnection(error=psycopg.OperationalError("still down"))
    with mock.patch("psycopg.connect", return_value=again) as connect:
        with pytest.raises(TokenStoreUnavailable, match="still down"):
            store.lookup_hash("a" * 64)
    connect.assert_called_once()
    assert store._conn is None  # the next request connects afresh


def test_a_failed_connect_is_not_retried():
    store = TokenStore("postgres://g@h/d", 10)
    with mock.patch("psycopg.connect",
                    side_effect=psycopg.OperationalError("connection refused")) as connect:
        with pytest.raises(TokenStoreUnavailable, match="connection refused"):
            store.lookup_hash("a" * 64)
    connect.assert_called_once()


def test_a_missing_grant_is_unavailable():
    store = TokenStore("postgres://g@h/d", 10)
    denied = FakeConnection(error=psycopg.errors.InsufficientPrivilege("permission denied"))
    with mock.patch("psycopg.connect", return_value=denied):
        with pytest.raises(TokenStoreUnavailable, match="InsufficientPrivilege"):
            store.lookup_hash("a" * 64)


def test_a_forked_child_opens_its_own_connection():
    parent = FakeConnection()
    store = TokenStore("postgres://g@h/d", 10)
    store._conn, store._pid = parent, -1  # opened by another process
    child = FakeConnection(rows=[("x",)])
    with mock.patch("psycopg.connect", return_value=child):
        assert store.lookup_hash("a" * 64) == "x"
    assert not parent.closed and parent.executed == []


def test_the_real_connect_to_a_closed_port_fails_fast():
    import time

    store = TokenStore("postgres://g@127.0.0.1:1/t", 10)
    started = time.monotonic()
    with pytest.raises(TokenStoreUnavailable):
        store.ping()
    assert time.monotonic() - started < tokens.CONNECT_TIMEOUT + 1
