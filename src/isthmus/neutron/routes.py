"""The Neutron v2.0 API: networks, subnets, ports, floating IPs, security groups and their rules, routers
with interfaces and an external gateway, as Neutron's clients expect them (JSON shapes, list filters,
`fields`, error bodies and codes), over the same ledger and IPAM as everything else. Thin handlers:
`shapes` converts, `intent` admits and commits.

A project sees its own resources and the shared and external networks; the admin sees every project's.
Errors: {"NeutronError": {"type", "message", "detail"}} with 400 (bad request), 404 (not found, also for
another project's resource), 409 (in use, conflicts, exhausted pools).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from isthmus import intent
from isthmus.model import (
    Endpoint,
    FloatingIP,
    Node,
    Object,
    Policy,
    SecurityGroup,
    Subnet,
    VirtualNetwork,
    lookup_kind,
    split_ref,
)
from isthmus.model.manifest import describe
from isthmus.model.security import MEMBER
from isthmus.neutron import shapes
from isthmus.neutron.identity import Scope, Unauthorized, scope_of
from isthmus.store import Ledger, objects

PREFIX = "/v2.0"
_INFO = {
    k: lookup_kind(k)
    for k in ("VirtualNetwork", "Subnet", "Endpoint", "FloatingIP", "SecurityGroup", "Policy", "Tenant")
}
_PAGING = {"fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir", "verbose"}
EXTENSIONS = (
    ("agent", "agent"),
    ("allowed-address-pairs", "Allowed Address Pairs"),
    ("binding", "Port Binding"),
    ("external-net", "Neutron external network"),
    ("port-security", "Port Security"),
    ("project-id", "project_id field enabled"),
    ("provider", "Provider Network"),
    ("router", "Neutron L3 Router"),
    ("security-group", "security-group"),
    ("standard-attr-description", "standard-attr-description"),
)


class NeutronError(Exception):
    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.code, self.kind = code, kind

    def response(self) -> JSONResponse:
        body = {"NeutronError": {"type": self.kind, "message": str(self), "detail": ""}}
        return JSONResponse(body, status_code=self.code)


@contextmanager
def errors(resource: str) -> Iterator[None]:
    """Intent and validation errors as Neutron's, for `resource` (Network, Port...)."""
    try:
        yield
    except intent.NotFound as exc:
        raise NeutronError(404, f"{resource}NotFound", str(exc)) from None
    except (intent.InUse, intent.AlreadyExists, intent.Stale) as exc:
        raise NeutronError(
            409, f"{resource}InUse" if isinstance(exc, intent.InUse) else "Conflict", str(exc)
        ) from None
    except intent.IntentError as exc:
        exhausted = "exhausted" in str(exc)
        raise NeutronError(
            409 if exhausted else 400, "IpAddressGenerationFailure" if exhausted else "BadRequest", str(exc)
        ) from None
    except ValidationError as exc:
        raise NeutronError(400, "HTTPBadRequest", f"{resource}: {describe(exc)}") from None
    except shapes.BadRequest as exc:
        raise NeutronError(400, "HTTPBadRequest", str(exc)) from None


def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def caller(request: Request, x_auth_token: Annotated[str | None, Header()] = None) -> Scope:
    if not x_auth_token:
        raise Unauthorized("send X-Auth-Token (a token from POST /v3/auth/tokens)")
    return scope_of(request, x_auth_token)


Caller = Annotated[Scope, Depends(caller)]


