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
