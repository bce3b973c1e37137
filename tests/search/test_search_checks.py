"""`nas search` refuses what cannot work before doing the work: every budget's reachability (MACs and parameters
before the data is loaded, latency once its table is loaded), and every setting of `SearchRequest`, each one line
naming the flag. Runs in-process through `nas.cli.main`; the supernet trainer fails the test if it is reached."""

import os
import random
from pathlib import Path

import numpy as np
import pytest

import latency_models as lm
import nas.cli
import search_spaces as ss
from nas.search.prepare import BUILTIN_IO, CHEAPEST_IO
from nas.search.request import SearchRequest

QUICK = ["--quick", "--device", "torch-fp32", "--no-finalize", "--trials", "2"]
DIGITS_SMALLEST = ss.get_space("small32").with_io(*BUILTIN_IO["digits"]).smallest()


@pytest.fixture
def no_training(monkeypatch):
    """The supernet trainer, replaced by a failure: a refused run must never reach it."""

    def refuse(*_a, **_k):
        pytest.fail("the supernet was trained before the budget check refused the run")

    monkeypatch.setattr("nas.supernet.train_supernet", refuse)
    monkeypatch.setattr("nas.supernet.training.train_supernet", refuse)


@pytest.fixture
def no_data(monkeypatch):
    """Data loading, replaced by a failure: a budget refused before the data is loaded never reaches it."""

    def refuse(*_a, **_k):
        pytest.fail("the data was loaded before the budget check refused the run")

    monkeypatch.setattr("nas.search.prepare.load_splits", refuse)


@pytest.fixture(scope="module")
def lat_out(tmp_path_factory):
    """One --out for the latency checks: the torch-fp32 table is profiled there once and reused."""
    return tmp_path_factory.mktemp("latency-checks")


def search(capsys, out: Path, *args: str) -> tuple[int, str]:
    """`nas search ARGS --out OUT` in this process: its exit status and what it printed to stderr."""
    try:
        rc = nas.cli.main(["search", *args, "--out", str(out)])
    except SystemExit as exc:  # argparse refuses a flag's value itself
        rc = exc.code
    return rc, capsys.readouterr().err


def test_the_builtin_data_io_is_what_nas_data_loads():
    from nas.data import load_digits

    digits = load_digits()
    assert BUILTIN_IO["digits"] == (digits.x.shape[1], digits.num_classes)


@pytest.mark.parametrize("budget, kind, cost", [
    ("1kparams", "params", lambda a: ss.count(a).params),
    ("0.3Mparams", "params", lambda a: ss.count(a).params),
    ("1MFLOPs", "macs", ss.count_macs),
    ("12.8M", "macs", ss.count_macs),  # just under the smallest network (12.84M)
])
def test_unreachable_mac_and_param_budgets_are_refused_before_the_data_is_loaded(
        budget, kind, cost, tmp_path, monkeypatch, capsys, no_training, no_data):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc, err = search(capsys, out, "--budget", budget, *QUICK)
    assert rc == 2, err
    line = err.strip()
    assert "\n" not in line and line.startswith("nas search: error: --budget: nothing in space 'small32' fits")
    assert f"the smallest architecture costs {ss.Budget(kind, cost(DIGITS_SMALLEST))} " in line
    assert os.listdir(tmp_path) == []  # nothing written anywhere


def test_a_params_budget_with_a_quick_mac_budget_together(tmp_path, monkeypatch, capsys, no_training, no_data):
    """--budget holds one budget; a params limit that nothing meets is refused however the MAC side trims."""
    monkeypatch.chdir(tmp_path)
    rc, err = search(capsys, tmp_path / "out", "--budget", "0.5Mparams", *QUICK)
    assert rc == 2 and "--budget: nothing in space 'small32' fits 0.5Mparams" in err
    assert "0.697042Mparams" in err


def _npz(path: Path, channels: int, classes: int) -> Path:
    rng = np.random.default_rng(0)
    n = 20 * classes
    np.savez(path, x=rng.integers(0, 255, (n, channels, 16, 16), dtype=np.uint8),
             y=np.repeat(np.arange(classes), 20).astype(np.int64))
    return path


