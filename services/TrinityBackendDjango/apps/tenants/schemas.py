"""Tenant schemas: what a schema name may be, and which exist ('public' plus one per tenant
(Client) row)."""

import re

from django_tenants.utils import get_public_schema_name, schema_context, schema_exists

from apps.tenants.models import Client

# A Postgres identifier that needs no quoting: lowercase, at most 63 characters.
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class UnknownSchema(LookupError):
    """The schema is not a tenant of this installation."""


def check_schema(name) -> str:
    """Return ``name`` if it is 'public' or a tenant's schema that exists; else raise."""
    public = get_public_schema_name()
    if name == public:
        return name
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise UnknownSchema(f"unknown schema {name!r}: not a valid schema name")
    with schema_context(public):
        known = Client.objects.filter(schema_name=name).exists() and schema_exists(name)
    if not known:
        raise UnknownSchema(f"unknown schema {name!r}: no such tenant")
    return name


def all_schemas() -> list[str]:
    """'public' first, then every tenant schema."""
    public = get_public_schema_name()
    with schema_context(public):
        tenants = Client.objects.exclude(schema_name=public).values_list("schema_name", flat=True)
        return [public, *sorted(tenants)]
