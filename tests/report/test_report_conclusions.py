"""The report's conclusions on synthetic run sets that reproduce each failure of real logs: the right conclusion,
or none where the data cannot decide. Runs are built in memory and analysed without charts, so this is fast."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from medtune.report.analysis import Version, analyse
from medtune.report.build import group_versions
from medtune.report.document import build_document, insight_text
from medtune.report.inputs import ReportError, Run, Source
from medtune.report.insights import insights
from medtune.report.markup import to_html, to_markdown
from medtune.report.schema import Summary
from medtune.report.settings import DEFAULT_PHASE_BOUNDS
from medtune.report.stats import relative_change
from medtune.report.wording import words

STEPS = np.arange(1, 101)
FIXTURES = Path(__file__).parent / "fixtures"


def make_run(
    name: str,
    loss: np.ndarray,
    steps: np.ndarray = STEPS,
    warmup_ratio: float = 0.0,
    max_steps: int = 100,
    grad_norm: np.ndarray | None = None,
    eval_loss: float | None = None,
    logged_lr: bool = True,
    **train: Any,
) -> Run:
    """A medtune-like run with a linear (or, with warmup, cosine) schedule peaking at 2e-4."""
    grad = grad_norm if grad_norm is not None else 0.2 + 0.01 * np.sin(steps + len(name))
    warmup = int(np.ceil(warmup_ratio * max_steps))
    done = steps - 1.0
    lr = 2e-4 * np.where(
        done < warmup, done / max(warmup, 1), np.maximum(0.0, (max_steps - done) / (max_steps - warmup))
    )
    records: list[dict[str, Any]] = [
        {
            "step": int(step),
            "loss": float(value),
            "grad_norm": float(norm),
            **({"learning_rate": float(rate)} if logged_lr else {}),
        }
        for step, value, norm, rate in zip(steps, loss, grad, lr)
    ]
    if eval_loss is not None:
        records.append({"step": int(steps[-1]), "eval_loss": eval_loss})
    config = {
        "model": {"name_or_path": "tiny"},
        "data": {"max_length": 512},
        "train": {
            "lr": 2e-4,
            "schedule": "linear",
            "warmup_ratio": warmup_ratio,
            "max_steps": max_steps,
            "max_grad_norm": 0.3,
            **train,
        },
    }
    return Run(
        name,
        records,
        config,
        {"max_steps": max_steps, "random_weights": False},
        {},
        Source("medtune_run", f"runs/{name}"),
    )


def summarise(
    versions: list[Version], steps: list[int] | None = None, lang: str = "en", made_by: str = "compare"
) -> tuple[Summary, str]:
    """The typed summary with its insights, and the report as Markdown (no charts)."""
    w = words(lang)
    data = analyse(versions, steps, DEFAULT_PHASE_BOUNDS)
    data["made_by"] = made_by
    summary = Summary.model_validate(data)
    summary.insights = insights(summary)
    for insight in summary.insights:
        insight.text = insight_text(insight, w)
    return summary, to_markdown(build_document(summary, w, {})).replace("\\", "")  # Markdown escapes dropped


def kinds(summary: Summary) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for insight in summary.insights:
        found.setdefault(insight.kind, []).append(insight.model_dump())
    return found


def baseline_loss() -> np.ndarray:
    return 1.0 + 2.0 * np.exp(-STEPS / 30)


def test_warmup_version_that_starts_higher_and_ends_lower_converges_better():
    base = baseline_loss()
    warm = np.where(STEPS <= 10, base + 0.4, 0.85 + 2.0 * np.exp(-STEPS / 25))  # above the baseline during its warmup
    assert (warm[:10] > base[:10]).all() and (warm[10:] < base[10:]).all()
    assert np.argmax(np.abs(warm - base)) < 10  # the single step of largest gap lies inside the warmup
    summary, markdown = summarise(
        [Version("v1", [make_run("v1", base)]), Version("v2", [make_run("v2", warm, warmup_ratio=0.1)])]
    )
    pair = summary.advantages.convergence.pairs["v2"]
    assert pair.start == 11 and pair.warmup_end == 10  # the window starts at the first step at the peak LR
    assert pair.diff < 0 and pair.significant and pair.share_lower == 1.0
    assert summary.advantages.convergence.best == ["v2"]
    found = kinds(summary)
    assert "convergence_lower" in found and "convergence_higher" not in found
    assert found["fastest"][0]["versions"] == ["v2"]
    assert "v2's training loss after the warmup is lower than v1's: over steps 11–100" in markdown


def test_exact_ties_name_no_winner():
    base = baseline_loss()
    grad = np.full(len(STEPS), 0.5)  # every step above max_grad_norm 0.3 in all versions
    versions = [
        Version(name, [make_run(name, base + offset, grad_norm=grad + offset)])
        for name, offset in (("v1", 0.0), ("v2", 1e-4), ("v3", -1e-4))
    ]
    summary, markdown = summarise(versions)
    matrix = summary.advantages
    assert matrix.convergence.best == [] and matrix.final_train_loss.best == []
    assert summary.grad_norm.clipped_fraction.most == []
    found = kinds(summary)
    assert {"fastest_none", "clipping_tie"} <= set(found) and not {"fastest", "clipping"} & set(found)
    assert set(found) & {"convergence_lower", "convergence_higher"} == set()
    assert "so no winner is named" in markdown
    assert "All versions clip the gradient about equally often (100.0% of logged steps)." in markdown, (
        "one share is given once, not as a range from it to itself"
    )
    assert "Fastest convergence" not in markdown and "most often" not in markdown


def test_two_versions_tied_at_the_top_are_both_named():
    base = baseline_loss()
    versions = [
        Version("v1", [make_run("v1", base)]),
        Version("v2", [make_run("v2", base - 0.2)]),
        Version("v3", [make_run("v3", base - 0.2 + 1e-4)]),
    ]
    summary, _ = summarise(versions)
    assert summary.advantages.convergence.best == ["v2", "v3"]
    assert summary.advantages.final_train_loss.best == ["v2", "v3"]


def test_identical_runs_given_as_seeds_warn_and_make_no_noise_claim():
    base = baseline_loss()
    same = make_run("v1-seed1", base)
    copy = make_run("v1-seed2", base)
    others = [make_run("v2-seed1", base - 0.1), make_run("v2-seed2", base - 0.1 + 0.01 * np.cos(STEPS))]
    summary, markdown = summarise([Version("v1", [same, copy]), Version("v2", others)])
    warning = next(warning for warning in summary.warnings if warning.kind == "identical_runs")
    assert (warning.original, warning.duplicate, warning.same_version) == ("v1-seed1", "v1-seed2", True)
    assert summary.versions[0].n_runs == 1 and summary.noise.from_versions == ["v2"]
    assert "0.0000" not in markdown.split("## Runs")[1].split("##")[0]  # no "noise 0.0000" from a run given twice
    assert "logged exactly the same values" in markdown.split("## Method")[0]  # at the top of the report
    assert all(row.vs_baseline["v2"].test == "min_effect" for row in summary.train_loss.rows)


def test_a_run_given_twice_keeps_one_copy_even_under_one_run_name():
    base = baseline_loss()
    given_twice = [make_run("v1-seed1", base), make_run("v1-seed1", base)]  # one path given twice
    copied = make_run("v1-seed1", base)
    copied.source = Source("medtune_run", "backup/v1-seed1")  # a copy of the folder keeps its run_name
    other = make_run("v2-seed1", base - 0.1)
    for runs in (given_twice, [given_twice[0], copied]):
        summary, markdown = summarise([Version("v1", runs), Version("v2", [other])])
        assert summary.versions[0].n_runs == 1 and summary.random_weights.unknown == []
        assert all(row.values["v1"].n == 1 for row in summary.train_loss.rows)
        assert "(v1: —" not in markdown
    summary, markdown = summarise([Version("v1", given_twice), Version("v2", [other])])
    (warning,) = [warning for warning in summary.warnings if warning.kind == "identical_runs"]
    assert warning.same_source and warning.same_version
    assert "Warning: run v1-seed1 was given twice for v1; it is counted once." in markdown
    summary, markdown = summarise([Version("v1", [given_twice[0], copied]), Version("v2", [other])])
    assert "runs v1-seed1 and v1-seed1 of v1 are two runs that logged exactly the same values" in markdown
    assert "given twice" not in markdown
    summary, markdown = summarise([Version("v1", given_twice)])  # nothing else: a report of the one run
    assert summary.names == ["v1"] and summary.versions[0].n_runs == 1


def test_distinct_runs_of_two_versions_that_logged_the_same_values_are_not_called_one_run():
    base = baseline_loss()
    plain, augmented = make_run("v2-seed1", base), make_run("v3-seed1", base)
    augmented.records.append(
        {"step": 100, "augment": {"epoch": 0, "samples": 8, "masked_samples": 0, "masked_share": 0.0}}
    )
    summary, markdown = summarise([Version("v2", [plain]), Version("v3", [augmented])])
    (warning,) = [warning for warning in summary.warnings if warning.kind == "identical_runs"]
    assert not warning.same_source and warning.unmasked == ["v3-seed1"]
    top = markdown.split("## Method")[0]
    assert "the same run" not in top
    assert "runs v2-seed1 (v2) and v3-seed1 (v3) are two runs that logged exactly the same values" in top
    assert "The likely cause: the realised augmentation of v3-seed1 masked no sample" in top
    summary, markdown = summarise([Version("v2", [plain]), Version("v3", [make_run("v2-seed1", base)])])
    assert "run v2-seed1 was given for both v2 and v3: the same run stands for two versions" in markdown


def test_runs_without_a_config_are_named_and_never_said_to_agree():
    base = baseline_loss()
    unread = [make_run("v1", base), make_run("v2", base - 0.1)]
    for run in unread:
        run.config = {}
    summary, markdown = summarise([Version("v1", [unread[0]]), Version("v2", [unread[1]])])
    section = markdown.split("## What differs between versions")[1].split("##")[0]
    assert "No config was read for v1, v2" in section and "do not differ" not in section
    assert [run.config_read for version in summary.versions for run in version.runs] == [False, False]
    read = [make_run("v1-seed1", base), make_run("v2-seed1", base - 0.1)]
    summary, markdown = summarise([Version("v1", [read[0], unread[0]]), Version("v2", [read[1]])])
    section = markdown.split("## What differs between versions")[1].split("##")[0]
    assert "No config was read for v1, so what differs in their settings is unknown." in section
    assert "The resolved configs of v1-seed1, v2-seed1 do not differ" in section
    read[1].config["train"]["schedule"] = "cosine"
    summary, markdown = summarise([Version("v1", [read[0]]), Version("v2", [read[1]]), Version("v3", [unread[1]])])
    assert summary.config_diff[0].values == {"v1": ["linear"], "v2": ["cosine"]}  # nothing made up for v3
    assert "| setting | v1 | v2 |" in markdown and "No config was read for v2," in markdown


def test_warmup_notes_only_for_versions_with_a_warmup_and_in_whole_steps():
    def without_and_with_warmup(steps: np.ndarray, max_steps: int):
        loss = 1.0 + 2.0 * np.exp(-steps / 30)
        return summarise(
            [
                Version("v1", [make_run("v1", loss, steps=steps, max_steps=max_steps)]),
                Version("v2", [make_run("v2", loss - 0.1, steps=steps, max_steps=max_steps, warmup_ratio=0.1)]),
            ]
        )

    summary, markdown = without_and_with_warmup(np.arange(1, 5), 4)
    assert summary.grad_norm.phase_steps["v1"]["v1"] == [[0, 0], [1, 2], [3, 4]]  # 0.4 and 2.0 of 4 steps
    assert summary.grad_norm.no_warmup == ["v1"]
    assert "in the warmup phase" not in markdown  # no step lies in the phase: nothing to say
    summary, markdown = without_and_with_warmup(np.arange(5, 26, 5), 25)
    assert summary.grad_norm.phase_steps["v2"]["v2"] == [[0, 2], [3, 12], [13, 25]]  # 2.5 and 12.5 of 25 steps
    assert "v2: no grad_norm was logged in the warmup phase (steps 0–2); its first logged step is 5." in markdown
    assert "v1: no grad_norm" not in markdown  # v1 has no warmup


def test_a_large_difference_that_is_not_significant_is_not_called_alike():
    base = baseline_loss()

    def runs(name: str, spreads: tuple[float, float], shifts: tuple[float, float]) -> list[Run]:
        return [
            make_run(f"{name}-seed{seed}", base + shift, grad_norm=1.0 + spread * np.sin(STEPS))
            for seed, (spread, shift) in enumerate(zip(spreads, shifts), start=1)
        ]

    versions = [
        Version("v1", runs("v1", (0.05, 0.25), (0.0, 0.3))),
        Version("v2", runs("v2", (0.1, 0.5), (-0.3, 0.1))),
        Version("v3", runs("v3", (0.0501, 0.2499), (0.0, 0.3001))),
    ]
    summary, markdown = summarise(versions)
    stability = {(item.reference, item.other): item for item in summary.insights if item.kind.startswith("stab")}
    assert stability[("v1", "v2")].kind == "stability_widens_not_significant"
    assert stability[("v1", "v3")].kind == "stability_tie"  # close values stay "alike"
    sentence = stability[("v1", "v2")].text
    assert sentence.startswith("v2's grad-norm CV after warmup is higher than v1's (")
    assert "but the difference is not significant (Welch p=" in sentence and "alike" not in sentence
    convergence = {item.version: item for item in summary.insights if item.kind.startswith("convergence")}
    assert convergence["v2"].kind == "convergence_lower_not_significant"
    assert convergence["v3"].kind == "convergence_tie"
    assert "alike" not in convergence["v2"].text and "is lower than v1's" in convergence["v2"].text
    assert "v2 and v1 fluctuate alike" not in markdown and "v3 and v1 fluctuate alike" in markdown


def test_sentences_have_a_subject_and_name_a_run_once():
    base = baseline_loss()
    clipping = make_run("v2", base - 0.1, grad_norm=np.full(len(STEPS), 0.5))
    for record in clipping.records:
        record["learning_rate"] = 1e-4  # not the configured linear schedule
    tied = make_run("v3", base + 1e-4)  # one run each, below the minimum effect: no test, so no "n.s."
    summary, markdown = summarise(
        [Version("v1", [make_run("v1", base)]), Version("v2", [clipping]), Version("v3", [tied])]
    )
    assert "The gradient is clipped most often in v2 (share of logged steps" in markdown
    assert "The logged LR of v2 deviates from its configured linear decay schedule" in markdown
    assert "v2 (v2)" not in markdown
    lr_row = next(line for line in markdown.splitlines() if line.startswith("| v2 | linear decay"))
    assert lr_row.split(" | ")[-1].startswith("MISMATCH: ")  # not "v2: MISMATCH" in v2's own row
    assert "n.s." not in markdown.split("## Method")[1].split("## Insights")[0].replace("n.s. = not significant", "")


def test_steps_past_the_last_trained_step_are_left_out_with_one_warning():
    short = np.arange(1, 5)
    versions = [
        Version(name, [make_run(name, 1.0 + 2.0 * np.exp(-short / 30) - shift, steps=short, max_steps=4)])
        for name, shift in (("v1", 0.0), ("v2", 0.1))
    ]
    summary, markdown = summarise(versions, steps=[1, 3, 5, 100])
    assert [row.step for row in summary.train_loss.rows] == [1, 3]
    (warning,) = [warning for warning in summary.warnings if warning.kind == "steps_past_end"]
    assert (warning.steps, warning.last) == ([5, 100], 4)
    assert "no run trained past step 4, so the training-loss table leaves out the requested steps 5, 100" in markdown
    assert "would repeat" not in markdown
    with pytest.raises(ReportError, match=r"steps \[5, 100\]: all come after the last trained step 4"):
        analyse(versions, [5, 100], DEFAULT_PHASE_BOUNDS)


def test_near_zero_references_get_absolute_differences_and_no_largest_gap():
    assert relative_change(-0.0014, -0.032) is None and relative_change(2.0, 1.5) == pytest.approx(-0.25)
    base = baseline_loss()
    versions = [
        Version("v1", [make_run("v1", base, eval_loss=float(base[-1]) - 0.0014)]),
        Version("v2", [make_run("v2", base - 0.1, eval_loss=float(base[-1]) - 0.1 - 0.032)]),
    ]
    summary, markdown = summarise(versions)
    gap = summary.advantages.overfit_gap.vs_baseline["v2"]
    assert gap.rel is None and gap.diff == pytest.approx(-0.0306)
    assert "overfit_none" in kinds(summary) and "overfit" not in kinds(summary)
    assert "Largest" not in markdown and "-0.0306" in markdown
    assert not re.search(r"[-+]\d{3,}\.\d+%", markdown)  # no ratio of a near-zero reference


def test_runs_of_different_lengths_and_setups_are_warned_about():
    short_steps = np.arange(1, 11)
    short = make_run("v1", 1.0 + 2.0 * np.exp(-short_steps / 30), steps=short_steps, max_steps=10)
    long_steps = np.arange(1, 31)
    long = make_run("v2", 1.0 + 2.0 * np.exp(-long_steps / 30), steps=long_steps, max_steps=30)
    long.config["data"]["max_length"] = 1024
    summary, markdown = summarise([Version("v1", [short]), Version("v2", [long])])
    warned = {warning.kind: warning for warning in summary.warnings}
    assert warned["planned_steps"].values == {"v1": [10], "v2": [30]}
    assert warned["last_steps"].values == {"v1": [10], "v2": [30]}
    assert warned["setting"].key == "data.max_length"
    top = markdown.split("## Method")[0]
    assert "planned different numbers of steps" in top and "data.max_length differs" in top


def test_repeated_rows_of_the_step_table_are_left_out_and_said():
    coarse = np.arange(10, 101, 10)
    runs = [
        Version(name, [make_run(name, 1.0 + 2.0 * np.exp(-coarse / 30) - shift, steps=coarse)])
        for name, shift in (("v1", 0), ("v2", 0.1))
    ]
    summary, markdown = summarise(runs, steps=[10, 11, 50])
    assert [row.step for row in summary.train_loss.rows] == [10, 50]
    assert any(
        warning.kind == "repeated_rows" and warning.step == 11 and warning.same_as == 10 for warning in summary.warnings
    )
    assert "would repeat the row for step 10" in markdown


def test_learning_rate_comes_from_the_config_and_first_logged_is_not_called_initial():
    coarse = np.arange(20, 101, 20)  # nothing logged inside the 10-step warmup
    loss = 1.0 + 2.0 * np.exp(-coarse / 30)
    summary, markdown = summarise(
        [
            Version("v1", [make_run("v1", loss, steps=coarse)]),
            Version("v2", [make_run("v2", loss - 0.1, steps=coarse, warmup_ratio=0.1)]),
        ]
    )
    check = summary.learning_rate.schedule_check["v2"]["v2"]
    assert (check.peak_lr, check.warmup_steps, check.total_steps) == (2e-4, 10, 100)
    assert summary.learning_rate.first_logged_step.values["v2"].mean == 20
    assert summary.learning_rate.warmup_unlogged == {"v1": [], "v2": ["v2"]}
    assert "peak 2.00e-04 at the end of a 10-step warmup, 100 planned steps" in markdown
    assert "no LR was logged inside the configured warmup" in markdown
    assert "no grad_norm was logged in the warmup phase (steps 0–10); its first logged step is 20" in markdown
    assert "initial" not in markdown.split("## Learning-rate dynamics")[1].split("\n\n")[1]  # the table's header


def test_advice_for_more_seeds_fits_the_command_and_has_no_backticks():
    base = baseline_loss()
    versions = [Version("v1", [make_run("v1", base)]), Version("v2", [make_run("v2", base - 0.1)])]
    _, by_ablate = summarise(versions, made_by="ablate")
    _, by_compare = summarise(versions, made_by="compare")
    assert "--seeds 3" in by_ablate and "--name" not in by_ablate
    assert "--name v1=runs/v1-seed1" in by_compare
    summary, _ = summarise(versions)
    assert "`" not in to_html(build_document(summary, words("en"), {}), None, "en")


def test_coinciding_curves_are_noted_under_their_chart():
    base = baseline_loss()
    summary, _ = summarise([Version("v1", [make_run("v1", base)]), Version("v2", [make_run("v2", base)])])
    summary.coinciding = {"loss": [["v1", "v2"]]}
    markdown = to_markdown(build_document(summary, words("en"), {"loss": "loss.png"}))
    after_chart = markdown.split("(loss.png)")[1].split("##")[0]
    assert "The curves of v1 and v2 coincide" in after_chart


ALLOWED_LATIN = {
    "medtune",
    "summary",
    "json",
    "Welch",
    "transformers",
    "get_scheduler",
    "tiny",
    "fonts",
    "noto",
    "cjk",
    "wqy",
    "microhei",
    "ablate",
    "seeds",
    "name",
    "runs",
    "seed",
    "linear",
    "cosine",
    "constant",
    "n.s",
    "SwanLab",
    "TensorBoard",
    "HF",
    "Trainer",
    "TrainingArguments",
    "LoRA",
    "Python",
    "repr",
    "pickle",
}
"""Names of tools, formats and options that Chinese text keeps as they are."""


def english_words(markdown: str, summary: Summary) -> list[str]:
    """Latin words of a report that are not names, keys, paths, numbers or the few technical terms kept in Chinese
    text."""
    runs = [run for version in summary.versions for run in version.runs]
    paths = {run.source.path for run in runs}
    quoted = {
        value for run in runs for note in run.notes for value in note.fields.values() if isinstance(value, str)
    }  # paths, keys, values
    settings = {str(value) for row in summary.config_diff for values in row.values.values() for value in values}
    names = {summary.baseline, *summary.names, *(run.name for run in runs), *paths, *quoted, *settings}
    text = markdown
    for name in sorted(
        names, key=len, reverse=True
    ):  # whole words only: the key `optim` is not part of train.optimizer
        text = re.sub(rf"(?<![\w.]){re.escape(name)}(?![\w])", " ", text)
    words_ = re.findall(r"[A-Za-z][A-Za-z_.]*[A-Za-z]", text)
    return [
        word
        for word in words_
        if word not in ALLOWED_LATIN
        and "_" not in word
        and "." not in word
        and len(word) > 1
        and not re.fullmatch(r"v\d+|e|p|n|sd", word)
    ]


def test_chinese_report_has_no_english_sentences():
    base = baseline_loss()
    versions = [
        Version("v1", [make_run("v1-seed1", base, eval_loss=1.3), make_run("v1-seed2", base, eval_loss=1.3)]),
        Version("v2", [make_run("v2-seed1", base - 0.1, warmup_ratio=0.1, eval_loss=1.2, steps=STEPS, max_steps=100)]),
        Version("v3", [make_run("v3-seed1", base[:50], steps=STEPS[:50], max_steps=50)]),
    ]
    versions[2].runs[0].config["data"]["max_length"] = 1024
    summary, markdown = summarise(versions, steps=[10, 10, 50], lang="zh")
    assert {warning.kind for warning in summary.warnings} >= {
        "identical_runs",
        "planned_steps",
        "setting",
        "repeated_rows",
    }
    assert english_words(markdown, summary) == []
    english, _ = summarise(versions, steps=[10, 10, 50], lang="en")
    assert len(english_words(_, english)) > 50  # the check does find English where there is some


def write_run_folder(run: Run, folder: Path) -> Path:
    """A medtune run folder of the run, without summary.json and eval.json (so the report notes both missing)."""
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps(record) + "\n" for record in run.records), encoding="utf-8"
    )
    (folder / "config.resolved.yaml").write_text(yaml.safe_dump({"run_name": run.name, **run.config}), encoding="utf-8")
    return folder


def swanlab04_with_foreign_settings(swanlog: Path) -> Path:
    """The committed SwanLab 0.4 log (LoraConfig(...) text configs), one run's repr holding a function and its
    optimizer and schedule unknown to medtune, so that the importer has something to say about them."""
    shutil.copytree(FIXTURES / "swanlab04" / "swanlog", swanlog)
    config_path = sorted(swanlog.glob("run-*/files/config.yaml"))[0]
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    lora = config["peft_config"]["value"]["default"]
    assert lora.startswith("LoraConfig(") and "init_lora_weights=True" in lora  # the text form SwanLab 0.4 stores
    config["peft_config"]["value"]["default"] = lora.replace(
        "init_lora_weights=True", "init_lora_weights=<function gaussian at 0x7f3a>"
    )
    config["optim"] = {"desc": "", "sort": 16, "value": "adafactor"}
    config["lr_scheduler_type"]["value"] = "polynomial"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return swanlog


def trainer_checkpoint(folder: Path) -> Path:
    """An HF Trainer checkpoint: trainer_state.json with an epoch counter, TrainingArguments with epochs and a
    `constant` schedule given a warmup, and PEFT's adapter_config.json."""
    folder.mkdir(parents=True)
    history = [
        {
            "step": int(step),
            "epoch": round(step / 40, 4),
            "loss": float(1.0 + 2.0 * np.exp(-step / 30)),
            "grad_norm": 0.25 + 0.01 * (step % 3),
            "learning_rate": 1e-4,
        }
        for step in range(5, 81, 5)
    ]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}), encoding="utf-8")
    args = {
        "run_name": "hf-seed1",
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "warmup_steps": 5,
        "max_steps": -1,
        "num_train_epochs": 3,
        "max_grad_norm": 0.3,
        "optim": "adamw_torch",
    }
    (folder / "training_args.json").write_text(json.dumps(args), encoding="utf-8")
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}), encoding="utf-8"
    )
    return folder


