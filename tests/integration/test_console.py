"""The web console in a real browser (Playwright driving Debian's Chromium, headless) against `isthmus api
serve` on a 2-node lab: it loads the topology, shows a dropped flow within seconds of the connection
naming the policy, runs a trace, previews a policy's impact, and sets a route target that the ledger then
holds; a tenant's token sees its own namespace only. The screenshots of each view go to
$ISTHMUS_SCREENSHOTS (docs/console/ holds the last ones taken)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from isthmus.model import VirtualNetwork, lookup_kind
from isthmus.store import objects, open_ledger
from tests.integration.labs import ask, lab, running
from tests.integration.test_lab import write

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not Path("/usr/bin/chromium").exists(),
    reason="needs root, nftables and Debian's chromium (scripts/bootstrap dev)",
)
playwright = pytest.importorskip("playwright.sync_api")
CONSOLE = Path(__file__).parents[2] / "src" / "isthmus" / "api" / "console" / "index.html"
ADMIN = "console-admin"
SHOP = [
    {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"isthmus.io/isolation": "namespace"}},
    },
    *(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {
                "nodeName": node,
                "containers": [
                    {"name": "c", "image": name, "ports": [{"containerPort": 80}, {"containerPort": 81}]}
                ],
            },
        }
        for name, node in (("a", "node-1"), ("b", "node-2"))
    ),
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "b-80-only", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"ports": [{"port": 80}]}]},
    },
]
DENY = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}}\n"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A lab with namespace shop, and the API serving the console on it: (the lab, the console's URL)."""
    if not CONSOLE.exists():
        pytest.fail("the console is not built: scripts/bootstrap builds it")
    base = tmp_path_factory.mktemp("console")
    with running(
        base, {"name": "ui", "nodes": [{"name": "node-1"}, {"name": "node-2"}]}, "--timeout", "60"
    ) as (
        work,
        _,
    ):
        lab(work, "apply", "-f", write(base / "shop.yaml", SHOP), "--timeout", "60")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        argv = [sys.executable, "-m", "isthmus.cli.main", "--state", str(work / "state"), "api", "serve"]
        argv += ["--listen", f"127.0.0.1:{port}", "--admin-token", ADMIN]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx2.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the API server did not answer"
                time.sleep(0.2)
            yield work, url
        finally:
            server.terminate()
            server.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        yield chromium
        chromium.close()


def _signed_in(browser: Any, url: str, token: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/ui/")
    page.fill("input[name=token]", token)
    page.click("text=Sign in")
    return page


def _shot(page: Any, name: str, tmp_path: Path) -> None:
    where = Path(os.environ.get("ISTHMUS_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(where / f"{name}.png"), full_page=True)


def _address(work: Path, pod: str) -> str:
    status = json.loads(lab(work, "status", "-o", "json").output)
    return next(p["address"] for p in status["pods"] if f"{p['namespace']}/{p['name']}" == pod)


def test_the_console_shows_topology_flows_trace_impact_and_sets_a_route_target(
    served: tuple[Path, str], browser: Any, tmp_path: Path
) -> None:
    work, url = served
    page = _signed_in(browser, url, ADMIN)
    page.wait_for_selector("ul.endpoints >> text=shop/a")
    page.wait_for_selector("ul.peers >> text=node-2")
    assert page.locator("[data-testid=topology] canvas").count() > 0  # the graph is drawn
    _shot(page, "topology", tmp_path)

    page.click("nav >> text=Flows")
    started = time.monotonic()
    assert ask(work, "shop/a", _address(work, "shop/b"), 81) == "failed: TimeoutError"
    page.wait_for_selector("tr.dropped >> text=shop/b-80-only", timeout=5000)
    assert time.monotonic() - started < 5
    _shot(page, "flows", tmp_path)

    page.click("nav >> text=Trace")
    page.fill("input[name=source]", "shop/a")
    page.fill("input[name=destination]", "shop/b")
    page.fill("input[name=port]", "81")
    page.click("section button:has-text('Trace')")
    page.wait_for_selector("text=verdict: deny (shop/b-80-only)")
    _shot(page, "trace", tmp_path)

    page.click("nav >> text=Matrix")
    page.fill("input[name=namespace]", "shop")
    page.click("section button:has-text('Matrix')")
    page.wait_for_selector("table.matrix")
    page.fill("textarea[name=policy]", DENY)
    page.click("button:has-text('Preview impact')")
    page.wait_for_selector("text=1 connection close, 0 open")  # b -> a: b-80-only still lets a in on 80
    page.wait_for_selector("text=close shop/b → shop/a 80/TCP")
    _shot(page, "matrix", tmp_path)

    page.click("nav >> text=Networks")
    row = page.locator("tr[data-network='shop/pods']")
    row.locator("input[name=targets]").fill("64600:7")
    row.locator("button:has-text('Save')").click()
    page.wait_for_selector("text=shop/pods: route targets 64600:7")
    _shot(page, "networks", tmp_path)
    ledger = open_ledger(str(work / "state"))
    try:
        network = objects.list_one(ledger, lookup_kind("VirtualNetwork"), "shop", "pods")
    finally:
        ledger.close()
    assert isinstance(network, VirtualNetwork) and network.spec.import_targets == ["64600:7"]
    page.close()


def test_a_tenant_sees_its_own_namespace_only(served: tuple[Path, str], browser: Any) -> None:
    _, url = served
    token = httpx2.post(
        f"{url}/apis/isthmus.io/v1/tenants/shop/tokens", json={}, headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()["token"]
    page = _signed_in(browser, url, token)
    page.wait_for_selector("ul.endpoints >> text=shop/b")
    assert page.locator("ul.peers li").count() == 0  # no nodes for a tenant
    page.click("nav >> text=Matrix")
    page.fill("input[name=namespace]", "default")
    page.click("section button:has-text('Matrix')")
    page.wait_for_selector("text=tenant shop may ask of namespace shop only")
    page.close()
