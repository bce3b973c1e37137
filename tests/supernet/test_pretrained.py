"""Pretrained supernets shipped with the package: stored, found by cache key, loaded instead of trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nas.search.plan import plan
from nas.search.prepare import prepare
from nas.search.request import SearchRequest
from nas.supernet import SubnetEvaluator, Supernet, cache_key, dataset_fingerprint, train_supernet
from nas.supernet import pretrained as pt

from .test_supernet import FAST, TINY, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stored_supernet_is_loaded_instead_of_trained(tmp_path: Path) -> None:
    data = tiny_digits()
    trained = train_supernet(TINY, data, FAST, root=tmp_path / "a", progress=False, pretrained=None)
    meta = {"key": trained.key, "epochs": trained.epochs_done, "history": trained.history}
    weights = pt.save(trained.supernet, meta, tmp_path / "pkg")
    assert pt.find(trained.key, tmp_path / "pkg") == weights and pt.find("0" * 16, tmp_path / "pkg") is None

    epochs: list[int] = []
    loaded = train_supernet(TINY, data, FAST, root=tmp_path / "b", progress=False, pretrained=tmp_path / "pkg",
                            callback=lambda r: epochs.append(r["epoch"]))
    assert epochs == [] and loaded.finished and loaded.pretrained == weights  # nothing trained
    assert loaded.key == trained.key and loaded.history == trained.history
    for name, a in trained.supernet.state_dict().items():
        b = loaded.supernet.state_dict()[name]
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-3, msg=name)  # float16 storage
    x = data.tensors("val", 12)[0][:32]
    for arch in (TINY.largest(), TINY.smallest()):
        trained.supernet.set_active(arch)
        loaded.supernet.set_active(arch)
        with torch.no_grad():
            torch.testing.assert_close(loaded.supernet(x), trained.supernet(x), atol=2e-2, rtol=1e-2)

    # copied into the cache: with the package folder gone it still loads, and says where it came from
    (tmp_path / "pkg" / weights.name).unlink()
    again = train_supernet(TINY, data, FAST, root=tmp_path / "b", progress=False, pretrained=tmp_path / "pkg",
                           callback=lambda r: epochs.append(r["epoch"]))
    assert epochs == [] and again.pretrained == weights


def test_no_pretrained_trains_even_when_one_matches(tmp_path: Path) -> None:
    data = tiny_digits(400)
    recipe = FAST.__class__(epochs=(1, 0, 0, 1), batch_size=128, random_subnets=1, calib_images=64, threads=1)
    first = train_supernet(TINY, data, recipe, root=tmp_path / "a", progress=False, pretrained=None)
    pt.save(first.supernet, {"key": first.key, "epochs": 2, "history": first.history}, tmp_path / "pkg")
    copied = train_supernet(TINY, data, recipe, root=tmp_path / "b", progress=False, pretrained=tmp_path / "pkg")
    assert copied.pretrained is not None
    epochs: list[int] = []
    # the cache under root b is now a copy of the packaged file: None trains over it
    run = train_supernet(TINY, data, recipe, root=tmp_path / "b", progress=False, pretrained=None,
                         callback=lambda r: epochs.append(r["epoch"]))
    assert epochs == [1, 2] and run.pretrained is None
    again = train_supernet(TINY, data, recipe, root=tmp_path / "b", progress=False, pretrained=tmp_path / "pkg",
                           callback=lambda r: epochs.append(r["epoch"]))
    assert epochs == [1, 2] and again.pretrained is None  # the supernet trained here is the cache now


def test_a_file_that_does_not_fit_is_refused_by_name(tmp_path: Path) -> None:
    net = Supernet(TINY)
    weights = pt.save(net, {"key": "ab" * 8, "epochs": 1, "history": []}, tmp_path)
    other = Supernet(TINY.with_io(1, 5))  # another classifier size
    with pytest.raises(ValueError, match=r"abab\.safetensors: classifier\.\w+ has shape \(10,.*this supernet \(5,"):
        pt.load_state(weights, other.state_dict())
    with pytest.raises(ValueError, match="meta: expected a 'history' entry"):
        pt.save(net, {"key": "cd" * 8, "epochs": 1}, tmp_path)


def test_a_damaged_packaged_file_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    net = Supernet(TINY)
    weights = pt.save(net, {"key": "ef" * 8, "epochs": 1, "history": [{}]}, tmp_path)
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file") as err:
        pt.load_state(weights, net.state_dict())
    assert str(weights) in str(err.value) and len(str(err.value).splitlines()) == 1
    weights.write_bytes(blob)
    side = weights.with_suffix(".json")
    for text, problem in (('{"epochs": 1', "expected the JSON beside"), ('{"epochs": 2, "history": [{}]}',
                                                                         "one history record per epoch")):
        side.write_text(text)
        with pytest.raises(ValueError, match=problem) as err:
            pt.load_state(weights, net.state_dict())
        assert str(side) in str(err.value) and len(str(err.value).splitlines()) == 1


def test_the_default_search_has_a_packaged_supernet_that_scores_well() -> None:
    # the default `nas search --budget 100MFLOPs` would train for minutes without it; any change to its space,
    # data split, recipe or seed changes the key: re-run `python tools/pretrain_supernet.py` then
    p = plan(SearchRequest())
    prepared = prepare(p.data, p.space, p.budgets, lambda _: None)
    data, space = prepared.data, prepared.space
    recipe = p.supernet.recipe
    key = cache_key(space, dataset_fingerprint(data.splits), recipe, p.supernet.seed)
    weights = pt.find(key)
    assert weights is not None, (f"no packaged supernet for the default search's key {key} in {pt.PACKAGED}: "
                                 "run `python tools/pretrain_supernet.py` and commit its two files")
    net = Supernet(space)
    net.load_state_dict(pt.load_state(weights, net.state_dict())["model"])
    ev = SubnetEvaluator(net.eval(), data, "val", calib_images=recipe.calib_images, seed=p.supernet.seed)
    assert ev(space.largest()) >= 0.9 and ev(space.smallest()) >= 0.8
    stale = sorted(p.name for p in pt.PACKAGED.glob("*.safetensors") if p != weights)
    assert not stale, f"packaged supernets no search uses (delete them): {stale}"
