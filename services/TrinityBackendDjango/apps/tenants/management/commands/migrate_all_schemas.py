"""Every migration in one process: the shared (public) schema, every tenant's schema, the
public tenant row (ensure_public_tenant), then, when DATABASE_GATEWAY_USER is set, the grants
the FastAPI gateway's role needs to look tokens up, and when DATABASE_MONITOR_USER is set, the
TaskRun statistics function the monitoring profile's Postgres exporter calls (and only that).

The one-shot `migrate` service runs this before web, celery and beat start. One process instead
of three saves two Django start-ups (about 1.5 s each) on every `up`.
"""

import logging

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from apps.orchestration.operations import OPERATIONS

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
    statements = [f"GRANT {what} TO {_quoted(role)}" for what in GATEWAY_GRANTS]
    with connection.cursor() as cursor:
        _require_role(cursor, role, "DATABASE_GATEWAY_USER")
        for statement in statements:
            cursor.execute(statement)
    return statements


def _quoted(role: str) -> str:
    return '"' + role.replace('"', '""') + '"'  # an identifier, whatever characters it holds


def _require_role(cursor, role: str, variable: str) -> None:
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    if cursor.fetchone() is None:
        raise CommandError(f"{variable}: Postgres has no role {role!r}; "
                           "create it (CREATE ROLE ... LOGIN PASSWORD ...) or unset it")


def taskrun_stats_function() -> str:
    """public.trinity_taskrun_stats(): per tenant schema, status and queue kind, how many
    TaskRuns and how old the oldest unfinished one is. SECURITY DEFINER, so a caller with only
    EXECUTE sees these aggregates and no row. The queue kind of each operation is written into
    it from OPERATIONS at every migrate (an operation added later is counted as "default" until
    the next one). Tenants come from tenants_client, so a schema made later is counted at once."""
    # Quoted twice: once as SQL literals, once more inside format()'s literal.
    kinds = " ".join(f"WHEN ''{name}'' THEN ''{op.kind}''" for name, op in sorted(OPERATIONS.items()))
    return f"""
CREATE OR REPLACE FUNCTION public.trinity_taskrun_stats()
RETURNS TABLE (schema_name text, status text, queue text, runs bigint, oldest_seconds float8)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE s text;
BEGIN
  FOR s IN SELECT c.schema_name FROM public.tenants_client c LOOP
    CONTINUE WHEN to_regclass(format('%I.orchestration_taskrun', s)) IS NULL;
    RETURN QUERY EXECUTE format(
      'SELECT %L::text, t.status::text, t.queue, count(*), '
      'CASE WHEN t.status IN (''PENDING'', ''QUEUED'', ''RUNNING'') '
      '     THEN extract(epoch FROM now() - min(t.created_at))::float8 ELSE 0 END '
      'FROM (SELECT status, created_at, CASE operation {kinds} ELSE ''default'' END AS queue '
      '      FROM %I.orchestration_taskrun) t GROUP BY t.status, t.queue', s, s);
  END LOOP;
END $fn$"""


def grant_monitor_access(role: str) -> list[str]:
    """(Re)create the statistics function and let ``role`` call it, and nothing else: no
    table, no schema but public's USAGE (to find the function). Idempotent. A role that does
    not exist raises CommandError naming DATABASE_MONITOR_USER."""
    quoted = _quoted(role)
    statements = [taskrun_stats_function(),
                  "REVOKE ALL ON FUNCTION public.trinity_taskrun_stats() FROM PUBLIC",
                  f"GRANT USAGE ON SCHEMA public TO {quoted}",
                  f"GRANT EXECUTE ON FUNCTION public.trinity_taskrun_stats() TO {quoted}"]
    with connection.cursor() as cursor:
        _require_role(cursor, role, "DATABASE_MONITOR_USER")
        for statement in statements:
            cursor.execute(statement)
    return statements


class Command(BaseCommand):
    help = ("migrate_schemas --shared, then --tenant, then ensure_public_tenant, then the "
            "gateway grants (DATABASE_GATEWAY_USER), then the monitor's (DATABASE_MONITOR_USER), "
            "in one process.")

    def handle(self, *args, **options):
        call_command("migrate_schemas", shared=True, interactive=False)
        call_command("migrate_schemas", tenant=True, interactive=False)
        call_command("ensure_public_tenant")
        role = settings.DATABASE_GATEWAY_USER
        if role:
            for statement in grant_gateway_access(role):
                logger.info("granted: %s", statement)
            self.stdout.write(f"gateway role {role}: granted token lookup access")
        role = settings.DATABASE_MONITOR_USER
        if role:
            # Monitoring is optional: a database made before the role existed (the image makes
            # roles only on first start) still migrates, and says what to do.
            try:
                grant_monitor_access(role)
            except CommandError as exc:
                self.stderr.write(f"warning: {exc}; the monitoring's TaskRun metrics stay empty "
                                  "until it exists (README, \"Monitoring\")")
            else:
                self.stdout.write(f"monitor role {role}: may call public.trinity_taskrun_stats()")
