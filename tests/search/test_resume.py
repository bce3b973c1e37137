"""Study identity and resume: settings stored with the study and compared before it is touched, safe run names,
journals torn by a crash, --storage values, what a failed run leaves behind, and architectures scored once."""

import contextlib
import dataclasses
import io
import json
import os
import random
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import nas.cli
import search_spaces as ss
from nas.search.params import distributions, params_from_arch, suggest_params
from nas.search.plan import plan
from nas.search.report import ranked, trials_frame
from nas.search.request import SearchRequest
from nas.search.runner import (
    Limits,
    SearchSettings,
    StorageError,
    arch_for,
    check_compatible,
    check_storage,
    first_trials,
    make_storage,
    repair_journal,
    run_optuna,
    run_trial,
)
from nas.search.scoring import TrialScorer

ARGS = ["--budget", "15MFLOPs", "--quick", "--device", "torch-fp32", "--no-finalize"]
SPACE = ss.get_space("small32").with_io(1, 10)
EVALUATE = TrialScorer.__call__  # the real trial scorer, which a test may make fail on a given call


def cli(out: Path, *args: str) -> tuple[int, str]:
    """`nas search ARGS --out OUT` in this process: its exit status and everything it printed."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        try:
            rc = nas.cli.main(["search", *ARGS, *args, "--out", str(out)])
        except SystemExit as exc:
            rc = exc.code
    return rc, text.getvalue()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A quick search of 3 trials (study "base"); the other runs reuse its supernet cache and latency table."""
    out = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)
        rc, text = cli(out, "--trials", "3", "--study", "base")
    assert rc == 0, text[-3000:]
    return out


def journal_trials(path: Path, name: str) -> list:
    return optuna.load_study(study_name=name, storage=make_storage(str(path))).get_trials()


# --- settings stored with the study ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, flags", [
    (["--sampler", "random"], ["--sampler 'tpe' in the study, 'random' now"]),
    (["--objective", "mnasnet", "--latency", "50ms"],
     ["--objective 'pareto' in the study, 'mnasnet' now", "--latency unset in the study, '50ms' now"]),
    (["--no-pretrained"], ["--pretrained True in the study, False now"]),
    (["--seed", "1"], ["--seed 0 in the study, 1 now"]),
    (["--device", "torch-int8"], ["--device 'torch-fp32' in the study, 'torch-int8' now"]),
    (["--train-images", "300"], ["--train-images unset in the study, 300 now"]),
])
@pytest.mark.parametrize("resume", [False, True])
def test_other_settings_are_refused_before_the_study_is_touched(out, monkeypatch, args, flags, resume):
    """A run of the same name with settings that change the study was told to pass --resume, which then added a
    failed trial to the old study and stopped ("CategoricalDistribution does not support dynamic value space")."""
    monkeypatch.chdir(out)
    journal = out / "base" / "study.journal"
    before = journal.read_bytes()
    rc, text = cli(out, "--trials", "3", "--study", "base", *args, *(["--resume"] if resume else []))
    assert rc == 2, text[-2000:]
    line = text.strip().splitlines()[-1]
    assert line.startswith("nas search: error: --resume:" if resume else "nas search: error: --study:")
    assert "made with other settings" in line and "--study NAME" in line
    assert ("pass --resume" in line) is False  # resuming would not help
    for flag in flags:
        assert flag in line
    assert journal.read_bytes() == before  # not touched: no failed trial, no attribute


def test_settings_that_leave_the_study_alone_may_change_on_resume(out, monkeypatch):
    """--trials (raised), --threads, --verify and --finalize do not change what a trial scores."""
    monkeypatch.chdir(out)
    rc, text = cli(out, "--trials", "3", "--study", "free")
    assert rc == 0, text[-2000:]
    rc, text = cli(out, "--trials", "4", "--study", "free", "--resume", "--threads", "1", "--verify", "1")
    assert rc == 0, text[-2000:]
    study = optuna.load_study(study_name="free", storage=make_storage(str(out / "free" / "study.journal")))
    assert study.user_attrs["settings"] == json.loads(json.dumps(SearchRequest(
        budget="15MFLOPs", quick=True, device="torch-fp32", finalize=False, study="free").study_settings()))
    assert study.user_attrs["settings"]["--budget"] == "15MFLOPs"


