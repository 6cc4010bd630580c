"""API tokens: the model, the commands, the admin and the gateway role's grants."""

import hashlib
import io
from unittest import mock

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.utils import ProgrammingError
from django.test import override_settings

from apps.tenants import tokens
from apps.tenants.management.commands.migrate_all_schemas import grant_gateway_access
from apps.tenants.models import ApiToken, Client

pytestmark = pytest.mark.django_db


def create_token(tenant="public", name="ci") -> tuple[str, str]:
    out = io.StringIO()
    call_command("create_api_token", "--tenant", tenant, "--name", name, stdout=out)
    return out.getvalue(), out.getvalue().splitlines()[-1]


def test_issue_and_look_up(public_tenant, tenant_schema):
    token = tokens.issue(public_tenant, "a")
    other = tokens.issue(Client.objects.get(schema_name=tenant_schema), "a")
    assert token.startswith("trn_") and len(token) == 4 + 43 and token != other
    assert tokens.tenant_for(f"Bearer {token}") == "public"
    assert tokens.tenant_for(f"bearer {other}") == tenant_schema
    for header in (None, "", token, f"Basic {token}", f"Bearer {token}x", "Bearer "):
        assert tokens.tenant_for(header) is None


def test_create_api_token_prints_it_last_and_stores_only_its_hash(public_tenant):
    output, token = create_token()
    assert token.startswith("trn_")
    row = ApiToken.objects.get()
    assert row.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.prefix == token[:12] and row.name == "ci" and row.tenant == public_tenant
    assert row.revoked_at is None
    stored = [str(value) for value in ApiToken.objects.values_list().get()]
    assert token not in stored and not any(token in value for value in stored)
    assert tokens.tenant_for(f"Bearer {token}") == "public"


def test_create_api_token_for_a_tenant(tenant_schema):
    _, token = create_token(tenant_schema, "worker")
    assert tokens.tenant_for(f"Bearer {token}") == tenant_schema


def test_create_api_token_needs_a_known_tenant(public_tenant):
    with pytest.raises(CommandError, match="no tenant with schema 'missing'"):
        create_token("missing")
    assert not ApiToken.objects.exists()


def test_revoke_api_token_revokes_every_active_token_of_that_label(public_tenant, tenant_schema):
    _, first = create_token(name="ci")
    _, second = create_token(name="ci")
    _, kept = create_token(name="other")
    _, tenant_ci = create_token(tenant_schema, "ci")
    out = io.StringIO()
    call_command("revoke_api_token", "--tenant", "public", "--name", "ci", stdout=out)
    assert "revoked 2 token(s)" in out.getvalue()
    assert tokens.tenant_for(f"Bearer {first}") is None
    assert tokens.tenant_for(f"Bearer {second}") is None
    assert tokens.tenant_for(f"Bearer {kept}") == "public"
    assert tokens.tenant_for(f"Bearer {tenant_ci}") == tenant_schema
    with pytest.raises(CommandError, match="no active token named 'ci' for tenant 'public'"):
        call_command("revoke_api_token", "--tenant", "public", "--name", "ci")


def test_admin_lists_and_revokes_without_showing_the_hash(admin_client, public_tenant):
    _, token = create_token(name="shown-in-admin")
    row = ApiToken.objects.get()
    page = admin_client.get("/admin/tenants/apitoken/")
    assert page.status_code == 200
    html = page.content.decode()
    assert row.prefix in html and "shown-in-admin" in html
    assert row.key_hash not in html and token not in html
    detail = admin_client.get(f"/admin/tenants/apitoken/{row.pk}/change/").content.decode()
    assert row.key_hash not in detail and token not in detail
    response = admin_client.post("/admin/tenants/apitoken/",
                                 {"action": "revoke", "_selected_action": [row.pk]})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert tokens.tenant_for(f"Bearer {token}") is None


GATEWAY_ROLE = "trinity_gateway_test"
# FastAPI's lookup, exactly as in the contract.
GATEWAY_LOOKUP = ("SELECT c.schema_name FROM tenants_apitoken t JOIN tenants_client c "
                  "ON c.id = t.tenant_id WHERE t.key_hash = %s AND t.revoked_at IS NULL")


