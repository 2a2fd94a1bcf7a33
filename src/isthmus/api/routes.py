"""Routes: one set per Isthmus kind on Kubernetes-style paths; thin handlers over isthmus.intent.

A tenant token works only inside its own namespace: it cannot list or change other namespaces (403) and
other tenants' objects do not exist for it (404).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from isthmus import intent
from isthmus.api.auth import Principal, authenticate, issue, revoke, tokens_of
from isthmus.compile.source import compiled
from isthmus.dataplane.trace import Tracer, names
from isthmus.dataplane.trace.matrix import matrix
from isthmus.model import KINDS, KindInfo, ManifestError, Object, parse_manifests, parse_object
from isthmus.model.manifest import describe
from isthmus.observe.flows import Filter, Observer
from isthmus.observe.impact import impact, parse_port
from isthmus.observe.topology import topology
from isthmus.store import Ledger, objects

PREFIX = "/apis/isthmus.io/v1"


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason = code, reason


def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "Unauthorized", "send 'Authorization: Bearer TOKEN'")
    found = authenticate(_ledger(request), request.app.state.admin_token, token.strip())
    if found is None:
        raise ApiError(401, "Unauthorized", "the token is not valid")
    return found


Caller = Annotated[Principal, Depends(principal)]


def _not_found(info: KindInfo, namespace: str | None, name: str) -> ApiError:
    return ApiError(404, "NotFound", f"{info.kind} {f'{namespace}/' if namespace else ''}{name} not found")


def _authorize(who: Principal, info: KindInfo, namespace: str | None, name: str | None, write: bool) -> None:
    """Admins may do anything; a tenant only what lies in its namespace, and read its own Tenant."""
    if who.admin or (info.namespaced and namespace == who.tenant):
        return
    if info.namespaced and namespace is None and name is None and not write:
        return  # a list across namespaces, filtered to the tenant's own
    own_tenant = info.kind == "Tenant" and not write
    if name is not None and not write and (info.namespaced or own_tenant):
        if own_tenant and name == who.tenant:
            return
        raise _not_found(info, namespace, name)
    if own_tenant and name is None:
        return  # the list is filtered to the tenant itself
    verb = "change" if write else "list"
    where = f" in namespace {namespace}" if info.namespaced else ""
    raise ApiError(403, "Forbidden", f"tenant {who.tenant} may not {verb} {info.plural}{where}")


def _dump(obj: Object) -> dict[str, Any]:
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


def _parse(info: KindInfo, body: dict[str, Any], namespace: str | None, name: str | None) -> Object:
    if not isinstance(body.get("metadata"), dict):
        raise ApiError(422, "Invalid", "metadata: a mapping with at least a name is required")
    meta = dict(body["metadata"])
    for field, wanted in (("namespace", namespace), ("name", name)):
        if wanted is not None and meta.setdefault(field, wanted) != wanted:
            raise ApiError(
                400, "BadRequest", f"metadata.{field} {meta[field]!r} does not match the URL's {wanted!r}"
            )
    if body.setdefault("kind", info.kind) != info.kind:
        raise ApiError(400, "BadRequest", f"kind {body['kind']!r} does not match the URL's {info.kind}")
    try:
        return parse_object(
            {**body, "apiVersion": body.get("apiVersion", info.api_version()), "metadata": meta}
        )
    except (ValidationError, KeyError) as exc:
        message = describe(exc) if isinstance(exc, ValidationError) else str(exc.args[0])
        raise ApiError(422, "Invalid", f"{info.kind} {meta.get('name', '?')}: {message}") from None


def _add_kind(router: APIRouter, info: KindInfo) -> None:
    assert info.model is not None
    schema = {"$ref": f"#/components/schemas/{info.model.__name__}"}
    body_doc: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }
    one: dict[int | str, dict[str, Any]] = {200: {"model": info.model}}
    base = (
        f"{PREFIX}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{PREFIX}/{info.plural}"
    )
    tags: list[str | Enum] = [info.kind]

    def list_(request: Request, who: Caller, namespace: str | None = None) -> dict[str, Any]:
        _authorize(who, info, namespace, None, write=False)
        scope = namespace if namespace is not None else who.tenant if info.namespaced else None
        items, revision = objects.list_objects(_ledger(request), info, scope)
        if not who.admin and not info.namespaced:
            items = [o for o in items if o.metadata.name == who.tenant]
        return {
            "apiVersion": info.api_version(),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": revision},
            "items": [_dump(o) for o in items],
        }

    def get(request: Request, who: Caller, name: str, namespace: str | None = None) -> dict[str, Any]:
        _authorize(who, info, namespace, name, write=False)
        found = objects.list_one(_ledger(request), info, namespace, name)
        if found is None:
            raise _not_found(info, namespace, name)
        return _dump(found)

    def create(
        request: Request, who: Caller, body: Annotated[dict[str, Any], Body()], namespace: str | None = None
    ) -> JSONResponse:
        _authorize(who, info, namespace, None, write=True)
        applied = intent.apply(_ledger(request), [_parse(info, body, namespace, None)], create_only=True)
        return JSONResponse(_dump(applied[0].object), status_code=201)

    def replace(
        request: Request,
        who: Caller,
        name: str,
        body: Annotated[dict[str, Any], Body()],
        namespace: str | None = None,
    ) -> JSONResponse:
        _authorize(who, info, namespace, name, write=True)
        obj = _parse(info, body, namespace, name)
        applied = intent.apply(_ledger(request), [obj], check_version=True)[0]
        return JSONResponse(_dump(applied.object), status_code=201 if applied.action == "created" else 200)

    def delete(request: Request, who: Caller, name: str, namespace: str | None = None) -> dict[str, Any]:
        _authorize(who, info, namespace, name, write=True)
        return _dump(intent.delete(_ledger(request), [(info, namespace, name)])[0].object)

    router.add_api_route(base, list_, methods=["GET"], tags=tags, name=f"list {info.plural}")
    router.add_api_route(
        base,
        create,
        methods=["POST"],
        tags=tags,
        status_code=201,
        openapi_extra=body_doc,
        name=f"create {info.kind}",
    )
    router.add_api_route(
        f"{base}/{{name}}", get, methods=["GET"], tags=tags, responses=one, name=f"read {info.kind}"
    )
    router.add_api_route(
        f"{base}/{{name}}",
        replace,
        methods=["PUT"],
        tags=tags,
        openapi_extra=body_doc,
        name=f"create or replace {info.kind}",
    )
    router.add_api_route(
        f"{base}/{{name}}", delete, methods=["DELETE"], tags=tags, name=f"delete {info.kind}"
    )
    if info.namespaced:
        router.add_api_route(
            f"{PREFIX}/{info.plural}",
            list_,
            methods=["GET"],
            tags=tags,
            name=f"list {info.plural} of every namespace",
        )


def kind_routes() -> APIRouter:
    router = APIRouter()
    for info in KINDS:
        if info.model is not None:
            _add_kind(router, info)
    return router


def token_routes() -> APIRouter:
    router = APIRouter(prefix=f"{PREFIX}/tenants/{{tenant}}/tokens", tags=["Token"])

    def admin_only(who: Principal) -> None:
        if not who.admin:
            raise ApiError(403, "Forbidden", "only the admin manages tokens")

    @router.post("", status_code=201)
    def create(
        request: Request, who: Caller, tenant: str, description: Annotated[str, Body(embed=True)] = ""
    ) -> dict[str, str]:
        admin_only(who)
        made = issue(_ledger(request), tenant, description)
        if made is None:
            raise ApiError(404, "NotFound", f"Tenant {tenant} not found")
        return {"id": made[0], "token": made[1], "tenant": tenant}

    @router.get("")
    def list_(request: Request, who: Caller, tenant: str) -> list[dict[str, str]]:
        admin_only(who)
        return tokens_of(_ledger(request), tenant)

    @router.delete("/{token_id}")
    def delete(request: Request, who: Caller, tenant: str, token_id: str) -> dict[str, str]:
        admin_only(who)
        if not revoke(_ledger(request), tenant, token_id):
            raise ApiError(404, "NotFound", f"token {token_id} of tenant {tenant} not found")
        return {"id": token_id, "status": "revoked"}

    return router


def flow_routes() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["Flow"])

    @router.get("/flows", name="list flow records")
    def flows(
        request: Request,
        who: Caller,
        namespace: str | None = None,
        pod: str | None = None,
        service: str | None = None,
        verdict: Literal["allowed", "dropped"] | None = None,
        protocol: Literal["TCP", "UDP", "SCTP", "ICMP"] | None = None,
        port: int | None = None,
        node: str | None = None,
        state: Literal["new", "established", "closed"] | None = None,
        since: str | None = None,
    ) -> dict[str, Any]:
        """The flow records every node keeps, as `isthmus observe` reads them: all, or those after
        `since` (`NODE:SEQ,...`, the `positions` of an earlier answer). A tenant sees the records with an
        end in its own namespace, the other end only by its address."""
        observer = Observer(_ledger(request), request.app.state.ask_agent, _positions(since))
        chosen = Filter(namespace, pod, service, verdict, protocol, port, node, state)
        items = [r for r in observer.poll() if chosen.matches(r)]
        if not who.admin:
            items = [_own(r, str(who.tenant)) for r in items if who.tenant in _namespaces(r)]
        answer = {"kind": "FlowList", "items": items, "positions": observer.positions}
        return answer | ({"problems": observer.problems} if who.admin else {})

    return router


def _positions(since: str | None) -> dict[str, int]:
    """`NODE:SEQ,...` as each node's last record read."""
    positions = {}
    for item in filter(None, (since or "").split(",")):
        node, _, seq = item.rpartition(":")
        if not node or not seq.isdigit():
            raise ApiError(400, "BadRequest", f"since: {item!r} is not NODE:SEQ")
        positions[node] = int(seq)
    return positions


