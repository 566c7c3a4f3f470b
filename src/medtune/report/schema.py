"""The typed shape of summary.json: analysis.py's output is validated into `Summary` (unknown or missing keys
are errors), and insights.py and document.py read the report's numbers only through these models, so a
renamed key fails the first report built, in the tests, not in a user's report."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medtune.report.inputs import NoteCode, SourceKind
from medtune.report.settings import DEFAULT_LANGUAGE


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Described(_Strict):
    """Mean, sample sd, n and the 95% CI half-width over a version's runs (sd and ci95 None with one run)."""

    mean: float | None
    sd: float | None
    n: int
    ci95: float | None


class Comparison(_Strict):
    """A version against a reference by the rule of stats.compare: Welch's p or the minimum-effect threshold."""

    diff: float | None
    rel: float | None
    p_value: float | None
    threshold: float | None
    test: Literal["welch", "min_effect"] | None
    significant: bool | None


class Summarised(_Strict):
    values: dict[str, Described]
    vs_baseline: dict[str, Comparison]
    per_run: dict[str, list[float]]


class Ranked(Summarised):
    best: list[str]
    """The leading versions (lowest mean and those tied with it); empty when all versions tie."""


class Clipped(Summarised):
    most: list[str]


class MetricRow(Summarised):
    step: int
    steps_used: dict[str, list[int]]
    exact: bool
    gap: Summarised | None = None


class RepeatedRow(_Strict):
    step: int
    same_as: int


class MetricTable(_Strict):
    key: str
    rows: list[MetricRow]
    repeated: list[RepeatedRow]


class SourceFacts(_Strict):
    """Where a run was read from (runs.Source): worded as `source_<kind>` with its path."""

    kind: SourceKind
    path: str


class NoteFacts(_Strict):
    """Something a run's input lacks or that could not be mapped (runs.Note): worded as `note_<code>` filled by
    `fields`."""

    code: NoteCode
    fields: dict[str, Any]


class RunFacts(_Strict):
    name: str
    source: SourceFacts
    notes: list[NoteFacts]
    random_weights: bool | None
    config_read: bool
    """Whether a config was read for the run; the versions' diff covers only those that were."""
    last_step: int
    max_steps: int | None
    imported_config: dict[str, Any] = {}
    """The foreign config as its source stored it (Run.imported_config); empty for medtune runs."""


class VersionFacts(_Strict):
    name: str
    n_runs: int
    runs: list[RunFacts]


class RandomWeights(_Strict):
    any: bool
    runs: list[str]
    unknown: list[str]


class SettingRow(_Strict):
    key: str
    values: dict[str, list[Any]]


class CvPair(Comparison):
    reference: str
    other: str


class GradNorm(_Strict):
    phase_bounds: list[float]
    phase_steps: dict[str, dict[str, list[list[int]]]]
    first_logged: dict[str, int | None]
    no_warmup: list[str]
    """Versions whose every run configures no warmup: their warmup phase gets no note."""
    phases: dict[str, dict[str, Summarised]]
    sd_after_warmup: Summarised
    cv_after_warmup: Summarised
    clipped_fraction: Clipped
    max_grad_norm: dict[str, list[str]]
    cv_pairs: list[CvPair]


class ScheduleCheck(_Strict):
    checked: bool
    schedule: str | None
    reason: str | None = None
    peak_lr: float | None = None
    warmup_steps: int | None = None
    total_steps: int | None = None
    convention: str | None = None
    max_deviation: float | None = None
    max_deviation_step: int | None = None
    matches: bool | None = None


class LearningRate(_Strict):
    first_logged: Summarised
    first_logged_step: Summarised
    largest_logged: Summarised
    largest_logged_step: Summarised
    mid: Summarised
    mid_step: Summarised
    last_logged: Summarised
    last_logged_step: Summarised
    tolerance: float
    schedule_check: dict[str, dict[str, ScheduleCheck]]
    warmup_unlogged: dict[str, list[str]]