def test_a_study_without_stored_settings_is_checked_by_its_parameters(tmp_path):
    """Studies made before their settings were stored: a different space or objective is refused by what the
    study's trials and directions hold, before Optuna would add a failed trial."""
    url = str(tmp_path / "old.journal")
    study = optuna.create_study(study_name="old", storage=make_storage(url), directions=["maximize", "minimize"])
    trial = study.ask()
    suggest_params(trial, SPACE)
    study.tell(trial, [0.5, 1.0])
    check_compatible(url, "old", SPACE, "pareto")  # the same space and objective: fine
    with pytest.raises(ValueError, match=r"^--resume: study 'old' .* another space \(parameter resolution: "
                                         r"\(24, 28, 32\) in the study, \(24,\) now\)"):
        check_compatible(url, "old", ss.trim_to_budget(SPACE, 14e6), "pareto")
    with pytest.raises(ValueError, match=r"^--objective: study 'old' .* optimizes \['maximize', 'minimize'\]"):
        check_compatible(url, "old", SPACE, "mnasnet")
    assert len(journal_trials(Path(url), "old")) == 1


# --- run names and run folders --------------------------------------------------------------------------------

def test_run_names_are_short_plain_folder_names_with_canonical_budgets():
    assert SearchRequest(budget="100M").run_name() == "small32-digits-100MFLOPs-tpe-s0"
    assert SearchRequest(budget="0.1 GFLOPs").run_name() == SearchRequest(budget="100MFLOPs").run_name()
    long = SearchRequest(budget="0" * 300 + "1" * 200 + "M", latency="0" * 500 + "3ms")
    assert len(long.run_name()) <= 128 and "lat3ms" in long.run_name()
    for data in ("my data (v2)", "x" * 300):
        name = SearchRequest(data=str(Path("/no/such") / data), budget="15MFLOPs").run_name()
        assert len(name) <= 128 and "/" not in name and " " not in name and "(" not in name
    assert SearchRequest(data=str(Path("/no/such") / ("x" * 300))).run_name() != SearchRequest(
        data=str(Path("/no/such") / ("x" * 299))).run_name()  # cut names stay apart
    # settings that change the study are in the default name: such runs do not collide
    names = {SearchRequest(**kw).run_name() for kw in (
        {}, {"phi": 0.5}, {"objective": "mnasnet", "latency": "3ms"}, {"device": "torch-fp32"}, {"pretrained": False})}
    assert len(names) == 5


def test_the_run_folder_stays_inside_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for study in ("../../etc", "/etc", "..", "a/b"):
        rc, text = cli(tmp_path / "out", "--study", study)
        assert rc == 2 and "--study" in text
    assert os.listdir(tmp_path) == []
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"^--study: the run folder .* outside --out"):
        plan(SearchRequest(study="linked", out=str(tmp_path / "out")))
    assert plan(SearchRequest(study="fine", out=str(tmp_path / "out"))).study.run_dir.resolve().parent == (
        tmp_path / "out").resolve()


# --- journals torn by a crash ---------------------------------------------------------------------------------

def _journal(tmp_path: Path, trials: int = 3) -> Path:
    path = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=make_storage(str(path)), directions=["maximize"])
    for i in range(trials):
        trial = study.ask()
        suggest_params(trial, SPACE)
        study.tell(trial, float(i))
    return path


@pytest.mark.parametrize("tail", [b'{"op_code": 6, "worker_id": "a", "trial_id": 3, "st', b"garbage\n",
                                  b'{"op_code": 0, "study_name": "x"}'])
def test_a_torn_last_line_is_dropped_with_a_warning_and_a_backup(tmp_path, tail):
    path = _journal(tmp_path)
    good = path.read_bytes()
    path.write_bytes(good + tail)
    warnings: list[str] = []
    repair_journal(path, warnings.append)
    assert path.read_bytes() == good
    assert (tmp_path / "study.journal.bak").read_bytes() == good + tail
    assert len(warnings) == 1 and "torn last line" in warnings[0] and "study.journal.bak" in warnings[0]
    # the study reads back whole and takes new trials (appended after a torn line, a record was lost)
    study = optuna.load_study(study_name="s", storage=make_storage(str(path)))
    trial = study.ask()
    suggest_params(trial, SPACE)
    study.tell(trial, 9.0)
    assert [t.value for t in journal_trials(path, "s")] == [0.0, 1.0, 2.0, 9.0]
    repair_journal(path, warnings.append)  # a sound journal is left alone
    assert len(warnings) == 1 and not (tmp_path / "study.journal.bak2").exists()


