"""One rule for errors: medtune's own errors print one line `error: ...` and exit with their documented code;
so do command-line errors (click's, as typer raises them); anything else keeps its traceback.

The error classes are named by module path rather than imported, so `medtune --help` does not import torch:
an error can only have been raised by a module that is already loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

INTERRUPTED = 130  # Ctrl-C, or SIGTERM during `train` (after its checkpoint)


@dataclass(frozen=True)
class ExitCode:
    code: int
    meaning: str
    errors: tuple[str, ...] = ()  # "module:ClassName" of the errors that exit with this code


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success"),
    ExitCode(1, "`check` found an error; or an unexpected error, shown with its traceback"),
    ExitCode(
        2,
        "the command line: unknown option, missing argument, bad value",
        ("medtune.infer.generate:OutputError",),  # an -o that is a folder or the file read (shown as --output's)
    ),
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
    ExitCode(
        8,
        "an optional package not installed: an experiment tracker (swanlab, tensorboard, wandb), or vLLM",
        ("medtune.train.trackers:TrackerError", "medtune.infer.serve:BackendNotInstalledError"),
    ),
    ExitCode(9, "`ablate`: runs failed (each named with its log)", ("medtune.ablate:RunsFailedError",)),
    ExitCode(INTERRUPTED, "interrupted (Ctrl-C; SIGTERM during `train`); `train` saves a checkpoint first"),
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


def _is_a(error: BaseException, class_name: str) -> bool:
    """Whether `error` is one of click's errors of this name: typer may vendor click (`typer._click`) or use it, so
    its classes are named, as typer's own error display names them, rather than imported."""
    return any(cls.__name__ == class_name for cls in type(error).__mro__)


def _parameter_name(param: Any) -> str:
    """`--gpu-memory` for an option (its longest name), `CONFIG` for an argument (as help shows it)."""
    if param.param_type_name == "option":
        return str(max(param.opts, key=len))
    return str(param.metavar or param.name.upper())


def _bad_value(error: Any) -> str:
    """`--gpu-memory: <what is wrong>`, or `--checkpoint 'abc': <what is wrong>` where only the value shows it:
    typer checks a value's type with pydantic, whose message does not quote the value given."""
    message = _sentence_case(str(error.message).removeprefix("Value error, "))
    if error.param_hint is not None:
        name = error.param_hint if isinstance(error.param_hint, str) else " / ".join(error.param_hint)
    elif error.param is not None:
        name = _parameter_name(error.param)
    else:
        return message
    if _is_a(error.__cause__, "ValidationError"):
        value = error.__cause__.errors()[0]["input"]
        if repr(value) not in message:
            name = f"{name} {value!r}"
    return f"{name}: {message}"


def _sentence_case(message: str) -> str:
    """click's and pydantic's sentences ("Missing argument 'CONFIG'.") as the middle of a line."""
    message = message.rstrip(".")
    return message[:1].lower() + message[1:] if message[1:2].islower() else message


def usage_error_line(error: BaseException) -> str | None:
    """A command-line error (unknown option or command, missing argument, bad value) as one line: the command, the
    option or argument, what is wrong and what is expected (or where the options are listed); None for anything else.

    A value its option's own parser refused says what is expected; other mistakes point to the command's --help.
    """
    if not _is_a(error, "ClickException") or _is_a(error, "NoArgsIsHelpError"):  # the latter prints the help
        return None
    ctx = getattr(error, "ctx", None)
    command = f"{ctx.command_path}: " if ctx is not None else ""
    if _is_a(error, "BadParameter") and not _is_a(error, "MissingParameter"):
        return f"{command}{_bad_value(error)}"
    line = f"{command}{_sentence_case(error.format_message())}"
    return f"{line}; see '{ctx.command_path} --help'" if ctx is not None and _is_a(error, "UsageError") else line


def exit_codes_help() -> str:
    """The table as `medtune --help` shows it."""
    return "Exit codes:\n" + "\n".join(f"  {exit_code.code:>3}  {exit_code.meaning}" for exit_code in EXIT_CODES)
