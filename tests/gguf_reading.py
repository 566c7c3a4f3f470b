"""Parse each GGUF file once per test: gguf-py's reader walks every metadata value in Python (8 s for the tiny
model's 151k-token vocabulary on 2 cores), and transformers parses a file anew for its config, its tensors and its
tokenizer."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest


def read_each_gguf_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Later parses of an unchanged file reuse the first reader (it only reads); a rewritten file is parsed anew."""
    real_reader = gguf.GGUFReader
    readers: dict[tuple, gguf.GGUFReader] = {}

    def reader(path, mode="r"):
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", reader)
