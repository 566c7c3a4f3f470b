"""data/ sits below the model, training and inference code: it reads, splits and renders rows, and whatever needs a
model or a tokenizer loaded gets it from its caller."""

from __future__ import annotations

import ast
from pathlib import Path

import medtune.data

ALLOWED = ("medtune.config", "medtune.hub", "medtune.data")


def _medtune_imports(path: Path) -> set[str]:
    """Every medtune module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtune"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("medtune")}
    return names


def test_data_imports_only_the_config_the_hub_and_itself():
    files = sorted(Path(medtune.data.__file__).parent.glob("*.py"))
    assert len(files) > 5
    upward = {
        f"{path.name}: {name}" for path in files for name in _medtune_imports(path) if not name.startswith(ALLOWED)
    }
    assert not upward, upward
