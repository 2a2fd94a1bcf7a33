"""The web console in a real browser (Playwright driving Debian's Chromium, headless) against `isthmus api
serve` on the demo's lab (examples/lab/leonardo.yaml: the seeds' stack, a Kubernetes-side cluster joined
to an OpenStack-side one by route target 64600:100): it loads the topology with the other cluster's
network, shows a dropped flow within seconds of the connection naming the rule, runs a trace, previews a
policy's impact as the API computes it, and sets a route target that the ledger then holds; a tenant's
token sees its own namespace only. The screenshots of each view go to $ISTHMUS_SCREENSHOTS (docs/console/
holds the last ones taken)."""

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
import yaml

from isthmus.model import VirtualNetwork, lookup_kind
from isthmus.store import objects, open_ledger
from tests.integration.labs import isthmus, lab, lab_exec, running, until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(b) for b in ("nft", "bird", "nginx"))
    or not Path("/usr/bin/chromium").exists(),
    reason="needs root, nftables, BIRD 2, nginx, PostgreSQL and Debian's chromium (scripts/bootstrap dev)",
)
playwright = pytest.importorskip("playwright.sync_api")
ROOT = Path(__file__).parents[2]
CONSOLE = ROOT / "src" / "isthmus" / "api" / "console" / "index.html"
DEMO = ROOT / "examples" / "lab" / "leonardo.yaml"
ADMIN = "console-admin"
APPS = ("nginx", "leonardo")
DENY = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}}\n"
)


def demo() -> dict[str, Any]:
    """The demo's topology, its manifests by absolute path."""
    topology: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    for owner in (topology, *topology.get("clusters", [])):
        owner["manifests"] = [str((DEMO.parent / m).resolve()) for m in owner.get("manifests", [])]
    return topology


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The demo's lab, and the API serving the console on its Kubernetes-side cluster: (the lab, the
    console's URL)."""
    if not CONSOLE.exists():
        pytest.fail("the console is not built: scripts/bootstrap builds it")
    base = tmp_path_factory.mktemp("console")
    with running(base, demo(), "--timeout", "120") as (work, _):
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


CONNECTS = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), 1).close()
    print("connected")
except OSError as exc:
    print("failed: " + type(exc).__name__)
"""


@pytest.fixture(scope="module")
def pods(served: tuple[Path, str]) -> dict[str, str]:
    """Each pod's address, by NAMESPACE/NAME, and an nginx and a leonardo pod ("nginx", "leonardo")."""
    status = json.loads(lab(served[0], "status", "-o", "json").output)
    found = {f"{p['namespace']}/{p['name']}": p["address"] for p in status["pods"]}
    return found | {app: next(p for p in found if p.startswith(f"default/{app}-")) for app in APPS}


@pytest.fixture
def admin(served: tuple[Path, str], browser: Any) -> Iterator[Any]:
    """The admin's console."""
    page = _signed_in(browser, served[1], ADMIN)
    yield page
    page.close()


def _connects(work: Path, source: str, address: str, port: int) -> str:
    return lab_exec(work, source, "python3", "-c", CONNECTS, address, str(port)).stdout.strip()


def test_the_topology_shows_both_clusters_of_the_demo(
    admin: Any, pods: dict[str, str], tmp_path: Path
) -> None:
    admin.wait_for_selector(f"ul.endpoints >> text={pods['nginx']}")
    admin.wait_for_selector("ul.peers >> text=k8s-3: 192.168.77.1 Established")
    admin.wait_for_selector("ul.clusters >> text=cluster AS 64601")  # the OpenStack side, by its routes
    admin.wait_for_selector("ul.clusters >> text=10.80.0.11/32")  # its PostgreSQL VMs
    admin.wait_for_selector("text=5 networks")
    assert admin.locator("[data-testid=topology] canvas").count() > 0  # the graph is drawn
    _shot(admin, "topology", tmp_path)