def test_chinese_report_of_imported_runs_words_sources_and_notes_in_chinese(tmp_path):
    base = baseline_loss()
    specs = [
        ("medtune", write_run_folder(make_run(f"m-seed{seed}", base + 0.01 * seed), tmp_path / f"m-seed{seed}"))
        for seed in (1, 2)
    ]
    specs += [
        ("swanlab", swanlab04_with_foreign_settings(tmp_path / "swanlog")),
        ("trainer", trainer_checkpoint(tmp_path / "hf" / "checkpoint-80")),
    ]
    versions = group_versions(specs)
    summary, markdown = summarise(versions, lang="zh")
    notes = {run.name: {note.code for note in run.notes} for version in summary.versions for run in version.runs}
    assert notes["m-seed1"] == {"missing_file"}
    assert {"tracker_no_summary", "repr_not_literal", "schedule_unknown", "optimizer_unknown"} <= notes["v1-seed1"]
    assert {"trainer_no_summary", "planned_from_epochs", "constant_ignores_warmup"} <= notes["hf-seed1"]
    assert english_words(markdown, summary) == []
    runs_table = markdown.split("## 运行")[1].split("\n\n")[1].splitlines()[2:]
    assert len(runs_table) == 5
    for row in runs_table:
        source, notes_cell = row.split(" | ")[2], row.split(" | ")[-1]
        assert re.search(r"[\u4e00-\u9fff]", source) and re.search(r"[\u4e00-\u9fff]", notes_cell), row
    assert "计划步数 120 由 train.epochs 估算：3 轮 × 每轮 40 步（第 80 步记录的轮数为 2）" in markdown
    english, english_markdown = summarise(versions, lang="en")
    found = english_words(english_markdown.split("## Runs")[1].split("## ")[0], english)
    assert {"carry", "literal", "counterpart", "planned"} <= set(found)  # the check does find English in this table


