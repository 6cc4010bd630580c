"""Create a tenant and its schema (migrated) if missing: `create_tenant_schema NAME`."""

from django.core.management.base import BaseCommand, CommandError

from apps.tenants.models import Client, Domain
from apps.tenants.schemas import SCHEMA_NAME


class Command(BaseCommand):
    help = "Create a tenant whose Postgres schema is NAME (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="schema name: lowercase letters, digits, underscore")

    def handle(self, *args, name, **options):
        if not SCHEMA_NAME.match(name) or name.startswith("pg_") or name == "public":
            raise CommandError(f"invalid tenant schema name {name!r}")
        client, created = Client.objects.get_or_create(schema_name=name, defaults={"name": name})
        if not created:
            client.create_schema(check_if_exists=True)  # repair a dropped schema
        Domain.objects.get_or_create(
            domain=f"{name}.localhost", defaults={"tenant": client, "is_primary": True}
        )
        self.stdout.write(f"tenant {name}: {'created' if created else 'present'}")
