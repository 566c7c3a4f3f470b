"""`build_report`: runs in, report.md + report.html + PNG charts + summary.json out; returns the summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from medtune import __version__
from medtune.report.analysis import Version, analyse
from medtune.report.document import CHARTS, build_document, insight_text
from medtune.report.inputs import ReportError, Run, version_of
from medtune.report.insights import insights
from medtune.report.markup import to_html, to_markdown
from medtune.report.schema import Summary
from medtune.report.settings import DEFAULT_LANGUAGE, DEFAULT_PHASE_BOUNDS
from medtune.report.sources import load_runs
from medtune.report.wording import words
from medtune.run_folder import write_atomic, write_json

DEFAULT_OUT_DIR = Path("reports") / "compare"
MARKDOWN_FILE, HTML_FILE, SUMMARY_FILE = "report.md", "report.html", "summary.json"
"""The report folder's files besides the charts (`<chart>.png`)."""
RunSpec = str | Path | tuple[str, str | Path]
"""A run path (its version comes from its run name, less any -seed<N>/_s<N>) or (version, path)."""
MadeBy = Literal["compare", "ablate"]


def build_report(
    runs: Sequence[RunSpec],
    baseline: str | None = None,
    steps: Sequence[int] | None = None,
    lang: str = DEFAULT_LANGUAGE,
    out_dir: str | Path = DEFAULT_OUT_DIR,
    phases: Sequence[float] = DEFAULT_PHASE_BOUNDS,
    made_by: MadeBy = "compare",
) -> dict[str, Any]:
    """Compare the runs' versions and write the report into `out_dir`; returns what summary.json holds.

    `baseline` defaults to the first version; `steps` (training-loss table) defaults to quarters of training;
    `phases` are the two fractions of training that end the warmup and early phases of the grad-norm analysis;
    `made_by` is the command that asked for the report, so its advice (more seeds) names that command's option.
    """
    w = words(lang)
    phase_bounds = check_phases(phases)
    if steps is not None and any(int(step) < 0 for step in steps):
        raise ReportError(f"steps must be non-negative, got {list(steps)}")
    versions = order_versions(group_versions(runs), baseline)
    data = analyse(versions, [int(step) for step in steps] if steps else None, phase_bounds)

    from medtune.report import charts

    font = charts.cjk_font()  # also for Chinese run names in English reports
    if lang != "en" and font is None:
        data["warnings"].append({"kind": "no_cjk_font"})
    data.update(
        made_by=made_by,
        lang=lang,
        medtune_version=__version__,
        coinciding={key: [list(pair) for pair in charts.coinciding_curves(versions, key)] for key in CHARTS},
    )
    summary = Summary.model_validate(data)
    summary.insights = insights(summary)
    for insight in summary.insights:
        insight.text = insight_text(insight, w)

    chart_words = w if lang == "en" or font else words("en")
    pngs = charts.draw_charts(
        versions,
        {key: chart_words[f"chart_{key}"] for key in CHARTS},
        chart_words["chart_step"],
        font,
        chart_words["chart_warmup"],
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, png in pngs.items():
        write_atomic(out / f"{key}.png", png)
    summary.charts = {key: f"{key}.png" for key in pngs}
    blocks = build_document(summary, w, summary.charts)
    write_atomic(out / MARKDOWN_FILE, to_markdown(blocks).encode("utf-8"))
    write_atomic(out / HTML_FILE, to_html(blocks, out, lang).encode("utf-8"))
    written = json_ready(summary.model_dump(mode="json"))
    write_json(out / SUMMARY_FILE, written)
    return written


def group_versions(specs: Sequence[RunSpec]) -> list[Version]:
    """Load every run and group them into versions, in the order they were given."""
    if not specs:
        raise ReportError("no runs given: pass run folders and/or --name version=path")
    grouped: dict[str, list[Run]] = {}
    for spec in specs:
        version, path = (spec[0], Path(spec[1])) if isinstance(spec, tuple) else (None, Path(spec))
        for run in load_runs(path):
            if not len(run.series("loss")[0]):
                raise ReportError(f"{run.source.path}: no training loss logged, nothing to compare")
            grouped.setdefault(version or version_of(run.name), []).append(run)
    return [Version(name, runs) for name, runs in grouped.items()]


def order_versions(versions: list[Version], baseline: str | None) -> list[Version]:
    """The baseline first (the tables compare every other version with it), the others as given."""
    if baseline is None:
        return versions
    names = [version.name for version in versions]
    if baseline not in names:
        raise ReportError(f"--baseline {baseline!r} is not one of the versions: {', '.join(names)}")
    return [versions[names.index(baseline)]] + [version for version in versions if version.name != baseline]


def check_phases(phases: Sequence[float]) -> tuple[float, float]:
    bounds = tuple(float(bound) for bound in phases)
    if len(bounds) != 2 or not 0 < bounds[0] < bounds[1] < 1:
        raise ReportError(
            f"phases must be two fractions 0 < end of warmup < end of early phase < 1, got {list(phases)}"
        )
    return bounds


def parse_name_option(item: str) -> tuple[str, Path]:
    """`v1=runs/a` -> ("v1", Path("runs/a"))."""
    version, sep, path = item.partition("=")
    if not sep or not version.strip() or not path.strip():
        raise ReportError(f"--name {item!r}: expected version=path, e.g. v1=runs/v1-seed1")
    return version.strip(), Path(path.strip())


def json_ready(value: Any) -> Any:
    """Non-finite floats become null, so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value
