"""What `medtune data preview` shows: training samples as the model sees them, augmentation applied as in training.

Only the data is chosen here; the command line (cli/data.py) displays it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from medtune.config import ConfigError, RunConfig
from medtune.data.augment import MaskedTerm
from medtune.data.batching import step_positions
from medtune.data.formats import Sample
from medtune.data.prepare import prepare_data
from medtune.data.render import Encoded


@dataclass(frozen=True)
class PreviewSample:
    """One training sample of the epoch: as read, as augmented (None when nothing was masked), and as encoded."""

    sample: Sample
    augmented: Sample | None
    masked_terms: list[MaskedTerm]
    encoded: Encoded


@dataclass(frozen=True)
class Preview:
    samples: list[PreviewSample]
    epoch_size: int  # training samples per epoch


def preview_samples(
    cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, n: int, epoch: int, masked_only: bool = False
) -> Preview:
    """The first `n` samples of the given epoch in training order, augmentation applied as in training.

    With `masked_only`, the first `n` samples of the epoch that the augmentation masks (v3 previews): the
    others are skipped, so the masks can be checked without paging through unmasked samples.

    Raises:
        ConfigError: `masked_only` while the augmentation is off (nothing could ever be shown).
    """
    if masked_only and not cfg.augment.enabled:
        raise ConfigError(
            "--masked-only shows the augmentation's masks, but augment.enabled is false in this config (v3 enables it)"
        )
    train = prepare_data(cfg, tokenizer).train
    chosen: list[PreviewSample] = []
    for draw_epoch, index in step_positions(epoch * len(train), len(train), len(train), cfg.train.seed):
        if len(chosen) == n:
            break
        encoded, masked_terms = train.encode_at(draw_epoch, index)
        if masked_only and not masked_terms:
            continue
        sample = train.samples[index]
        augmented = train.augment(sample, draw_epoch, index)[0] if masked_terms else None
        chosen.append(PreviewSample(sample, augmented, masked_terms, encoded))
    return Preview(chosen, len(train))


def token_pieces(tokenizer: PreTrainedTokenizerBase, input_ids: list[int]) -> list[str]:
    """The text each token adds, decoded incrementally (as streaming detokenizers do).

    A character whose UTF-8 bytes are split across tokens is given whole to the token that completes it,
    so no piece shows a half character as `\ufffd`; the pieces join to the decoded sequence.
    """
    pieces, prefix_start, read_start = [], 0, 0
    for end in range(1, len(input_ids) + 1):
        done = tokenizer.decode(input_ids[prefix_start:read_start])
        text = tokenizer.decode(input_ids[prefix_start:end])
        if text.endswith("\ufffd") and end < len(input_ids):
            pieces.append("")  # an incomplete character: wait for the token that completes it
            continue
        pieces.append(text[len(done) :])
        prefix_start, read_start = read_start, end
    return pieces
