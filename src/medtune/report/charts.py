"""PNG charts, one line per version (the mean over its runs, with a 95% CI band when it has several)."""

from __future__ import annotations

import io

import numpy as np

from medtune.report.analysis import Version, curve

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Droid Sans Fallback")


def cjk_font() -> str | None:
    """An installed font that has Chinese glyphs (matplotlib's default has none)."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def draw_chart(versions: list[Version], key: str, title: str, x_label: str, font: str | None) -> bytes | None:
    """The chart as PNG bytes, or None when no run logged `key`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    drawn = False
    for version in versions:
        points = curve(version, key)
        if not points:
            continue
        steps = list(points)
        means = np.array([point["mean"] for point in points.values()])
        label = version.name.replace("$", r"\$")
        line, = axes.plot(steps, means, marker="o" if len(steps) <= 12 else None, label=f"{label} (n={len(version.runs)})")
        if len(version.runs) >= 2:
            half = np.array([point["ci95"] for point in points.values()])
            axes.fill_between(steps, means - half, means + half, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        return None
    text_font = {"fontfamily": font} if font else {}
    axes.set_title(title, **text_font)
    axes.set_xlabel(x_label, **text_font)
    axes.grid(alpha=0.3)
    axes.legend(prop={"family": font} if font else None)
    if key == "learning_rate":
        axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def draw_charts(versions: list[Version], titles: dict[str, str], x_label: str, font: str | None) -> dict[str, bytes]:
    """Metric key -> PNG bytes, for each metric some run logged."""
    charts = {key: draw_chart(versions, key, title, x_label, font) for key, title in titles.items()}
    return {key: png for key, png in charts.items() if png is not None}
