"""Nothing nas reads back can run code: supernet caches (safetensors + JSON, no pickle), the paths given to
`nas train eval` / `nas train arch --supernet` / `nas export`, and CIFAR pickles. Each hostile file is a real
pickle that creates a marker file when unpickled (`test_the_payload_runs_code_when_unpickled` proves it does),
so "the marker does not exist" means no code ran."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nas.cli import main
from nas.data import load_dataset
from nas.supernet import load_supernet, train_supernet
from nas.supernet.training import SupernetCacheError

from ..supernet.test_supernet import FAST, TINY, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")

# two epochs of one phase: after the first, the cache holds a model, an optimizer (momentum) and state.json
TWO = dataclasses.replace(FAST, epochs=(2, 0, 0, 0))
ARCH = str(TINY.smallest())


class _RunsCode:
    """Unpickling this calls `open(marker, "w")`: the marker appearing is proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def payload(marker: Path) -> bytes:
    """A pickle that creates `marker` when loaded."""
    return pickle.dumps(_RunsCode(marker))


class _Stop(Exception):
    pass


def _stop(record: dict) -> None:
    raise _Stop


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A supernet cache root holding one of TWO's two epochs (stopped by the callback, as after a crash)."""
    root = tmp_path_factory.mktemp("partial")
    with pytest.raises(_Stop):
        train_supernet(TINY, tiny_digits(), TWO, root=root, progress=False, callback=_stop)
    return root


