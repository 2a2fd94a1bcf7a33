"""The Kubernetes network manager: informers feed one work queue; one worker reconciles it into the ledger
and writes what users read back (pod IPs, LoadBalancer ingress) through the status subresource.

Invariants: the queue holds the latest state of each object (or its deletion), so an object is handled by
one worker at a time and never by an older state after a newer one; nothing is reconciled before every
informer has listed once, so the first reconcile (which removes what the ledger's mirror no longer means)
sees a whole cluster; an object that fails is retried alone, later, with exponential backoff.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from isthmus.kube.conditions import shows
from isthmus.kube.config import KubeConfig
from isthmus.kube.informer import KINDS, Changed, Event, Informer
from isthmus.kube.sync import Reconciler, Shown, kube_target
from isthmus.kube.view import Key, KubeView, key
from isthmus.model import KubeObject
from isthmus.observe.metrics import KubeMetrics
from isthmus.store import Ledger, Unavailable
from isthmus.store.election import Deposed

log = logging.getLogger("isthmus.kube")
Work = tuple[Key, KubeObject | None]  # an object's latest state; None: deleted


@dataclass
class WorkQueue:
    """Latest state per object, and when each object that failed may be tried again."""

    base: float = 0.05
    ceiling: float = 60.0
    pending: dict[Key, KubeObject | None] = field(default_factory=dict)
    failures: dict[Key, int] = field(default_factory=dict)
    not_before: dict[Key, float] = field(default_factory=dict)

    def put(self, what: Key, obj: KubeObject | None) -> None:
        self.pending[what] = obj

    def take(self, now: float) -> list[Work]:
        """Every object whose turn has come, removed from the queue."""
        ready = [k for k in self.pending if self.not_before.get(k, 0.0) <= now]
        return [(k, self.pending.pop(k)) for k in ready]

    def failed(self, work: Work, now: float) -> float:
        """Queue the work again (unless a newer state came meanwhile); the delay before its next try."""
        what, obj = work
        self.failures[what] = self.failures.get(what, 0) + 1
        delay = min(self.ceiling, self.base * 2.0 ** (self.failures[what] - 1))
        self.not_before[what] = now + delay
        self.pending.setdefault(what, obj)
        return delay

    def done(self, what: Key) -> None:
        self.failures.pop(what, None)
        self.not_before.pop(what, None)


def _same(a: KubeObject, b: KubeObject) -> bool:
    """Equal but for what the ledger stamps: the resourceVersion (the ledger's and the API server's differ)
    and when it took the change."""

    def bare(o: KubeObject) -> KubeObject:
        stamps = {"resource_version": None, "changed_at": None}
        return o.model_copy(update={"metadata": o.metadata.model_copy(update=stamps)})

    return bare(a) == bare(b)


class Manager:
    def __init__(
        self,
        ledger: Ledger,
        config: KubeConfig,
        api: client.ApiClient,
        *,
        resync: float = 300.0,
        metrics: KubeMetrics | None = None,
    ) -> None:
        self.api = api
        self.metrics = metrics or KubeMetrics()
        self.core = client.CoreV1Api(api)
        self.reconciler = Reconciler(ledger, config, sink=self._show)
        self.inbox: queue.Queue[Event] = queue.Queue()
        self.queue = WorkQueue()
        self.listed: set[str] = set()
        self.unshown: set[Key] = set()  # objects whose status could not be written yet
        self.resync = resync

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; the batch under way is finished (committed or not) before returning."""
        for kind in KINDS:
            informer = Informer(self.api, kind, self.inbox.put, stop, resync=self.resync)
            threading.Thread(target=informer.run, name=f"informer-{kind}", daemon=True).start()
        started = False
        while not stop.is_set():
            self._drain(timeout=0.2)
            if self.listed != set(KINDS):
                continue
            if not started:
                self.reconciler.apply()  # the mirror's own translation, and nothing it no longer means
                started = True
                log.info("in sync with the API server; %d objects to reconcile", len(self.queue.pending))
            batch = self.queue.take(time.monotonic())
            self.metrics.pending.set(len(self.queue.pending))
            if batch:
                self._handle(batch)
            elif self.unshown and not stop.wait(1.0):
                keys, self.unshown = sorted(self.unshown, key=str), set()
                self.reconciler.show(keys)

    def _drain(self, timeout: float) -> None:
        try:
            event = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._receive(event)
            try:
                event = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _receive(self, event: Event) -> None:
        self.metrics.events.labels(event.kind).inc()
        if isinstance(event, Changed):
            self.queue.put(key(event.object), None if event.type == "DELETED" else event.object)
            return
        self.listed.add(event.kind)
        listed = {key(o): o for o in event.objects}
        for what, obj in listed.items():
            self.queue.put(what, obj)
        held = {key(o) for o in self.reconciler.view.of(event.kind)}
        held |= {k for k, o in self.queue.pending.items() if k[0] == event.kind and o is not None}
        for gone in held - listed.keys():  # deleted while no watch was running
            self.queue.put(gone, None)

    def _handle(self, batch: Sequence[Work]) -> None:
        """Reconcile the batch in one transaction; if it fails, its halves apart, down to single objects."""
        try:
            with self.metrics.batch_seconds.time():
                self._apply(batch)
            for what, _ in batch:
                self.queue.done(what)
        except Deposed:
            raise  # another replica leads: this one stops writing at once
        except Unavailable as exc:  # no object is at fault: the whole batch waits for the store
            delay = max(self.queue.failed(work, time.monotonic()) for work in batch)
            log.warning("%s (%d objects, trying again in %.1f s)", exc, len(batch), delay)
        except Exception as exc:
            self.metrics.errors.inc()
            if len(batch) > 1:
                middle = len(batch) // 2
                self._handle(batch[:middle])
                self._handle(batch[middle:])
                return
            delay = self.queue.failed(batch[0], time.monotonic())
            kind, namespace, name = batch[0][0]
            where = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
            log.error("%s: %s: %s (trying again in %.1f s)", where, type(exc).__name__, exc, delay)

    def _apply(self, batch: Sequence[Work]) -> None:
        view = self.reconciler.view
        puts = []
        removed = []
        for (kind, namespace, name), obj in batch:
            held = view.get(kind, namespace, name)
            if obj is None and held is not None:
                removed.append(kube_target((kind, namespace, name)))
            elif obj is not None and (held is None or not _same(obj, held)):
                puts.append(obj)
        if puts or removed:
            done = self.reconciler.apply(puts, removed)
            changed = sum(a.action != "unchanged" for a in done)
            log.info("reconciled %d objects: %d changes in the ledger", len(puts) + len(removed), changed)

    def _show(self, view: KubeView, shown: Shown) -> None:
        """Write statuses that differ from what the API server shows, through the status subresource."""
        for (kind, namespace, name), wanted in shown.items():
            current = view.get(kind, namespace, name)
            if current is None or namespace is None:
                continue
            status = current.body.get("status") or {}
            try:
                if kind == "Pod" and not _shows(status, wanted["status"]):
                    self.core.patch_namespaced_pod_status(name, namespace, {"status": wanted["status"]})
                elif kind == "Service":
                    ingress = wanted["status"]["loadBalancer"].get("ingress")
                    if (status.get("loadBalancer") or {}).get("ingress") != ingress:
                        body: dict[str, Any] = {"status": {"loadBalancer": {"ingress": ingress}}}
                        self.core.patch_namespaced_service_status(name, namespace, body)
            except ApiException as exc:
                if exc.status != 404:  # a deleted object shows nothing
                    log.warning("%s %s/%s: status not written: %s", kind, namespace, name, exc.reason)
                    self.unshown.add((kind, namespace, name))
            except Exception as exc:
                log.warning("%s %s/%s: status not written: %s", kind, namespace, name, exc)
                self.unshown.add((kind, namespace, name))


def _shows(status: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether a pod's status shows what Isthmus wants it to (its conditions merged by type)."""
    conditions = wanted.get("conditions", [])
    same = all(status.get(k) == v for k, v in wanted.items() if k != "conditions")
    return same and shows(status.get("conditions") or [], *conditions)
