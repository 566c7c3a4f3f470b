"""Which rows of a run train and which validate: read by training (`data.prepare`) and by `medtune eval` alike,
so that eval's default rows are exactly the rows training held out, never rows the model trained on."""

from __future__ import annotations

import random
from dataclasses import dataclass

from medtune.config import DataConfig
from medtune.data.formats import ReadResult, Sample, read_samples, resolve_data_path


def read_data_file(data: DataConfig, spec: str, max_rows: int | None) -> ReadResult:
    """One data file read with the run's `data` settings (format, columns, encoding, think, tags, bad rows)."""
    return read_samples(
        resolve_data_path(spec),
        format=data.format,
        system_prompt=data.system_prompt,
        skip_bad_rows=data.skip_bad_rows,
        max_rows=max_rows,
        columns=data.columns,
        encoding=data.encoding,
        think=data.think,
        literal_tags=data.literal_tags,
    )


def split_train_validation(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out a seeded random `val_fraction` of the samples; both splits keep the file order.

    At least one sample goes to validation (when `val_fraction` > 0 and there are two or more) and at
    least one stays for training, so a small file still gets an eval loss.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or len(samples) < 2:
        return list(samples), []
    val_count = min(len(samples) - 1, max(1, round(len(samples) * val_fraction)))
    val_indices = set(random.Random(seed).sample(range(len(samples)), val_count))
    train = [sample for index, sample in enumerate(samples) if index not in val_indices]
    validation = [sample for index, sample in enumerate(samples) if index in val_indices]
    return train, validation


@dataclass
class Split:
    """A run's training and validation rows, and the file reads they came from."""

    train: list[Sample]
    validation: list[Sample]
    validation_source: str
    """Where the validation rows come from, in words: the validation file, or the share of the training file."""
    train_file: ReadResult
    validation_file: ReadResult | None
    """The validation file's read; None when the validation rows are held out of the training file."""

    def files(self) -> dict[str, ReadResult]:
        """Each file read, by its role (`train`, `validation`)."""
        return {"train": self.train_file, **({"validation": self.validation_file} if self.validation_file else {})}


def split_rows(data: DataConfig, seed: int) -> Split:
    """The run's rows: `data.validation` validates when set, else a seeded `data.val_fraction` of `data.train`
    (seeded by `train.seed`); each file read with the run's settings, `data.max_rows` included."""
    train_file = read_data_file(data, data.train, data.max_rows)
    if data.validation:
        validation_file = read_data_file(data, data.validation, data.max_rows)
        return Split(train_file.samples, validation_file.samples, data.validation, train_file, validation_file)
    train, validation = split_train_validation(train_file.samples, data.val_fraction, seed)
    return Split(train, validation, f"{data.val_fraction:.0%} of {data.train} (seed {seed})", train_file, None)
