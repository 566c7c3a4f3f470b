"""PNG charts, one line per version (the mean over its runs, with a 95% CI band when it has several).

Each version has its own colour, line style and marker, and each later line is drawn thinner with its markers
shifted along it, so a curve that lies on another still shows; `coinciding_curves` names the pairs a reader
cannot tell apart anyway, for the report to say so. The grad-norm chart draws the clipping threshold
(`train.max_grad_norm`), the LR chart shades each version's warmup as its config sets it.
"""

from __future__ import annotations

import io
from itertools import combinations
from typing import Any

import numpy as np

from medtune.report.analysis import Version, curve
from medtune.report.schedule import schedule_spec

CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Droid Sans Fallback",
)
CJK_FONT_FILES = ("notosanscjk", "notoserifcjk", "sourcehansans", "wqy-", "droidsansfallback", "simhei", "msyh")
"""Lower-case pieces of the file names of those fonts, to find one installed after matplotlib cached its font list."""
COINCIDE_TOLERANCE = 0.01
"""Two mean curves coincide when, at every step both logged, they differ by at most this share of the value range
the chart shows (all versions' means): about the width of a line on a 450-pixel-high chart."""
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MARKS_PER_LINE = 12
"""Markers drawn along a line of many points: enough to tell the lines apart, few enough to see the curve."""


def cjk_font() -> str | None:
    """An installed font that has Chinese glyphs (matplotlib's default has none), or None.

    A font installed after matplotlib cached its font list (scripts/setup.sh installs one) is found on disk and added.
    """
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_FONTS if name in installed), None)
    if found is not None:
        return found
    for path in font_manager.findSystemFonts():
        if any(piece in path.lower().rsplit("/", 1)[-1] for piece in CJK_FONT_FILES):
            font_manager.fontManager.addfont(path)
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def line_style(index: int, points: int, versions: int) -> dict[str, Any]:
    """Matplotlib keyword arguments of the `index`-th version's line: colour, dash, marker, width and marker places."""
    # a short line gets a marker on every point; on a long one the versions' markers take turns along the steps
    spacing = 1 if points <= MARKS_PER_LINE else max(versions, points // MARKS_PER_LINE)
    return {
        "color": f"C{index % 10}",
        "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
        "marker": MARKERS[index % len(MARKERS)],
        "linewidth": max(1.0, 2.6 - 0.5 * index),  # the first line is the widest: later ones stay visible on top of it
        "markersize": max(4.0, 7.0 - 0.8 * index),
        "markevery": (index * spacing // max(1, versions) % spacing, spacing),
    }


def coinciding_curves(
    versions: list[Version], key: str, tolerance: float = COINCIDE_TOLERANCE
) -> list[tuple[str, str]]:
    """Pairs of versions whose mean curves of `key` coincide: at every step both logged, |difference| <= `tolerance`
    x the range of all versions' means on the chart. Pairs with no common step never coincide."""
    means = {
        version.name: {step: point["mean"] for step, point in curve(version, key).items() if point["mean"] is not None}
        for version in versions
    }
    values = [value for points in means.values() for value in points.values()]
    if not values:
        return []
    allowed = tolerance * (max(values) - min(values))
    pairs = []
    for (first, first_points), (second, second_points) in combinations(means.items(), 2):
        common = set(first_points) & set(second_points)
        if common and max(abs(first_points[step] - second_points[step]) for step in common) <= allowed:
            pairs.append((first, second))
    return pairs


def build_figure(
    versions: list[Version], key: str, title: str, x_label: str, font: str | None, warmup_label: str = "warmup"
) -> Any | None:
    """The chart as a matplotlib Figure, or None when no run logged `key`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    drawn = False
    for index, version in enumerate(versions):
        points = curve(version, key)
        if not points:
            continue
        steps = list(points)
        means = np.array([point["mean"] for point in points.values()])
        label = version.name.replace("$", r"\$")
        axes.plot(
            steps, means, label=f"{label} (n={len(version.runs)})", **line_style(index, len(steps), len(versions))
        )
        if len(version.runs) >= 2:
            half = np.array([point["ci95"] for point in points.values()])
            axes.fill_between(steps, means - half, means + half, color=f"C{index % 10}", alpha=0.15, linewidth=0)
        drawn = True
    if not drawn:
        return None
    if key == "grad_norm":
        _clipping_lines(axes, versions)
    if key == "learning_rate":
        _warmup_spans(axes, versions, warmup_label)
        axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    text_font = {"fontfamily": font} if font else {}
    axes.set_title(title, **text_font)
    axes.set_xlabel(x_label, **text_font)
    axes.grid(alpha=0.3)
    axes.legend(prop={"family": font} if font else None)
    return figure


def _clipping_lines(axes: Any, versions: list[Version]) -> None:
    """A dotted horizontal line at each distinct train.max_grad_norm, naming the versions when they differ."""
    by_threshold: dict[float, list[str]] = {}
    for version in versions:
        for threshold in {run.setting("train.max_grad_norm") for run in version.runs}:
            if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold > 0:
                by_threshold.setdefault(float(threshold), []).append(version.name)
    for threshold, names in sorted(by_threshold.items()):
        whose = "" if len(by_threshold) == 1 and len(names) == len(versions) else f" ({', '.join(names)})"
        axes.axhline(
            threshold, color="0.3", linestyle=(0, (1, 2)), linewidth=1.2, label=f"max_grad_norm = {threshold:g}{whose}"
        )


def _warmup_spans(axes: Any, versions: list[Version], label: str) -> None:
    """Steps 0 to the configured warmup end, shaded in the version's colour (grey for a span versions share)."""
    by_warmup: dict[int, list[int]] = {}
    for index, version in enumerate(versions):
        warmups = {
            spec.warmup_steps
            for spec, _ in map(schedule_spec, version.runs)
            if spec is not None and spec.warmup_steps > 0
        }
        for warmup in warmups:
            by_warmup.setdefault(warmup, []).append(index)
    for warmup, indices in sorted(by_warmup.items(), reverse=True):  # the longest first, so shorter spans show on it
        names = ", ".join(versions[index].name.replace("$", r"\$") for index in indices)
        color = f"C{indices[0] % 10}" if len(indices) == 1 else "0.5"
        axes.axvspan(0, warmup, color=color, alpha=0.12, linewidth=0, label=f"{label} {names}: 0-{warmup}")


def draw_chart(
    versions: list[Version], key: str, title: str, x_label: str, font: str | None, warmup_label: str = "warmup"
) -> bytes | None:
    """The chart as PNG bytes, or None when no run logged `key`."""
    figure = build_figure(versions, key, title, x_label, font, warmup_label)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def draw_charts(
    versions: list[Version], titles: dict[str, str], x_label: str, font: str | None, warmup_label: str = "warmup"
) -> dict[str, bytes]:
    """Metric key -> PNG bytes, for each metric some run logged; `warmup_label` names the shaded warmup on the LR
    chart."""
    charts = {key: draw_chart(versions, key, title, x_label, font, warmup_label) for key, title in titles.items()}
    return {key: png for key, png in charts.items() if png is not None}