def test_a_damaged_line_inside_the_journal_names_the_file_the_line_and_the_fix(tmp_path):
    path = _journal(tmp_path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:4] + [b"{not json"] + lines[4:]))
    before = path.read_bytes()
    with pytest.raises(StorageError) as err:
        repair_journal(path, print)
    message = str(err.value)
    assert str(path) in message and "line 5 " in message and "head -n 4" in message and "\n" not in message
    assert path.read_bytes() == before and not (tmp_path / "study.journal.bak").exists()


def test_resume_recovers_a_torn_journal(out, monkeypatch):
    monkeypatch.chdir(out)
    rc, text = cli(out, "--trials", "2", "--study", "torn")
    assert rc == 0, text[-2000:]
    journal = out / "torn" / "study.journal"
    journal.write_bytes(journal.read_bytes() + b'{"op_code": 5, "worker_id": "w", "tri')
    rc, text = cli(out, "--trials", "3", "--study", "torn", "--resume")
    assert rc == 0, text[-2000:]
    assert "dropped a torn last line" in text and (out / "torn" / "study.journal.bak").exists()
    assert len([t for t in journal_trials(journal, "torn") if t.state == TrialState.COMPLETE]) >= 3


# --- --storage ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("redis://localhost:6379", "--storage: unknown scheme 'redis://'; expected a .journal file path or a "
                               "database URL starting sqlite://, postgresql://"),
    ("study.txt", "--storage: expected a .journal file path or a database URL"),
    ("", "--storage: expected a .journal file path or a database URL"),
])
def test_storage_values_that_cannot_hold_a_study(url, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as err:
        make_storage(url)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_a_folder_is_not_a_store(tmp_path):
    (tmp_path / "runs.journal").mkdir()
    for url in (str(tmp_path), str(tmp_path / "runs.journal")):
        with pytest.raises(StorageError, match=r"^--storage: .* is a folder; expected a .journal file path"):
            check_storage(url)
    with pytest.raises(StorageError, match=r"^--storage: .* is a folder; expected a SQLite database file$"):
        make_storage(f"sqlite:///{tmp_path}")


@pytest.mark.parametrize("url", ["postgresql://nas:s3cret@127.0.0.1:1/studies",
                                 "mysql+pymysql://nas:s3cret@127.0.0.1:1/studies"])
def test_a_database_that_cannot_be_opened_is_one_line_without_its_password(url):
    with pytest.raises(StorageError) as err:
        make_storage(url)
    message = str(err.value)
    assert message.startswith("--storage: cannot open '") and "***" in message
    assert "s3cret" not in message and "\n" not in message


def test_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "notes.db").write_text("not a database, just notes\n" * 100)
    with pytest.raises(StorageError, match=r"^--storage: cannot open 'sqlite:///.*notes.db': file is not a "):
        make_storage(f"sqlite:///{tmp_path / 'notes.db'}")


def test_a_bad_storage_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("foo://bar", str(tmp_path), "sqlite:///" + str(tmp_path)):
        rc, text = cli(tmp_path / "out", "--storage", url)
        assert rc == 2 and "--storage" in text.strip().splitlines()[-1], text[-2000:]
        assert "Traceback" not in text
    assert os.listdir(tmp_path) == []


# --- what a failed run leaves ---------------------------------------------------------------------------------

def _fail_at(monkeypatch, n: int, failure: type[BaseException]) -> None:
    """From now on, the n-th trial evaluation raises `failure` (a Ctrl-C, or a crash)."""
    calls = []

    def evaluate(self, arch):
        calls.append(arch)
        if len(calls) == n:
            raise failure("injected")
        return EVALUATE(self, arch)

    monkeypatch.setattr(TrialScorer, "__call__", evaluate)


def test_a_run_interrupted_before_its_first_trial_leaves_nothing_but_one_after_keeps_its_study(out, monkeypatch):
    """Failed runs left an empty run folder with a 0-byte journal, and the corrected rerun was told the study
    exists. What a failed run created goes only while it holds no completed trial."""
    monkeypatch.chdir(out)
    _fail_at(monkeypatch, 1, KeyboardInterrupt)
    assert cli(out, "--trials", "2", "--study", "interrupted")[0] == 130
    assert not (out / "interrupted").exists()

    _fail_at(monkeypatch, 2, KeyboardInterrupt)
    assert cli(out, "--trials", "3", "--study", "kept")[0] == 130
    trials = journal_trials(out / "kept" / "study.journal", "kept")
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]


def test_a_run_that_crashes_before_its_first_trial_leaves_nothing(out, monkeypatch):
    monkeypatch.chdir(out)
    _fail_at(monkeypatch, 1, RuntimeError)
    with pytest.raises(RuntimeError, match="injected"):
        cli(out, "--trials", "2", "--study", "crashed")
    assert not (out / "crashed").exists()
    rc, text = cli(out, "--trials", "1", "--study", "crashed")  # not "already exists; pass --resume"
    assert rc == 0, text[-2000:]


