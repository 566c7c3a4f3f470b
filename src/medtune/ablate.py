"""One command for the whole ablation: every version x seed trained (or resumed, or skipped when complete),
then the comparison report. Each run is the ordinary training recipe; nothing here trains differently."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from rich.console import Console
from rich.table import Table

from medtune.config import (
    DEFAULT_SEED,
    ConfigError,
    RawConfig,
    RunConfig,
    _Strict,
    apply_overrides,
    changes_on_resume,
    compose,
    dump_config,
    problem_lines,
    read_yaml_mapping,
    validate,
)
from medtune.report.settings import DEFAULT_LANGUAGE, DEFAULT_PHASE_BOUNDS, Language
from medtune.run_folder import RunFolder

console = Console(stderr=True)
DEFAULT_EXPERIMENT = Path("experiments/quickstart.yaml")
EXPERIMENT_OVERRIDES = "the experiment's overrides:"
"""Where an error says an override of the experiment file came from (not a `--set` of the command line)."""


class RunsFailedError(RuntimeError):
    """Runs trained in their own processes failed; the message names each with its log."""


class ReportSettings(_Strict):
    steps: list[int] | None = Field(None, description="Train-loss table steps; default: quarters of training.")
    lang: Language = DEFAULT_LANGUAGE
    phases: tuple[float, float] = DEFAULT_PHASE_BOUNDS


class Experiment(_Strict):
    name: str
    versions: dict[str, str] = Field(description="version name -> config file (relative to the experiment file).")
    seeds: list[int] = Field(default_factory=lambda: [DEFAULT_SEED])
    overlays: list[str] = Field(default_factory=list, description="YAML files merged over every version's config.")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied to every run.")
    baseline: str | None = None
    output_dir: str = Field("runs", description="Runs go to <output_dir>/<version>-seed<seed>/.")
    report_dir: str = "reports/ablation"
    runs_per_gpu: int = Field(
        1,
        ge=1,
        description="Runs trained at once on each GPU, each in its own process; "
        "more than 1 pays off for small models that leave a GPU mostly idle.",
    )
    report: ReportSettings = Field(default_factory=ReportSettings)

    @field_validator("versions")
    @classmethod
    def _some_versions(cls, versions: dict[str, str]) -> dict[str, str]:
        if not versions:
            raise ValueError("name at least one version")
        return versions


@dataclass
class PlannedRun:
    version: str
    seed: int
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir()

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def status(self) -> str:
        """complete / resume / new, read from the run folder."""
        if self.folder.run_complete():
            return "complete"
        return "resume" if self.folder.config.exists() else "new"


def load_experiment(path: str | Path) -> tuple[Experiment, Path]:
    path = Path(path)
    data = read_yaml_mapping(path, kind="experiment")
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as err:
        problems = "\n".join(problem_lines(err, Experiment, RawConfig(data), str(path)))
        raise ConfigError(f"{path}: invalid experiment:\n{problems}") from None
    if experiment.baseline is not None and experiment.baseline not in experiment.versions:
        raise ConfigError(
            f"{path}: baseline {experiment.baseline!r} is not one of the versions {list(experiment.versions)}"
        )
    root = path.resolve().parent
    named = [(f"versions.{version}", file) for version, file in experiment.versions.items()]
    for key, file in [*named, *((f"overlays[{i}]", file) for i, file in enumerate(experiment.overlays))]:
        if not (root / file).is_file():
            raise ConfigError(
                f"{path}: {key}: {root / file} not found (paths in an experiment file are relative to its folder)"
            )
    return experiment, root


def plan_runs(
    experiment: Experiment, root: Path, seeds: list[int] | None = None, extra_overrides: list[str] | None = None
) -> list[PlannedRun]:
    """Resolve every version x seed into a validated run config; all config errors surface before any training."""
    planned = []
    overlays = [root / overlay for overlay in experiment.overlays]
    for version, config_file in experiment.versions.items():
        for seed in seeds or experiment.seeds:
            per_run = [f"run_name={version}-seed{seed}", f"train.seed={seed}", f"output_dir={experiment.output_dir}"]
            shared = apply_overrides(compose(root / config_file, overlays), experiment.overrides, EXPERIMENT_OVERRIDES)
            data = apply_overrides(shared, [*(extra_overrides or []), *per_run])
            planned.append(
                PlannedRun(version, seed, validate(data, f"{root / config_file} (version {version}, seed {seed})"))
            )
    return planned


def check_unchanged(run: PlannedRun) -> None:
    """A run folder trained with another config must not be silently continued or counted as done; settings a resumed
    run may change (how it is logged, saved or sped up) and keys added to medtune since do not count."""
    folder = run.folder
    if folder.config.exists() and (changes := changes_on_resume(folder.read_config(), run.config)):
        raise ConfigError(
            f"{folder.config}: this run was started with another config ({'; '.join(changes)}); delete the folder "
            "or rename the experiment's output_dir to train it afresh"
        )


def show_plan(planned: list[PlannedRun]) -> None:
    table = Table(title="ablation runs")
    for column in ("run", "version", "seed", "status", "folder"):
        table.add_column(column)
    for run in planned:
        table.add_row(run.config.run_name, run.version, str(run.seed), run.status(), str(run.run_dir))
    console.print(table)


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_in_processes(pending: list[PlannedRun], gpus: int, runs_per_gpu: int) -> None:
    """`runs_per_gpu` runs per GPU at a time, each in its own process that sees only its GPU; logs in
    <run>/train.log."""
    work: queue.Queue[PlannedRun] = queue.Queue()
    for run in pending:
        work.put(run)
    failures: list[str] = []

    def worker(device: int) -> None:
        while True:
            try:
                run = work.get_nowait()
            except queue.Empty:
                return
            run.run_dir.mkdir(parents=True, exist_ok=True)
            config_file = run.run_dir.parent / f".{run.config.run_name}.requested.yaml"
            config_file.write_text(dump_config(run.config), encoding="utf-8")
            console.print(f"GPU {device}: {run.config.run_name} (log: {run.folder.train_log})")
            with run.folder.train_log.open("a", encoding="utf-8") as log:
                done = subprocess.run(
                    [sys.executable, "-m", "medtune.cli", "train", str(config_file), "--resume"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "CUDA_VISIBLE_DEVICES": str(device)},
                )
            if done.returncode != 0:
                failures.append(f"{run.config.run_name} failed (exit {done.returncode}); see {run.folder.train_log}")

    slots = min(gpus * runs_per_gpu, len(pending))
    threads = [threading.Thread(target=worker, args=(slot % gpus,)) for slot in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RunsFailedError(f"{len(failures)} of {len(pending)} runs failed: " + "; ".join(failures))


def find_default_experiment(start: Path | None = None) -> Path:
    """`experiments/quickstart.yaml` of the project: in the working folder or the nearest parent that has one,
    else in the checkout medtune was installed from (an editable install)."""
    start = (start or Path.cwd()).resolve()
    places = [
        *(folder / DEFAULT_EXPERIMENT for folder in (start, *start.parents)),
        Path(__file__).resolve().parents[2] / DEFAULT_EXPERIMENT,
    ]
    for place in places:
        if place.is_file():
            console.print(f"experiment: {place}")
            return place
    raise ConfigError(
        f"no experiment file given, and no {DEFAULT_EXPERIMENT} in {start}, its parent folders or "
        f"{places[-1].parent.parent}; name one: medtune ablate path/to/experiment.yaml"
    )


def run_experiment(
    path: str | Path,
    seeds: list[int] | None = None,
    extra_overrides: list[str] | None = None,
    runs_per_gpu: int | None = None,
) -> dict[str, Any]:
    """Train what is missing, then write the report; returns the report's summary."""
    from medtune.model.load import model_source
    from medtune.report.build import HTML_FILE, MARKDOWN_FILE, build_report
    from medtune.train.recipe import run as train_run

    experiment, root = load_experiment(path)
    planned = plan_runs(experiment, root, seeds, extra_overrides)
    for run in planned:
        check_unchanged(run)
    show_plan(planned)
    pending = [run for run in planned if run.status() != "complete"]
    for model in {run.config.model.model_dump_json(): run.config.model for run in pending}.values():
        model_source(model)  # fetch (ModelScope) or convert (GGUF) each base once, not once per parallel run
    gpus = visible_gpus()
    per_gpu = runs_per_gpu or experiment.runs_per_gpu
    if gpus * per_gpu > 1 and len(pending) > 1:
        train_in_processes(pending, gpus, per_gpu)
    else:
        for number, run in enumerate(pending, 1):
            console.rule(f"[{number}/{len(pending)}] {run.config.run_name} ({run.status()})")
            train_run(run.config, resume=run.status() == "resume")
    report_dir = Path(experiment.report_dir)
    summary = build_report(
        [(run.version, run.run_dir) for run in planned],
        baseline=experiment.baseline,
        steps=experiment.report.steps,
        lang=experiment.report.lang,
        out_dir=report_dir,
        phases=experiment.report.phases,
        made_by="ablate",
    )
    console.print(f"report: {report_dir / MARKDOWN_FILE} and {report_dir / HTML_FILE}")
    return summary


def parse_seeds(text: str) -> list[int]:
    """`3` -> [42, 43, 44] (counting up from the default seed); `1,2,3` -> [1, 2, 3]."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a count (3) or a comma-separated list (1,2,3)") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise ConfigError(f"--seeds {text!r}: the count must be at least 1")
        return [DEFAULT_SEED + i for i in range(values[0])]
    return values
