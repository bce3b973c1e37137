"""`nas search` end to end on real data: quick supernet, real latency table, persistent study, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import search_spaces as ss
from nas.search.runner import make_storage

BUDGET = "15MFLOPs"
ARGS = ["--budget", BUDGET, "--quick", "--device", "torch-fp32", "--no-finalize"]


def nas(*args: str, out: Path, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "search", *args, "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick search (8 trials); later tests reuse its supernet cache and latency table."""
    out = tmp_path_factory.mktemp("search")
    log = finish(nas(*ARGS, "--trials", "8", "--study", "first", out=out))
    return out, log


def test_search_writes_its_outputs(run):
    out, log = run
    d = out / "first"
    for name in ("trials.csv", "pareto.csv", "pareto.png", "best.json", "best.txt", "summary.json"):
        assert (d / name).exists(), name
    trials = pd.read_csv(d / "trials.csv")
    evaluated = trials[trials["duplicate_of"].isna()]  # a repeated architecture is scored once, not counted
    assert len(evaluated) == 8 and evaluated["arch_hash"].is_unique
    assert set(trials["duplicate_of"].dropna()) <= set(evaluated["trial"])
    assert (trials["macs"] <= 15e6).all()  # the budget is hard: every evaluated network fits
    assert trials["val_acc"].between(0, 1).all() and (trials["latency_ms"] > 0).all()
    best = ss.Arch.from_json((d / "best.json").read_text())
    assert ss.count_macs(best) <= 15e6
    assert (d / "best.txt").read_text().strip() == str(best)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["trials"] == 8 and summary["duplicates"] == len(trials) - 8
    assert summary["versions"]["torch"].startswith("2.13")
    # no packaged supernet matches a --quick run's key: it trained its own, and says which
    assert summary["supernet"]["pretrained"] is False and len(summary["supernet"]["key"]) == 16
    # where training ran: one process on the CPU (no --train-workers), in fp32
    assert {k: summary["training"][k] for k in ("device", "precision", "workers")} == \
        {"device": "cpu", "precision": "fp32", "workers": 1}
    stages = summary["seconds"]
    assert set(stages) == {"data_and_supernet", "latency_table", "search", "report"}  # --no-finalize
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= summary["total_seconds"] + 0.5
    pareto = pd.read_csv(d / "pareto.csv")
    assert len(pareto) >= 1 and (pareto["measured_ms"] > 0).all() and pareto["arch_hash"].is_unique
    baselines = pd.read_csv(d / "baselines.csv")  # width-scaled MobileNets measured on the device, drawn in the plot
    assert baselines["name"].str.startswith("mobilenetv").any() and (baselines["macs"] <= 15e6).all()
    assert (baselines["measured_ms"] > 0).all() and len(summary["baselines"]) == len(baselines)
    assert "Pareto front" in log and "chosen:" in log
    assert "trained only its largest network" in log  # --quick says its trial scores rank little


def test_existing_study_needs_resume(run):
    out, _ = run
    proc = nas(*ARGS, "--trials", "8", "--study", "first", out=out)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "--resume" in text


