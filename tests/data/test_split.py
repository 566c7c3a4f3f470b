"""The split of a run's rows into training and validation rows: seeded, disjoint, in file order, and read with
the run's data settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.config import DataConfig
from medtune.data.formats import Sample, read_samples, resolve_data_path
from medtune.data.split import split_rows, split_train_validation

SHIPPED = "medtune:delicate_medical_r1_val"
SYSTEM = "你是一个医学专家。"


def _samples(count: int) -> list[Sample]:
    return [Sample(question=f"q{index}", think="t", answer="a", source=f"f:{index + 1}") for index in range(count)]


def test_split_is_deterministic_disjoint_and_keeps_order():
    samples = read_samples(resolve_data_path(SHIPPED), system_prompt=SYSTEM).samples

    train, validation = split_train_validation(samples, 0.1, seed=42)
    again = split_train_validation(samples, 0.1, seed=42)
    other_seed = split_train_validation(samples, 0.1, seed=7)

    assert (train, validation) == again
    assert validation != other_seed[1]
    assert len(validation) == round(len(samples) * 0.1)
    train_sources, val_sources = [s.source for s in train], [s.source for s in validation]
    assert not set(train_sources) & set(val_sources)
    assert sorted(train_sources + val_sources) == sorted(s.source for s in samples)
    position = {sample.source: index for index, sample in enumerate(samples)}
    for split in (train_sources, val_sources):
        assert [position[source] for source in split] == sorted(position[source] for source in split)


@pytest.mark.parametrize(("count", "fraction", "val_count"), [(2, 0.01, 1), (5, 0.99, 4), (1, 0.5, 0), (10, 0.0, 0)])
def test_split_sizes_at_the_edges(count, fraction, val_count):
    train, validation = split_train_validation(_samples(count), fraction, seed=0)

    assert len(validation) == val_count and len(train) == count - val_count


def test_split_rejects_a_fraction_outside_zero_to_one():
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_validation(_samples(4), 1.0, seed=0)


def _write_rows(path: Path, count: int, first: int = 0) -> Path:
    rows = [{"question": f"问{index}", "think": "想", "answer": f"答{index}"} for index in range(first, first + count)]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_split_rows_holds_out_a_seeded_share_of_the_first_max_rows(tmp_path):
    train = _write_rows(tmp_path / "train.jsonl", 30)
    data = DataConfig(train=str(train), val_fraction=0.2, max_rows=20)

    split = split_rows(data, seed=3)

    assert (len(split.train), len(split.validation)) == (16, 4) and split.validation_file is None
    assert split.validation == split_train_validation(split.train_file.samples, 0.2, seed=3)[1]
    assert split.validation_source == f"20% of {train} (seed 3)" and list(split.files()) == ["train"]


def test_split_rows_validates_on_the_validation_file_when_there_is_one(tmp_path):
    train, validation = _write_rows(tmp_path / "train.jsonl", 10), _write_rows(tmp_path / "val.jsonl", 3, first=100)

    split = split_rows(DataConfig(train=str(train), validation=str(validation)), seed=3)

    assert [s.question for s in split.train] == [f"问{i}" for i in range(10)]
    assert [s.question for s in split.validation] == ["问100", "问101", "问102"]
    assert split.validation_source == str(validation) and list(split.files()) == ["train", "validation"]
