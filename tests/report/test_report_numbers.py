"""Every number of the report for fabricated runs, recomputed here with numpy from the fabricated arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from medtune.report.build import build_report

STEPS = [100, 200, 300, 400]
PHASES = (0.1, 0.5)


@pytest.fixture(scope="module")
def report(fabricated, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    summary = build_report([run.folder for run in fabricated], out_dir=out, baseline="v1", steps=STEPS, phases=PHASES)
    return summary, out


def by_version(fabricated):
    grouped = {}
    for run in fabricated:
        grouped.setdefault(run.version, []).append(run)
    return grouped


def at(steps, values, step):
    index = int(np.argmin(np.abs(steps - step)))
    return float(values[index])


def mean_ci(values):
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return float(values[0]), None
    return float(values.mean()), float(
        stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    )


def welch_p(a, b):
    """Welch's t-test written out (Welch-Satterthwaite degrees of freedom), independent of scipy's ttest_ind."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (b.mean() - a.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * stats.t.sf(abs(t), dof))


def pooled(groups):
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 1]
    return math.sqrt(sum(g.var(ddof=1) * (len(g) - 1) for g in groups) / sum(len(g) - 1 for g in groups))


def check_cell(cell, values):
    mean, ci = mean_ci(values)
    assert cell["n"] == len(values)
    assert cell["mean"] == pytest.approx(mean, rel=1e-9)
    assert (cell["ci95"] is None) == (ci is None)
    if ci is not None:
        assert cell["ci95"] == pytest.approx(ci, rel=1e-9)


def check_versus(comparison, base_values, values, minimum=(0.01, 0.005)):
    """The rule of "a difference worth stating": Welch with two runs or more on both sides, else the minimum effect."""
    base_mean, mean = np.mean(base_values), np.mean(values)
    assert comparison["diff"] == pytest.approx(mean - base_mean, rel=1e-9)
    assert comparison["rel"] == pytest.approx((mean - base_mean) / abs(base_mean), rel=1e-9)
    if len(base_values) > 1 and len(values) > 1:
        assert comparison["test"] == "welch"
        assert comparison["p_value"] == pytest.approx(welch_p(base_values, values), rel=1e-6)
        assert comparison["significant"] == (comparison["p_value"] < 0.05)
    else:
        threshold = max(minimum[1], minimum[0] * abs(base_mean))
        assert comparison["test"] == "min_effect"
        assert comparison["threshold"] == pytest.approx(threshold, rel=1e-9)
        assert comparison["significant"] == (abs(mean - base_mean) > threshold)


def test_train_loss_table_matches_numpy(report, fabricated):
    summary, _ = report
    versions = by_version(fabricated)
    rows = summary["train_loss"]["rows"]
    assert [row["step"] for row in rows] == STEPS
    for row in rows:
        values = {name: [at(run.steps, run.loss, row["step"]) for run in runs] for name, runs in versions.items()}
        for name in versions:
            check_cell(row["values"][name], values[name])
        for name in ("v2", "v3"):
            check_versus(row["vs_baseline"][name], values["v1"], values[name])
    # v3 logs every 15 steps: 100 and 200 fall back to the nearest logged step, 300 and 400 are logged
    assert [row["steps_used"]["v3"] for row in rows] == [[105], [195], [300], [400]]
    assert [row["exact"] for row in rows] == [False, False, True, True]


def test_eval_loss_and_generalisation_gap(report, fabricated):
    summary, _ = report
    versions = by_version(fabricated)
    rows = summary["eval_loss"]["rows"]
    assert [row["step"] for row in rows] == [100, 200, 300, 400]
    for row in rows:
        evals = {
            name: [at(run.eval_steps, run.eval_loss, row["step"]) for run in runs] for name, runs in versions.items()
        }
        gaps = {
            name: [
                at(run.eval_steps, run.eval_loss, row["step"]) - at(run.steps, run.loss, row["step"]) for run in runs
            ]
            for name, runs in versions.items()
        }
        for name in versions:
            check_cell(row["values"][name], evals[name])
            check_cell(row["gap"]["values"][name], gaps[name])
        check_versus(row["vs_baseline"]["v2"], evals["v1"], evals["v2"])
        check_versus(row["vs_baseline"]["v3"], evals["v1"], evals["v3"])
        for name in ("v2", "v3"):  # a signed gap has no meaningful ratio: absolute differences only
            assert row["gap"]["vs_baseline"][name]["rel"] is None
            assert row["gap"]["vs_baseline"][name]["diff"] == pytest.approx(
                np.mean(gaps[name]) - np.mean(gaps["v1"]), rel=1e-9
            )


