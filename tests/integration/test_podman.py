"""Podman (Debian's, with runc and its CNI backend) attaches a container through the isthmus plugin inside
a lab node's namespace: the container and a lab pod reach each other; `podman network disconnect` and
`podman rm` detach it (CNI DEL).

Podman passes CNI_ARGS `IgnoreUnknown=1;K8S_POD_NAME=<container name>` and no namespace, so the conflist
names the namespace (`"namespace": "web"`) and the container is named like its endpoint, a pod of the
ledger. Podman runs through `nsenter --net` (not `ip netns exec`, whose private mount namespace would hide
the container's netns mount from the agent), with its store, run, libpod and runc state in a temporary
directory and its containers under a cgroup named with the lab's prefix, both removed afterwards. Outside
them podman leaves only libcni's result cache directory (/var/lib/cni/results, which DEL empties) and the
image blob-info cache (/var/lib/containers/cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isthmus.dataplane.kernel.plan import veth_name
from isthmus.lab.fabric import PLUGIN, Fabric, netns_exec
from tests.integration.runtime import NODE, Runtime, declare, destroy, node_has

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
CONTAINER, IMAGE = "box", "localhost/isthmus-busybox:test"
PAGE = "hello from the container\n"


@dataclass
class Podman:
    """Podman confined to `root` (short: podman refuses a runroot path over 50 characters), run in the
    node's namespace."""

    fabric: Fabric
    root: Path

    @property
    def cgroup(self) -> str:
        """The containers' cgroup parent, in each hierarchy."""
        return f"/{self.fabric.prefix}podman"

    def configure(self) -> None:
        """containers.conf and the isthmus network (a conflist naming the agent's socket)."""
        networks = self.root / "cni.d"
        networks.mkdir()
        plugin = {"type": PLUGIN, "socket": str(self.fabric.socket(NODE)), "namespace": "web"}
        conflist = {"cniVersion": "1.0.0", "name": "isthmus", "plugins": [plugin]}
        (networks / "isthmus.conflist").write_text(json.dumps(conflist))
        (self.root / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.fabric.work / "cni-bin"}"]\n'
            f'network_config_dir = "{networks}"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "none"\n'
            f'tmp_dir = "{self.root / "libpod"}"\n'
        )

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`podman ARGS`, which must succeed unless `check` is false."""
        argv = ["nsenter", f"--net=/run/netns/{self.fabric.node_netns(NODE)}", "podman"]
        argv += ["--root", str(self.root / "storage"), "--runroot", str(self.root / "run")]
        argv += ["--storage-driver", "vfs", "--runtime-flag", f"root={self.root / 'runc'}", *args]
        env = {"PATH": os.environ.get("PATH", ""), "CONTAINERS_CONF": str(self.root / "containers.conf")}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == 0 or not check, f"podman {' '.join(args)}: {done.stderr}"
        return done

    def image(self) -> None:
        """IMAGE: Debian's static busybox and a page for its httpd, imported from a tarball."""
        rootfs = self.root / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "www").mkdir()
        shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
        (rootfs / "www" / "index.html").write_text(PAGE)
        with tarfile.open(self.root / "rootfs.tar", "w") as tar:
            tar.add(rootfs, arcname=".")
        self("import", str(self.root / "rootfs.tar"), IMAGE)

    def clean(self) -> None:
        """The container, if left, its cgroups (each emptied as its last process is reaped) and `root`."""
        self("rm", "--force", "--time", "0", "--ignore", CONTAINER, check=False)
        parents = list(Path("/sys/fs/cgroup").glob(f"*{self.cgroup}"))
        deadline = time.monotonic() + 5
        while parents:
            try:
                for child in [p for p in parents[-1].iterdir() if p.is_dir()] + [parents[-1]]:
                    child.rmdir()
                parents.pop()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        shutil.rmtree(self.root)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Fabric, Podman, dict[str, dict[str, Any]]]]:
    """node-1 with its agent; pods a (for a lab sandbox) and the container's in the ledger."""
    endpoints = declare(tmp_path / "state", {NODE: "192.168.77.10"}, {"a": NODE, CONTAINER: NODE})
    fabric = Fabric(f"ist{uuid.uuid4().hex[:6]}-", tmp_path / "state", tmp_path / "lab")
    podman = Podman(fabric, Path(tempfile.mkdtemp(prefix=f"{fabric.prefix}podman-")))
    try:
        fabric.build([NODE])
        fabric.start_agent(NODE)
        podman.configure()
        yield fabric, podman, endpoints
    finally:
        podman.clean()
        destroy(fabric)


def _fetch(sandbox: str, address: str) -> str:
    """The page of the container's httpd at `address`, fetched from the lab pod's sandbox ("" if none)."""
    request = "GET /index.html HTTP/1.0\r\n\r\n"
    done = netns_exec(sandbox, "/bin/busybox", "nc", "-w", "2", address, "8080", input=request, timeout=10)
    return done.stdout.partition("\n\n")[2]  # (text mode reads the CRLFs as newlines)


def test_podman_container_attached_through_the_plugin(
    lab: tuple[Fabric, Podman, dict[str, dict[str, Any]]],
) -> None:
    """ADD by `podman run` and `network connect`, DEL by `network disconnect` (the container lives on:
    only the plugin can take its veth) and by `podman rm`, after which the agent no longer knows it."""
    fabric, podman, endpoints = lab
    sandbox = fabric.pod(NODE, "web", "a", ["80/TCP"])
    box, a = endpoints[CONTAINER]["addresses"][0], endpoints["a"]["addresses"][0]
    veth = veth_name(f"web/{CONTAINER}")
    podman.image()
    options = ["--detach", "--name", CONTAINER, "--network", "isthmus", "--cgroup-parent", podman.cgroup]
    podman("run", *options, IMAGE, "/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www")
    inspected = json.loads(podman("inspect", CONTAINER).stdout)[0]
    assert inspected["NetworkSettings"]["Networks"]["isthmus"]["IPAddress"] == box  # the ledger's address
    assert node_has(fabric, veth)
    assert _fetch(sandbox, box) == PAGE  # the pod reaches the container's server
    assert podman("exec", CONTAINER, "/bin/busybox", "nc", "-w", "2", a, "80").stdout == "web/a"  # and back

    podman("network", "disconnect", "isthmus", CONTAINER)
    assert not node_has(fabric, veth)
    assert _fetch(sandbox, box) == ""
    podman("network", "connect", "isthmus", CONTAINER)
    assert _fetch(sandbox, box) == PAGE

    podman("rm", "--force", "--time", "0", CONTAINER)
    assert not node_has(fabric, veth)
    assert not Path(inspected["NetworkSettings"]["SandboxKey"]).exists()
    Runtime(fabric)("CHECK", inspected["Id"], inspected["NetworkSettings"]["SandboxKey"]).error(
        3, inspected["Id"]
    )
