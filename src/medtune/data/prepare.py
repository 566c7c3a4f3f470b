"""Read, split and encode a run's data exactly once, for training, `data stats` and benchmarks alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from medtune.config import RunConfig
from medtune.data.batching import TrainingSet
from medtune.data.formats import DataError, Sample
from medtune.data.render import Encoded, encode_sample
from medtune.data.split import split_rows


@dataclass
class PreparedData:
    train: TrainingSet
    validation: list[Encoded]
    stats: dict[str, Any]
    """Per file: rows read and skipped bad rows; per split: rows, truncated and answer-cut rows (with their
    sources) and token-length percentiles."""


def percentiles(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    arr = np.asarray(lengths)
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "min": int(arr.min()),
        "max": int(arr.max()),
    }


def _encode_split(samples: list[Sample], encode, stats: dict[str, Any]) -> tuple[list[Sample], list[Encoded]]:
    """Encode; count truncation; leave out, by source, the samples whose answer was cut away entirely."""
    kept_samples, kept, cut, truncated = [], [], [], []
    for sample in samples:
        encoded = encode(sample)
        if encoded.truncated:
            truncated.append(sample.source)
        if encoded.answer_cut:
            cut.append(sample.source)
            continue
        kept_samples.append(sample)
        kept.append(encoded)
    stats.update(
        rows=len(samples),
        trained_rows=len(kept),
        truncated=len(truncated),
        answer_cut=len(cut),
        truncated_rows=truncated,
        answer_cut_rows=cut,
        token_length=percentiles([len(e) for e in kept]),
    )
    return kept_samples, kept


def repeated_rows(train: list[Sample], validation: list[Sample]) -> tuple[list[str], list[str]]:
    """Training rows that repeat an earlier training row (trained twice as often), and validation rows that repeat a
    training row (their eval loss measures recall, not generalisation): each as `source = the earlier source`."""

    def text(sample: Sample) -> tuple[str, ...]:
        return sample.system, sample.question, sample.think, sample.answer

    first: dict[tuple[str, ...], str] = {}
    repeats = []
    for sample in train:
        if text(sample) in first:
            repeats.append(f"{sample.source} = {first[text(sample)]}")
        else:
            first[text(sample)] = sample.source
    return repeats, [f"{sample.source} = {first[text(sample)]}" for sample in validation if text(sample) in first]


def prepare_data(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    data = cfg.data

    def encode(sample: Sample) -> Encoded:
        return encode_sample(tokenizer, sample, data.max_length)

    split = split_rows(data, cfg.train.seed)
    stats: dict[str, Any] = {
        "max_length": data.max_length,
        "files": {role: read.as_dict() for role, read in split.files().items()},
        "train": {"source": data.train},
        "validation": {"source": split.validation_source},
    }
    train_samples, train_encoded = _encode_split(split.train, encode, stats["train"])
    _, val_encoded = _encode_split(split.validation, encode, stats["validation"])
    repeats, in_training = repeated_rows(split.train, split.validation)
    stats["train"].update(repeated=len(repeats), repeated_rows=repeats)
    stats["validation"].update(in_training=len(in_training), in_training_rows=in_training)
    if not train_encoded:
        raise DataError(
            data.train,
            f"no trainable rows: every answer is cut away by truncation to max_length="
            f"{data.max_length} ({len(stats['train']['answer_cut_rows'])} rows); raise data.max_length",
        )
    augment = None
    if cfg.augment.enabled:
        from medtune.data.augment import Augmenter

        augment = Augmenter.from_config(cfg.augment, cfg.train.seed).apply
    return PreparedData(TrainingSet(train_samples, train_encoded, encode, augment), val_encoded, stats)
