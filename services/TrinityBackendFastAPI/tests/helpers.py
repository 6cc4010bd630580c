"""Shared fakes: two tenants' tokens and an in-memory owner store."""

from app.tokens import token_hash

TOKEN_A = "trn_tenant-a-token-for-the-unit-tests-000000000"
TOKEN_B = "trn_tenant-b-token-for-the-unit-tests-111111111"
SCHEMAS = {token_hash(TOKEN_A): "public", token_hash(TOKEN_B): "tenant_b"}
AUTH_A = {"Authorization": f"Bearer {TOKEN_A}"}
AUTH_B = {"Authorization": f"Bearer {TOKEN_B}"}
