"""The v3 medical-term masking augmentation, applied while batches are built.

In a share `probability` of the samples drawn, 1-2 lexicon terms of the chosen fields are replaced by a
mask string. The draw is made afresh every epoch and depends only on (seed, epoch, sample index), so a
resumed run masks exactly what the uninterrupted run would have. Masks inserted into a trained field
(think, answer) are left out of the loss by default, so the model never learns to *write* `[MASK]`.

The `reference-compatible` preset instead reproduces the reference experiment: one of 12 generic words,
first occurrence in the answer, loss included, decided once per sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from medtune.config import AugmentConfig
from medtune.data.formats import REPLY_FIELDS, Sample
from medtune.data.lexicon import Lexicon, TermMatch, category_tag, load_lexicon

SAMPLE_FIELDS = ("question", *REPLY_FIELDS)  # the reply is trained on; the question is prompt and never is


@dataclass(frozen=True)
class MaskedTerm:
    """One replaced term occurrence; `start:end` is the span of `replacement` in the field's new text."""

    field: str
    term: str
    category: str
    replacement: str
    start: int
    end: int


@dataclass(frozen=True)
class _Choice:
    """A term occurrence picked for masking, located in the original text, with its mask style."""

    field: str
    start: int
    end: int
    term: str
    category: str
    style: str


