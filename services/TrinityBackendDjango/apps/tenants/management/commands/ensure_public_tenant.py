"""Create the public tenant (schema 'public') and its 'localhost' domain if missing.

Idempotent: `migrate_all_schemas` (the migrate service) runs it after the migrations, on
every start.
"""

from django.core.management.base import BaseCommand
from django_tenants.utils import get_public_schema_name

from apps.tenants.models import Client, Domain


class Command(BaseCommand):
    help = "Create the public tenant and its 'localhost' domain if they are missing."

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="localhost", help="domain of the public tenant")

    def handle(self, *args, domain, **options):
        schema = get_public_schema_name()
        client, created = Client.objects.get_or_create(schema_name=schema, defaults={"name": schema})
        _, domain_created = Domain.objects.get_or_create(
            domain=domain, defaults={"tenant": client, "is_primary": True}
        )
        self.stdout.write(
            f"public tenant: {'created' if created else 'present'}; "
            f"domain {domain}: {'created' if domain_created else 'present'}"
        )
