"""What a report can be asked for, with the defaults that `compare`, `ablate` and `build_report` share.

Nothing heavy is imported here, so the CLI reads these defaults for its options without loading the report.
"""

from __future__ import annotations

from typing import Literal, get_args

Language = Literal["en", "zh"]
LANGUAGES: tuple[Language, ...] = get_args(Language)
"""The report's languages; `wording.WORDING` holds the words of each."""
DEFAULT_LANGUAGE: Language = "en"
DEFAULT_PHASE_BOUNDS: tuple[float, float] = (0.1, 0.5)
"""The fractions of training that end the warmup and the early phase of the grad-norm analysis."""