def test_a_renamed_summary_key_fails_validation():
    base = baseline_loss()
    data = analyse(
        [Version("v1", [make_run("v1", base)]), Version("v2", [make_run("v2", base - 0.1)])], None, DEFAULT_PHASE_BOUNDS
    )
    Summary.model_validate(data)
    data["advantages"]["convergence"]["winners"] = data["advantages"]["convergence"].pop("best")
    with pytest.raises(ValidationError, match="best"):
        Summary.model_validate(data)


def test_non_finite_values_of_a_diverging_run_are_warned_about_not_dropped_silently():
    base = baseline_loss()
    diverged = make_run("v2", np.where(STEPS < 60, base - 0.05, np.nan), grad_norm=np.where(STEPS < 60, 0.2, np.inf))
    summary, markdown = summarise([Version("v1", [make_run("v1", base)]), Version("v2", [diverged])])
    (warning,) = [warning for warning in summary.warnings if warning.kind == "non_finite"]
    assert (warning.version, warning.run) == ("v2", "v2")
    assert {key: (found.first_step, found.count) for key, found in warning.metrics.items()} == {
        "loss": (60, 41),
        "grad_norm": (60, 41),
    }
    top = markdown.split("## Method")[0]
    assert "run v2 logged values that are not finite numbers (NaN or ±inf): loss at 41 steps from step 60" in top


