"""Where a model comes from: a hub id, a local folder, or the offline `tiny` model."""

from __future__ import annotations

from pathlib import Path


def resolve_model_source(name_or_path: str) -> str:
    """Return what `from_pretrained` should receive: a local folder as an absolute path, else the hub id."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path
