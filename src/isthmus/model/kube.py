"""Kubernetes objects, kept exactly as declared; the Kubernetes translator gives them meaning."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from isthmus.model.meta import ObjectMeta, RefTo


class KubeObjectMeta(ObjectMeta):
    model_config = ConfigDict(extra="allow")

    @field_validator("resource_version", mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> int | None:
        """Another server's resourceVersion is opaque; the ledger replaces it with its own on every read."""
        return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else None


class KubeObject(BaseModel):
    """Any Kubernetes kind: apiVersion, kind and metadata are checked, every other field is kept as is."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: KubeObjectMeta

    def refs(self) -> list[RefTo]:
        return []

    @property
    def body(self) -> dict[str, Any]:
        """The declared fields other than apiVersion, kind and metadata (spec, status, data...)."""
        return dict(self.model_extra or {})