async def _json(request: Request) -> dict[str, Any]:
    """The request's JSON object, whatever its Content-Type says (Neutron reads it so)."""
    try:
        payload = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise NeutronError(400, "HTTPBadRequest", f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise NeutronError(400, "HTTPBadRequest", "the body is not a JSON object")
    return payload


Json = Annotated[dict[str, Any], Depends(_json)]


def _visible(scope: Scope, obj: Object) -> bool:
    if isinstance(obj, Policy) and not shapes.is_router(obj):
        return False  # the Isthmus policies that are not routers
    if scope.admin or obj.metadata.namespace == scope.project:
        return True
    return isinstance(obj, VirtualNetwork) and (obj.spec.shared or obj.spec.external)


def _all(ledger: Ledger, kind: str, scope: Scope) -> list[Object]:
    mine_only = not scope.admin and kind != "VirtualNetwork"
    found = objects.list_objects(ledger, _INFO[kind], scope.project if mine_only else None)[0]
    return [o for o in found if _visible(scope, o)]


def _one(ledger: Ledger, kind: str, scope: Scope, ident: str, resource: str) -> Any:
    """The resource with this id that the caller may see (404 otherwise)."""
    if kind == "VirtualNetwork" or scope.admin:
        projects = [scope.project] + [
            t.metadata.name
            for t in objects.list_objects(ledger, _INFO["Tenant"])[0]
            if t.metadata.name != scope.project
        ]
    else:
        projects = [scope.project]
    for project in projects:
        found = objects.list_one(ledger, _INFO[kind], project, ident)
        if found is not None and _visible(scope, found):
            return found
    raise NeutronError(404, f"{resource}NotFound", f"{resource} {ident} could not be found.")


def _project(scope: Scope, body: dict[str, Any]) -> str:
    wanted = body.get("project_id") or body.get("tenant_id") or scope.project
    if wanted != scope.project and not scope.admin:
        raise NeutronError(
            403, "HTTPForbidden", f"project {scope.project} may not create resources of {wanted}"
        )
    return str(wanted)


def _body(payload: dict[str, Any], key: str) -> dict[str, Any]:
    inner = payload.get(key)
    if not isinstance(inner, dict):
        raise NeutronError(400, "HTTPBadRequest", f"Resource body required: {{'{key}': {{...}}}}")
    return inner


def _filtered(items: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
    """Neutron's list filters (FIELD=VALUE, repeatable) and `fields`."""
    query = request.query_params
    for field in {k for k in query if k not in _PAGING}:
        wanted = set(query.getlist(field))
        items = [i for i in items if _shown(i.get(field)) & wanted]
    fields = query.getlist("fields")
    return [{k: v for k, v in i.items() if k in fields} for i in items] if fields else items


def _shown(value: Any) -> set[str]:
    if isinstance(value, bool):
        return {str(value), str(value).lower()}
    if isinstance(value, list):
        return {str(v) for v in value}
    return {"" if value is None else str(value)}


def _apply(ledger: Ledger, made: Object | list[Object], resource: str, create: bool) -> Any:
    """Store the resource (the first of `made`, with what changes with it) in one transaction."""
    with errors(resource):
        return intent.apply(ledger, made if isinstance(made, list) else [made], create_only=create)[0].object


def _delete(ledger: Ledger, obj: Object, resource: str) -> Response:
    """Delete the resource, and a network's subnets with it (as Neutron does, while no port uses them)."""
    doomed = [obj]
    if isinstance(obj, VirtualNetwork):
        doomed += [
            s
            for s in objects.list_objects(ledger, _INFO["Subnet"], obj.metadata.namespace)[0]
            if isinstance(s, Subnet)
            and split_ref(s.spec.network, s.metadata.namespace) == (obj.metadata.namespace, obj.metadata.name)
        ]
    with errors(resource):
        intent.delete(ledger, [(_INFO[o.kind], o.metadata.namespace, o.metadata.name) for o in doomed])
    return Response(status_code=204)


# -- the views: what each resource shows, with what it needs from the ledger


def _network_view(ledger: Ledger) -> Callable[[Object], dict[str, Any]]:
    subnets: dict[tuple[str | None, str], list[str]] = {}
    for s in objects.list_objects(ledger, _INFO["Subnet"])[0]:
        if isinstance(s, Subnet):
            ns, name = split_ref(s.spec.network, s.metadata.namespace)
            subnets.setdefault((ns, name), []).append(s.metadata.name)

    def view(n: Object) -> dict[str, Any]:
        assert isinstance(n, VirtualNetwork)
        return shapes.network(n, subnets.get((n.metadata.namespace, n.metadata.name), []))

    return view


def _port_view(ledger: Ledger) -> Callable[[Object], dict[str, Any]]:
    subnets: dict[str, list[tuple[str, Any]]] = {}
    for s in objects.list_objects(ledger, _INFO["Subnet"])[0]:
        if isinstance(s, Subnet):
            subnets.setdefault(split_ref(s.spec.network, s.metadata.namespace)[1], []).append(
                (s.metadata.name, s.spec.cidr)
            )

    def view(e: Object) -> dict[str, Any]:
        assert isinstance(e, Endpoint)
        return shapes.port(e, subnets, split_ref(e.spec.network, e.metadata.namespace)[1])

    return view


def _floating_view(ledger: Ledger) -> Callable[[Object], dict[str, Any]]:
    def view(f: Object) -> dict[str, Any]:
        assert isinstance(f, FloatingIP)
        fixed, router = None, None
        if f.spec.endpoints:
            ns, name = split_ref(f.spec.endpoints[0], f.metadata.namespace)
            port = objects.list_one(ledger, _INFO["Endpoint"], ns, name)
            if isinstance(port, Endpoint) and port.spec.addresses:
                fixed = str(port.spec.addresses[0])
                network = split_ref(port.spec.network, ns)[1]
                external = split_ref(f.spec.pool, f.metadata.namespace)[1]
                router = next(
                    (
                        ident
                        for ident, r in sorted(_routers(ledger, ns or "").items())
                        if (shapes.gateway(r) or {}).get("network_id") == external
                        and any(i["network_id"] == network for i in shapes.interfaces(r))
                    ),
                    None,
                )
        return shapes.floating_ip(f, fixed, router)

    return view


def _plain(shape: Callable[[Any], dict[str, Any]]) -> Callable[[Ledger], Callable[[Object], dict[str, Any]]]:
    """A view that needs nothing from the ledger."""
    return lambda ledger: shape


View = Callable[[Ledger], Callable[[Object], dict[str, Any]]]
VIEWS: dict[str, View] = {
    "VirtualNetwork": _network_view,
    "Subnet": _plain(shapes.subnet),
    "Endpoint": _port_view,
    "FloatingIP": _floating_view,
    "SecurityGroup": _plain(shapes.security_group),
    "Policy": _plain(shapes.router),
}


def _default_group(ledger: Ledger, project: str) -> None:
    """The project's `default` security group, as Neutron makes it on first use."""
    if objects.list_one(ledger, _INFO["SecurityGroup"], project, "default") is None:
        with errors("SecurityGroup"):
            intent.apply(ledger, [shapes.default_group(project)])


def _to_network(request: Request, who: Scope, body: dict[str, Any], old: Any) -> Object:
    return shapes.to_network(body, old.metadata.namespace if old else _project(who, body), old)


def _to_subnet(request: Request, who: Scope, body: dict[str, Any], old: Any) -> Object:
    if old is not None:
        return shapes.to_subnet(body, old.metadata.namespace, old.spec.network, old)
    network = _one(_ledger(request), "VirtualNetwork", who, str(body.get("network_id") or ""), "Network")
    project = _project(who, body)
    if network.metadata.namespace != project:
        raise NeutronError(409, "Conflict", f"network {network.metadata.name} belongs to another project")
    return shapes.to_subnet(body, project, network.metadata.name, None)


def _to_port(request: Request, who: Scope, body: dict[str, Any], old: Any) -> Object:
    ledger = _ledger(request)
    if old is not None:
        project, network_ref = old.metadata.namespace, old.spec.network
        groups = sorted(k.removeprefix(MEMBER) for k in old.metadata.labels if k.startswith(MEMBER))
    else:
        network = _one(ledger, "VirtualNetwork", who, str(body.get("network_id") or ""), "Network")
        project = _project(who, body)
        ns = network.metadata.namespace
        network_ref = network.metadata.name if ns == project else f"{ns}/{network.metadata.name}"
        groups = []
        if body.get("port_security_enabled", True) and "security_groups" not in body:
            _default_group(ledger, project)
            groups = ["default"]
    if "security_groups" in body:
        groups = list(body["security_groups"] or [])
        for group in groups:
            _one(ledger, "SecurityGroup", Scope(project, who.admin), group, "SecurityGroup")
    if body.get("port_security_enabled") is False:
        groups = []
    return shapes.to_port(body, project, network_ref, groups, old)


def _to_floating_ip(request: Request, who: Scope, body: dict[str, Any], old: Any) -> Object:
    ledger = _ledger(request)
    project = old.metadata.namespace if old else _project(who, body)
    pool, family = (old.spec.pool if old else ""), None
    if old is None:
        network = _one(ledger, "VirtualNetwork", who, str(body.get("floating_network_id") or ""), "Network")
        if not network.spec.external:
            raise NeutronError(400, "BadRequest", f"network {network.metadata.name} is not external")
        pool = f"{network.metadata.namespace}/{network.metadata.name}"
        if body.get("subnet_id"):  # the family of the address: that subnet's
            subnet = objects.list_one(
                ledger, _INFO["Subnet"], network.metadata.namespace, str(body["subnet_id"])
            )
            if not isinstance(subnet, Subnet) or subnet.spec.network != network.metadata.name:
                raise NeutronError(
                    400,
                    "BadRequest",
                    f"subnet {body['subnet_id']} is not a subnet of network {network.metadata.name}",
                )
            family = subnet.spec.cidr.version
    if body.get("port_id"):
        _one(ledger, "Endpoint", Scope(project, who.admin), str(body["port_id"]), "Port")
    return shapes.to_floating_ip(body, project, pool, old, family)


def _to_group(request: Request, who: Scope, body: dict[str, Any], old: Any) -> Object:
    return shapes.to_security_group(body, old.metadata.namespace if old else _project(who, body), old)


def _routers(ledger: Ledger, project: str) -> dict[str, Policy]:
    found = objects.list_objects(ledger, _INFO["Policy"], project)[0]
    return {p.metadata.name: p for p in found if isinstance(p, Policy) and shapes.is_router(p)}


def _egress(ledger: Ledger, project: str, routers: dict[str, Policy]) -> list[Object]:
    """The project's Neutron networks whose egress changes with `routers`: a network reaches the outside
    (source NAT) while a router with a gateway holds it."""
    held = {i["network_id"] for r in routers.values() if shapes.gateway(r) for i in shapes.interfaces(r)}
    changed: list[Object] = []
    for n in objects.list_objects(ledger, _INFO["VirtualNetwork"], project)[0]:
        if isinstance(n, VirtualNetwork) and shapes.NAME in n.metadata.annotations and not n.spec.external:
            wanted = n.metadata.name in held
            if n.spec.egress != wanted:
                changed.append(n.model_copy(update={"spec": n.spec.model_copy(update={"egress": wanted})}))
    return changed


def _to_router(request: Request, who: Scope, body: dict[str, Any], old: Any) -> list[Object]:
    ledger = _ledger(request)
    project = old.metadata.namespace if old else _project(who, body)
    info = body.get("external_gateway_info")
    if isinstance(info, dict) and info.get("network_id"):
        network = _one(ledger, "VirtualNetwork", who, str(info["network_id"]), "Network")
        if not network.spec.external:
            raise NeutronError(400, "BadRequest", f"network {network.metadata.name} is not external")
    made = shapes.to_router(body, project, old)
    return [made, *_egress(ledger, project, _routers(ledger, project) | {made.metadata.name: made})]


def _interface(request: Request, who: Scope, ident: str, body: dict[str, Any], add: bool) -> dict[str, Any]:
    """Attach (or detach) a subnet's network to the router; Neutron's answer for it."""
    ledger = _ledger(request)
    old = _one(ledger, "Policy", who, ident, "Router")
    project = old.metadata.namespace or ""
    linked = shapes.interfaces(old)
    subnet_id, port_id = body.get("subnet_id"), body.get("port_id")
    if add:
        subnet = _one(ledger, "Subnet", Scope(project, who.admin), str(subnet_id or ""), "Subnet")
        network = split_ref(subnet.spec.network, subnet.metadata.namespace)[1]
        if any(i["subnet_id"] == subnet.metadata.name for i in linked):
            raise NeutronError(
                400, "BadRequest", f"router {ident} already has an interface on subnet {subnet_id}"
            )
        found = {"subnet_id": subnet.metadata.name, "network_id": network, "port_id": shapes.new_id()}
        linked = [*linked, found]
    else:
        matching = [
            i for i in linked if subnet_id in (None, i["subnet_id"]) and port_id in (None, i["port_id"])
        ]
        if not matching or not (subnet_id or port_id):
            raise NeutronError(404, "RouterInterfaceNotFound", f"router {ident} has no such interface")
        found = matching[0]
        linked = [i for i in linked if i is not found]
    with errors("Router"):
        made = shapes.to_router({}, project, old, linked)
    _apply(
        ledger, [made, *_egress(ledger, project, _routers(ledger, project) | {ident: made})], "Router", False
    )
    return {
        "id": ident,
        "tenant_id": project,
        "project_id": project,
        "subnet_id": found["subnet_id"],
        "subnet_ids": [found["subnet_id"]],
        "network_id": found["network_id"],
        "port_id": found["port_id"],
    }


def _collection(
    router: APIRouter,
    kind: str,
    plural: str,
    singular: str,
    resource: str,
    to: Callable[..., Object | list[Object]],
) -> None:
    """List, create, show, update, delete of one resource; `to(request, scope, body, old)` builds it (and
    what changes with it)."""

    def show(ledger: Ledger, obj: Object) -> dict[str, Any]:
        view: Callable[[Object], dict[str, Any]] = VIEWS[kind](ledger)
        return view(obj)

    def list_(request: Request, who: Caller) -> dict[str, Any]:
        ledger = _ledger(request)
        view = VIEWS[kind](ledger)
        return {plural: _filtered([view(o) for o in _all(ledger, kind, who)], request)}

    def create(request: Request, who: Caller, payload: Json) -> JSONResponse:
        """One resource (`{singular: {...}}`), or several in one transaction (`{plural: [...]}`: all
        or none, as Neutron's native bulk)."""
        ledger = _ledger(request)
        bulk = isinstance(payload.get(plural), list)
        bodies = payload[plural] if bulk else [_body(payload, singular)]
        groups: list[list[Object]] = []
        with errors(resource):
            for body in bodies:
                if not isinstance(body, dict):
                    raise NeutronError(400, "HTTPBadRequest", f"each of {plural} is an object")
                made = to(request, who, body, None)
                groups.append(made if isinstance(made, list) else [made])
            applied = intent.apply(ledger, [o for g in groups for o in g], create_only=True)
        firsts = [sum(map(len, groups[:i])) for i in range(len(groups))]
        shown = [show(ledger, applied[i].object) for i in firsts]
        return JSONResponse({plural: shown} if bulk else {singular: shown[0]}, status_code=201)

    def get(request: Request, who: Caller, ident: str) -> dict[str, Any]:
        ledger = _ledger(request)
        return {singular: _filtered([show(ledger, _one(ledger, kind, who, ident, resource))], request)[0]}

    def update(request: Request, who: Caller, ident: str, payload: Json) -> dict[str, Any]:
        ledger = _ledger(request)
        old = _one(ledger, kind, who, ident, resource)
        if old.metadata.namespace != who.project and not who.admin:
            raise NeutronError(403, "HTTPForbidden", f"{resource} {ident} belongs to another project")
        with errors(resource):
            made = to(request, Scope(old.metadata.namespace or "", who.admin), _body(payload, singular), old)
        return {singular: show(ledger, _apply(ledger, made, resource, False))}

    def delete(request: Request, who: Caller, ident: str) -> Response:
        ledger = _ledger(request)
        old = _one(ledger, kind, who, ident, resource)
        if old.metadata.namespace != who.project and not who.admin:
            raise NeutronError(403, "HTTPForbidden", f"{resource} {ident} belongs to another project")
        routed = [
            r.metadata.name
            for r in _routers(ledger, old.metadata.namespace or "").values()
            if any(ident in (i["network_id"], i["subnet_id"]) for i in shapes.interfaces(r))
        ]
        if routed or (isinstance(old, Policy) and shapes.interfaces(old)):
            what = f"router {', '.join(routed)} has an interface on it" if routed else "it has interfaces"
            raise NeutronError(409, f"{resource}InUse", f"{resource} {ident} is in use: {what}")
        return _delete(ledger, old, resource)

    base = f"{PREFIX}/{plural.replace('_', '-')}"
    router.add_api_route(base, list_, methods=["GET"], name=f"list {plural}")
    router.add_api_route(base, create, methods=["POST"], status_code=201, name=f"create {singular}")
    router.add_api_route(base + "/{ident}", get, methods=["GET"], name=f"show {singular}")
    router.add_api_route(base + "/{ident}", update, methods=["PUT"], name=f"update {singular}")
    router.add_api_route(
        base + "/{ident}", delete, methods=["DELETE"], status_code=204, name=f"delete {singular}"
    )


def network_routes() -> APIRouter:
    router = APIRouter(tags=["Neutron v2.0"])

    @router.get("/")
    def versions(request: Request) -> dict[str, Any]:
        link = {"href": f"{request.base_url}v2.0/", "rel": "self"}
        return {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [link]}]}

    @router.get(PREFIX)
    @router.get(PREFIX + "/")
    def resources(request: Request, who: Caller) -> dict[str, Any]:
        names = ("network", "subnet", "port", "floatingip", "router", "security_group", "security_group_rule")
        return {"resources": [{"name": n, "collection": f"{n}s", "links": []} for n in names]}

    @router.get(PREFIX + "/extensions")
    def extensions(who: Caller) -> dict[str, Any]:
        return {
            "extensions": [
                {"alias": alias, "name": name, "description": name, "updated": shapes.STAMP, "links": []}
                for alias, name in EXTENSIONS
            ]
        }

    @router.get(PREFIX + "/extensions/{alias}")
    def extension(who: Caller, alias: str) -> dict[str, Any]:
        found = next((e for e in extensions(who)["extensions"] if e["alias"] == alias), None)
        if found is None:
            raise NeutronError(404, "ExtensionNotFound", f"Extension with alias {alias} does not exist")
        return {"extension": found}

    @router.get(PREFIX + "/agents")
    def agents(request: Request, who: Caller) -> dict[str, Any]:
        """Each node's Isthmus agent, to the admin (Neutron shows agents to admins only)."""
        ledger = _ledger(request)
        reports = objects.statuses(ledger)
        nodes = objects.list_objects(ledger, lookup_kind("Node"))[0] if who.admin else []
        found = [shapes.agent(n, reports.get(n.metadata.name)) for n in nodes if isinstance(n, Node)]
        return {"agents": _filtered(found, request)}

    @router.get(PREFIX + "/agents/{ident}")
    def agent(request: Request, who: Caller, ident: str) -> dict[str, Any]:
        found = next((a for a in agents(request, who)["agents"] if a["id"] == ident), None)
        if found is None:
            raise NeutronError(404, "AgentNotFound", f"Agent {ident} could not be found.")
        return {"agent": found}

    _collection(router, "VirtualNetwork", "networks", "network", "Network", _to_network)
    _collection(router, "Subnet", "subnets", "subnet", "Subnet", _to_subnet)
    _collection(router, "Endpoint", "ports", "port", "Port", _to_port)
    _collection(router, "FloatingIP", "floatingips", "floatingip", "FloatingIP", _to_floating_ip)
    _collection(router, "SecurityGroup", "security_groups", "security_group", "SecurityGroup", _to_group)
    _collection(router, "Policy", "routers", "router", "Router", _to_router)

    @router.put(PREFIX + "/routers/{ident}/add_router_interface")
    def add_interface(request: Request, who: Caller, ident: str, body: Json) -> dict[str, Any]:
        return _interface(request, who, ident, body, add=True)

    @router.put(PREFIX + "/routers/{ident}/remove_router_interface")
    def remove_interface(request: Request, who: Caller, ident: str, body: Json) -> dict[str, Any]:
        return _interface(request, who, ident, body, add=False)

    _rules(router)
    return router


