"""model/load.py: a tied model's embeddings trained as two copies (`lora.tied_embeddings: untie`) are said once, in
medtune's own line, not again in PEFT's warning, when the adapter is made and when it is loaded for chat or merge."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from tests.conftest import CONFIGS

from medtune.config import ModelConfig, QuantConfig, load_config
from medtune.model.load import apply_lora, embeddings_tied, load_adapter, load_base_model

CPU = torch.device("cpu")
PEFT_TIED_WARNING = "tie_word_embeddings=True"


def tiny_base():
    return load_base_model(ModelConfig(name_or_path="tiny"), QuantConfig(), CPU).model


def peft_tied_warnings(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make()
    return result, [str(w.message) for w in caught if PEFT_TIED_WARNING in str(w.message)]


@pytest.mark.parametrize("choice", ["untie", "keep"])
def test_trained_tied_embeddings_are_said_once(choice, tmp_path, caplog):
    cfg = load_config(CONFIGS / "v2.yaml", [f"lora.tied_embeddings={choice}"], overlays=[CONFIGS / "tiny.yaml"])
    base = tiny_base()
    assert embeddings_tied(base)
    with caplog.at_level(logging.WARNING, logger="medtune.model.load"):
        model, said = peft_tied_warnings(lambda: apply_lora(base, cfg.lora))
    assert said == []
    assert ("training them as two untied copies" in caplog.text) == (choice == "untie")
    model.save_pretrained(tmp_path / "adapter")
    loaded, said = peft_tied_warnings(lambda: load_adapter(tiny_base(), tmp_path / "adapter"))
    assert said == []
    assert embeddings_tied(loaded.get_base_model()) == (choice == "keep")


def test_loading_and_setting_up_a_run_warns_nothing_from_the_libraries():
    """Base model, LoRA and the speed levers as the recipe applies them, with activation checkpointing on a share of
    the layers: no deprecation or other warning reaches the user (transformers 5.2x renamed gradient checkpointing,
    and PEFT still reads the old name)."""
    from medtune.model.speed import apply_speed

    cfg = load_config(CONFIGS / "v1.yaml", ["speed.checkpoint_fraction=0.5"], overlays=[CONFIGS / "tiny.yaml"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = apply_lora(tiny_base(), cfg.lora)
        plan = apply_speed(model, cfg.speed, CPU, packing=True, gradient_checkpointing=True)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    layers = model.get_base_model().model.layers
    assert plan.checkpointed_layers == len(layers) // 2
    assert [layer.gradient_checkpointing for layer in layers] == [i < len(layers) // 2 for i in range(len(layers))]
