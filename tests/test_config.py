"""Config loading: inheritance, overrides, strict validation, and every shipped config."""

from pathlib import Path

import pytest

from medtune.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("v*.yaml")), ids=lambda p: p.name)
def test_every_shipped_version_config_loads(path):
    cfg = load_config(path)
    assert cfg.run_name == path.stem


def test_reference_values_and_inheritance():
    v1, v2, v3 = (load_config(CONFIGS / f"v{i}.yaml") for i in (1, 2, 3))
    assert v1.model.name_or_path == "Qwen/Qwen3-1.7B"
    assert (v1.lora.r, v1.lora.alpha, v1.lora.dropout) == (64, 16, 0.05)
    assert len(v1.lora.target_modules) == 7 and v1.quant.mode == "nf4" and v1.quant.double_quant
    assert (v1.train.lr, v1.train.max_grad_norm, v1.train.max_steps, v1.train.samples_per_step()) == (
        2e-4,
        0.3,
        400,
        16,
    )
    assert (v1.train.schedule, v1.train.warmup_ratio) == ("linear", 0.0)
    assert (v2.train.schedule, v2.train.warmup_ratio, v2.lora.dropout) == ("cosine", 0.1, 0.1)
    assert v2.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert v2.lora.r == 64 and v2.train.lr == 2e-4  # inherited, not copied
    assert v3.augment.enabled and v3.augment.probability == 0.1 and v3.train.schedule == "cosine"


def test_overlay_and_set_override_order():
    cfg = load_config(
        CONFIGS / "v2.yaml",
        ["train.max_steps=7", "lora.target_modules=[q_proj,v_proj]"],
        overlays=[CONFIGS / "tiny.yaml"],
    )
    assert (
        cfg.model.name_or_path == "tiny"
        and cfg.train.max_steps == 7
        and cfg.lora.target_modules == ["q_proj", "v_proj"]
    )
    assert cfg.train.schedule == "cosine"


def test_unknown_keys_suggest_and_all_errors_reported_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: base: .*missing\.yaml not found"):
        load_config(bad)
    bad.write_text("train:\n  lrate: 1\n  max_steps: -3\nlora:\n  dropout: 1.5\nmodle: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "train.lrate: unknown key (did you mean `lr`?)" in message
    assert "modle: unknown key (did you mean `model`?)" in message
    assert "train.max_steps" in message and "lora.dropout" in message


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("train.schedule=exponential", "train.schedule"),
        ("quant.mode=int3", "quant.mode"),
        ("train.epochs=2", "exactly one of max_steps and epochs"),
        ("train.warmup_steps=5", "warmup_ratio or warmup_steps"),
        ("augment.terms_per_sample=[3,1]", "terms_per_sample"),
        ("train.lr", "expected key=value"),
        ("speed.packed_row_tokens=1000", r"packed_row_tokens \(1000\) is below data.max_length \(2048\)"),
    ],
)
def test_bad_values_are_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")) as raised:
        load_config(CONFIGS / "v2.yaml", [override])
    assert "got {" not in str(raised.value), "a check across keys names them; the whole section is not echoed"


def test_base_loop_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (  # where the parser stopped, in one line
            "train: [1, 2\n",
            "{config}:2:1: invalid YAML: while parsing a flow sequence: expected ',' or ']', but got '<stream end>'",
        ),
        (  # YAML parsers keep the last of two equal keys: a second `train:` would drop the first one's keys
            "train:\n  lr: 1.0e-4\ndata:\n  max_length: 512\ntrain:\n  max_steps: 10\n",
            "{config}:5:1: invalid YAML: key 'train' written twice (first on line 1)",
        ),
        (  # a missing base names the file that names it
            "base: v9.yaml\n",
            "{config}: base: {folder}/v9.yaml not found (a base is relative to the file that names it)",
        ),
    ],
    ids=["invalid-yaml", "key-written-twice", "missing-base"],
)
def test_a_config_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, text, error):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert str(raised.value) == error.format(config=config, folder=tmp_path)


def test_errors_name_the_set_argument_or_overlay_the_value_came_from(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  warmup_steps: -2\n")
    with pytest.raises(ConfigError) as raised:
        load_config(CONFIGS / "v2.yaml", ["train.lr=-1", "lora.target_modules=[q_proj, 3]"], overlays=[overlay])
    lines = str(raised.value).splitlines()
    assert lines[0] == f"{CONFIGS / 'v2.yaml'}: invalid config:"
    assert any(line.startswith("  train.lr:") and line.endswith("(from --set train.lr=-1)") for line in lines)
    assert any(line.startswith("  train.warmup_steps:") and line.endswith(f"(from {overlay})") for line in lines)
    assert any(
        line.startswith("  lora.target_modules.1:") and "(from --set lora.target_modules=[q_proj, 3])" in line
        for line in lines
    )


def test_errors_from_the_file_itself_and_across_keys_name_their_origins(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(CONFIGS / "v2.yaml", ["train.epochs=2"])
    assert str(raised.value).endswith(
        f"exactly one of max_steps and epochs (from {CONFIGS / 'v1.yaml'}, --set train.epochs=2)"
    )
    own = tmp_path / "own.yaml"
    own.write_text("train:\n  lr: 0\n")
    with pytest.raises(ConfigError) as raised:
        load_config(own)
    assert str(raised.value).endswith("train.lr: Input should be greater than 0 (got 0)"), (
        "the main file is not repeated"
    )


@pytest.mark.parametrize(
    "override,hint",
    [
        ("train.output_dir=out", "train.output_dir: unknown key; output_dir is a top-level key: set `output_dir`"),
        ("data.lr=1e-4", "data.lr: unknown key; lr is a key of `train`: set `train.lr`"),
        ("lora.rr=8", "lora.rr: unknown key (did you mean `r`?)"),
    ],
)
def test_a_key_of_another_section_is_pointed_there(override, hint):
    with pytest.raises(ConfigError) as raised:
        load_config(CONFIGS / "v2.yaml", [override])
    assert hint in str(raised.value) and "did you mean `optimizer`" not in str(raised.value)


def test_set_value_that_is_not_yaml():
    with pytest.raises(ConfigError, match=r"--set 'train.betas=\[0.9,': the value is not valid YAML"):
        load_config(CONFIGS / "v2.yaml", ["train.betas=[0.9,"])


def test_set_value_with_a_control_character_is_one_clear_line():
    with pytest.raises(ConfigError) as raised:
        load_config(CONFIGS / "v2.yaml", ["train.lr=\x07"])
    message = str(raised.value)
    assert message.startswith("--set 'train.lr=\\x07': the value is not valid YAML: unacceptable character #x0007")
    assert "\n" not in message


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("data.encoding=klingon", "unknown text encoding 'klingon'"),
        ("data.encoding=base64", "unknown text encoding 'base64'"),
        ("data.columns={question: ''}", "columns.question must name a column"),
        ("data.think=maybe", "data.think"),
    ],
)
def test_bad_data_settings(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(CONFIGS / "v2.yaml", [override])


def test_columns_need_the_qta_format_and_encodings_are_normalised():
    with pytest.raises(
        ConfigError, match="columns name the question/think/answer fields, so format must be auto or qta"
    ):
        load_config(CONFIGS / "v2.yaml", ["data.columns={question: ask}", "data.format=alpaca"])
    cfg = load_config(CONFIGS / "v2.yaml", ["data.columns={question: [title, ask]}", "data.encoding=GB18030"])
    assert cfg.data.columns == {"question": ["title", "ask"]} and cfg.data.encoding == "gb18030"
