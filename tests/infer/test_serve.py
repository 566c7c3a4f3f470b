"""`medtune serve`: the openai client against a real server on 127.0.0.1, bad requests, queueing, the chat page."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import torch
import uvicorn
from openai import BadRequestError, NotFoundError, OpenAI

from medtune.infer.decoding import Decoding
from medtune.infer.export import load_model_folder, run_model_name
from medtune.infer.generation import Messages
from medtune.infer.runs import resolve_run
from medtune.infer.serve import (
    ChatRequest,
    Completion,
    ServedModel,
    TransformersBackend,
    _field_path,
    create_app,
    load_served_model,
)
from medtune.model.tiny import tiny_model_dir

SYSTEM = "你是医生。"


class ScriptedBackend:
    """Replies `<think>\\n想想 Q\\n</think>\\n\\n回答 Q` for question Q, a few characters at a time, and records how
    many generations ran at once and what each was shown."""

    def __init__(self) -> None:
        self.active = self.most_active = 0
        self.seen: list[Messages] = []

    async def generate(
        self, messages: Messages, decoding: Decoding, seed: int | None, done: Completion
    ) -> AsyncIterator[str]:
        self.seen.append(messages)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        question = messages[-1]["content"]
        reply = f"<think>\n想想 {question}\n</think>\n\n回答 {question}"
        try:
            pieces = [reply[i : i + 3] for i in range(0, len(reply), 3)][: decoding.max_new_tokens]
            for piece in pieces:
                await asyncio.sleep(0.002)
                yield piece
        finally:
            self.active -= 1
        done.prompt_tokens, done.completion_tokens = 7, len(pieces)
        done.finish_reason = "length" if len(pieces) < -(-len(reply) // 3) else "stop"

    def prompt_length(self, messages: Messages) -> int:
        return 7


@contextmanager
def serving(served: ServedModel, think: str = "show") -> Iterator[str]:
    """A real uvicorn server on a free loopback port, stopped on exit."""
    server = uvicorn.Server(uvicorn.Config(create_app(served, think), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, ScriptedBackend]]:
    backend = ScriptedBackend()
    with serving(ServedModel(backend, "med", SYSTEM, random_weights=False, max_tokens_limit=4096)) as url:
        yield url, backend


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_reasoning_and_answer_come_apart_streamed_or_not(scripted):
    url, backend = scripted
    openai = client(url)
    reply = openai.chat.completions.create(model="med", messages=[{"role": "user", "content": "头痛"}])
    message = reply.choices[0].message
    assert (message.content, message.model_extra["reasoning_content"]) == ("回答 头痛", "想想 头痛")
    assert reply.choices[0].finish_reason == "stop" and reply.usage.prompt_tokens == 7
    assert backend.seen[-1][0] == {"role": "system", "content": SYSTEM}, "the trained system prompt goes first"

    chunks = list(
        openai.chat.completions.create(
            model="med",
            messages=[{"role": "user", "content": "头痛"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.model_extra.get("reasoning_content") or "" for d in deltas) == "想想 头痛"
    assert "".join(d.content or "" for d in deltas) == "回答 头痛"
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0
    models = openai.models.list().data
    assert [m.id for m in models] == ["med"]


def test_concurrent_requests_are_queued_and_never_interleaved(scripted):
    url, backend = scripted
    openai = client(url)
    questions = [f"问题{i}" for i in range(6)]

    def ask(question: str, stream: bool) -> tuple[str, str]:
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": question}]
        if not stream:
            message = openai.chat.completions.create(model="med", messages=messages).choices[0].message
            return message.model_extra["reasoning_content"], message.content
        deltas = [
            c.choices[0].delta for c in openai.chat.completions.create(model="med", messages=messages, stream=True)
        ]
        return "".join(d.model_extra.get("reasoning_content") or "" for d in deltas), "".join(
            d.content or "" for d in deltas
        )

    backend.most_active = 0
    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(ask, questions, [i % 2 == 0 for i in range(len(questions))]))
    assert replies == [(f"想想 {q}", f"回答 {q}") for q in questions]
    assert backend.most_active == 1, "one generation at a time"


BAD_REQUESTS = [
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature", "less than or equal to 2"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p", "greater than 0"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    (
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
        "max_tokens",
        "more than the model's context (4096 tokens)",
    ),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n", "only 1 is supported"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": 2**64}, "seed", "less than or equal to"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["\n"]}, "stop", "stop strings are not supported"),
    ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {}}, "logit_bias", "unknown or unsupported field"),
    ({"messages": [{"role": "doctor", "content": "x"}]}, "messages[0].role", "'system', 'user' or 'assistant'"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content",
        "only text parts",
    ),
    (
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        "messages",
        "last message must be a user message",
    ),
    ({"messages": []}, "messages", "at least 1 item"),
    ({}, "messages", "Field required"),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD_REQUESTS, ids=[b[1] + "-" + b[2][:12] for b in BAD_REQUESTS])
def test_bad_requests_get_a_400_naming_the_field(body, param, message, scripted):
    url, _ = scripted
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"


def test_the_server_keeps_serving_after_bad_requests(scripted):
    url, _ = scripted
    broken = httpx.post(
        f"{url}/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    untyped = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": []}', timeout=30)  # no Content-Type
    assert untyped.status_code == 400 and untyped.json()["error"]["message"] == (
        "the request body must be a JSON object, sent with Content-Type: application/json"
    )
    with pytest.raises(NotFoundError, match="'gpt-4' is not served here"):
        client(url).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(BadRequestError, match="temperature"):
        client(url).chat.completions.create(model="med", messages=[{"role": "user", "content": "x"}], temperature=-1)
    reply = client(url).chat.completions.create(
        model="med", messages=[{"role": "user", "content": "还在吗"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert httpx.get(f"{url}/v1/chat/completions", timeout=30).json()["error"]["message"] == "Method Not Allowed"


def test_think_hide_leaves_the_reasoning_out():
    with serving(ServedModel(ScriptedBackend(), "med", None, False, 4096), think="hide") as url:
        message = (
            client(url)
            .chat.completions.create(model="med", messages=[{"role": "user", "content": "q"}])
            .choices[0]
            .message
        )
        deltas = [
            c.choices[0].delta
            for c in client(url).chat.completions.create(
                model="med", messages=[{"role": "user", "content": "q"}], stream=True
            )
        ]
    assert message.content == "回答 q" and "reasoning_content" not in (message.model_extra or {})
    assert (
        not any((d.model_extra or {}).get("reasoning_content") for d in deltas)
        and "".join(d.content or "" for d in deltas) == "回答 q"
    )


def test_a_prompt_and_reply_longer_than_the_context_get_a_400_not_a_reply():
    """As vLLM: the prompt's tokens and max_tokens must fit the model's context, and an unset max_tokens is what is
    left of it; a model fed past its context (its position embeddings) writes noise without saying so."""
    source = load_model_folder(tiny_model_dir())
    served = ServedModel(TransformersBackend(source.model, source.tokenizer), "tiny", None, True, max_tokens_limit=64)
    question = [{"role": "user", "content": "头痛" * 20}]
    prompt_tokens = len(source.tokenizer.apply_chat_template(question, add_generation_prompt=True)["input_ids"])
    with serving(served) as url:
        ask = lambda **body: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)  # noqa: E731
        too_long = ask(messages=[{"role": "user", "content": "头痛" * 100}], max_tokens=1)
        too_much = ask(messages=question, max_tokens=64 - prompt_tokens + 1, stream=True)
        rest = ask(messages=question, temperature=0)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "messages", too_long.text
    assert "leave no room for a reply in the model's context (64 tokens)" in too_long.json()["error"]["message"]
    assert too_much.status_code == 400 and too_much.json()["error"]["param"] == "max_tokens", too_much.text
    assert f"{prompt_tokens} prompt tokens + {64 - prompt_tokens + 1} new tokens" in too_much.json()["error"]["message"]
    assert rest.status_code == 200 and rest.json()["usage"]["total_tokens"] <= 64, rest.text


class WritingModel(torch.nn.Module):
    """Writes the same reply ids whatever it is asked, through the streamer as `generate` does, up to max_new_tokens."""

    def __init__(self, reply_ids: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.reply_ids = reply_ids

    def generate(self, input_ids, attention_mask, generation_config, streamer, stopping_criteria):  # noqa: ANN001
        reply = self.reply_ids[: generation_config.max_new_tokens]
        streamer.put(input_ids)  # the prompt, which the streamer skips
        for token in reply:
            streamer.put(torch.tensor([token]))
        streamer.end()
        return torch.cat([input_ids, torch.tensor([reply])], dim=1)


def test_a_think_block_the_prompt_opened_comes_back_as_reasoning_streamed_or_not():
    """Templates of thinking-only models (Qwen3-*-Thinking-2507) end the prompt with `<think>\n`, so the model writes
    `reasoning</think>answer`. Streamed, that reasoning went out as the answer before `</think>` came, and the answer
    after it never did; a reply cut inside the reasoning came back as the answer."""
    tokenizer = load_model_folder(tiny_model_dir()).tokenizer
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    reply_ids = tokenizer("想想头痛\n</think>\n\n回答头痛", add_special_tokens=False)["input_ids"]
    model = WritingModel(reply_ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    served = ServedModel(TransformersBackend(model, tokenizer), "med", None, False, max_tokens_limit=4096)
    ask = dict(model="med", messages=[{"role": "user", "content": "头痛"}])
    with serving(served) as url:
        message = client(url).chat.completions.create(**ask).choices[0].message
        deltas = [c.choices[0].delta for c in client(url).chat.completions.create(**ask, stream=True)]
        cut = client(url).chat.completions.create(**ask, max_tokens=2).choices[0]
    assert (message.model_extra["reasoning_content"], message.content) == ("想想头痛", "回答头痛")
    streamed = (
        "".join(d.model_extra.get("reasoning_content") or "" for d in deltas),
        "".join(d.content or "" for d in deltas),
    )
    assert streamed == ("想想头痛", "回答头痛")
    assert cut.finish_reason == "length" and cut.message.content == "" and cut.message.model_extra["reasoning_content"]


def test_request_fields_map_onto_decoding():
    def request(**fields) -> ChatRequest:
        return ChatRequest(
            messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            **fields,
        )

    assert request().decoding(8192, 10) == Decoding()
    assert request(temperature=0, max_tokens=5).decoding(8192, 10) == Decoding(greedy=True, max_new_tokens=5)
    assert request(temperature=1.0, top_k=5, max_completion_tokens=9).decoding(8192, 10) == Decoding(
        temperature=1.0, top_k=5, max_new_tokens=9
    )
    assert request().decoding(100, 30).max_new_tokens == 70, "what the prompt leaves of the context"
    assert request(presence_penalty=0.0, n=1).messages[0].content == "ab"
    assert _field_path(("body", "messages", 1, "role")) == "messages[1].role"


def test_real_tiny_model_served_with_the_openai_client():
    """The transformers backend on a merged folder (the tiny model): greedy replies are the same whether asked
    alone or three at once, so queued requests never share or mix their output."""
    served = load_served_model(tiny_model_dir())
    assert served.random_weights
    with serving(served) as url:
        openai = client(url)
        ask = dict(
            model=served.name, messages=[{"role": "user", "content": "头痛怎么办？"}], max_tokens=6, temperature=0
        )
        alone = openai.chat.completions.create(**ask)
        assert alone.choices[0].finish_reason == "length" and alone.usage.completion_tokens == 6
        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(lambda _: openai.chat.completions.create(**ask), range(3)))
        streamed = list(openai.chat.completions.create(**ask, stream=True))
    text = lambda m: (m.model_extra.get("reasoning_content") or "") + (m.content or "")  # noqa: E731
    assert all(text(r.choices[0].message) == text(alone.choices[0].message) for r in together)
    assert "".join(text(c.choices[0].delta) for c in streamed) == text(alone.choices[0].message)
    assert streamed[-1].choices[0].finish_reason == "length"


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_chat_page_in_headless_chromium(scripted, tmp_path):
    """The page asks the question of its `?q=` link, streams the reply, folds the thinking and shows the answer."""
    url, _ = scripted
    page = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{url}/?q=发烧",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert '<div class="turn user">发烧</div>' in page
    assert '<details><summary>thinking…</summary><div class="reasoning">想想 发烧</div></details>' in page, page[-2000:]
    assert '<div class="answer">回答 发烧</div>' in page and 'data-done="true"' in page and ">med<" in page


def test_serve_command_refuses_what_does_not_fit_before_loading(cli_app, runner, tmp_path):
    merged = runner.invoke(cli_app, ["serve", str(tiny_model_dir()), "--checkpoint", "1"])
    assert (
        merged.exit_code == 6 and "--checkpoint applies to a run folder; this is a merged model folder" in merged.output
    )
    run_folder = runner.invoke(cli_app, ["serve", str(tmp_path), "--backend", "vllm"])
    assert run_folder.exit_code == 6 and "--backend vllm serves a merged folder" in run_folder.output
    missing = runner.invoke(cli_app, ["serve", str(tmp_path / "nope")])
    assert missing.exit_code == 6 and "no such run folder" in missing.output
    assert importlib.util.find_spec("vllm") is None, "this test runs where vLLM is not installed"
    no_vllm = runner.invoke(cli_app, ["serve", str(tiny_model_dir()), "--backend", "vllm"])
    assert no_vllm.exit_code == 8 and "vLLM is not installed (pip install vllm" in no_vllm.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = runner.invoke(cli_app, ["serve", str(tmp_path / "nope"), "--port", str(port)])
    assert in_use.exit_code == 2 and in_use.output.strip().endswith(
        f" serve: --port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ), "refused before RUN is even looked at"
    assert len(in_use.output.strip().splitlines()) == 1


def test_the_model_id_of_a_checkpoint_is_the_run_and_its_step(v1_run):
    assert run_model_name(resolve_run(v1_run)) == "v1"
    assert run_model_name(resolve_run(v1_run, checkpoint=1)) == "v1-step-1"
    assert run_model_name(resolve_run(v1_run / "checkpoints" / "step-000001")) == "step-000001"


def test_serve_prints_only_its_own_line_without_verbose(tmp_path):
    """uvicorn's start, access and shutdown records are log records below errors: hidden, as every library's."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "medtune.cli", "serve", str(tiny_model_dir()), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    name = tiny_model_dir().name
    assert out.splitlines() == [
        f"serving {name} on http://127.0.0.1:{port}/ (API: http://127.0.0.1:{port}/v1, model id {name!r})"
    ]
    assert "WARNING: random weights" in err and "Uvicorn" not in err and "GET /health" not in err, err


def test_a_client_leaving_mid_stream_frees_the_model(scripted):
    url, backend = scripted
    long_question = "长" * 3000  # a reply of ~2000 pieces: seconds of streaming
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        timeout=30,
        json={"messages": [{"role": "user", "content": long_question}], "stream": True},
    ) as response:
        next(response.iter_lines())  # the first event, then the client goes away
    started = time.monotonic()
    reply = client(url).chat.completions.create(model="med", messages=[{"role": "user", "content": "下一个"}])
    assert reply.choices[0].message.content == "回答 下一个"
    assert time.monotonic() - started < 3, "the abandoned reply was generated to the end first"
