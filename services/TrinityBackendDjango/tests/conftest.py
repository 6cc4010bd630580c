"""Fixtures for the Django tests (they need the Postgres of DATABASE_URL; the test
database is created beside it, so the user must be allowed to CREATE DATABASE)."""

import pytest
from django_tenants.utils import schema_context

from apps.orchestration.models import TaskRun


@pytest.fixture
def tenant_schema(db):
    """A second tenant with its own schema; rolled back with the test's transaction."""
    from apps.tenants.models import Client

    client = Client(schema_name="tenant_test", name="tenant test")
    client.save()  # creates and migrates the schema
    return client.schema_name


@pytest.fixture
def make_run(db):
    def make(operation="echo", payload=None, schema="public", **fields):
        with schema_context(schema):
            return TaskRun.objects.create(operation=operation, payload=payload, **fields)

    return make


def reload(run, schema="public"):
    with schema_context(schema):
        return TaskRun.objects.get(pk=run.pk)


@pytest.fixture
def public_tenant(db):
    """The public tenant's row (ensure_public_tenant creates it in a real deployment)."""
    from apps.tenants.models import Client

    return Client.objects.get_or_create(schema_name="public", defaults={"name": "public"})[0]


@pytest.fixture
def issue_token(db):
    """issue_token(tenant or schema name, label="test") -> a fresh token string."""
    from apps.tenants import tokens
    from apps.tenants.models import Client

    def issue(tenant, name="test"):
        if isinstance(tenant, str):
            tenant = Client.objects.get(schema_name=tenant)
        return tokens.issue(tenant, name)

    return issue


@pytest.fixture
def token(public_tenant, issue_token):
    """A token of the public tenant."""
    return issue_token(public_tenant)


@pytest.fixture
def api(client, token):
    """The test client with the public tenant's token on every request."""
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client
