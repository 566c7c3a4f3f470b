"""Self-describing checkpoints: `checkpoints/step-000400/` holds the PEFT adapter, the resolved config and,
in the newest checkpoint only, the training state that `--resume` needs (optimizer, scheduler, RNG, data
position). Each is written to a `.tmp` folder and renamed, so a crash never leaves a half checkpoint that
resume would pick up.

The training state is stored so that loading it executes nothing: its tensors in `training_state.safetensors`
and everything else as JSON in `training_state.json`, which names the tensors it holds. Checkpoints of older
medtune versions (`training_state.pt`, a pickle) are still read, through `torch.load(weights_only=True)`, whose
unpickler builds only tensors, numbers, strings and containers (plus numpy arrays, for the RNG state) and
refuses anything else instead of running it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medtune.run_folder import (
    LEGACY_STATE_FILE,
    STATE_JSON_FILE,
    STATE_TENSORS_FILE,
    RunFolder,
    has_training_state,
    staging,
    umask_permissions,
)

STATE_FORMAT = "medtune training state"
STATE_VERSION = 1
_TAGS = ("$tensor", "$ndarray", "$tuple", "$int_keys")


class CheckpointError(RuntimeError):
    """A checkpoint's training state cannot be read; the message names the file and what to do."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, write_contents, keep_last: int) -> Path:
    """Call `write_contents(folder)` on a temporary folder, rename it to step-XXXXXX, prune old ones.

    Only the new checkpoint keeps its training state: resume starts from the newest, so the older ones
    (kept, up to `keep_last`, for `medtune eval --checkpoint`) need only their adapter.
    """
    folder = RunFolder(run_dir)
    final = folder.checkpoint(step)
    tmp = staging(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_contents(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    kept = folder.list_checkpoints()
    for _, old in kept[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for _, older in kept[-keep_last:-1]:
        drop_training_state(older)
    return final


def drop_training_state(folder: Path) -> None:
    for name in (STATE_TENSORS_FILE, STATE_JSON_FILE, LEGACY_STATE_FILE):
        (folder / name).unlink(missing_ok=True)


# ---- the training state: tensors in safetensors, the rest as JSON ------------------------------------------
def save_training_state(folder: Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts, lists, tuples, numbers, strings, tensors, numpy arrays) as two files.

    The safetensors file is written first: the JSON file is what marks the state present.
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "state", tensors, {})
    save_file(tensors, folder / STATE_TENSORS_FILE)
    umask_permissions(folder)
    document = {"format": STATE_FORMAT, "version": STATE_VERSION, "state": tree}
    (folder / STATE_JSON_FILE).write_text(json.dumps(document), encoding="utf-8")


def load_training_state(folder: Path) -> dict[str, Any]:
    """Read a checkpoint's training state without executing anything it holds.

    Raises:
        CheckpointError: the file is missing, damaged, of another format, or (an old pickle) asks to build
            objects other than tensors and plain values.
    """
    if not (folder / STATE_JSON_FILE).exists() and (folder / LEGACY_STATE_FILE).exists():
        return _load_legacy(folder / LEGACY_STATE_FILE)
    document = _read_json(folder / STATE_JSON_FILE)
    try:
        tensors = load_file(folder / STATE_TENSORS_FILE)
    except (SafetensorError, OSError) as err:
        raise _unreadable(folder / STATE_TENSORS_FILE, err) from None
    try:
        return _decode(document["state"], tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise _unreadable(
            folder / STATE_JSON_FILE, f"it does not match {STATE_TENSORS_FILE} ({type(err).__name__}: {err})"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _unreadable(path, err) from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise _unreadable(path, f"not a {STATE_FORMAT}")
    if document.get("version") != STATE_VERSION:
        raise _unreadable(
            path, f"format version {document.get('version')!r}; this medtune reads version {STATE_VERSION}"
        )
    return document


def _load_legacy(path: Path) -> dict[str, Any]:
    """A `training_state.pt` of earlier medtune versions: tensors and plain values, and a numpy array for numpy's
    RNG."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[
        0
    ]  # numpy's array constructor, wherever this numpy version keeps it
    numpy_rng = [np.ndarray, np.dtype, np.dtypes.UInt32DType, reconstruct]
    try:
        with torch.serialization.safe_globals(numpy_rng):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused to build something, or the bytes are no pickle
        raise _unreadable(path, _refusal(str(err))) from None
    except EOFError:
        raise _unreadable(path, "the file is empty or cut short") from None
    except (OSError, RuntimeError, zipfile.BadZipFile) as err:
        raise _unreadable(path, err) from None


def _refusal(message: str) -> str:
    """torch's weights_only message in a few words: which object it refused to build, or that the bytes are no
    checkpoint."""
    refused = re.search(r"GLOBAL ([\w.]+)", message)
    if refused:
        return f"it asks to call {refused.group(1)}, which could run code, so medtune does not load it"
    return "not a checkpoint torch can read: " + next(
        (line.strip() for line in message.splitlines()[2:] if line.strip() and "WeightsUnpickler" not in line),
        message.splitlines()[0],
    )


def _unreadable(path: Path, reason: object) -> CheckpointError:
    """Deleting the checkpoint helps only where an earlier one holds a training state: save_checkpoint keeps it in
    the newest alone (runs of earlier medtune versions may hold more)."""
    folder = path.parent
    earlier = [
        step
        for step, checkpoint in RunFolder(folder.parent.parent).list_checkpoints()
        if checkpoint != folder and has_training_state(checkpoint)
    ]
    what_to_do = (
        f"delete {folder} to resume from step {earlier[-1]}, or start again with --overwrite"
        if earlier
        else "no earlier checkpoint holds one (only the newest keeps it): start again with --overwrite"
    )
    return CheckpointError(f"{path}: cannot read the training state ({reason}); {what_to_do}")


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    """JSON for `value`, its tensors moved into `tensors`; a tensor met twice (e.g. a shared quantization map) is
    stored once."""
    if isinstance(value, torch.Tensor):
        return {"$tensor": _store(value.detach().cpu(), path, tensors, seen)}
    if isinstance(value, np.ndarray):
        return {"$ndarray": _store(torch.from_numpy(value.copy()), path, tensors, seen)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, f"{path}.{i}", tensors, seen) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{path}.{i}", tensors, seen) for i, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(key, str) and key not in _TAGS for key in value):
            return {key: _encode(item, f"{path}.{key}", tensors, seen) for key, item in value.items()}
        if all(isinstance(key, int) for key in value):  # optimizer states are keyed by parameter index
            return {
                "$int_keys": {str(key): _encode(item, f"{path}.{key}", tensors, seen) for key, item in value.items()}
            }
        raise TypeError(f"{path}: dict keys must be all strings or all ints, not {sorted(map(repr, value))[:3]}")
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path}: a {type(value).__name__} cannot be stored in a training state")


def _store(tensor: torch.Tensor, path: str, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> str:
    key = (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tensor.dtype,
        tuple(tensor.shape),
        tensor.stride(),
    )
    if key in seen:
        return seen[key]
    name = f"{len(tensors)}:{path}"  # the counter keeps names unique whatever the keys hold
    shares_storage = any(t.untyped_storage().data_ptr() == key[0] for t in tensors.values())
    tensors[name] = tensor.clone() if shares_storage or not tensor.is_contiguous() else tensor
    seen[key] = name
    return name


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_decode(item, tensors) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if "$tensor" in tree:
        return tensors[tree["$tensor"]]
    if "$ndarray" in tree:
        return tensors[tree["$ndarray"]].numpy()
    if "$tuple" in tree:
        return tuple(_decode(item, tensors) for item in tree["$tuple"])
    if "$int_keys" in tree:
        return {int(key): _decode(item, tensors) for key, item in tree["$int_keys"].items()}
    return {key: _decode(item, tensors) for key, item in tree.items()}
