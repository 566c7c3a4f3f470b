"""Prompting and batched generation, shared by chat, generate and eval (decoding settings: `infer.decoding`).

Prompts come from the tokenizer's own chat template (as in training, `data.render`), ending with the
`<|im_start|>assistant\\n` header; the model writes `<think>…</think>` itself. Generation stops at
`<|im_end|>`, the token training taught the model to end its turn with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from medtune.data.reply import THINK_START, ReplyParts, split_reply
from medtune.infer.decoding import Decoding, turn_end_id

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Reply:
    """One generated assistant turn, split into its think block and answer."""

    text: str
    """Everything generated before `<|im_end|>`, special tokens left out, after the think block the prompt opened
    (`opened_think`), if it opened one."""
    finish_reason: str
    """`stop`: the model ended its turn with <|im_end|>; `length`: cut at max_new_tokens."""
    new_tokens: int
    """Tokens generated, the closing <|im_end|> included."""

    @property
    def parts(self) -> ReplyParts:
        return split_reply(self.text)

    @property
    def think(self) -> str:
        return self.parts.think

    @property
    def answer(self) -> str:
        return self.parts.answer


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The chat-template prompt up to the assistant header. Earlier assistant turns are rendered without
    their think block (by the Qwen3 template, and because callers keep only answers in the history)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def opened_think(prompt: str) -> str:
    """The think block the prompt ends by opening (`<think>\\n`), or "" when it opens none.

    Templates of thinking-only models (Qwen3-*-Thinking-2507) open it for the model, which then writes
    `reasoning</think>answer`: with the opening put back in front, a reply reads as think from its first token,
    streamed or cut at max_new_tokens, not only once `</think>` comes.
    """
    stripped = prompt.rstrip()
    return prompt[len(stripped) - len(THINK_START) :] if stripped.endswith(THINK_START) else ""


def decode_reply(tokenizer: PreTrainedTokenizerBase, new_ids: list[int], opened: str = "") -> Reply:
    """Cut the generated ids at the first <|im_end|> (padding follows it in a batch); `opened` is the think block the
    prompt opened (`opened_think`)."""
    stop = turn_end_id(tokenizer)
    if stop in new_ids:
        kept, reason = new_ids[: new_ids.index(stop)], "stop"
    else:
        kept, reason = new_ids, "length"
    return Reply(opened + tokenizer.decode(kept, skip_special_tokens=True), reason, len(kept) + (reason == "stop"))


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    decoding: Decoding,
    batch_size: int,
    on_batch_done: Callable[[int], None] | None = None,
) -> list[Reply]:
    """One reply per conversation, `batch_size` prompts at a time, left-padded so every row ends at the
    assistant header and the new tokens line up. `on_batch_done(n)` is called with each batch's size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    config = decoding.generation_config(tokenizer)
    replies: list[Reply] = []
    for start in range(0, len(conversations), batch_size):
        prompts = [prompt_text(tokenizer, messages) for messages in conversations[start : start + batch_size]]
        inputs = tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(device)
        output = model.generate(**inputs, generation_config=config)
        new_ids = output[:, inputs["input_ids"].shape[1] :].tolist()  # device sync, once per batch
        replies += [decode_reply(tokenizer, ids, opened_think(prompt)) for prompt, ids in zip(prompts, new_ids)]
        if on_batch_done is not None:
            on_batch_done(len(prompts))
    return replies
