"""The `isthmus` command, kubectl-like and scriptable: exit 0 on success, else 1 and one line on stderr."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import ValidationError

from isthmus import __version__
from isthmus.cli.common import (
    Context,
    apply_manifests,
    delete_objects,
    errors,
    grid_options,
    pass_context,
    show_grid,
)
from isthmus.cli.lab import lab
from isthmus.cli.output import FLOW_HEADER, aligned, document, flow_row, table
from isthmus.compile.source import compiled
from isthmus.dataplane.trace import Tracer, names
from isthmus.dataplane.trace.matrix import matrix
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler, cluster_config
from isthmus.model import (
    KINDS,
    KindInfo,
    Object,
    load_manifests,
    lookup_kind,
)
from isthmus.model.manifest import describe
from isthmus.model.network import BgpPeer
from isthmus.observe import metrics as exposition
from isthmus.observe.flows import STATES, VERDICTS, Filter, Observer
from isthmus.observe.impact import impact, parse_port
from isthmus.observe.metrics import FederationMetrics, KubeMetrics
from isthmus.store import Credentials, Ledger, objects
from isthmus.store.election import Election, controllers, elected


def default_state() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "isthmus")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="isthmus")
@click.option(
    "--state",
    envvar="ISTHMUS_STATE",
    default=default_state,
    show_default="~/.local/state/isthmus",
    help="State directory holding the ledger, or a file `store` naming it ($ISTHMUS_STATE); 'memory:' for "
    "a throw-away one.",
)
@click.option(
    "--store",
    envvar="ISTHMUS_STORE",
    help="The ledger's store, overriding --state ($ISTHMUS_STORE): etcd://HOST:PORT[,HOST:PORT...] "
    "(credentials also as ?ca=&cert=&key=&user=&password-file=), etcd+unix:///SOCKET[,...], "
    "or a SQLite path.",
)
@click.option("--store-ca", envvar="ISTHMUS_STORE_CA", help="CA certificate of the etcd members.")
@click.option("--store-cert", envvar="ISTHMUS_STORE_CERT", help="Client certificate for etcd.")
@click.option("--store-key", envvar="ISTHMUS_STORE_KEY", help="The client certificate's key.")
@click.pass_context
def cli(
    ctx: click.Context,
    state: str,
    store: str | None,
    store_ca: str | None,
    store_cert: str | None,
    store_key: str | None,
) -> None:
    """Isthmus: one SDN control plane for Kubernetes pods, OpenStack VMs and bare-metal hosts."""
    ctx.obj = Context(state, store, Credentials(store_ca, store_cert, store_key))


_PROTOCOL = click.Choice(["TCP", "UDP", "SCTP"], case_sensitive=False)


def _port(value: str) -> tuple[int, str]:
    try:
        return parse_port(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    help="A file, a directory of manifests, or - for stdin; may repeat.",
)
@click.option("-n", "--namespace", default="default", show_default=True, help="For objects that name none.")
@click.option(
    "--dry-run",
    type=click.Choice(["impact"]),
    help="impact: store nothing; print the connections between pods the change would open and close.",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    callback=lambda _, __, values: tuple(_port(v) for v in values),
    help="With --dry-run=impact: PORT[/PROTOCOL] to compare on (default: the ports the policies name).",
)
@click.option("-o", "--output", type=click.Choice(["json"]), help="With --dry-run=impact.")
@pass_context
def apply(
    ctx: Context,
    paths: tuple[str, ...],
    namespace: str,
    dry_run: str | None,
    ports: tuple[tuple[int, str], ...],
    output: str | None,
) -> None:
    """Create or replace objects from manifests, all of them or none."""
    with errors():
        if dry_run is None:
            apply_manifests(ctx.ledger, paths, namespace)
            return
        found = impact(ctx.ledger, load_manifests(paths, namespace), ports)
    if output == "json":
        cells = {k: [vars(c) for c in getattr(found, k)] for k in ("opens", "closes")}
        click.echo(json.dumps({"ports": [f"{p}/{proto}" for p, proto in found.ports], **cells}, indent=2))
        return
    shown = ", ".join(f"{p}/{proto}" for p, proto in found.ports) or "no port"
    closes = f"{len(found.closes)} connection{'' if len(found.closes) == 1 else 's'} close"
    click.echo(f"on {shown}: {closes}, {len(found.opens)} open (nothing stored)")
    for closing, changed in ((True, found.closes), (False, found.opens)):
        for cell in changed:
            click.echo(f"{'close' if closing else 'open '}  {cell}")


@cli.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True, help="List across every namespace.")
@click.option("-o", "--output", type=click.Choice(["json", "yaml", "wide"]), help="Output format.")
@pass_context
def get(
    ctx: Context, kind: str, name: str | None, namespace: str, all_namespaces: bool, output: str | None
) -> None:
    """Show objects of a KIND (or `all`), or one by NAME; `bgp`: each node's BGP sessions and
    announced prefixes, as its agent reports them; `controllers`: each singleton controller's leader
    (replica, since when) and standbys."""
    if kind == "bgp":
        _bgp(ctx.ledger, name, output)
        return
    if kind == "controllers":
        with errors():
            _controllers(ctx.ledger, output)
        return
    with errors():
        kinds = [k for k in KINDS if k.model is not None] + [k for k in KINDS if k.model is None]
        infos = kinds if kind == "all" else [lookup_kind(kind)]
        shown: list[tuple[KindInfo, list[Object]]] = []
        for info in infos:
            scope = None if all_namespaces or not info.namespaced else namespace
            if name is not None:
                found = objects.list_one(ctx.ledger, info, scope, name)
                if found is None:
                    raise KeyError(f"{info.kind} {f'{scope}/' if scope else ''}{name} not found")
                items = [found]
            else:
                items = sorted(objects.list_objects(ctx.ledger, info, scope)[0], key=_order)
            if items or kind != "all":
                shown.append((info, items))
        if output in ("json", "yaml"):
            everything = [o for _, items in shown for o in items]
            click.echo(document(everything, name is not None, output))
            return
        if not any(items for _, items in shown):
            where = "" if all_namespaces else f" in namespace {namespace}"
            click.echo(f"No resources found{where}.", err=True)
            return
        blocks = [
            (f"# {info.plural}\n" if len(shown) > 1 else "")
            + table(info, items, all_namespaces, output == "wide")
            for info, items in shown
        ]
        click.echo("\n\n".join(blocks))


def _bgp(ledger: Ledger, node: str | None, output: str | None) -> None:
    reports = {node: report.get("bgp") or {} for node, report in objects.statuses(ledger).items()}
    shown = {n: r for n, r in sorted(reports.items()) if node in (None, n)}
    if output in ("json", "yaml"):
        click.echo(json.dumps(shown, indent=2))
        return
    rows = [["NODE", "PEER", "AS", "STATE", "SINCE", "ANNOUNCED"]]
    for name, report in shown.items():
        announced = ",".join(report.get("announced") or []) or "-"
        for peer in report.get("peers") or [{}]:
            state = str(peer.get("state", "no speaker")) + (f" ({peer['info']})" if peer.get("info") else "")
            row = [str(peer.get(f, "-")) for f in ("address", "asn")] + [state, str(peer.get("since", "-"))]
            rows.append([name, *row, announced])
    click.echo(aligned(rows))


def _controllers(ledger: Ledger, output: str | None) -> None:
    shown = controllers(ledger)
    if output in ("json", "yaml"):
        click.echo(json.dumps([vars(c) for c in shown], indent=2))
        return
    rows = [["CONTROLLER", "LEADER", "SINCE", "STANDBYS"]]
    for c in shown:
        since = datetime.fromtimestamp(c.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if c.since else "-"
        rows.append([c.name, c.leader or "-", since, ",".join(c.standbys) or "-"])
    click.echo(aligned(rows))


def _order(obj: Object) -> tuple[str, str]:
    return obj.metadata.namespace or "", obj.metadata.name


@cli.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "paths", multiple=True, help="Delete the objects these manifests name.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--ignore-not-found", is_flag=True, help="Succeed when an object is already gone.")
@pass_context
def delete(
    ctx: Context,
    kind: str | None,
    names: tuple[str, ...],
    paths: tuple[str, ...],
    namespace: str,
    ignore_not_found: bool,
) -> None:
    """Delete objects by KIND NAME... or by manifests (-f), all of them or none."""
    with errors():
        delete_objects(ctx.ledger, kind, names, paths, namespace, ignore_not_found)


def _tracer(ledger: Ledger) -> Tracer:
    """The compiled state of everything the ledger holds, ready to walk packets through."""
    return Tracer(compiled(ledger)[0])


@cli.command("trace")
@click.argument("source")
@click.argument("destination")
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--protocol", type=_PROTOCOL, default="TCP", show_default=True)
@click.option("-n", "--namespace", default="default", show_default=True, help="For names without one.")
@click.option("-o", "--output", type=click.Choice(["json"]), help="Output format.")
@pass_context
def trace_command(
    ctx: Context, source: str, destination: str, port: int, protocol: str, namespace: str, output: str | None
) -> None:
    """Walk a packet from SOURCE (NAMESPACE/POD, an endpoint or an address) to DESTINATION (NAMESPACE/POD,
    svc/NAMESPACE/NAME or an address) through the compiled state; each hop names the rule that decided."""
    with errors():
        tracer = _tracer(ctx.ledger)
        try:
            start, end = (
                names.source(tracer, source, namespace),
                names.destination(tracer, destination, namespace),
            )
        except LookupError as exc:
            raise click.ClickException(str(exc)) from None
        walked = tracer.trace(start, end, protocol.upper(), port)
    if output == "json":
        click.echo(json.dumps(walked.as_json(), indent=2))
        return
    for hop in walked.hops:
        click.echo(f"{hop.node:<10} {hop.step:<15} {hop.detail}" + (f"  [{hop.rule}]" if hop.rule else ""))
    click.echo(f"verdict: {walked.verdict}")


@cli.command("matrix")
@grid_options(("TCP", "UDP", "SCTP"))
@pass_context
def matrix_command(
    ctx: Context,
    port: int,
    protocol: str,
    to: Literal["pods", "services"],
    namespaces: tuple[str, ...],
    family: int,
    output: str | None,
) -> None:
    """The trace verdict for every source pod and every destination pod or service ClusterIP, in one
    address family."""
    with errors():
        result = matrix(_tracer(ctx.ledger), port, protocol.upper(), to, namespaces, family)
    show_grid(result, output)


@cli.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing records as they come.")
@click.option("-n", "--namespace", help="Records with an end in this namespace.")
@click.option("--pod", help="Records with this pod (or VM, NAMESPACE/NAME or NAME) at an end.")
@click.option("--service", help="Records DNATed for (or refused at) this service, NAMESPACE/NAME.")
@click.option("--verdict", type=click.Choice(VERDICTS))
@click.option("--protocol", type=click.Choice(["TCP", "UDP", "SCTP", "ICMP"], case_sensitive=False))
@click.option("--port", type=click.IntRange(0, 65535), help="At either end.")
@click.option("--node", help="Records of this node.")
@click.option("--state", type=click.Choice(STATES), help="new: a first packet's verdict; then conntrack's.")
@click.option("-o", "--output", type=click.Choice(["json"]), help="json: one record a line.")
@pass_context
def observe(ctx: Context, /, follow: bool, output: str | None, **given: Any) -> None:
    """The flows the nodes' kernels saw, allowed or dropped, each naming the rule that decided (as
    `isthmus trace` words it): the recent ones each agent keeps, then with -f the new ones as they come."""
    chosen = Filter(**given)
    with errors():
        observer = Observer(ctx.ledger)
        records = observer.follow() if follow else iter(observer.poll())
        if output is None:
            click.echo(FLOW_HEADER)
        for record in records:
            if chosen.matches(record):
                click.echo(json.dumps(record) if output == "json" else flow_row(record))
        for node, problem in sorted(observer.problems.items()):
            click.echo(f"node {node}: {problem}", err=True)
        for node, lost in sorted(observer.lost.items()):
            if lost:
                click.echo(f"node {node}: {lost} records lost (the kernel's buffer or the ring)", err=True)


@cli.group()
def api() -> None:
    """The Isthmus REST API."""


@api.command()
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--admin-token", envvar="ISTHMUS_ADMIN_TOKEN", help="The admin's bearer token ($ISTHMUS_ADMIN_TOKEN)."
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate."
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's key.")
@pass_context
def serve(
    ctx: Context, listen: str, admin_token: str | None, tls_cert: str | None, tls_key: str | None
) -> None:
    """Serve the API (Isthmus's and OpenStack's Identity and Networking) until interrupted; over HTTPS
    when given a certificate."""
    import uvicorn

    from isthmus.api import create_app

    if not admin_token:
        raise click.ClickException("no admin token: pass --admin-token or set ISTHMUS_ADMIN_TOKEN")
    if bool(tls_cert) != bool(tls_key):
        raise click.ClickException("--tls-cert and --tls-key go together")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise click.ClickException(f"--listen {listen!r} is not HOST:PORT")
    with errors():
        app = create_app(ctx.ledger, admin_token)
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_level="info",
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )


_REPLICA = click.option(
    "--replica",
    default=lambda: f"{socket.gethostname()}-{os.getpid()}",
    show_default="HOSTNAME-PID",
    help="This replica's name in the leader election.",
)
_METRICS = click.option("--metrics", help="HOST:PORT to serve Prometheus metrics on (/metrics).")


@cli.group()
def kube() -> None:
    """The Kubernetes network manager."""


@kube.command()
@click.option(
    "--kubeconfig",
    envvar="KUBECONFIG",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The API server and credentials ($KUBECONFIG).",
)
@click.option("--resync", default=300.0, show_default=True, help="Seconds between full listings.")
@_REPLICA
@_METRICS
@pass_context
def watch(ctx: Context, kubeconfig: str, resync: float, replica: str, metrics: str | None) -> None:
    """Watch the API server and keep the ledger's networks in step, until SIGTERM or SIGINT. Replicas
    elect one leader on the ledger (controller `kube`); the others stand by."""
    from kubernetes import config

    from isthmus.kube.manager import Manager

    stop = _serving()
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    measured = KubeMetrics()
    if metrics:
        exposition.serve(measured.registry, metrics)

    def manage(ledger: Ledger, term: threading.Event) -> None:
        Manager(ledger, KubeConfig(), api, resync=resync, metrics=measured).run(term)

    with errors():
        elected(Election(ctx.ledger, "kube", replica), stop, manage)


@kube.command("config")
@click.option("--pod-cidr", "pod_cidrs", multiple=True, help="Pods' CIDR; one per family, the primary first.")
@click.option("--service-cidr", "service_cidrs", multiple=True, help="ClusterIPs' CIDR; the pods' families.")
@click.option(
    "--external-pool", "external_pools", multiple=True, help="LoadBalancer IPs' CIDR; one per family."
)
@click.option("--pod-block", type=int, help="Prefix length of the pods' IPv4 blocks.")
@click.option("--pod-block6", type=int, help="Prefix length of the pods' IPv6 blocks.")
@pass_context
def kube_config(
    ctx: Context,
    pod_cidrs: tuple[str, ...],
    service_cidrs: tuple[str, ...],
    external_pools: tuple[str, ...],
    pod_block: int | None,
    pod_block6: int | None,
) -> None:
    """Show the cluster's configuration, or change what the options name: its address families are those
    of --pod-cidr (a dual-stack cluster gives one of each family, and --service-cidr of the same families).
    Everything is translated again by it, in one transaction with storing it, or nothing changes."""
    given = {
        "pod_cidrs": list(pod_cidrs),
        "service_cidrs": list(service_cidrs),
        "external_pools": list(external_pools),
        "pod_block": pod_block,
        "pod_block6": pod_block6,
    }
    changes = {k: v for k, v in given.items() if v}
    with errors():
        reconciler = Reconciler(ctx.ledger, KubeConfig())
        current = cluster_config(ctx.ledger, KubeConfig())
        if changes:
            try:
                wanted = KubeConfig.model_validate(current.model_dump() | changes)
            except ValidationError as exc:
                raise click.ClickException(f"kube config: {describe(exc)}") from None
            for item in reconciler.configure(wanted):
                if item.action != "unchanged":
                    name = f"{type(item.object).__name__.lower()}/{item.object.metadata.name}"
                    click.echo(f"{name} {item.action}", err=True)
            current = wanted
    click.echo(json.dumps(current.model_dump(mode="json", by_alias=True), indent=2))


@cli.group()
def agent() -> None:
    """The node agent."""


@agent.command("run")
@click.option("--node", required=True, help="The Node this agent programs.")
@click.option("--socket", default="/run/isthmus/cni.sock", show_default=True, help="The CNI plugin's socket.")
@click.option("--work", default="/var/lib/isthmus/agent", show_default=True, help="The agent's own files.")
@_METRICS
@click.option(
    "--flow-records/--no-flow-records",
    default=True,
    show_default=True,
    help="Keep records of the flows the node's rules decide (NFLOG); off, the kernel drops them unread.",
)
@pass_context
def agent_run(
    ctx: Context, node: str, socket: str, work: str, metrics: str | None, flow_records: bool
) -> None:
    """Program this node's network namespace and serve the CNI plugin until stopped."""
    from isthmus.agent.run import run

    with errors():
        run(ctx.ledger, node, Path(socket), Path(work), metrics, flow_records)