def test_flows_show_a_connection_through_the_service_and_a_drop_within_seconds_naming_the_rule(
    served: tuple[Path, str], admin: Any, pods: dict[str, str], tmp_path: Path
) -> None:
    admin.click("nav >> text=Flows")
    service = json.loads(isthmus(served[0], "get", "service", "ftleonardo", "-o", "json").output)
    assert _connects(served[0], pods["nginx"], service["spec"]["clusterIP"], 8000) == "connected"
    allowed = "tr.allowed:has-text('svc default/ftleonardo')"
    for state in ("new", "established", "closed"):  # the first packet, then conntrack's events
        admin.wait_for_selector(f"{allowed}:has-text('{state}')", timeout=5000)
    started = time.monotonic()
    direct = _connects(served[0], pods["nginx"], pods[pods["leonardo"]], 8000)
    assert direct == "failed: TimeoutError"  # nginx reaches leonardo only through ftleonardo
    admin.wait_for_selector("tr.dropped >> text=default/uses-ftleonardo rules[0]", timeout=5000)
    assert time.monotonic() - started < 5
    _shot(admin, "flows", tmp_path)


def test_a_trace_shows_the_deciding_rule(admin: Any, pods: dict[str, str], tmp_path: Path) -> None:
    admin.click("nav >> text=Trace")
    admin.fill("input[name=source]", pods["nginx"])
    admin.fill("input[name=destination]", pods["leonardo"])
    admin.fill("input[name=port]", "8000")
    admin.click("section button:has-text('Trace')")
    admin.wait_for_selector("text=verdict: deny (default/uses-ftleonardo rules[0])")
    _shot(admin, "trace", tmp_path)


def test_the_impact_preview_is_the_apis(served: tuple[Path, str], admin: Any, tmp_path: Path) -> None:
    expected = httpx2.post(
        f"{served[1]}/apis/isthmus.io/v1/namespaces/default/impact",
        json={"manifests": DENY, "ports": ["8000"]},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ).json()
    assert expected["closes"] and not expected["opens"]
    admin.click("nav >> text=Matrix")
    admin.fill("input[name=namespace]", "default")
    admin.fill("input[name=port]", "8000")
    admin.click("section button:has-text('Matrix')")
    admin.wait_for_selector("table.matrix")
    admin.fill("textarea[name=policy]", DENY)
    admin.click("button:has-text('Preview impact')")
    admin.wait_for_selector(f"text={len(expected['closes'])} connections close, 0 open")
    _shot(admin, "matrix", tmp_path)


def test_a_route_target_set_in_the_console_joins_nginx_to_the_database(
    served: tuple[Path, str], admin: Any, pods: dict[str, str], tmp_path: Path
) -> None:
    """What the seeds did in the Contrail UI: the ledger holds the target, and the network reaches the
    other cluster's network that imports it."""
    work = served[0]
    assert _connects(work, pods["nginx"], "10.80.0.11", 5432).startswith("failed")  # no route there yet
    admin.click("nav >> text=Networks")
    row = admin.locator("tr[data-network='default/nginx']")
    row.locator("input[name=targets]").fill("64600:100")
    row.locator("button:has-text('Save')").click()
    admin.wait_for_selector("text=default/nginx: route targets 64600:100")
    _shot(admin, "networks", tmp_path)
    ledger = open_ledger(str(work / "state"))
    try:
        network = objects.list_one(ledger, lookup_kind("VirtualNetwork"), "default", "nginx")
    finally:
        ledger.close()
    assert isinstance(network, VirtualNetwork) and network.spec.import_targets == ["64600:100"]
    until(lambda: _connects(work, pods["nginx"], "10.80.0.11", 5432), "connected", 30)


def test_a_tenant_sees_its_own_namespace_only(served: tuple[Path, str], browser: Any) -> None:
    _, url = served
    token = httpx2.post(
        f"{url}/apis/isthmus.io/v1/tenants/default/tokens",
        json={},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ).json()["token"]
    page = _signed_in(browser, url, token)
    page.wait_for_selector("ul.endpoints >> text=default/nginx-")
    page.wait_for_selector("ul.clusters >> text=10.80.0.11/32")  # what its networks import
    assert page.locator("ul.peers li").count() == 0  # no nodes for a tenant
    assert "192.168.77." not in page.locator("ul.clusters").inner_text()  # nor the other cluster's
    page.click("nav >> text=Matrix")
    page.fill("input[name=namespace]", "isthmus-system")
    page.click("section button:has-text('Matrix')")
    page.wait_for_selector("text=tenant default may ask of namespace default only")
    page.close()
