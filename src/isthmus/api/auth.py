"""Bearer tokens: one admin token given at start, per-tenant tokens kept hashed in the ledger, and the
sessions the identity endpoint issues from either (EXPIRY-RANDOM, kept under their expiry).

A tenant token is bound to its tenant's uid, so it dies with the tenant even if the name is reused. A
session is opaque, scoped to one project and expires (SESSION_SECONDS, as Keystone's tokens do); it dies
with the credential it was opened with (a revoked tenant token, a changed admin token) and can be closed.
Tokens and sessions are 256 random bits, so a plain SHA-256 is a safe hash for them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass

from isthmus.model import Tenant, lookup_kind
from isthmus.store import Ledger, transact
from isthmus.store import objects as stored
from isthmus.store.txn import Txn

TOKENS = "/tokens/"
SESSIONS = "/sessions/"
SESSION_SECONDS = 3600
PRUNED = 100  # expired sessions dropped at most at each issue
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
    return _tenant_token(ledger, TOKENS + _digest(token))


def _tenant_token(ledger: Ledger, key: str) -> Principal | None:
    """The tenant whose token the ledger holds at `key`, while the tenant it was issued to lives."""
    kv = ledger.get(key)
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


@dataclass(frozen=True)
class Session:
    """An issued session: its project, whether its credential is the admin's, when it expires (epoch s)."""

    project: str
    admin: bool
    expires: float


def _session_key(token: str) -> str | None:
    """Where a session is kept: under its expiry (the token's prefix, epoch seconds), so that the expired
    ones are a range to drop; None for what is not a session token."""
    expires, dash, _ = token.partition("-")
    return f"{SESSIONS}{int(expires):012d}/{_digest(token)}" if dash and expires.isdigit() else None


def _credential(admin_token: str, credential: str, who: Principal) -> str:
    """What a session stays bound to: the admin token's digest, or the tenant token's key."""
    return f"admin:{_digest(admin_token)}" if who.admin else TOKENS + _digest(credential)


def holder(
    ledger: Ledger, admin_token: str, credential: str, now: float | None = None
) -> tuple[Principal, str] | None:
    """Who a credential (a token, or a session still open) speaks for, and what a session opened with it
    stays bound to; None when it is not valid."""
    who = authenticate(ledger, admin_token, credential)
    if who is not None:
        return who, _credential(admin_token, credential, who)
    opened = _open(ledger, admin_token, credential, time.time() if now is None else now)
    if opened is None:
        return None
    return Principal(None if opened[0].admin else opened[0].project), opened[1]


def open_session(
    ledger: Ledger, admin_token: str, credential: str, project: str, now: float | None = None
) -> tuple[str, Session] | None:
    """A new session for `project` from a credential (`holder`); None when the credential is not valid or
    a tenant's does not scope to `project`. Expired sessions are dropped."""
    now = time.time() if now is None else now
    held = holder(ledger, admin_token, credential, now)
    if held is None or not (held[0].admin or held[0].tenant == project):
        return None
    expires = int(now + SESSION_SECONDS)
    token, made = f"{expires}-{secrets.token_urlsafe(32)}", Session(project, held[0].admin, expires)
    record = {"project": project, "admin": made.admin, "expires": made.expires, "credential": held[1]}
    expired = ledger.range(SESSIONS, f"{SESSIONS}{int(now):012d}", limit=PRUNED)
    key = _session_key(token)
    assert key is not None
    ledger.commit({}, [*((kv.key, None) for kv in expired), (key, json.dumps(record).encode())])
    return token, made


def session(ledger: Ledger, admin_token: str, token: str, now: float | None = None) -> Session | None:
    """The open session `token` names: None when unknown, expired, or its credential is gone."""
    opened = _open(ledger, admin_token, token, time.time() if now is None else now)
    return opened[0] if opened is not None else None


def _open(ledger: Ledger, admin_token: str, token: str, now: float) -> tuple[Session, str] | None:
    """The open session `token` names, and the credential it is bound to."""
    key = _session_key(token)
    kv = ledger.get(key) if key is not None else None
    if kv is None:
        return None
    record = json.loads(kv.value)
    bound = record["credential"]
    if bound.startswith("admin:"):
        alive = hmac.compare_digest(bound, f"admin:{_digest(admin_token)}")
    else:
        alive = _tenant_token(ledger, bound) is not None
    if record["expires"] <= now or not alive:
        return None
    return Session(record["project"], record["admin"], record["expires"]), bound


def close_session(ledger: Ledger, token: str) -> bool:
    """End a session; False when there was none."""
    key = _session_key(token)
    kv = ledger.get(key) if key is not None else None
    if key is None or kv is None:
        return False
    ledger.commit({key: kv.mod_revision}, [(key, None)])
    return True
