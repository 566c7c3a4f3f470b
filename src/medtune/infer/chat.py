"""`medtune chat`: a multi-turn console chat that streams the reply, its reasoning dimmed or hidden.

Only the answers go back into the history, as Qwen3's chat template does with earlier turns: the model
never re-reads its own past reasoning.
"""

from __future__ import annotations

from threading import Thread
from typing import Literal

from rich.console import Console
from transformers import TextIteratorStreamer

from medtune.infer.generation import THINK_END, THINK_START, Decoding, Messages, decode_reply, prompt_text
from medtune.infer.runs import InferenceModel, describe

ThinkMode = Literal["show", "hide"]
EXIT_COMMANDS = {"/exit", "/quit"}
RESET_COMMAND = "/reset"


class ReplyPrinter:
    """Prints a reply as it streams in: the think block dimmed (or one `thinking…` line), then the answer.

    The text so far is split into its think and answer parts on every piece; both parts only ever grow,
    so printing what is new in each is enough. `<think>` and `</think>` are single tokens, so a tag never
    arrives split across two pieces.
    """

    def __init__(self, console: Console, think: ThinkMode) -> None:
        self.console = console
        self.think = think
        self.text = ""
        self.printed = {"think": 0, "answer": 0}

    def feed(self, piece: str) -> None:
        self.text += piece
        for part, text in zip(("think", "answer"), self._parts()):
            new = text[self.printed[part] :]
            if new:
                self._print(part, new)
                self.printed[part] = len(text)

    def _parts(self) -> tuple[str, str]:
        """(think, answer) of the text so far, without the newlines the template puts after each tag."""
        body = self.text.lstrip()
        if not body.startswith(THINK_START):
            return "", body
        think, closed, answer = body[len(THINK_START) :].partition(THINK_END)
        return think.lstrip("\n"), answer.lstrip("\n") if closed else ""

    def _print(self, part: str, text: str) -> None:
        if part == "think" and self.think == "hide":
            if not self.printed["think"]:
                self.console.print("thinking…", style="dim italic")
            return
        if part == "answer" and not self.printed["answer"] and self.printed["think"] and self.think == "show":
            self.console.print()
        self.console.print(text, style="dim" if part == "think" else "", end="", markup=False, highlight=False)


def stream_reply(loaded: InferenceModel, messages: Messages, decoding: Decoding, printer: ReplyPrinter) -> str:
    """Generate one reply in a thread while printing it; return the answer (what the history keeps)."""
    tokenizer = loaded.tokenizer
    inputs = tokenizer(prompt_text(tokenizer, messages), return_tensors="pt", add_special_tokens=False).to(loaded.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    generated: dict = {}

    def work() -> None:
        try:
            generated["ids"] = loaded.model.generate(**inputs, generation_config=decoding.generation_config(tokenizer), streamer=streamer)
        except BaseException as err:  # ending the stream unblocks the reading loop, which re-raises it
            generated["error"] = err
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    for piece in streamer:
        printer.feed(piece)
    thread.join()
    if "error" in generated:
        raise generated["error"]
    reply = decode_reply(tokenizer, generated["ids"][0, inputs["input_ids"].shape[1] :].tolist())
    printer.console.print()
    if reply.finish_reason == "length":
        printer.console.print(f"[cut at --max-new-tokens {decoding.max_new_tokens}]", style="yellow", markup=False)
    return reply.answer


def chat_loop(loaded: InferenceModel, system_prompt: str, decoding: Decoding, think: ThinkMode, console: Console) -> None:
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
