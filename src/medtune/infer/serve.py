"""`medtune serve`: an OpenAI-compatible chat server that keeps the model's thinking apart from its answer.

`/v1/chat/completions` (streamed or not) returns the reasoning in `reasoning_content` and the answer in
`content`, as vLLM's and DeepSeek's reasoning APIs do (`--think hide` leaves the reasoning out);
`/v1/models` lists the one model served; `/` is a small chat page. With transformers, one request generates
at a time: the others wait in arrival order (an asyncio lock is first come, first served), so no two
replies share a forward pass and none is interleaved with another; vLLM batches them in its engine. Bad requests
get a 4xx with an OpenAI-style JSON error naming the field, and the server keeps serving.

The transformers backend serves a run (its base loaded as trained, 4-bit or not, plus the adapter) or a
merged folder; with vLLM installed, `--backend vllm` serves a merged folder through vLLM's engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException

from medtune.data.reply import THINK_END, THINK_START, TURN_END, split_reply
from medtune.infer.decoding import Decoding, turn_end_id
from medtune.infer.generation import Messages, opened_think, prompt_text
from medtune.model.tiny import is_random_weights

ThinkMode = Literal["show", "hide"]
MAX_TOKENS_DEFAULT = Decoding().max_new_tokens
CHAT_PAGE = "chat.html"


class ServeError(RuntimeError):
    """The server cannot start with what it was given; the message says why."""


class BackendNotInstalledError(RuntimeError):
    """The backend asked for is an optional package that is not installed; the message says what to install."""


class ApiError(Exception):
    """A request the server refuses: an HTTP status and one line naming the field at fault."""

    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


# ---------------------------------------------------------------- the request, as OpenAI's API defines it


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    reasoning_content: str | None = None
    """Accepted on assistant turns (clients echo it back) and not shown to the model: past reasoning is
    dropped from the history, as the Qwen3 chat template does."""
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_joined(cls, content: Any) -> Any:
        """OpenAI's list-of-parts form, joined: text is the only kind of part this model reads."""
        if not isinstance(content, list):
            return content
        if not all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in content
        ):
            raise ValueError('only text parts ({"type": "text", "text": "..."}) are supported')
        return "".join(part["text"] for part in content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The chat-completions fields medtune honours. Unknown fields are refused rather than ignored, and
    fields it cannot honour (n > 1, penalties, stop strings, tools) are refused by name."""

    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    """OpenAI's int64; torch's generator refuses more (a 500 otherwise)."""
    n: Literal[1] = 1
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    stop: None = None
    user: str | None = None

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be a user message (the server writes the assistant turn)")
        return messages

    @model_validator(mode="after")
    def _one_length_limit(self) -> ChatRequest:
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens disagree; give one")
        return self

    def decoding(self, context: int, prompt_tokens: int) -> Decoding:
        """Decoding settings; unset fields keep medtune's defaults (Qwen3 thinking mode), temperature 0 is greedy.

        The prompt and the reply must fit the model's context, as vLLM requires (past its position embeddings a model
        writes noise without saying so); an unset max_tokens is medtune's default or what the prompt leaves, if less.
        """
        room = context - prompt_tokens
        if room < 1:
            raise ApiError(
                400,
                f"messages: the prompt's {prompt_tokens} tokens leave no room for a reply in the model's context "
                f"({context} tokens)",
                "messages",
            )
        requested = self.max_completion_tokens or self.max_tokens
        if requested is not None and requested > room:
            raise ApiError(
                400,
                f"max_tokens: {prompt_tokens} prompt tokens + {requested} new tokens is more than the model's context "
                f"({context} tokens)",
                "max_tokens",
            )
        limit = requested or min(MAX_TOKENS_DEFAULT, room)
        if self.temperature == 0:
            return Decoding(greedy=True, max_new_tokens=limit)
        default = Decoding()
        return Decoding(
            temperature=default.temperature if self.temperature is None else self.temperature,
            top_p=default.top_p if self.top_p is None else self.top_p,
            top_k=default.top_k if self.top_k is None else self.top_k,
            min_p=default.min_p if self.min_p is None else self.min_p,
            max_new_tokens=limit,
        )


# ---------------------------------------------------------------- backends


@dataclass
class Completion:
    """What a backend reports about one generation, filled in as it runs."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    """`stop`: the model ended its turn; `length`: cut at max_tokens."""


class Backend(Protocol):
    def prompt_length(self, messages: Messages) -> int:
        """Tokens of the prompt `generate` would start from, checked against the context before generating."""
        ...

    def generate(
        self, messages: Messages, decoding: Decoding, seed: int | None, done: Completion
    ) -> AsyncIterator[str]:
        """Text pieces of the reply as they come (special tokens left out), after the think block the prompt opened
        (`opened_think`), if any; fills `done` by the end."""
        ...


def _prompt_length(tokenizer: Any, messages: Messages) -> int:
    return len(tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"])


class TransformersBackend:
    """`model.generate` in a worker thread, its text streamed back through a TextIteratorStreamer."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def prompt_length(self, messages: Messages) -> int:
        return _prompt_length(self.tokenizer, messages)

    async def generate(
        self, messages: Messages, decoding: Decoding, seed: int | None, done: Completion
    ) -> AsyncIterator[str]:
        import torch
        from transformers import StoppingCriteria, TextIteratorStreamer

        tokenizer = self.tokenizer
        device = next(self.model.parameters()).device
        prompt = prompt_text(tokenizer, messages)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        prompt_length = inputs["input_ids"].shape[1]
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()

        class StopWhenCancelled(StoppingCriteria):
            """The client went away: stop at the next token instead of generating for nobody."""

            def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001 - transformers' signature
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

        result: dict[str, Any] = {}

        def work() -> None:
            try:
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.no_grad():
                    result["ids"] = self.model.generate(
                        **inputs,
                        generation_config=decoding.generation_config(tokenizer),
                        streamer=streamer,
                        stopping_criteria=[StopWhenCancelled()],
                    )
            except BaseException as err:  # ending the stream unblocks the reader, which re-raises it
                result["error"] = err
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        pieces = iter(streamer)
        try:
            if opened := opened_think(prompt):  # the reply is think from its first token (`opened_think`)
                yield opened
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                if piece:
                    yield piece
        finally:
            cancelled.set()
            await asyncio.to_thread(thread.join)
        if "error" in result:
            raise result["error"]
        new_ids = result["ids"][0, prompt_length:].tolist()
        stop = turn_end_id(tokenizer)
        done.prompt_tokens = prompt_length
        done.finish_reason = "stop" if stop in new_ids else "length"
        done.completion_tokens = new_ids.index(stop) + 1 if stop in new_ids else len(new_ids)