@pytest.fixture
def gateway_role(db):
    """A role that exists only inside the test's transaction (CREATE ROLE is transactional)."""
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{GATEWAY_ROLE}" NOLOGIN')
    return GATEWAY_ROLE


def _privilege(sql: str, *args) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchone()[0]


def test_gateway_grants_exactly_the_token_lookup(gateway_role, public_tenant, tenant_schema):
    first = grant_gateway_access(gateway_role)
    assert grant_gateway_access(gateway_role) == first  # idempotent
    assert _privilege("SELECT has_schema_privilege(%s, 'public', 'USAGE')", gateway_role)
    for column in ("id", "tenant_id", "key_hash", "revoked_at"):
        assert _privilege("SELECT has_column_privilege(%s, 'public.tenants_apitoken', %s, "
                          "'SELECT')", gateway_role, column), column
    for column in ("id", "schema_name"):
        assert _privilege("SELECT has_column_privilege(%s, 'public.tenants_client', %s, "
                          "'SELECT')", gateway_role, column), column
    for table, column in (("tenants_apitoken", "name"), ("tenants_apitoken", "prefix"),
                          ("tenants_client", "name")):
        assert not _privilege("SELECT has_column_privilege(%s, %s, %s, 'SELECT')",
                              gateway_role, f"public.{table}", column), (table, column)
    for table in ("public.tenants_apitoken", "public.tenants_client",
                  "public.orchestration_taskrun", f"{tenant_schema}.orchestration_taskrun"):
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            assert not _privilege("SELECT has_table_privilege(%s, %s, %s)",
                                  gateway_role, table, privilege), (table, privilege)
    assert not _privilege("SELECT has_schema_privilege(%s, %s, 'USAGE')",
                          gateway_role, tenant_schema)

    # As the role: the gateway's query works, reading a label does not.
    token = tokens.issue(public_tenant, "gateway")
    with connection.cursor() as cursor:
        cursor.execute("SET search_path TO public")
        cursor.execute(f'SET ROLE "{gateway_role}"')
        try:
            cursor.execute(GATEWAY_LOOKUP, [tokens.hash_token(token)])
            assert cursor.fetchall() == [("public",)]
            with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
                cursor.execute("SELECT name FROM tenants_apitoken")
            with pytest.raises(ProgrammingError, match="permission denied"), transaction.atomic():
                cursor.execute("SELECT id FROM public.orchestration_taskrun")
        finally:
            cursor.execute("RESET ROLE")
            cursor.execute("RESET search_path")
    connection.set_schema_to_public()  # django-tenants: SET search_path again on next query


@pytest.fixture
def migrations_skipped():
    """migrate_all_schemas without its migrate_schemas/ensure_public_tenant steps."""
    with mock.patch("apps.tenants.management.commands.migrate_all_schemas.call_command") as steps:
        yield steps


def test_migrate_all_schemas_grants_only_when_the_role_is_set(gateway_role, migrations_skipped,
                                                              caplog):
    with override_settings(DATABASE_GATEWAY_USER=None):
        call_command("migrate_all_schemas", stdout=io.StringIO())
    assert [c.args[0] for c in migrations_skipped.call_args_list] == [
        "migrate_schemas", "migrate_schemas", "ensure_public_tenant"]
    assert not _privilege("SELECT has_column_privilege(%s, 'public.tenants_apitoken', "
                          "'key_hash', 'SELECT')", gateway_role)
    out = io.StringIO()
    with override_settings(DATABASE_GATEWAY_USER=gateway_role), caplog.at_level("INFO"):
        call_command("migrate_all_schemas", stdout=out)
    assert f"gateway role {gateway_role}: granted" in out.getvalue()
    assert _privilege("SELECT has_column_privilege(%s, 'public.tenants_apitoken', "
                      "'key_hash', 'SELECT')", gateway_role)
    granted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("granted: ")]
    assert len(granted) == 3 and all(f'TO "{gateway_role}"' in line for line in granted)


def test_a_missing_gateway_role_is_named(db):
    with pytest.raises(CommandError, match="DATABASE_GATEWAY_USER: Postgres has no role"):
        grant_gateway_access("nobody_x")
