"""Foreign configs mapped onto medtune's keys: a SwanLab 0.4 run (SQLite dashboard + JSON-lines logs, built here as
SwanLab 0.4 lays them out) whose config holds PEFT's `LoraConfig(...)` repr and `num_train_epochs`, the same for
SwanLab 0.10, trainer_state.json and TensorBoard; and the safe parsing of the repr itself."""

from __future__ import annotations

import json
import runpy
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from medtune.report.inputs import Note, Run, flatten
from medtune.report.sources import load_runs
from medtune.report.sources.python_repr import parse_repr

STEPS_PER_EPOCH = 136
EPOCHS = 3
LOGGED_STEPS = range(8, 2 * STEPS_PER_EPOCH + 1, 8)  # 17 logs per epoch; the run stops after 2 of its 3 epochs
TARGETS = "{'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'}"
PEFT_013_REPR = runpy.run_path(str(Path(__file__).parent / "fixtures" / "make_swanlab04.py"))["PEFT_013_REPR"]
"""str(LoraConfig) of PEFT 0.13 (SwanLab 0.4's time), as SwanLab stores what JSON cannot hold; DROPOUT and MODULES
stand for each version's values."""
PEFT_021_REPR = (  # PEFT 0.21
    "LoraConfig(task_type='CAUSAL_LM', peft_type=<PeftType.LORA: 'LORA'>, auto_mapping=None, peft_version='0.21.2', "
    "base_model_name_or_path=None, revision=None, inference_mode=False, r=64, target_modules=" + TARGETS + ", "
    "exclude_modules=None, lora_alpha=16, lora_dropout=DROPOUT, fan_in_fan_out=False, bias='none', use_rslora=False, "
    "modules_to_save=MODULES, init_lora_weights=True, layers_to_transform=None, layers_pattern=None, rank_pattern={}, "
    "alpha_pattern={}, megatron_config=None, megatron_core='megatron.core', trainable_token_indices=None, "
    "loftq_config={}, eva_config=None, corda_config=None, use_dora=False, alora_invocation_tokens=None, "
    "layer_replication=None, runtime_config=LoraRuntimeConfig(ephemeral_gpu_offload=False), lora_bias=False, "
    "target_parameters=None, ensure_weight_tying=False)"
)
VERSIONS = {"v1-seed1": {"dropout": 0.05, "modules": None}, "v2-seed1": {"dropout": 0.1, "modules": "['lm_head']"}}
ALL_PROJECTIONS = sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def trainer_config(run_name: str, lora_repr: str = PEFT_013_REPR) -> dict[str, Any]:
    """What HF's SwanLab callback hands SwanLab: the model's config, TrainingArguments, and {adapter: LoraConfig}."""
    spec = VERSIONS[run_name]
    model_config = {
        "_name_or_path": "Qwen/Qwen3-1.7B",
        "model_type": "qwen3",
        "hidden_size": 2048,
        "max_length": 20,
        "quantization_config": {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "load_in_8bit": False,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": "bfloat16",
        },
    }
    training_args = {
        "output_dir": f"./output/{run_name}",
        "run_name": run_name,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "warmup_steps": 0,
        "max_steps": -1,
        "num_train_epochs": EPOCHS,
        "max_grad_norm": 0.3,
        "bf16": True,
        "fp16": False,
        "optim": "paged_adamw_8bit",
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4,
        "seed": 42,
        "logging_steps": 8,
        "report_to": ["swanlab"],
        "FRAMEWORK": "🤗transformers",
    }
    peft = {"default": lora_repr.replace("DROPOUT", str(spec["dropout"])).replace("MODULES", str(spec["modules"]))}
    return {"peft_config": peft, **model_config, **training_args}


def logged_series() -> dict[str, dict[int, float]]:
    """HF Trainer's tags: the epoch counter reaches 1.0 at step 136."""
    return {
        "train/loss": {step: 2.0 - step / 400 for step in LOGGED_STEPS},
        "train/epoch": {step: round(step / STEPS_PER_EPOCH, 4) for step in LOGGED_STEPS},
    }


