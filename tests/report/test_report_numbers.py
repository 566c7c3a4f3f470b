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
    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


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


def check_versus(comparison, base_values, values, all_groups):
    base_mean, mean = np.mean(base_values), np.mean(values)
    assert comparison["rel"] == pytest.approx((mean - base_mean) / base_mean, rel=1e-9)
    if len(base_values) > 1 and len(values) > 1:
        assert comparison["test"] == "welch"
        assert comparison["p_value"] == pytest.approx(welch_p(base_values, values), rel=1e-6)
        assert comparison["significant"] == (comparison["p_value"] < 0.05)
    else:
        threshold = 1.959963984540054 * pooled(all_groups) * math.sqrt(1 / len(base_values) + 1 / len(values))
        assert comparison["test"] == "noise"
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
            check_versus(row["vs_baseline"][name], values["v1"], values[name], list(values.values()))
    # v3 logs every 15 steps: 100 and 200 fall back to the nearest logged step, 300 and 400 are logged
    assert [row["steps_used"]["v3"] for row in rows] == [[105], [195], [300], [400]]
    assert [row["exact"] for row in rows] == [False, False, True, True]


def test_eval_loss_and_generalisation_gap(report, fabricated):
    summary, _ = report
    versions = by_version(fabricated)
    rows = summary["eval_loss"]["rows"]
    assert [row["step"] for row in rows] == [100, 200, 300, 400]
    for row in rows:
        evals = {name: [at(run.eval_steps, run.eval_loss, row["step"]) for run in runs] for name, runs in versions.items()}
        gaps = {name: [at(run.eval_steps, run.eval_loss, row["step"]) - at(run.steps, run.loss, row["step"]) for run in runs]
                for name, runs in versions.items()}
        for name in versions:
            check_cell(row["values"][name], evals[name])
            check_cell(row["gap"]["values"][name], gaps[name])
        check_versus(row["vs_baseline"]["v2"], evals["v1"], evals["v2"], list(evals.values()))


def test_gradient_stability(report, fabricated):
    summary, _ = report
    grad = summary["grad_norm"]
    limits = np.array(PHASES) * 400
    cvs = {}
    for name, runs in by_version(fabricated).items():
        phase = [np.searchsorted(limits, run.steps, side="left") for run in runs]
        for index, label in enumerate(("warmup", "early", "late")):
            for statistic, function in (("min", np.min), ("max", np.max), ("median", np.median)):
                check_cell(grad["phases"][label][statistic]["values"][name],
                           [function(run.grad_norm[p == index]) for run, p in zip(runs, phase)])
        after = [run.grad_norm[run.steps > 40] for run in runs]
        cvs[name] = [a.std(ddof=1) / a.mean() for a in after]
        check_cell(grad["sd_after_warmup"]["values"][name], [a.std(ddof=1) for a in after])
        check_cell(grad["cv_after_warmup"]["values"][name], cvs[name])
        check_cell(grad["clipped_fraction"]["values"][name], [np.mean(run.grad_norm > 0.3) for run in runs])
    pairs = {(pair["reference"], pair["other"]): pair for pair in grad["cv_pairs"]}
    assert set(pairs) == {("v1", "v2"), ("v1", "v3"), ("v2", "v3")}
    for (reference, other), pair in pairs.items():
        assert pair["rel"] == pytest.approx((np.mean(cvs[other]) - np.mean(cvs[reference])) / np.mean(cvs[reference]), rel=1e-9)
    assert pairs[("v1", "v2")]["p_value"] == pytest.approx(welch_p(cvs["v1"], cvs["v2"]), rel=1e-6)
    assert pairs[("v2", "v3")]["test"] is None  # one v3 run, and pairs use no pooled noise


