"""The meta-learners: generator networks, the learned attacker, the universal-perturbation bank,
the functional look-ahead and meta-pretraining over tasks.

>>> from metaat.meta import LearnedAttacker
>>> from metaat.models import count_parameters
>>> count_parameters(LearnedAttacker(in_channels=1)) < 100_000
True
"""

from metaat.meta.attack import LearnedAttack, LearnedConfig
from metaat.meta.bank import PerturbationBank, refine_universal
from metaat.meta.generators import (
    GENERATORS,
    AttackerSpec,
    LearnedAttacker,
    NoiseGenerator,
    NoiseSpec,
    build_generator,
    threat_features,
)
from metaat.meta.io import generator_record, load_generator, save_generator
from metaat.meta.lookahead import functional_logits, lookahead_loss, lookahead_parameters
from metaat.meta.pretrain import PretrainConfig, pretrain
from metaat.meta.rollout import attacker_rollout, input_gradient, route_ascent

__all__ = [
    "GENERATORS",
    "AttackerSpec",
    "LearnedAttack",
    "LearnedAttacker",
    "LearnedConfig",
    "NoiseGenerator",
    "NoiseSpec",
    "PerturbationBank",
    "PretrainConfig",
    "attacker_rollout",
    "build_generator",
    "functional_logits",
    "generator_record",
    "input_gradient",
    "load_generator",
    "lookahead_loss",
    "lookahead_parameters",
    "pretrain",
    "refine_universal",
    "route_ascent",
    "save_generator",
    "threat_features",
]
