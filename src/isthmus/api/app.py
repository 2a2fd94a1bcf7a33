"""The FastAPI application: the Isthmus API (errors as Kubernetes-style Status JSON), and the Neutron API
with the part of Keystone its clients need (errors as Neutron's); auth on every route but /healthz and
version discovery."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import generate_latest

from isthmus import __version__
from isthmus.agent.cni import ask
from isthmus.api.routes import ApiError, Caller, flow_routes, kind_routes, reach_routes, token_routes
from isthmus.intent import IntentError
from isthmus.neutron.identity import Unauthorized, identity_routes
from isthmus.neutron.routes import NeutronError, network_routes
from isthmus.observe.metrics import ApiMetrics
from isthmus.store import Conflict, Ledger

CONSOLE = Path(__file__).parent / "console"  # the web console's build


def status(code: int, reason: str, message: str) -> JSONResponse:
    body: dict[str, Any] = {
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    return JSONResponse(body, status_code=code)


def create_app(ledger: Ledger, admin_token: str) -> FastAPI:
    app = FastAPI(title="Isthmus", version=__version__, description="One SDN control plane: the intent API")
    app.state.ledger, app.state.admin_token = ledger, admin_token
    app.state.ask_agent = ask  # how the flow records are asked of each node's agent

    @app.exception_handler(ApiError)
    def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return status(exc.code, exc.reason, str(exc))

    @app.exception_handler(IntentError)
    def _intent_error(request: Request, exc: IntentError) -> JSONResponse:
        return status(exc.status, exc.reason, str(exc))

    @app.exception_handler(Conflict)
    def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return status(409, "Conflict", "the ledger was busy with conflicting changes; try again")

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        if request.url.path.startswith(("/v2.0", "/v3")):
            return NeutronError(400, "HTTPBadRequest", "; ".join(parts)).response()
        return status(400, "BadRequest", "; ".join(parts))

    @app.exception_handler(NeutronError)
    def _neutron(request: Request, exc: NeutronError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Unauthorized)
    def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        body = {"error": {"code": 401, "title": "Unauthorized", "message": str(exc)}}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": 'Keystone uri="/v3"'})

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "revision": ledger.revision()}

    measured = ApiMetrics()

    @app.middleware("http")
    async def _measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")  # a route's template: no names or ids as labels
        measured.requests.labels(request.method, template, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(request: Request, who: Caller) -> str:
        """The API's Prometheus metrics, to the admin only (route templates, never a tenant's names)."""
        if not who.admin:
            raise ApiError(403, "Forbidden", "only the admin reads the metrics")
        return generate_latest(measured.registry).decode()

    app.include_router(kind_routes())
    app.include_router(token_routes())
    app.include_router(flow_routes())
    app.include_router(reach_routes())
    app.include_router(identity_routes())
    app.include_router(network_routes())
    if CONSOLE.is_dir():  # built by scripts/bootstrap from console/
        app.mount("/ui", StaticFiles(directory=CONSOLE, html=True), name="console")
    return app