def test_other_data_is_checked_against_the_cheapest_input_first_then_exactly(tmp_path, monkeypatch, capsys,
                                                                            no_training):
    """A data set given by path: a budget below what even 1 channel and 1 class cost is refused before loading
    it (saying so); one below its own exact cost is refused right after loading, before any training."""
    monkeypatch.chdir(tmp_path)
    data = _npz(tmp_path / "rgb100.npz", channels=3, classes=100)
    space = ss.get_space("small32")
    lower = ss.count(space.with_io(*CHEAPEST_IO).smallest()).params
    exact = ss.count(space.with_io(3, 100).smallest()).params
    assert lower < exact

    loaded = []
    import nas.search.prepare as prepare

    real = prepare.load_splits
    monkeypatch.setattr(prepare, "load_splits", lambda spec, *a: loaded.append(spec) or real(spec, *a))
    rc, err = search(capsys, tmp_path / "out", "--budget", f"{lower * 0.9 / 1e6:g}Mparams", "--data", str(data),
                     *QUICK)
    assert rc == 2 and not loaded
    assert f"costs {ss.Budget('params', lower)} even with 1 input channel and 1 class" in err

    rc, err = search(capsys, tmp_path / "out", "--budget", f"{(lower + exact) / 2 / 1e6:g}Mparams", "--data",
                     str(data), *QUICK)
    assert rc == 2 and len(loaded) == 1
    assert f"the smallest architecture costs {ss.Budget('params', exact)} " in err
    assert not (tmp_path / "out").exists()


def _smallest_ms(out: Path) -> float:
    predictor = lm.load_predictor("torch-fp32", str(out / "latency" / "torch-fp32.csv"))
    return predictor.predict_ms(DIGITS_SMALLEST)


@pytest.mark.parametrize("args, flag", [
    (["--budget", "15MFLOPs", "--latency", "0.001ms"], "--latency"),
    (["--budget", "15MFLOPs", "--latency", "0.001ms", "--objective", "mnasnet"], "--latency"),
    (["--budget", "1us"], "--budget"),
    (["--budget", "1us", "--objective", "mnasnet"], "--budget"),
])
def test_unreachable_latency_is_refused_once_the_table_is_loaded_before_training(args, flag, lat_out, capsys,
                                                                                 monkeypatch, no_training):
    monkeypatch.chdir(lat_out)
    rc, err = search(capsys, lat_out, *args, *QUICK)
    assert rc == 2, err
    budget = ss.parse_budget(args[args.index(flag) + 1])
    assert f"{flag}: nothing in space 'small32' fits {budget} on device torch-fp32;" in err
    assert f"the smallest architecture costs {ss.Budget('latency_ms', _smallest_ms(lat_out))} " in err
    assert set(os.listdir(lat_out)) == {"latency"}  # the profiled table only: no supernet, no run folder


