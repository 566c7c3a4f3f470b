"""Trackers behind report_to: what they log, that each run reads back, and the message when a package is missing.

SwanLab runs offline (no API key) and is read back with medtune's own SwanLab importer; TensorBoard is
read back with tensorboard's EventAccumulator. Nothing here reaches the network.
"""

from __future__ import annotations

import json
import sys
import time
import types

import pytest

from medtune.config import RunConfig, TrainConfig
from medtune.train.trackers import TRACKER_PACKAGES, TrackerError, build_trackers, scalar_metrics, swanlab_mode

TRAIN_1 = {
    "step": 1,
    "epoch": 0.5,
    "loss": 2.5,
    "loss_think": 2.4,
    "loss_answer": None,
    "grad_norm": 1.25,
    "grad_norm_max": 1.5,
    "learning_rate": 2e-4,
    "tokens_seen": 800,
    "tokens_per_s": 100.5,
    "peak_memory_gib": 0.0,
    "elapsed_s": 8.0,
}
TRAIN_2 = {**TRAIN_1, "step": 2, "epoch": 1.0, "loss": 2.25, "loss_answer": 2.0, "tokens_seen": 1600, "elapsed_s": 16.0}
EVAL_2 = {
    "step": 2,
    "epoch": 1.0,
    "eval_loss": 2.375,
    "eval_loss_think": 2.25,
    "eval_loss_answer": 2.5,
    "eval_tokens": 300,
}
AUGMENT_2 = {
    "step": 2,
    "epoch": 1.0,
    "augment": {
        "epoch": 0,
        "samples": 8,
        "masked_samples": 1,
        "masked_share": 0.125,
        "terms_masked": 2,
        "terms_by_category": {"症状": 2},
    },
}
RECORDS = [TRAIN_1, TRAIN_2, EVAL_2, AUGMENT_2]


def config(tmp_path, *report_to: str) -> RunConfig:
    return RunConfig(run_name="tracker-test", output_dir=str(tmp_path), train=TrainConfig(report_to=list(report_to)))


def log_all(trackers, records) -> None:
    for record in records:
        for tracker in trackers:
            tracker.log(record)
    for tracker in trackers:
        tracker.close()


def test_scalar_metrics_flattens_nested_records_and_leaves_out_none_step_and_text():
    record = {**AUGMENT_2, "note": "text", "flag": True, "missing": None}
    assert scalar_metrics(record) == {
        "epoch": 1.0,
        "augment/epoch": 0,
        "augment/samples": 8,
        "augment/masked_samples": 1,
        "augment/masked_share": 0.125,
        "augment/terms_masked": 2,
        "augment/terms_by_category/症状": 2,
    }
    assert "loss_answer" not in scalar_metrics(TRAIN_1)


@pytest.mark.parametrize("tracker", sorted(TRACKER_PACKAGES))
def test_missing_package_names_the_extra_and_nothing_starts(tmp_path, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, TRACKER_PACKAGES[tracker], None)  # makes the import fail
    others = [name for name in ("tensorboard",) if name != tracker]
    with pytest.raises(
        TrackerError, match=rf"report_to: {tracker} needs the {tracker} package: pip install 'medtune\[{tracker}\]'"
    ):
        build_trackers(config(tmp_path, *others, tracker), tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, "tensorboard")
    log_all(build_trackers(cfg, tmp_path), RECORDS)

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    logged = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in RECORDS:
        for key, value in scalar_metrics(record).items():
            expected.setdefault(key, []).append((record["step"], pytest.approx(value, rel=1e-6)))
    assert logged == expected
    assert sorted(logged) == sorted(
        [
            "epoch",
            "loss",
            "loss_think",
            "loss_answer",
            "grad_norm",
            "grad_norm_max",
            "learning_rate",
            "tokens_seen",
            "tokens_per_s",
            "peak_memory_gib",
            "elapsed_s",
            "eval_loss",
            "eval_loss_think",
            "eval_loss_answer",
            "eval_tokens",
            "augment/epoch",
            "augment/samples",
            "augment/masked_samples",
            "augment/masked_share",
            "augment/terms_masked",
            "augment/terms_by_category/症状",
        ]
    )
    assert logged["loss_answer"] == [(2, 2.0)]  # None at step 1 is left out, not logged as 0
    assert logged["augment/terms_by_category/症状"] == [(2, 2.0)]
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode("utf-8")
    assert json.loads(config_text) == cfg.model_dump(mode="json")


