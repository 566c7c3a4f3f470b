"""Without --verbose a user sees medtune's own lines: no library warnings, no "progress.py:47" log paths."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import CONFIGS

NOISE = ("FutureWarning", "UserWarning", "DeprecationWarning", "warnings.warn", "kernels-community", "progress.py:")


def test_quiet_libraries_hides_other_packages_but_not_medtune():
    code = (
        "import logging, warnings\n"
        "from medtune.cli.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        "warnings.warn('deprecated', FutureWarning)\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('Failed to load CPU gemm_4bit_forward')\n"
        "logging.getLogger('medtune.model.load').warning('medtune speaking')\n"
        "from transformers.utils import logging as hf\n"
        "hf.get_logger('transformers.modeling_utils').warning('transformers speaking')\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRANSFORMERS_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "medtune speaking"


def test_a_training_run_prints_only_medtune_lines(tmp_path, short_rows_file):
    """A real run of one step (the tiny model, 4-bit on CPU): where bitsandbytes and transformers speak up."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MEDTUNE_VERBOSE", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medtune.cli",
            "train",
            str(CONFIGS / "v1.yaml"),
            "--overlay",
            str(CONFIGS / "tiny.yaml"),
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            f"data.train={short_rows_file}",
            "--set",
            "data.max_length=400",
            "--set",
            "train.max_steps=1",
            "--set",
            "train.eval_steps=1",
            "--set",
            "train.logging_steps=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_loss" in done.stderr, "medtune's own log lines still show"
    noisy = [line for line in done.stderr.splitlines() if any(word in line for word in NOISE)]
    assert not noisy, noisy