# --- each architecture scored once ----------------------------------------------------------------------------

class Scorer:
    """A deterministic score of an architecture (fewer MACs: more accurate), counting evaluations per hash."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __call__(self, arch: ss.Arch) -> dict[str, float]:
        self.calls[arch.hash()] = self.calls.get(arch.hash(), 0) + 1
        return {"val_acc": 1e6 / ss.count_macs(arch), "latency_ms": ss.count(arch).params / 1e5}


def _settings(tmp_path: Path, slack: float, trials: int, sampler: str = "random") -> SearchSettings:
    smallest = ss.count_macs(SPACE.smallest())
    space = ss.trim_to_budget(SPACE, smallest * slack)  # as the search trims it: short repairs
    return SearchSettings(space=space, limits=Limits(macs=smallest * slack), trials=trials, sampler=sampler,
                          storage=str(tmp_path / "study.journal"), study_name="dups")


def test_an_architecture_proposed_again_is_not_evaluated_again(tmp_path):
    s = _settings(tmp_path, 1.004, trials=6)
    scorer = Scorer()
    study = run_optuna(s, scorer, None)
    assert set(scorer.calls.values()) == {1} and len(scorer.calls) == 6  # 6 distinct architectures, each once
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert dups, "this seed proposes repeats"
    for t in dups:
        first = study.trials[t.user_attrs["duplicate_of"]]
        assert t.user_attrs["arch_hash"] == first.user_attrs["arch_hash"] and t.values == first.values
    df = trials_frame(study, s, None)
    assert df["duplicate_of"].notna().sum() == len(dups) and df["duplicate_of"].isna().sum() == 6
    assert df[df["pareto"]]["arch_hash"].is_unique and ranked(df)["arch_hash"].is_unique
    # a resumed study counts what it has: 2 more distinct architectures, none evaluated twice
    study = run_optuna(dataclasses.replace(s, trials=8), scorer, None, resume=True)
    assert set(scorer.calls.values()) == {1} and len(first_trials(s, study, None)) == 8


def test_a_space_with_fewer_architectures_than_trials_ends_and_says_so(tmp_path):
    s = _settings(tmp_path, 1.0, trials=3)  # only the smallest network fits
    scorer, log = Scorer(), []
    study = run_optuna(s, scorer, None, log=log.append)
    assert scorer.calls == {SPACE.smallest().hash(): 1}
    assert len(study.trials) == 30  # at most 10 proposals per requested trial
    assert len(log) == 1 and "1 distinct architectures in 30 proposals" in log[0] and "fewer than the 3" in log[0]
    df = trials_frame(study, s, None)
    assert df["pareto"].sum() == 1 and len(ranked(df)) == 1


def test_trials_without_user_attributes_are_matched_by_their_architecture(tmp_path):
    """Ray workers' trials reach the study without user attributes: repeats are found from the parameters, and a
    worker's trial reuses the scores it is given instead of evaluating."""
    s = _settings(tmp_path, 1.004, trials=3)
    study = optuna.create_study(study_name="dups", storage=make_storage(s.storage),
                                directions=["maximize", "minimize"])
    smallest = s.space.smallest()
    other = next(a for a in (s.space.random_arch(random.Random(i)) for i in range(100))
                 if arch_for(s, params_from_arch(s.space, a), None) != smallest)
    archs = [smallest, smallest, other]
    for i, arch in enumerate(archs):
        study.add_trial(optuna.trial.create_trial(params=params_from_arch(s.space, arch),
                                                  distributions=distributions(s.space), values=[0.5 + i, 1.0]))
    known = first_trials(s, study, None)
    hashes = [arch_for(s, params_from_arch(s.space, a), None).hash() for a in archs]
    assert hashes[0] == hashes[1] != hashes[2]
    assert {h: k["trial"] for h, k in known.items()} == {hashes[0]: 0, hashes[2]: 2}
    df = trials_frame(study, s, None)
    assert df["duplicate_of"].tolist()[1] == 0 and df["duplicate_of"].isna().tolist() == [True, False, True]
    scorer = Scorer()
    m = run_trial(s, params_from_arch(s.space, archs[0]), scorer, None, known)
    assert not scorer.calls and m["duplicate_of"] == 0 and m["val_acc"] == 0.5 and m["values"] == [0.5, 1.0]
