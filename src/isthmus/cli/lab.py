"""`isthmus lab`: a whole multi-node cluster on this machine, from network namespaces, with the real agent,
the real CNI plugin, a gateway router speaking BGP with the nodes, and real traffic."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click

from isthmus.cli.common import apply_manifests, delete_objects, errors, grid_options, show_grid
from isthmus.cli.output import aligned
from isthmus.lab.control import Lab, LabError
from isthmus.lab.topology import DEFAULT, TopologyError, load
from isthmus.store import LedgerError

_TIMEOUT = click.option(
    "--timeout", default=120.0, show_default=True, help="Seconds to wait for agents and pods to settle."
)


@contextmanager
def _failures() -> Iterator[None]:
    with errors():
        try:
            yield
        except (LabError, TopologyError) as exc:
            raise click.ClickException(str(exc)) from None


def _lab(ctx: click.Context) -> Lab:
    with _failures():
        return Lab.open(ctx.obj)


def _settle(lab: Lab, timeout: float) -> None:
    """Wait for the lab to program the change; fail naming each node or pod that did not."""
    with _failures():
        problems = lab.settle(timeout, lambda line: click.echo(line, err=True))
    if problems:
        raise click.ClickException("the lab did not settle:\n  " + "\n  ".join(problems))


@click.group()
@click.option(
    "--dir",
    "work",
    envvar="ISTHMUS_LAB",
    default="/run/isthmus/lab",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The lab's directory: its ledger, logs and what it started ($ISTHMUS_LAB).",
)
@click.pass_context
def lab(ctx: click.Context, work: Path) -> None:
    """A multi-node cluster on this machine, in network namespaces (needs root)."""
    ctx.obj = work


@lab.command()
@click.option(
    "-f", "--filename", "path", type=click.Path(path_type=Path), help=f"Topology (default: {DEFAULT.name})."
)
@_TIMEOUT
@click.pass_context
def up(ctx: click.Context, path: Path | None, timeout: float) -> None:
    """Build the lab: an underlay switch, nodes running the agent and a kubelet, then its manifests."""
    say = click.echo
    with _failures():
        topology = load(path or DEFAULT)
        say(f"lab {topology.name}: {len(topology.nodes)} nodes, in {ctx.obj}")
        built = Lab.up(topology, ctx.obj, say)
        if topology.manifests:
            apply_manifests(built.ledger, tuple(topology.manifests), "default")
        for cluster in topology.clusters:
            if cluster.manifests:
                say(f"cluster {cluster.name}:")
                apply_manifests(built.ledger_of(cluster.name), tuple(cluster.manifests), "default")
    _settle(built, timeout)
    say(f"lab {topology.name} is up; next: isthmus lab status | apply -f FILE | probe --port P | down")


_CLUSTER = click.option("--cluster", default="", help="Another cluster of the lab (default: the main one).")


@lab.command("apply")
@click.option("-f", "--filename", "paths", multiple=True, required=True, help="Manifests; may repeat.")
@click.option("-n", "--namespace", default="default", show_default=True, help="For objects that name none.")
@_CLUSTER
@_TIMEOUT
@click.pass_context
def lab_apply(
    ctx: click.Context, paths: tuple[str, ...], namespace: str, cluster: str, timeout: float
) -> None:
    """Create or replace objects of the running lab, then wait until it has programmed them."""
    running = _lab(ctx)
    with _failures():
        apply_manifests(running.ledger_of(cluster), paths, namespace)
    _settle(running, timeout)


@lab.command("delete")
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "paths", multiple=True, help="Delete the objects these manifests name.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--ignore-not-found", is_flag=True, help="Succeed when an object is already gone.")
@_CLUSTER
@_TIMEOUT
@click.pass_context
def lab_delete(
    ctx: click.Context,
    kind: str | None,
    names: tuple[str, ...],
    paths: tuple[str, ...],
    namespace: str,
    ignore_not_found: bool,
    cluster: str,
    timeout: float,
) -> None:
    """Delete objects of the running lab (KIND NAME... or -f), then wait until it has programmed that."""
    running = _lab(ctx)
    with _failures():
        delete_objects(running.ledger_of(cluster), kind, names, paths, namespace, ignore_not_found)
    _settle(running, timeout)


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def lab_exec(ctx: click.Context, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in the network namespace of NAME: a node, `router`, `outside`, or a pod (NAMESPACE/POD, or
    POD in default)."""
    with _failures():
        netns = _lab(ctx).netns(name)
    os.execvp("ip", ["ip", "netns", "exec", netns, *command])


@lab.command()
@grid_options(("TCP", "UDP"))
@click.pass_context
def probe(
    ctx: click.Context,
    port: int,
    protocol: str,
    to: Literal["pods", "services"],
    namespaces: tuple[str, ...],
    family: int,
    output: str | None,
) -> None:
    """Real connections from every pod to every pod or service ClusterIP, as `isthmus matrix` shows them."""
    with _failures():
        result = _lab(ctx).probe(port, protocol.upper(), to, namespaces, family)
    show_grid(result, output)