def test_gradient_stability(report, fabricated):
    summary, _ = report
    grad = summary["grad_norm"]
    limits = np.array(PHASES) * 400
    cvs = {}
    for name, runs in by_version(fabricated).items():
        phase = [np.searchsorted(limits, run.steps, side="left") for run in runs]
        for index, label in enumerate(("warmup", "early", "late")):
            for statistic, function in (("min", np.min), ("max", np.max), ("median", np.median)):
                check_cell(
                    grad["phases"][label][statistic]["values"][name],
                    [function(run.grad_norm[p == index]) for run, p in zip(runs, phase)],
                )
        after = [run.grad_norm[run.steps > 40] for run in runs]
        cvs[name] = [a.std(ddof=1) / a.mean() for a in after]
        check_cell(grad["sd_after_warmup"]["values"][name], [a.std(ddof=1) for a in after])
        check_cell(grad["cv_after_warmup"]["values"][name], cvs[name])
        check_cell(grad["clipped_fraction"]["values"][name], [np.mean(run.grad_norm > 0.3) for run in runs])
    pairs = {(pair["reference"], pair["other"]): pair for pair in grad["cv_pairs"]}
    assert set(pairs) == {("v1", "v2"), ("v1", "v3"), ("v2", "v3")}
    for (reference, other), pair in pairs.items():
        assert pair["rel"] == pytest.approx(
            (np.mean(cvs[other]) - np.mean(cvs[reference])) / np.mean(cvs[reference]), rel=1e-9
        )
    assert pairs[("v1", "v2")]["p_value"] == pytest.approx(welch_p(cvs["v1"], cvs["v2"]), rel=1e-6)
    assert pairs[("v2", "v3")]["test"] == "min_effect"  # one v3 run: 5% of the reference CV
    assert pairs[("v2", "v3")]["threshold"] == pytest.approx(0.05 * np.mean(cvs["v2"]), rel=1e-9)


def test_learning_rate_dynamics_and_schedule_check(report, fabricated):
    summary, _ = report
    rates = summary["learning_rate"]
    for name, runs in by_version(fabricated).items():
        check_cell(rates["first_logged"]["values"][name], [run.learning_rate[0] for run in runs])
        check_cell(rates["first_logged_step"]["values"][name], [run.steps[0] for run in runs])
        check_cell(rates["largest_logged"]["values"][name], [run.learning_rate.max() for run in runs])
        check_cell(
            rates["largest_logged_step"]["values"][name], [run.steps[run.learning_rate.argmax()] for run in runs]
        )
        check_cell(rates["mid"]["values"][name], [at(run.steps, run.learning_rate, 200) for run in runs])
        check_cell(rates["last_logged"]["values"][name], [run.learning_rate[-1] for run in runs])
        for run in runs:
            check = rates["schedule_check"][name][run.config["run_name"]]
            assert check["matches"] and check["convention"] == "used_by_step"
            assert check["warmup_steps"] == math.ceil(run.config["train"]["warmup_ratio"] * 400)
            assert check["max_deviation"] < 1e-9


