"""`medtune chat`, `generate`, `eval`, `merge`, `export` and `serve`: using a fine-tuned model.

Heavy modules (torch, transformers) are imported inside each command, so `medtune --help` stays fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from medtune.cli.options import BatchSizeOpt, CheckpointOpt, GreedyOpt, MaxNewTokensOpt, RunArg
from medtune.cli.tables import columns_table, flatten
from medtune.infer.decoding import Decoding


class ThinkDisplay(str, Enum):
    show = "show"
    hide = "hide"


def chat(
    run: RunArg,
    checkpoint: CheckpointOpt = None,
    think: Annotated[
        ThinkDisplay, typer.Option("--think", help="Show the reasoning dimmed, or hide it.")
    ] = ThinkDisplay.show,
    greedy: GreedyOpt = False,
    max_new_tokens: MaxNewTokensOpt = Decoding.max_new_tokens,
    system: Annotated[
        str | None,
        typer.Option("--system", metavar="TEXT", help="System prompt; default: the one the run trained with."),
    ] = None,
) -> None:
    """Chat with a fine-tuned model in the console, reply streamed token by token."""
    from rich.console import Console

    from medtune.infer.chat import chat_loop
    from medtune.infer.runs import load_for_inference, resolve_run

    loaded = load_for_inference(resolve_run(run, checkpoint))
    system_prompt = system if system is not None else loaded.run.config.data.system_prompt
    chat_loop(loaded, system_prompt, Decoding(greedy=greedy, max_new_tokens=max_new_tokens), think.value, Console())


def generate(
    run: RunArg,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            show_default=False,
            help="Questions: a .jsonl, .json, .csv, .tsv or .parquet file in any medtune format, read with the run's "
            "data settings; question/think/answer rows may hold only `question`.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            show_default=False,
            help="Answers JSONL: source, question, think, answer, finish_reason, new_tokens.",
        ),
    ],
    checkpoint: CheckpointOpt = None,
    batch_size: BatchSizeOpt = 8,
    max_new_tokens: MaxNewTokensOpt = Decoding.max_new_tokens,
    greedy: GreedyOpt = False,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Sampling seed, for repeatable answers.")] = 0,
) -> None:
    """Answer every question of a file in batches; think and answer are kept apart."""
    from transformers import set_seed

    from medtune.infer.generate import OutputError, answer_rows, check_output, read_questions, write_jsonl
    from medtune.infer.runs import load_for_inference, resolve_run

    adapter_run = resolve_run(run, checkpoint)
    questions = read_questions(input_file, adapter_run.config.data)  # bad input stops here, before the model loads
    try:
        check_output(output, input_file)
    except OutputError as err:
        raise typer.BadParameter(str(err), param_hint="--output") from None
    loaded = load_for_inference(adapter_run)
    set_seed(seed)
    rows = answer_rows(questions, loaded, Decoding(greedy=greedy, max_new_tokens=max_new_tokens), batch_size)
    write_jsonl(output, rows)
    cut = sum(row["finish_reason"] == "length" for row in rows)
    warning = " — RANDOM WEIGHTS (tiny model): the answers are noise" if adapter_run.random_weights else ""
    typer.echo(f"{len(rows)} answers written to {output} ({cut} cut at --max-new-tokens){warning}")


def eval_command(
    run: RunArg,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            metavar="FILE|medtune:NAME",
            help="Rows with reference answers (any medtune format); default: the run's own validation rows.",
        ),
    ] = None,
    checkpoint: CheckpointOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", min=1, help="Evaluate only the first N rows.")
    ] = None,
    max_new_tokens: MaxNewTokensOpt = Decoding.max_new_tokens,
    batch_size: BatchSizeOpt = 8,
    no_adapter: Annotated[
        bool, typer.Option("--no-adapter", help="Evaluate the base model alone (writes eval.base.json).")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Where to write; default RUN/eval.json (eval.step-N.json, eval.base.json; with --data FILE, "
            "eval.<FILE's stem>.json, ...).",
        ),
    ] = None,
) -> None:
    """Eval loss, perplexity, BLEU-4, ROUGE-L, think format, term recall and robustness to masked terms (greedy)."""
    from rich.console import Console

    from medtune.infer.evaluate import check_output, default_output, eval_data, replies_path, run_eval
    from medtune.infer.generate import OutputError
    from medtune.infer.runs import load_for_inference, resolve_run

    adapter_run = resolve_run(run, checkpoint)
    rows = eval_data(adapter_run.config, data, limit)  # bad rows stop here, before the model loads
    target = output or default_output(adapter_run, with_adapter=not no_adapter, data=rows)
    try:
        check_output(target, rows)
    except OutputError as err:
        raise typer.BadParameter(str(err), param_hint="--output") from None
    loaded = load_for_inference(adapter_run, with_adapter=not no_adapter)
    record = run_eval(loaded, rows, Decoding(greedy=True, max_new_tokens=max_new_tokens), batch_size, target)
    Console().print(columns_table(f"eval of {adapter_run.output_dir}", {record["checkpoint"]: flatten(record)}))
    typer.echo(f"written: {target} (every reply: {replies_path(target)})")


def merge(
    run: RunArg,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", show_default=False, help="Folder for the merged bf16 model."),
    ],
    checkpoint: CheckpointOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
) -> None:
    """Merge the adapter into a bf16 copy of the base; the folder loads with transformers and vLLM."""
    from medtune.infer.merge import merge_run
    from medtune.infer.runs import resolve_run

    adapter_run = resolve_run(run, checkpoint)
    merged = merge_run(adapter_run, output, overwrite=overwrite)
    warning = " — RANDOM WEIGHTS (tiny model): for pipeline checks only" if adapter_run.random_weights else ""
    typer.echo(f"merged model written to {merged}{warning}")


class GgufQuant(str, Enum):
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"


class ServeBackend(str, Enum):
    transformers = "transformers"
    vllm = "vllm"


ModelRunArg = Annotated[
    Path,
    typer.Argument(
        help="Run folder (uses its adapter/), an adapter folder, or a merged model folder.",
        metavar="RUN",
        show_default=False,
    ),
]


def export(
    run: ModelRunArg,
    gguf: Annotated[
        Path,
        typer.Option(
            "--gguf",
            "-o",
            metavar="FILE.gguf",
            show_default=False,
            help="The GGUF file to write; FILE.Modelfile (for Ollama) is written beside it.",
        ),
    ],
    quant: Annotated[
        GgufQuant, typer.Option("--quant", help="Weight type: f16, bf16, or q8_0 (8-bit, half the size).")
    ] = GgufQuant.q8_0,
    checkpoint: CheckpointOpt = None,
    system: Annotated[
        str | None,
        typer.Option(
            "--system", metavar="TEXT", help="System prompt for the Modelfile; default: the one the run trained with."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing GGUF file and its Modelfile.")
    ] = False,
) -> None:
    """Write a GGUF for llama.cpp and Ollama (the adapter merged in), with an Ollama Modelfile beside it."""
    from medtune.infer.export import check_gguf_path, load_source
    from medtune.infer.export import export as export_gguf

    check_gguf_path(gguf, overwrite)
    source = load_source(run, checkpoint)
    written, modelfile = export_gguf(source, gguf, quant.value, system, overwrite)
    warning = " — RANDOM WEIGHTS (tiny model): for pipeline checks only" if source.random_weights else ""
    typer.echo(f"GGUF ({quant.value}) written to {written}, Ollama Modelfile to {modelfile}{warning}")


def serve(
    run: ModelRunArg,
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="Address to listen on (0.0.0.0 opens it to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port to listen on.")] = 8000,
    think: Annotated[
        ThinkDisplay, typer.Option("--think", help="Return the reasoning in reasoning_content, or leave it out.")
    ] = ThinkDisplay.show,
    checkpoint: CheckpointOpt = None,
    backend: Annotated[
        ServeBackend,
        typer.Option("--backend", help="transformers, or vllm (installed separately; serves a merged folder)."),
    ] = ServeBackend.transformers,
) -> None:
    """OpenAI-compatible server (/v1/chat/completions, /v1/models) with a chat page at /; one request generates at a
    time."""
    import errno
    import socket

    from medtune.cli.quiet import is_verbose
    from medtune.infer.runs import RANDOM_WEIGHTS_WARNING
    from medtune.infer.serve import bind_socket, create_app, load_served_model, run_server

    try:
        bound = bind_socket(host, port)
    except OSError as err:
        option = "--host" if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL else "--port"
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {err.strerror}", param_hint=option) from None
    with bound:
        served = load_served_model(run, checkpoint, backend.value)
        if served.random_weights:
            typer.secho(f"WARNING: {RANDOM_WEIGHTS_WARNING}", fg=typer.colors.RED, err=True)
        typer.echo(
            f"serving {served.name} on http://{host}:{port}/ (API: http://{host}:{port}/v1, model id {served.name!r})"
        )
        run_server(create_app(served, think.value), bound, verbose=is_verbose())
