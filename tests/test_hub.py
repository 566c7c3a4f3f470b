"""Model and data sources: local paths, hub ids, `modelscope:` and the ModelScope switches.

The resolution rules run against a stand-in `modelscope` module that records its calls. The cache tests
use the real package with MODELSCOPE_OFFLINE=1 on a cache folder laid out as modelscope lays it out, so
nothing here reaches the network.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import time
import types
from pathlib import Path

import pytest

from medtune.data.formats import DataError, read_samples, resolve_data_path
from medtune.hub import OFFLINE_SWITCHES, PROBE_TIMEOUT_S, USE_MODELSCOPE_SWITCHES, HubError, resolve_model_source

SHIPPED = "medtune:delicate_medical_r1_val"
SYSTEM = "你是一个医学专家。"


@pytest.fixture(autouse=True)
def no_hub_switches(monkeypatch):
    for name in (*USE_MODELSCOPE_SWITCHES, *OFFLINE_SWITCHES):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_modelscope(monkeypatch, tmp_path):
    """A stand-in `modelscope` whose snapshot_download records its arguments and returns `<root>/<repo_id>`."""
    root = tmp_path / "snapshots"
    calls: list[dict] = []

    def snapshot_download(**kwargs) -> str:
        calls.append(kwargs)
        folder = root / kwargs["repo_id"]
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    module = types.ModuleType("modelscope")
    module.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", module)
    monkeypatch.setattr("medtune.hub.endpoint_reachable", lambda url, timeout_s=0: True)  # online unless a test says
    return types.SimpleNamespace(calls=calls, root=root)


def write_files(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"question": "q", "think": "t", "answer": "a"}\n', encoding="utf-8")


# ---- models -----------------------------------------------------------------------------------


def test_local_folder_wins_and_becomes_absolute_even_with_the_switch(fake_modelscope, tmp_path, monkeypatch):
    (tmp_path / "Qwen" / "Qwen3-1.7B").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDTUNE_USE_MODELSCOPE", "1")
    assert resolve_model_source("Qwen/Qwen3-1.7B") == str(tmp_path / "Qwen" / "Qwen3-1.7B")
    assert fake_modelscope.calls == []


@pytest.fixture
def hub_online(monkeypatch):
    """The Hugging Face hub answers and holds every model asked for (nothing reaches the network)."""
    monkeypatch.setattr("medtune.hub.endpoint_reachable", lambda url, timeout_s=0: True)
    monkeypatch.setattr("huggingface_hub.repo_exists", lambda repo_id, **kwargs: True)


def test_plain_hub_id_goes_to_hugging_face_without_the_switch(fake_modelscope, hub_online):
    assert resolve_model_source("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    assert fake_modelscope.calls == []


def test_modelscope_prefix_downloads_the_model_and_returns_its_folder(fake_modelscope):
    source = resolve_model_source("modelscope:Qwen/Qwen3-1.7B", revision="v1.0")
    assert source == str(fake_modelscope.root / "Qwen" / "Qwen3-1.7B")
    assert fake_modelscope.calls == [
        dict(repo_id="Qwen/Qwen3-1.7B", repo_type="model", revision="v1.0", allow_patterns=None, local_files_only=False)
    ]


@pytest.mark.parametrize("switch", USE_MODELSCOPE_SWITCHES)
def test_switch_sends_plain_hub_ids_to_modelscope(fake_modelscope, monkeypatch, switch):
    monkeypatch.setenv(switch, "1")
    assert resolve_model_source("Qwen/Qwen3-1.7B") == str(fake_modelscope.root / "Qwen" / "Qwen3-1.7B")
    assert [call["repo_id"] for call in fake_modelscope.calls] == ["Qwen/Qwen3-1.7B"]


def test_switch_leaves_a_bare_name_to_hugging_face(fake_modelscope, hub_online, monkeypatch):
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "true")
    assert resolve_model_source("gpt2") == "gpt2"
    assert fake_modelscope.calls == []


@pytest.mark.parametrize("name", ["./models/missing", "/no/such/folder", "~/no/such", "models/Qwen/Qwen3-1.7B"])
def test_a_missing_path_is_one_error_saying_it_was_read_as_a_local_folder(fake_modelscope, monkeypatch, name):
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "true")
    with pytest.raises(HubError, match=rf"^model '{re.escape(name)}': no such folder \(.*\); read as a local folder"):
        resolve_model_source(name)
    assert fake_modelscope.calls == []


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable"])
def test_offline_a_hub_id_not_in_the_cache_fails_fast_and_says_what_to_use(monkeypatch, offline):
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv(
            "HF_ENDPOINT", "http://127.0.0.1:9"
        )  # the discard port: nothing listens, the connection is refused
    started = time.perf_counter()
    with pytest.raises(HubError) as failed:
        resolve_model_source("medtune-test/never-downloaded")
    assert time.perf_counter() - started < PROBE_TIMEOUT_S + 1
    message = str(failed.value)
    assert message.startswith(
        "model 'medtune-test/never-downloaded': read as a Hugging Face hub id (there is no local folder"
    )
    assert ("HF_HUB_OFFLINE=1 forbids" if offline == "HF_HUB_OFFLINE" else "cannot be reached (offline?)") in message
    assert message.endswith(
        "use --overlay configs/tiny.yaml (the offline tiny model) or set model.name_or_path to a local folder"
    )


def test_offline_a_cached_hub_model_loads_from_its_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr("medtune.hub.endpoint_reachable", lambda url, timeout_s=0: False)
    monkeypatch.setattr(
        "huggingface_hub.snapshot_download", lambda repo_id, revision=None, local_files_only=False: str(tmp_path)
    )
    assert resolve_model_source("Qwen/Qwen3-1.7B") == str(tmp_path)


def test_online_a_hub_id_the_hub_lacks_is_one_error(monkeypatch):
    monkeypatch.setattr("medtune.hub.endpoint_reachable", lambda url, timeout_s=0: True)
    monkeypatch.setattr("huggingface_hub.repo_exists", lambda repo_id, **kwargs: False)
    with pytest.raises(HubError, match="read as a Hugging Face hub id .* and the hub has no such model"):
        resolve_model_source("Qwen/Qwen3-17B-typo")


def test_switch_set_to_zero_is_off(fake_modelscope, hub_online, monkeypatch):
    monkeypatch.setenv("MEDTUNE_USE_MODELSCOPE", "0")
    assert resolve_model_source("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"


@pytest.mark.parametrize("switch", OFFLINE_SWITCHES)
def test_offline_switches_read_the_cache_only(fake_modelscope, monkeypatch, switch):
    monkeypatch.setenv(switch, "1")
    resolve_model_source("modelscope:Qwen/Qwen3-1.7B")
    assert fake_modelscope.calls[0]["local_files_only"] is True


@pytest.mark.parametrize(
    ("domain", "probed"), [(None, "https://www.modelscope.cn"), ("modelscope.ai", "https://modelscope.ai")]
)
def test_an_unreachable_modelscope_reads_the_cache_at_once(fake_modelscope, monkeypatch, domain, probed):
    """Without the switches but without network, modelscope retried for 30 s, logging each retry: the probe that
    hub ids get (PROBE_TIMEOUT_S) sends it to the cache at once, and a miss says why in one line."""
    if domain:
        monkeypatch.setenv("MODELSCOPE_DOMAIN", domain)
    asked: list[str] = []
    monkeypatch.setattr("medtune.hub.endpoint_reachable", lambda url, timeout_s=0: asked.append(url) or False)
    resolve_model_source("modelscope:Qwen/Qwen3-1.7B")
    assert asked == [probed] and fake_modelscope.calls[0]["local_files_only"] is True

    def not_cached(**kwargs):
        raise FileNotFoundError("Cannot find cached snapshot")

    monkeypatch.setattr(sys.modules["modelscope"], "snapshot_download", not_cached)
    with pytest.raises(HubError, match=rf"not in the ModelScope cache, and ModelScope \({probed}\) cannot be reached"):
        resolve_model_source("modelscope:Qwen/Qwen3-1.7B")


@pytest.mark.parametrize(
    "spec", ["modelscope:", "modelscope:Qwen", "modelscope:Qwen/Qwen3/extra", "modelscope:/abs/path"]
)
def test_malformed_modelscope_model_id_is_rejected(fake_modelscope, spec):
    with pytest.raises(HubError, match="expected modelscope:<owner>/<name>"):
        resolve_model_source(spec)
    assert fake_modelscope.calls == []


def test_missing_modelscope_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # makes `import modelscope` fail
    with pytest.raises(HubError, match=r"pip install 'medtune\[modelscope\]'"):
        resolve_model_source("modelscope:Qwen/Qwen3-1.7B")
    with pytest.raises(
        DataError, match=r"modelscope:krisfu/delicate_medical_r1_data: .*pip install 'medtune\[modelscope\]'"
    ):
        resolve_data_path("modelscope:krisfu/delicate_medical_r1_data")


def test_failed_download_is_one_clear_error(monkeypatch):
    def snapshot_download(**kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setattr("medtune.hub.endpoint_reachable", lambda url, timeout_s=0: True)  # it answered, then failed
    with pytest.raises(
        HubError, match="model Qwen/Qwen3-1.7B could not be downloaded: Name or service not known.*MODELSCOPE_OFFLINE=1"
    ):
        resolve_model_source("modelscope:Qwen/Qwen3-1.7B")
    monkeypatch.setenv("MODELSCOPE_OFFLINE", "1")
    with pytest.raises(HubError, match="is not in the ModelScope cache"):
        resolve_model_source("modelscope:Qwen/Qwen3-1.7B")


# ---- data sets --------------------------------------------------------------------------------


def test_the_only_data_file_is_picked_past_hub_metadata_and_bookkeeping(fake_modelscope):
    folder = fake_modelscope.root / "krisfu" / "delicate_medical_r1_data"
    write_files(
        folder,
        "r1_data_example.jsonl",
        "configuration.json",
        "dataset_infos.json",
        "._____temp/part.jsonl",
        ".msc/x.json",
    )
    (folder / "README.md").write_text("# card", encoding="utf-8")
    assert resolve_data_path("modelscope:krisfu/delicate_medical_r1_data") == folder / "r1_data_example.jsonl"
    assert fake_modelscope.calls == [
        dict(
            repo_id="krisfu/delicate_medical_r1_data",
            repo_type="dataset",
            revision=None,
            allow_patterns=None,
            local_files_only=False,
        )
    ]


def test_the_single_train_like_file_is_picked(fake_modelscope):
    folder = fake_modelscope.root / "o" / "medical"
    write_files(folder, "data/train.jsonl", "data/validation.jsonl", "test.parquet")
    assert resolve_data_path("modelscope:o/medical") == folder / "data" / "train.jsonl"


@pytest.mark.parametrize(
    ("files", "listed"),
    [
        (["a.jsonl", "b.json"], "a.jsonl, b.json"),
        (["train-00000.parquet", "train-00001.parquet", "val.jsonl"], "train-00000.parquet, train-00001.parquet"),
    ],
)
def test_ambiguous_data_set_lists_the_candidates(fake_modelscope, files, listed):
    write_files(fake_modelscope.root / "o" / "medical", *files)
    with pytest.raises(DataError, match=f"several data files \\({listed}\\); name one, e.g. modelscope:o/medical/"):
        resolve_data_path("modelscope:o/medical")


def test_data_set_without_data_files_says_so(fake_modelscope):
    (fake_modelscope.root / "o" / "medical").mkdir(parents=True)
    with pytest.raises(DataError, match=r"holds no \.jsonl/\.json/\.csv/\.tsv/\.parquet file"):
        resolve_data_path("modelscope:o/medical")


def test_a_named_file_is_fetched_alone(fake_modelscope):
    folder = fake_modelscope.root / "o" / "medical"
    write_files(folder, "train.jsonl", "splits/val.jsonl")
    assert resolve_data_path("modelscope:o/medical/splits/val.jsonl") == folder / "splits" / "val.jsonl"
    assert fake_modelscope.calls[0]["allow_patterns"] == ["splits/val.jsonl"]


def test_a_missing_named_file_lists_the_files_there(fake_modelscope):
    write_files(fake_modelscope.root / "o" / "medical", "train.jsonl", "val.jsonl")
    with pytest.raises(
        DataError,
        match=r"no file 'tran.jsonl' in ModelScope data set o/medical .*its data files: train.jsonl, val.jsonl",
    ):
        resolve_data_path("modelscope:o/medical/tran.jsonl")


def test_a_named_file_cannot_leave_the_data_set(fake_modelscope):
    with pytest.raises(DataError, match="points outside the data set o/medical"):
        resolve_data_path("modelscope:o/medical/../secret.jsonl")
    assert fake_modelscope.calls == []


def test_malformed_data_set_id_is_rejected(fake_modelscope):
    with pytest.raises(DataError, match=r"expected modelscope:<owner>/<name>\[/<file>\]"):
        resolve_data_path("modelscope:krisfu")
    assert fake_modelscope.calls == []


def test_switch_does_not_turn_data_paths_into_data_sets(fake_modelscope, monkeypatch):
    monkeypatch.setenv("MEDTUNE_USE_MODELSCOPE", "1")
    assert resolve_data_path("data/train.jsonl") == Path("data/train.jsonl")
    assert fake_modelscope.calls == []


# ---- the real modelscope package, offline, on a cache laid out as it lays it out -----------------


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One cache for the whole module: modelscope reads MODELSCOPE_CACHE once per process, at first use."""
    pytest.importorskip("modelscope")
    root = tmp_path_factory.mktemp("modelscope-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELSCOPE_CACHE", str(root))
        yield root


