"""Pod conditions Isthmus shows, and merging conditions by type as the API server's strategic merge does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from isthmus.kube.translate import DECLARED_NETWORK
from isthmus.model import Endpoint

NETWORK = (
    "isthmus.io/NetworkAsDeclared"  # False: the pod holds a network its namespace or labels no longer name
)


def network(endpoint: Endpoint) -> dict[str, Any]:
    """The condition of the pod whose Endpoint this is: its message is the network it holds, and, when the
    pod now declares another, which and why it stays."""
    declared = endpoint.metadata.annotations.get(DECLARED_NETWORK)
    if declared is None:
        return {"type": NETWORK, "status": "True", "message": endpoint.spec.network}
    return {
        "type": NETWORK,
        "status": "False",
        "reason": "NetworkChanged",
        "message": f"{endpoint.spec.network}, declares {declared}: a pod keeps its network for life; "
        "recreate it to move it",
    }


def merged(conditions: Sequence[dict[str, Any]], *changed: dict[str, Any]) -> list[dict[str, Any]]:
    """`conditions` with `changed` replacing those of the same type (added when new), in order."""
    new = {c["type"]: c for c in changed}
    kept = [new.pop(c.get("type"), c) for c in conditions]
    return kept + list(new.values())


def shows(conditions: Sequence[dict[str, Any]], *wanted: dict[str, Any]) -> bool:
    """Whether the conditions hold every wanted one (fields the server adds, such as times, aside)."""
    by_type = {c.get("type"): c for c in conditions}
    return all(w.items() <= (by_type.get(w["type"]) or {}).items() for w in wanted)
