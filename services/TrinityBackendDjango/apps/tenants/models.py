"""Tenants: each Client owns one Postgres schema ('public' is the shared one)."""

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)
    created_on = models.DateTimeField(auto_now_add=True)

    # Saving a new Client creates and migrates its schema.
    auto_create_schema = True

    def __str__(self) -> str:
        return f"{self.name} ({self.schema_name})"


class Domain(DomainMixin):
    pass


class ApiToken(models.Model):
    """A bearer token of one tenant. Only the sha256 of the token is stored (``key_hash``); the
    token itself is shown once, by ``create_api_token``. FastAPI reads this table too, as the
    gateway role, through the columns granted by ``migrate_all_schemas``."""

    tenant = models.ForeignKey(Client, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="label, e.g. who or what uses it")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="first 12 characters")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        state = "revoked" if self.revoked_at else "active"
        return f"{self.prefix}… {self.name} ({self.tenant.schema_name}, {state})"