def _copy(partial: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the partial cache: (root, the key's folder)."""
    root = tmp_path / "root"
    shutil.copytree(partial, root)
    (cache,) = root.iterdir()
    return root, cache


def _set_sha(cache: Path, field: str) -> None:
    """Make state.json's sha256 of `field`'s file match its (replaced) contents, as a crafted cache would."""
    state = json.loads((cache / "state.json").read_text())
    state[field]["sha256"] = hashlib.sha256((cache / state[field]["file"]).read_bytes()).hexdigest()
    (cache / "state.json").write_text(json.dumps(state))


def _one_line_naming(message: str, path: Path) -> None:
    assert len(message.strip().splitlines()) == 1, message
    assert str(path) in message, message


def test_the_payload_runs_code_when_unpickled(tmp_path: Path) -> None:
    pickle.loads(payload(tmp_path / "a"))
    assert (tmp_path / "a").exists()
    torch.save({"weight": _RunsCode(tmp_path / "b")}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what the supernet cache used to do
    assert (tmp_path / "b").exists()


def test_cache_is_safetensors_and_json_and_resumes_exactly(partial: Path, tmp_path: Path) -> None:
    root, cache = _copy(partial, tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "model-e0001.safetensors",
                                                       "optimizer-e0001.safetensors", "state.json"]
    state = json.loads((cache / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 1 and state["key"] == cache.name
    assert state["space"]["stages"][1]["kernels"] == [3, 5, 7] and state["pretrained"] is None
    for name in ("model-e0001.safetensors", "optimizer-e0001.safetensors"):
        with safe_open(str(cache / name), "pt") as f:
            assert len(list(f.keys())) > 0  # a real safetensors file (a pickle or zip would not open)
    # a crash after the next epoch's tensors but before its state.json leaves a stray file (here even a hostile
    # one), and an old-format checkpoint.pt beside a current cache is never read either
    marker = tmp_path / "ran"
    (cache / "model-e0002.safetensors").write_bytes(payload(marker))
    (cache / "checkpoint.pt").write_bytes(payload(marker))
    seen: list[int] = []
    run = train_supernet(TINY, tiny_digits(), TWO, root=root, progress=False,
                         callback=lambda r: seen.append(r["epoch"]))
    assert seen == [2] and run.finished and not marker.exists()
    assert {p.name for p in cache.glob("*.safetensors")} == {"model-e0002.safetensors"}  # momentum: not needed
    assert json.loads((cache / "state.json").read_text())["optimizer"] is None
    straight = train_supernet(TINY, tiny_digits(), TWO, root=tmp_path / "straight", progress=False)
    for (name, a), b in zip(run.supernet.state_dict().items(), straight.supernet.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, msg=name)
    # the restored momentum is what makes it exact: resuming without it gives other weights
    root2, cache2 = _copy(partial, tmp_path / "no_momentum")
    state = json.loads((cache2 / "state.json").read_text())
    (cache2 / "state.json").write_text(json.dumps({**state, "optimizer": None}))
    fresh = train_supernet(TINY, tiny_digits(), TWO, root=root2, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.supernet.state_dict().values(),
                                                     straight.supernet.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", ["checkpoint.pt", "state.json", "model-e0001.safetensors",
                                  "optimizer-e0001.safetensors"])
def test_hostile_pickle_in_the_cache_is_refused_by_name(partial: Path, tmp_path: Path, name: str) -> None:
    root, cache = _copy(partial, tmp_path)
    marker = tmp_path / "ran"
    if name == "checkpoint.pt":  # an old-format cache: meta.json and a pickled checkpoint only
        for p in cache.iterdir():
            if p.name != "meta.json":
                p.unlink()
    (cache / name).write_bytes(payload(marker))
    if name.endswith(".safetensors"):
        _set_sha(cache, name.split("-")[0])  # past the checksum, so the file itself is parsed
    expect = {"checkpoint.pt": "old supernet cache format", "state.json": "not JSON"}.get(
        name, "not a readable safetensors file")
    with pytest.raises(SupernetCacheError, match=expect) as err:
        train_supernet(TINY, tiny_digits(), TWO, root=root, progress=False)
    _one_line_naming(str(err.value), cache / name)
    assert f"delete {cache} to retrain" in str(err.value)
    if name != "optimizer-e0001.safetensors":  # loading a supernet reads all but the optimizer
        with pytest.raises(SupernetCacheError, match=expect) as err:
            load_supernet(cache)
        _one_line_naming(str(err.value), cache / name)
    assert not marker.exists()


def test_corrupt_or_truncated_files_are_named_with_the_fix(partial: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, cache = _copy(partial, tmp_path)
    model = cache / "model-e0001.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(SupernetCacheError, match="do not match the sha256 in state.json") as err:
        load_supernet(cache)
    _one_line_naming(str(err.value), model)
    _set_sha(cache, "model")
    assert main(["train", "eval", str(cache), ARCH]) == 2
    err_text = capsys.readouterr().err
    assert "not a readable safetensors file" in err_text and f"delete {cache} to retrain" in err_text
    _one_line_naming(err_text, model)
    state = cache / "state.json"
    state.write_text(state.read_text()[:100])
    with pytest.raises(SupernetCacheError, match="not JSON") as err:
        load_supernet(cache / "model-e0001.safetensors")  # a file inside the folder means the folder
    _one_line_naming(str(err.value), state)


def test_a_cache_of_another_key_is_refused(partial: Path, tmp_path: Path) -> None:
    root, cache = _copy(partial, tmp_path)
    state = json.loads((cache / "state.json").read_text())
    (cache / "state.json").write_text(json.dumps({**state, "key": "0" * 16}))
    with pytest.raises(SupernetCacheError, match=f"records supernet {'0' * 16}, not {cache.name}"):
        train_supernet(TINY, tiny_digits(), TWO, root=root, progress=False)


def _hostile_supernets(tmp_path: Path, marker: Path) -> list[tuple[Path, Path]]:
    """(path to give the CLI, file the error must name): a bare pickle, an old-format cache, a pickled
    state.json."""
    bare = tmp_path / "evil.pt"
    bare.write_bytes(payload(marker))
    old = tmp_path / "old"
    old.mkdir()
    (old / "meta.json").write_text("{}")
    (old / "checkpoint.pt").write_bytes(payload(marker))
    new = tmp_path / "new"
    new.mkdir()
    (new / "state.json").write_bytes(payload(marker))
    return [(bare, bare), (old, old / "checkpoint.pt"), (old / "checkpoint.pt", old / "checkpoint.pt"),
            (new, new / "state.json")]


def test_train_eval_refuses_a_hostile_supernet_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    for given, named in _hostile_supernets(tmp_path, marker):
        assert main(["train", "eval", str(given), ARCH]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nas train: error: ")
        _one_line_naming(err, named)
    assert not marker.exists()


def test_train_arch_refuses_a_hostile_supernet_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    for given, named in _hostile_supernets(tmp_path, marker)[1:]:
        assert main(["train", "arch", ARCH, "--supernet", str(given), "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nas train: error: ")
        _one_line_naming(err, named)
    assert not marker.exists()


def test_export_refuses_a_hostile_or_non_state_dict_pt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(payload(marker))
    zipped = tmp_path / "zipped.pt"
    torch.save({"weight": _RunsCode(marker)}, zipped)  # torch's own zip format around the same pickle
    for path in (raw, zipped):
        assert main(["export", str(path), "--arch", ARCH]) == 2
        err = capsys.readouterr().err
        assert "not a plain state dict of tensors, refused to unpickle it" in err and "weights_only=False" not in err
        _one_line_naming(err, path)
    assert not marker.exists()
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert main(["export", str(tensor), "--arch", ARCH]) == 2
    err = capsys.readouterr().err
    assert "expected a state dict (parameter names -> tensors), found Tensor" in err
    _one_line_naming(err, tensor)


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(payload(marker))
    with pytest.raises(ValueError, match=r"data_batch_1: not a readable CIFAR pickle .*refusing to load io\.open"):
        load_dataset(str(root))
    assert not marker.exists()
