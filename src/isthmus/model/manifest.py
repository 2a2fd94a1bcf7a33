"""Manifests: YAML or JSON documents from files, directories or stdin, into validated objects."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from isthmus.model.kinds import Object, kind_of, parse_object

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it


class ManifestError(ValueError):
    """A manifest that cannot become objects; the message names the file, document and field."""


def describe(error: ValidationError) -> str:
    """One line naming each bad field, its problem and the value given."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        shown = "" if item["type"] in ("value_error", "missing") else f" (got {item['input']!r})"
        parts.append(f"{where}: {message}{shown}" if where else f"{message}{shown}")
    return "; ".join(parts)


def parse_manifests(text: str, source: str = "<stdin>", namespace: str = "default") -> list[Object]:
    """Every document of a YAML stream; namespaced objects without a namespace get `namespace`."""
    try:
        documents = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(f"{source}: malformed YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: malformed YAML: {exc}") from None
    objects: list[Object] = []
    for index, raw in enumerate(_flatten(documents), start=1):
        doc = raw
        where = f"{source}: document {index}"
        if not isinstance(doc, dict):
            raise ManifestError(
                f"{where}: expected a mapping with apiVersion and kind, got {type(doc).__name__}"
            )
        try:
            info = kind_of(doc)
        except KeyError as exc:
            raise ManifestError(f"{where}: {exc.args[0]}") from None
        meta = doc.get("metadata")
        if isinstance(meta, dict):
            where += f" ({info.kind} {meta.get('name', '?')})"
            if info.namespaced and not meta.get("namespace"):
                doc = {**doc, "metadata": {**meta, "namespace": namespace}}
            elif not info.namespaced and meta.get("namespace"):
                raise ManifestError(f"{where}: {info.kind} is not namespaced; remove metadata.namespace")
        try:
            objects.append(parse_object(doc))
        except ValidationError as exc:
            raise ManifestError(f"{where}: {describe(exc)}") from None
    return objects


def _flatten(documents: Iterable[Any]) -> Iterable[Any]:
    """A `kind: List` document (as `get -o yaml` prints) stands for its items."""
    for doc in documents:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from doc["items"]
        else:
            yield doc


def load_manifests(paths: Iterable[str], namespace: str = "default") -> list[Object]:
    """Files, directories (their *.yaml, *.yml and *.json, sorted, not recursive) or '-' for stdin."""
    objects: list[Object] = []
    for path in paths:
        if path == "-":
            objects += parse_manifests(sys.stdin.read(), "<stdin>", namespace)
            continue
        target = Path(path)
        if target.is_dir():
            files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
            if not files:
                raise ManifestError(f"{path}: no .yaml, .yml or .json files in this directory")
        elif target.is_file():
            files = [target]
        else:
            raise ManifestError(f"{path}: no such file or directory")
        for file in files:
            objects += parse_manifests(file.read_text(), str(file), namespace)
    return objects