class VllmBackend:
    """vLLM's async engine on a merged folder: its own batching and paged KV cache, the same API on top."""

    batches = True
    """Requests go to the engine together (it batches them without mixing their outputs), not one at a time."""

    def __init__(self, model_dir: Path) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(model=str(model_dir)))
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def prompt_length(self, messages: Messages) -> int:
        return _prompt_length(self.tokenizer, messages)

    async def generate(
        self, messages: Messages, decoding: Decoding, seed: int | None, done: Completion
    ) -> AsyncIterator[str]:
        from vllm import SamplingParams

        sampling = (
            dict(temperature=0.0)
            if decoding.greedy
            else dict(
                temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k, min_p=decoding.min_p
            )
        )
        params = SamplingParams(
            max_tokens=decoding.max_new_tokens,
            stop_token_ids=[turn_end_id(self.tokenizer)],
            skip_special_tokens=True,
            seed=seed,
            **sampling,
        )
        prompt = prompt_text(self.tokenizer, messages)
        if opened := opened_think(prompt):  # the reply is think from its first token (`opened_think`)
            yield opened
        sent = ""
        async for output in self.engine.generate(prompt, params, uuid.uuid4().hex):
            text = output.outputs[0].text  # the whole reply so far
            if text[len(sent) :]:
                yield text[len(sent) :]
                sent = text
            done.prompt_tokens = len(output.prompt_token_ids or [])
            done.completion_tokens = len(output.outputs[0].token_ids)
            done.finish_reason = "length" if output.outputs[0].finish_reason == "length" else "stop"