def write_swanlab04(swanlog: Path, configs: dict[str, dict[str, Any]]) -> sqlite3.Connection:
    """SwanLab 0.4's local layout: the dashboard's `runs.swanlab` (experiment and tag tables, in WAL mode) names each
    metric's folder; `run-*/logs/<folder>/1000.log` hold JSON lines; `run-*/files/config.yaml` the config as
    {key: {desc, sort, value}}. Returns the writer's connection, still open: its changes are only in the -wal file."""
    swanlog.mkdir(parents=True)
    database = sqlite3.connect(swanlog / "runs.swanlab")
    database.execute("PRAGMA journal_mode=WAL")
    database.execute("PRAGMA wal_autocheckpoint=0")  # keep the rows in runs.swanlab-wal, as a running dashboard does
    database.execute(
        "CREATE TABLE experiment (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, run_id TEXT NOT NULL, "
        "name VARCHAR(100) NOT NULL, status INTEGER NOT NULL)"
    )
    database.execute(
        "CREATE TABLE tag (id INTEGER PRIMARY KEY, experiment_id INTEGER NOT NULL, name VARCHAR(255) NOT NULL, "
        "folder VARCHAR(255), type VARCHAR(10) NOT NULL)"
    )
    for number, (run_name, config) in enumerate(configs.items(), start=1):
        run_dir = swanlog / f"run-20250101_00000{number}-abcdef0{number}"
        database.execute("INSERT INTO experiment VALUES (?, 1, ?, ?, 1)", (number, run_dir.name, run_name))
        for folder, (tag, values) in enumerate(logged_series().items()):
            database.execute(
                "INSERT INTO tag (experiment_id, name, folder, type) VALUES (?, ?, ?, 'default')",
                (number, tag, str(folder)),
            )
            (run_dir / "logs" / str(folder)).mkdir(parents=True)
            lines = [
                json.dumps({"index": step, "data": value, "create_time": "2025-01-01T00:00:00+00:00"})
                for step, value in values.items()
            ]
            (run_dir / "logs" / str(folder) / "1000.log").write_text("\n".join(lines) + "\n")
        (run_dir / "files").mkdir()
        entries = {key: {"desc": "", "sort": sort, "value": value} for sort, (key, value) in enumerate(config.items())}
        (run_dir / "files" / "config.yaml").write_text(yaml.safe_dump(entries, allow_unicode=True))
    database.commit()
    return database


