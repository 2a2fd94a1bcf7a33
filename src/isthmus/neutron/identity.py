"""The part of Keystone v3 that OpenStack clients need to reach the network service: version discovery
and token issue (`POST /v3/auth/tokens`) with a catalog naming this server as the network endpoint.

An Isthmus token is the credential: the `token` method (`openstack --os-auth-type v3token --os-token T`)
or the `password` method with the token as password. The tenant's token scopes only to its own project;
the admin token to any (its tenant made if missing, as Keystone would hold the project). The issued
token is PROJECT:TOKEN, which the network API reads back as `Scope`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import JSONResponse

from isthmus import intent
from isthmus.api.auth import authenticate
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


def scope_of(request: Request, token: str) -> Scope:
    """The scope of an issued token (PROJECT:TOKEN)."""
    project, _, secret = token.partition(":")
    found = authenticate(_ledger(request), request.app.state.admin_token, secret) if secret else None
    if found is None or not (found.admin or found.tenant == project):
        raise Unauthorized("the token is not valid; get one from POST /v3/auth/tokens")
    return Scope(project, found.admin)


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

    def answer(request: Request, project: str, admin: bool, token: str, code: int) -> JSONResponse:
        now = datetime.now(UTC)
        user = {"id": f"isthmus-{project}", "name": "admin" if admin else project, "domain": DOMAIN}
        role = {"id": "admin" if admin else "member", "name": "admin" if admin else "member"}
        body = {
            "token": {
                "methods": ["token"],
                "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "expires_at": (now + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                "user": user,
                "project": {"id": project, "name": project, "domain": DOMAIN},
                "roles": [role],
                "catalog": _catalog(request),
            }
        }
        return JSONResponse(body, status_code=code, headers={"X-Subject-Token": token})

    @router.post("/auth/tokens")
    def issue(request: Request, auth: Annotated[dict[str, Any], Body(embed=True)]) -> JSONResponse:
        secret = _credential(auth).partition(":")[2] or _credential(auth)  # an issued token works too
        found = authenticate(_ledger(request), request.app.state.admin_token, secret)
        if found is None:
            raise Unauthorized("the token is not valid")
        project = _project(auth, found.admin, found.tenant)
        if not found.admin and project != found.tenant:
            raise Unauthorized(f"tenant {found.tenant}'s token does not scope to project {project}")
        if found.admin:
            _ensure_tenant(_ledger(request), project)
        return answer(request, project, found.admin, f"{project}:{secret}", 201)

    @router.get("/auth/tokens")
    def validate(
        request: Request, x_subject_token: Annotated[str, Header()], x_auth_token: Annotated[str, Header()]
    ) -> JSONResponse:
        scope_of(request, x_auth_token)
        scope = scope_of(request, x_subject_token)
        return answer(request, scope.project, scope.admin, x_subject_token, 200)

    return router
