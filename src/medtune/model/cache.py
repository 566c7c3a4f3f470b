"""medtune's own cache (`MEDTUNE_CACHE`, default `~/.cache/medtune`): model folders built once and reused.

A folder is built in a staging directory beside its target and renamed into place, so a crash or a
concurrent build never leaves a half-written model that a later run would load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune")).expanduser()


def hash_text(text: str) -> int:
    """A stable (unsalted) 64-bit hash, for cache keys."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def hash_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cached_folder(name: str, build: Callable[[Path], None], complete_marker: str = "config.json") -> Path:
    """`<cache>/<name>`, made by `build(staging_folder)` the first time; `complete_marker` says it exists."""
    target = cache_dir() / name
    if (target / complete_marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / complete_marker).exists():
            raise
    finally:  # another process finished first (its copy is identical), or the build failed
        shutil.rmtree(staging, ignore_errors=True)
    return target
