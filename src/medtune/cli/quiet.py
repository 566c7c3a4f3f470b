"""What libraries print on their own (bitsandbytes' kernel notices, transformers' deprecation warnings) is
hidden unless `medtune --verbose`: a user sees medtune's own lines. The progress bars of downloads and of
loading weights stay: they show that a long step is moving."""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "MEDTUNE_VERBOSE"  # set by --verbose, so the processes a command starts (ablate, torchrun) inherit it


def quiet_libraries() -> None:
    """Hide other packages' warnings and log records below ERROR; medtune's own log records still show.

    Must run before the libraries are imported where it can (transformers reads its verbosity at import).
    """
    warnings.simplefilter("ignore")  # medtune itself never warns through `warnings`
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("medtune").setLevel(logging.WARNING)


def is_verbose() -> bool:
    """`--verbose` (or MEDTUNE_VERBOSE) is on: the global options set VERBOSE_ENV to 1 exactly then."""
    return os.environ.get(VERBOSE_ENV) == "1"
