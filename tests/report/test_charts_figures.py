"""Charts: every version distinguishable however its curve overlaps another, coinciding pairs named, the clipping
threshold and the configured warmup drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtune.report.analysis import Version
from medtune.report.charts import CJK_FONTS, COINCIDE_TOLERANCE, build_figure, cjk_font, coinciding_curves, draw_chart
from medtune.report.inputs import Run, Source

MAX_STEPS = 400


def loss_curve(steps: np.ndarray, shift: float = 0.0) -> np.ndarray:
    return 1.0 + 2.0 * np.exp(-steps / 80) + shift  # spans 1.01 .. 2.75 over the logged steps


def make_version(
    name: str,
    shift: float = 0.0,
    seeds: int = 1,
    warmup_ratio: float = 0.0,
    max_grad_norm: float | None = 0.3,
    logged: range = range(10, MAX_STEPS + 1, 10),
) -> Version:
    steps = np.array(logged)
    runs = []
    for seed in range(seeds):
        records = [
            {
                "step": int(step),
                "epoch": step / MAX_STEPS,
                "loss": float(loss),
                "grad_norm": 0.2 + 0.01 * seed,
                "learning_rate": 2e-4,
            }
            for step, loss in zip(steps, loss_curve(steps, shift + 0.001 * seed))
        ]
        config = {
            "train": {
                "schedule": "cosine",
                "lr": 2e-4,
                "max_steps": MAX_STEPS,
                "warmup_ratio": warmup_ratio,
                "max_grad_norm": max_grad_norm,
            }
        }
        runs.append(Run(f"{name}-seed{seed + 1}", records, config, {}, {}, Source("medtune_run", "runs/test")))
    return Version(name, runs)


def version_lines(figure, versions: list[Version]):
    (axes,) = figure.axes
    return [line for line in axes.lines if line.get_label().split(" (n=")[0] in {version.name for version in versions}]


def test_identical_curves_are_drawn_in_distinct_styles():
    versions = [make_version(f"v{number}") for number in range(1, 6)]  # five identical curves
    lines = version_lines(build_figure(versions, "loss", "loss", "step", None), versions)
    assert len(lines) == 5
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 5
    assert len({line.get_color() for line in lines}) == 5
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # later lines visible on earlier ones
    assert len({line.get_markevery() for line in lines}) == 5  # markers of coinciding lines not on top of each other


def test_coinciding_pairs_are_found_within_the_tolerance():
    value_range = 2.0 * (math.exp(-10 / 80) - math.exp(-MAX_STEPS / 80))
    just_inside = 0.9 * COINCIDE_TOLERANCE * value_range
    versions = [
        make_version("v1"),
        make_version("v2", shift=-0.3),
        make_version("v3", shift=-0.3 + just_inside, seeds=3),
    ]
    assert coinciding_curves(versions, "loss") == [("v2", "v3")]
    versions[2] = make_version("v3", shift=-0.3 + 2 * COINCIDE_TOLERANCE * value_range, seeds=3)
    assert coinciding_curves(versions, "loss") == []


def test_curves_without_a_common_step_never_coincide():
    versions = [make_version("v1", logged=range(10, 200, 10)), make_version("v2", logged=range(205, 400, 10))]
    assert coinciding_curves(versions, "loss") == []
    assert coinciding_curves(versions, "eval_loss") == []  # not logged at all


def test_one_clipping_line_when_the_versions_share_max_grad_norm():
    versions = [make_version("v1"), make_version("v2")]
    (axes,) = build_figure(versions, "grad_norm", "grad norm", "step", None).axes
    clipping = [line for line in axes.lines if line.get_label().startswith("max_grad_norm")]
    assert [(line.get_label(), list(line.get_ydata())) for line in clipping] == [("max_grad_norm = 0.3", [0.3, 0.3])]


def test_clipping_lines_name_the_versions_when_they_differ():
    versions = [
        make_version("v1", max_grad_norm=1.0),
        make_version("v2", max_grad_norm=0.3),
        make_version("v3", max_grad_norm=None),
    ]
    (axes,) = build_figure(versions, "grad_norm", "grad norm", "step", None).axes
    labels = [line.get_label() for line in axes.lines if line.get_label().startswith("max_grad_norm")]
    assert labels == ["max_grad_norm = 0.3 (v2)", "max_grad_norm = 1 (v1)"]
    (axes,) = build_figure(versions, "loss", "loss", "step", None).axes  # only on the grad-norm chart
    assert not [line for line in axes.lines if line.get_label().startswith("max_grad_norm")]


def test_the_configured_warmup_is_shaded_on_the_lr_chart():
    versions = [make_version("v1"), make_version("v2", warmup_ratio=0.1), make_version("v3", warmup_ratio=0.1)]
    (axes,) = build_figure(versions, "learning_rate", "LR", "step", None, warmup_label="预热").axes
    spans = [(patch.get_x(), patch.get_width(), patch.get_label()) for patch in axes.patches]
    assert spans == [(0, 40, "预热 v2, v3: 0-40")]  # ceil(0.1 x 400) steps; v1 has none
    (axes,) = build_figure(versions[:1], "learning_rate", "LR", "step", None).axes
    assert not axes.patches


def test_png_only_for_logged_metrics():
    versions = [make_version("v1"), make_version("v2", seeds=2)]
    assert draw_chart(versions, "loss", "loss", "step", None).startswith(b"\x89PNG")
    assert draw_chart(versions, "eval_loss", "eval loss", "step", None) is None


def test_the_cjk_font_found_has_chinese_glyphs():
    name = cjk_font()
    if name is None:
        pytest.skip("no CJK font installed (scripts/setup.sh installs one where it can)")
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    assert name in CJK_FONTS
    assert FT2Font(font_manager.findfont(name, fallback_to_default=False)).get_char_index(ord("中")) > 0