def test_a_zero_grad_norm_has_no_cv_and_no_stability_statement():
    base = baseline_loss()
    flat = make_run("v2", base - 0.1, grad_norm=np.zeros(len(STEPS)))
    summary, markdown = summarise([Version("v1", [make_run("v1", base)]), Version("v2", [flat])])
    assert summary.grad_norm.cv_after_warmup.per_run["v2"] == []
    assert not [insight for insight in summary.insights if insight.kind.startswith("stability")]
    assert "nan" not in markdown.lower()


def test_the_eval_over_train_ratio_is_left_out_for_a_negative_training_loss():
    base = baseline_loss()
    negative = make_run("v2", base - 3.5, eval_loss=-2.0)  # a training loss below zero: the ratio means nothing
    summary, _ = summarise([Version("v1", [make_run("v1", base, eval_loss=1.2)]), Version("v2", [negative])])
    assert summary.advantages.overfit_ratio.per_run["v2"] == []


def test_a_criterion_only_one_version_has_is_not_called_tied():
    base = baseline_loss()
    summary, markdown = summarise(
        [Version("v1", [make_run("v1", base, eval_loss=1.2)]), Version("v2", [make_run("v2", base - 0.1)])]
    )
    row = next(line for line in markdown.splitlines() if line.startswith("| generalisation (final eval loss)"))
    assert row.endswith("| — |") and "tied" not in row