# ---------------------------------------------------------------- the app


@dataclass
class ServedModel:
    backend: Backend
    name: str
    """The id clients pass as `model`: the run (or merged folder) name."""
    system_prompt: str | None
    """Put first when a request has no system message: the model was trained with it on every sample."""
    random_weights: bool
    max_tokens_limit: int
    created: int = field(default_factory=lambda: int(time.time()))


def _error_body(message: str, param: str | None, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _field_path(location: tuple) -> str:
    """`("body", "messages", 1, "role")` -> `messages[1].role`."""
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validation_message(error: dict) -> tuple[str, str | None]:
    location = tuple(error.get("loc", ()))
    param = _field_path(location) or None
    if error.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    if location == ("body",):  # no body, or one FastAPI did not parse as JSON (another Content-Type), or not an object
        return "the request body must be a JSON object, sent with Content-Type: application/json", None
    if error.get("type") == "extra_forbidden":
        return f"{param}: unknown or unsupported field", param
    if error.get("type") == "literal_error" and param in {"n", "presence_penalty", "frequency_penalty"}:
        return f"{param}: only {error['ctx']['expected']} is supported", param
    if error.get("type") == "none_required" and param == "stop":
        return f"stop: stop strings are not supported (the model ends its turn with {TURN_END})", param
    message = error["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


def _partial_tag_length(text: str) -> int:
    """How many trailing characters might be the start of `<think>` / `</think>` still arriving in pieces."""
    return max((n for tag in (THINK_START, THINK_END) for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)


def _chunk(base: dict, delta: dict, finish_reason: str | None = None) -> str:
    payload = {
        **base,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(served: ServedModel, think: ThinkMode = "show") -> FastAPI:
    """The FastAPI app serving one model; generation requests run one at a time in arrival order."""
    app = FastAPI(title="medtune serve", docs_url=None, redoc_url=None)
    lock = asyncio.Lock()

    def turn() -> contextlib.AbstractAsyncContextManager:
        return contextlib.nullcontext() if getattr(served.backend, "batches", False) else lock

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(err.message, err.param, err.kind), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err.errors()[0])
        return JSONResponse(_error_body(message, param, "invalid_request_error"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(_error_body(str(err.detail), None, "invalid_request_error"), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(
            _error_body(f"generation failed: {type(err).__name__}: {err}", None, "server_error"), status_code=500
        )

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return (resources.files("medtune") / "resources" / "serve" / CHAT_PAGE).read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "busy": lock.locked()}

    @app.get("/v1/models")
    async def models() -> dict:
        entry = {
            "id": served.name,
            "object": "model",
            "created": served.created,
            "owned_by": "medtune",
            "max_model_len": served.max_tokens_limit,
            "random_weights": served.random_weights,
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        if request.model is not None and request.model != served.name:
            raise ApiError(
                404,
                f"model: {request.model!r} is not served here; this server serves {served.name!r}",
                "model",
                "not_found_error",
            )
        messages = [{"role": message.role, "content": message.content} for message in request.messages]
        if messages[0]["role"] != "system" and served.system_prompt:
            messages.insert(0, {"role": "system", "content": served.system_prompt})
        decoding = request.decoding(served.max_tokens_limit, served.backend.prompt_length(messages))
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                _stream(messages, decoding, request.seed, base, include_usage), media_type="text/event-stream"
            )
        done = Completion()
        async with turn():
            text = "".join([piece async for piece in served.backend.generate(messages, decoding, request.seed, done)])
        parts = split_reply(text)
        message = {"role": "assistant", "content": parts.answer}
        if think == "show":
            message["reasoning_content"] = parts.think
        usage = {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        }
        return {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason}],
            "usage": usage,
        }

    async def _stream(
        messages: Messages, decoding: Decoding, seed: int | None, base: dict, include_usage: bool
    ) -> AsyncIterator[str]:
        """Server-sent events: the role, then reasoning and answer deltas, the finish reason, usage, [DONE].

        Each delta is what the reply split so far (`split_reply`) adds to its part; that split only ever
        grows (trailing blanks, and a tag still arriving in pieces, wait for the text after them), so the
        deltas add up to the non-streamed reply.
        """
        done = Completion()
        async with turn():
            yield _chunk(base, {"role": "assistant", "content": ""})
            text, sent = "", {"reasoning_content": "", "content": ""}

            def deltas(settled: str) -> Iterator[str]:
                parts = split_reply(settled)
                for key, part in (("reasoning_content", parts.think), ("content", parts.answer)):
                    if (key == "content" or think == "show") and part != sent[key] and part.startswith(sent[key]):
                        yield _chunk(base, {key: part[len(sent[key]) :]})
                        sent[key] = part

            try:
                async for piece in served.backend.generate(messages, decoding, seed, done):
                    text += piece
                    for chunk in deltas(text[: len(text) - _partial_tag_length(text)]):
                        yield chunk
            except Exception as err:  # headers are sent: the error goes into the stream, as OpenAI's does
                error_body = _error_body(f"generation failed: {type(err).__name__}: {err}", None, "server_error")
                yield f"data: {json.dumps(error_body)}\n\n"
                return
            for chunk in deltas(text):
                yield chunk
        yield _chunk(base, {}, done.finish_reason)
        if include_usage:
            usage = {
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
            }
            yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, taken before the model loads so that an address in use fails at once, not after
    minutes of loading; the server then listens on it. Raises OSError as `bind` does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides it
    bound = socket.socket(family, socket.SOCK_STREAM)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
    try:
        bound.bind((host, port))
    except OSError:
        bound.close()
        raise
    return bound


def run_server(app: FastAPI, bound: socket.socket, verbose: bool) -> None:
    """Serve until Ctrl-C. uvicorn's log records (start, one line per request, shutdown) show only with --verbose;
    below errors they are hidden, as every library's are."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="info" if verbose else "error", access_log=verbose))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the server is stopped, as under uvicorn.run
        server.run(sockets=[bound])


def load_served_model(path: Path, checkpoint: int | None = None, backend: str = "transformers") -> ServedModel:
    """RUN as `serve` reads it: a run or adapter folder (base loaded as trained plus the adapter, unmerged),
    or a merged model folder.

    Raises:
        RunNotFoundError: RUN is neither a model folder nor a run medtune can load.
        ServeError: an option does not fit RUN (vLLM on a run folder, --checkpoint on a merged folder).
        BackendNotInstalledError: --backend vllm without vLLM installed.
    """
    from medtune.infer.export import load_model_folder, merge_facts, run_model_name
    from medtune.infer.runs import is_model_folder, load_for_inference, resolve_run

    path = Path(path).expanduser()
    if is_model_folder(path) and checkpoint is not None:
        raise ServeError(f"{path}: --checkpoint applies to a run folder; this is a merged model folder")
    if backend == "vllm":
        if not is_model_folder(path):
            raise ServeError(
                f"{path}: --backend vllm serves a merged folder; run `medtune merge {path} -o MERGED` first"
            )
        if importlib.util.find_spec("vllm") is None:
            raise BackendNotInstalledError(
                "--backend vllm: vLLM is not installed (pip install vllm, on a machine with a GPU)"
            )
        from transformers import AutoConfig

        facts, config = merge_facts(path), AutoConfig.from_pretrained(path)
        random = bool(facts.get("random_weights", is_random_weights(config)))
        return ServedModel(
            VllmBackend(path), path.name, facts.get("system_prompt"), random, config.max_position_embeddings
        )
    if is_model_folder(path):
        source = load_model_folder(path)
        backend_ = TransformersBackend(source.model, source.tokenizer)
        return ServedModel(
            backend_,
            source.name,
            source.system_prompt,
            source.random_weights,
            source.model.config.max_position_embeddings,
        )
    run = resolve_run(path, checkpoint)
    loaded = load_for_inference(run)
    limit = loaded.model.config.max_position_embeddings
    return ServedModel(
        TransformersBackend(loaded.model, loaded.tokenizer),
        run_model_name(run),
        run.config.data.system_prompt,
        run.random_weights,
        limit,
    )
