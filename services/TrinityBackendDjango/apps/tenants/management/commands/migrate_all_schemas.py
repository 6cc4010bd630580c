"""Every migration in one process: the shared (public) schema, every tenant's schema, then the
public tenant row (ensure_public_tenant).

The one-shot `migrate` service runs this before web, celery and beat start. One process instead
of three saves two Django start-ups (about 1.5 s each) on every `up`.
"""

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "migrate_schemas --shared, then --tenant, then ensure_public_tenant, in one process."

    def handle(self, *args, **options):
        call_command("migrate_schemas", shared=True, interactive=False)
        call_command("migrate_schemas", tenant=True, interactive=False)
        call_command("ensure_public_tenant")