def test_mnasnet_without_a_latency_target_is_refused_before_any_work(tmp_path, monkeypatch, capsys, no_training,
                                                                    no_data):
    monkeypatch.chdir(tmp_path)
    rc, err = search(capsys, tmp_path / "out", "--budget", "15MFLOPs", "--objective", "mnasnet", *QUICK)
    assert rc == 2 and "--objective: the MnasNet reward needs a latency target" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, message", [
    ("budget", "-5M", "--budget: expected a positive amount"),
    ("budget", "5 apples", "--budget: cannot parse"),
    ("budget", "9" * 400 + "M", "--budget: expected a finite amount"),
    ("latency", "100M", "--latency: expected a time"),
    ("phi", float("nan"), "--phi: expected a number >= 0"),
    ("trials", 0, "--trials: expected a positive integer, got 0"),
    ("workers", -3, "--workers: expected a positive integer, got -3"),
    ("workers", 0, "--workers: expected a positive integer, got 0"),
    ("threads", 0, "--threads: expected a positive integer"),
    ("seed", -1, "--seed: expected a non-negative integer"),
    ("verify", 0, "--verify: expected a positive integer, got 0"),
    ("train_images", -1, "--train-images: expected a positive integer"),
    ("val_images", "x", "--val-images: expected a positive integer"),
    ("supernet_epochs", (0, 1, 1, 1), "--supernet-epochs: expected four counts"),
    ("supernet_epochs", (1, 1), "--supernet-epochs: expected four counts"),
    ("space", "nope", "--space: expected one of"),
    ("sampler", "grid", "--sampler: expected one of"),
    ("objective", "acc", "--objective: expected one of"),
    ("backend", "dask", "--backend: expected one of"),
    ("device", "gpu", "--device: expected one of"),
    ("table", "missing.csv", "--table: 'missing.csv' does not exist"),
    ("study", "../../etc", "--study: expected a plain name"),
    ("study", "/tmp/abs", "--study: expected a plain name"),
    ("study", "", "--study: expected a plain name"),
    ("address", "10.0.0.1:6379", "--address: a Ray cluster address needs --backend ray"),
    ("storage", "results", "--storage: 'results' is a folder"),
    ("resume", "yes", "--resume: expected True or False"),
    ("data", "", "--data: expected"),
])
def test_request_refuses_a_bad_value_naming_its_flag(field, value, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(ValueError) as err:
        SearchRequest(**{field: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert os.listdir(tmp_path) == ["results"] and not os.listdir(tmp_path / "results")


def test_request_converts_what_it_checks():
    r = SearchRequest(trials="7", seed="3", supernet_epochs="2,0,0,1", workers=4.0)
    assert (r.trials, r.seed, r.supernet_epochs, r.workers) == (7, 3, (2, 0, 0, 1), 4)


@pytest.mark.parametrize(("address", "words"), [("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
                                                 ("nonsense", "expected HOST:PORT")])
def test_unreachable_ray_address_is_refused_before_data(capsys, tmp_path, no_data, no_training, address, words):
    rc, err = search(capsys, tmp_path / "out", "--budget", "100MFLOPs", *QUICK, "--backend", "ray",
                     "--address", address)
    assert rc == 2 and f"--address: {words}" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_table_of_another_device_is_refused(capsys, tmp_path, no_training):
    table = tmp_path / "fp32.csv"
    assert nas.cli.main(["profile", "--device", "torch-fp32", "--space", "small32", "--resolution", "24", "--budget",
                         "0.05MFLOPs", "--reps", "2", "--passes", "1", "--out", str(table), "--no-progress"]) == 0
    capsys.readouterr()
    rc, err = search(capsys, tmp_path / "out", "--budget", "100MFLOPs", "--quick", "--no-finalize", "--device",
                     "kernels", "--table", str(table))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--table: {table} was not measured on --device kernels" in err
    assert "device: table 'torch-fp32' vs here 'kernels'" in err


@pytest.mark.parametrize("flag, kind", [("--peak-memory", "peak_bytes"), ("--model-size", "weight_bytes")])
def test_unreachable_memory_budgets_are_refused_before_the_data_is_loaded(flag, kind, tmp_path, monkeypatch, capsys,
                                                                        no_training, no_data):
    """Peak activation memory and int8 weight bytes are hard budgets beside --budget; one nothing meets is one line
    naming the flag and the smallest reachable value, before the data is loaded or anything is written."""
    from nas.kernels import memory

    monkeypatch.chdir(tmp_path)
    smallest = memory.cost(kind, DIGITS_SMALLEST)
    rc, err = search(capsys, tmp_path / "out", "--budget", "100MFLOPs", flag, f"{smallest - 1}B", *QUICK)
    assert rc == 2, err
    line = err.strip()
    assert "\n" not in line and line.startswith(f"nas search: error: {flag}: nothing in space 'small32' fits")
    assert f"the smallest architecture costs {ss.Budget(kind, smallest)} " in line
    assert os.listdir(tmp_path) == []
    rc, err = search(capsys, tmp_path / "out", "--budget", "100MFLOPs", flag, "12 parsecs", *QUICK)
    assert rc == 2 and flag in err and "size in bytes" in err and err.count("\n") == 1, err


def test_memory_limits_repair_every_trial_into_them():
    """A trial's architecture is repaired until each limit holds: MACs, peak activation memory and weights together."""
    from nas.kernels import memory
    from nas.search.params import repair
    from nas.search.plan import limits_of

    space = ss.get_space("small32").with_io(*BUILTIN_IO["digits"])
    largest = space.largest()
    peak, weights = memory.peak_activation_bytes(largest) // 3, memory.weight_bytes(largest) // 4
    request = SearchRequest(budget="80MFLOPs", peak_memory=f"{peak}B", model_size=f"{weights}B")
    limits, _ = limits_of(tuple(request.budgets()), "pareto")
    assert (limits.macs, limits.peak_bytes, limits.weight_bytes) == (80e6, peak, weights)
    rng = random.Random(0)
    for _ in range(20):
        arch = repair(space, space.random_arch(rng), lambda a: limits.excess(a, None), 1.0)
        assert ss.count_macs(arch) <= 80e6
        assert memory.peak_activation_bytes(arch) <= peak and memory.weight_bytes(arch) <= weights
    assert "peak" in request.run_name() and request.study_settings()["--peak-memory"] == peak
