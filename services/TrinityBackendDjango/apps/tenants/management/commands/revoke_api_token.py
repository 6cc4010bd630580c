"""Revoke API tokens: `revoke_api_token --tenant NAME --name LABEL`, every active one so named."""

from django.core.management.base import BaseCommand, CommandError

from apps.tenants import tokens
from apps.tenants.models import ApiToken


class Command(BaseCommand):
    help = "Revoke every active API token of tenant NAME labelled LABEL."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="schema name of the tenant")
        parser.add_argument("--name", required=True, help="label of the token(s)")

    def handle(self, *args, tenant, name, **options):
        count = tokens.revoke(ApiToken.objects.filter(tenant__schema_name=tenant, name=name))
        if not count:
            raise CommandError(f"no active token named {name!r} for tenant {tenant!r}")
        self.stdout.write(f"revoked {count} token(s) named {name!r} of tenant {tenant}")