def _namespaces(record: dict[str, Any]) -> set[str | None]:
    return {record["source"].get("namespace"), record["destination"].get("namespace")}


def _own(record: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The record as a tenant sees it: another tenant's end by its address and port only, and a service
    only its own."""
    shown = dict(record)
    for end in ("source", "destination"):
        if record[end].get("namespace") != tenant:
            shown[end] = {k: v for k, v in record[end].items() if k in ("address", "port")}
    if not str(record.get("service", "")).startswith(f"{tenant}/"):
        shown.pop("service", None)
        shown.pop("vip", None)
    return shown


def reach_routes() -> APIRouter:
    """What the compiled state says of packets: a trace, a namespace's matrix, a change's impact. A tenant
    asks of its own namespace only."""
    router = APIRouter(prefix=PREFIX, tags=["Reachability"])

    @router.get("/trace", name="trace a packet")
    def trace(
        request: Request,
        who: Caller,
        source: str,
        destination: str,
        port: Annotated[int, Query(ge=1, le=65535)],
        protocol: Literal["TCP", "UDP", "SCTP"] = "TCP",
        namespace: str = "default",
    ) -> dict[str, Any]:
        """As `isthmus trace SOURCE DESTINATION`: each hop, the verdict and the deciding rule."""
        for end in (source, destination):
            where = names.namespace_of(end, namespace)
            if not who.admin and where != who.tenant:
                raise ApiError(
                    403, "Forbidden", f"tenant {who.tenant} may trace between its own endpoints only"
                )
        tracer = Tracer(compiled(_ledger(request))[0])
        try:
            start, end_address = (
                names.source(tracer, source, namespace),
                names.destination(tracer, destination, namespace),
            )
        except LookupError as exc:
            raise ApiError(404, "NotFound", str(exc)) from None
        return tracer.trace(start, end_address, protocol, port).as_json()

    @router.get("/topology", name="the topology")
    def topology_of(request: Request, who: Caller) -> dict[str, Any]:
        """Nodes and their BGP peers, networks and route targets, endpoints, services, floating IPs; a
        tenant sees its own, and the shared and external networks, no nodes."""
        return topology(_ledger(request), who.tenant)

    @router.get("/namespaces/{namespace}/matrix", name="reachability matrix of a namespace")
    def reachability(
        request: Request,
        who: Caller,
        namespace: str,
        port: Annotated[int, Query(ge=1, le=65535)],
        protocol: Literal["TCP", "UDP", "SCTP"] = "TCP",
        to: Literal["pods", "services"] = "pods",
        family: Literal[4, 6] = 4,
    ) -> dict[str, Any]:
        """As `isthmus matrix -n NAMESPACE`: the verdict from each of its pods to each destination in it."""
        _own_namespace(who, namespace)
        return matrix(Tracer(compiled(_ledger(request))[0]), port, protocol, to, [namespace], family)

    @router.post("/namespaces/{namespace}/impact", name="impact of a change")
    def change_impact(
        request: Request, who: Caller, namespace: str, body: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        """As `isthmus apply --dry-run=impact`: `{"manifests": "YAML"}` (objects without a namespace are in
        this one) against what the ledger holds, nothing stored; `ports`: ["80/TCP", ...] to compare on."""
        _own_namespace(who, namespace)
        try:
            items = parse_manifests(str(body.get("manifests", "")), "manifests", namespace)
            ports = [parse_port(p) for p in body.get("ports") or []]
        except (ManifestError, ValueError) as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        stray = [o for o in items if o.metadata.namespace != namespace]
        if stray and not who.admin:
            raise ApiError(403, "Forbidden", f"tenant {who.tenant} may change its own namespace only")
        found = impact(_ledger(request), items, ports)
        return {
            "ports": [f"{p}/{proto}" for p, proto in found.ports],
            "opens": [vars(c) for c in found.opens if who.admin or c.touches(namespace)],
            "closes": [vars(c) for c in found.closes if who.admin or c.touches(namespace)],
        }

    return router


def _own_namespace(who: Principal, namespace: str) -> None:
    if not who.admin and namespace != who.tenant:
        raise ApiError(403, "Forbidden", f"tenant {who.tenant} may ask of namespace {who.tenant} only")