def differing_keys(first: Run, second: Run) -> dict[str, tuple[Any, Any]]:
    """What the versions table shows: dotted keys whose values differ (run names and output folders aside)."""
    a, b = flatten(first.config), flatten(second.config)
    return {
        key: (a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and key not in ("run_name", "output_dir")
    }


def assert_mapped(run: Run, dropout: float, modules_to_save: list[str]) -> None:
    expected = {
        "lora.r": 64,
        "lora.alpha": 16,
        "lora.dropout": dropout,
        "lora.modules_to_save": modules_to_save,
        "lora.target_modules": ALL_PROJECTIONS,
        "train.lr": 2e-4,
        "train.schedule": "cosine",
        "train.warmup_ratio": 0.1,
        "train.epochs": EPOCHS,
        "train.max_grad_norm": 0.3,
        "train.optimizer": "paged_adamw_8bit",
        "train.betas": [0.9, 0.999],
        "speed.mixed_precision": "bf16",
        "quant.mode": "nf4",
        "quant.compute_dtype": "bf16",
        "quant.double_quant": True,
        "model.name_or_path": "Qwen/Qwen3-1.7B",
    }
    assert {key: run.setting(key) for key in expected} == expected
    assert (
        run.setting("train.max_steps") is None and run.setting("data.max_length") is None
    )  # a model config's max_length is generation's
    assert run.max_steps() == EPOCHS * STEPS_PER_EPOCH == 408
    assert (
        Note(
            "planned_from_epochs",
            {
                "planned": 408,
                "epochs": EPOCHS,
                "steps_per_epoch": STEPS_PER_EPOCH,
                "epoch": 2,
                "step": 2 * STEPS_PER_EPOCH,
            },
        )
        in run.notes
    )


@pytest.mark.parametrize("lora_repr", [PEFT_013_REPR, PEFT_021_REPR], ids=["peft-0.13", "peft-0.21"])
def test_swanlab_04_run_with_a_lora_config_repr_and_epochs(tmp_path, lora_repr):
    configs = {name: trainer_config(name, lora_repr) for name in VERSIONS}
    writer = write_swanlab04(tmp_path / "swanlog", configs)
    try:
        assert (tmp_path / "swanlog" / "runs.swanlab-wal").stat().st_size > 0
        v1, v2 = sorted(load_runs(tmp_path / "swanlog"), key=lambda run: run.name)
    finally:
        writer.close()
    assert (v1.name, v2.name) == ("v1-seed1", "v2-seed1") and v1.source.kind == "swanlab_local_log"
    assert_mapped(v1, 0.05, [])
    assert_mapped(v2, 0.1, ["lm_head"])
    assert differing_keys(v1, v2) == {"lora.dropout": (0.05, 0.1), "lora.modules_to_save": ([], ["lm_head"])}
    assert v1.setting("hf.peft.use_dora") is False and v1.setting("hf.peft.runtime_config") == {
        "ephemeral_gpu_offload": False
    }
    assert (
        v2.imported_config["swanlab_config"]["peft_config"]["default"] == configs["v2-seed1"]["peft_config"]["default"]
    )
    assert not [note for note in v1.notes if "file" in note.fields]  # everything in the repr was read


def test_unreadable_parts_of_a_repr_are_named_and_kept(tmp_path):
    config = trainer_config("v1-seed1")
    config["peft_config"]["default"] = config["peft_config"]["default"].replace(
        "init_lora_weights=True", "init_lora_weights=<function gaussian at 0x7f3a>"
    )
    config["lr_scheduler_type"] = "polynomial"
    writer = write_swanlab04(tmp_path / "swanlog", {"v1-seed1": config})
    writer.close()
    (run,) = load_runs(tmp_path / "swanlog")
    (config_path,) = (tmp_path / "swanlog").glob("run-*/files/config.yaml")
    assert (
        Note(
            "repr_not_literal",
            {"file": str(config_path), "key": "peft_config", "text": "<function gaussian at 0x7f3a>"},
        )
        in run.notes
    )
    assert run.setting("hf.peft.init_lora_weights") == "<function gaussian at 0x7f3a>"
    assert run.setting("lora.dropout") == 0.05  # the rest of the repr still maps
    assert (
        Note("schedule_unknown", {"file": str(config_path), "key": "lr_scheduler_type", "value": "polynomial"})
        in run.notes
    )
    assert run.setting("train.schedule") == "polynomial"


def test_a_repr_that_is_not_python_is_kept_as_text_with_a_note(tmp_path):
    config = trainer_config("v1-seed1")
    config["peft_config"] = "LoraConfig(r=64, lora_alpha=16,"  # cut short
    writer = write_swanlab04(tmp_path / "swanlog", {"v1-seed1": config})
    writer.close()
    (run,) = load_runs(tmp_path / "swanlog")
    assert run.setting("hf.peft_config") == "LoraConfig(r=64, lora_alpha=16,"
    assert run.setting("lora.r") is None
    (config_path,) = (tmp_path / "swanlog").glob("run-*/files/config.yaml")
    assert (
        Note(
            "repr_syntax",
            {
                "file": str(config_path),
                "key": "peft_config",
                "error": "'(' was never closed",
                "column": 11,
                "kept_under": "hf.peft_config",
            },
        )
        in run.notes
    ), run.notes


def test_parse_repr_never_evaluates():
    value, unreadable = parse_repr(
        "LoraConfig(r=__import__('os').getpid(), target_modules={'v', 'q'}, bias=<Bias.NONE: 'none'>, "
        "note='<kept as written>', init=<function gaussian at 0x7f3a>)"
    )
    assert value == {
        "r": "__import__('os').getpid()",
        "target_modules": ["q", "v"],
        "bias": "none",
        "note": "<kept as written>",
        "init": "<function gaussian at 0x7f3a>",
    }
    assert unreadable == ["__import__('os').getpid()", "<function gaussian at 0x7f3a>"]


def test_swanlab_010_offline_run_with_a_lora_config_object(tmp_path):
    swanlab = pytest.importorskip("swanlab")

    class LoraConfig:  # what HF's callback passes: an object whose str() is PEFT's repr
        def __repr__(self) -> str:
            return PEFT_021_REPR.replace("DROPOUT", "0.1").replace("MODULES", "['lm_head']")

    config = trainer_config("v2-seed1")
    config["peft_config"] = {"default": LoraConfig()}
    swanlab.init(
        mode="offline", log_dir=str(tmp_path / "swanlog"), project="medtune-test", name="v2-seed1", config=config
    )
    series = logged_series()
    for step in LOGGED_STEPS:
        swanlab.log({tag: values[step] for tag, values in series.items()}, step=step)
    swanlab.finish()
    (run,) = load_runs(tmp_path / "swanlog")
    assert run.source.kind == "swanlab_run_file"
    assert_mapped(run, 0.1, ["lm_head"])


def test_trainer_state_with_training_args_model_and_adapter_config(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-272"
    checkpoint.mkdir(parents=True)
    merged = trainer_config("v2-seed1")
    model_keys = ("_name_or_path", "model_type", "hidden_size", "max_length", "quantization_config")
    (checkpoint / "config.json").write_text(json.dumps({key: merged[key] for key in model_keys}))
    training_args = {key: value for key, value in merged.items() if key not in model_keys and key != "peft_config"}
    (checkpoint / "training_args.json").write_text(json.dumps(training_args))
    adapter = {
        "peft_type": "LORA",
        "r": 64,
        "lora_alpha": 16,
        "lora_dropout": 0.1,
        "modules_to_save": ["lm_head"],
        "target_modules": ["v_proj", "q_proj", "k_proj", "o_proj", "up_proj", "gate_proj", "down_proj"],
        "use_dora": False,
    }
    (checkpoint / "adapter_config.json").write_text(json.dumps(adapter))
    series = logged_series()
    history = [
        {"step": step, "loss": series["train/loss"][step], "epoch": series["train/epoch"][step]}
        for step in LOGGED_STEPS
    ]
    state = {"log_history": history, "max_steps": 408, "num_train_epochs": EPOCHS}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (run,) = load_runs(tmp_path / "out")
    assert run.name == "v2-seed1"
    assert run.max_steps() == run.counted_steps() == 408  # the Trainer's own count
    assert not [note for note in run.notes if note.code == "planned_from_epochs"]
    del state["max_steps"]  # a trainer_state without it: the epoch counter decides
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (run,) = load_runs(tmp_path / "out")
    assert_mapped(run, 0.1, ["lm_head"])
    assert run.setting("hf.peft.use_dora") is False and run.setting("hf.hidden_size") == 2048
    assert run.imported_config["adapter_config"] == adapter and run.imported_config["training_args"] == training_args


def test_tensorboard_args_and_model_config_text_summaries(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    merged = trainer_config("v1-seed1")
    model_keys = ("_name_or_path", "model_type", "hidden_size", "max_length", "quantization_config")
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    # HF's TensorBoardCallback writes both as JSON text summaries
    writer.add_text(
        "args",
        json.dumps({key: value for key, value in merged.items() if key not in model_keys and key != "peft_config"}),
    )
    writer.add_text("model_config", json.dumps({key: merged[key] for key in model_keys}))
    for tag, values in logged_series().items():
        for step, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    (run,) = load_runs(tmp_path / "tb")
    assert run.setting("quant.mode") == "nf4" and run.setting("train.schedule") == "cosine"
    assert run.setting("lora.r") is None  # TensorBoard keeps no adapter config
    assert run.max_steps() == 408
    assert set(run.imported_config) == {"args", "model_config"}


def test_epochs_without_an_epoch_counter_are_noted(tmp_path):
    state = {"log_history": [{"step": step, "loss": 1.0} for step in (10, 20)]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "training_args.json").write_text(
        json.dumps(
            {
                "learning_rate": 1e-4,
                "lr_scheduler_type": "constant",
                "num_train_epochs": 2,
                "max_steps": -1,
                "warmup_steps": 5,
            }
        )
    )
    (run,) = load_runs(tmp_path / "trainer_state.json")
    assert run.max_steps() is None
    assert Note("planned_unknown", {"epochs": 2}) in run.notes
    # HF's `constant` never warms up, whatever warmup_steps says
    assert (run.setting("train.schedule"), run.setting("train.warmup_steps"), run.setting("train.warmup_ratio")) == (
        "constant",
        None,
        0.0,
    )
    assert Note("constant_ignores_warmup", {"file": str(tmp_path), "key": "lr_scheduler_type"}) in run.notes
