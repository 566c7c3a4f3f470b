"""`data preview`'s choice of samples: whole characters per token, and the masked-only view of the augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import tiny_config

from medtune.config import ConfigError
from medtune.data.preview import preview_samples, token_pieces


def test_characters_split_across_tokens_are_shown_whole(tokenizer):
    text = "常见的有等等₃，鼹鼠😀咬伤"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    split = [i for i in ids if "\ufffd" in tokenizer.decode([i])]
    assert split, "the text must hold a character that one token alone does not decode"

    pieces = token_pieces(tokenizer, ids)

    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_masked_only_shows_only_masked_samples(tmp_path: Path, short_rows_file: Path, tokenizer):
    cfg = tiny_config(
        "v3", tmp_path, short_rows_file, "augment.probability=0.3", "augment.fields=[question,think,answer]"
    )

    every = preview_samples(cfg, tokenizer, n=8, epoch=0)
    masked = preview_samples(cfg, tokenizer, n=2, epoch=0, masked_only=True)

    assert len(every.samples) == 8 and every.epoch_size == 12
    assert any(item.augmented is None and not item.masked_terms for item in every.samples), "some samples are unmasked"
    assert len(masked.samples) == 2 and all(item.masked_terms and item.augmented for item in masked.samples)
    first_masked = next(item for item in every.samples if item.masked_terms)
    assert masked.samples[0] == first_masked, "the masked-only view skips, it does not draw anew"
    assert first_masked.augmented != first_masked.sample


def test_masked_only_needs_the_augmentation(tmp_path: Path, short_rows_file: Path, tokenizer):
    cfg = tiny_config("v1", tmp_path, short_rows_file)
    with pytest.raises(ConfigError, match="augment.enabled"):
        preview_samples(cfg, tokenizer, n=1, epoch=0, masked_only=True)
