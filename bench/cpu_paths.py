"""CPU time of the two paths every user runs before and after training: data preparation and the comparison report.

Run it against two checkouts to compare them side by side in one sitting, e.g.
    PYTHONPATH=OLD/src python bench/cpu_paths.py --runs examples/smollm2-real/runs
    PYTHONPATH=src     python bench/cpu_paths.py --runs examples/smollm2-real/runs
It prints one JSON line (medians over --repeats) and appends it to --out when given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import medtune
from medtune.config import load_config
from medtune.data.prepare import prepare_data
from medtune.model.load import load_tokenizer
from medtune.report.build import build_report

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", type=Path, required=True, help="folder of medtune run folders named <version>-seed<n>"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="results.jsonl to append to")
    args = parser.parse_args()

    cfg = load_config(CONFIGS / "v3.yaml", [], overlays=[CONFIGS / "tiny.yaml"])  # v3: augmentation included
    tokenizer = load_tokenizer(cfg.model)
    runs = sorted(str(path) for path in args.runs.iterdir() if (path / "metrics.jsonl").exists())
    record = {
        "commit": subprocess.run(
            ["git", "-C", str(Path(medtune.__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "prepare_data_s": median_seconds(lambda: prepare_data(cfg, tokenizer), args.repeats),
        "build_report_s": median_seconds(lambda: build_report(runs, out_dir=tempfile.mkdtemp()), args.repeats),
        "runs": len(runs),
        "repeats": args.repeats,
    }
    print(json.dumps(record))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
