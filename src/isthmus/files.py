"""Files that other processes read while they change."""

from __future__ import annotations

from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write `text` to `path` whole: a reader sees the old text or the new, never an empty or partial file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