def test_kill_and_resume_loses_and_repeats_nothing(run):
    out, _ = run
    storage = make_storage(str(out / "killed" / "study.journal"))  # the default store: Optuna's journal file
    proc = nas(*ARGS, "--trials", "10", "--study", "killed", out=out, start_new_session=True)
    deadline = time.time() + 600
    before = []
    while time.time() < deadline:
        time.sleep(0.5)
        if proc.poll() is not None:  # exited before it could be killed: say why instead of waiting out the deadline
            pytest.fail(f"nas search exited early (code {proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
            before = study.get_trials(states=(TrialState.COMPLETE,))
        except Exception:  # the study is not created yet
            continue
        if len(before) >= 3:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name="killed", storage=storage)
    before = {t.number: (t.params, t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert 3 <= len(before) < 10
    finish(nas(*ARGS, "--trials", "10", "--study", "killed", "--resume", out=out))
    study = optuna.load_study(study_name="killed", storage=storage)
    after = {t.number: (t.params, t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))}
    for number, record in before.items():  # nothing lost or re-evaluated
        assert after[number] == record
    trials = pd.read_csv(out / "killed" / "trials.csv")
    assert len(trials) == len(after)
    assert trials["duplicate_of"].isna().sum() == 10  # exactly the asked-for number of architectures


def test_unreachable_budget_is_reported_before_any_work(tmp_path):
    proc = nas("--budget", "1MFLOPs", "--quick", out=tmp_path)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "smallest architecture costs" in text
    assert not (tmp_path / "supernets").exists()


def test_ray_backend_on_a_two_node_cluster(run, ray_cluster):
    """Trials spread by Ray Tune over a real head + worker cluster, into the same kind of persistent study."""
    out, _ = run
    address, _node = ray_cluster
    log = finish(nas(*ARGS, "--trials", "4", "--study", "ray", "--backend", "ray", "--address", address,
                     "--workers", "2", out=out))
    storage = make_storage(str(out / "ray" / "study.journal"))
    study = optuna.load_study(study_name="ray", storage=storage)
    trials = pd.read_csv(out / "ray" / "trials.csv")
    assert len(trials) == len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert trials["duplicate_of"].isna().sum() == 4  # distinct architectures, as in-process
    assert (trials["macs"] <= 15e6).all() and trials["val_acc"].between(0, 1).all()
    assert "Pareto front" in log


def test_stale_default_table_is_kept_aside_and_profiled_again(run):
    """A default table from another kernel build (or machine) is not trusted: renamed, then profiled anew."""
    out, _ = run
    sidecar = out / "latency" / "torch-fp32.json"
    meta = json.loads(sidecar.read_text())
    meta["fingerprint"]["build_hash"] = "another-build"
    sidecar.write_text(json.dumps(meta))
    log = finish(nas(*ARGS, "--trials", "2", "--study", "stale", out=out))
    assert "profiling again" in log
    kept = sorted((out / "latency").glob("torch-fp32-stale-*"))
    assert {p.suffix for p in kept} == {".csv", ".json"}
    assert json.loads(kept[-1].with_suffix(".json").read_text())["fingerprint"]["build_hash"] == "another-build"
    fresh = json.loads(sidecar.read_text())["fingerprint"]["build_hash"]
    assert fresh != "another-build"


def test_supernet_epochs_flag(run):
    out, _ = run
    log = finish(nas(*ARGS, "--trials", "2", "--supernet-epochs", "1,0,0,0", "--no-pretrained", out=out))
    assert "supernet epoch 1/1 [largest]" in log and "1 epochs, cached" in log
    summary = json.loads(next(out.glob("*se1000*/summary.json")).read_text())  # its own study name
    assert summary["request"]["supernet_epochs"] == [1, 0, 0, 0] and summary["trials"] == 2
    assert summary["request"]["pretrained"] is False and summary["supernet"]["pretrained"] is False
    for bad in ("1,2,3", "0,1,1,1", "a,b,c,d"):
        proc = nas("--budget", BUDGET, "--supernet-epochs", bad, out=out)
        text, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "argument --supernet-epochs: expected four counts" in text


def test_default_store_is_a_journal_unless_the_run_has_an_sqlite_study(tmp_path):
    from nas.search.plan import default_storage

    assert default_storage(tmp_path) == str((tmp_path / "study.journal").resolve())
    (tmp_path / "study.db").touch()  # a run folder from when SQLite was the default: --resume must find it
    assert default_storage(tmp_path) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    (tmp_path / "study.journal").touch()
    assert default_storage(tmp_path).endswith("study.journal")


VERIFIED = ["--budget", BUDGET, "--quick", "--device", "torch-fp32", "--trials", "8", "--study", "verified",
            "--verify", "2", "--seed", "1"]


@pytest.fixture(scope="module")
def verified(run):
    """A second search in the same folder (its supernet cache, another seed): --verify 2 --seed 1, finalized."""
    out, _ = run
    return out, finish(nas(*VERIFIED, out=out))


def test_verify_fine_tunes_candidates_chooses_the_best_and_resumes(verified):
    """--verify 2: two candidates fine-tuned, the best fine-tuned val accuracy chosen and finalized from those very
    weights; a rerun loads the stored candidates instead of training them again."""
    out, log = verified
    args = VERIFIED
    d = out / "verified"
    table = pd.read_csv(d / "verify" / "verify.csv")
    assert 1 <= len(table) <= 2 and table["chosen"].sum() == 1
    chosen = table[table["chosen"]].iloc[0]
    assert chosen["verified_val_acc"] == table["verified_val_acc"].max()
    p, n = table["verified_val_acc"], table["val_images"]
    assert (n > 0).all() and np.allclose(table["val_se"], np.sqrt(p * (1 - p) / n))
    trials = pd.read_csv(d / "trials.csv")
    assert set(table["trial"]) <= set(trials["trial"]) and table["arch_hash"].is_unique
    assert trials["val_acc"].max() in set(table["supernet_val_acc"])  # the supernet's own pick is a candidate
    assert ss.Arch.from_json((d / "best.json").read_text()).hash() == chosen["arch_hash"]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["best"]["trial"] == chosen["trial"] and summary["request"]["verify"] == 2
    assert summary["best"]["verified_val_acc"] == pytest.approx(chosen["verified_val_acc"])
    # finalize starts from the chosen candidate's fine-tuned weights: its fp32 accuracy is the verified one
    assert summary["finalized"]["fp32_val_acc"] == pytest.approx(chosen["verified_val_acc"])
    assert {"verify", "finalize"} <= set(summary["seconds"])
    assert "fine-tuning" in log and ("Verified candidates" in log) == (len(table) > 1)

    again = finish(nas(*args, "--resume", out=out))
    assert again.count("loaded from") == len(table) and "fine-tuning" not in again
    table2 = pd.read_csv(d / "verify" / "verify.csv")
    pd.testing.assert_frame_equal(table.drop(columns="finetune_seconds"), table2.drop(columns="finetune_seconds"))
    for bad in ("0", "-1"):
        proc = nas("--budget", BUDGET, "--verify", bad, out=out)
        text, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "--verify" in text and "expected a positive integer" in text


def test_eval_of_a_searched_checkpoint_reproduces_its_test_accuracy(verified, capsys):
    """A run with --seed 1 splits its data by seed 1: the checkpoint records that (and its subsets and the splits'
    fingerprints), so `nas eval CKPT` with no flags scores the very test split the search reported on."""
    from nas.cli import main

    out, _ = verified
    summary = json.loads((out / "verified" / "summary.json").read_text())
    ck = summary["finalized"]["checkpoint"]
    meta = json.loads((Path(ck) / "metadata.json").read_text())
    assert meta["data"]["split_seed"] == 1 and meta["data"]["train_images"] == 512
    assert set(meta["data"]["fingerprints"]) == {"train", "val", "test"}
    assert meta["training"] == summary["training"]  # the checkpoint records where it was trained, as the summary
    capsys.readouterr()
    assert main(["eval", ck, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split_seed"] == 1 and res["top1"] == summary["finalized"]["accuracy"]["int8_test"]
    assert main(["eval", ck, "--part", "val", "--json"]) == 0  # the val subset the search scored on, too
    assert json.loads(capsys.readouterr().out)["top1"] == summary["finalized"]["accuracy"]["int8_val"]


def test_train_supernet_builds_the_supernet_the_search_uses(run, capsys, monkeypatch):
    """`nas train supernet` with the search's flags finds the very supernet `nas search` trained (same cache key
    under --out/supernets), so it trains nothing."""
    from nas.cli import main

    out, _ = run
    key = json.loads((out / "first" / "summary.json").read_text())["supernet"]["key"]

    def refuse(*_a, **_k):
        pytest.fail("nas train supernet trained again a supernet the search had cached")

    monkeypatch.setattr("nas.supernet.training._train_epoch", refuse)
    capsys.readouterr()
    assert main(["train", "supernet", "--budget", BUDGET, "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"supernet {key}:" in text and str(out / "supernets" / key) in text
