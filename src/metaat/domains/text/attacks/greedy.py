"""Greedy word substitution by word importance (the TextFooler / PWWS family).

Jin et al. (AAAI 2020), "Is BERT Really Robust? ... TextFooler": rank the positions by importance,
then visit them in that order and put at each the allowed edit that lowers the true-class
probability most (kept only if it lowers it), until the prediction flips or the budget is spent.

* ``ranking="deletion"``: importance = drop in ``p(y)`` when the word is deleted (one query per word);
* ``ranking="gradient"``: importance = ``||∂L/∂e_t||₂``, the loss gradient at the word's embedding
  (one forward and backward pass, Ebrahimi et al. 2018's first-order signal).

Threats: ``syn:k`` / ``nbr:k`` (each position substituted at most once), ``typo:k`` (one edit per visited
word). Query budget: one pass over the words, so at most ``1 + L + Σ_t |candidates_t|`` per example
(deletion ranking; ``2 + Σ_t |candidates_t|`` with gradient ranking).

Usage: ``GreedyAttack("syn:2", ranking="deletion")(model, ids, y)`` with ``ids`` int64 ``(B, L)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from metaat.attacks.base import ATTACKS, AttackConfig
from metaat.domains.text.attacks.search import (
    EditSpace,
    TextAttack,
    TextAttackConfig,
    deletion_importance,
    gradient_importance,
    score_rows,
)


@dataclass(frozen=True)
class GreedyConfig(TextAttackConfig):
    ranking: str = "deletion"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ranking not in ("deletion", "gradient"):
            raise ValueError(f"ranking must be 'deletion' or 'gradient'; got {self.ranking!r}")


@ATTACKS.register("text-greedy", help="Greedy word substitution by word importance (text; syn:k, nbr:k, typo:k)")
class GreedyAttack(TextAttack):
    name: ClassVar[str] = "text-greedy"
    config_class: ClassVar[type[AttackConfig]] = GreedyConfig

    def search(
        self, model: nn.Module, ids: torch.Tensor, y: torch.Tensor, edits: EditSpace, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        adv = ids.clone()
        queries = torch.zeros(len(y), dtype=torch.long)
        ranking = getattr(self.config, "ranking", "deletion")
        for b in range(len(y)):
            orig, label = ids[b], int(y[b])
            p_cur, wrong = score_rows(model, orig[None], label, self.rows)
            queries[b] += 1
            if bool(wrong[0]):
                continue
            positions = edits.editable(orig.numpy())
            if ranking == "deletion":
                importance = deletion_importance(model, orig, label, positions, self.rows)
                queries[b] += len(positions)
            else:
                importance = gradient_importance(model, orig, label, positions)
                queries[b] += 1
            order = [positions[i] for i in sorted(range(len(positions)), key=lambda i: (-float(importance[i]), i))]
            cur = orig.clone()
            best_p = float(p_cur[0])
            for t in order:
                rows = []
                for c in edits.candidates(int(orig[t]), int(cur[t])):
                    row = cur.clone()
                    row[t] = c
                    if edits.cost(orig.numpy(), row.numpy()) <= edits.budget:
                        rows.append(row)
                if not rows:
                    continue
                batch = torch.stack(rows)
                p, fooled = score_rows(model, batch, label, self.rows)
                queries[b] += len(rows)
                i = int((p - 2.0 * fooled.to(p.dtype)).argmin())  # a flip first, then the lowest p(y)
                if float(p[i]) < best_p or bool(fooled[i]):
                    cur, best_p = batch[i], float(p[i])
                if bool(fooled[i]):
                    break
            adv[b] = cur
        return adv, queries
