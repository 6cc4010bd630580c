"""Issue an API token: `create_api_token --tenant NAME --name LABEL`; the token is the last line."""

from django.core.management.base import BaseCommand, CommandError

from apps.tenants import tokens
from apps.tenants.models import Client


class Command(BaseCommand):
    help = "Create an API token for the tenant whose schema is NAME; prints it once, last line."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True,
                            help="schema name of the tenant ('public' too)")
        parser.add_argument("--name", required=True, help="label of the token (max 100 characters)")

    def handle(self, *args, tenant, name, **options):
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("--name: give a label of 1 to 100 characters")
        client = Client.objects.filter(schema_name=tenant).first()
        if client is None:
            raise CommandError(f"no tenant with schema {tenant!r} (create_tenant_schema NAME)")
        token = tokens.issue(client, name)
        self.stdout.write(f"token {name!r} of tenant {tenant} (shown once, store it now):")
        self.stdout.write(token)
