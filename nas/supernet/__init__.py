"""Once-for-all supernet: elastic model, progressive-shrinking training, fast sub-network evaluation.

>>> run = train_supernet(get_space("small32"), split(load_dataset("digits")), SupernetRecipe())
>>> acc = SubnetEvaluator(run.supernet, splits)(arch)          # extract + BN recalibration + val accuracy
>>> model = run.supernet.extract(arch)                          # a plain search_spaces.MBConvNet
"""

from nas.supernet.model import Supernet, outside_reasons
from nas.supernet.subnet_eval import SubnetEvaluator
from nas.supernet.training import (
    PHASES,
    SupernetRecipe,
    SupernetRun,
    cache_key,
    dataset_fingerprint,
    load_supernet,
    phase_space,
    train_supernet,
)

__all__ = [
    "PHASES", "SubnetEvaluator", "Supernet", "SupernetRecipe", "SupernetRun", "cache_key", "dataset_fingerprint",
    "load_supernet", "outside_reasons", "phase_space", "train_supernet",
]
