"""`medtune chat`: a multi-turn console chat that streams the reply, its reasoning dimmed or hidden.

Only the answers go back into the history, as Qwen3's chat template does with earlier turns: the model
never re-reads its own past reasoning.
"""

from __future__ import annotations

from threading import Thread
from typing import Literal

from rich.console import Console
from transformers import TextIteratorStreamer

from medtune.data.reply import split_reply
from medtune.infer.decoding import Decoding
from medtune.infer.generation import Messages, decode_reply, opened_think, prompt_text
from medtune.infer.runs import InferenceModel, describe

ThinkMode = Literal["show", "hide"]
EXIT_COMMANDS = {"/exit", "/quit"}
RESET_COMMAND = "/reset"


class ReplyPrinter:
    """Prints a reply as it streams in: the think block dimmed (or one `thinking…` line), then the answer.

    The text so far is split into its think and answer parts (`split_reply`) on every piece, and what each part
    adds is printed. `<think>` and `</think>` are single tokens, so a tag never arrives split across two pieces.
    A reply that never wrote `<think>` shows as answer until a `</think>` makes that text think: it stays on
    screen as it is, and the answer after it starts after a blank line.
    """

    def __init__(self, console: Console, think: ThinkMode) -> None:
        self.console = console
        self.think = think
        self.text = ""
        self.printed = {"think": "", "answer": ""}

    def feed(self, piece: str) -> None:
        self.text += piece
        parts = split_reply(self.text)
        if not self.printed["answer"]:  # once an answer shows, the think is on screen (or was shown as answer)
            self._show("think", parts.think)
        self._show("answer", parts.answer)

    def _show(self, part: str, text: str) -> None:
        shown = self.printed[part]
        if text == shown or not text:
            return
        if not text.startswith(shown):  # the answer so far was think: a `</think>` came
            self.console.print("\n")
            shown = ""
        self._print(part, text[len(shown) :])
        self.printed[part] = text

    def _print(self, part: str, text: str) -> None:
        if part == "think" and self.think == "hide":
            if not self.printed["think"]:
                self.console.print("thinking…", style="dim italic")
            return
        if part == "answer" and not self.printed["answer"] and self.printed["think"] and self.think == "show":
            self.console.print("\n")  # ends the think line and leaves one blank line before the answer
        self.console.print(text, style="dim" if part == "think" else "", end="", markup=False, highlight=False)


def stream_reply(loaded: InferenceModel, messages: Messages, decoding: Decoding, printer: ReplyPrinter) -> str:
    """Generate one reply in a thread while printing it; return the answer (what the history keeps)."""
    tokenizer = loaded.tokenizer
    prompt = prompt_text(tokenizer, messages)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(loaded.device)
    opened = opened_think(prompt)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    generated: dict = {}

    def work() -> None:
        try:
            generated["ids"] = loaded.model.generate(
                **inputs, generation_config=decoding.generation_config(tokenizer), streamer=streamer
            )
        except BaseException as err:  # ending the stream unblocks the reading loop, which re-raises it
            generated["error"] = err
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    printer.feed(opened)  # the think block the prompt opened, if any: the reply shows as think from its start
    for piece in streamer:
        printer.feed(piece)
    thread.join()
    if "error" in generated:
        raise generated["error"]
    reply = decode_reply(tokenizer, generated["ids"][0, inputs["input_ids"].shape[1] :].tolist(), opened)
    printer.console.print()
    if reply.finish_reason == "length":
        printer.console.print(f"[cut at --max-new-tokens {decoding.max_new_tokens}]", style="yellow", markup=False)
    return reply.answer


def chat_loop(
    loaded: InferenceModel, system_prompt: str, decoding: Decoding, think: ThinkMode, console: Console
) -> None:
    """Read questions until end of input or /exit; /reset starts a new conversation."""
    for line in describe(loaded):
        console.print(line, style="bold red" if line.startswith("WARNING") else "dim", markup=False)
    console.print(f"{RESET_COMMAND} starts over, /exit or Ctrl-D leaves.", style="dim")
    history: Messages = [{"role": "system", "content": system_prompt}]
    while True:
        try:
            question = console.input("[bold cyan]you>[/] ").strip()
        except EOFError:
            console.print()
            return
        if question in EXIT_COMMANDS:
            return
        if question == RESET_COMMAND:
            history = history[:1]
            console.print("(new conversation)", style="dim")
            continue
        if not question:
            continue
        history.append({"role": "user", "content": question})
        console.print("model> ", style="bold green", end="")
        answer = stream_reply(loaded, history, decoding, ReplyPrinter(console, think))
        history.append({"role": "assistant", "content": answer})
