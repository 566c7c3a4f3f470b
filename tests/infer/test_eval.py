"""`medtune eval`: the loss matches training's, robustness is wired to masked questions, files land where documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.conftest import CONFIGS

from medtune.config import load_config
from medtune.data.formats import DataError
from medtune.data.lexicon import load_lexicon
from medtune.data.prepare import prepare_data
from medtune.data.render import encode_sample
from medtune.infer import evaluate as evaluate_module
from medtune.infer.decoding import Decoding
from medtune.infer.evaluate import eval_data, evaluate, loss_over, mask_questions
from medtune.infer.generation import Reply
from medtune.infer.runs import load_for_inference, resolve_run


@pytest.fixture(scope="module")
def v1_model(v1_run):
    return load_for_inference(resolve_run(v1_run), device=torch.device("cpu"))


def test_default_data_is_the_runs_validation_split_and_its_loss_is_trainings(v1_run, v1_model):
    data = eval_data(v1_model.run.config, None, None)
    summary = json.loads((v1_run / "summary.json").read_text())
    assert (
        len(data.samples) == summary["data"]["validation"]["rows"]
        and data.source == summary["data"]["validation"]["source"]
    )
    training_eval = [
        json.loads(line) for line in (v1_run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line
    ][-1]
    loss = loss_over(v1_model, data.samples, batch_size=2)
    assert loss["eval_tokens"] == training_eval["eval_tokens"]
    assert loss["eval_loss"] == pytest.approx(training_eval["eval_loss"], rel=1e-4), (
        "the adapter must load exactly as trained"
    )


def _rows_file(path: Path, count: int, bad_line: int | None = None) -> Path:
    rows = [
        json.dumps({"question": f"头痛第{i}天怎么办", "think": f"想{i}", "answer": f"多休息{i}"}, ensure_ascii=False)
        for i in range(count)
    ]
    if bad_line is not None:
        rows[bad_line - 1] = '{"question": "发烧", "think": "想"}'
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


SPLIT_OPTIONS = {
    "held-out-share": {},
    "other-share": {"overrides": ["data.val_fraction=0.3"]},
    "other-seed": {"overrides": ["train.seed=7"]},
    "first-rows-only": {"overrides": ["data.max_rows=23"]},
    "bad-rows-skipped": {"overrides": ["data.skip_bad_rows=true"], "bad_line": 4},
    "validation-file": {"validation_file": True},
    "validation-file-first-rows": {"validation_file": True, "overrides": ["data.max_rows=5"]},
    "csv-columns": {"csv": True, "overrides": ["data.val_fraction=0.5", "train.seed=3"]},
}
"""Every `data` and `train` setting that decides which rows validate."""


@pytest.mark.parametrize("options", list(SPLIT_OPTIONS.values()), ids=list(SPLIT_OPTIONS))
def test_default_eval_rows_are_exactly_the_rows_training_validates_on(tmp_path, tokenizer, options):
    """For every option that decides the split, eval's default rows encode to training's validation rows, in order."""
    overrides = list(options.get("overrides", []))
    train = _rows_file(tmp_path / "train.jsonl", 40, options.get("bad_line"))
    if options.get("validation_file"):
        overrides.append(f"data.validation={_rows_file(tmp_path / 'val.jsonl', 9)}")
    if options.get("csv"):
        train = tmp_path / "train.csv"
        train.write_text("ask,why,reply\n" + "".join(f"头痛{i},想{i},多休息{i}\n" for i in range(12)), encoding="utf-8")
        overrides.append("data.columns={question: ask, think: why, answer: reply}")
    cfg = load_config(
        CONFIGS / "v1.yaml",
        [f"data.train={train}", "data.max_length=256", "speed.packed_row_tokens=null", *overrides],
        overlays=[CONFIGS / "tiny.yaml"],
    )

    prepared = prepare_data(cfg, tokenizer)
    data = eval_data(cfg, None, None)

    encoded = [encode_sample(tokenizer, sample, cfg.data.max_length) for sample in data.samples]
    assert [item.input_ids for item in encoded] == [item.input_ids for item in prepared.validation] and encoded
    assert data.source == prepared.stats["validation"]["source"]
    training_rows = {sample.source for sample in prepared.train.samples}
    assert not training_rows & {sample.source for sample in data.samples}


def test_eval_refuses_a_run_that_held_out_no_rows(tmp_path):
    cfg = load_config(
        CONFIGS / "v1.yaml",
        [f"data.train={_rows_file(tmp_path / 'train.jsonl', 5)}", "data.val_fraction=0"],
        overlays=[CONFIGS / "tiny.yaml"],
    )
    with pytest.raises(DataError, match="the run held out no validation rows"):
        eval_data(cfg, None, None)


def test_masked_questions_change_only_the_question_and_are_repeatable(v1_model):
    samples = eval_data(v1_model.run.config, None, None).samples
    lexicon = load_lexicon("medical")
    masked = mask_questions(samples, seed=0)
    assert [index for index, _, _ in masked] == [i for i, s in enumerate(samples) if lexicon.find(s.question)]
    for index, sample, count in masked:
        original = samples[index]
        assert sample.question != original.question and 1 <= count <= 2
        assert (sample.think, sample.answer, sample.masked) == (original.think, original.answer, {})
    assert [s.question for _, s, _ in mask_questions(samples, seed=0)] == [s.question for _, s, _ in masked]


def test_robust_metrics_compare_the_same_questions_clean_and_masked(v1_model, monkeypatch):
    """Scripted replies: perfect answers to clean questions, empty answers to masked ones -> the drop is the clean
    score."""
    data = eval_data(v1_model.run.config, None, None)
    by_question = {s.question: s.answer for s in data.samples}

    def scripted(loaded, conversations, decoding, batch_size, description):
        answers = [by_question.get(c[-1]["content"], "") for c in conversations]
        return [Reply(f"<think>\n想\n</think>\n\n{answer}", "stop", 5) for answer in answers]

    monkeypatch.setattr(evaluate_module, "generate_with_progress", scripted)
    result, rows = evaluate(v1_model, data, Decoding(greedy=True, max_new_tokens=4), batch_size=2)
    n_masked = len(mask_questions(data.samples, seed=0))
    assert n_masked > 0, "the validation questions hold lexicon terms"
    assert (
        result["rouge_l"] == pytest.approx(1.0)
        and result["think_compliance"] == 1.0
        and result["n"] == len(data.samples)
    )
    assert result["robust"]["n"] == n_masked and result["robust"]["rouge_l"] == 0.0
    assert result["robust_drop"]["rouge_l"] == pytest.approx(1.0) and result["robust_drop"]["think_compliance"] == 0.0
    assert result["robust"]["eval_loss"] != result["robust"]["eval_loss_unmasked"]
    assert len(rows) == len(data.samples) + n_masked and sum(row["masked"] for row in rows) == n_masked


def test_eval_command_writes_eval_json_for_the_adapter_and_the_base(v1_run, cli_app, runner):
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--max-new-tokens", "3", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads((v1_run / "eval.json").read_text())
    whole = (v1_run / "eval.json").read_bytes()
    for key in (
        "eval_loss",
        "perplexity",
        "bleu4",
        "rouge_l",
        "think_compliance",
        "term_recall",
        "think_chars",
        "answer_chars",
    ):
        assert isinstance(record[key], float), key
    assert record["n"] == 4 and record["checkpoint"] == "adapter" and record["random_weights"] is True
    assert record["perplexity"] == pytest.approx(2.718281828 ** record["eval_loss"], rel=1e-6)
    assert set(record["robust_drop"]) == {"bleu4", "rouge_l", "think_compliance", "term_recall"}
    assert record["finish_reasons"] == {"length": 4} and record["think_compliance"] == 0.0, (
        "3 tokens never close a think block"
    )
    replies = (v1_run / "eval.replies.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(replies) == record["n"] + record["robust"]["n"]
    first = runner.invoke(cli_app, ["eval", str(v1_run), "--limit", "2", "--max-new-tokens", "3"])
    assert first.exit_code == 0 and json.loads((v1_run / "eval.first-2.json").read_text())["n"] == 2, first.output
    assert (v1_run / "eval.json").read_bytes() == whole, "a look at the first rows never replaces the whole"
    assert (v1_run / "eval.first-2.replies.jsonl").is_file()

    base = runner.invoke(cli_app, ["eval", str(v1_run), "--limit", "2", "--max-new-tokens", "3", "--no-adapter"])
    assert base.exit_code == 0, base.output
    base_record = json.loads((v1_run / "eval.first-2.base.json").read_text())
    assert base_record["checkpoint"] == "none (base model)" and base_record["model"]["adapter"] is None
    adapter_record = json.loads((v1_run / "eval.first-2.json").read_text())
    assert base_record["eval_loss"] != pytest.approx(adapter_record["eval_loss"], rel=1e-4), "the adapter changes it"


def test_eval_of_a_checkpoint_gets_its_own_file_and_bad_data_is_named(v1_run, cli_app, runner, tmp_path):
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--checkpoint", "1", "--limit", "1", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((v1_run / "eval.first-1.step-000001.json").read_text())["checkpoint"] == "step-000001"
    bad = tmp_path / "val.jsonl"
    bad.write_text(
        '{"question": "头痛", "think": "想", "answer": "多休息"}\n{"question": "发烧", "think": "想"}\n',
        encoding="utf-8",
    )
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--data", str(bad)])
    assert result.exit_code == 4 and "val.jsonl:2: field 'answer': missing" in result.output


def test_eval_on_another_file_gets_its_own_name_and_replaces_no_result(v1_run, cli_app, runner, tmp_path):
    before = {path.name: path.read_bytes() for path in v1_run.glob("eval*")}
    rows = tmp_path / "val.jsonl"
    rows.write_text('{"question": "头痛", "think": "想", "answer": "多休息"}\n', encoding="utf-8")
    short = ["--data", str(rows), "--max-new-tokens", "2"]
    for extra, name in [([], "eval.val.json"), (["--no-adapter"], "eval.val.base.json")]:
        result = runner.invoke(cli_app, ["eval", str(v1_run), *short, *extra])
        assert result.exit_code == 0, result.output
        assert json.loads((v1_run / name).read_text())["data"] == str(rows)
        assert (v1_run / name.replace(".json", ".replies.jsonl")).is_file()
    assert {name: (v1_run / name).read_bytes() for name in before} == before, "results on the run's own rows stay"
    for stem in ("base", "first-2"):
        (tmp_path / f"{stem}.jsonl").write_bytes(rows.read_bytes())
        clash = runner.invoke(cli_app, ["eval", str(v1_run), "--data", str(tmp_path / f"{stem}.jsonl")])
        assert clash.exit_code == 4 and f"would be named eval.{stem}.json" in clash.output, clash.output


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"question": "头痛怎么办"}', "1: field 'think': missing"),
        ('{"messages": [{"role": "user", "content": "头痛怎么办"}]}', "1: field 'messages': no assistant message"),
    ],
)
def test_eval_rows_without_a_reference_point_to_generate(v1_run, cli_app, runner, tmp_path, row, problem):
    questions = tmp_path / "q.jsonl"
    questions.write_text(f"{row}\n", encoding="utf-8")
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--data", str(questions)])
    assert result.exit_code == 4, result.output
    assert result.output.strip().startswith(f"error: {questions}:{problem}")
    assert result.output.strip().endswith(
        "; medtune eval scores replies against each row's reference reasoning and answer; for questions without "
        "answers, use `medtune generate`"
    )


def test_eval_rows_broken_otherwise_keep_their_own_error(v1_run, cli_app, runner, tmp_path):
    rows = tmp_path / "q.jsonl"
    rows.write_text('{"question": "头痛", "think": "想", "answer": 3}\n', encoding="utf-8")
    result = runner.invoke(cli_app, ["eval", str(v1_run), "--data", str(rows)])
    assert result.exit_code == 4, result.output
    assert "wrong type" in result.output and "medtune generate" not in result.output


def test_eval_refuses_an_output_that_would_replace_its_data_before_loading(
    v1_run, cli_app, runner, tmp_path, monkeypatch
):
    """`-o` naming the --data file (or a name whose replies file is it) would replace the rows with results; `-o`
    naming a folder failed with a traceback after every reply was generated. All are refused before the model
    loads."""
    import medtune.infer.runs

    monkeypatch.setattr(medtune.infer.runs, "load_for_inference", lambda *a, **k: pytest.fail("the model loaded"))
    rows = tmp_path / "val.replies.jsonl"
    content = '{"question": "头痛", "think": "想", "answer": "多休息"}\n'
    rows.write_text(content, encoding="utf-8")
    (tmp_path / "results").mkdir()
    for output, problem in [
        (rows, "is the --data file"),
        (tmp_path / "val.json", "would write its replies to"),
        (tmp_path / "results", "is a folder"),
    ]:
        result = runner.invoke(cli_app, ["eval", str(v1_run), "--data", str(rows), "-o", str(output)])
        assert result.exit_code == 2 and "--output" in result.output and problem in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert rows.read_text(encoding="utf-8") == content
