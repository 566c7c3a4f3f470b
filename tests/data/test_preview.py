"""`data preview`: whole characters in the token view, and the masked-only view of the augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from medtune.config import ConfigError
from medtune.data.preview import preview, token_pieces
from tests.conftest import tiny_config


def test_characters_split_across_tokens_are_shown_whole(tokenizer):
    text = "常见的有等等₃，鼹鼠😀咬伤"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    split = [i for i in ids if "\ufffd" in tokenizer.decode([i])]
    assert split, "the text must hold a character that one token alone does not decode"

    pieces = token_pieces(tokenizer, ids)

    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


def _render(cfg, tokenizer, **kwargs) -> str:
    console = Console(record=True, width=200, color_system=None)
    preview(cfg, tokenizer, console=console, **kwargs)
    return console.export_text()


def test_masked_only_shows_only_masked_samples(tmp_path: Path, short_rows_file: Path, tokenizer):
    cfg = tiny_config("v3", tmp_path, short_rows_file, "augment.probability=0.3", "augment.fields=[question,think,answer]")

    every = _render(cfg, tokenizer, n=8, epoch=0)
    masked = _render(cfg, tokenizer, n=2, epoch=0, masked_only=True)

    assert every.count("masked terms:") < every.count("tokens ·"), "some samples of the plain preview are unmasked"
    assert masked.count("masked terms:") == masked.count("tokens ·") == 2


def test_masked_only_needs_the_augmentation(tmp_path: Path, short_rows_file: Path, tokenizer):
    cfg = tiny_config("v1", tmp_path, short_rows_file)
    with pytest.raises(ConfigError, match="augment.enabled"):
        preview(cfg, tokenizer, n=1, epoch=0, masked_only=True)
