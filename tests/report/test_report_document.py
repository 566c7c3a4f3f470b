"""The written report: numbers traceable to summary.json, warnings, wording in both languages, escaping, and the
HTML as Chromium renders it."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from string import Formatter
from typing import get_args

import numpy as np
import pytest
from scipy import stats

from medtune.report.build import build_report
from medtune.report.inputs import NoteCode, SourceKind
from medtune.report.settings import LANGUAGES
from medtune.report.wording import WORDING

NUMBER = re.compile(r"(?<![\w.])([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(%?)")


@pytest.fixture(scope="module")
def reports(fabricated, tmp_path_factory):
    built = {}
    for lang in ("en", "zh"):
        out = tmp_path_factory.mktemp(f"report-{lang}")
        summary = build_report(
            [run.folder for run in fabricated], out_dir=out, baseline="v1", steps=[100, 200, 300, 400], lang=lang
        )
        built[lang] = (summary, out)
    return built


def summary_numbers(tree) -> np.ndarray:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            found.extend([node, node * 100, abs(node), abs(node) * 100])

    walk(tree)
    return np.array(sorted(found), dtype=float)


def tolerance(token: str) -> float:
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10 ** (-decimals) * 10 ** int(exponent or 0) * (1 + 1e-9)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_number_in_the_markdown_is_in_summary_json(reports, fabricated, lang):
    summary, out = reports[lang]
    text = (out / "report.md").read_text(encoding="utf-8")
    for run in fabricated:  # the source column holds folder paths, which are not numbers of the report
        text = text.replace(str(run.folder), "")
    known = summary_numbers(summary)
    tokens = NUMBER.findall(text)
    assert len(tokens) > 300
    for number, _percent in tokens:
        value = float(number)
        index = np.searchsorted(known, value)
        nearby = known[max(index - 1, 0) : index + 1]
        assert np.any(np.abs(nearby - value) <= tolerance(number)), f"{number} in report.md is not in summary.json"


def test_markdown_tables_show_the_computed_cells(reports, fabricated):
    _, out = reports["en"]
    text = (out / "report.md").read_text(encoding="utf-8")
    v1 = [run for run in fabricated if run.version == "v1"]
    values = np.array([run.loss[np.argmin(np.abs(run.steps - 300))] for run in v1])
    ci = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert f"| 300 | {values.mean():.4f} ± {ci:.4f} (n=3) |" in text
    assert "Step 100: not logged by v3; nearest logged step 105 used." in text
    for chart in ("loss", "eval_loss", "grad_norm", "learning_rate"):
        assert f"({chart}.png)" in text


def test_random_weights_and_single_run_warnings(reports):
    for lang, marker in (("en", "weights of"), ("zh", "随机权重")):
        summary, out = reports[lang]
        markdown = (out / "report.md").read_text(encoding="utf-8")
        html = (out / "report.html").read_text(encoding="utf-8")
        warning = next(line for line in markdown.splitlines() if line.startswith("> **"))
        assert marker in warning  # the first highlighted line of the report
        assert '<p class="warning">' in html and marker in html
    markdown = (reports["en"][1] / "report.md").read_text(encoding="utf-8")
    assert "v3: one run each. There is no run-to-run noise to test against" in markdown
    assert "--name v1=runs/v1-seed1" in markdown and "`" not in (reports["en"][1] / "report.html").read_text(
        encoding="utf-8"
    )
    noise = reports["en"][0]["noise"]["final_train_loss_sd"]
    assert f"final training loss {noise:.4f}" in markdown


def test_chinese_report_uses_chinese_terms(reports):
    _, out = reports["zh"]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for term in (
        "训练损失",
        "验证损失",
        "梯度稳定性",
        "学习率",
        "预热",
        "余弦衰减",
        "线性衰减",
        "收敛",
        "过拟合风险",
        "稳定性",
        "显著",
    ):
        assert term in markdown, term
    for english in ("Training loss", "Gradient stability", "Insights", "configured schedule"):
        assert english not in markdown


def test_wording_tables_have_the_same_keys_and_fields():
    assert tuple(WORDING) == LANGUAGES
    english, chinese = WORDING["en"], WORDING["zh"]
    assert english.keys() == chinese.keys()
    for key in english:
        fields = {name for _, name, _, _ in Formatter().parse(english[key]) if name}
        assert fields == {name for _, name, _, _ in Formatter().parse(chinese[key]) if name}, key


def test_every_source_kind_and_note_code_has_words():
    codes = {f"source_{kind}" for kind in get_args(SourceKind)} | {f"note_{code}" for code in get_args(NoteCode)}
    assert codes <= WORDING["en"].keys()  # the same keys in zh: test above
    worded = {
        key
        for key in WORDING["en"]
        if key.startswith(("source_", "note_")) and key not in ("note_at_file", "note_at_key")
    }
    assert worded == codes  # no words left for a code that is gone


def test_run_names_are_escaped(make_run, tmp_path):
    hostile = "<script>alert(1)</script>"
    runs = [make_run("v1", 1, run_name=hostile).folder, make_run("v2", 1, run_name="v2 | <b>bold</b>").folder]
    build_report(runs, out_dir=tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in markdown and "<b>" not in markdown
    assert r"\<script\>alert(1)\</script\>" in markdown
    assert r"v2 \| \<b\>bold\</b\>" in markdown  # a pipe would otherwise split the table cell


def test_single_run_versions_without_noise_estimate(make_run, tmp_path):
    runs = [make_run("v1", 1, random_weights=False).folder, make_run("v2", 1, random_weights=False).folder]
    summary = build_report(runs, out_dir=tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert not summary["random_weights"]["any"] and "weights of" not in markdown
    assert "v1, v2: one run each" in markdown
    assert "No version has several distinct runs, so there is no estimate of the run-to-run noise." in markdown
    assert all(row["vs_baseline"]["v2"]["test"] == "min_effect" for row in summary["train_loss"]["rows"])
    assert "minimum effect for one run per version" in markdown
    assert [row["step"] for row in summary["train_loss"]["rows"]] == [
        100,
        200,
        300,
        400,
    ]  # default: quarters of training


def test_chinese_report_without_a_cjk_font_labels_charts_in_english(make_run, tmp_path, monkeypatch):
    import medtune.report.charts

    monkeypatch.setattr(medtune.report.charts, "cjk_font", lambda: None)
    build_report([make_run("v1", 1).folder], out_dir=tmp_path / "out", lang="zh")
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    warnings = [
        line
        for line in markdown.split(WORDING["zh"]["intro"].split("：")[0])[0].splitlines()
        if line.startswith("> **")
    ]
    assert any(WORDING["zh"]["warn_no_cjk_font"] in line for line in warnings)  # said at the top, before the intro
    assert "![训练损失](loss.png)" in markdown


# tab10, matplotlib's default line colours: the first three versions
LINE_COLOURS = {"v1": (31, 119, 180), "v2": (255, 127, 14), "v3": (44, 160, 44)}


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_html_renders_offline_with_charts_in_chromium(reports, tmp_path):
    from PIL import Image

    _, out = reports["zh"]
    html_path = out / "report.html"
    assert 'src="http' not in html_path.read_text(encoding="utf-8")  # nothing to fetch: charts are inline
    screenshot = tmp_path / "shot.png"
    subprocess.run(
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
            f"--screenshot={screenshot}",
            "--window-size=1200,3000",
            html_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).reshape(-1, 3).astype(int)
    packed = pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]
    assert len(np.unique(packed)) > 500  # not a blank page
    for version, colour in LINE_COLOURS.items():
        close = np.abs(pixels - np.array(colour)).max(axis=1) < 30
        assert close.sum() > 300, f"no chart line of {version} on the rendered page"
