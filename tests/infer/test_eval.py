"""`medtune eval`: the loss matches training's, robustness is wired to masked questions, files land where documented."""

from __future__ import annotations

import json

import pytest
import torch

from medtune.data.lexicon import load_lexicon
from medtune.infer import evaluate as evaluate_module
from medtune.infer.evaluate import eval_data, evaluate, loss_over, mask_questions
from medtune.infer.generation import Decoding, Reply
from medtune.infer.runs import load_for_inference, resolve_run


@pytest.fixture(scope="module")
def v1_model(v1_run):
    return load_for_inference(resolve_run(v1_run), device=torch.device("cpu"))


def test_default_data_is_the_runs_validation_split_and_its_loss_is_trainings(v1_run, v1_model):
    data = eval_data(v1_model.run, None, None)
    summary = json.loads((v1_run / "summary.json").read_text())
    assert len(data.samples) == summary["data"]["validation"]["rows"] and "held out by the run" in data.source
    training_eval = [json.loads(line) for line in (v1_run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line][-1]
    loss = loss_over(v1_model, data.samples, batch_size=2)
    assert loss["eval_tokens"] == training_eval["eval_tokens"]
    assert loss["eval_loss"] == pytest.approx(training_eval["eval_loss"], rel=1e-4), "the adapter must load exactly as trained"


def test_masked_questions_change_only_the_question_and_are_repeatable(v1_model):
    samples = eval_data(v1_model.run, None, None).samples
    lexicon = load_lexicon("medical")
    masked = mask_questions(samples, seed=0)
    assert [index for index, _, _ in masked] == [i for i, s in enumerate(samples) if lexicon.find(s.question)]
    for index, sample, count in masked:
        original = samples[index]
        assert sample.question != original.question and 1 <= count <= 2
        assert (sample.think, sample.answer, sample.masked) == (original.think, original.answer, {})
    assert [s.question for _, s, _ in mask_questions(samples, seed=0)] == [s.question for _, s, _ in masked]


def test_robust_metrics_compare_the_same_questions_clean_and_masked(v1_model, monkeypatch):
    """Scripted replies: perfect answers to clean questions, empty answers to masked ones -> the drop is the clean score."""
    data = eval_data(v1_model.run, None, None)
    by_question = {s.question: s.answer for s in data.samples}

    def scripted(loaded, conversations, decoding, batch_size, description):
        answers = [by_question.get(c[-1]["content"], "") for c in conversations]
        return [Reply(f"<think>\n想\n</think>\n\n{answer}", "stop", 5) for answer in answers]

    monkeypatch.setattr(evaluate_module, "generate_with_progress", scripted)
    result, rows = evaluate(v1_model, data, Decoding(greedy=True, max_new_tokens=4), batch_size=2)
    n_masked = len(mask_questions(data.samples, seed=0))
    assert n_masked > 0, "the validation questions hold lexicon terms"
    assert result["rouge_l"] == pytest.approx(1.0) and result["think_compliance"] == 1.0 and result["n"] == len(data.samples)
    assert result["robust"]["n"] == n_masked and result["robust"]["rouge_l"] == 0.0
    assert result["robust_drop"]["rouge_l"] == pytest.approx(1.0) and result["robust_drop"]["think_compliance"] == 0.0
    assert result["robust"]["eval_loss"] != result["robust"]["eval_loss_unmasked"]
    assert len(rows) == len(data.samples) + n_masked and sum(row["masked"] for row in rows) == n_masked


def test_eval_command_writes_eval_json_for_the_adapter_and_the_base(v1_run, cli_app, runner):
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--limit", "2", "--max-new-tokens", "3", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads((v1_run / "eval.json").read_text())
    for key in ("eval_loss", "perplexity", "bleu4", "rouge_l", "think_compliance", "term_recall", "think_chars", "answer_chars"):
        assert isinstance(record[key], float), key
    assert record["n"] == 2 and record["checkpoint"] == "adapter" and record["random_weights"] is True
    assert record["perplexity"] == pytest.approx(2.718281828 ** record["eval_loss"], rel=1e-6)
    assert set(record["robust_drop"]) == {"bleu4", "rouge_l", "think_compliance", "term_recall"}
    assert record["finish_reasons"] == {"length": 2} and record["think_compliance"] == 0.0, "3 tokens never close a think block"
    replies = (v1_run / "eval.replies.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(replies) == record["n"] + record["robust"]["n"]

    base = runner.invoke(cli_app, ["eval", str(v1_run), "--limit", "2", "--max-new-tokens", "3", "--no-adapter"])
    assert base.exit_code == 0, base.output
    base_record = json.loads((v1_run / "eval.base.json").read_text())
    assert base_record["checkpoint"] == "none (base model)" and base_record["model"]["adapter"] is None
    assert base_record["eval_loss"] != pytest.approx(record["eval_loss"], rel=1e-4), "the adapter changes the loss"


def test_eval_of_a_checkpoint_gets_its_own_file_and_bad_data_is_named(v1_run, cli_app, runner, tmp_path):
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--checkpoint", "1", "--limit", "1", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((v1_run / "eval.step-000001.json").read_text())["checkpoint"] == "step-000001"
    bad = tmp_path / "val.jsonl"
    bad.write_text('{"question": "头痛", "think": "想", "answer": "多休息"}\n{"question": "发烧", "think": "想"}\n', encoding="utf-8")
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--data", str(bad)])
    assert result.exit_code == 4 and "val.jsonl:2: field 'answer': missing" in result.output
