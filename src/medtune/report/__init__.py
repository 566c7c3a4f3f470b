"""Comparison reports of experiment versions (`medtune compare`).

`sources/` turns medtune run folders, SwanLab logs, TensorBoard events and HF `trainer_state.json` into `Run`s
(inputs.py); `analysis.py` computes every number (with `stats.py` and `schedule.py`), `insights.py` picks the
statements, `document.py` + `markup.py` + `charts.py` write them; `build.build_report` ties these together and
`settings.py` holds the defaults of its options, and `medtune.cli.report.compare` is the CLI. Nothing is imported
here, so the CLI starts fast.
"""
