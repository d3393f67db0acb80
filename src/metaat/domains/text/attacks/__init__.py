"""Text attacks over ``syn:k`` / ``nbr:k`` / ``typo:k`` (registered in ``metaat.attacks.ATTACKS``).

``text-greedy`` (deletion or gradient ranking), ``text-beam``, ``text-genetic`` (Alzantot et al.
2018) and ``text-exhaustive`` (k = 1); :func:`worst_case` scores each example by all of them.
"""

from __future__ import annotations

from metaat.domains.text.attacks.beam import BeamAttack
from metaat.domains.text.attacks.exhaustive import ExhaustiveAttack
from metaat.domains.text.attacks.genetic import GeneticAttack
from metaat.domains.text.attacks.greedy import GreedyAttack
from metaat.domains.text.attacks.search import AttackResult, EditSpace, TextAttack, WorstCase, worst_case

__all__ = [
    "AttackResult",
    "BeamAttack",
    "EditSpace",
    "ExhaustiveAttack",
    "GeneticAttack",
    "GreedyAttack",
    "TextAttack",
    "WorstCase",
    "default_attacks",
    "worst_case",
]


def default_attacks(threat: str, **options: object) -> list[TextAttack]:
    """The evaluation ensemble for ``threat``: its kind's ``evaluation_attacks`` (greedy with gradient
    then deletion ranking, exhaustive single edits, beam search, genetic), cheapest first; ``options``
    (e.g. ``space=``, ``batch_size=``) go to each."""
    from metaat.attacks.base import ATTACKS
    from metaat.threats import ThreatModel

    t = ThreatModel.parse(threat)
    kind = t.kind
    if kind is None or kind.continuous:
        raise ValueError(f"default_attacks takes a discrete text threat (syn:k, nbr:k, typo:k); got {t}")
    out: list[TextAttack] = []
    for name, fixed in kind.evaluation_attacks:
        attack = ATTACKS.create(name, t, **dict(fixed), **options)
        assert isinstance(attack, TextAttack)
        out.append(attack)
    return out
