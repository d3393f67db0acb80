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
    """The evaluation ensemble for ``threat``: exhaustive (k = 1 only), greedy with both rankings,
    beam search and the genetic attack, cheapest first."""
    from metaat.threats import ThreatModel

    t = ThreatModel.parse(threat)
    attacks: list[TextAttack] = []
    if int(t.eps) == 1:
        attacks.append(ExhaustiveAttack(t, **options))  # type: ignore[arg-type]
    attacks += [
        GreedyAttack(t, ranking="deletion", **options),  # type: ignore[arg-type]
        GreedyAttack(t, ranking="gradient", **options),  # type: ignore[arg-type]
        BeamAttack(t, **options),  # type: ignore[arg-type]
        GeneticAttack(t, **options),  # type: ignore[arg-type]
    ]
    return attacks