def test_a_version_lower_only_at_the_start_is_said_to_end_higher():
    early = 1.0 + 2.0 * np.exp(-STEPS / 30) - 0.8 * np.exp(-STEPS / 15) + 0.02 * (STEPS > 50)
    base = baseline_loss()
    seeds = (-0.004, 0.0, 0.004)
    versions = [
        Version("v1", [make_run(f"v1-seed{seed}", base + shift) for seed, shift in enumerate(seeds)]),
        Version("v2", [make_run(f"v2-seed{seed}", early + shift) for seed, shift in enumerate(seeds)]),
    ]
    summary, markdown = summarise(versions)
    pair = summary.advantages.convergence.pairs["v2"]
    final = summary.advantages.final_train_loss.vs_baseline["v2"]
    assert pair.diff < 0 and pair.significant and final.diff > 0 and final.significant
    assert "converges to a lower training loss" not in markdown
    (crossing,) = [insight for insight in summary.insights if insight.kind == "crossing_ends_higher"]
    assert crossing.text.startswith("v2 ends at a higher training loss than v1 (")
    assert "the curves cross" in crossing.text


def test_a_large_final_eval_difference_that_is_not_significant_keeps_its_direction():
    base = baseline_loss()
    versions = [
        Version("v1", [make_run(f"v1-seed{seed}", base, eval_loss=value) for seed, value in enumerate((1.50, 1.56))]),
        Version("v2", [make_run(f"v2-seed{seed}", base, eval_loss=value) for seed, value in enumerate((1.40, 1.54))]),
    ]
    summary, _ = summarise(versions)
    (insight,) = [insight for insight in summary.insights if insight.kind.startswith("final_eval")]
    assert insight.kind == "final_eval_lower_not_significant"
    assert insight.text.startswith("v2's final eval loss is lower than v1's (1.4700 vs 1.5300, -3.92%)")
    assert "cannot be told apart" not in insight.text and "not significant (Welch p=" in insight.text


def test_a_learning_rate_that_was_not_logged_reads_as_one_dash_and_one_reason():
    coarse = np.arange(10, 101, 10)
    loss = 1.0 + 2.0 * np.exp(-coarse / 30)
    runs = [make_run(f"v2-seed{seed}", loss - 0.1 * seed, steps=coarse, logged_lr=False) for seed in (1, 2)]
    _, markdown = summarise([Version("v1", [make_run("v1", loss, steps=coarse)]), Version("v2", runs)])
    row = next(line for line in markdown.splitlines() if line.startswith("| v2 | linear |"))
    assert row.endswith("| — | — | — | — | not checked: no learning_rate logged |")


def test_a_setting_one_version_does_not_record_is_not_said_to_differ():
    base = baseline_loss()
    imported = make_run("v2", base - 0.1)
    del imported.config["data"], imported.config["model"]  # e.g. an HF run: no data or model keys in its arguments
    summary, markdown = summarise([Version("v1", [make_run("v1", base)]), Version("v2", [imported])])
    assert not [warning for warning in summary.warnings if warning.kind == "setting"]
    assert "differs between versions (" not in markdown
