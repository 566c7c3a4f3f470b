"""The offline default model is built once into the cache without disturbing the caller."""

from __future__ import annotations

import torch

from medtune.model.tiny import tiny_model_dir


def test_building_the_tiny_model_leaves_the_callers_random_stream_alone(tmp_path, monkeypatch):
    """A first run on a fresh machine (tiny model not cached yet) must draw the same LoRA init as later runs."""
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    folder = tiny_model_dir()
    assert torch.equal(torch.rand(3), expected)
    assert (folder / "config.json").exists() and tiny_model_dir() == folder
