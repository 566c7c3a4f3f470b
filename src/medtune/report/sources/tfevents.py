"""TensorBoard event files, as HF Trainer's TensorBoardCallback (or any SummaryWriter) writes them.

Each folder holding `events.out.tfevents.*` files is one run. Scalars use HF's tags (`train/loss`,
`eval/loss`); the Trainer's `args` and `model_config` text summaries (TrainingArguments and the model's
config as JSON) give the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune.report.inputs import Note, ReportError, Run, Source, parse_json_object
from medtune.report.sources.hf import config_from_hf, records_from_points

EVENT_GLOB = "events.out.tfevents.*"
TEXT_SUMMARIES = ("args", "model_config")
"""Text summaries HF's TensorBoard callback writes: TrainingArguments and the model's config, as JSON."""


def is_event_folder(path: Path) -> bool:
    return path.is_file() and path.name.startswith("events.out.tfevents.") or any(path.rglob(EVENT_GLOB))


def load_event_folders(path: Path) -> list[Run]:
    folders = [path.parent] if path.is_file() else sorted({event_file.parent for event_file in path.rglob(EVENT_GLOB)})
    return [_load_folder(folder) for folder in folders]


def _load_folder(folder: Path) -> Run:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    try:
        accumulator.Reload()
    except Exception as err:  # tensorboard raises its own DataLossError and protobuf errors on damaged files
        raise ReportError(f"{folder}: unreadable TensorBoard event file: {err}") from None
    tags = accumulator.Tags()
    points = [(tag, event.step, float(event.value)) for tag in tags["scalars"] for event in accumulator.Scalars(tag)]
    if not points:
        raise ReportError(f"{folder}: no scalars in the TensorBoard event files")
    notes = [Note("tracker_no_summary", {"tracker": "TensorBoard"})]
    texts = {
        name: _text_summary(accumulator, folder, name)
        for name in TEXT_SUMMARIES
        if f"{name}/text_summary" in tags["tensors"]
    }
    config: dict[str, Any] = {}
    if "args" in texts:
        # merged as HF's SwanLab callback merges them, so both importers map the same dict
        config, mapping_notes = config_from_hf({**texts.get("model_config", {}), **texts["args"]}, str(folder))
        notes.extend(mapping_notes)
    else:
        notes.append(Note("no_args_summary", {"file": str(folder)}))
    name = config.get("run_name") or folder.name
    return Run(str(name), records_from_points(points), config, {}, {}, Source("tensorboard", str(folder)), notes, texts)


def _text_summary(accumulator: Any, folder: Path, name: str) -> dict[str, Any]:
    """The JSON object HF's TensorBoard callback writes as a text summary."""
    text = accumulator.Tensors(f"{name}/text_summary")[-1].tensor_proto.string_val[0].decode("utf-8")
    return parse_json_object(text, f"{folder}: the `{name}` text summary")