def _serving() -> threading.Event:
    """For a long-running command: log at INFO; the event SIGTERM or SIGINT sets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@cli.group()
def federation() -> None:
    """Joining networks of clusters by route targets (BGP VPNv4)."""


def _peer(value: str) -> BgpPeer:
    address, _, asn = value.rpartition(":")
    try:
        return BgpPeer.model_validate({"address": address, "asn": int(asn)})
    except (ValueError, ValidationError):
        raise click.BadParameter(f"{value!r} is not ADDRESS:ASN") from None


@federation.command("run")
@click.option("--address", required=True, help="This speaker's address (its router id).")
@click.option("--asn", type=click.IntRange(1, 2**32 - 1), required=True, help="This cluster's AS.")
@click.option(
    "--peer", "peers", multiple=True, required=True, help="ADDRESS:ASN of another cluster's speaker."
)
@click.option("--work", default="/var/lib/isthmus/federation", show_default=True, help="The speaker's files.")
@_REPLICA
@_METRICS
@pass_context
def federation_run(
    ctx: Context, address: str, asn: int, peers: tuple[str, ...], work: str, replica: str, metrics: str | None
) -> None:
    """Announce the routes of networks with export targets; import the peers' routes until stopped.
    Every replica announces; the one that leads the election `federation` imports."""
    from isthmus.bgp.config import Settings
    from isthmus.federation.controller import Federation

    try:
        settings = Settings(ipaddress.ip_address(address), asn, tuple(_peer(p) for p in peers))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    measured = FederationMetrics()
    if metrics:
        exposition.serve(measured.registry, metrics)
    with errors():
        election = Election(ctx.ledger, "federation", replica)
        Federation(ctx.ledger, Path(work), settings, election, measured).run(_serving())


cli.add_command(lab)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="isthmus")


if __name__ == "__main__":
    main(sys.argv[1:])
