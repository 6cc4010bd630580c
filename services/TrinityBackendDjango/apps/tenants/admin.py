from django.contrib import admin

from . import tokens
from .models import ApiToken, Client, Domain


@admin.register(Client)
class ClientAdmin(admin.ModelAdmin):
    list_display = ("schema_name", "name", "created_on")
    search_fields = ("schema_name", "name")


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ("domain", "tenant", "is_primary")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """List and revoke. Tokens are issued by `manage.py create_api_token` (the token is shown
    once there); the hash is never shown, and nothing here edits a token."""

    list_display = ("prefix", "tenant", "name", "created_at", "revoked_at")
    list_filter = ("revoked_at", "tenant")
    search_fields = ("prefix", "name", "tenant__schema_name")
    fields = ("prefix", "tenant", "name", "created_at", "revoked_at")
    readonly_fields = fields
    actions = ("revoke",)

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = tokens.revoke(queryset)
        self.message_user(request, f"revoked {count} token(s)")

    def has_add_permission(self, request):
        return False
