"""What the `isthmus` commands share: the context, error handling, and applying or deleting manifests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from isthmus import intent
from isthmus.dataplane.trace.matrix import grid
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import reconcile
from isthmus.kube.translate import TranslationError
from isthmus.model import ManifestError, kind_of, load_manifests, lookup_kind
from isthmus.store import Credentials, Ledger, LedgerError, objects, open_ledger


class Context:
    def __init__(self, state: str, store: str | None = None, credentials: Credentials | None = None) -> None:
        self.state, self.store, self.credentials = state, store, credentials or Credentials()
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        """The ledger, opened at first use; a store that cannot be used is one line and exit code 1."""
        if self._ledger is None:
            with errors():
                self._ledger = open_ledger(self.state, self.store, self.credentials)
        return self._ledger


@contextmanager
def errors() -> Iterator[None]:
    """Turn every expected failure into one line and exit code 1."""
    try:
        yield
    except (intent.IntentError, ManifestError, LedgerError, TranslationError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None


pass_context = click.make_pass_decorator(Context)


def report(applied: list[intent.Applied]) -> None:
    """One line per object the user named or the change made; what stayed the same is not news."""
    for item in applied:
        obj = item.object
        click.echo(f"{kind_of(obj).kind.lower()}/{obj.metadata.name} {item.action}")


def apply_manifests(ledger: Ledger, paths: tuple[str, ...], namespace: str) -> None:
    """Create or replace the objects of manifests, all of them or none; report what changed."""
    items = load_manifests(paths, namespace)
    if not items:
        raise click.ClickException(f"no objects in {', '.join(paths)}")
    if any(kind_of(o).model is None for o in items):
        named = {objects.object_key(o) for o in items}
        done = reconcile(ledger, KubeConfig(), items)
        report([a for a in done if a.action != "unchanged" or objects.object_key(a.object) in named])
    else:
        report(intent.apply(ledger, items))


def delete_objects(
    ledger: Ledger,
    kind: str | None,
    names: tuple[str, ...],
    paths: tuple[str, ...],
    namespace: str,
    ignore_not_found: bool,
) -> None:
    """Delete objects by KIND NAME... or by manifests, all of them or none; report what changed."""
    if paths and kind:
        raise click.UsageError("give either KIND NAME... or -f, not both")
    if paths:
        targets = [
            (kind_of(o), o.metadata.namespace, o.metadata.name) for o in load_manifests(paths, namespace)
        ]
    elif kind and names:
        info = lookup_kind(kind)
        targets = [(info, namespace if info.namespaced else None, n) for n in names]
    else:
        raise click.UsageError("name what to delete: KIND NAME... or -f PATH")
    if any(info.model is None for info, _, _ in targets):
        present = [t for t in targets if objects.list_one(ledger, *t) is not None]
        if len(present) < len(targets) and not ignore_not_found:
            info, ns, name = next(t for t in targets if t not in present)
            raise KeyError(f"{info.kind} {f'{ns}/' if ns else ''}{name} not found")
        report([a for a in reconcile(ledger, KubeConfig(), removed=present) if a.action != "unchanged"])
    else:
        report(intent.delete(ledger, targets, missing_ok=ignore_not_found))


Command = Callable[..., None]


def grid_options(protocols: tuple[str, ...]) -> Callable[[Command], Command]:
    """The options of a reachability grid (`matrix`, `lab probe`): --port, --protocol (one of
    `protocols`), --to, -n, --family and -o."""
    options = [
        click.option("--port", type=click.IntRange(1, 65535), required=True),
        click.option(
            "--protocol", type=click.Choice(protocols, case_sensitive=False), default="TCP", show_default=True
        ),
        click.option(
            "--to", "to", type=click.Choice(["pods", "services"]), default="pods", show_default=True
        ),
        click.option(
            "-n", "--namespace", "namespaces", multiple=True, help="Only these namespaces (repeat)."
        ),
        click.option(
            "--family",
            type=click.Choice(["4", "6"]),
            default="4",
            show_default=True,
            callback=lambda *a: int(a[2]),
            help="The address family: IPv4 or IPv6 addresses of pods and services.",
        ),
        click.option("-o", "--output", type=click.Choice(["json"]), help="Output format."),
    ]

    def decorate(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def show_grid(result: dict[str, Any], output: str | None) -> None:
    click.echo(json.dumps(result, indent=2) if output == "json" else grid(result))