def test_learning_rate_dynamics_and_schedule_check(report, fabricated):
    summary, _ = report
    rates = summary["learning_rate"]
    for name, runs in by_version(fabricated).items():
        check_cell(rates["initial"]["values"][name], [run.learning_rate[0] for run in runs])
        check_cell(rates["peak"]["values"][name], [run.learning_rate.max() for run in runs])
        check_cell(rates["peak_step"]["values"][name], [run.steps[run.learning_rate.argmax()] for run in runs])
        check_cell(rates["mid"]["values"][name], [at(run.steps, run.learning_rate, 200) for run in runs])
        check_cell(rates["final"]["values"][name], [run.learning_rate[-1] for run in runs])
        for run in runs:
            check = rates["schedule_check"][name][run.config["run_name"]]
            assert check["matches"] and check["convention"] == "used_by_step"
            assert check["warmup_steps"] == math.ceil(run.config["train"]["warmup_ratio"] * 400)
            assert check["max_deviation"] < 1e-9


def test_advantages_matrix(report, fabricated):
    summary, _ = report
    versions = by_version(fabricated)
    matrix = summary["advantages"]

    def curve(runs):
        common = set.intersection(*(set(run.steps.tolist()) for run in runs))
        return {s: np.mean([at(run.steps, run.loss, s) for run in runs]) for s in common}

    base = curve(versions["v1"])
    for name in ("v2", "v3"):
        other = curve(versions[name])
        common = sorted(set(base) & set(other))
        gaps = [other[s] - base[s] for s in common]
        step = common[int(np.argmax(np.abs(gaps)))]
        entry = matrix["convergence"][name]
        assert entry["step"] == step
        assert entry["rel"] == pytest.approx((other[step] - base[step]) / base[step], rel=1e-9)
    fastest = min(("v2", "v3"), key=lambda name: matrix["convergence"][name]["diff"])
    assert matrix["convergence"]["best"] == (fastest if matrix["convergence"][fastest]["diff"] < 0 else "v1")

    finals = {name: [run.eval_loss[-1] for run in runs] for name, runs in versions.items()}
    for name in versions:
        check_cell(matrix["final_eval_loss"]["values"][name], finals[name])
        check_cell(matrix["overfit_gap"]["values"][name], [run.eval_loss[-1] - run.loss[-1] for run in versions[name]])
        check_cell(matrix["overfit_ratio"]["values"][name], [run.eval_loss[-1] / run.loss[-1] for run in versions[name]])
        check_cell(matrix["evaluation"]["think.bleu"]["values"][name], [run.evaluation["think"]["bleu"] for run in versions[name]])
    assert matrix["final_eval_loss"]["best"] == min(finals, key=lambda name: np.mean(finals[name]))
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
    assert noise["final_train_loss_sd"] == pytest.approx(pooled([[run.loss[-1] for run in versions[name]] for name in ("v1", "v2")]))
    assert summary["random_weights"]["any"] and len(summary["random_weights"]["runs"]) == len(fabricated)


def test_summary_json_on_disk_is_the_returned_summary(report):
    summary, out = report
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary
    assert {"loss.png", "eval_loss.png", "grad_norm.png", "learning_rate.png", "report.md", "report.html"} <= {p.name for p in out.iterdir()}


def test_insights_follow_the_numbers(report):
    summary, _ = report
    kinds = [insight["kind"] for insight in summary["insights"]]
    fastest = next(insight for insight in summary["insights"] if insight["kind"] == "fastest")
    assert fastest["version"] == summary["advantages"]["convergence"]["best"]
    assert f"Fastest convergence: {fastest['version']}." == fastest["text"]
    stability = {(i["reference"], i["other"]): i for i in summary["insights"] if i["kind"] == "stability"}
    for pair in summary["grad_norm"]["cv_pairs"]:
        insight = stability[(pair["reference"], pair["other"])]
        assert insight["direction"] == ("narrows" if pair["rel"] < 0 else "widens")
        assert f"{abs(pair['rel']) * 100:.2f}%" in insight["text"]
    assert "schedule_ok" in kinds and "schedule_bad" not in kinds
    clipping = next(insight for insight in summary["insights"] if insight["kind"] == "clipping")
    fractions = {name: value["mean"] for name, value in summary["grad_norm"]["clipped_fraction"]["values"].items()}
    assert clipping["version"] == max(fractions, key=fractions.get)
