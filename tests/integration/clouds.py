"""Driving the Neutron API from tests: `isthmus api serve` on a ledger for the length of a `with`, and the
real OpenStack clients (the `openstack` command, openstacksdk) authenticated as its projects."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openstack

OPENSTACK = Path(sys.executable).parent / "openstack"
HAS_CLIENTS = shutil.which(str(OPENSTACK)) is not None
ADMIN = "neutron-admin-secret"


@dataclass
class Cloud:
    url: str
    tokens: dict[str, str]  # project -> its tenant's Isthmus token (admin: the admin token)
    ca: str | None = None  # the CA of the server's certificate, when it serves HTTPS

    def cli(self, project: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """`openstack ARGS` as PROJECT, with a Keystone token made from its Isthmus token."""
        env = {
            **os.environ,
            "OS_AUTH_URL": f"{self.url}/v3",
            "OS_AUTH_TYPE": "v3token",
            "OS_TOKEN": self.tokens[project],
            "OS_PROJECT_NAME": project,
            "OS_PROJECT_DOMAIN_ID": "default",
            "OS_IDENTITY_API_VERSION": "3",
        } | ({"OS_CACERT": self.ca} if self.ca else {})
        done = subprocess.run([str(OPENSTACK), *args], capture_output=True, text=True, env=env, check=False)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    def json(self, project: str, *args: str) -> Any:
        return json.loads(self.cli(project, *args, "-f", "json").stdout)

    def vm(self, project: str, name: str, network: str, node: str, *options: str) -> Any:
        """A port bound to `node` as nova makes one for a VM (a lab boots it there); its JSON."""
        argv = [
            "port",
            "create",
            name,
            "--network",
            network,
            "--host",
            node,
            "--device-owner",
            "compute:nova",
        ]
        return self.json(project, *argv, *options)

    def sdk(self, project: str) -> Any:
        return openstack.connect(
            auth_url=f"{self.url}/v3",
            auth_type="v3token",
            token=self.tokens[project],
            project_name=project,
            project_domain_id="default",
        )

    def tenant(self, name: str) -> str:
        """A token of tenant `name` (made if missing), as the Isthmus API gives one."""
        if (
            httpx2.get(f"{self.url}/apis/isthmus.io/v1/tenants/{name}", headers=self._admin()).status_code
            == 404
        ):
            self.isthmus("POST", "/tenants", {"metadata": {"name": name}})
        return str(self.isthmus("POST", f"/tenants/{name}/tokens", {"description": "test"})["token"])

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN}"}

    def isthmus(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = httpx2.request(
            method,
            f"{self.url}/apis/isthmus.io/v1{path}",
            json=body,
            headers=self._admin(),
        )
        assert answer.status_code < 300, answer.text
        return answer.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(state: Path, pki: Path | None = None) -> Iterator[Cloud]:
    """`isthmus api serve` on the ledger in `state`, on a free port of 127.0.0.1, with the admin's token;
    over HTTPS with the certificate `api` of `pki` (deploy/isthmus-pki's directory) when given."""
    port = _free_port()
    argv = [sys.executable, "-m", "isthmus.cli.main", "--state", str(state), "api", "serve"]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-token", ADMIN]
    if pki is not None:
        argv += ["--tls-cert", str(pki / "api.crt"), "--tls-key", str(pki / "api.key")]
    server = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    url = f"{'https' if pki else 'http'}://127.0.0.1:{port}"
    ca = str(pki / "ca.crt") if pki else None
    verify = ssl.create_default_context(cafile=ca) if ca else True
    try:
        for _ in range(100):
            try:
                httpx2.get(f"{url}/healthz", verify=verify)
                break
            except httpx2.TransportError:
                time.sleep(0.1)
        yield Cloud(url, {"admin": ADMIN}, ca)
    finally:
        server.terminate()
        server.wait(10)
