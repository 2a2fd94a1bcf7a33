"""The part of Keystone v3 that OpenStack clients need to reach the network service: version discovery,
and tokens issued (`POST /v3/auth/tokens`, with a catalog naming this server as the network endpoint),
validated (`GET`) and revoked (`DELETE`).

An Isthmus token is the credential: the `token` method (`openstack --os-auth-type v3token --os-token T`)
or the `password` method with the token as password; an issued token works as the `token` method's too.
The tenant's token scopes only to its own project; the admin token to any (its tenant made if missing, as
Keystone would hold the project). The issued token is a session (`api.auth`): opaque, expiring after an
hour, dying with its credential; the network API reads it back as `Scope`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.responses import JSONResponse

from isthmus import intent
from isthmus.api.auth import Principal, Session, authenticate, close_session, holder, open_session, session
from isthmus.model import Tenant, lookup_kind
from isthmus.store import Ledger, objects

DOMAIN = {"id": "default", "name": "Default"}
_TENANT = lookup_kind("Tenant")


class Unauthorized(Exception):
    """401: the credential is missing, unknown or scoped to another project; the message says which."""


@dataclass(frozen=True)
class Scope:
    """Who asks, for which project: the admin (any project) or a tenant (its own)."""

    project: str
    admin: bool


def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def _session(request: Request, token: str) -> Session:
    found = session(_ledger(request), request.app.state.admin_token, token)
    if found is None:
        raise Unauthorized("the token is not valid or has expired; get one from POST /v3/auth/tokens")
    return found


def scope_of(request: Request, token: str) -> Scope:
    """The scope of an issued token."""
    found = _session(request, token)
    return Scope(found.project, found.admin)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def _asker(request: Request, token: str) -> Scope:
    """Who sends `token` as X-Auth-Token: an issued token, or the admin credential itself."""
    if authenticate(_ledger(request), request.app.state.admin_token, token) == Principal(None):
        return Scope("", True)
    return scope_of(request, token)


def _version(request: Request) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{request.base_url}v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }


def _catalog(request: Request) -> list[dict[str, Any]]:
    def service(kind: str, name: str, url: str) -> dict[str, Any]:
        return {
            "id": kind,
            "type": kind,
            "name": name,
            "endpoints": [
                {
                    "id": f"{kind}-{i}",
                    "interface": i,
                    "region": "RegionOne",
                    "region_id": "RegionOne",
                    "url": url,
                }
                for i in ("public", "internal", "admin")
            ],
        }

    base = str(request.base_url)
    return [service("network", "isthmus", base), service("identity", "keystone", f"{base}v3")]


def _credential(auth: dict[str, Any]) -> str:
    identity = auth.get("identity") or {}
    methods = identity.get("methods") or []
    if "token" in methods:
        return str((identity.get("token") or {}).get("id") or "")
    if "password" in methods:
        return str(((identity.get("password") or {}).get("user") or {}).get("password") or "")
    raise Unauthorized("authenticate with the token or password method (an Isthmus token)")


def _project(auth: dict[str, Any], admin: bool, tenant: str | None) -> str:
    project = (auth.get("scope") or {}).get("project") or {}
    name = project.get("name") or project.get("id") or (None if admin else tenant)
    if not name:
        raise Unauthorized("scope the token to a project (--os-project-name)")
    return str(name)


def _ensure_tenant(ledger: Ledger, name: str) -> None:
    if objects.list_one(ledger, _TENANT, None, name) is None:
        tenant = Tenant.model_validate({"metadata": {"name": name}})
        intent.apply(ledger, [tenant])


def identity_routes() -> APIRouter:
    router = APIRouter(prefix="/v3", tags=["Identity (Keystone v3, tokens only)"])

    @router.get("")
    @router.get("/")
    def version(request: Request) -> dict[str, Any]:
        return {"version": _version(request)}

    def answer(request: Request, opened: Session, token: str, code: int) -> JSONResponse:
        project, admin = opened.project, opened.admin
        user = {"id": f"isthmus-{project}", "name": "admin" if admin else project, "domain": DOMAIN}
        role = {"id": "admin" if admin else "member", "name": "admin" if admin else "member"}
        body = {
            "token": {
                "methods": ["token"],
                "issued_at": _stamp(datetime.now(UTC)),
                "expires_at": _stamp(datetime.fromtimestamp(opened.expires, UTC)),
                "user": user,
                "project": {"id": project, "name": project, "domain": DOMAIN},
                "roles": [role],
                "catalog": _catalog(request),
            }
        }
        return JSONResponse(body, status_code=code, headers={"X-Subject-Token": token})

    @router.post("/auth/tokens")
    def issue(request: Request, auth: Annotated[dict[str, Any], Body(embed=True)]) -> JSONResponse:
        ledger, admin_token, credential = _ledger(request), request.app.state.admin_token, _credential(auth)
        held = holder(ledger, admin_token, credential)
        if held is None:
            raise Unauthorized("the token is not valid or has expired")
        who = held[0]
        project = _project(auth, who.admin, who.tenant)
        if who.admin:
            _ensure_tenant(ledger, project)
        made = open_session(ledger, admin_token, credential, project)
        if made is None:
            raise Unauthorized(f"tenant {who.tenant}'s token does not scope to project {project}")
        return answer(request, made[1], made[0], 201)

    @router.get("/auth/tokens")
    def validate(
        request: Request, x_subject_token: Annotated[str, Header()], x_auth_token: Annotated[str, Header()]
    ) -> JSONResponse:
        _asker(request, x_auth_token)
        return answer(request, _session(request, x_subject_token), x_subject_token, 200)

    @router.delete("/auth/tokens", status_code=204)
    def revoke(
        request: Request, x_subject_token: Annotated[str, Header()], x_auth_token: Annotated[str, Header()]
    ) -> Response:
        asker = _asker(request, x_auth_token)
        revoked = _session(request, x_subject_token)
        if not asker.admin and asker.project != revoked.project:
            raise Unauthorized(f"a token of project {asker.project} revokes its own project's only")
        close_session(_ledger(request), x_subject_token)
        return Response(status_code=204)

    return router
