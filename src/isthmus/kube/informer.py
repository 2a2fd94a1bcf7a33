"""Informers: one kind of a live API server each, listed, then watched from the list's resourceVersion.

Invariant: what an informer delivers, in order, rebuilds the server's state: a `Listed` (every object of
the kind at one resourceVersion) followed by `Changed` events after it. On 410 Gone, an expired watch or a
broken stream it lists again, and the consumer diffs the new listing against what it holds, so deletions
missed in the gap are not lost. It also lists again every `resync` seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from isthmus.model import KubeObject

log = logging.getLogger("isthmus.kube")


@dataclass(frozen=True)
class Listed:
    kind: str
    objects: list[KubeObject]
    resource_version: str


@dataclass(frozen=True)
class Changed:
    kind: str
    type: str  # ADDED, MODIFIED, DELETED
    object: KubeObject


Event = Listed | Changed


def _lists(api: client.ApiClient) -> dict[str, Callable[..., Any]]:
    """The cluster-wide list call of every kind the translation reads."""
    core, networking = client.CoreV1Api(api), client.NetworkingV1Api(api)
    return {
        "Namespace": core.list_namespace,
        "Node": core.list_node,
        "Pod": core.list_pod_for_all_namespaces,
        "Service": core.list_service_for_all_namespaces,
        "Endpoints": core.list_endpoints_for_all_namespaces,
        "EndpointSlice": _GroupList(api, "discovery.k8s.io", ("v1", "v1beta1"), "endpointslices"),
        "NetworkPolicy": networking.list_network_policy_for_all_namespaces,
    }


class _GroupList:
    """The cluster-wide list (and watch) call of a resource at the first of `versions` the API server
    serves, found on the first call. The client has an API class for the newest version only (no
    discovery.k8s.io/v1beta1, which API servers before 1.21 serve), so the call is made plainly."""

    def __init__(self, api: client.ApiClient, group: str, versions: tuple[str, ...], plural: str) -> None:
        self.api, self.group, self.versions, self.plural = api, group, versions, plural
        self.path = ""

    def __call__(self, _preload_content: bool = False, **params: Any) -> Any:
        if not self.path:
            served = {
                v.version
                for g in client.ApisApi(self.api).get_api_versions().groups
                if g.name == self.group
                for v in g.versions
            }
            version = next((v for v in self.versions if v in served), None)
            if version is None:
                raise ApiException(
                    status=404, reason=f"the API server serves no {self.group} {self.versions}"
                )
            self.path = f"/apis/{self.group}/{version}/{self.plural}"
        query = [(_CAMEL.get(k, k), v) for k, v in params.items()]
        request = self.api.param_serialize(
            "GET",
            self.path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request)
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason)
        return response.response


_CAMEL = {
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}
KINDS = ("Namespace", "Node", "Pod", "Service", "Endpoints", "EndpointSlice", "NetworkPolicy")


def mirror(kind: str, raw: dict[str, Any]) -> KubeObject:
    """The object as the ledger keeps it: managedFields dropped, apiVersion (the list's for list items,
    which carry neither) and kind filled in."""
    metadata = {k: v for k, v in (raw.get("metadata") or {}).items() if k != "managedFields"}
    body = {**raw, "apiVersion": raw.get("apiVersion") or "v1", "kind": kind, "metadata": metadata}
    return KubeObject.model_validate(body)


class Informer:
    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        deliver: Callable[[Event], None],
        stop: threading.Event,
        *,
        resync: float = 300.0,
        watch_timeout: int = 30,
    ) -> None:
        self.list = _lists(api)[kind]
        self.kind = kind
        self.deliver = deliver
        self.stop = stop
        self.resync = resync
        self.watch_timeout = watch_timeout
        self.version = ""  # the last resourceVersion seen

    def run(self, version: str | None = None) -> None:
        """List (unless resuming from `version`), watch from there; on a broken stream watch again from the
        last version seen, and list again on 410 Gone (that version is gone) and every `resync` seconds."""
        until = time.monotonic() + self.resync
        backoff = 0.5
        while not self.stop.is_set():
            try:
                if version is None or time.monotonic() >= until:
                    version, until = self._list(), time.monotonic() + self.resync
                self.version = version
                self._watch(until)
                backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: watch from %s expired (410 Gone); listing again", self.kind, self.version)
                    version = None
                    continue
                log.warning("%s: %s; again in %.1f s", self.kind, exc.reason, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:
                log.warning("%s: %s; again in %.1f s", self.kind, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            if version is not None:
                version = self.version

    def _list(self) -> str:
        response = self.list(_preload_content=False)
        listing = json.loads(response.data)
        version = str(listing["metadata"]["resourceVersion"])
        group = listing.get("apiVersion") or "v1"
        items = [mirror(self.kind, {"apiVersion": group, **item}) for item in listing.get("items") or []]
        self.deliver(Listed(self.kind, items, version))
        log.info("%s: listed %d at resourceVersion %s", self.kind, len(items), version)
        return version

    def _watch(self, until: float) -> None:
        """Watch from self.version until `until`, keeping self.version at the last event or bookmark seen;
        raises ApiException(410) when that version is too old."""
        while not self.stop.is_set() and time.monotonic() < until:
            for event in self._events():
                raw = event["object"]
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self.deliver(Changed(self.kind, event["type"], mirror(self.kind, raw)))
                self.version = str(raw["metadata"]["resourceVersion"])
                if self.stop.is_set():
                    return

    def _events(self) -> Iterator[dict[str, Any]]:
        """One watch request's events, as JSON; an ERROR event (410 Gone) raises ApiException. (The
        client's `Watch.stream(deserialize=False)` fails on ERROR events with KeyError 'raw_object'.)"""
        response = self.list(
            watch=True,
            resource_version=self.version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _preload_content=False,
        )
        try:
            for line in watch.watch.iter_resp_lines(response):  # type: ignore[no-untyped-call]
                event: dict[str, Any] = json.loads(line)
                if event["type"] == "ERROR":
                    status = event["object"]
                    raise ApiException(status=status.get("code"), reason=status.get("message"))
                yield event
        finally:
            response.close()
            response.release_conn()
