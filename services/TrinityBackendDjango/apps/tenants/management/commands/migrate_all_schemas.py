"""Every migration in one process: the shared (public) schema, every tenant's schema, the
public tenant row (ensure_public_tenant), then, when DATABASE_GATEWAY_USER is set, the grants
the FastAPI gateway's role needs to look tokens up.

The one-shot `migrate` service runs this before web, celery and beat start. One process instead
of three saves two Django start-ups (about 1.5 s each) on every `up`.
"""

import logging

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

logger = logging.getLogger(__name__)

# Exactly what the gateway's token lookup reads: never a
# token's name, never a TaskRun table, never a tenant schema.
GATEWAY_GRANTS = (
    "USAGE ON SCHEMA public",
    "SELECT (id, tenant_id, key_hash, revoked_at) ON TABLE public.tenants_apitoken",
    "SELECT (id, schema_name) ON TABLE public.tenants_client",
)


def grant_gateway_access(role: str) -> list[str]:
    """Grant ``role`` read access to the token lookup columns; return the statements run.
    Idempotent (GRANT of a held privilege is a no-op). A role that does not exist raises
    CommandError naming DATABASE_GATEWAY_USER."""
    quoted = '"' + role.replace('"', '""') + '"'  # an identifier, whatever characters it holds
    statements = [f"GRANT {what} TO {quoted}" for what in GATEWAY_GRANTS]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            raise CommandError(f"DATABASE_GATEWAY_USER: Postgres has no role {role!r}; "
                               "create it (CREATE ROLE ... LOGIN PASSWORD ...) or unset it")
        for statement in statements:
            cursor.execute(statement)
    return statements


class Command(BaseCommand):
    help = ("migrate_schemas --shared, then --tenant, then ensure_public_tenant, then the "
            "gateway grants (DATABASE_GATEWAY_USER), in one process.")

    def handle(self, *args, **options):
        call_command("migrate_schemas", shared=True, interactive=False)
        call_command("migrate_schemas", tenant=True, interactive=False)
        call_command("ensure_public_tenant")
        role = settings.DATABASE_GATEWAY_USER
        if role:
            for statement in grant_gateway_access(role):
                logger.info("granted: %s", statement)
            self.stdout.write(f"gateway role {role}: granted token lookup access")