def _rules(router: APIRouter) -> None:
    """Security group rules live inside their group: a rule's id finds its group."""
    base = f"{PREFIX}/security-group-rules"

    def groups(ledger: Ledger, who: Scope) -> list[SecurityGroup]:
        _default_group(ledger, who.project)
        return [g for g in _all(ledger, "SecurityGroup", who) if isinstance(g, SecurityGroup)]

    def find(ledger: Ledger, who: Scope, ident: str) -> tuple[SecurityGroup, int]:
        for group in groups(ledger, who):
            for i, rule in enumerate(group.spec.rules):
                if rule.id == ident:
                    return group, i
        raise NeutronError(404, "SecurityGroupRuleNotFound", f"Security group rule {ident} does not exist")

    def with_rules(group: SecurityGroup, rules: list[Any]) -> SecurityGroup:
        spec = {
            "rules": [r.model_dump(by_alias=True, exclude_none=True) for r in rules],
            "description": group.spec.description,
        }
        return SecurityGroup.model_validate(
            {**group.model_dump(by_alias=True, exclude_none=True), "spec": spec}
        )

    @router.get(base, tags=["Neutron v2.0"])
    def list_(request: Request, who: Caller) -> dict[str, Any]:
        found = [shapes.rule(g, r) for g in groups(_ledger(request), who) for r in g.spec.rules]
        return {"security_group_rules": _filtered(found, request)}

    @router.post(base, status_code=201, tags=["Neutron v2.0"])
    def create(request: Request, who: Caller, payload: Json) -> JSONResponse:
        ledger, body = _ledger(request), _body(payload, "security_group_rule")
        group = _one(ledger, "SecurityGroup", who, str(body.get("security_group_id") or ""), "SecurityGroup")
        with errors("SecurityGroupRule"):
            rule = shapes.to_rule(body)
        if rule.remote_group is not None:
            _one(ledger, "SecurityGroup", who, rule.remote_group, "SecurityGroup")
        same = [
            r
            for r in group.spec.rules
            if r.model_copy(update={"id": rule.id, "description": rule.description}) == rule
        ]
        if same:
            raise NeutronError(
                409,
                "SecurityGroupRuleExists",
                f"Security group rule already exists. Rule id is {same[0].id}.",
            )
        _apply(ledger, with_rules(group, [*group.spec.rules, rule]), "SecurityGroupRule", False)
        return JSONResponse({"security_group_rule": shapes.rule(group, rule)}, status_code=201)

    @router.get(base + "/{ident}", tags=["Neutron v2.0"])
    def get(request: Request, who: Caller, ident: str) -> dict[str, Any]:
        group, i = find(_ledger(request), who, ident)
        return {"security_group_rule": shapes.rule(group, group.spec.rules[i])}

    @router.delete(base + "/{ident}", status_code=204, tags=["Neutron v2.0"])
    def delete(request: Request, who: Caller, ident: str) -> Response:
        ledger = _ledger(request)
        group, i = find(ledger, who, ident)
        _apply(
            ledger,
            with_rules(group, [r for j, r in enumerate(group.spec.rules) if j != i]),
            "SecurityGroupRule",
            False,
        )
        return Response(status_code=204)
