"""One rule for errors: medtune's own errors print one line `error: ...` and exit with their documented code;
anything else keeps its traceback.

The error classes are named by module path rather than imported, so `medtune --help` does not import torch:
an error can only have been raised by a module that is already loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    code: int
    meaning: str
    errors: tuple[str, ...] = ()  # "module:ClassName" of the errors that exit with this code


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success"),
    ExitCode(1, "`check` found an error; or an unexpected error, shown with its traceback"),
    ExitCode(2, "the command line: unknown option, missing argument, bad value"),
    ExitCode(
        3,
        "a config, overlay, --set value or experiment file; a run that cannot fit speed.memory_budget",
        ("medtune.config:ConfigError", "medtune.model.memory_plan:MemoryBudgetError"),
    ),
    ExitCode(
        4,
        "a data file or lexicon",
        ("medtune.data.formats:DataError", "medtune.data.lexicon:LexiconError", "medtune.data.render:TemplateError"),
    ),
    ExitCode(5, "the model: a path, hub id, ModelScope id or GGUF file", ("medtune.hub:HubError",)),
    ExitCode(
        6,
        "a run, checkpoint or output folder: exists already, missing, unusable",
        (
            "medtune.train.recipe:RunExistsError",
            "medtune.train.checkpoint:CheckpointError",
            "medtune.infer.runs:RunNotFoundError",
            "medtune.infer.merge:MergeError",
            "medtune.infer.export:ExportError",
            "medtune.infer.serve:ServeError",
            "medtune.run_folder:RunFolderError",
        ),
    ),
    ExitCode(7, "the inputs of a report (run folders, logs)", ("medtune.report.inputs:ReportError",)),
    ExitCode(8, "an experiment tracker (swanlab, tensorboard, wandb)", ("medtune.train.trackers:TrackerError",)),
    ExitCode(9, "`ablate`: runs failed (each named with its log)", ("medtune.ablate:RunsFailedError",)),
    ExitCode(130, "interrupted (Ctrl-C); `train` saves a checkpoint first"),
)


def exit_code_for(error: BaseException) -> int | None:
    """The documented exit code of one of medtune's errors; None for anything else (it keeps its traceback)."""
    for exit_code in EXIT_CODES:
        for name in exit_code.errors:
            module_name, class_name = name.split(":")
            module = sys.modules.get(module_name)
            if module is not None and isinstance(error, getattr(module, class_name)):
                return exit_code.code
    return None


def exit_codes_help() -> str:
    """The table as `medtune --help` shows it."""
    return "Exit codes:\n" + "\n".join(f"  {exit_code.code:>3}  {exit_code.meaning}" for exit_code in EXIT_CODES)
