"""`SearchRequest`: what `nas search` was asked for, the CLI's flags as one checked value.

Only the command layer and the plan builder (`nas.search.plan.plan`) read it; everything below takes the typed
values the plan builds from it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import search_spaces as ss
from nas import checks
from nas.checks import check_precision, check_train_device, check_train_workers
from nas.data import DataSpec
from nas.data.spec import memory_limit
from nas.io import results_dir
from nas.search.storage import check_storage

SAMPLERS = ("tpe", "nsga2", "random", "evolution")
OBJECTIVES = ("pareto", "mnasnet")
BACKENDS = ("optuna", "ray")
_NAME_PART = re.compile(r"[^A-Za-z0-9._+=@-]")


@dataclass(frozen=True)
class SearchRequest:
    """Everything `nas search` was asked for (the CLI's flags, as a value).

    Every field is checked when the request is made, each error one line naming the CLI flag, so a bad value is
    refused before anything is loaded, trained or created (the checks of `nas.checks`).
    """

    budget: str = "100MFLOPs"
    latency: str | None = None
    peak_memory: str | None = None  # peak activation memory on the kernels, e.g. 256KB (hard limit)
    model_size: str | None = None  # int8 weight bytes, e.g. 1MB (hard limit)
    device: str = "kernels"
    table: str | None = None
    space: str = ss.DEFAULT_SPACE
    phi: float = 0.0
    data: str = "digits"
    trials: int | None = None  # None: the preset's (`nas.search.plan`), as for the other None defaults
    sampler: str = "tpe"
    objective: str = "pareto"
    backend: str = "optuna"
    address: str | None = None
    workers: int = 2
    storage: str | None = None
    study: str | None = None
    resume: bool = False
    finalize: bool = True
    quick: bool = False
    seed: int = 0
    out: str = field(default_factory=lambda: str(results_dir()))  # --out; see nas.io.results_dir
    threads: int = 2
    supernet_epochs: tuple[int, int, int, int] | None = None  # None: the default (or --quick) recipe
    train_images: int | None = None  # a seeded, class-stratified subset of the training split (--quick: 512)
    val_images: int | None = None  # likewise for the validation split that scores the trials
    pretrained: bool = True  # load a packaged supernet whose cache key matches, instead of training it
    verify: int | None = None  # candidates fine-tuned before choosing (None: VERIFY_CANDIDATES, 1 with --quick)
    train_device: str = "auto"  # where training and scoring run (`nas.backend.resolve`; not part of the study)
    precision: str = "fp32"
    # data-parallel supernet training on this many Ray Train workers (1: in this process); with more, the verify
    # step's fine-tunes run in parallel as Ray tasks too. Not part of the study (like --threads)
    train_workers: int = 1
    # how the data is read, not what is read (not part of the study): in memory up to this many bytes (or text such
    # as 2GiB; None: 25% of physical memory), else streamed from disk by `data_workers` decoding processes
    data_memory_limit: int | str | None = None
    data_workers: int = 2

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:  # the checked, converted value (a frozen dataclass)
            object.__setattr__(self, name, value)

        put("budget", checks.budget("--budget", self.budget))
        if self.latency is not None:
            put("latency", checks.latency("--latency", self.latency))
        for name, flag in (("peak_memory", "--peak-memory"), ("model_size", "--model-size")):
            if getattr(self, name) is not None:
                put(name, checks.byte_size(flag, getattr(self, name)))
        put("space", _one_of("--space", self.space, sorted(ss.SPACES)))
        put("phi", checks.phi("--phi", self.space, self.phi))
        put("device", checks.device("--device", self.device))
        if self.table is not None:
            table = Path(str(self.table)).expanduser()
            if not table.is_file():
                raise ValueError(f"--table: {str(self.table)!r} " + ("is a folder, expected a latency table file"
                                                                     if table.is_dir() else "does not exist"))
            put("table", str(self.table))
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"--data: expected 'digits' or a dataset path, got {self.data!r}")
        for name, flag in (("trials", "--trials"), ("train_images", "--train-images"),
                           ("val_images", "--val-images"), ("verify", "--verify")):
            if getattr(self, name) is not None:
                put(name, checks.positive_int(flag, getattr(self, name)))
        put("sampler", _one_of("--sampler", self.sampler, SAMPLERS))
        put("objective", _one_of("--objective", self.objective, OBJECTIVES))
        put("backend", _one_of("--backend", self.backend, BACKENDS))
        put("workers", checks.positive_int("--workers", self.workers))
        put("threads", checks.positive_int("--threads", self.threads, 1024))
        put("seed", checks.seed("--seed", self.seed))
        put("train_device", check_train_device("--train-device", self.train_device))
        put("precision", check_precision("--precision", self.precision))
        put("train_workers", check_train_workers("--train-workers", self.train_workers))
        if self.data_memory_limit is not None:
            put("data_memory_limit", memory_limit("--data-memory-limit", self.data_memory_limit))
        put("data_workers", checks.non_negative_int("--data-workers", self.data_workers))
        for name in ("resume", "finalize", "quick", "pretrained"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"--{name}: expected True or False, got {getattr(self, name)!r}")
        if self.address is not None and self.backend != "ray" and self.train_workers == 1:
            raise ValueError(f"--address: a Ray cluster address needs --backend ray or --train-workers above 1, got "
                             f"--backend {self.backend} and 1 training worker")
        if self.study is not None:
            put("study", checks.plain_name("--study", self.study))
        if self.storage is not None:
            check_storage(str(self.storage))
        checks.output_dir("--out", self.out)
        if self.supernet_epochs is not None:
            put("supernet_epochs", checks.supernet_epochs("--supernet-epochs", self.supernet_epochs))
        if self.objective == "mnasnet" and self.target_budget() is None:
            raise ValueError("--objective: the MnasNet reward needs a latency target (--latency, or a --budget in "
                             "ms)")

    def budgets(self) -> list[tuple[str, ss.Budget]]:
        """(flag, budget) of every budget asked for: --budget, and --latency, --peak-memory, --model-size when
        given."""
        out = [("--budget", ss.parse_budget(self.budget))]
        if self.latency:
            out.append(("--latency", ss.parse_budget(self.latency)))
        for flag, text, kind in (("--peak-memory", self.peak_memory, "peak_bytes"),
                                 ("--model-size", self.model_size, "weight_bytes")):
            if text:
                out.append((flag, ss.Budget(kind, ss.parse_bytes(text))))
        return out

    def target_budget(self) -> tuple[str, ss.Budget] | None:
        """The tightest latency budget (flag, budget), the MnasNet reward's target; None without one."""
        times = [(flag, b) for flag, b in self.budgets() if b.kind == "latency_ms"]
        return min(times, key=lambda fb: fb[1].value) if times else None

    def study_settings(self) -> dict[str, Any]:
        """The settings that define the study, by flag: what its trials' parameters and scores depend on.

        Stored with the study when it is created; continuing it (--resume, or a run of the same name) with any of
        them different is refused, naming each (`runner.check_study`). Free to differ: --trials (raise it to run
        more), --threads (only the floating-point summation order: supernet caches ignore it too), --backend,
        --workers, --address, --storage, --out, --resume, --train-device and --precision (like --threads, only
        the summation order), --train-workers (the same supernet cache either way), --data-memory-limit and
        --data-workers (streamed or in memory, the same data and batches), and --verify and --finalize, which
        act on the finished trials and are redone by each run.
        """
        data = DataSpec.of(self.data).source  # a path resolved, so the same data under another name is the same
        return {
            "--budget": str(ss.parse_budget(self.budget)),
            "--latency": str(ss.parse_budget(self.latency)) if self.latency else None,
            "--peak-memory": ss.parse_bytes(self.peak_memory) if self.peak_memory else None,
            "--model-size": ss.parse_bytes(self.model_size) if self.model_size else None,
            "--device": self.device, "--table": str(Path(self.table).expanduser().resolve()) if self.table else None,
            "--space": self.space, "--phi": float(self.phi), "--data": data, "--sampler": self.sampler,
            "--objective": self.objective, "--seed": self.seed, "--quick": self.quick,
            "--supernet-epochs": list(self.supernet_epochs) if self.supernet_epochs else None,
            "--train-images": self.train_images, "--val-images": self.val_images, "--pretrained": self.pretrained,
        }

    def run_name(self) -> str:
        """Default study name: readable and specific to the settings that change the result (a short, plain folder
        name: budgets in canonical form, odd characters of a data set's file name replaced by '_')."""
        if self.study:
            return self.study
        data = Path(self.data).name if self.data != "digits" else "digits"
        parts = [self.space, data, str(ss.parse_budget(self.budget))]
        if self.latency:
            parts.append(f"lat{ss.parse_budget(self.latency)}")
        if self.peak_memory:
            parts.append(f"peak{ss.Budget('peak_bytes', ss.parse_bytes(self.peak_memory))}")
        if self.model_size:
            parts.append(f"size{ss.Budget('weight_bytes', ss.parse_bytes(self.model_size))}")
        if self.phi:
            parts.append(f"phi{self.phi:g}")
        if self.device != "kernels":
            parts.append(self.device)
        if self.table:
            parts.append(f"table{Path(self.table).stem}")
        if self.objective != "pareto":
            parts.append(self.objective)
        parts += [self.sampler, f"s{self.seed}"]
        if self.supernet_epochs:
            parts.append("se" + "".join(map(str, self.supernet_epochs)))
        if self.train_images:
            parts.append(f"tr{self.train_images}")
        if self.val_images:
            parts.append(f"va{self.val_images}")
        if not self.pretrained:
            parts.append("scratch")
        if self.quick:
            parts.append("quick")
        name = "-".join(_NAME_PART.sub("_", p) for p in parts)
        if len(name) > 128:  # a long data set name: keep it readable and unique
            name = name[:119] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        return checks.plain_name("--study", name)


def _one_of(flag: str, value: Any, choices: Any) -> str:
    if value not in choices:
        raise ValueError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")
    return value