def test_tensorboard_resume_hides_what_the_interrupted_run_logged_past_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tmp_path, "tensorboard")
    log_all(build_trackers(cfg, tmp_path), [{"step": step, "loss": float(step)} for step in (1, 2, 3, 4)])
    log_all(build_trackers(cfg, tmp_path, resume_step=2), [{"step": step, "loss": 10.0 * step} for step in (3, 4)])

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_swanlab_mode_is_offline_without_an_api_key_and_follows_an_explicit_mode():
    assert swanlab_mode(types.SimpleNamespace(model_fields_set=set(), api_key=None, mode="online")) == "offline"
    assert swanlab_mode(types.SimpleNamespace(model_fields_set={"api_key"}, api_key="key", mode="online")) == "online"
    assert swanlab_mode(types.SimpleNamespace(model_fields_set={"mode"}, api_key="key", mode="disabled")) == "disabled"


@pytest.fixture
def no_tracker_login(tmp_path, monkeypatch):
    """No API key anywhere: no key in the environment, SwanLab's settings folder empty, no project files in cwd."""
    for name in (
        "SWANLAB_API_KEY",
        "SWANLAB_MODE",
        "SWANLAB_PROJECT_NAME",
        "WANDB_API_KEY",
        "WANDB_MODE",
        "WANDB_PROJECT",
    ):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    for name in ("SWANLAB_ROOT", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def test_swanlab_offline_round_trip_through_medtunes_importer(tmp_path, no_tracker_login):
    pytest.importorskip("swanlab", reason="swanlab is not installed (pip install 'medtune[swanlab]')")
    from medtune.report.sources import load_runs

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = config(tmp_path, "swanlab")
    log_all(build_trackers(cfg, run_dir), RECORDS)

    assert list((run_dir / "swanlog").glob("run-*/run-*.swanlab")), "expected an offline SwanLab run file"
    (run,) = load_runs(run_dir / "swanlog")
    assert run.name == "tracker-test"
    assert run.config == cfg.model_dump(mode="json")
    imported = {(r["step"], any(key.startswith("eval_") for key in r)): r for r in run.records}
    assert sorted(imported) == [(1, False), (2, False), (2, True)]
    for record in (TRAIN_1, TRAIN_2):
        got = imported[record["step"], False]
        assert {key: got.get(key) for key in scalar_metrics(record)} == pytest.approx(scalar_metrics(record), rel=1e-12)
    # the importer files `epoch` with the train record of the same step, so the eval record is compared without it
    eval_metrics = {key: value for key, value in scalar_metrics(EVAL_2).items() if key != "epoch"}
    assert {key: imported[2, True].get(key) for key in eval_metrics} == pytest.approx(eval_metrics, rel=1e-12)
    # other sections come back under the importer's names for them: `augment/masked_share` -> `augment_masked_share`
    assert imported[2, False]["augment_masked_share"] == pytest.approx(0.125)
    assert imported[2, False]["augment_terms_by_category_症状"] == pytest.approx(2)


def test_wandb_writes_an_offline_run_without_an_api_key(tmp_path, no_tracker_login):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'medtune[wandb]')")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log_all(build_trackers(config(tmp_path, "wandb"), run_dir), RECORDS)

    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb 0.31 has no Python reader for its run files; its protobuf records keep key names as plain bytes. Its
    # service process writes the file, and may close it just after finish() returns (seen once in a loaded suite:
    # only the 7-byte header yet), so the test waits for the records, up to a minute.
    keys = [
        key.encode("utf-8") for key in ("loss", "eval_loss", "augment/masked_share", "augment/terms_by_category/症状")
    ]
    keys.append(b"tracker-test")
    deadline = time.monotonic() + 60
    while not all(key in run_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    content = run_file.read_bytes()
    for key in keys:
        assert key in content, key


def test_trackers_get_the_config_as_written_which_config_resolved_yaml_records(tmp_path, short_rows_file):
    """The memory plan trains with its levers (on a CPU: offload_activations auto -> false), recorded in env.json;
    the trackers got that config, so a SwanLab or TensorBoard run disagreed with config.resolved.yaml, and `compare`
    on a swanlog showed settings nobody wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tests.conftest import tiny_config

    from medtune.train.recipe import FineTuneRecipe

    cfg = tiny_config("v1", tmp_path, short_rows_file, "train.report_to=[tensorboard]")
    recipe = FineTuneRecipe(cfg)
    recipe.cfg = cfg.model_copy(deep=True)
    recipe.cfg.speed.checkpoint_fraction = 1.0  # as a memory plan sets it
    recipe.run_dir.mkdir(parents=True)
    recipe._setup_logging()
    recipe.cleanup()
    events = EventAccumulator(str(recipe.run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    logged = json.loads(events.Tensors("config/text_summary")[0].tensor_proto.string_val[0])
    assert logged == cfg.model_dump(mode="json")
