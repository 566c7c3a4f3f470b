"""`medtune check --gpu-memory SIZE`: the predicted peak on a GPU of that size, the levers planned, and whether it fits,
from config.json and the data's token lengths alone (the 8B folder here holds no weights)."""

from __future__ import annotations

import json
import re
import shutil

from tests.conftest import CONFIGS
from typer.testing import CliRunner

from medtune.cli import app
from medtune.model.qwen3_sizes import qwen3_config
from medtune.model.tiny import shipped_tokenizer_dir

runner = CliRunner()


def check(tmp_path, model: str, gpu_memory: str, *extra: str):
    result = runner.invoke(
        app,
        [
            "check",
            str(CONFIGS / "v1.yaml"),
            "--set",
            f"model.name_or_path={model}",
            "--set",
            f"output_dir={tmp_path / 'runs'}",
            "--gpu-memory",
            gpu_memory,
            *extra,
        ],
    )
    table = re.sub(r"[│┃|]", " ", result.output)
    return result, " ".join(table.split())  # the table wraps long findings: compare words


def qwen3_folder(tmp_path, size: str = "8b"):
    """A config.json of a Qwen3 size next to the tokenizer: no weights at all."""
    folder = tmp_path / f"qwen3-{size}-config-only"
    shutil.copytree(shipped_tokenizer_dir(), folder)
    (folder / "config.json").write_text(json.dumps(qwen3_config(size)))
    assert not any(path.suffix in (".safetensors", ".bin") for path in folder.iterdir())
    return folder


def test_the_tiny_model_fits_a_small_gpu_as_configured(tmp_path):
    result, text = check(tmp_path, "tiny", "8GiB")
    assert result.exit_code == 0, result.output
    assert "memory plan: a GPU of 8GiB, less the CUDA context (0.6 GiB) and a 5% margin: 7.0 GiB" in text
    assert "fits" in text and "levers as configured" in text


def test_an_8b_model_fits_24gib_with_levers_and_not_4gib(tmp_path):
    folder = qwen3_folder(tmp_path)
    result, text = check(tmp_path, str(folder), "24GiB")
    assert result.exit_code == 0, result.output
    assert re.search(r"predicted peak \d+\.\d GiB allocated, \d+\.\d GiB reserved: fits", text), text
    assert "allocator = expandable_segments:True" in text and "speed.checkpoint_fraction = " in text
    result, text = check(tmp_path, str(folder), "4GiB")
    assert result.exit_code == 1
    assert (
        "training cannot fit a GPU of 4GiB" in text
        and "Biggest terms: base weights (4-bit NF4 with absmax) 3.3 GiB" in text
    )


def test_a_bad_size_is_a_command_line_error(tmp_path):
    result, text = check(tmp_path, "tiny", "24")
    assert result.exit_code == 2 and "expected a size such as 20GiB" in text


def test_32b_under_fsdp_fits_two_24gib_gpus_and_not_one(tmp_path):
    folder = qwen3_folder(tmp_path, "32b")
    fsdp = ("--set", "train.parallelism=fsdp")
    result, text = check(tmp_path, str(folder), "24GiB", *fsdp, "--processes", "2")
    assert result.exit_code == 0, result.output
    assert re.search(
        r"predicted peak per process \(fsdp, 2 processes\) \d+\.\d GiB allocated, [\d.]+ GiB reserved: fits", text
    )
    assert "tokens in each of 2 processes" in text and "optimizer adamw" in text
    result, text = check(tmp_path, str(folder), "24GiB", *fsdp)
    assert result.exit_code == 1
    found = re.search(
        r"training cannot fit a GPU of 24GiB.*?: the predicted peak with the levers .*? is ([\d.]+) GiB "
        r"allocated, ([\d.]+) GiB reserved\. Biggest terms: base weights \(4-bit NF4 with absmax\) "
        r"(\d+\.\d) GiB",
        text,
    )
    assert found, text
    allocated, reserved, weights = map(float, found.groups())
    assert 22.2 < reserved and allocated < reserved and weights == 15.0  # 31.2B weights at 0.516 bytes each


def test_more_processes_than_samples_per_step_is_an_error(tmp_path):
    result, text = check(tmp_path, "tiny", "8GiB", "--processes", "32")
    assert result.exit_code == 1
    assert "16 samples per optimizer step, fewer than the 32 processes" in text