class Noise(_Strict):
    single_run_versions: list[str]
    from_versions: list[str]
    final_train_loss_sd: float | None
    final_eval_loss_sd: float | None


class ConvergencePair(Comparison):
    warmup_end: int
    start: int
    end: int
    points: int
    share_lower: float
    share_higher: float
    baseline_window_loss: float
    window_loss: float


class LossWindow(_Strict):
    warmup_end: int
    start: int
    end: int


class Convergence(_Strict):
    window: LossWindow | None
    window_loss: dict[str, Described]
    best: list[str]
    target_loss: float | None
    steps_to_target: dict[str, int | None]
    pairs: dict[str, ConvergencePair | None]


class Advantages(_Strict):
    convergence: Convergence
    final_train_loss: Ranked
    final_eval_loss: Ranked
    grad_norm_cv: Ranked
    overfit_gap: Ranked
    overfit_ratio: Ranked
    augmentation: dict[str, Summarised]
    evaluation: dict[str, Summarised]


class MinimumEffectFacts(_Strict):
    relative: float
    absolute: float


class IdenticalRuns(_Strict):
    kind: Literal["identical_runs"]
    original: str
    duplicate: str
    versions: list[str]
    same_version: bool
    same_source: bool
    """One file or folder given twice, rather than two runs that logged the same values."""
    unmasked: list[str]
    """Runs of the pair whose augmentation masked no sample: why distinct runs of two versions trained alike."""


class DifferentSteps(_Strict):
    kind: Literal["planned_steps", "last_steps"]
    values: dict[str, list[int]]


class DifferentSetting(_Strict):
    kind: Literal["setting"]
    key: str
    values: dict[str, list[Any]]


class RepeatedRows(_Strict):
    kind: Literal["repeated_rows"]
    step: int
    same_as: int


class StepsPastEnd(_Strict):
    kind: Literal["steps_past_end"]
    steps: list[int]
    last: int


class NonFiniteSeries(_Strict):
    first_step: int
    count: int
    """Logged steps whose value is NaN or ±inf."""


class NonFinite(_Strict):
    kind: Literal["non_finite"]
    version: str
    run: str
    metrics: dict[str, NonFiniteSeries]
    """Compared metric (loss, grad_norm, learning_rate, eval_loss) -> where its non-finite values are."""


class NoCjkFont(_Strict):
    kind: Literal["no_cjk_font"]


Warning = Annotated[
    IdenticalRuns | NonFinite | DifferentSteps | DifferentSetting | RepeatedRows | StepsPastEnd | NoCjkFont,
    Field(discriminator="kind"),
]


class Insight(BaseModel):
    """One statement: `kind` picks the wording, the other fields fill it; `text` is the sentence as written."""

    model_config = ConfigDict(extra="allow")
    kind: str
    text: str = ""


class Summary(_Strict):
    baseline: str
    confidence: float
    alpha: float
    min_effect: dict[str, MinimumEffectFacts]
    near_zero: float
    versions: list[VersionFacts]
    random_weights: RandomWeights
    config_diff: list[SettingRow]
    train_loss: MetricTable
    eval_loss: MetricTable
    grad_norm: GradNorm
    learning_rate: LearningRate
    noise: Noise
    advantages: Advantages
    evaluation_setup: list[SettingRow]
    warnings: list[Warning]
    insights: list[Insight] = Field(default_factory=list)
    coinciding: dict[str, list[list[str]]] = Field(default_factory=dict)
    """Chart key -> pairs of versions whose mean curves coincide within charts.COINCIDE_TOLERANCE of the chart's
    range."""
    made_by: Literal["compare", "ablate"] = "compare"
    lang: str = DEFAULT_LANGUAGE
    medtune_version: str | None = None
    charts: dict[str, str] = Field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [version.name for version in self.versions]