def test_advantages_matrix(report, fabricated):
    summary, _ = report
    versions = by_version(fabricated)
    matrix = summary["advantages"]

    def window_losses(runs, grid):
        return [np.trapezoid(np.interp(grid, run.steps, run.loss), grid) / (grid[-1] - grid[0]) for run in runs]

    for name in ("v2", "v3"):
        pair_runs = versions["v1"] + versions[name]
        first = max(run.steps[0] for run in pair_runs)
        end = min(
            run.steps[-1] for run in pair_runs
        )  # v2 and v3 warm up for 10% of 400 steps: the window starts after 40
        grid = np.array(
            sorted({s for run in pair_runs for s in run.steps.tolist() if first <= s <= end and s > 40}), dtype=float
        )
        start = grid[0]
        base, other = window_losses(versions["v1"], grid), window_losses(versions[name], grid)
        entry = matrix["convergence"]["pairs"][name]
        assert (entry["start"], entry["end"]) == (start, end)
        assert entry["window_loss"] == pytest.approx(np.mean(other), rel=1e-9)
        check_versus(entry, base, other)
        base_curve = np.mean([np.interp(grid, run.steps, run.loss) for run in versions["v1"]], axis=0)
        curve = np.mean([np.interp(grid, run.steps, run.loss) for run in versions[name]], axis=0)
        assert entry["share_lower"] == pytest.approx(np.mean(curve < base_curve))
    assert "v1" not in matrix["convergence"]["best"]  # both others converge lower after the warmup in these runs

    finals = {name: [run.eval_loss[-1] for run in runs] for name, runs in versions.items()}
    for name in versions:
        check_cell(matrix["final_eval_loss"]["values"][name], finals[name])
        check_cell(matrix["overfit_gap"]["values"][name], [run.eval_loss[-1] - run.loss[-1] for run in versions[name]])
        check_cell(
            matrix["overfit_ratio"]["values"][name], [run.eval_loss[-1] / run.loss[-1] for run in versions[name]]
        )
        check_cell(
            matrix["evaluation"]["think.bleu"]["values"][name],
            [run.evaluation["think"]["bleu"] for run in versions[name]],
        )
    assert min(finals, key=lambda name: np.mean(finals[name])) in matrix["final_eval_loss"]["best"]
    assert "model" not in matrix["evaluation"]  # text values of eval.json are not metrics

    v3 = versions["v3"][0]
    samples = sum(epoch["samples"] for epoch in v3.augment)
    masked = sum(epoch["masked_samples"] for epoch in v3.augment)
    assert matrix["augmentation"]["samples"]["values"]["v3"]["mean"] == samples
    assert matrix["augmentation"]["masked_share"]["values"]["v3"]["mean"] == pytest.approx(masked / samples)
    assert matrix["augmentation"]["masked_share"]["values"]["v1"]["n"] == 0


def test_config_diff_lists_what_differs_and_ignores_names_and_seeds(report):
    summary, _ = report
    diff = {row["key"]: row["values"] for row in summary["config_diff"]}
    assert diff["train.schedule"] == {"v1": ["linear"], "v2": ["cosine"], "v3": ["cosine"]}
    assert diff["train.warmup_ratio"] == {"v1": [0.0], "v2": [0.1], "v3": [0.1]}
    assert diff["lora.dropout"] == {"v1": [0.05], "v2": [0.1], "v3": [0.1]}
    assert diff["lora.modules_to_save"]["v2"] == [["embed_tokens", "lm_head"]]
    assert diff["augment.enabled"] == {"v1": [False], "v2": [False], "v3": [True]}
    assert not {"run_name", "train.seed", "output_dir", "train.lr"} & set(diff)


def test_noise_and_random_weights(report, fabricated):
    summary, _ = report
    versions = by_version(fabricated)
    noise = summary["noise"]
    assert noise["single_run_versions"] == ["v3"] and noise["from_versions"] == ["v1", "v2"]
    assert noise["final_train_loss_sd"] == pytest.approx(
        pooled([[run.loss[-1] for run in versions[name]] for name in ("v1", "v2")])
    )
    assert summary["random_weights"]["any"] and len(summary["random_weights"]["runs"]) == len(fabricated)


def test_summary_json_on_disk_is_the_returned_summary(report):
    summary, out = report
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary
    assert {"loss.png", "eval_loss.png", "grad_norm.png", "learning_rate.png", "report.md", "report.html"} <= {
        p.name for p in out.iterdir()
    }


def test_insights_follow_the_numbers(report):
    summary, _ = report
    kinds = [insight["kind"] for insight in summary["insights"]]
    fastest = next(insight for insight in summary["insights"] if insight["kind"].startswith("fastest"))
    assert fastest.get("versions", []) == summary["advantages"]["convergence"]["best"]
    stability = {(i["reference"], i["other"]): i for i in summary["insights"] if i["kind"].startswith("stability")}
    cv = summary["grad_norm"]["cv_after_warmup"]["values"]
    for pair in summary["grad_norm"]["cv_pairs"]:
        insight = stability[(pair["reference"], pair["other"])]
        direction = "stability_narrows" if pair["diff"] < 0 else "stability_widens"
        close = abs(pair["diff"]) <= 0.05 * abs(cv[pair["reference"]]["mean"])  # within the minimum effect: alike
        expected = direction if pair["significant"] else "stability_tie" if close else f"{direction}_not_significant"
        assert insight["kind"] == expected
        assert f"{pair['rel'] * 100:+.2f}%" in insight["text"]
    assert "schedule_ok" in kinds and "schedule_bad" not in kinds
    clipping = next(insight for insight in summary["insights"] if insight["kind"].startswith("clipping"))
    assert set(clipping.get("fractions", {})) == set(summary["grad_norm"]["clipped_fraction"]["most"])