@lab.command()
@click.option("-o", "--output", type=click.Choice(["json"]), help="Output format.")
@click.pass_context
def status(ctx: click.Context, output: str | None) -> None:
    """The lab's nodes (cluster, agent revision, endpoints programmed, problems), pods (node, address,
    phase, the network held and, if another, the one declared now), VMs and hosts (cluster, node, address,
    up), the etcd members (cluster, address, health, leader, revision) and the router's BGP session with
    each node (state, routes received, last error)."""
    running = _lab(ctx)
    agents = {n: running.agent(n) for n in running.fabric.nodes}
    unread = None  # why the ledger could not be read (its store is down): the rest is still shown
    try:
        pods = [vars(p) for p in running.pods()]
        machines = [vars(m) for m in running.machines()]
    except LedgerError as exc:
        pods, machines, unread = [], [], str(exc)
    router = _router(running)
    members = running.members()
    clusters = running.fabric.clusters
    if output == "json":
        nodes = {
            n: {"address": a, "cluster": clusters.get(n, "main"), "agent": agents[n]}
            for n, a in running.fabric.nodes.items()
        }
        shown = {"nodes": nodes, "pods": pods, "machines": machines} | ({"ledger": unread} if unread else {})
        shown |= ({"store": members} if members else {}) | ({"router": router} if router else {})
        click.echo(json.dumps(shown, indent=2))
        return
    rows = [["NODE", "CLUSTER", "ADDRESS", "REVISION", "ENDPOINTS", "PROBLEMS"]]
    for name, agent in agents.items():
        endpoints = dict(agent.get("endpoints") or {})
        programmed = sum(1 for e in endpoints.values() if e.get("programmed"))
        problems = agent.get("error") or "; ".join(
            f"{k}: {v}" for k, v in dict(agent.get("problems") or {}).items()
        )
        address = running.fabric.nodes[name]
        revision = str(agent.get("revision", "-"))
        cluster = clusters.get(name, "main")
        rows.append([name, cluster, address, revision, f"{programmed}/{len(endpoints)}", problems])
    click.echo(aligned(rows))
    if unread:
        click.echo(f"\nledger unreadable: {unread}")
    rows = [["POD", "NODE", "ADDRESS", "STATUS", "NETWORK", "PROBLEM"]]
    rows += [
        [f"{p['namespace']}/{p['name']}", p["node"], p["address"], p["phase"], p["network"], p["problem"]]
        for p in pods
    ]
    click.echo("\n" + aligned(rows))
    if machines:
        rows = [["MACHINE", "KIND", "CLUSTER", "NODE", "ADDRESS", "STATUS"]]
        rows += [
            [
                m["ref"],
                m["kind"],
                m["cluster"],
                m["node"],
                m["addresses"],
                "Running" if m["up"] else "Booting",
            ]
            for m in machines
        ]
        click.echo("\n" + aligned(rows))
    if members:
        rows = [["ETCD MEMBER", "CLUSTER", "ADDRESS", "HEALTH", "LEADER", "REVISION"]]
        rows += [
            [m["member"], m["cluster"], m["address"], m["health"], m["leader"], m["revision"]]
            for m in members
        ]
        click.echo("\n" + aligned(rows))
    if router:
        rows = [["ROUTER PEER", "ADDRESS", "ASN", "BGP STATE", "ROUTES", "LAST ERROR"]]
        rows += [
            [n, s["address"], s["asn"], s["state"], s["routes"], s["error"]]
            for n, s in router.get("sessions", {}).items()
        ]
        click.echo("\n" + (router.get("error") or aligned(rows)))


def _router(running: Lab) -> dict[str, Any] | None:
    """The router's address and its session with each node (or why they cannot be read), if there is one."""
    if not running.fabric.router:
        return None
    try:
        return {"address": running.fabric.router, "sessions": running.sessions()}
    except LabError as exc:
        return {"address": running.fabric.router, "error": str(exc)}


@lab.group()
def router() -> None:
    """The lab's gateway router (BIRD 2; `lab exec router -- CMD` for anything else)."""


@router.command()
@click.argument("prefix", required=False)
@click.pass_context
def routes(ctx: click.Context, prefix: str | None) -> None:
    """The router's BGP routes (`birdc show route all`: every path, the one chosen marked *) and its kernel
    routes (`ip route`: equal paths merged into one multipath route); of PREFIX only when given."""
    with _failures():
        bgp, kernel = _lab(ctx).routes(prefix)
    click.echo(f"BGP routes (birdc show route all):\n{bgp.rstrip()}\n")
    click.echo(f"Kernel routes (ip route):\n{kernel.rstrip()}")


@lab.command()
@click.pass_context
def down(ctx: click.Context) -> None:
    """Remove every namespace and process of the lab, also after a crash."""
    try:
        running = Lab.open(ctx.obj)
    except LabError:
        click.echo(f"no lab in {ctx.obj}")
        return
    running.down()
    click.echo(f"lab {running.fabric.prefix.rstrip('-')} is down: no namespace or process of it is left")


@lab.command(hidden=True)
@click.option("--node", required=True)
@click.pass_context
def kubelet(ctx: click.Context, node: str) -> None:
    """The lab kubelet of NODE (started by `lab up`)."""
    from isthmus.lab.kubelet import main

    main(ctx.obj, node)
