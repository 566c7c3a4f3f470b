"""The console chat: streamed think/answer display, history without think blocks, and the real command on
the tiny model driven through piped stdin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from medtune.config import RunConfig
from medtune.infer.chat import ReplyPrinter, chat_loop, stream_reply
from medtune.infer.decoding import Decoding
from medtune.infer.runs import AdapterRun, InferenceModel

DIM = "\x1b[2m"


def recording_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=200)


def feed_all(printer: ReplyPrinter, pieces: list[str]) -> str:
    for piece in pieces:
        printer.feed(piece)
    return printer.console.file.getvalue()


PIECES = ["<think>\n", "先想", "一想\n", "</think>\n\n", "多喝", "水。"]


def test_think_block_is_dimmed_then_the_answer_follows():
    output = feed_all(ReplyPrinter(recording_console(), "show"), PIECES)
    assert f"{DIM}先想" in output and f"{DIM}一想" in output
    plain = Console(file=io.StringIO(), width=200)
    feed_all(ReplyPrinter(plain, "show"), PIECES)
    assert plain.file.getvalue() == "先想一想\n\n多喝水。"  # tags hidden, one blank line before the answer


def test_hidden_think_block_prints_one_thinking_line():
    console = Console(file=io.StringIO(), width=200)
    output = feed_all(ReplyPrinter(console, "hide"), PIECES)
    assert output == "thinking…\n多喝水。"


def test_pieces_holding_both_parts_and_replies_without_think():
    console = Console(file=io.StringIO(), width=200)
    assert feed_all(ReplyPrinter(console, "show"), ["<think>\n想\n</think>\n\n答", "案"]) == "想\n\n答案"
    console = Console(file=io.StringIO(), width=200)
    assert feed_all(ReplyPrinter(console, "show"), ["直接", "回答"]) == "直接回答"


class ScriptedModel(torch.nn.Module):
    """Stands in for the model: streams fixed replies token by token and records every prompt it gets."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.tokenizer, self.replies, self.prompts = tokenizer, list(replies), []

    def generate(self, input_ids, attention_mask, generation_config, streamer):
        self.prompts.append(self.tokenizer.decode(input_ids[0]))
        new = self.tokenizer(self.replies.pop(0) + "<|im_end|>", add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ][0]
        streamer.put(input_ids)
        for token in new:
            streamer.put(token[None])
        streamer.end()
        return torch.cat([input_ids[0], new])[None]


def scripted_chat(monkeypatch, tokenizer, replies: list[str], questions: str) -> tuple[ScriptedModel, str]:
    """Run the chat loop on a scripted model, typing `questions` (one per line) and then end of input."""
    run = AdapterRun(
        Path("adapter"),
        Path("."),
        "adapter",
        {"random_weights": False, "quant": {"mode": "none"}, "base_model": {"name_or_path": "scripted"}, "step": 1},
        RunConfig(),
    )
    model = ScriptedModel(tokenizer, replies)
    console = Console(file=io.StringIO(), width=200)
    lines = iter(questions.splitlines())

    def typed(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", typed)
    chat_loop(InferenceModel(model, tokenizer, run, True), "你是医生。", Decoding(max_new_tokens=64), "show", console)
    return model, console.file.getvalue()


def test_history_keeps_answers_without_their_think_block(monkeypatch, tokenizer):
    replies = ["<think>\n第一轮的推理\n</think>\n\n第一轮的回答", "<think>\n第二轮的推理\n</think>\n\n第二轮的回答"]
    model, output = scripted_chat(monkeypatch, tokenizer, replies, "头痛怎么办？\n还要注意什么？\n")
    second = model.prompts[1]
    assert "第一轮的回答" in second and "第一轮的推理" not in second and "头痛怎么办？" in second
    assert second.endswith("<|im_start|>assistant\n") and second.startswith("<|im_start|>system\n你是医生。")
    assert "第一轮的推理\n\n第一轮的回答" in output and "第二轮的回答" in output


def test_stream_reply_returns_only_the_answer_for_the_history(tokenizer):
    """Qwen3's template would also drop an earlier think block; other templates need not, so the chat does it."""
    run = AdapterRun(Path("adapter"), Path("."), "adapter", {}, RunConfig())
    model = ScriptedModel(tokenizer, ["<think>\n推理\n</think>\n\n回答"])
    printer = ReplyPrinter(Console(file=io.StringIO(), width=200), "show")
    answer = stream_reply(
        InferenceModel(model, tokenizer, run, True), [{"role": "user", "content": "问"}], Decoding(), printer
    )
    assert answer == "回答" and printer.console.file.getvalue() == "推理\n\n回答\n"


def test_a_failing_generation_raises_instead_of_hanging(tokenizer):
    run = AdapterRun(Path("adapter"), Path("."), "adapter", {}, RunConfig())
    model = ScriptedModel(tokenizer, [])  # no reply scripted: generate raises IndexError
    printer = ReplyPrinter(Console(file=io.StringIO(), width=200), "show")
    with pytest.raises(IndexError):
        stream_reply(
            InferenceModel(model, tokenizer, run, True), [{"role": "user", "content": "问"}], Decoding(), printer
        )


def test_reset_starts_a_new_conversation(monkeypatch, tokenizer):
    model, output = scripted_chat(
        monkeypatch, tokenizer, ["<think>\n想\n</think>\n\n甲", "<think>\n想\n</think>\n\n乙"], "问一\n/reset\n问二\n"
    )
    assert "(new conversation)" in output and "问一" not in model.prompts[1] and "甲" not in model.prompts[1]


def test_chat_command_on_the_tiny_model_with_piped_stdin(v1_run, cli_app, runner):
    result = runner.invoke(
        cli_app,
        ["chat", str(v1_run), "--max-new-tokens", "3", "--think", "hide"],
        input="头痛怎么办？\n还有呢？\n/exit\n不该被读到\n",
    )
    assert result.exit_code == 0, result.output
    assert "WARNING: random weights" in result.output and "adapter:" in result.output
    assert result.output.count("model>") == 2, "two questions answered, then /exit"
    assert result.output.count("[cut at --max-new-tokens 3]") == 2, (
        "random weights never end their turn within 3 tokens"
    )


def test_chat_command_names_a_missing_checkpoint(v1_run, cli_app, runner):
    result = runner.invoke(cli_app, ["chat", str(v1_run), "--checkpoint", "7"], input="")
    assert result.exit_code == 6 and "no checkpoint at step 7; saved steps: 1" in result.output
