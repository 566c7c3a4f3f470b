"""Read, split and encode a run's data exactly once, for training, `data stats` and benchmarks alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from medtune.config import DataConfig, RunConfig
from medtune.data.batching import TrainingSet
from medtune.data.formats import DataError, ReadResult, Sample, read_samples, resolve_data_path, split_train_validation
from medtune.data.render import Encoded, encode_sample


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
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "min": int(arr.min()), "max": int(arr.max())}


def read_data_file(data: DataConfig, spec: str, max_rows: int | None) -> ReadResult:
    """One data file read with the run's `data` settings (format, columns, encoding, think, tags, bad rows)."""
    return read_samples(resolve_data_path(spec), format=data.format, system_prompt=data.system_prompt,
                        skip_bad_rows=data.skip_bad_rows, max_rows=max_rows, columns=data.columns,
                        encoding=data.encoding, think=data.think, literal_tags=data.literal_tags)


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
    stats.update(rows=len(samples), trained_rows=len(kept), truncated=len(truncated), answer_cut=len(cut),
                 truncated_rows=truncated, answer_cut_rows=cut, token_length=percentiles([len(e) for e in kept]))
    return kept_samples, kept


def prepare_data(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    data = cfg.data

    def encode(sample: Sample) -> Encoded:
        return encode_sample(tokenizer, sample, data.max_length)

    train_read = read_data_file(data, data.train, data.max_rows)
    stats: dict[str, Any] = {"max_length": data.max_length, "files": {"train": train_read.as_dict()},
                             "train": {"source": data.train}}
    if data.validation:
        val_read = read_data_file(data, data.validation, data.max_rows)
        stats["files"]["validation"] = val_read.as_dict()
        stats["validation"] = {"source": data.validation}
        train_samples, val_samples = train_read.samples, val_read.samples
    else:
        train_samples, val_samples = split_train_validation(train_read.samples, data.val_fraction, cfg.train.seed)
        stats["validation"] = {"source": f"{data.val_fraction:.0%} of {data.train} (seed {cfg.train.seed})"}
    train_samples, train_encoded = _encode_split(train_samples, encode, stats["train"])
    _, val_encoded = _encode_split(val_samples, encode, stats["validation"])
    if not train_encoded:
        raise DataError(data.train, f"no trainable rows: every answer is cut away by truncation to max_length="
                                    f"{data.max_length} ({len(stats['train']['answer_cut_rows'])} rows); raise data.max_length")
    augment = None
    if cfg.augment.enabled:
        from medtune.data.augment import Augmenter

        augment = Augmenter.from_config(cfg.augment, cfg.train.seed).apply
    return PreparedData(TrainingSet(train_samples, train_encoded, encode, augment), val_encoded, stats)
