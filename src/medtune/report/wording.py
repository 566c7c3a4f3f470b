"""All words of the report, one table per language with the same keys; `{name}` fields are filled from the numbers."""

from __future__ import annotations

from medtune.report.inputs import ReportError
from medtune.report.settings import LANGUAGES

WORDING: dict[str, dict[str, str]] = {
    "en": {
        "title": "medtune comparison report: {versions}",
        "list_sep": ", ",
        "random_weights": (
            "Warning: the weights of {runs} were random (offline tiny model). These numbers test the pipeline only "
            "and say nothing about medical quality."
        ),
        "random_unknown": "The sources of {runs} do not say whether the weights were random.",
        "intro": "Baseline: {baseline}. Every number below is computed from the runs; summary.json holds them all.",
        "method_heading": "Method",
        "stats_method": (
            "Tables show the mean over a version's runs, ± the half-width of the {confidence_pct}% t confidence "
            "interval, with n runs. A difference is stated only when it is worth stating: with at least two runs in "
            "both versions, when Welch's t-test finds it significant at α={alpha} (p shown, n.s. = not significant); "
            "with a single run in either version, when it exceeds a minimum effect (losses: {loss_rel} of the "
            "reference and {loss_abs}; shares of steps: {share_abs} percentage points; other quantities: {other_rel} "
            "of the reference). Otherwise the versions are tied and no winner is named. No relative change is given "
            "when the reference is near zero (its magnitude below {near_zero} of the larger value compared, or no "
            "larger than the absolute minimum effect) or the value lies on the other side of zero; the absolute "
            "difference is given instead."
        ),
        "convergence_method": (
            "Convergence compares whole training-loss curves after the warmup, never one step: from the latest "
            "configured warmup end (or the latest first logged step) to the earliest last logged step, each run's "
            "loss is interpolated onto every step any run logged; the window loss is the area under the curve "
            "divided by the window's length, compared by the rule above; the share of steps where one mean curve is "
            "lower and the step at which each version first reaches a common loss are given with it."
        ),
        "runs_heading": "Runs",
        "col_version": "version",
        "col_run": "run",
        "col_source": "source",
        "col_last_step": "last step",
        "col_planned": "planned steps",
        "col_random": "random weights",
        "col_notes": "notes",
        "yes": "yes",
        "no": "no",
        "unknown": "unknown",
        "source_medtune_run": "medtune run folder {path}",
        "source_swanlab_run_file": "SwanLab run file {path}",
        "source_swanlab_local_log": "SwanLab local log {path}",
        "source_tensorboard": "TensorBoard events {path}",
        "source_trainer_state": "HF trainer_state {path}",
        "part_sep": "; ",
        "labelled": "{label}: {text}",
        "with_aside": "{value} ({aside})",
        "note_at_file": "{file}: {note}",
        "note_at_key": "{file}: {key}: {note}",
        "note_missing_file": "no {name}",
        "note_planned_from_epochs": (
            "planned steps {planned} = train.epochs {epochs:g} x {steps_per_epoch:.4g} steps per epoch (logged epoch "
            "{epoch:g} at step {step})"
        ),
        "note_planned_unknown": "planned steps unknown: train.epochs is {epochs} but no epoch counter was logged",
        "note_tracker_no_summary": "{tracker} logs carry no summary.json (random_weights unknown) and no eval.json",
        "note_trainer_no_summary": "HF Trainer checkpoints carry no summary.json (random_weights unknown)",
        "note_no_training_args": (
            "no training_args: schedule, LR and clipping threshold unknown (save TrainingArguments.to_dict() as "
            "training_args.json)"
        ),
        "note_training_args_pickle": (
            "training_args.bin is a pickle and is not read: schedule, LR and clipping threshold unknown (save "
            "TrainingArguments.to_dict() as training_args.json)"
        ),
        "note_no_args_summary": "no args text summary: config unknown",
        "note_config_not_recognised": "neither HF TrainingArguments nor a medtune config; its keys are shown as logged",
        "note_incomplete_record": (
            "ends in an incomplete record ({error}); read up to the last complete one (run unfinished or crashed?)"
        ),
        "note_adapters_other": "adapters {adapters}: lora.* are those of {chosen}, the others under {kept_under}",
        "note_not_lora_config": "expected a LoRA config, got {value}; kept under {kept_under}",
        "note_repr_syntax": "not a Python repr ({error} at column {column}); kept as text under {kept_under}",
        "note_repr_too_deep": "not a Python repr (nested too deeply); kept as text under {kept_under}",
        "note_repr_not_literal": "{text} is not a literal value; kept as text",
        "note_schedule_unknown": "'{value}' has no medtune counterpart; the logged LR cannot be checked against it",
        "note_constant_ignores_warmup": "HF's 'constant' ignores warmup_steps/warmup_ratio; read as no warmup",
        "note_optimizer_unknown": "'{value}' has no medtune counterpart; kept by its HF name",
        "single_run": (
            "{versions}: one run each. There is no run-to-run noise to test against, so only differences above the "
            "minimum effect are stated; {advice}."
        ),
        "advice_compare": (
            "for a test, give each version several seeds (--name v1=runs/v1-seed1 --name v1=runs/v1-seed2 ...)"
        ),
        "advice_ablate": "for a test, run the experiment again with several seeds (medtune ablate --seeds 3)",
        "warn_given_twice": "Warning: run {run} was given twice for {version}; it is counted once.",
        "warn_given_for_two": (
            "Warning: run {run} was given for both {version} and {other}: the same run stands for two versions, so "
            "they cannot differ."
        ),
        "warn_identical_same": (
            "Warning: runs {first} and {second} of {version} are two runs that logged exactly the same values (a copy "
            "of one run, or a seed that changed nothing). They are counted as one run, and its version has no "
            "run-to-run noise from them."
        ),
        "warn_identical_across": (
            "Warning: runs {first} and {second} are two runs that logged exactly the same values, so on these runs "
            "{version} and {other} cannot differ.{cause}"
        ),
        "identical_cause_unmasked": (
            " The likely cause: the realised augmentation of {runs} masked no sample, so it trained as without "
            "augmentation."
        ),
        "warn_non_finite": (
            "Warning: run {run} logged values that are not finite numbers (NaN or ±inf): {metrics}. The tables, "
            "charts and tests leave them out, so {version} is compared on this run's finite values only; a loss that "
            "turns NaN or inf usually means that the run diverged."
        ),
        "non_finite_metric": "{key} at {count} steps from step {first_step}",
        "non_finite_metric_one": "{key} at step {first_step}",
        "warn_planned_steps": (
            "Warning: the versions planned different numbers of steps ({values}); curves and final values are not "
            "comparable step for step."
        ),
        "warn_last_steps": (
            "Warning: the runs stop at different steps ({values}); final values compare runs at different points of "
            "training."
        ),
        "warn_setting": (
            "Warning: {key} differs between versions ({values}); differences may come from it rather than from the "
            "recipe."
        ),
        "warn_repeated_rows": (
            "Warning: the training-loss row for step {step} would repeat the row for step {same_as} (the same logged "
            "steps); it is left out."
        ),
        "warn_steps_past_end": (
            "Warning: no run trained past step {last}, so the training-loss table leaves out the requested steps "
            "{steps}."
        ),
        "warn_no_cjk_font": (
            "No CJK font was found, so chart labels are in English (install fonts-noto-cjk or fonts-wqy-microhei)."
        ),
        "noise_known": (
            "Run-to-run noise (sd over seeds of {versions}): final training loss {train_sd}, final eval loss {eval_sd}."
        ),
        "noise_unknown": "No version has several distinct runs, so there is no estimate of the run-to-run noise.",
        "versions_heading": "What differs between versions",
        "versions_none": "The resolved configs do not differ (apart from run names, output folders and seeds).",
        "versions_none_of": (
            "The resolved configs of {runs} do not differ (apart from run names, output folders and seeds)."
        ),
        "config_unread": "No config was read for {runs}, so what differs in their settings is unknown.",
        "col_setting": "setting",
        "missing": "—",
        "train_heading": "Training loss",
        "col_step": "step",
        "col_trend": "{version} vs {baseline}",
        "col_gap": "gap {version}",
        "nearest_note": "Step {step}: not logged by {version}; nearest logged step {used} used.",
        "eval_heading": "Eval loss",
        "eval_none": "No run logged an eval loss.",
        "gap_note": (
            "gap = eval loss − training loss at the same step (the generalisation gap); changes of the gap are "
            "absolute differences."
        ),
        "grad_heading": "Gradient stability",
        "phase_warmup": "warmup",
        "phase_early": "early",
        "phase_late": "late",
        "col_phase_range": "{phase} {start}–{end}% range",
        "col_phase_median": "{phase} median",
        "col_sd": "sd after warmup",
        "col_cv": "CV after warmup",
        "col_cv_change": "CV vs {baseline}",
        "col_clipped": "clipped (grad_norm > max_grad_norm)",
        "grad_note": (
            "Phases are fractions of each run's planned steps. Ranges are min–max of the logged grad_norm; CV = sd / "
            "mean after warmup."
        ),
        "warmup_empty_note": (
            "{version}: no grad_norm was logged in the warmup phase (steps 0–{end}); its first logged step is {first}."
        ),
        "pairs_heading": "Grad-norm fluctuation between versions (CV after warmup)",
        "col_reference": "reference",
        "col_other": "version",
        "col_change": "change",
        "col_verdict": "verdict",
        "lr_heading": "Learning-rate dynamics",
        "col_schedule": "configured schedule",
        "col_first_logged": "first logged (step)",
        "col_largest_logged": "largest logged (step)",
        "col_mid": "mid-training (step)",
        "col_last_logged": "last logged (step)",
        "col_check": "logged vs configured",
        "at_step_paren": "(step {step})",
        "schedule_desc": "{schedule}, peak {peak} at the end of a {warmup}-step warmup, {total} planned steps",
        "schedule_linear": "linear decay",
        "schedule_cosine": "cosine decay",
        "schedule_constant": "constant",
        "check_ok": "matches (max deviation {deviation} of peak), {convention}",
        "check_bad": "MISMATCH: {deviation} of peak at step {step}",
        "check_skipped": "not checked: {reason}",
        "reason_no_schedule": "the config has no train.schedule",
        "reason_unknown_schedule": "schedule {schedule} is not linear, cosine or constant",
        "reason_no_lr": "the config has no train.lr",
        "reason_no_total": "the planned number of steps is unknown",
        "reason_no_lr_logged": "no learning_rate logged",
        "convention_used_by_step": "LR used by the step",
        "convention_after_step": "LR after the step",
        "lr_note": (
            "Peak LR, warmup end and planned steps come from the config; the logged LR is checked against the "
            "schedule they define (transformers' get_scheduler formulas, tolerance {tolerance} of the peak LR). The "
            "logged columns only show logged values: the first logged value is not the initial LR unless step 1 was "
            "logged."
        ),
        "warmup_unlogged_note": (
            "{version}: no LR was logged inside the configured warmup ({runs}), so the logged values do not show the "
            "ramp."
        ),
        "advantages_heading": "Advantages matrix",
        "col_criterion": "criterion",
        "col_best": "best (lowest mean)",
        "crit_convergence": "convergence (training loss over the window after warmup)",
        "crit_final_train": "final training loss",
        "crit_final_eval": "generalisation (final eval loss)",
        "crit_stability": "stability (grad-norm CV after warmup)",
        "crit_overfit_gap": "overfitting risk (final eval − train loss)",
        "crit_overfit_ratio": "overfitting risk (final eval / train loss)",
        "crit_augment": "augmentation: {key}",
        "crit_eval": "evaluation: {key}",
        "reference": "reference",
        "share_lower": "lower at {share} of steps",
        "tie_none": "none (tied)",
        "not_ranked": "not ranked",
        "advantages_note": (
            "The best column names every version tied at the lowest mean, or none when all versions are tied; "
            "augmentation and evaluation rows are not ranked (whether higher is better depends on the metric)."
        ),
        "eval_setup_heading": "How the evaluation was made",
        "insights_heading": "Insights",
        "verdict_welch_yes": "significant (Welch {p})",
        "verdict_welch_no": "not significant (Welch {p}), within run-to-run noise",
        "verdict_min_effect_yes": "above the minimum effect for one run per version (±{threshold})",
        "verdict_min_effect_no": "below the minimum effect for one run per version (±{threshold})",
        "verdict_unknown": "cannot be judged",
        "insight_convergence_lower": (
            "{version}'s training loss after the warmup is lower than {baseline}'s: over steps {start}–{end} its mean "
            "curve is lower at {share} of the steps and its window loss is {loss} vs {base_loss} ({change}); "
            "{verdict}."
        ),
        "insight_convergence_higher": (
            "{version}'s training loss after the warmup is higher than {baseline}'s: over steps {start}–{end} its "
            "mean curve is higher at {share} of the steps and its window loss is {loss} vs {base_loss} ({change}); "
            "{verdict}."
        ),
        "insight_convergence_tie": (
            "{version} and {baseline} converge alike after the warmup: over steps {start}–{end} the window losses "
            "are {loss} vs {base_loss} ({change}), {verdict}, so no winner is named."
        ),
        "insight_convergence_lower_not_significant": (
            "{version}'s training loss after the warmup is lower than {baseline}'s: over steps {start}–{end} its "
            "window loss is {loss} vs {base_loss} ({change}) and its mean curve is lower at {share} of the steps, "
            "but the difference is {verdict}, so no winner is named."
        ),
        "insight_convergence_higher_not_significant": (
            "{version}'s training loss after the warmup is higher than {baseline}'s: over steps {start}–{end} its "
            "window loss is {loss} vs {base_loss} ({change}) and its mean curve is higher at {share} of the steps, "
            "but the difference is {verdict}, so no winner is named."
        ),
        "insight_convergence_none": (
            "{version} and {baseline} share fewer than two logged steps after the warmup, so their convergence is "
            "not compared."
        ),
        "insight_fastest": "Fastest convergence (lowest training loss over steps {start}–{end}): {versions}.",
        "insight_fastest_none": (
            "No version converges distinguishably faster over steps {start}–{end}: the differences do not pass the "
            "rule above."
        ),
        "insight_target": (
            "First step at which the mean training loss reaches {target} (the highest final loss of the versions): "
            "{reached}."
        ),
        "insight_final_eval_lower": (
            "{version} ends at a lower eval loss than {baseline} ({loss} vs {base_loss}, {change}); {verdict}."
        ),
        "insight_final_eval_higher": (
            "{version} ends at a higher eval loss than {baseline} ({loss} vs {base_loss}, {change}); {verdict}."
        ),
        "insight_final_eval_tie": (
            "{version} and {baseline} end at eval losses that cannot be told apart ({loss} vs {base_loss}, "
            "{change}); {verdict}, so no winner is named."
        ),
        "insight_final_eval_lower_not_significant": (
            "{version}'s final eval loss is lower than {baseline}'s ({loss} vs {base_loss}, {change}), but the "
            "difference is {verdict}, so no winner is named."
        ),
        "insight_final_eval_higher_not_significant": (
            "{version}'s final eval loss is higher than {baseline}'s ({loss} vs {base_loss}, {change}), but the "
            "difference is {verdict}, so no winner is named."
        ),
        "insight_crossing_ends_higher": (
            "{version} ends at a higher training loss than {baseline} ({loss} vs {base_loss}, {change}; {verdict}), "
            "although its training loss after the warmup is lower on the whole: the curves cross, and its lead does "
            "not last to the end."
        ),
        "insight_crossing_ends_lower": (
            "{version} ends at a lower training loss than {baseline} ({loss} vs {base_loss}, {change}; {verdict}), "
            "although its training loss after the warmup is higher on the whole: the curves cross, and {baseline}'s "
            "lead does not last to the end."
        ),
        "insight_stability_narrows": (
            "{other} has a steadier grad norm than {reference} (CV after warmup {value} vs {base_value}, {change}); "
            "{verdict}."
        ),
        "insight_stability_widens": (
            "{other} has a more fluctuating grad norm than {reference} (CV after warmup {value} vs {base_value}, "
            "{change}); {verdict}."
        ),
        "insight_stability_tie": (
            "{other} and {reference} fluctuate alike (CV after warmup {value} vs {base_value}, {change}); {verdict}."
        ),
        "insight_stability_narrows_not_significant": (
            "{other}'s grad-norm CV after warmup is lower than {reference}'s ({value} vs {base_value}, {change}), but "
            "the difference is {verdict}."
        ),
        "insight_stability_widens_not_significant": (
            "{other}'s grad-norm CV after warmup is higher than {reference}'s ({value} vs {base_value}, {change}), but "
            "the difference is {verdict}."
        ),
        "insight_overfit": "Largest final eval − train gap: {gaps}.",
        "insight_overfit_tie": "The final eval − train gaps of all versions are tied ({gap_range}).",
        "value_range": "{low} to {high}",
        "insight_overfit_none": "No version ends with an eval loss above its training loss: no sign of overfitting.",
        "insight_clipping": (
            "The gradient is clipped most often in {versions} (share of logged steps whose grad_norm exceeds "
            "max_grad_norm: {fractions})."
        ),
        "insight_clipping_tie": (
            "All versions clip the gradient about equally often ({fraction_range} of logged steps)."
        ),
        "insight_clipping_none": "No logged grad_norm exceeds max_grad_norm.",
        "insight_schedule_ok": (
            "The logged LR of all {count} checked runs follows the configured schedule (max deviation {deviation} of "
            "peak)."
        ),
        "insight_schedule_bad": (
            "The logged LR of {run} deviates from its configured {schedule} schedule: {deviation} of peak at step "
            "{step}."
        ),
        "chart_loss": "Training loss",
        "chart_eval_loss": "Eval loss",
        "chart_grad_norm": "Gradient norm (before clipping)",
        "chart_learning_rate": "Learning rate",
        "chart_step": "step",
        "chart_warmup": "warmup",
        "coinciding_note": (
            "The curves of {first} and {second} coincide (within 1% of the chart's range): they are drawn with "
            "different dashes and markers so that both stay visible."
        ),
    },
    "zh": {
        "title": "medtune 实验对比报告：{versions}",
        "list_sep": "、",
        "random_weights": (
            "警告：{runs} 使用的是随机权重（离线 tiny 模型）。这些数字只检验流程是否跑通，不能说明任何医学问答质量。"
        ),
        "random_unknown": "{runs} 的运行记录未注明是否使用随机权重。",
        "intro": "基线版本：{baseline}。以下所有数字均由运行记录计算得出，完整数值见 summary.json。",
        "method_heading": "方法",
        "stats_method": (
            "表中数值为同一版本多次运行的均值 ± {confidence_pct}% t 置信区间半宽，n 为运行次数。只有值得陈述的差异才"
            "会写出：两个版本都至少有两次运行时，以 Welch t 检验在 α={alpha} 下显著为准（给出 p 值，n.s. 表示不显著）"
            "；任一版本只有一次运行时，差异须超过最小效应（损失：参照值的 {loss_rel} 且不少于 {loss_abs}；步数占比："
            "{share_abs} 个百分点；其他量：参照值的 {other_rel}）。否则视为持平，不判定优劣。参照值接近零（其绝对值小"
            "于所比较的较大数值的 {near_zero}，或不超过最小效应的绝对值）或数值与参照值符号相反时，不给相对变化，只给"
            "绝对差值。"
        ),
        "convergence_method": (
            "收敛比较的是预热之后的整条训练损失曲线，而不是某一步：从各运行中最晚的配置预热结束步（或最晚的首个记录步"
            "）到最早的最后记录步，把每个运行的损失线性插值到任一运行记录过的每一步上；窗口损失为曲线下面积除以窗口长"
            "度，按上述规则比较；同时给出均值曲线更低的步数占比，以及各版本首次达到同一损失水平的步数。"
        ),
        "runs_heading": "运行",
        "col_version": "版本",
        "col_run": "运行",
        "col_source": "来源",
        "col_last_step": "最后一步",
        "col_planned": "计划步数",
        "col_random": "随机权重",
        "col_notes": "备注",
        "yes": "是",
        "no": "否",
        "unknown": "未知",
        "source_medtune_run": "medtune 运行目录 {path}",
        "source_swanlab_run_file": "SwanLab 运行文件 {path}",
        "source_swanlab_local_log": "SwanLab 本地日志 {path}",
        "source_tensorboard": "TensorBoard 事件文件 {path}",
        "source_trainer_state": "HF Trainer 状态文件 {path}",
        "part_sep": "；",
        "labelled": "{label}：{text}",
        "with_aside": "{value}（{aside}）",
        "note_at_file": "{file}：{note}",
        "note_at_key": "{file} 中的 {key}：{note}",
        "note_missing_file": "没有 {name}",
        "note_planned_from_epochs": (
            "计划步数 {planned} 由 train.epochs 估算：{epochs:g} 轮 × 每轮 {steps_per_epoch:.4g} 步（第 {step} 步记录"
            "的轮数为 {epoch:g}）"
        ),
        "note_planned_unknown": "计划步数未知：train.epochs 为 {epochs}，但没有记录轮数计数",
        "note_tracker_no_summary": "{tracker} 日志不含 summary.json（因此不知道是否使用随机权重），也不含 eval.json",
        "note_trainer_no_summary": "HF Trainer 检查点不含 summary.json（因此不知道是否使用随机权重）",
        "note_no_training_args": (
            "没有 training_args：学习率调度、学习率和裁剪阈值未知（可将 TrainingArguments.to_dict() 保存为 "
            "training_args.json）"
        ),
        "note_training_args_pickle": (
            "training_args.bin 是 pickle 文件，为安全起见不读取：学习率调度、学习率和裁剪阈值未知（可将 "
            "TrainingArguments.to_dict() 保存为 training_args.json）"
        ),
        "note_no_args_summary": "没有 args 文本摘要，配置未知",
        "note_config_not_recognised": "既不是 HF TrainingArguments，也不是 medtune 配置，其中的键按记录原样显示",
        "note_incomplete_record": "以不完整的记录结尾（{error}），已读到最后一条完整记录（运行未结束或已崩溃？）",
        "note_adapters_other": "含多个适配器（{adapters}）：lora.* 取自 {chosen}，其余保存在 {kept_under} 下",
        "note_not_lora_config": "应为 LoRA 配置，实际为 {value}，已原样保存在 {kept_under} 下",
        "note_repr_syntax": "不是可解析的 Python repr（第 {column} 列：{error}），已作为文本保存在 {kept_under} 下",
        "note_repr_too_deep": "嵌套过深，无法作为 Python repr 解析，已作为文本保存在 {kept_under} 下",
        "note_repr_not_literal": "{text} 不是字面值，已作为文本保存",
        "note_schedule_unknown": "{value} 在 medtune 中没有对应的调度，无法据此检查记录的学习率",
        "note_constant_ignores_warmup": "HF 的 constant 调度不使用 warmup_steps/warmup_ratio，按无预热处理",
        "note_optimizer_unknown": "{value} 在 medtune 中没有对应的优化器，保留 HF 的名称",
        "single_run": "{versions} 各只有一次运行。没有运行间噪声可供检验，只陈述超过最小效应的差异；{advice}。",
        "advice_compare": (
            "如需做显著性检验，请为每个版本提供多个随机种子的运行（--name v1=runs/v1-seed1 --name v1=runs/v1-seed2 ……）"
        ),
        "advice_ablate": "如需做显著性检验，请用多个随机种子重新运行实验（medtune ablate --seeds 3）",
        "warn_given_twice": "警告：运行 {run} 被重复传入 {version}，只计一次。",
        "warn_given_for_two": (
            "警告：运行 {run} 同时被传入 {version} 和 {other}，同一次运行代表了两个版本，二者不可能有差异。"
        ),
        "warn_identical_same": (
            "警告：{version} 的运行 {first} 与 {second} 是两次运行，但记录的数值完全相同（可能是同一次运行的副本，或"
            "随机种子没有起作用）。二者只计一次，不能据此估计运行间噪声。"
        ),
        "warn_identical_across": (
            "警告：运行 {first} 与 {second} 是两次运行，但记录的数值完全相同，因此就这两次运行而言，{version} 与 "
            "{other} 不可能有差异。{cause}"
        ),
        "identical_cause_unmasked": "可能的原因：{runs} 实际的数据增强没有遮蔽任何样本，训练过程与不做增强相同。",
        "warn_non_finite": (
            "警告：运行 {run} 记录了非有限数值（NaN 或 ±inf）：{metrics}。表格、图表和检验都不包含这些值，因此 "
            "{version} 只按该运行的有限数值比较；损失变为 NaN 或 inf 通常说明训练已发散。"
        ),
        "non_finite_metric": "{key} 自第 {first_step} 步起共 {count} 步",
        "non_finite_metric_one": "{key} 在第 {first_step} 步",
        "warn_planned_steps": "警告：各版本的计划步数不同（{values}），曲线和最终数值无法逐步对比。",
        "warn_last_steps": "警告：各运行停在不同的步数（{values}），最终数值比较的是训练中不同阶段的结果。",
        "warn_setting": "警告：各版本的 {key} 不同（{values}），差异可能来自这一设置，而不是训练方案本身。",
        "warn_repeated_rows": (
            "警告：训练损失表中第 {step} 步的行会与第 {same_as} 步的行重复（对应相同的记录步），已省略。"
        ),
        "warn_steps_past_end": "警告：没有运行训练到第 {last} 步之后，训练损失表省略了所请求的第 {steps} 步。",
        "warn_no_cjk_font": "未找到中文字体，图表标签使用英文（可安装 fonts-noto-cjk 或 fonts-wqy-microhei）。",
        "noise_known": "运行间噪声（{versions} 各种子间的标准差）：最终训练损失 {train_sd}，最终验证损失 {eval_sd}。",
        "noise_unknown": "没有任何版本有多次不同的运行，因此无法估计运行间噪声。",
        "versions_heading": "版本差异",
        "versions_none": "各版本的完整配置相同（运行名、输出目录和随机种子除外）。",
        "versions_none_of": "{runs} 的完整配置相同（运行名、输出目录和随机种子除外）。",
        "config_unread": "没有读到 {runs} 的配置，无法得知其设置有何不同。",
        "col_setting": "配置项",
        "missing": "—",
        "train_heading": "训练损失",
        "col_step": "步数",
        "col_trend": "{version} 相对 {baseline}",
        "col_gap": "{version} 泛化差距",
        "nearest_note": "第 {step} 步：{version} 未记录该步，使用最近的第 {used} 步。",
        "eval_heading": "验证损失",
        "eval_none": "没有运行记录验证损失。",
        "gap_note": "差距 = 同一步的验证损失 − 训练损失（泛化差距）；差距的变化以绝对差值表示。",
        "grad_heading": "梯度稳定性",
        "phase_warmup": "预热",
        "phase_early": "前期",
        "phase_late": "后期",
        "col_phase_range": "{phase} {start}–{end}% 范围",
        "col_phase_median": "{phase} 中位数",
        "col_sd": "预热后标准差",
        "col_cv": "预热后变异系数",
        "col_cv_change": "变异系数相对 {baseline}",
        "col_clipped": "被裁剪步占比（梯度范数 > max_grad_norm）",
        "grad_note": (
            "阶段按各运行计划步数的比例划分。范围为记录的梯度范数的最小值–最大值；变异系数 = 预热后标准差 / 均值。"
        ),
        "warmup_empty_note": "{version}：预热阶段（第 0–{end} 步）没有记录梯度范数，首个记录步为第 {first} 步。",
        "pairs_heading": "版本间梯度范数波动（预热后变异系数）",
        "col_reference": "参照版本",
        "col_other": "版本",
        "col_change": "变化",
        "col_verdict": "判断",
        "lr_heading": "学习率变化",
        "col_schedule": "配置的学习率调度",
        "col_first_logged": "首个记录值（步）",
        "col_largest_logged": "最大记录值（步）",
        "col_mid": "训练中期（步）",
        "col_last_logged": "最后记录值（步）",
        "col_check": "记录值与配置对比",
        "at_step_paren": "（第 {step} 步）",
        "schedule_desc": "{schedule}，{warmup} 步预热结束时达到峰值 {peak}，计划 {total} 步",
        "schedule_linear": "线性衰减",
        "schedule_cosine": "余弦衰减",
        "schedule_constant": "恒定",
        "check_ok": "一致（最大偏差为峰值的 {deviation}），{convention}",
        "check_bad": "不一致：第 {step} 步偏差为峰值的 {deviation}",
        "check_skipped": "未检查：{reason}",
        "reason_no_schedule": "配置中没有 train.schedule",
        "reason_unknown_schedule": "调度 {schedule} 不是 linear、cosine 或 constant",
        "reason_no_lr": "配置中没有 train.lr",
        "reason_no_total": "计划步数未知",
        "reason_no_lr_logged": "没有记录学习率",
        "convention_used_by_step": "记录的是该步使用的学习率",
        "convention_after_step": "记录的是该步之后的学习率",
        "lr_note": (
            "峰值学习率、预热结束步和计划步数取自配置；记录的学习率按它们确定的调度检查（transformers get_scheduler "
            "的公式，容差为峰值学习率的 {tolerance}）。记录值各列只显示实际记录的数值：除非记录了第 1 步，首个记录值"
            "并不是初始学习率。"
        ),
        "warmup_unlogged_note": "{version}：配置的预热期内没有记录学习率（{runs}），记录值看不出预热的上升过程。",
        "advantages_heading": "优势对比矩阵",
        "col_criterion": "指标",
        "col_best": "最优（均值最低）",
        "crit_convergence": "收敛（预热后窗口内的训练损失）",
        "crit_final_train": "最终训练损失",
        "crit_final_eval": "泛化（最终验证损失）",
        "crit_stability": "稳定性（预热后梯度范数变异系数）",
        "crit_overfit_gap": "过拟合风险（最终验证 − 训练损失）",
        "crit_overfit_ratio": "过拟合风险（最终验证 / 训练损失）",
        "crit_augment": "数据增强：{key}",
        "crit_eval": "评测：{key}",
        "reference": "参照",
        "share_lower": "{share} 的步更低",
        "tie_none": "无（持平）",
        "not_ranked": "不排序",
        "advantages_note": (
            "最优一列列出与最低均值持平的所有版本；所有版本都持平时不列任何版本。数据增强和评测各行不排序（数值越高越"
            "好还是越低越好取决于指标）。"
        ),
        "eval_setup_heading": "评测设置",
        "insights_heading": "结论",
        "verdict_welch_yes": "差异显著（Welch {p}）",
        "verdict_welch_no": "差异不显著（Welch {p}），处于运行间噪声范围内",
        "verdict_min_effect_yes": "超过单次运行的最小效应（±{threshold}）",
        "verdict_min_effect_no": "未超过单次运行的最小效应（±{threshold}）",
        "verdict_unknown": "无法判断",
        "insight_convergence_lower": (
            "预热之后 {version} 的训练损失低于 {baseline}：在第 {start}–{end} 步中，其均值曲线在 {share} 的步上更低，"
            "窗口损失为 {loss}，基线为 {base_loss}（{change}）；{verdict}。"
        ),
        "insight_convergence_higher": (
            "预热之后 {version} 的训练损失高于 {baseline}：在第 {start}–{end} 步中，其均值曲线在 {share} 的步上更高，"
            "窗口损失为 {loss}，基线为 {base_loss}（{change}）；{verdict}。"
        ),
        "insight_convergence_tie": (
            "预热之后 {version} 与 {baseline} 收敛情况相当：在第 {start}–{end} 步中，窗口损失为 {loss} 与 "
            "{base_loss}（{change}），{verdict}，因此不判定优劣。"
        ),
        "insight_convergence_lower_not_significant": (
            "预热之后 {version} 的训练损失低于 {baseline}：在第 {start}–{end} 步中，窗口损失为 {loss}，基线为 "
            "{base_loss}（{change}），其均值曲线在 {share} 的步上更低，但{verdict}，因此不判定优劣。"
        ),
        "insight_convergence_higher_not_significant": (
            "预热之后 {version} 的训练损失高于 {baseline}：在第 {start}–{end} 步中，窗口损失为 {loss}，基线为 "
            "{base_loss}（{change}），其均值曲线在 {share} 的步上更高，但{verdict}，因此不判定优劣。"
        ),
        "insight_convergence_none": "预热之后 {version} 与 {baseline} 共同记录的步不足两个，因此不比较收敛。",
        "insight_fastest": "收敛最快（第 {start}–{end} 步训练损失最低）：{versions}。",
        "insight_fastest_none": "在第 {start}–{end} 步中，没有哪个版本收敛得明显更快：差异未达到上述规则的标准。",
        "insight_target": "均值训练损失首次降到 {target}（各版本最终损失中的最高值）的步数：{reached}。",
        "insight_final_eval_lower": (
            "{version} 的最终验证损失低于 {baseline}（{loss}，基线为 {base_loss}，{change}）；{verdict}。"
        ),
        "insight_final_eval_higher": (
            "{version} 的最终验证损失高于 {baseline}（{loss}，基线为 {base_loss}，{change}）；{verdict}。"
        ),
        "insight_final_eval_tie": (
            "{version} 与 {baseline} 的最终验证损失无法区分（{loss} 与 {base_loss}，{change}）；{verdict}，因此不判定"
            "优劣。"
        ),
        "insight_final_eval_lower_not_significant": (
            "{version} 的最终验证损失低于 {baseline}（{loss}，基线为 {base_loss}，{change}），但{verdict}，因此不判定"
            "优劣。"
        ),
        "insight_final_eval_higher_not_significant": (
            "{version} 的最终验证损失高于 {baseline}（{loss}，基线为 {base_loss}，{change}），但{verdict}，因此不判定"
            "优劣。"
        ),
        "insight_crossing_ends_higher": (
            "{version} 的最终训练损失高于 {baseline}（{loss}，基线为 {base_loss}，{change}；{verdict}），尽管预热之后"
            "其训练损失整体更低：两条曲线相交，{version} 的领先没有保持到训练结束。"
        ),
        "insight_crossing_ends_lower": (
            "{version} 的最终训练损失低于 {baseline}（{loss}，基线为 {base_loss}，{change}；{verdict}），尽管预热之后"
            "其训练损失整体更高：两条曲线相交，{baseline} 的领先没有保持到训练结束。"
        ),
        "insight_stability_narrows": (
            "{other} 的梯度范数比 {reference} 更平稳（预热后变异系数 {value}，参照为 {base_value}，{change}）；"
            "{verdict}。"
        ),
        "insight_stability_widens": (
            "{other} 的梯度范数比 {reference} 波动更大（预热后变异系数 {value}，参照为 {base_value}，{change}）；"
            "{verdict}。"
        ),
        "insight_stability_tie": (
            "{other} 与 {reference} 的梯度范数波动相当（预热后变异系数 {value} 与 {base_value}，{change}）；{verdict}。"
        ),
        "insight_stability_narrows_not_significant": (
            "{other} 的预热后梯度范数变异系数低于 {reference}（{value}，参照为 {base_value}，{change}），但{verdict}。"
        ),
        "insight_stability_widens_not_significant": (
            "{other} 的预热后梯度范数变异系数高于 {reference}（{value}，参照为 {base_value}，{change}），但{verdict}。"
        ),
        "insight_overfit": "最终验证与训练损失差距最大的是：{gaps}。",
        "insight_overfit_tie": "各版本最终验证与训练损失的差距持平（{gap_range}）。",
        "value_range": "{low} 至 {high}",
        "insight_overfit_none": "没有版本的最终验证损失高于训练损失，未见过拟合迹象。",
        "insight_clipping": (
            "梯度裁剪最频繁的是 {versions}（已记录步中梯度范数超过 max_grad_norm 的占比：{fractions}）。"
        ),
        "insight_clipping_tie": "各版本梯度裁剪的频率相当（已记录步的 {fraction_range}）。",
        "insight_clipping_none": "没有记录的梯度范数超过 max_grad_norm。",
        "insight_schedule_ok": (
            "全部 {count} 个已检查运行的学习率记录与配置的调度一致（最大偏差为峰值的 {deviation}）。"
        ),
        "insight_schedule_bad": ("{run} 记录的学习率偏离配置的{schedule}调度：第 {step} 步偏差为峰值的 {deviation}。"),
        "chart_loss": "训练损失",
        "chart_eval_loss": "验证损失",
        "chart_grad_norm": "梯度范数（裁剪前）",
        "chart_learning_rate": "学习率",
        "chart_step": "步数",
        "chart_warmup": "预热",
        "coinciding_note": (
            "{first} 与 {second} 的曲线重合（相差不到图表纵轴范围的 1%）：两条线用不同的虚线样式和标记绘制，以便都能"
            "看清。"
        ),
    },
}


def words(lang: str) -> dict[str, str]:
    if lang not in WORDING:
        raise ReportError(f"--lang {lang!r}: choose one of {', '.join(LANGUAGES)}")
    return WORDING[lang]