def sample_rng(seed: int, *key: int) -> random.Random:
    """A generator seeded from a stable hash of (seed, *key): Python's `hash()` is salted per process,
    so it would give a resumed run different masks. Numbers go through `int` so that numpy or torch
    integers give the same stream as Python ones."""
    name = "medtune.augment:" + ":".join(str(int(part)) for part in (seed, *key))
    return random.Random(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big"))


class Augmenter:
    """Masks the terms of one sample at a time; `apply` depends only on (sample, seed, epoch, index)."""

    def __init__(self, cfg: AugmentConfig, lexicon: Lexicon, seed: int) -> None:
        self.cfg = cfg
        self.lexicon = lexicon
        self.seed = seed
        self._choose: Callable[[Sample, random.Random], list[_Choice]] = (
            self._choose_like_reference if cfg.preset == "reference-compatible" else self._choose_from_lexicon
        )

    @classmethod
    def from_config(cls, cfg: AugmentConfig, seed: int) -> Augmenter:
        return cls(cfg, load_lexicon(cfg.lexicon), seed)

    def apply(self, sample: Sample, epoch: int, index: int) -> tuple[Sample, list[MaskedTerm]]:
        """Returns a NEW Sample (input untouched) with terms replaced and `masked` set to the character spans
        (per field, in the NEW text) of the inserted mask strings that must be left out of the loss
        (empty when mask_loss == 'include' or the field is question), plus the list of masked terms.

        `index` must identify the sample in the dataset (not its position in a shuffled epoch), so that the
        masks of a sample do not depend on the shuffle order.
        """
        if sample.masked:
            raise ValueError(
                f"{sample.source or 'sample'}: already has masked spans; augment the original sample, once per draw"
            )
        rng = sample_rng(self.seed, epoch, index) if self.cfg.redraw_every_epoch else sample_rng(self.seed, index)
        if rng.random() >= self.cfg.probability:
            return dataclasses.replace(sample, masked={}), []
        return self._replace(sample, self._choose(sample, rng))

    def _choose_from_lexicon(self, sample: Sample, rng: random.Random) -> list[_Choice]:
        """Pick `terms_per_sample` distinct (field, term) pairs among the longest-match terms found."""
        occurrences: dict[tuple[str, str], list[TermMatch]] = {}
        for field in self.cfg.fields:
            for match in self.lexicon.find(getattr(sample, field)):
                occurrences.setdefault((field, match.term), []).append(match)
        if not occurrences:
            return []
        low, high = self.cfg.terms_per_sample
        picked = rng.sample(list(occurrences), min(rng.randint(low, high), len(occurrences)))
        choices = []
        for field, term in picked:
            style = rng.choice(self.cfg.mask_styles)
            matches = occurrences[field, term] if self.cfg.occurrence == "all" else occurrences[field, term][:1]
            choices += [_Choice(field, match.start, match.end, term, match.category, style) for match in matches]
        return choices

    def _choose_like_reference(self, sample: Sample, rng: random.Random) -> list[_Choice]:
        """The reference experiment's algorithm: among the lexicon words that occur anywhere in the field (a
        plain substring test, no longest match), pick one at random and replace its first occurrence."""
        field = self.cfg.fields[0]
        text = getattr(sample, field)
        present = [word for word in self.lexicon.terms() if word in text]
        if not present:
            return []
        word = rng.choice(present)
        start = text.find(word)
        return [
            _Choice(
                field, start, start + len(word), word, self.lexicon.categories[word], rng.choice(self.cfg.mask_styles)
            )
        ]

    def _replace(self, sample: Sample, choices: list[_Choice]) -> tuple[Sample, list[MaskedTerm]]:
        """Rebuild each field with its chosen occurrences replaced, noting where each mask lands in the new text."""
        new_texts: dict[str, str] = {}
        masked: dict[str, list[tuple[int, int]]] = {}
        masked_terms: list[MaskedTerm] = []
        for field in SAMPLE_FIELDS:
            field_choices = sorted(
                (choice for choice in choices if choice.field == field), key=lambda choice: choice.start
            )
            if not field_choices:
                continue
            text = getattr(sample, field)
            pieces: list[str] = []
            new_length = cursor = 0
            for choice in field_choices:
                replacement = choice.style.replace("{category}", category_tag(choice.category))
                pieces += [text[cursor : choice.start], replacement]
                new_start = new_length + choice.start - cursor
                new_length = new_start + len(replacement)
                masked_terms.append(MaskedTerm(field, choice.term, choice.category, replacement, new_start, new_length))
                cursor = choice.end
            new_texts[field] = "".join(pieces) + text[cursor:]
            if field in REPLY_FIELDS and self.cfg.mask_loss == "exclude":
                masked[field] = [(term.start, term.end) for term in masked_terms if term.field == field]
        return dataclasses.replace(sample, **new_texts, masked=masked), masked_terms


class AugmentStats:
    """Per-epoch counts of what the augmentation did, for `metrics.jsonl` and `summary.json`.

    `terms_masked` counts replaced occurrences (equal to terms unless occurrence is `all`).
    """

    def __init__(self) -> None:
        self._epochs: dict[int, dict] = {}

    def record(self, epoch: int, masked_terms: list[MaskedTerm]) -> None:
        """Call once per sample drawn, masked or not."""
        counts = self._epochs.setdefault(
            epoch, {"samples": 0, "masked_samples": 0, "terms_masked": 0, "terms_by_category": Counter()}
        )
        counts["samples"] += 1
        counts["masked_samples"] += bool(masked_terms)
        counts["terms_masked"] += len(masked_terms)
        counts["terms_by_category"].update(term.category for term in masked_terms)

    def epoch_summary(self, epoch: int) -> dict:
        if epoch not in self._epochs:
            raise KeyError(f"no samples recorded for epoch {epoch} (recorded: {sorted(self._epochs)})")
        counts = self._epochs[epoch]
        return {
            "epoch": epoch,
            "samples": counts["samples"],
            "masked_samples": counts["masked_samples"],
            "masked_share": counts["masked_samples"] / counts["samples"],
            "terms_masked": counts["terms_masked"],
            "terms_by_category": dict(sorted(counts["terms_by_category"].items())),
        }

    def state_dict(self) -> dict:
        return {"epochs": [self.epoch_summary(epoch) for epoch in sorted(self._epochs)]}

    def load_state_dict(self, state: dict) -> None:
        try:
            self._epochs = {
                int(record["epoch"]): {
                    "samples": int(record["samples"]),
                    "masked_samples": int(record["masked_samples"]),
                    "terms_masked": int(record["terms_masked"]),
                    "terms_by_category": Counter({str(k): int(v) for k, v in record["terms_by_category"].items()}),
                }
                for record in state["epochs"]
            }
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"augmentation stats in the checkpoint are malformed ({type(err).__name__}: {err})"
            ) from None
