"""End-to-end training on the tiny Qwen3 through the real 4-bit NF4 + LoRA path on CPU."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tests.conftest import tiny_config

from medtune.data.batching import micro_batches
from medtune.model.load import load_base_model, load_tokenizer
from medtune.run_folder import LEGACY_STATE_FILE, RunFolder
from medtune.train.checkpoint import CheckpointError
from medtune.train.interrupt import TrainingInterrupted
from medtune.train.recipe import FineTuneRecipe, RunExistsError, Window, run

TIMING_KEYS = {"tokens_per_s", "elapsed_s", "peak_memory_gib"}
ONE_VALIDATION_ROW = "data.val_fraction=0.01"
"""Of the 16 short rows, the one row a split always holds out: evals that prove a resume, not a loss, stay cheap."""


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_v2_tiny_run_folder_is_complete_and_only_lora_trains(tmp_path, short_rows_file):
    cfg = tiny_config("v2", tmp_path, short_rows_file, "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2")
    run_dir = run(cfg)
    for name in (
        "config.resolved.yaml",
        "env.json",
        "data_stats.json",
        "metrics.jsonl",
        "summary.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "checkpoints/step-000002/adapter_config.json",
        "checkpoints/step-000002/medtune_adapter.json",
    ):
        assert (run_dir / name).exists(), name
    umask = os.umask(0)
    os.umask(umask)
    for weights in ("adapter/adapter_model.safetensors", "checkpoints/step-000002/adapter_model.safetensors"):
        assert (run_dir / weights).stat().st_mode & 0o777 == 0o666 & ~umask, f"{weights}: as open() makes files"
    # only what resume needs: the end is adapter/ (no checkpoint of it), and a complete run keeps no optimizer state
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000002"]
    assert not any(
        p.name.startswith("training_state") or p.name == "tokenizer.json" for p in (run_dir / "checkpoints").rglob("*")
    )
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    assert train[-1]["loss"] < train[0]["loss"], "loss must fall"
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    for r in train:
        assert r["loss_think"] is not None and r["loss_answer"] is not None and r["grad_norm"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["status"] == "complete"
        and summary["random_weights"] is True
        and "random" in summary["random_weights_note"]
    )
    model = summary["model"]  # what the model is, apart from whether its weights are random
    assert model["name_or_path"] == "tiny" and model["architecture"] == "Qwen3ForCausalLM"
    assert (
        (Path(model["source"]) / "config.json").is_file()
        and 9e6 < model["parameters"] < 1.1e7
        and model["size"] == "9.8M parameters"
    )
    assert (
        summary["embeddings"]["trained_embeddings"] == ["embed_tokens", "lm_head"]
        and summary["embeddings"]["embeddings_tied"]
    )

    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero and must have trained"
    embed, head = adapter["base_model.model.model.embed_tokens.weight"], adapter["base_model.model.lm_head.weight"]
    assert torch.equal(embed, head), "tied embed_tokens/lm_head must be saved as one matrix"

    base = load_base_model(cfg.model, cfg.quant, torch.device("cpu")).model
    original_embed = base.get_input_embeddings().weight.detach().clone()
    model = PeftModel.from_pretrained(base, run_dir / "adapter")
    assert not torch.equal(original_embed, embed.to(original_embed.dtype)), (
        "the trained embedding differs from the base"
    )
    assert torch.equal(model.get_base_model().model.embed_tokens.original_module.weight, original_embed), (
        "base stays frozen"
    )


def test_loss_and_gradients_do_not_depend_on_the_accumulation_split(tmp_path, short_rows_file):
    """Token-weighted loss over the whole step: 4x1, 1x4, 2x2, packing into one row or into rows of one sample each
    give the same loss and grad norm. One recipe per packing mode (packing changes how the model is set up); the
    splits of a mode only change how train_step cuts the same 4 samples, each from the same LoRA weights."""
    results, passes = [], []
    for packing, splits in (
        (False, ((4, 1, None), (1, 4, None), (2, 2, None))),
        (True, ((2, 2, 16384), (2, 2, 640))),
    ):
        cfg = tiny_config(
            "v1",
            tmp_path / f"packing-{packing}",
            short_rows_file,
            "lora.dropout=0.0",
            "train.per_device_batch_size=2",
            "train.gradient_accumulation_steps=2",
            f"train.packing={packing}",
        )
        recipe = FineTuneRecipe(cfg)
        recipe.setup()
        initial = [param.detach().clone() for param in recipe.trainable_params]
        items = recipe._next_step_samples()
        for batch, accum, row_tokens in splits:
            train = recipe.cfg.train
            train.per_device_batch_size, train.gradient_accumulation_steps = batch, accum
            recipe.cfg.speed.packed_row_tokens = row_tokens
            recipe.window = Window()
            cut = micro_batches(items, batch, recipe.cfg.row_tokens(), packing, recipe.tokenizer.pad_token_id)
            passes.append(len(cut))
            grad_norm = recipe.train_step(items)
            results.append((recipe.window.loss / recipe.window.tokens, grad_norm))
            with torch.no_grad():  # undo the optimizer step: the next split starts where this one did
                for param, value in zip(recipe.trainable_params, initial, strict=True):
                    param.copy_(value)
        recipe.cleanup()
    assert passes == [1, 4, 2, 1, 4], "one packed row holds the step; rows of max_length hold one of these samples each"
    losses, norms = zip(*results)
    assert max(losses) - min(losses) < 1e-5 * losses[0]
    assert max(norms) - min(norms) < 1e-4 * norms[0]


def test_resume_after_interruption_gives_the_same_metrics(tmp_path, short_rows_file, monkeypatch, capsys):
    # one sample a step: resume restores the data position and the optimizer state whatever the batch is
    overrides = (
        "train.max_steps=4",
        "train.save_steps=2",
        "train.eval_steps=2",
        "train.gradient_accumulation_steps=1",
        ONE_VALIDATION_ROW,
    )
    full = run(tiny_config("v1", tmp_path / "full", short_rows_file, *overrides))

    cfg = tiny_config("v1", tmp_path / "cut", short_rows_file, *overrides)
    original_step = FineTuneRecipe.train_step
    calls = {"n": 0}

    def interrupted(self, items):
        calls["n"] += 1
        if calls["n"] == 4:  # steps 1-3 done (checkpoint at 2); step 3 is redone after resume
            raise KeyboardInterrupt
        return original_step(self, items)

    monkeypatch.setattr(FineTuneRecipe, "train_step", interrupted)
    with pytest.raises(
        TrainingInterrupted, match="^interrupted at step 3; the last checkpoint is step 2: resume with --resume$"
    ):
        run(cfg)
    summary = json.loads((cfg.run_dir() / "summary.json").read_text())
    assert (summary["status"], summary["step"], summary["stopped_at_step"]) == ("interrupted", 2, 3), (
        "step = what resume continues from"
    )
    monkeypatch.setattr(FineTuneRecipe, "train_step", original_step)
    with pytest.raises(RunExistsError, match="--resume"):
        run(cfg)
    capsys.readouterr()
    resumed = run(cfg, resume=True)
    assert f"resuming v1 from step 2 ({RunFolder(resumed).checkpoint(2)})" in capsys.readouterr().err
    with pytest.raises(RunExistsError, match="holds a complete run .4 steps.: --overwrite trains it again"):
        run(cfg, resume=True)

    def strip(records):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]

    assert strip(read_metrics(resumed)) == strip(read_metrics(full))
    a = load_file(full / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_v3_run_records_the_realised_augmentation_per_epoch(tmp_path, short_rows_file):
    """12 train rows, 2 per step, 8 steps: epoch 0 ends at step 6, so one epoch record and one final record."""
    cfg = tiny_config(
        "v3",
        tmp_path,
        short_rows_file,
        "augment.probability=0.5",
        "augment.fields=[question,answer]",
        "train.max_steps=8",
        "train.eval_steps=8",
        "train.save_steps=8",
        "train.logging_steps=4",
    )
    run_dir = run(cfg)
    records = [r["augment"] for r in read_metrics(run_dir) if "augment" in r]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["samples"] == 12 and records[1]["samples"] == 4
    for record in records:
        assert record["masked_share"] == record["masked_samples"] / record["samples"]
        assert sum(record["terms_by_category"].values()) == record["terms_masked"]
    assert sum(r["masked_samples"] for r in records) > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["augmentation"]["epochs"] == records


def test_an_augmented_run_that_ends_with_an_epoch_logs_that_epoch_once(tmp_path, short_rows_file):
    """12 train rows, 2 per step, one epoch: its record is logged at step 6, and the end adds none (there is no
    epoch 1 to summarise)."""
    cfg = tiny_config(
        "v3",
        tmp_path,
        short_rows_file,
        "augment.probability=0.5",
        "train.max_steps=null",
        "train.epochs=1",
        "train.eval_steps=6",
        "train.save_steps=6",
        "train.logging_steps=6",
    )
    run_dir = run(cfg)
    records = [(r["step"], r["augment"]) for r in read_metrics(run_dir) if "augment" in r]
    assert [(step, record["epoch"], record["samples"]) for step, record in records] == [(6, 0, 12)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["augmentation"]["epochs"] == [records[0][1]]


def test_ctrl_c_saves_the_step_it_stops_at_and_a_run_without_validation_rows_prints_no_eval_loss(
    tmp_path, short_rows_file, monkeypatch, capsys
):
    cfg = tiny_config("v1", tmp_path, short_rows_file, "data.val_fraction=0", "train.save_steps=10")
    original_step = FineTuneRecipe.train_step

    def ctrl_c_during_step_1(self, items):
        if self.step == 0:
            signal.raise_signal(signal.SIGINT)  # the handler asks to stop; this step still completes
        return original_step(self, items)

    monkeypatch.setattr(FineTuneRecipe, "train_step", ctrl_c_during_step_1)
    with pytest.raises(TrainingInterrupted, match="^interrupted at step 1: resume with --resume$"):
        run(cfg)
    err = capsys.readouterr().err
    assert "no validation rows" in err and "nan" not in err
    summary = json.loads((cfg.run_dir() / "summary.json").read_text())
    assert (summary["status"], summary["step"]) == ("interrupted", 1) and "last_eval" not in summary
    assert [step for step, _ in RunFolder(cfg.run_dir()).list_checkpoints()] == [1]
    assert not any("eval_loss" in record for record in read_metrics(cfg.run_dir()))


def test_a_failed_run_leaves_no_stub_folder_and_bad_data_fails_before_the_model_loads(
    tmp_path, short_rows_file, monkeypatch
):
    cfg = tiny_config("v1", tmp_path, short_rows_file)

    def fails(self, items):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(FineTuneRecipe, "train_step", fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(cfg)
    assert not cfg.run_dir().exists(), "nothing was saved: the new run folder goes"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n', encoding="utf-8")

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load before the data is validated")

    monkeypatch.setattr("medtune.train.recipe.load_base_model", no_model)
    with pytest.raises(Exception, match="bad.jsonl:1") as failed:
        run(tiny_config("v1", tmp_path, bad))
    assert not isinstance(failed.value, AssertionError) and not cfg.run_dir().exists()


def test_resume_never_runs_a_pickled_training_state(tmp_path, short_rows_file):
    """An old-format checkpoint whose pickle would run a command: resume refuses it, naming the file, and runs
    nothing."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    cfg = tiny_config("v1", tmp_path, short_rows_file)
    folder = RunFolder(cfg.run_dir()).checkpoint(2)
    folder.mkdir(parents=True)
    (cfg.run_dir() / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    torch.save({"step": 2, "optimizer": Exploit()}, folder / LEGACY_STATE_FILE)
    with pytest.raises(CheckpointError) as refused:
        run(cfg, resume=True)
    assert str(refused.value).startswith(
        f"{folder / LEGACY_STATE_FILE}: cannot read the training state (it asks to call "
    )
    assert "system" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


def test_rows_left_out_for_a_cut_answer_are_said_at_the_start(tmp_path, short_rows_file, capsys):
    """At max_length 400, 9 of the 12 training rows lose their whole answer and are not trained on: a run trained on
    a quarter of its data without a word (only `check` and data_stats.json said so)."""
    cfg = tiny_config("v1", tmp_path, short_rows_file, "data.max_length=400")
    recipe = FineTuneRecipe(cfg)
    recipe.tokenizer = load_tokenizer(cfg.model)
    recipe._setup_data()
    recipe.cleanup()
    err = capsys.readouterr().err
    data_stats = RunFolder(cfg.run_dir()).data_stats
    for split, cut, rows in (("training", 9, 12), ("validation", 1, 4)):
        assert (
            f"{cut} of {rows} {split} rows lose their whole answer at max_length 400 and are left out (each is listed "
            f"in {data_stats})"
        ) in " ".join(err.split())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_the_adapter_is_saved_lets_the_run_complete(
    tmp_path, short_rows_file, monkeypatch, capsys, signum
):
    """Training is over and adapter/ is being written: a Ctrl-C there stopped the save with a bare KeyboardInterrupt
    (no line, summary.json left "running", no adapter) and a SIGTERM killed the process; with no checkpoint before
    the end (save_steps >= max_steps, as in the shipped configs) the whole run was lost. Now the save finishes."""
    cfg = tiny_config("v1", tmp_path, short_rows_file, "train.max_steps=1", "train.save_steps=10", ONE_VALIDATION_ROW)
    original_save = FineTuneRecipe._save_adapter

    def signalled_while_saving(self, folder, weights, with_tokenizer):
        if with_tokenizer:  # adapter/, at the end
            signal.raise_signal(signum)
        return original_save(self, folder, weights, with_tokenizer)

    monkeypatch.setattr(FineTuneRecipe, "_save_adapter", signalled_while_saving)
    run_dir = run(cfg)
    assert RunFolder(run_dir).read_summary()["status"] == "complete"
    assert (RunFolder(run_dir).adapter / "adapter_model.safetensors").is_file()
    assert "saving the adapter first" in capsys.readouterr().err


def test_a_tracker_that_fails_to_start_leaves_no_stub_folder(tmp_path, short_rows_file, monkeypatch):
    """The trackers start after the run folder is written: one that failed (a wandb or swanlab error) left a folder
    with metrics.jsonl and no checkpoint, which the next `train` took for a run needing --resume or --overwrite."""

    def fails(*args, **kwargs):
        raise RuntimeError("the tracker's server refused the run")

    monkeypatch.setattr("medtune.train.trackers.TensorBoardTracker.__init__", fails)
    cfg = tiny_config("v1", tmp_path, short_rows_file, "train.report_to=[tensorboard]")
    with pytest.raises(RuntimeError, match="refused the run"):
        run(cfg)
    assert not cfg.run_dir().exists(), "nothing was trained: the new run folder goes"