@pytest.fixture
def offline_cache(cache_root, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_OFFLINE", "1")
    return cache_root


def test_tiny_model_in_the_cache_loads_through_load_base_model(offline_cache, monkeypatch):
    import torch

    from medtune.config import ModelConfig, QuantConfig
    from medtune.model.load import load_base_model
    from medtune.model.tiny import tiny_model_dir

    # modelscope >= 1.38 downloads into <cache>/models/<owner>--<name>/snapshots/<revision>/
    snapshot = offline_cache / "models" / "medtune-test--tiny-qwen3" / "snapshots" / "master"
    shutil.copytree(tiny_model_dir(), snapshot)
    loaded = load_base_model(
        ModelConfig(name_or_path="modelscope:medtune-test/tiny-qwen3"), QuantConfig(mode="none"), torch.device("cpu")
    )
    assert loaded.source == str(snapshot)
    assert loaded.random_weights and loaded.model.config.num_hidden_layers == 2
    assert loaded.tokenizer("头痛")["input_ids"]
    monkeypatch.setenv("MEDTUNE_USE_MODELSCOPE", "1")
    assert resolve_model_source("medtune-test/tiny-qwen3") == str(snapshot)


def test_a_cache_left_by_modelscope_before_1_38_is_found(offline_cache):
    # older releases kept <cache>/models/<owner>/<name with dots as ___>/ when MODELSCOPE_CACHE was set
    legacy = offline_cache / "models" / "medtune-test" / "legacy___v1"
    legacy.mkdir(parents=True)
    (legacy / "config.json").write_text("{}", encoding="utf-8")
    assert resolve_model_source("modelscope:medtune-test/legacy.v1") == str(legacy)


def test_data_set_in_the_cache_is_read_like_a_local_file(offline_cache):
    snapshot = offline_cache / "datasets" / "krisfu--delicate_medical_r1_data" / "snapshots" / "master"
    snapshot.mkdir(parents=True)
    rows = resolve_data_path(SHIPPED).read_text(encoding="utf-8").splitlines(keepends=True)
    (snapshot / "train.jsonl").write_text("".join(rows[:5]), encoding="utf-8")
    (snapshot / "val.jsonl").write_text("".join(rows[5:7]), encoding="utf-8")
    (snapshot / "README.md").write_text("# delicate_medical_r1_data", encoding="utf-8")

    train = resolve_data_path("modelscope:krisfu/delicate_medical_r1_data")
    assert train == snapshot / "train.jsonl"
    assert len(read_samples(train, system_prompt=SYSTEM).samples) == 5
    assert resolve_data_path("modelscope:krisfu/delicate_medical_r1_data/val.jsonl") == snapshot / "val.jsonl"


def test_offline_without_a_cached_copy_is_a_clear_error(offline_cache):
    expected = "ModelScope model medtune-test/never-downloaded is not in the ModelScope cache, and MODELSCOPE_OFFLINE=1"
    with pytest.raises(HubError, match=expected):
        resolve_model_source("modelscope:medtune-test/never-downloaded")
    with pytest.raises(DataError, match="ModelScope dataset medtune-test/none is not in the ModelScope cache"):
        resolve_data_path("modelscope:medtune-test/none")


def test_package_prefix_resolves_an_installed_package_folder():
    import medtune

    assert resolve_model_source("package:medtune") == str(Path(medtune.__file__).parent.resolve())
    with pytest.raises(HubError, match="no installed package 'no_such_pkg_xyz'"):
        resolve_model_source("package:no_such_pkg_xyz")


def test_the_offline_probe_goes_through_the_proxy_the_environment_names(monkeypatch):
    """Behind a proxy the hub's host is reached through it: a listening proxy counts as online, none as offline."""
    from medtune.hub import endpoint_reachable

    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        for name in ("https_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert endpoint_reachable("https://hub.example")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert not endpoint_reachable("https://hub.example")
