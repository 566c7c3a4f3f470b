"""Batched generation: left padding, stop/length, reading questions, and the `generate` command."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from medtune.config import DataConfig
from medtune.data.formats import DataError
from medtune.infer.decoding import Decoding
from medtune.infer.generate import read_questions
from medtune.infer.generation import decode_reply, generate_replies
from medtune.infer.runs import load_for_inference, resolve_run

SYSTEM = "你是医生。"
DATA = DataConfig(system_prompt=SYSTEM)


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_decode_reply_stops_at_im_end_and_ignores_the_padding_after_it(tokenizer):
    ids = tokenizer("<think>\n想\n</think>\n\n多喝水", add_special_tokens=False)["input_ids"]
    im_end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    stopped = decode_reply(tokenizer, ids + [im_end, pad, pad])
    assert (stopped.finish_reason, stopped.think, stopped.answer, stopped.new_tokens) == (
        "stop",
        "想",
        "多喝水",
        len(ids) + 1,
    )
    cut = decode_reply(tokenizer, ids)
    assert (cut.finish_reason, cut.new_tokens) == ("length", len(ids))


def test_decoding_defaults_are_qwen3_thinking_sampling_and_greedy_is_greedy(tokenizer):
    sampling = Decoding().generation_config(tokenizer)
    assert (sampling.do_sample, sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (
        True,
        0.6,
        0.95,
        20,
        0.0,
    )
    assert sampling.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert Decoding(greedy=True).generation_config(tokenizer).do_sample is False


@pytest.fixture(scope="module")
def v1_model(v1_run):
    return load_for_inference(resolve_run(v1_run), device=torch.device("cpu"))


def test_left_padded_batch_gives_what_one_at_a_time_gives(v1_model):
    """Prompts of different lengths in one batch: right padding would put pads between prompt and reply."""
    questions = [
        conversation("头痛"),
        conversation("我最近三天一直咳嗽，晚上睡不着，需要去医院吗？"),
        conversation("发烧"),
    ]
    greedy = Decoding(greedy=True, max_new_tokens=4)
    batched = generate_replies(v1_model.model, v1_model.tokenizer, questions, greedy, batch_size=3)
    single = generate_replies(v1_model.model, v1_model.tokenizer, questions, greedy, batch_size=1)
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.finish_reason == "length" and r.new_tokens == 4 for r in batched)


def test_read_questions_accepts_question_only_rows_and_medtune_formats(tmp_path, short_rows_file):
    only = tmp_path / "q.jsonl"
    only.write_text(
        '{"question": "头痛怎么办？"}\n\n{"question": "发烧", "system": "你是儿科医生。"}\n', encoding="utf-8"
    )
    rows = read_questions(only, DATA)
    assert [(r.question, r.system, r.source) for r in rows] == [
        ("头痛怎么办？", SYSTEM, "q.jsonl:1"),
        ("发烧", "你是儿科医生。", "q.jsonl:3"),
    ]
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text('{"instruction": "头痛怎么办？", "output": "多休息"}\n', encoding="utf-8")
    assert read_questions(alpaca, DATA)[0].question == "头痛怎么办？"
    prompts = tmp_path / "prompts.jsonl"  # questions alone in every format, as a prompts file holds them
    prompts.write_text(
        '{"instruction": "咳嗽", "input": "一周了"}\n{"instruction": "发烧", "output": ""}\n'
        '{"messages": [{"role": "user", "content": "头晕"}]}\n'
        '{"conversations": [{"from": "human", "value": "胸闷"}, {"from": "gpt", "value": ""}]}\n',
        encoding="utf-8",
    )
    assert [(r.question, r.think, r.answer) for r in read_questions(prompts, DATA)] == [
        ("咳嗽\n一周了", "", ""),
        ("发烧", "", ""),
        ("头晕", "", ""),
        ("胸闷", "", ""),
    ]
    assert len(read_questions(short_rows_file, DATA)) == 16
    table = tmp_path / "q.csv"  # one reader for every file type: question-only rows are not a JSONL special case
    table.write_text("question,system\n头痛怎么办？,\n发烧,你是儿科医生。\n", encoding="utf-8")
    assert [(r.question, r.system, r.source) for r in read_questions(table, DATA)] == [
        ("头痛怎么办？", SYSTEM, "q.csv:2"),
        ("发烧", "你是儿科医生。", "q.csv:3"),
    ]


@pytest.mark.parametrize(
    "line, error",
    [
        ('{"question": 3}', r"field 'question': wrong type"),
        ('{"system": "你是儿科医生。", "think": ""}', r"field 'question': missing"),
        ('{"text": "发烧"}', r"field '\(row\)': no known format \(keys: text\)"),
        ('{"question": "咳嗽"', r"field '\(row\)': invalid JSON"),
    ],
)
def test_read_questions_names_file_line_and_field_as_the_data_reader_does(tmp_path, line, error):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "头痛"}\n' + line + '\n{"question": "发烧"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: " + error):
        read_questions(bad, DATA)


def test_generate_command_writes_think_and_answer_apart(v1_run, cli_app, runner, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"question": "头痛怎么办？"}\n{"question": "发烧三天了"}\n{"question": "咳嗽"}\n', encoding="utf-8"
    )
    answers = tmp_path / "out" / "answers.jsonl"
    result = runner.invoke(
        cli_app,
        [
            "generate",
            str(v1_run),
            "-i",
            str(questions),
            "-o",
            str(answers),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "3",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    assert [row["question"] for row in rows] == ["头痛怎么办？", "发烧三天了", "咳嗽"]
    assert all(set(row) == {"source", "question", "think", "answer", "finish_reason", "new_tokens"} for row in rows)
    assert all(row["finish_reason"] == "length" for row in rows) and "RANDOM WEIGHTS" in result.output
    assert not list(answers.parent.glob(".*.tmp")), "written through a temporary file, renamed"


def test_generate_command_reports_bad_input_before_loading_the_model(v1_run, cli_app, runner, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "头痛"}\n{"question": ""}\n', encoding="utf-8")
    result = runner.invoke(cli_app, ["generate", str(v1_run), "-i", str(bad), "-o", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 4 and "bad.jsonl:2: field 'question': empty" in result.output


def test_generate_refuses_an_output_that_would_replace_its_questions_before_loading(
    v1_run, cli_app, runner, tmp_path, monkeypatch
):
    """`-o` naming the questions file would replace them with the answers; `-o` naming a folder failed with a
    traceback after every answer was generated. Both are refused first, before the model loads."""
    import medtune.infer.runs

    monkeypatch.setattr(medtune.infer.runs, "load_for_inference", lambda *a, **k: pytest.fail("the model loaded"))
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question": "头痛怎么办？"}\n', encoding="utf-8")
    (tmp_path / "answers").mkdir()
    for output, problem in [
        (questions, "is the --input file"),
        (tmp_path / "." / "questions.jsonl", "is the --input file"),
        (tmp_path / "answers", "is a folder"),
    ]:
        result = runner.invoke(cli_app, ["generate", str(v1_run), "-i", str(questions), "-o", str(output)])
        assert result.exit_code == 2 and "--output" in result.output and problem in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert questions.read_text(encoding="utf-8") == '{"question": "头痛怎么办？"}\n'


def test_generate_reads_its_questions_as_the_run_read_its_data(v1_run, cli_app, runner, tmp_path):
    """A run trained on a GB18030 table through `data.columns` answers questions from a file like it: generate reads
    the file with the run's data settings (columns, encoding, format, tags), as eval does, rather than with
    defaults whose errors point to settings generate has no way to change."""
    import yaml

    run = tmp_path / "run"
    shutil.copytree(v1_run, run)
    config_file = run / "adapter" / "config.resolved.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config["data"].update(encoding="gb18030", columns={"question": "ask", "answer": "reply"}, literal_tags="text")
    config_file.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    questions = tmp_path / "questions.csv"
    questions.write_bytes("department,ask\n内科,头痛怎么办？\n内科,<think>是什么\n".encode("gb18030"))
    answers = tmp_path / "answers.jsonl"
    result = runner.invoke(
        cli_app,
        ["generate", str(run), "-i", str(questions), "-o", str(answers), "--max-new-tokens", "2", "--greedy"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    assert [(row["source"], row["question"]) for row in rows] == [
        ("questions.csv:2", "头痛怎么办？"),
        ("questions.csv:3", "<think>是什么"),
    ]


class WritingModel(torch.nn.Module):
    """Writes the same reply ids after every prompt of a batch, up to max_new_tokens, as `generate` returns them."""

    def __init__(self, reply_ids: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.reply_ids = reply_ids

    def generate(self, input_ids, attention_mask, generation_config):  # noqa: ANN001
        reply = torch.tensor([self.reply_ids[: generation_config.max_new_tokens]] * input_ids.shape[0])
        return torch.cat([input_ids, reply], dim=1)


def test_a_reply_in_a_think_block_the_prompt_opened_is_think_even_when_cut(tokenizer):
    """Templates of thinking-only models (Qwen3-*-Thinking-2507) end the prompt with `<think>\\n`; a reply cut before
    its `</think>` was all answer, so eval counted no think block and generate wrote the reasoning as the answer."""
    opening = copy.deepcopy(tokenizer)
    opening.chat_template = opening.chat_template.replace(
        "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"
    )
    reply_ids = opening("想想头痛\n</think>\n\n回答头痛", add_special_tokens=False)["input_ids"]
    model = WritingModel(reply_ids + [opening.convert_tokens_to_ids("<|im_end|>")])
    full, cut = (
        generate_replies(model, opening, [conversation("头痛")], Decoding(greedy=True, max_new_tokens=n), 1)[0]
        for n in (len(reply_ids) + 1, 2)
    )
    assert (full.think, full.answer, full.finish_reason) == ("想想头痛", "回答头痛", "stop")
    assert cut.finish_reason == "length" and cut.answer == "" and cut.think and "想" in cut.think
    plain = generate_replies(model, tokenizer, [conversation("头痛")], Decoding(greedy=True, max_new_tokens=2), 1)[0]
    assert plain.think == "" and plain.answer == cut.think, "a prompt that opens no block changes nothing"
