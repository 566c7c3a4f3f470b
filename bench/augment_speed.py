"""How fast the term-masking augmentation is, on the shipped data, next to tokenizing the same samples.

    python bench/augment_speed.py [--repeats 5]

Prints the lexicon load time, the longest-match search speed per field (terms found per second, microseconds
per sample) and the cost of `Augmenter.apply` per sample under the default config, a worst case (every
sample masked, all three fields searched) and the reference-compatible preset.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from importlib import resources

from medtune.config import AugmentConfig
from medtune.data.augment import Augmenter, AugmentStats
from medtune.data.formats import Sample
from medtune.data.lexicon import load_lexicon

FIELDS = ("question", "think", "answer")


def shipped_samples() -> list[Sample]:
    path = resources.files("medtune") / "resources" / "data" / "delicate_medical_r1_val.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Sample(question=row["question"], think=row["think"], answer=row["answer"]) for row in rows]


def seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs: the least disturbed by other processes on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the fastest is reported")
    repeats = parser.parse_args().repeats
    samples = shipped_samples()

    load_start = time.perf_counter()
    lexicon = load_lexicon("medical")
    print(f"medical lexicon: {len(lexicon)} terms, loaded in {(time.perf_counter() - load_start) * 1e3:.0f} ms")
    print(f"shipped data: {len(samples)} samples\n")

    print(f"{'longest-match search':<24}{'chars/sample':>14}{'terms/sample':>14}{'terms/s':>12}{'µs/sample':>12}")
    for field in FIELDS:
        texts = [getattr(sample, field) for sample in samples]
        found = sum(len(lexicon.find(text)) for text in texts)
        elapsed = seconds(lambda texts=texts: [lexicon.find(text) for text in texts], repeats)
        chars = sum(map(len, texts)) / len(texts)
        print(
            f"{field:<24}{chars:>14.0f}{found / len(texts):>14.1f}"
            f"{found / elapsed:>12,.0f}{elapsed / len(texts) * 1e6:>12.1f}"
        )

    print(f"\n{'Augmenter.apply':<44}{'µs/sample':>12}{'masked share':>14}")
    settings = {
        "default (p=0.1, question)": AugmentConfig(enabled=True),
        "every sample, all fields, all occurrences": AugmentConfig(
            enabled=True, probability=1.0, fields=list(FIELDS), occurrence="all"
        ),
        "reference-compatible preset": AugmentConfig(enabled=True, preset="reference-compatible"),
    }
    epochs = 10
    for name, cfg in settings.items():
        augmenter = Augmenter.from_config(cfg, seed=42)
        stats = AugmentStats()
        for epoch in range(epochs):
            for index, sample in enumerate(samples):
                stats.record(epoch, augmenter.apply(sample, epoch, index)[1])
        share = sum(stats.epoch_summary(epoch)["masked_share"] for epoch in range(epochs)) / epochs
        elapsed = seconds(
            lambda augmenter=augmenter: [augmenter.apply(sample, 0, index) for index, sample in enumerate(samples)],
            repeats,
        )
        print(f"{name:<44}{elapsed / len(samples) * 1e6:>12.1f}{share:>14.3f}")

    from transformers import AutoTokenizer  # imported late: only the comparison row needs it

    tokenizer = AutoTokenizer.from_pretrained(str(resources.files("medtune") / "resources" / "tokenizer"))
    texts = ["\n".join(getattr(sample, field) for field in FIELDS) for sample in samples]
    elapsed = seconds(lambda: [tokenizer(text)["input_ids"] for text in texts], repeats)
    print(f"{'for scale: Qwen3 tokenizer, same samples':<44}{elapsed / len(samples) * 1e6:>12.1f}")


if __name__ == "__main__":
    main()
