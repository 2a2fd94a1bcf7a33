"""The lab's kubelet, one per node: it follows the ledger's Pods scheduled to its node, gives each a
sandbox attached through the real CNI plugin with a server of the pod's container ports, removes the
sandboxes of pods that are gone or replaced, and writes each pod's phase and readiness back.

It is the node's nova too: an Endpoint of kind vm or host bound to the node (a Neutron port with
`binding:host_id`, or an Endpoint manifest) gets a sandbox standing for the machine, attached the same
way, serving its name on the ports the Endpoint declares (else on VM_PORTS).

What it made is kept in `<lab>/<node>.pods.json` (pod or machine -> uid), so a restarted kubelet adopts
it."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from isthmus.files import replace_text
from isthmus.kube.conditions import merged
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import reconcile
from isthmus.kube.view import host_network
from isthmus.lab.fabric import Fabric
from isthmus.model import Endpoint, KubeObject, ServiceVIP, lookup_kind
from isthmus.store import Compacted, Ledger, LedgerError, objects, open_ledger

log = logging.getLogger("isthmus.lab.kubelet")
PODS, ENDPOINTS, VIPS = lookup_kind("Pod"), lookup_kind("Endpoint"), lookup_kind("ServiceVIP")
VM_PORTS = ["22/TCP", "80/TCP", "5432/TCP"]  # what a lab machine that declares no port serves
RUN = "lab.isthmus.io/run"  # on a VM's Endpoint: the lab app it runs (postgresql), else the name server
RETRY = 2.0  # seconds between attempts for a pod whose sandbox failed
RESYNC = 10.0  # seconds between full syncs while the watch is quiet, as a kubelet relists

PodKey = tuple[str, str]


def _containers(pod: KubeObject) -> list[dict[str, Any]]:
    return list((pod.body.get("spec") or {}).get("containers") or [])


def env(pod: KubeObject) -> dict[str, str]:
    """The environment its containers declare (plain values)."""
    return {
        str(e["name"]): str(e.get("value", ""))
        for c in _containers(pod)
        for e in c.get("env") or []
        if isinstance(e, dict) and "name" in e
    }


def ports(pod: KubeObject) -> list[str]:
    """PORT/PROTOCOL of every TCP and UDP container port the pod declares."""
    found = []
    for container in _containers(pod):
        for port in container.get("ports") or []:
            protocol = str(port.get("protocol", "TCP")).upper()
            if protocol in ("TCP", "UDP"):
                found.append(f"{port['containerPort']}/{protocol}")
    return sorted(set(found))


class Kubelet:
    def __init__(self, ledger: Ledger, fabric: Fabric, node: str) -> None:
        self.ledger, self.fabric, self.node = ledger, fabric, node
        self.saved = fabric.work / f"{node}.pods.json"
        loaded = json.loads(self.saved.read_text()) if self.saved.exists() else {}
        self.running: dict[PodKey, str] = {tuple(k.split("/", 1)): uid for k, uid in loaded.items()}
        self.failed: dict[PodKey, float] = {}  # pod -> when to try again

    def _scheduled(self) -> tuple[dict[PodKey, KubeObject | Endpoint], int]:
        """The pods and machines on this node, and the revision of the read."""
        revision = self.ledger.revision()
        found: dict[PodKey, KubeObject | Endpoint] = {}
        for o in objects.list_objects(self.ledger, PODS)[0]:
            if isinstance(o, KubeObject) and (o.body.get("spec") or {}).get("nodeName") == self.node:
                found[(o.metadata.namespace or "", o.metadata.name)] = o
        for e in objects.list_objects(self.ledger, ENDPOINTS)[0]:
            if isinstance(e, Endpoint) and e.spec.kind != "pod" and e.spec.node == self.node:
                found[(e.metadata.namespace or "", e.metadata.name)] = e
        return found, revision

    def sync(self) -> int:
        """Make the sandboxes match the pods scheduled here; the ledger revision that was read."""
        pods, revision = self._scheduled()
        for key in [k for k, uid in self.running.items() if k not in pods or pods[k].metadata.uid != uid]:
            self._stop(key)
        now = time.monotonic()
        for key, pod in pods.items():
            if key not in self.running and self.failed.get(key, 0.0) <= now:
                self._start(key, pod)
            elif key in self.running and isinstance(pod, KubeObject):
                self._report(pod, True)  # again, if writing it failed before: nothing when it shows
        self.failed = {k: t for k, t in self.failed.items() if k in pods}
        return revision

    def _app(self, key: PodKey, pod: KubeObject | Endpoint) -> list[str] | None:
        """What the sandbox runs when not the name server: by a pod's image (nginx proxying to the service
        it `uses`; the leonardo CMS), by a machine's annotation lab.isthmus.io/run (postgresql)."""
        namespace, name = key
        ref, disk = f"{namespace}/{name}", str(self.fabric.disk(self.fabric.sandbox(namespace, name)))
        if isinstance(pod, Endpoint):
            if pod.metadata.annotations.get(RUN) == "postgresql" and pod.spec.addresses:
                return ["postgresql", name, str(pod.spec.addresses[0]), disk]
            return None
        images = [str(c.get("image", "")) for c in _containers(pod)]
        uses = pod.metadata.labels.get("uses")
        if any(i.startswith("nginx") for i in images) and uses:
            vip = objects.list_one(self.ledger, VIPS, namespace, uses)
            if isinstance(vip, ServiceVIP) and vip.spec.vip is not None and vip.spec.ports:
                return ["nginx", ref, f"{vip.spec.vip}:{vip.spec.ports[0].port}", disk]
        if any(i.startswith("leonardo") for i in images):
            return ["leonardo", ref, next(iter(ports(pod)), "8000/TCP").split("/")[0]]
        return None

    def _start(self, key: PodKey, pod: KubeObject | Endpoint) -> None:
        namespace, name = key
        if isinstance(pod, Endpoint):
            served = [f"{p.port}/{p.protocol}" for p in pod.spec.ports] or VM_PORTS
        else:
            served = ports(pod)
        try:
            if isinstance(pod, KubeObject) and host_network(pod):
                self.fabric.host_pod(self.node, namespace, name, served)
            else:
                environment = env(pod) if isinstance(pod, KubeObject) else {}
                self.fabric.pod(self.node, namespace, name, served, self._app(key, pod), environment)
        except Exception as exc:  # reported on the pod, tried again
            self.failed[key] = time.monotonic() + RETRY
            log.warning("%s/%s: %s", namespace, name, exc)
            if isinstance(pod, KubeObject):
                self._report(pod, False, "SandboxFailed", str(exc))
            return
        self.running[key] = pod.metadata.uid or ""
        self.failed.pop(key, None)
        self._save()
        if isinstance(pod, KubeObject):
            self._report(pod, True)
        log.info("pod %s/%s running in %s", namespace, name, self.fabric.sandbox(namespace, name))

    def _stop(self, key: PodKey) -> None:
        namespace, name = key
        try:
            self.fabric.unhost_pod(namespace, name)
            self.fabric.unpod(self.node, namespace, name)
        except Exception as exc:
            log.warning("pod %s/%s: removing its sandbox: %s", namespace, name, exc)
            return
        del self.running[key]
        self._save()
        log.info("pod %s/%s removed", namespace, name)

    def _report(self, pod: KubeObject, ready: bool, reason: str = "", message: str = "") -> None:
        """The pod's phase and Ready condition, as a kubelet writes them; readiness drives its services."""
        condition: dict[str, Any] = {"type": "Ready", "status": "True" if ready else "False"}
        condition |= {"reason": reason, "message": message[-500:]} if reason else {}
        status = {**(pod.body.get("status") or {}), "phase": "Running" if ready else "Pending"}
        if isinstance(pod, KubeObject) and host_network(
            pod
        ):  # its address is its node's, as a kubelet reports it
            address = self.fabric.nodes[self.node]
            status |= {"podIP": address, "podIPs": [{"ip": address}], "hostIP": address}
        status["conditions"] = merged(status.get("conditions") or [], condition)
        if status == pod.body.get("status"):
            return
        body = pod.model_dump(by_alias=True, exclude_none=True) | {"status": status}
        current = objects.list_one(self.ledger, PODS, pod.metadata.namespace, pod.metadata.name)
        if current is not None and current.metadata.uid == pod.metadata.uid:
            reconcile(self.ledger, KubeConfig(), [KubeObject.model_validate(body)])

    def _save(self) -> None:
        running = {f"{ns}/{name}": uid for (ns, name), uid in self.running.items()}
        replace_text(self.saved, json.dumps(running))

    def run(self, stop: threading.Event) -> None:
        """Follow the ledger's Pods and Endpoints until `stop` is set; pods that failed are tried again, and
        everything is synced again every RESYNC seconds. An error ends one pass, never the kubelet."""
        mine = (objects.kind_prefix(PODS), objects.kind_prefix(ENDPOINTS))
        revision = None
        while not stop.is_set():
            try:
                if revision is None:
                    revision = self.sync()
                watch = self.ledger.watch(objects.OBJECTS, revision)
                synced = time.monotonic()
                try:
                    while not stop.is_set():
                        changed = any(e.key.startswith(mine) for e in watch.poll(timeout=0.5))
                        if changed or self.failed or time.monotonic() - synced > RESYNC:
                            revision, synced = self.sync(), time.monotonic()
                finally:
                    watch.close()  # an etcd watch's stream and thread would outlive an error
            except Compacted:
                revision = None
            except LedgerError as exc:  # the store away, or a status write lost: sync again later
                log.warning("%s; retrying", exc)
                revision = None
                stop.wait(1.0)
            except Exception:  # a status write refused or outrun (kube.sync.Moved): the next pass retries
                log.exception("sync failed; retrying")
                revision = None
                stop.wait(1.0)


def main(work: Path, node: str) -> None:
    """Run the kubelet of `node` for the lab in `work` until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fabric = Fabric.load(work)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    Kubelet(open_ledger(str(fabric.state_of(fabric.clusters.get(node, "")))), fabric, node).run(stop)
