"""Bearer tokens: one admin token given at start, and per-tenant tokens kept hashed in the ledger.

A tenant token is bound to its tenant's uid, so it dies with the tenant even if the name is reused.
Tokens are 256 random bits, so a plain SHA-256 is a safe hash for them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass

from isthmus.model import Tenant, lookup_kind
from isthmus.store import Ledger, transact
from isthmus.store import objects as stored
from isthmus.store.txn import Txn

TOKENS = "/tokens/"
_TENANT = lookup_kind("Tenant")


@dataclass(frozen=True)
class Principal:
    """Who is asking: the admin (tenant None) or one tenant."""

    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _tenant_uid(txn: Txn, name: str) -> str | None:
    tenant = stored.get(txn, _TENANT, None, name)
    return tenant.metadata.uid if isinstance(tenant, Tenant) else None


def authenticate(ledger: Ledger, admin_token: str, token: str) -> Principal | None:
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal(None)
    kv = ledger.get(TOKENS + _digest(token))
    if kv is None:
        return None
    record = json.loads(kv.value)
    tenant = stored.list_one(ledger, _TENANT, None, record["tenant"])
    return (
        Principal(record["tenant"])
        if tenant is not None and tenant.metadata.uid == record["tenantUid"]
        else None
    )


def issue(ledger: Ledger, tenant: str, description: str = "") -> tuple[str, str] | None:
    """A new token for the tenant: (token id, token); None when the tenant does not exist."""
    token, token_id = secrets.token_urlsafe(32), str(uuid.uuid4())

    def work(txn: Txn) -> bool:
        uid = _tenant_uid(txn, tenant)
        if uid is None:
            return False
        record = {"id": token_id, "tenant": tenant, "tenantUid": uid, "description": description}
        txn.put(TOKENS + _digest(token), json.dumps(record).encode())
        return True

    return (token_id, token) if transact(ledger, work)[0] else None


def tokens_of(ledger: Ledger, tenant: str) -> list[dict[str, str]]:
    """The tenant's tokens, without their secrets."""
    items, _ = ledger.list(TOKENS)
    records = [json.loads(kv.value) for kv in items]
    return [{"id": r["id"], "description": r["description"]} for r in records if r["tenant"] == tenant]


def revoke(ledger: Ledger, tenant: str, token_id: str) -> bool:
    items, _ = ledger.list(TOKENS)
    for kv in items:
        record = json.loads(kv.value)
        if record["tenant"] == tenant and record["id"] == token_id:
            ledger.commit({kv.key: kv.mod_revision}, [(kv.key, None)])
            return True
    return False
